/* fuzz_delivery_state: arbitrary bytes as a delivery log (.dlv), replayed
 * over a fixed segment of three messages; also as a request file, and as
 * retry-schedule parameters.
 *
 * Properties checked besides "no crash, no out-of-bounds read":
 *   - walking the .dlv accounts for every byte after the header: records,
 *     corrupt regions and the torn tail cover [32, size) exactly;
 *   - a record that decodes re-encodes to exactly the same bytes, and
 *     every prefix of it is a torn record;
 *   - replay applies each record or counts it an orphan, never both;
 *     states stay in range; a reclaimable segment has only finished
 *     messages;
 *   - a request file that parses formats back to the same bytes;
 *   - a retry delay stays within 20% of the capped doubling, and the next
 *     try never passes the end of the lifetime.
 *
 * The seed corpus (tests/fuzz/corpus/delivery_state/) is written by the
 * target itself: MXD_FUZZ_DLV_SEEDS=DIR build-fuzz/bin/fuzz_delivery_state
 * writes logs that name the fixed segment's real messages, then exits. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery_request.h"
#include "delivery_state.h"

static struct buf segment;
static uint64_t offsets[3];

static void add_message(const char *from, uint32_t nrcpt, const uint8_t *notify, uint64_t secs)
{
	static char *addrs[] = {"a@example.com", "b@example.com", "c@example.com"};
	struct smtp_rcpt r[3];
	memset(r, 0, sizeof r);
	for (uint32_t i = 0; i < nrcpt; i++) {
		r[i].addr = addrs[i];
		r[i].notify = notify[i];
	}
	struct smtp_envelope e;
	memset(&e, 0, sizeof e);
	e.helo = "h.example";
	e.mail_from = (char *)from;
	e.rcpts = r;
	e.nrcpt = nrcpt;
	struct smtp_peer peer;
	memset(&peer, 0, sizeof peer);
	snprintf(peer.addr_str, sizeof peer.addr_str, "192.0.2.1");
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 0, 1, segment.len);
	struct spool_meta m = {.id = id, .received_unix_ns = secs * 1000000000ull, .env = &e,
			       .peer = &peer};
	const char *msg = "Subject: x\r\n\r\nx\r\n";
	struct buf head;
	buf_init(&head, 0);
	if (spool_record_head(&head, &m, strlen(msg)) < 0)
		abort();
	const void *parts[1] = {msg};
	size_t lens[1] = {strlen(msg)};
	spool_record_seal(&head, parts, lens, 1);
	buf_append(&segment, head.data, head.len);
	buf_append(&segment, msg, strlen(msg));
	buf_free(&head);
}

static void build_segment(void)
{
	uint8_t h[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(h, 0, 1, 1);
	buf_init(&segment, 0);
	buf_append(&segment, h, sizeof h);
	const uint8_t none[3] = {0, 0, 0};
	const uint8_t mixed[3] = {SMTP_NOTIFY_NEVER, SMTP_NOTIFY_SUCCESS, SMTP_NOTIFY_FAILURE};
	offsets[0] = segment.len;
	add_message("s@example.org", 2, none, 1700000000);
	offsets[1] = segment.len;
	add_message("", 1, none, 1700000100);
	offsets[2] = segment.len;
	add_message("s@example.org", 3, mixed, 1700000200);
}

static void put(struct buf *b, uint64_t msg, uint32_t rcpt, enum dlv_outcome o, uint16_t att,
		uint16_t code, const char *text)
{
	struct dlv_record r = {.msg_offset = msg, .rcpt = rcpt, .outcome = o, .attempts = att,
			       .code = code, .next_try = o == DLV_DEFERRED ? 1700000600 : 0,
			       .at = 1700000300, .hop = "smtp://10.0.0.1:25", .hop_len = 18,
			       .text = text, .text_len = strlen(text)};
	uint8_t rec[DLV_RECORD_MAX];
	buf_append(b, rec, dlv_record_encode(rec, sizeof rec, &r));
}

static void write_seed(const char *dir, const char *name, const struct buf *b)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(b->data, 1, b->len, f) != b->len || fclose(f) != 0) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(1);
	}
}

static void write_seeds(const char *dir)
{
	struct buf b;
	buf_init(&b, 0);
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, 0, 1);
	buf_append(&b, h, sizeof h);
	write_seed(dir, "header-only", &b);
	put(&b, offsets[0], 0, DLV_DEFERRED, 1, 451, "451 4.3.0 try again later");
	put(&b, offsets[0], 1, DLV_DELIVERED, 1, 250, "250 2.0.0 ok");
	put(&b, offsets[1], 0, DLV_FAILED, 1, 550, "550 5.1.1 unknown user");
	put(&b, offsets[2], 0, DLV_FAILED, 1, 550, "550 5.7.1 no");
	put(&b, offsets[2], 1, DLV_EXPIRED, 30, 0, "connection refused");
	put(&b, offsets[2], 2, DLV_BOUNCED, 2, 552, "552 5.2.2 over quota; DSN queued");
	write_seed(dir, "mixed", &b);
	put(&b, offsets[0], 0, DLV_DELIVERED, 2, 250, "250 2.0.0 ok");
	write_seed(dir, "reclaimable", &b);
	put(&b, offsets[0], 1, DLV_DROPPED, 1, 0, "dropped by the operator");
	put(&b, offsets[1] + 1, 0, DLV_DELIVERED, 1, 250, "orphan");
	struct buf t;
	buf_init(&t, 0);
	buf_append(&t, b.data, b.len - 7); /* torn tail */
	write_seed(dir, "torn", &t);
	buf_reset(&t);
	buf_append(&t, b.data, b.len);
	t.data[DLV_HEADER_SIZE + 70] ^= 0x10; /* a corrupt region */
	write_seed(dir, "corrupt", &t);
	buf_reset(&t);
	buf_append_str(&t, "mxd-request 1\nretry 0000000100000040\n");
	write_seed(dir, "request-retry", &t);
	buf_reset(&t);
	buf_append_str(&t, "mxd-request 1\ndrop 0000000100000040\n");
	write_seed(dir, "request-drop", &t);
	buf_free(&t);
	buf_free(&b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	build_segment();
	const char *dir = getenv("MXD_FUZZ_DLV_SEEDS");
	if (dir) {
		write_seeds(dir);
		exit(0);
	}
	return 0;
}

