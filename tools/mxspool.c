/* mxspool: the reference reader of mxd's spool (format in engine/spool.h).
 *
 *   mxspool [-d DIR] [-f CONFIG] list
 *   mxspool [-d DIR] cat [--envelope] ID
 *   mxspool [-d DIR] [-f CONFIG] show ID
 *   mxspool [-d DIR] verify
 *   mxspool [-d DIR] export --maildir OUT
 *   mxspool [-d DIR] retry ID | drop ID
 *
 * list and show give each message's delivery state from the delivery log
 * beside its segment (<seq>.dlv, engine/delivery_state.h); with -f they
 * also evaluate the config's accept rules to tell mail that no rule
 * relays ("kept", for external consumers) from mail waiting to go.
 * retry and drop never write the delivery log: they leave a request file
 * (engine/delivery_request.h) that the core owning the message takes.
 *
 * Otherwise it only reads the spool (segments are mapped read-only;
 * nothing is ever truncated or rewritten), so it is safe next to a running
 * mxd: the writer
 * appends, and a segment removed while mapped stays readable. Next to a
 * running mxd, the open segment's last record may still be in flight: verify
 * then reports it as a torn tail, and list/cat/export may show a message
 * whose 250 is not sent yet. The one thing the writer does besides
 * appending, cutting back a failed batch, would make the mapping shorter
 * than it was: that SIGBUS ends mxspool with a message, not a core dump.
 * Exit status: 0 ok, 1 a problem (damage found, unknown id, I/O error),
 * 2 usage. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "delivery_request.h"
#include "delivery_state.h"
#include "policy.h"
#include "route.h"
#include "spool.h"

#define DEFAULT_SPOOL "var/spool"

static const char *spool_dir = DEFAULT_SPOOL;
/* -f CONFIG: the routes, for "kept" */
static struct conf *config;
static struct policy *config_policy;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mxspool [-d DIR] [-f CONFIG] COMMAND\n"
		"  list                     one line per message: ID, received time, size,\n"
		"                           MAIL FROM, recipients, delivery state (queued,\n"
		"                           deferred, delivered, failed, bounced, dropped,\n"
		"                           expired, partial, finished; kept with -f); a\n"
		"                           deferred message gets a second line: next try,\n"
		"                           attempts, next hop, last reply\n"
		"  cat ID                   the message (Received: header and content)\n"
		"  cat --envelope ID        the envelope of a message\n"
		"  show ID                  the envelope and each recipient's delivery state\n"
		"  verify                   check every segment and record (read-only)\n"
		"  export --maildir OUT     copy every message into the Maildir OUT\n"
		"  retry ID                 ask mxd to try the message's waiting recipients now\n"
		"  drop ID                  ask mxd to give up the message's unfinished\n"
		"                           recipients (no delivery, no bounce)\n"
		"  -d DIR                   the spool directory (default " DEFAULT_SPOOL ")\n"
		"  -f CONFIG                mxd's config, to show mail no rule relays as kept\n"
		"exit status: 0 ok, 1 problem found or error, 2 usage\n");
}

/* ---- output helpers ---- */

/* Bytes as text a terminal and a line-oriented script can take: control
 * bytes, backslash and (in lists) space and comma are escaped as \xHH. */
static void put_escaped(FILE *f, const char *s, size_t n, bool list_field)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || c == '\\' || (list_field && (c == ' ' || c == ',')))
			fprintf(f, "\\x%02X", c);
		else
			fputc(c, f);
	}
}

static void format_time(char *out, size_t n, uint64_t unix_ns, bool with_ns)
{
	time_t sec = (time_t)(unix_ns / 1000000000u);
	struct tm tm;
	if (!gmtime_r(&sec, &tm)) {
		snprintf(out, n, "?");
		return;
	}
	if (with_ns)
		snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%09" PRIu64 "Z", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 unix_ns % 1000000000u);
	else
		snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
			 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- walking the spool ---- */

struct segment {
	char path[PATH_MAX];
	unsigned core;
	uint64_t seq;
	const uint8_t *map;
	size_t size;
	enum spool_decode header;   /* SPOOL_OK or why not */
	const char *header_reason;
	char reason_buf[96];
};

/* Called once per segment file, mapped; return non-zero to stop. */
typedef int (*segment_fn)(void *ctx, struct segment *s);

static int map_segment(struct segment *s)
{
	int fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		fprintf(stderr, "mxspool: %s: %s\n", s->path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > SIZE_MAX) {
		fprintf(stderr, "mxspool: %s: not a regular file\n", s->path);
		close(fd);
		return -1;
	}
	s->size = (size_t)st.st_size;
	s->map = NULL;
	if (s->size) {
		void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			fprintf(stderr, "mxspool: mmap %s: %s\n", s->path, strerror(errno));
			close(fd);
			return -1;
		}
		s->map = m;
	}
	close(fd);
	struct spool_segment_info info;
	s->header = spool_segment_header_check(s->map, s->size, &info, &s->header_reason);
	if (s->header == SPOOL_OK && (info.core != s->core || info.seq != s->seq)) {
		snprintf(s->reason_buf, sizeof s->reason_buf, "header names core %u segment %" PRIu64,
			 info.core, info.seq);
		s->header_reason = s->reason_buf;
		s->header = SPOOL_CORRUPT;
	}
	return 0;
}

