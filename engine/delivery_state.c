/* delivery_state: the .dlv format (specified in delivery_state.h), its
 * replay over a segment, finished/reclaimable, and the retry schedule. */
#include "delivery_state.h"
#include "le.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* record field offsets */
enum {
	DR_LEN = 4,
	DR_CRC = 8,
	DR_MSG = 12,
	DR_RCPT = 20,
	DR_OUTCOME = 24,
	DR_PAD1 = 25,
	DR_ATTEMPTS = 26,
	DR_CODE = 28,
	DR_HOPLEN = 30,
	DR_NEXT = 32,
	DR_AT = 40,
	DR_TEXTLEN = 48,
	DR_PAD2 = 50,
};

static const char *const outcome_names[] = {"queued",  "delivered", "deferred", "failed",
					    "bounced", "dropped",   "expired"};

const char *dlv_outcome_name(enum dlv_outcome o)
{
	return (unsigned)o <= DLV_OUTCOME_MAX ? outcome_names[o] : "?";
}

/* ---- file header ---- */

void dlv_file_header(uint8_t out[DLV_HEADER_SIZE], unsigned core, uint64_t seq)
{
	memset(out, 0, DLV_HEADER_SIZE);
	memcpy(out, DLV_FILE_MAGIC, 8);
	put_u32(out + 8, DLV_FORMAT_VERSION);
	put_u32(out + 12, core);
	put_u64(out + 16, seq);
	put_u32(out + 28, crc32c(0, out, 28));
}

enum spool_decode dlv_file_header_check(const uint8_t *p, size_t avail, unsigned *core,
					uint64_t *seq, const char **why)
{
	const char *w = NULL;
	enum spool_decode d = SPOOL_OK;
	if (avail < DLV_HEADER_SIZE) {
		w = "file header cut short";
		d = SPOOL_TRUNCATED;
	} else if (memcmp(p, DLV_FILE_MAGIC, 8) != 0) {
		w = "bad file magic";
		d = SPOOL_CORRUPT;
	} else if (get_u32(p + 28) != crc32c(0, p, 28)) {
		w = "bad file header CRC";
		d = SPOOL_CORRUPT;
	} else if (get_u32(p + 8) != DLV_FORMAT_VERSION) {
		w = "unknown format version";
		d = SPOOL_CORRUPT;
	} else {
		if (core)
			*core = get_u32(p + 12);
		if (seq)
			*seq = get_u64(p + 16);
	}
	if (why)
		*why = w;
	return d;
}

/* ---- records ---- */

static size_t cut(size_t n, size_t max)
{
	return n < max ? n : max;
}

size_t dlv_record_size(const struct dlv_record *r)
{
	return DLV_RECORD_FIXED + cut(r->hop_len, DLV_HOP_MAX) + cut(r->text_len, DLV_TEXT_MAX);
}

size_t dlv_record_encode(uint8_t *out, size_t cap, const struct dlv_record *r)
{
	if (r->outcome < DLV_DELIVERED || r->outcome > DLV_OUTCOME_MAX)
		return 0;
	size_t hop = cut(r->hop_len, DLV_HOP_MAX), text = cut(r->text_len, DLV_TEXT_MAX);
	size_t len = DLV_RECORD_FIXED + hop + text;
	if (cap < len)
		return 0;
	memset(out, 0, DLV_RECORD_FIXED);
	memcpy(out, DLV_RECORD_MAGIC, 4);
	put_u32(out + DR_LEN, (uint32_t)len);
	put_u64(out + DR_MSG, r->msg_offset);
	put_u32(out + DR_RCPT, r->rcpt);
	out[DR_OUTCOME] = (uint8_t)r->outcome;
	put_u16(out + DR_ATTEMPTS, r->attempts);
	put_u16(out + DR_CODE, r->code);
	put_u16(out + DR_HOPLEN, (uint16_t)hop);
	put_u64(out + DR_NEXT, r->next_try);
	put_u64(out + DR_AT, r->at);
	put_u16(out + DR_TEXTLEN, (uint16_t)text);
	if (hop)
		memcpy(out + DLV_RECORD_FIXED, r->hop, hop);
	if (text)
		memcpy(out + DLV_RECORD_FIXED + hop, r->text, text);
	put_u32(out + DR_CRC, crc32c(0, out + DR_MSG, len - DR_MSG));
	return len;
}