struct tally {
	uint64_t next, size, records;
};

static int on_walk(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
		   const struct dlv_record *r, const char *why)
{
	struct tally *t = ctx;
	if (off != t->next || len == 0 || off + len > t->size)
		abort();
	t->next = off + len;
	if (ev == SPOOL_WALK_RECORD) {
		t->records++;
		if (!r || why || r->outcome < DLV_DELIVERED || r->outcome > DLV_OUTCOME_MAX)
			abort();
	} else if (!why) {
		abort();
	}
	return 0;
}

/* A decoded record encodes to the same bytes; its prefixes are torn. */
static void check_record(const uint8_t *p, size_t avail)
{
	struct dlv_record r;
	size_t len;
	if (dlv_record_decode(p, avail, &r, &len, NULL) != SPOOL_OK)
		return;
	if (len < DLV_RECORD_FIXED || len > DLV_RECORD_MAX || len > avail)
		abort();
	uint8_t out[DLV_RECORD_MAX];
	if (dlv_record_encode(out, sizeof out, &r) != len || memcmp(out, p, len) != 0)
		abort();
	if (dlv_record_decode(p, len - 1, NULL, NULL, NULL) != SPOOL_TRUNCATED)
		abort();
}

static void check_replay(const uint8_t *dlv, size_t size)
{
	struct dlv_replay r;
	if (dlv_replay((const uint8_t *)segment.data, segment.len, 0, 1, dlv, size, &r) < 0)
		return;
	if (r.nmsgs != 3 || r.nrcpts != 6)
		abort();
	uint64_t applied = 0;
	for (size_t i = 0; i < r.nrcpts; i++) {
		const struct dlv_rcpt *rc = &r.rcpts[i];
		if ((unsigned)rc->outcome > DLV_OUTCOME_MAX)
			abort();
		if (rc->record && (rc->record < DLV_HEADER_SIZE || rc->record >= size))
			abort();
		applied += rc->record != 0;
	}
	if (r.orphans > r.dlv.records || applied > r.dlv.records - r.orphans)
		abort();
	bool all = true;
	for (size_t i = 0; i < r.nmsgs; i++) {
		if (!dlv_message_summary(&r, &r.msgs[i]))
			abort();
		all &= dlv_message_finished(&r, &r.msgs[i]);
	}
	if (dlv_segment_reclaimable(&r, false) != all || dlv_segment_reclaimable(&r, true))
		abort();
	/* a request on each message leaves it with nothing more to do */
	for (size_t i = 0; i < r.nmsgs; i++) {
		struct dlv_record recs[4];
		struct dlv_request q = {.kind = DLV_REQ_DROP};
		size_t n = dlv_request_records(&r, &r.msgs[i], &q, 1, recs, 4);
		for (size_t k = 0; k < n; k++)
			if (dlv_replay_apply(&r, &recs[k], DLV_HEADER_SIZE) != 0)
				abort();
		if (!dlv_message_finished(&r, &r.msgs[i]))
			abort();
	}
	if (!dlv_segment_reclaimable(&r, false))
		abort();
	dlv_replay_free(&r);
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void check_schedule(const uint8_t *data, size_t size)
{
	if (size < 16)
		return;
	uint32_t attempts = le32(data) & 0xffff, first = le32(data + 4) | 1,
		 max = le32(data + 8), rnd = le32(data + 12);
	if (max < first)
		max = first;
	uint64_t base = first;
	for (uint32_t i = 1; i < attempts && base < max; i++)
		base *= 2;
	if (base > max)
		base = max;
	uint64_t d = dlv_retry_delay_ms(attempts, first, max, rnd);
	if (d < base * 4 / 5 || d > base * 6 / 5 + 1 || d == 0)
		abort();
	bool expired;
	uint64_t received = 1700000000, now = received + (rnd & 0xfffff);
	uint32_t life = first; /* reuse: some lifetimes are short, some long */
	uint64_t next = dlv_next_try(received, now, attempts, first, max, life, rnd, &expired);
	uint64_t deadline = received + (life + 999u) / 1000u;
	if (expired != (now >= deadline) || (!expired && (next > deadline || next < now)))
		abort();
}

/* With each record's CRC made right, so mutations reach the field checks. */
static void fix_crcs(uint8_t *p, size_t size)
{
	size_t pos = DLV_HEADER_SIZE;
	while (pos + 12 <= size && memcmp(p + pos, DLV_RECORD_MAGIC, 4) == 0) {
		uint32_t len = le32(p + pos + 4);
		if (len < 12 || len > size - pos)
			return;
		uint32_t c = crc32c(0, p + pos + 12, len - 12);
		for (int i = 0; i < 4; i++)
			p[pos + 8 + i] = (uint8_t)(c >> (8 * i));
		pos += len;
	}
}

static void one_log(const uint8_t *data, size_t size)
{
	struct tally t = {.next = DLV_HEADER_SIZE, .size = size};
	struct spool_walk_result res;
	dlv_walk(data, size, on_walk, &t, &res);
	if (size > DLV_HEADER_SIZE && (t.next != size || res.good_end + res.torn_bytes != size))
		abort();
	if (t.records != res.records)
		abort();
	for (size_t pos = DLV_HEADER_SIZE; pos < size && pos < DLV_HEADER_SIZE + 4096; pos++)
		if (data[pos] == 'M')
			check_record(data + pos, size - pos);
	check_replay(data, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	one_log(data, size);
	if (size >= DLV_HEADER_SIZE + 12) {
		uint8_t *copy = malloc(size);
		if (!copy)
			return 0;
		memcpy(copy, data, size);
		fix_crcs(copy, size);
		one_log(copy, size);
		free(copy);
	}

	struct dlv_request q;
	const char *why;
	if (dlv_request_parse((const char *)data, size, &q, &why) == 0) {
		char out[DLV_REQUEST_MAX];
		size_t n = dlv_request_format(out, sizeof out, &q);
		/* the same bytes, but the id is written in upper case */
		if (n != size || n < SPOOL_ID_LEN + 1 ||
		    memcmp(out, data, n - SPOOL_ID_LEN - 1) != 0)
			abort();
		for (size_t i = n - SPOOL_ID_LEN - 1; i < n; i++) {
			char a = out[i], b = (char)data[i];
			if (b >= 'a' && b <= 'f')
				b = (char)(b - 'a' + 'A');
			if (a != b)
				abort();
		}
	}
	check_schedule(data, size);
	return 0;
}