static void unmap_segment(struct segment *s)
{
	if (s->map)
		munmap((void *)s->map, s->size);
	s->map = NULL;
}

static int cmp_unsigned(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	return x < y ? -1 : x > y;
}

/* The core directories: names of 1 to 5 digits, ascending. */
static int list_cores(unsigned **cores, size_t *n)
{
	*cores = NULL;
	*n = 0;
	DIR *d = opendir(spool_dir);
	if (!d) {
		fprintf(stderr, "mxspool: %s: %s\n", spool_dir, strerror(errno));
		return -1;
	}
	size_t cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (len == 0 || len > 5 || strspn(de->d_name, "0123456789") != len)
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			unsigned *p = realloc(*cores, cap * sizeof *p);
			if (!p) {
				closedir(d);
				fprintf(stderr, "mxspool: out of memory\n");
				return -1;
			}
			*cores = p;
		}
		(*cores)[(*n)++] = (unsigned)strtoul(de->d_name, NULL, 10);
	}
	closedir(d);
	if (*n)
		qsort(*cores, *n, sizeof **cores, cmp_unsigned);
	return 0;
}

static int core_dir(char *out, size_t n, unsigned core)
{
	if ((size_t)snprintf(out, n, "%s/%02u", spool_dir, core) >= n) {
		fprintf(stderr, "mxspool: path too long\n");
		return -1;
	}
	return 0;
}

/* One core's segments, ascending; only_seq24 >= 0 picks the segments
 * whose number matches an id's 24 bits. Returns -1 on errors (after
 * visiting what it could), 1 when fn stopped, 0 otherwise. */
static int for_each_segment_of(unsigned core, long long only_seq24, segment_fn fn, void *ctx)
{
	char dir[PATH_MAX];
	if (core_dir(dir, sizeof dir, core) < 0)
		return -1;
	uint64_t *seqs;
	size_t n;
	if (spool_list_segments(dir, &seqs, &n) < 0) {
		if (errno == ENOENT && only_seq24 >= 0)
			return 0;
		fprintf(stderr, "mxspool: %s: %s\n", dir, strerror(errno));
		return -1;
	}
	int rc = 0;
	for (size_t i = 0; i < n && rc != 1; i++) {
		if (only_seq24 >= 0 && (seqs[i] & 0xffffffu) != (uint64_t)only_seq24)
			continue;
		struct segment s;
		memset(&s, 0, sizeof s);
		s.core = core;
		s.seq = seqs[i];
		if ((size_t)snprintf(s.path, sizeof s.path, "%s/%08" PRIu64 ".seg", dir, seqs[i]) >=
		    sizeof s.path) {
			fprintf(stderr, "mxspool: path too long\n");
			rc = -1;
			continue;
		}
		if (map_segment(&s) < 0) {
			rc = -1;
			continue;
		}
		if (fn(ctx, &s))
			rc = 1;
		unmap_segment(&s);
	}
	free(seqs);
	return rc;
}

static int for_each_segment(segment_fn fn, void *ctx)
{
	unsigned *cores;
	size_t n;
	if (list_cores(&cores, &n) < 0)
		return -1;
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		int r = for_each_segment_of(cores[i], -1, fn, ctx);
		if (r < 0)
			rc = -1;
		if (r == 1) {
			rc = rc < 0 ? rc : 1;
			break;
		}
	}
	free(cores);
	return rc;
}

/* ---- delivery state ---- */

/* A segment's delivery log (mapped, may be absent) and its replay. */
struct delivery {
	char path[PATH_MAX];
	const uint8_t *map;
	size_t size;
	struct dlv_replay r;
	bool ok;
};