static enum spool_decode bad(const char **why, const char *w, enum spool_decode d)
{
	if (why)
		*why = w;
	return d;
}

static bool zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

enum spool_decode dlv_record_decode(const uint8_t *p, size_t avail, struct dlv_record *r,
				    size_t *len, const char **why)
{
	/* The magic first, byte by byte, so a prefix of it is a torn record
	 * and anything else is not one at all. */
	for (size_t i = 0; i < 4; i++) {
		if (i >= avail)
			return bad(why, "record cut short", SPOOL_TRUNCATED);
		if (p[i] != (uint8_t)DLV_RECORD_MAGIC[i])
			return bad(why, "bad record magic", SPOOL_CORRUPT);
	}
	if (avail < DR_CRC)
		return bad(why, "record cut short", SPOOL_TRUNCATED);
	uint32_t l = get_u32(p + DR_LEN);
	if (l < DLV_RECORD_FIXED || l > DLV_RECORD_MAX)
		return bad(why, "bad record length", SPOOL_CORRUPT);
	if (avail < l)
		return bad(why, "record cut short", SPOOL_TRUNCATED);
	if (get_u32(p + DR_CRC) != crc32c(0, p + DR_MSG, l - DR_MSG))
		return bad(why, "bad record CRC", SPOOL_CORRUPT);
	/* Covered by the CRC from here: a mismatch is a writer's bug or a
	 * newer format, not a tear. */
	uint8_t outcome = p[DR_OUTCOME];
	uint16_t hop = get_u16(p + DR_HOPLEN), text = get_u16(p + DR_TEXTLEN);
	if (outcome < DLV_DELIVERED || outcome > DLV_OUTCOME_MAX)
		return bad(why, "unknown outcome", SPOOL_CORRUPT);
	if (p[DR_PAD1] || !zero(p + DR_PAD2, DLV_RECORD_FIXED - DR_PAD2))
		return bad(why, "reserved bytes not zero", SPOOL_CORRUPT);
	if (hop > DLV_HOP_MAX || text > DLV_TEXT_MAX ||
	    (size_t)DLV_RECORD_FIXED + hop + text != l)
		return bad(why, "field lengths do not add up", SPOOL_CORRUPT);
	if (r) {
		r->msg_offset = get_u64(p + DR_MSG);
		r->rcpt = get_u32(p + DR_RCPT);
		r->outcome = (enum dlv_outcome)outcome;
		r->attempts = get_u16(p + DR_ATTEMPTS);
		r->code = get_u16(p + DR_CODE);
		r->next_try = get_u64(p + DR_NEXT);
		r->at = get_u64(p + DR_AT);
		r->hop = (const char *)p + DLV_RECORD_FIXED;
		r->hop_len = hop;
		r->text = (const char *)p + DLV_RECORD_FIXED + hop;
		r->text_len = text;
	}
	if (len)
		*len = l;
	if (why)
		*why = NULL;
	return SPOOL_OK;
}

/* The next offset >= from where a record decodes, or 0. */
static size_t resync(const uint8_t *dlv, size_t len, size_t from)
{
	for (size_t q = from; q + DLV_RECORD_FIXED <= len; q++) {
		const uint8_t *hit = memmem(dlv + q, len - q, DLV_RECORD_MAGIC, 4);
		if (!hit)
			return 0;
		q = (size_t)(hit - dlv);
		if (dlv_record_decode(dlv + q, len - q, NULL, NULL, NULL) == SPOOL_OK)
			return q;
	}
	return 0;
}