static void delivery_load(struct delivery *d, const struct segment *s)
{
	memset(d, 0, sizeof *d);
	size_t n = strlen(s->path);
	if (n < 4 || n >= sizeof d->path)
		return;
	memcpy(d->path, s->path, n - 4);
	memcpy(d->path + n - 4, ".dlv", 5);
	int fd = open(d->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0) {
		struct stat st;
		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
		    (uint64_t)st.st_size <= SIZE_MAX) {
			void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
			if (m != MAP_FAILED) {
				d->map = m;
				d->size = (size_t)st.st_size;
			} else {
				fprintf(stderr, "mxspool: mmap %s: %s\n", d->path, strerror(errno));
			}
		}
		close(fd);
	} else if (errno != ENOENT) {
		fprintf(stderr, "mxspool: %s: %s\n", d->path, strerror(errno));
	}
	if (dlv_replay(s->map, s->size, s->core, s->seq, d->map, d->size, &d->r) < 0) {
		fprintf(stderr, "mxspool: out of memory\n");
		return;
	}
	d->ok = true;
	if (d->r.dlv_header_bad)
		fprintf(stderr, "mxspool: %s: %s\n", d->path,
			d->r.dlv_header_why ? d->r.dlv_header_why : "bad header");
	if (d->r.dlv.corrupt_regions || d->r.dlv.torn_bytes)
		fprintf(stderr, "mxspool: %s: %" PRIu64 " damaged regions, %" PRIu64 " torn bytes\n",
			d->path, d->r.dlv.corrupt_regions, d->r.dlv.torn_bytes);
}

static void delivery_free(struct delivery *d)
{
	if (d->ok)
		dlv_replay_free(&d->r);
	if (d->map)
		munmap((void *)d->map, d->size);
	memset(d, 0, sizeof *d);
}

/* The latest record of a recipient, or false when it has none. */
static bool delivery_record(const struct delivery *d, const struct dlv_rcpt *rc,
			    struct dlv_record *out)
{
	return rc->record && rc->record < d->size &&
	       dlv_record_decode(d->map + rc->record, d->size - rc->record, out, NULL, NULL) ==
		       SPOOL_OK;
}

/* With -f: each recipient's route, into a malloc'd array (NULL without). */
static struct route *routes_of(const struct spool_record_view *v)
{
	if (!config || !v->nrcpt)
		return NULL;
	struct route *rt = calloc(v->nrcpt, sizeof *rt);
	if (rt)
		route_message(config, config_policy, v, rt, v->nrcpt);
	return rt;
}

/* A recipient's state as shown: never tried and routed nowhere is "kept"
 * (the rule has no relay) or "unrouted" (no rule takes it now). */
static const char *rcpt_state(const struct dlv_rcpt *rc, const struct route *rt)
{
	if (rc->outcome == DLV_QUEUED && rt && rt->kind == ROUTE_KEEP)
		return "kept";
	if (rc->outcome == DLV_QUEUED && rt && rt->kind == ROUTE_NONE)
		return "unrouted";
	return dlv_outcome_name(rc->outcome);
}

static const char *message_state(const struct delivery *d, const struct dlv_message *m,
				 const struct route *rt)
{
	if (!rt || !m->nrcpt)
		return dlv_message_summary(&d->r, m);
	const char *first = rcpt_state(&d->r.rcpts[m->first], &rt[0]);
	for (uint32_t i = 1; i < m->nrcpt; i++)
		if (strcmp(rcpt_state(&d->r.rcpts[m->first + i], &rt[i]), first) != 0)
			return dlv_message_summary(&d->r, m);
	return first;
}

/* "  deferred: next try T, N attempts, HOP: last reply" for a message
 * with deferred recipients: the earliest next try, the latest reply. */
static void print_deferral(const struct delivery *d, const struct dlv_message *m)
{
	const struct dlv_rcpt *latest = NULL;
	uint64_t next = UINT64_MAX;
	for (uint32_t i = 0; i < m->nrcpt; i++) {
		const struct dlv_rcpt *rc = &d->r.rcpts[m->first + i];
		if (rc->outcome != DLV_DEFERRED)
			continue;
		if (rc->next_try < next)
			next = rc->next_try;
		if (!latest || rc->at >= latest->at)
			latest = rc;
	}
	if (!latest)
		return;
	char when[64];
	format_time(when, sizeof when, next * 1000000000ull, false);
	printf("  deferred: next try %s, %u attempts", when, latest->attempts);
	struct dlv_record rec;
	if (delivery_record(d, latest, &rec)) {
		if (rec.hop_len) {
			fputs(", ", stdout);
			put_escaped(stdout, rec.hop, rec.hop_len, false);
		}
		fputs(": ", stdout);
		put_escaped(stdout, rec.text, rec.text_len, false);
	}
	fputc('\n', stdout);
}

/* ---- list ---- */

struct list_ctx {
	struct segment *s;
	struct delivery d;
};

static int list_record(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
		       const struct spool_record_view *v, const char *reason)
{
	struct list_ctx *lc = ctx;
	struct segment *s = lc->s;
	if (ev != SPOOL_WALK_RECORD) {
		fprintf(stderr, "mxspool: %s: offset %" PRIu64 ": %s (%" PRIu64 " bytes skipped)\n",
			s->path, off, reason ? reason : "damaged", len);
		return 0;
	}
	char when[64];
	format_time(when, sizeof when, v->received_unix_ns, false);
	printf("%s %s %zu ", v->id, when, v->message_len);
	if (v->mail_from_len == 0)
		fputs("<>", stdout);
	else
		put_escaped(stdout, v->mail_from, v->mail_from_len, true);
	fputc(' ', stdout);
	size_t cur = 0;
	struct spool_rcpt_view r;
	bool first = true;
	while (spool_rcpt_next(v, &cur, &r)) {
		if (!first)
			fputc(',', stdout);
		put_escaped(stdout, r.addr, r.addr_len, true);
		first = false;
	}
	if (first)
		fputc('-', stdout);
	const struct dlv_message *m = lc->d.ok ? dlv_replay_find(&lc->d.r, off) : NULL;
	if (m) {
		struct route *rt = routes_of(v);
		printf(" %s\n", message_state(&lc->d, m, rt));
		free(rt);
		print_deferral(&lc->d, m);
	} else {
		fputs(" ?\n", stdout);
	}
	return 0;
}

static int list_segment(void *ctx, struct segment *s)
{
	(void)ctx;
	struct list_ctx lc = {.s = s};
	delivery_load(&lc.d, s);
	struct spool_walk_result res;
	spool_segment_walk(s->map, s->size, s->core, s->seq, list_record, &lc, &res);
	delivery_free(&lc.d);
	return 0;
}

static int cmd_list(void)
{
	int rc = for_each_segment(list_segment, NULL);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "mxspool: write error: %s\n", strerror(errno));
		return 1;
	}
	return rc < 0 ? 1 : 0;
}

/* ---- cat / show ---- */

struct find {
	const char *id;
	bool envelope;
	bool probe;        /* only whether it exists */
	bool found;
	bool write_error;
};

static void print_envelope(const struct segment *s, uint64_t off, uint64_t len,
			   const struct spool_record_view *v)
{
	static const char *const body[] = {"7BIT", "8BITMIME", "BINARYMIME"};
	static const char *const ret[] = {"-", "FULL", "HDRS"};
	char when[64];
	format_time(when, sizeof when, v->received_unix_ns, true);
	printf("id: %s\n", v->id);
	printf("segment: %s offset %" PRIu64 " length %" PRIu64 "\n", s->path, off, len);
	printf("received: %s\n", when);
	fputs("client: ", stdout);
	put_escaped(stdout, v->client_addr, v->client_addr_len, false);
	printf(" port %u\n", v->client_port);
	fputs("helo: ", stdout);
	put_escaped(stdout, v->helo, v->helo_len, false);
	printf(" (%s)\n", v->esmtp ? "EHLO" : "HELO");
	fputs("tls: ", stdout);
	if (v->tls) {
		put_escaped(stdout, v->tls_version, v->tls_version_len, false);
		fputc(' ', stdout);
		put_escaped(stdout, v->tls_cipher, v->tls_cipher_len, false);
	} else {
		fputs("no", stdout);
	}
	fputs("\nauth: ", stdout);
	if (v->authenticated)
		put_escaped(stdout, v->auth_user, v->auth_user_len, false);
	else
		fputs("no", stdout);
	fputs("\nmail-from: <", stdout);
	put_escaped(stdout, v->mail_from, v->mail_from_len, false);
	printf(">\nsize: %" PRIu64 "\n", v->size_param);
	printf("body: %s\n", body[v->body_type <= SMTP_BODY_BINARYMIME ? v->body_type : 0]);
	printf("smtputf8: %s\n", v->smtputf8 ? "yes" : "no");
	printf("chunking: %s\n", v->chunking ? "yes" : "no");
	printf("ret: %s\n", ret[v->ret <= SMTP_RET_HDRS ? v->ret : 0]);
	fputs("envid: ", stdout);
	if (v->envid)
		put_escaped(stdout, v->envid, v->envid_len, false);
	else
		fputc('-', stdout);
	printf("\nrecipients: %" PRIu32 "\n", v->nrcpt);
	size_t cur = 0;
	struct spool_rcpt_view r;
	while (spool_rcpt_next(v, &cur, &r)) {
		fputs("rcpt: <", stdout);
		put_escaped(stdout, r.addr, r.addr_len, false);
		fputs("> notify=", stdout);
		if (!r.notify) {
			fputc('-', stdout);
		} else {
			static const char *const names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
			bool first = true;
			for (int b = 0; b < 4; b++)
				if (r.notify & (1u << b)) {
					printf("%s%s", first ? "" : ",", names[b]);
					first = false;
				}
		}
		fputs(" orcpt=", stdout);
		if (r.orcpt)
			put_escaped(stdout, r.orcpt, r.orcpt_len, false);
		else
			fputc('-', stdout);
		fputc('\n', stdout);
	}
	printf("message-length: %zu\n", v->message_len);
}