void dlv_walk(const uint8_t *dlv, size_t len, dlv_walk_fn fn, void *ctx,
	      struct spool_walk_result *res)
{
	memset(res, 0, sizeof *res);
	size_t pos = DLV_HEADER_SIZE;
	res->good_end = len < pos ? len : pos;
	while (pos < len) {
		struct dlv_record r;
		size_t rl = 0;
		const char *why = NULL;
		if (dlv_record_decode(dlv + pos, len - pos, &r, &rl, &why) == SPOOL_OK) {
			res->records++;
			res->good_end = pos + rl;
			if (fn && fn(ctx, SPOOL_WALK_RECORD, pos, rl, &r, NULL)) {
				res->stopped = true;
				return;
			}
			pos += rl;
			continue;
		}
		size_t q = resync(dlv, len, pos + 1);
		if (q) {
			res->corrupt_regions++;
			res->corrupt_bytes += q - pos;
			if (fn && fn(ctx, SPOOL_WALK_CORRUPT, pos, q - pos, NULL, why)) {
				res->stopped = true;
				return;
			}
			pos = q;
			continue;
		}
		res->torn_bytes = len - pos;
		if (fn && fn(ctx, SPOOL_WALK_TORN, pos, len - pos, NULL, why))
			res->stopped = true;
		return;
	}
}

/* ---- replay ---- */

struct collect {
	struct dlv_replay *r;
	size_t cap_msgs, cap_rcpts;
	bool oom;
};

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap : 64;
	while (n < need) {
		if (n > SIZE_MAX / 2 / size)
			return -1;
		n *= 2;
	}
	void *q = realloc(*p, n * size);
	if (!q)
		return -1;
	*p = q;
	*cap = n;
	return 0;
}

static int collect_message(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
			   const struct spool_record_view *v, const char *why)
{
	(void)len;
	(void)why;
	struct collect *c = ctx;
	if (ev != SPOOL_WALK_RECORD)
		return 0;
	struct dlv_replay *r = c->r;
	if (grow((void **)&r->msgs, &c->cap_msgs, r->nmsgs + 1, sizeof *r->msgs) < 0 ||
	    grow((void **)&r->rcpts, &c->cap_rcpts, r->nrcpts + v->nrcpt, sizeof *r->rcpts) < 0 ||
	    r->nrcpts + v->nrcpt > UINT32_MAX) {
		c->oom = true;
		return 1;
	}
	struct dlv_message *m = &r->msgs[r->nmsgs++];
	m->offset = off;
	m->received = v->received_unix_ns / 1000000000u;
	m->nrcpt = v->nrcpt;
	m->first = (uint32_t)r->nrcpts;
	m->null_sender = v->mail_from_len == 0;
	size_t cur = 0;
	struct spool_rcpt_view rv;
	uint32_t i = 0;
	while (spool_rcpt_next(v, &cur, &rv) && i < v->nrcpt) {
		memset(&r->rcpts[m->first + i], 0, sizeof r->rcpts[0]);
		r->rcpts[m->first + i].notify = rv.notify;
		i++;
	}
	assert(i == v->nrcpt); /* the decoder checked the recipient area */
	r->nrcpts += v->nrcpt;
	return 0;
}

struct dlv_message *dlv_replay_find(const struct dlv_replay *r, uint64_t offset)
{
	size_t lo = 0, hi = r->nmsgs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (r->msgs[mid].offset < offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < r->nmsgs && r->msgs[lo].offset == offset ? &r->msgs[lo] : NULL;
}

int dlv_replay_apply(struct dlv_replay *r, const struct dlv_record *rec, uint64_t rec_off)
{
	struct dlv_message *m = dlv_replay_find(r, rec->msg_offset);
	if (!m || rec->rcpt >= m->nrcpt) {
		r->orphans++;
		return -1;
	}
	struct dlv_rcpt *rc = &r->rcpts[m->first + rec->rcpt];
	rc->outcome = rec->outcome;
	rc->attempts = rec->attempts;
	rc->code = rec->code;
	rc->next_try = rec->next_try;
	rc->at = rec->at;
	rc->record = rec_off;
	return 0;
}

static int apply_record(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
			const struct dlv_record *rec, const char *why)
{
	(void)len;
	(void)why;
	if (ev == SPOOL_WALK_RECORD)
		dlv_replay_apply(ctx, rec, off);
	return 0;
}

int dlv_replay(const uint8_t *seg, size_t seg_len, unsigned core, uint64_t seq,
	       const uint8_t *dlv, size_t dlv_len, struct dlv_replay *out)
{
	memset(out, 0, sizeof *out);
	struct collect c = {.r = out};
	spool_segment_walk(seg, seg_len, core, seq, collect_message, &c, &out->seg);
	if (c.oom) {
		dlv_replay_free(out);
		return -1;
	}
	if (!dlv || dlv_len == 0)
		return 0;
	unsigned hcore = 0;
	uint64_t hseq = 0;
	if (dlv_file_header_check(dlv, dlv_len, &hcore, &hseq, &out->dlv_header_why) != SPOOL_OK) {
		out->dlv_header_bad = true;
	} else if (hcore != core || hseq != seq) {
		out->dlv_header_bad = true;
		out->dlv_header_why = "file header names another segment";
	}
	dlv_walk(dlv, dlv_len, apply_record, out, &out->dlv);
	return 0;
}

void dlv_replay_free(struct dlv_replay *r)
{
	free(r->msgs);
	free(r->rcpts);
	memset(r, 0, sizeof *r);
}

/* ---- finished ---- */

bool dlv_dsn_wanted(const struct dlv_message *m, const struct dlv_rcpt *rc)
{
	if (m->null_sender)
		return false;
	return rc->notify == 0 || (rc->notify & SMTP_NOTIFY_FAILURE);
}

bool dlv_rcpt_finished(const struct dlv_message *m, const struct dlv_rcpt *rc)
{
	switch (rc->outcome) {
	case DLV_DELIVERED:
	case DLV_BOUNCED:
	case DLV_DROPPED: return true;
	case DLV_FAILED:
	case DLV_EXPIRED: return !dlv_dsn_wanted(m, rc);
	case DLV_QUEUED:
	case DLV_DEFERRED: return false;
	}
	return false;
}

bool dlv_message_finished(const struct dlv_replay *r, const struct dlv_message *m)
{
	for (uint32_t i = 0; i < m->nrcpt; i++)
		if (!dlv_rcpt_finished(m, &r->rcpts[m->first + i]))
			return false;
	return true;
}

bool dlv_segment_reclaimable(const struct dlv_replay *r, bool being_written)
{
	if (being_written || r->seg.corrupt_regions || r->seg.records != r->nmsgs)
		return false;
	for (size_t i = 0; i < r->nmsgs; i++)
		if (!dlv_message_finished(r, &r->msgs[i]))
			return false;
	return true;
}

const char *dlv_message_summary(const struct dlv_replay *r, const struct dlv_message *m)
{
	if (m->nrcpt == 0)
		return "queued";
	const struct dlv_rcpt *rc = &r->rcpts[m->first];
	bool same = true, any_done = false, all_done = true;
	unsigned seen = 0;
	for (uint32_t i = 0; i < m->nrcpt; i++) {
		if (rc[i].outcome != rc[0].outcome)
			same = false;
		bool done = dlv_rcpt_finished(m, &rc[i]);
		any_done |= done;
		all_done &= done;
		if (!done)
			seen |= 1u << rc[i].outcome;
	}
	if (same)
		return dlv_outcome_name(rc[0].outcome);
	if (any_done && !all_done)
		return "partial";
	if (all_done)
		return "finished";
	static const enum dlv_outcome order[] = {DLV_DEFERRED, DLV_FAILED, DLV_EXPIRED, DLV_QUEUED};
	for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
		if (seen & (1u << order[i]))
			return dlv_outcome_name(order[i]);
	return "queued";
}

/* ---- retry schedule ---- */

uint64_t dlv_retry_delay_ms(uint32_t attempts, uint32_t first_ms, uint32_t max_ms, uint32_t rnd)
{
	assert(first_ms > 0 && first_ms <= max_ms);
	uint64_t d = first_ms;
	for (uint32_t i = 1; i < attempts && d < max_ms; i++)
		d *= 2;
	if (d > max_ms)
		d = max_ms;
	/* d * (0.8 + 0.4 * rnd / 2^32) = d*4/5 + d*rnd*2/(5*2^32), in
	 * integers: d and rnd are below 2^32, so d*rnd fits 64 bits. */
	uint64_t j = d * 4 / 5 + (d * rnd) / ((uint64_t)5 << 31);
	return j ? j : 1;
}

uint64_t dlv_next_try(uint64_t received, uint64_t now, uint32_t attempts, uint32_t first_ms,
		      uint32_t max_ms, uint32_t lifetime_ms, uint32_t rnd, bool *expired)
{
	uint64_t deadline = received + (lifetime_ms + 999u) / 1000u;
	*expired = now >= deadline;
	if (*expired)
		return 0;
	uint64_t delay_ms = dlv_retry_delay_ms(attempts ? attempts : 1, first_ms, max_ms, rnd);
	uint64_t next = now + (delay_ms + 999u) / 1000u;
	return next < deadline ? next : deadline;
}

/* ---- recovery ---- */

static int read_all(int fd, uint8_t **out, size_t *len)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -1;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > SIZE_MAX - 1) {
		errno = EINVAL;
		return -1;
	}
	size_t n = (size_t)st.st_size, got = 0;
	uint8_t *b = malloc(n ? n : 1);
	if (!b)
		return -1;
	while (got < n) {
		ssize_t k = pread(fd, b + got, n - got, (off_t)got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			free(b);
			if (k == 0)
				errno = EIO;
			return -1;
		}
		got += (size_t)k;
	}
	*out = b;
	*len = n;
	return 0;
}