/* Each recipient's delivery state, from the segment's delivery log. */
static void print_delivery(const struct segment *s, uint64_t off, const struct spool_record_view *v)
{
	struct delivery d;
	delivery_load(&d, s);
	const struct dlv_message *m = d.ok ? dlv_replay_find(&d.r, off) : NULL;
	if (!m) {
		delivery_free(&d);
		return;
	}
	struct route *rt = routes_of(v);
	printf("delivery-log: %s\n", d.map ? d.path : "none yet");
	printf("state: %s\n", message_state(&d, m, rt));
	size_t cur = 0;
	struct spool_rcpt_view r;
	for (uint32_t i = 0; i < m->nrcpt && spool_rcpt_next(v, &cur, &r); i++) {
		const struct dlv_rcpt *rc = &d.r.rcpts[m->first + i];
		char when[64];
		fputs("delivery: <", stdout);
		put_escaped(stdout, r.addr, r.addr_len, false);
		printf("> %s attempts=%u", rcpt_state(rc, rt ? &rt[i] : NULL), rc->attempts);
		if (rt && rt[i].kind == ROUTE_RELAY)
			printf(" route=%s", rt[i].via->hops[0].text);
		if (rc->outcome == DLV_DEFERRED) {
			format_time(when, sizeof when, rc->next_try * 1000000000ull, false);
			printf(" next-try=%s", when);
		}
		if (rc->record) {
			format_time(when, sizeof when, rc->at * 1000000000ull, false);
			printf(" at=%s", when);
		}
		struct dlv_record rec;
		if (delivery_record(&d, rc, &rec)) {
			if (rec.hop_len) {
				fputs(" via=", stdout);
				put_escaped(stdout, rec.hop, rec.hop_len, true);
			}
			fputs(" reply=", stdout);
			put_escaped(stdout, rec.text, rec.text_len, false);
		}
		fputc('\n', stdout);
	}
	free(rt);
	delivery_free(&d);
}

struct find_walk {
	struct find *f;
	struct segment *s;
};

static void emit(struct find *f, const struct segment *s, uint64_t off, uint64_t len,
		 const struct spool_record_view *v)
{
	f->found = true;
	if (f->probe)
		return;
	if (f->envelope) {
		print_envelope(s, off, len, v);
		print_delivery(s, off, v);
	}
	else if (v->message_len && fwrite(v->message, 1, v->message_len, stdout) != v->message_len)
		f->write_error = true;
}

static int find_record(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
		       const struct spool_record_view *v, const char *reason)
{
	(void)reason;
	struct find_walk *fw = ctx;
	if (ev != SPOOL_WALK_RECORD || strcmp(v->id, fw->f->id) != 0)
		return 0;
	emit(fw->f, fw->s, off, len, v);
	return 1;
}

/* The id says where the record should be: try there first. */
static int find_direct(void *ctx, struct segment *s)
{
	struct find *f = ctx;
	uint64_t off = strtoull(f->id + 8, NULL, 16);
	if (off < SPOOL_SEGMENT_HEADER_SIZE || off >= s->size)
		return 0;
	struct spool_record_view v;
	size_t rl;
	if (spool_record_decode(s->map + off, s->size - off, &v, &rl) != SPOOL_OK ||
	    strcmp(v.id, f->id) != 0)
		return 0;
	emit(f, s, off, rl, &v);
	return 1;
}

static int find_scan(void *ctx, struct segment *s)
{
	struct find_walk fw = {ctx, s};
	struct spool_walk_result res;
	spool_segment_walk(s->map, s->size, s->core, s->seq, find_record, &fw, &res);
	return res.stopped;
}

static bool parse_id(const char *arg, char id[SPOOL_ID_LEN + 1])
{
	if (strlen(arg) != SPOOL_ID_LEN)
		return false;
	for (int i = 0; i < SPOOL_ID_LEN; i++) {
		char c = arg[i];
		if (c >= 'a' && c <= 'f')
			c = (char)(c - 'a' + 'A');
		if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F')))
			return false;
		id[i] = c;
	}
	id[SPOOL_ID_LEN] = '\0';
	return true;
}

/* Look for f->id: where the id says first, then everywhere. 0 when found,
 * 1 with a message otherwise. */
static int find_message(struct find *f)
{
	const char *id = f->id;
	char tmp[9];
	memcpy(tmp, id, 2);
	tmp[2] = '\0';
	unsigned core = (unsigned)strtoul(tmp, NULL, 16);
	memcpy(tmp, id + 2, 6);
	tmp[6] = '\0';
	long long seq24 = strtoll(tmp, NULL, 16);
	struct stat st;
	if (stat(spool_dir, &st) < 0) {
		fprintf(stderr, "mxspool: %s: %s\n", spool_dir, strerror(errno));
		return 1;
	}
	for_each_segment_of(core, seq24, find_direct, f);
	if (!f->found)
		for_each_segment(find_scan, f);
	if (!f->found) {
		fprintf(stderr, "mxspool: no message %s in %s\n", id, spool_dir);
		return 1;
	}
	return 0;
}