int dlv_recover(const char *core_dir, unsigned core, uint64_t seq, const uint8_t *seg,
		size_t seg_len, struct dlv_replay *out, struct buf *log)
{
	char path[PATH_MAX];
	if ((size_t)snprintf(path, sizeof path, "%s/%08" PRIu64 ".dlv", core_dir, seq) >= sizeof path) {
		buf_printf(log, "delivery: core %u segment %08" PRIu64 ": path too long\n", core, seq);
		return -1;
	}
	int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno != ENOENT) {
		buf_printf(log, "delivery: open %s: %s\n", path, strerror(errno));
		return -1;
	}
	uint8_t *dlv = NULL;
	size_t dlv_len = 0;
	if (fd >= 0 && read_all(fd, &dlv, &dlv_len) < 0) {
		buf_printf(log, "delivery: read %s: %s\n", path, strerror(errno));
		close(fd);
		return -1;
	}
	int rc = dlv_replay(seg, seg_len, core, seq, dlv, dlv_len, out);
	free(dlv);
	if (rc < 0) {
		buf_printf(log, "delivery: %s: out of memory\n", path);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (fd < 0)
		return 0;
	if (out->dlv_header_bad)
		buf_printf(log, "delivery: %s: %s; its records are read one by one\n", path,
			   out->dlv_header_why ? out->dlv_header_why : "bad header");
	if (out->dlv.corrupt_regions)
		buf_printf(log, "delivery: %s: %" PRIu64 " corrupt regions (%" PRIu64
			   " bytes) skipped\n", path, out->dlv.corrupt_regions, out->dlv.corrupt_bytes);
	if (dlv_len < DLV_HEADER_SIZE && dlv_len > 0) {
		/* a header cut short: no record can be in it; the writer
		 * starts an empty file again with a header */
		if (ftruncate(fd, 0) < 0 || fsync(fd) < 0) {
			buf_printf(log, "delivery: truncate %s: %s\n", path, strerror(errno));
			close(fd);
			dlv_replay_free(out);
			return -1;
		}
		buf_printf(log, "delivery: %s: header cut short (%zu bytes), emptied\n", path,
			   dlv_len);
	} else if (out->dlv.torn_bytes && !out->dlv_header_bad) {
		if (ftruncate(fd, (off_t)out->dlv.good_end) < 0 || fsync(fd) < 0) {
			buf_printf(log, "delivery: truncate %s: %s\n", path, strerror(errno));
			close(fd);
			dlv_replay_free(out);
			return -1;
		}
		buf_printf(log, "delivery: %s: truncated %" PRIu64 " torn bytes\n", path,
			   out->dlv.torn_bytes);
	}
	close(fd);
	return 0;
}