static int cmd_cat(const char *arg, bool envelope)
{
	char id[SPOOL_ID_LEN + 1];
	if (!parse_id(arg, id)) {
		fprintf(stderr, "mxspool: not a message id: %s\n", arg);
		return 1;
	}
	struct find f = {.id = id, .envelope = envelope};
	if (find_message(&f) != 0)
		return 1;
	if (fflush(stdout) != 0 || ferror(stdout) || f.write_error) {
		fprintf(stderr, "mxspool: write error: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}

/* ---- retry / drop ---- */

/* A request file for the core that owns the message; mxd applies it. */
static int cmd_request(const char *arg, enum dlv_request_kind kind)
{
	struct dlv_request q;
	if (!dlv_id_parse(arg, strlen(arg), &q)) {
		fprintf(stderr, "mxspool: not a message id: %s\n", arg);
		return 1;
	}
	q.kind = kind;
	struct find f = {.id = q.id, .probe = true};
	if (find_message(&f) != 0)
		return 1;
	const char *what = "";
	if (dlv_request_write(spool_dir, &q, &what) < 0) {
		fprintf(stderr, "mxspool: %s %s: %s: %s\n", kind == DLV_REQ_DROP ? "drop" : "retry",
			q.id, what, strerror(errno));
		return 1;
	}
	printf("%s of %s requested: core %u takes it within a second while mxd runs, "
	       "else when mxd starts\n",
	       kind == DLV_REQ_DROP ? "drop" : "retry", q.id, q.core);
	return fflush(stdout) != 0 ? 1 : 0;
}

/* ---- verify ---- */

struct verify {
	uint64_t ok, corrupt, torn, bad_headers, misplaced;
	struct segment *s;
};

static int verify_record(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
			 const struct spool_record_view *v, const char *reason)
{
	struct verify *vr = ctx;
	switch (ev) {
	case SPOOL_WALK_RECORD: {
		char want[SPOOL_ID_LEN + 1];
		spool_make_id(want, vr->s->core, vr->s->seq, off);
		if (strcmp(want, v->id) != 0) {
			printf("%s: offset %" PRIu64 ": id %s does not match its position (expected %s)\n",
			       vr->s->path, off, v->id, want);
			vr->misplaced++;
		}
		vr->ok++;
		break;
	}
	case SPOOL_WALK_CORRUPT:
		printf("%s: offset %" PRIu64 ": %s (%" PRIu64 " bytes up to the next intact record)\n",
		       vr->s->path, off, reason, len);
		vr->corrupt++;
		break;
	case SPOOL_WALK_TORN:
		printf("%s: offset %" PRIu64 ": torn tail: %s (%" PRIu64 " bytes to the end)\n",
		       vr->s->path, off, reason, len);
		vr->torn++;
		break;
	}
	return 0;
}

static int verify_segment(void *ctx, struct segment *s)
{
	struct verify *vr = ctx;
	if (s->header != SPOOL_OK) {
		printf("%s: offset 0: bad header: %s\n", s->path, s->header_reason);
		vr->bad_headers++;
	}
	vr->s = s;
	struct spool_walk_result res;
	spool_segment_walk(s->map, s->size, s->core, s->seq, verify_record, vr, &res);
	return 0;
}

static int cmd_verify(void)
{
	struct verify vr = {0};
	int rc = for_each_segment(verify_segment, &vr);
	printf("%" PRIu64 " records ok, %" PRIu64 " corrupt, %" PRIu64 " torn", vr.ok, vr.corrupt,
	       vr.torn);
	if (vr.bad_headers)
		printf(", %" PRIu64 " bad segment headers", vr.bad_headers);
	if (vr.misplaced)
		printf(", %" PRIu64 " misplaced ids", vr.misplaced);
	putchar('\n');
	if (fflush(stdout) != 0)
		rc = -1;
	return rc < 0 || vr.corrupt || vr.torn || vr.bad_headers || vr.misplaced ? 1 : 0;
}

/* ---- export ---- */

struct export {
	const char *out;
	int tmp_fd, new_fd;
	char **cur;        /* names in cur/ up to their ':', sorted */
	size_t ncur;
	uint64_t exported, skipped, failed;
	struct segment *s;
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_cur(struct export *ex, int cur_fd)
{
	int fd = dup(cur_fd);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	size_t cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (ex->ncur == cap) {
			cap = cap ? cap * 2 : 64;
			char **p = realloc(ex->cur, cap * sizeof *p);
			if (!p) {
				closedir(d);
				return -1;
			}
			ex->cur = p;
		}
		char *name = strdup(de->d_name);
		if (!name) {
			closedir(d);
			return -1;
		}
		char *colon = strchr(name, ':');
		if (colon)
			*colon = '\0';
		ex->cur[ex->ncur++] = name;
	}
	closedir(d);
	if (ex->ncur)
		qsort(ex->cur, ex->ncur, sizeof *ex->cur, cmp_str);
	return 0;
}

static bool in_cur(const struct export *ex, const char *name)
{
	return ex->ncur && bsearch(&name, ex->cur, ex->ncur, sizeof *ex->cur, cmp_str) != NULL;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int export_one(struct export *ex, const struct spool_record_view *v)
{
	char name[128];
	snprintf(name, sizeof name, "%" PRIu64 ".M%s.mxd", v->received_unix_ns / 1000000000u, v->id);
	struct stat st;
	if (in_cur(ex, name) || fstatat(ex->new_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		ex->skipped++;
		return 0;
	}
	int fd = openat(ex->tmp_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 && errno == EEXIST) { /* left over by an interrupted export */
		unlinkat(ex->tmp_fd, name, 0);
		fd = openat(ex->tmp_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	}
	if (fd < 0) {
		fprintf(stderr, "mxspool: %s/tmp/%s: %s\n", ex->out, name, strerror(errno));
		return -1;
	}
	if (write_all(fd, v->message, v->message_len) < 0 || fsync(fd) < 0) {
		fprintf(stderr, "mxspool: %s/tmp/%s: %s\n", ex->out, name, strerror(errno));
		close(fd);
		unlinkat(ex->tmp_fd, name, 0);
		return -1;
	}
	close(fd);
	/* link, not rename: never replace a message a reader already has */
	int rc = linkat(ex->tmp_fd, name, ex->new_fd, name, 0);
	int saved = errno;
	unlinkat(ex->tmp_fd, name, 0);
	if (rc < 0 && saved == EEXIST) {
		ex->skipped++;
		return 0;
	}
	if (rc < 0) {
		fprintf(stderr, "mxspool: %s/new/%s: %s\n", ex->out, name, strerror(saved));
		return -1;
	}
	ex->exported++;
	return 0;
}

static int export_record(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
			 const struct spool_record_view *v, const char *reason)
{
	struct export *ex = ctx;
	if (ev != SPOOL_WALK_RECORD) {
		fprintf(stderr, "mxspool: %s: offset %" PRIu64 ": %s (%" PRIu64 " bytes skipped)\n",
			ex->s->path, off, reason, len);
		return 0;
	}
	if (export_one(ex, v) < 0)
		ex->failed++;
	return ex->failed > 10; /* a full disk: stop trying */
}

static int export_segment(void *ctx, struct segment *s)
{
	struct export *ex = ctx;
	ex->s = s;
	struct spool_walk_result res;
	spool_segment_walk(s->map, s->size, s->core, s->seq, export_record, ex, &res);
	return res.stopped;
}

static int open_subdir(int dir_fd, const char *out, const char *name)
{
	if (mkdirat(dir_fd, name, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "mxspool: %s/%s: %s\n", out, name, strerror(errno));
		return -1;
	}
	int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "mxspool: %s/%s: %s\n", out, name, strerror(errno));
	return fd;
}

static int cmd_export(const char *out)
{
	struct stat st;
	if (stat(spool_dir, &st) < 0) {
		fprintf(stderr, "mxspool: %s: %s\n", spool_dir, strerror(errno));
		return 1;
	}
	if (mkdir(out, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "mxspool: %s: %s\n", out, strerror(errno));
		return 1;
	}
	int out_fd = open(out, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (out_fd < 0) {
		fprintf(stderr, "mxspool: %s: %s\n", out, strerror(errno));
		return 1;
	}
	struct export ex = {.out = out, .tmp_fd = -1, .new_fd = -1};
	int cur_fd = -1, rc = 1;
	ex.tmp_fd = open_subdir(out_fd, out, "tmp");
	ex.new_fd = open_subdir(out_fd, out, "new");
	cur_fd = open_subdir(out_fd, out, "cur");
	if (ex.tmp_fd < 0 || ex.new_fd < 0 || cur_fd < 0)
		goto done;
	if (load_cur(&ex, cur_fd) < 0) {
		fprintf(stderr, "mxspool: %s/cur: %s\n", out, strerror(errno));
		goto done;
	}
	int walk = for_each_segment(export_segment, &ex);
	if (fsync(ex.new_fd) < 0) {
		fprintf(stderr, "mxspool: %s/new: %s\n", out, strerror(errno));
		ex.failed++;
	}
	printf("exported %" PRIu64 " messages to %s (%" PRIu64 " already there)\n", ex.exported, out,
	       ex.skipped);
	rc = walk < 0 || ex.failed ? 1 : 0;
done:
	for (size_t i = 0; i < ex.ncur; i++)
		free(ex.cur[i]);
	free(ex.cur);
	if (ex.tmp_fd >= 0)
		close(ex.tmp_fd);
	if (ex.new_fd >= 0)
		close(ex.new_fd);
	if (cur_fd >= 0)
		close(cur_fd);
	close(out_fd);
	if (fflush(stdout) != 0)
		rc = 1;
	return rc;
}

/* ---- main ---- */

static void free_config(void)
{
	policy_free(config_policy);
	conf_free(config);
}

/* -f: parse the config and compile its rules, as mxd -n would. */
static int load_config(const char *path)
{
	atexit(free_config);
	struct buf errs;
	buf_init(&errs, 1 << 20);
	config = conf_load(path, &errs);
	if (config)
		config_policy = policy_build(config, &errs);
	if (!config || !config_policy) {
		fprintf(stderr, "%.*s", (int)errs.len, errs.data ? errs.data : "");
		fprintf(stderr, "mxspool: %s: not a usable config\n", path);
		buf_free(&errs);
		return -1;
	}
	buf_free(&errs);
	return 0;
}

static void on_sigbus(int sig)
{
	(void)sig;
	static const char msg[] = "mxspool: a segment shrank while being read "
				  "(mxd cut back a failed write?); run the command again\n";
	ssize_t rc = write(STDERR_FILENO, msg, sizeof msg - 1);
	(void)rc;
	_exit(1);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigbus;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);

	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		}
	int opt;
	const char *config_path = NULL;
	while ((opt = getopt(argc, argv, "+d:f:h")) != -1) {
		switch (opt) {
		case 'd':
			spool_dir = optarg;
			break;
		case 'f':
			config_path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind++];
	int nargs = argc - optind;
	char **args = argv + optind;
	if (config_path && load_config(config_path) < 0)
		return 1;

	if (strcmp(cmd, "list") == 0 && nargs == 0)
		return cmd_list();
	if (strcmp(cmd, "verify") == 0 && nargs == 0)
		return cmd_verify();
	if (strcmp(cmd, "cat") == 0 && nargs == 1 && args[0][0] != '-')
		return cmd_cat(args[0], false);
	if (strcmp(cmd, "cat") == 0 && nargs == 2 && strcmp(args[0], "--envelope") == 0)
		return cmd_cat(args[1], true);
	if (strcmp(cmd, "show") == 0 && nargs == 1)
		return cmd_cat(args[0], true);
	if (strcmp(cmd, "export") == 0 && nargs == 2 && strcmp(args[0], "--maildir") == 0)
		return cmd_export(args[1]);
	if (strcmp(cmd, "retry") == 0 && nargs == 1)
		return cmd_request(args[0], DLV_REQ_RETRY);
	if (strcmp(cmd, "drop") == 0 && nargs == 1)
		return cmd_request(args[0], DLV_REQ_DROP);
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "mxspool: bad command line: %s%s\n", cmd,
		nargs ? " ..." : "");
	usage(stderr);
	return 2;
}
