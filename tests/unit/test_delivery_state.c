/* test_delivery_state: the .dlv format (header, records, damage), replay
 * over a real segment, finished / reclaimable, the retry schedule, and the
 * recovery that cuts a torn tail. */
#include "check.h"
#include "delivery_state.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a segment with known messages ---- */

struct msg_spec {
	const char *from;
	uint32_t nrcpt;
	uint8_t notify[4];
	uint64_t received_s;
};

/* Appends a segment (core, seq) of the given messages; offs[i] is where
 * message i starts. */
static void build_segment(struct buf *seg, unsigned core, uint64_t seq,
			  const struct msg_spec *specs, size_t n, uint64_t *offs)
{
	uint8_t h[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(h, core, seq, 1);
	buf_append(seg, h, sizeof h);
	struct smtp_peer peer;
	memset(&peer, 0, sizeof peer);
	snprintf(peer.addr_str, sizeof peer.addr_str, "192.0.2.1");
	for (size_t i = 0; i < n; i++) {
		struct smtp_rcpt r[4];
		memset(r, 0, sizeof r);
		static char *addrs[] = {"a@example.com", "b@example.com", "c@example.com",
					"d@example.com"};
		for (uint32_t k = 0; k < specs[i].nrcpt; k++) {
			r[k].addr = addrs[k];
			r[k].notify = specs[i].notify[k];
		}
		struct smtp_envelope e;
		memset(&e, 0, sizeof e);
		e.helo = "h.example";
		e.esmtp = true;
		e.mail_from = (char *)specs[i].from;
		e.rcpts = r;
		e.nrcpt = specs[i].nrcpt;
		char id[SPOOL_ID_LEN + 1];
		spool_make_id(id, core, seq, seg->len);
		struct spool_meta m = {.id = id,
				       .received_unix_ns = specs[i].received_s * 1000000000ull,
				       .env = &e,
				       .peer = &peer};
		const char *msg = "Subject: t\r\n\r\nbody\r\n";
		struct buf head;
		buf_init(&head, 0);
		CHECK(spool_record_head(&head, &m, strlen(msg)) == 0);
		const void *parts[1] = {msg};
		size_t lens[1] = {strlen(msg)};
		spool_record_seal(&head, parts, lens, 1);
		offs[i] = seg->len;
		buf_append(seg, head.data, head.len);
		buf_append(seg, msg, strlen(msg));
		buf_free(&head);
	}
}

static void put(struct buf *dlv, uint64_t msg, uint32_t rcpt, enum dlv_outcome o,
		uint16_t attempts, uint16_t code, uint64_t next_try, const char *text)
{
	struct dlv_record r = {.msg_offset = msg, .rcpt = rcpt, .outcome = o,
			       .attempts = attempts, .code = code, .next_try = next_try,
			       .at = 1700000000, .hop = "lmtp://127.0.0.1:24", .hop_len = 19,
			       .text = text, .text_len = strlen(text)};
	uint8_t b[DLV_RECORD_MAX];
	size_t n = dlv_record_encode(b, sizeof b, &r);
	CHECK(n == dlv_record_size(&r));
	buf_append(dlv, b, n);
}

/* ---- the format ---- */

static void test_header(void)
{
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, 3, 77);
	CHECK(memcmp(h, "MXDDLV01", 8) == 0);
	unsigned core = 0;
	uint64_t seq = 0;
	const char *why = "x";
	CHECK(dlv_file_header_check(h, sizeof h, &core, &seq, &why) == SPOOL_OK);
	CHECK(core == 3 && seq == 77 && why == NULL);
	CHECK(dlv_file_header_check(h, sizeof h - 1, &core, &seq, &why) == SPOOL_TRUNCATED);
	for (size_t i = 0; i < sizeof h; i++) {
		h[i] ^= 0x20;
		CHECK(dlv_file_header_check(h, sizeof h, NULL, NULL, NULL) == SPOOL_CORRUPT);
		h[i] ^= 0x20;
	}
}

static void test_record(void)
{
	char text[DLV_TEXT_MAX + 50];
	memset(text, 'x', sizeof text);
	struct dlv_record r = {.msg_offset = 0x123456789ull, .rcpt = 7, .outcome = DLV_DEFERRED,
			       .attempts = 3, .code = 451, .next_try = 1800000000ull,
			       .at = 1700000000ull, .hop = "smtp://[::1]:25", .hop_len = 15,
			       .text = "451 4.3.0 try later", .text_len = 19};
	uint8_t b[DLV_RECORD_MAX];
	size_t n = dlv_record_encode(b, sizeof b, &r);
	CHECK(n == DLV_RECORD_FIXED + 15 + 19);
	CHECK(memcmp(b, "MXDL", 4) == 0);
	struct dlv_record d;
	size_t len = 0;
	const char *why = "x";
	CHECK(dlv_record_decode(b, n, &d, &len, &why) == SPOOL_OK && why == NULL);
	CHECK(len == n);
	CHECK(d.msg_offset == r.msg_offset && d.rcpt == 7 && d.outcome == DLV_DEFERRED);
	CHECK(d.attempts == 3 && d.code == 451 && d.next_try == r.next_try && d.at == r.at);
	CHECK(d.hop_len == 15 && memcmp(d.hop, "smtp://[::1]:25", 15) == 0);
	CHECK(d.text_len == 19 && memcmp(d.text, "451 4.3.0 try later", 19) == 0);
	/* with more bytes after it, the same */
	CHECK(dlv_record_decode(b, sizeof b, NULL, &len, NULL) == SPOOL_OK && len == n);

	/* every prefix is a torn record; every flipped bit is corrupt */
	for (size_t k = 0; k < n; k++)
		CHECK(dlv_record_decode(b, k, NULL, NULL, NULL) == SPOOL_TRUNCATED);
	int corrupt = 0;
	for (size_t k = 0; k < n; k++) {
		b[k] ^= 0x01;
		enum spool_decode dd = dlv_record_decode(b, n, NULL, NULL, NULL);
		/* a length that grew is "cut short" until the bytes are there */
		corrupt += dd == SPOOL_CORRUPT || (k >= 4 && k < 8 && dd == SPOOL_TRUNCATED);
		b[k] ^= 0x01;
	}
	CHECK(corrupt == (int)n);

	/* text and hop are cut to their bounds */
	r.text = text;
	r.text_len = sizeof text;
	n = dlv_record_encode(b, sizeof b, &r);
	CHECK(n == DLV_RECORD_FIXED + 15 + DLV_TEXT_MAX);
	CHECK(dlv_record_decode(b, n, &d, NULL, NULL) == SPOOL_OK && d.text_len == DLV_TEXT_MAX);
	/* too small a buffer, or an outcome no record holds */
	CHECK(dlv_record_encode(b, n - 1, &r) == 0);
	r.outcome = DLV_QUEUED;
	CHECK(dlv_record_encode(b, sizeof b, &r) == 0);
	r.outcome = (enum dlv_outcome)7;
	CHECK(dlv_record_encode(b, sizeof b, &r) == 0);
	for (int o = DLV_DELIVERED; o <= DLV_OUTCOME_MAX; o++) {
		r.outcome = (enum dlv_outcome)o;
		CHECK(dlv_record_encode(b, sizeof b, &r) > 0);
	}
	CHECK_STR_EQ(dlv_outcome_name(DLV_QUEUED), "queued");
	CHECK_STR_EQ(dlv_outcome_name(DLV_EXPIRED), "expired");
	CHECK_STR_EQ(dlv_outcome_name(DLV_BOUNCED), "bounced");
}

struct walk_tally {
	int records, corrupt, torn;
	uint64_t next;
};

static int tally(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
		 const struct dlv_record *r, const char *why)
{
	struct walk_tally *t = ctx;
	CHECK(off == t->next);
	t->next = off + len;
	if (ev == SPOOL_WALK_RECORD) {
		t->records++;
		CHECK(r != NULL && why == NULL);
	} else {
		CHECK(why != NULL);
		if (ev == SPOOL_WALK_CORRUPT)
			t->corrupt++;
		else
			t->torn++;
	}
	return 0;
}

static void test_walk(void)
{
	struct buf dlv;
	buf_init(&dlv, 0);
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, 0, 1);
	buf_append(&dlv, h, sizeof h);
	size_t at[6];
	for (int i = 0; i < 5; i++) {
		at[i] = dlv.len;
		put(&dlv, 64, (uint32_t)i, DLV_DEFERRED, 1, 451, 5, "451 4.3.0 later");
	}
	at[5] = dlv.len;
	struct spool_walk_result res;
	struct walk_tally t = {.next = DLV_HEADER_SIZE};
	dlv_walk((uint8_t *)dlv.data, dlv.len, tally, &t, &res);
	CHECK(t.records == 5 && res.records == 5 && res.good_end == dlv.len && res.torn_bytes == 0);

	/* a damaged record in the middle: skipped, the rest kept */
	dlv.data[at[2] + 30] ^= 0x40;
	t = (struct walk_tally){.next = DLV_HEADER_SIZE};
	dlv_walk((uint8_t *)dlv.data, dlv.len, tally, &t, &res);
	CHECK(t.records == 4 && t.corrupt == 1 && t.torn == 0);
	CHECK(res.corrupt_bytes == at[3] - at[2] && res.good_end == dlv.len);
	dlv.data[at[2] + 30] ^= 0x40;

	/* a torn tail: every cut inside the last record */
	for (size_t cut = at[4] + 1; cut < at[5]; cut++) {
		t = (struct walk_tally){.next = DLV_HEADER_SIZE};
		dlv_walk((uint8_t *)dlv.data, cut, tally, &t, &res);
		CHECK(t.records == 4 && t.torn == 1 && res.good_end == at[4]);
		CHECK(res.torn_bytes == cut - at[4]);
		CHECK(t.next == cut);
	}
	/* garbage after the last record */
	buf_append(&dlv, "MXDL\xff\xff", 6);
	t = (struct walk_tally){.next = DLV_HEADER_SIZE};
	dlv_walk((uint8_t *)dlv.data, dlv.len, tally, &t, &res);
	CHECK(t.records == 5 && t.torn == 1 && res.good_end == at[5] && res.torn_bytes == 6);
	/* only a header, or less */
	dlv_walk((uint8_t *)dlv.data, DLV_HEADER_SIZE, NULL, NULL, &res);
	CHECK(res.records == 0 && res.good_end == DLV_HEADER_SIZE && res.torn_bytes == 0);
	dlv_walk((uint8_t *)dlv.data, 10, NULL, NULL, &res);
	CHECK(res.records == 0 && res.good_end == 10);
	buf_free(&dlv);
}

/* ---- replay ---- */

static void test_replay(void)
{
	const struct msg_spec specs[] = {
		{"s@example.org", 2, {0, 0}, 1000},                            /* m0 */
		{"", 1, {0}, 1000},                                            /* m1: null sender */
		{"s@example.org", 3, {SMTP_NOTIFY_NEVER, SMTP_NOTIFY_SUCCESS,
				      SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY}, 2000}, /* m2 */
	};
	uint64_t offs[3];
	struct buf seg, dlv;
	buf_init(&seg, 0);
	buf_init(&dlv, 0);
	build_segment(&seg, 1, 5, specs, 3, offs);
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, 1, 5);
	buf_append(&dlv, h, sizeof h);

	/* no .dlv at all: everything queued */
	struct dlv_replay r;
	CHECK(dlv_replay((uint8_t *)seg.data, seg.len, 1, 5, NULL, 0, &r) == 0);
	CHECK(r.nmsgs == 3 && r.nrcpts == 6 && r.seg.records == 3);
	CHECK(r.msgs[0].offset == offs[0] && r.msgs[2].offset == offs[2]);
	CHECK(r.msgs[0].received == 1000 && r.msgs[2].received == 2000);
	CHECK(!r.msgs[0].null_sender && r.msgs[1].null_sender);
	CHECK(r.msgs[2].first == 3 && r.rcpts[3].notify == SMTP_NOTIFY_NEVER);
	CHECK(r.rcpts[5].notify == (SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY));
	for (size_t i = 0; i < r.nrcpts; i++)
		CHECK(r.rcpts[i].outcome == DLV_QUEUED && r.rcpts[i].record == 0);
	CHECK(!dlv_segment_reclaimable(&r, false));
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[0]), "queued");
	CHECK(dlv_replay_find(&r, offs[1]) == &r.msgs[1]);
	CHECK(dlv_replay_find(&r, offs[1] + 1) == NULL);
	CHECK(dlv_replay_find(&r, 0) == NULL);
	dlv_replay_free(&r);

	/* m0: a@ deferred twice then delivered; b@ deferred */
	put(&dlv, offs[0], 0, DLV_DEFERRED, 1, 451, 1100, "451 4.3.0 one");
	size_t b_rec = dlv.len;
	put(&dlv, offs[0], 1, DLV_DEFERRED, 1, 0, 1100, "connection refused");
	put(&dlv, offs[0], 0, DLV_DEFERRED, 2, 451, 1300, "451 4.3.0 two");
	size_t a_rec = dlv.len;
	put(&dlv, offs[0], 0, DLV_DELIVERED, 3, 250, 0, "250 2.0.0 ok");
	/* m1 (null sender): failed, no DSN due */
	put(&dlv, offs[1], 0, DLV_FAILED, 1, 550, 0, "550 5.1.1 no such user");
	/* orphans: an offset that is no message, a recipient past the count */
	put(&dlv, offs[1] + 4, 0, DLV_DELIVERED, 1, 250, 0, "250 ok");
	put(&dlv, offs[1], 1, DLV_DELIVERED, 1, 250, 0, "250 ok");
	/* m2: NOTIFY=NEVER failed (finished), SUCCESS-only expired (finished,
	 * no failure DSN), FAILURE failed (not finished: the DSN is due) */
	put(&dlv, offs[2], 0, DLV_FAILED, 1, 550, 0, "550 no");
	put(&dlv, offs[2], 1, DLV_EXPIRED, 9, 451, 0, "451 still no");
	put(&dlv, offs[2], 2, DLV_FAILED, 1, 552, 0, "552 full");

	CHECK(dlv_replay((uint8_t *)seg.data, seg.len, 1, 5, (uint8_t *)dlv.data, dlv.len, &r) == 0);
	CHECK(!r.dlv_header_bad && r.dlv.records == 10 && r.orphans == 2);
	const struct dlv_rcpt *a = &r.rcpts[0], *b = &r.rcpts[1];
	CHECK(a->outcome == DLV_DELIVERED && a->attempts == 3 && a->code == 250);
	CHECK(a->record == a_rec);
	CHECK(b->outcome == DLV_DEFERRED && b->next_try == 1100 && b->code == 0);
	CHECK(b->record == b_rec);
	struct dlv_record last;
	CHECK(dlv_record_decode((uint8_t *)dlv.data + b->record, dlv.len - b->record, &last, NULL,
				NULL) == SPOOL_OK);
	CHECK(last.text_len == 18 && memcmp(last.text, "connection refused", 18) == 0);
	CHECK(!dlv_message_finished(&r, &r.msgs[0]));
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[0]), "partial");
	CHECK(dlv_message_finished(&r, &r.msgs[1]));
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[1]), "failed");
	CHECK(dlv_rcpt_finished(&r.msgs[2], &r.rcpts[3]));
	CHECK(dlv_rcpt_finished(&r.msgs[2], &r.rcpts[4]));
	CHECK(!dlv_rcpt_finished(&r.msgs[2], &r.rcpts[5]));
	CHECK(dlv_dsn_wanted(&r.msgs[2], &r.rcpts[5]) && !dlv_dsn_wanted(&r.msgs[2], &r.rcpts[3]));
	CHECK(dlv_dsn_wanted(&r.msgs[0], &r.rcpts[1]) && !dlv_dsn_wanted(&r.msgs[1], &r.rcpts[2]));
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[2]), "partial");
	CHECK(!dlv_segment_reclaimable(&r, false));

	/* the worker's records, applied in memory as they become durable */
	struct dlv_record rec = {.msg_offset = offs[0], .rcpt = 1, .outcome = DLV_DELIVERED,
				 .attempts = 2, .code = 250};
	CHECK(dlv_replay_apply(&r, &rec, 9999) == 0);
	CHECK(dlv_message_finished(&r, &r.msgs[0]));
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[0]), "delivered");
	rec = (struct dlv_record){.msg_offset = offs[2], .rcpt = 2, .outcome = DLV_BOUNCED};
	CHECK(dlv_replay_apply(&r, &rec, 10000) == 0);
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[2]), "finished");
	CHECK(dlv_segment_reclaimable(&r, false));
	CHECK(!dlv_segment_reclaimable(&r, true)); /* the segment being written */
	rec.rcpt = 3;
	CHECK(dlv_replay_apply(&r, &rec, 10001) == -1 && r.orphans == 3);
	dlv_replay_free(&r);

	/* a damaged segment is never reclaimed, whatever the log says */
	put(&dlv, offs[0], 1, DLV_DELIVERED, 2, 250, 0, "250 ok");
	put(&dlv, offs[2], 2, DLV_BOUNCED, 1, 552, 0, "552 full; DSN queued");
	CHECK(dlv_replay((uint8_t *)seg.data, seg.len, 1, 5, (uint8_t *)dlv.data, dlv.len, &r) == 0);
	CHECK(dlv_segment_reclaimable(&r, false));
	dlv_replay_free(&r);
	seg.data[offs[1] + 40] ^= 1;
	CHECK(dlv_replay((uint8_t *)seg.data, seg.len, 1, 5, (uint8_t *)dlv.data, dlv.len, &r) == 0);
	CHECK(r.nmsgs == 2 && r.seg.corrupt_regions == 1 && r.orphans == 3);
	CHECK(!dlv_segment_reclaimable(&r, false));
	dlv_replay_free(&r);
	seg.data[offs[1] + 40] ^= 1;

	/* a .dlv of another segment: flagged, its records still read */
	dlv_file_header((uint8_t *)dlv.data, 1, 6);
	CHECK(dlv_replay((uint8_t *)seg.data, seg.len, 1, 5, (uint8_t *)dlv.data, dlv.len, &r) == 0);
	CHECK(r.dlv_header_bad && r.dlv_header_why != NULL);
	CHECK(r.dlv.records == 12);
	dlv_replay_free(&r);
	/* a dropped message is finished */
	dlv_file_header((uint8_t *)dlv.data, 1, 5);
	put(&dlv, offs[0], 0, DLV_DROPPED, 3, 0, 0, "dropped by the operator");
	put(&dlv, offs[0], 1, DLV_DROPPED, 2, 0, 0, "dropped by the operator");
	CHECK(dlv_replay((uint8_t *)seg.data, seg.len, 1, 5, (uint8_t *)dlv.data, dlv.len, &r) == 0);
	CHECK_STR_EQ(dlv_message_summary(&r, &r.msgs[0]), "dropped");
	CHECK(dlv_segment_reclaimable(&r, false));
	dlv_replay_free(&r);

	buf_free(&seg);
	buf_free(&dlv);
}

/* ---- retry schedule ---- */

static void test_schedule(void)
{
	const uint32_t m = 60 * 1000, cap = 4 * 3600 * 1000;
	/* rnd 2^31 is the middle: no jitter */
	CHECK(dlv_retry_delay_ms(1, m, cap, 1u << 31) == m);
	CHECK(dlv_retry_delay_ms(2, m, cap, 1u << 31) == 2 * m);
	CHECK(dlv_retry_delay_ms(3, m, cap, 1u << 31) == 4 * m);
	CHECK(dlv_retry_delay_ms(8, m, cap, 1u << 31) == 128 * m);
	CHECK(dlv_retry_delay_ms(9, m, cap, 1u << 31) == cap); /* 256m > 4h */
	CHECK(dlv_retry_delay_ms(60000, m, cap, 1u << 31) == cap);
	CHECK(dlv_retry_delay_ms(0, m, cap, 1u << 31) == m);
	/* jitter: 0.8 at rnd 0, just under 1.2 at rnd max */
	CHECK(dlv_retry_delay_ms(1, m, cap, 0) == 48000);
	uint64_t hi = dlv_retry_delay_ms(1, m, cap, UINT32_MAX);
	CHECK(hi < 72000 && hi >= 71999);
	CHECK(dlv_retry_delay_ms(20, m, cap, 0) == (uint64_t)cap * 4 / 5);
	/* the largest delays do not overflow */
	CHECK(dlv_retry_delay_ms(40, UINT32_MAX, UINT32_MAX, UINT32_MAX) <
	      (uint64_t)UINT32_MAX * 6 / 5);
	CHECK(dlv_retry_delay_ms(1, 1, 1, 0) == 1); /* never 0 */
	/* spread: 1000 draws over the whole range stay within ±20% */
	uint64_t lo = UINT64_MAX, top = 0;
	for (uint32_t i = 0; i < 1000; i++) {
		uint64_t d = dlv_retry_delay_ms(3, m, cap, i * 4294967u);
		lo = d < lo ? d : lo;
		top = d > top ? d : top;
	}
	CHECK(lo >= 4 * m * 8 / 10 && top < 4 * m * 12 / 10 && top - lo > 4 * m * 35 / 100);

	/* next try and lifetime (5 days) */
	const uint32_t life = 5u * 24 * 3600 * 1000;
	bool expired = true;
	CHECK(dlv_next_try(1000, 1000, 1, m, cap, life, 1u << 31, &expired) == 1060 && !expired);
	CHECK(dlv_next_try(1000, 5000, 3, m, cap, life, 1u << 31, &expired) == 5240 && !expired);
	/* never past the end of the lifetime: the last try is at it */
	uint64_t end = 1000 + 5 * 24 * 3600;
	CHECK(dlv_next_try(1000, end - 10, 30, m, cap, life, 1u << 31, &expired) == end && !expired);
	CHECK(dlv_next_try(1000, end, 31, m, cap, life, 1u << 31, &expired) == 0 && expired);
	CHECK(dlv_next_try(1000, end + 99999, 1, m, cap, life, 0, &expired) == 0 && expired);
	/* a millisecond delay still moves the time by a whole second */
	CHECK(dlv_next_try(1000, 1000, 1, 1, 1, life, 0, &expired) == 1001);
}

/* ---- recovery ---- */

static void write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(write(fd, p, n) == (ssize_t)n);
	close(fd);
}

static long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void test_recover(void)
{
	char dir[] = "/tmp/test_dlv.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	const struct msg_spec specs[] = {{"s@example.org", 2, {0, 0}, 1000}};
	uint64_t offs[1];
	struct buf seg, dlv, log;
	buf_init(&seg, 0);
	buf_init(&dlv, 0);
	buf_init(&log, 0);
	build_segment(&seg, 0, 2, specs, 1, offs);
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, 0, 2);
	buf_append(&dlv, h, sizeof h);
	put(&dlv, offs[0], 0, DLV_DELIVERED, 1, 250, 0, "250 ok");
	size_t good = dlv.len;
	put(&dlv, offs[0], 1, DLV_DELIVERED, 1, 250, 0, "250 ok");
	char path[512];
	snprintf(path, sizeof path, "%s/00000002.dlv", dir);

	/* no file: all queued, nothing created */
	struct dlv_replay r;
	CHECK(dlv_recover(dir, 0, 2, (uint8_t *)seg.data, seg.len, &r, &log) == 0);
	CHECK(r.nmsgs == 1 && r.rcpts[0].outcome == DLV_QUEUED && file_size(path) == -1);
	dlv_replay_free(&r);

	/* a torn last record: cut back to the end of the first */
	write_file(path, dlv.data, dlv.len - 5);
	CHECK(dlv_recover(dir, 0, 2, (uint8_t *)seg.data, seg.len, &r, &log) == 0);
	CHECK(r.rcpts[0].outcome == DLV_DELIVERED && r.rcpts[1].outcome == DLV_QUEUED);
	CHECK(file_size(path) == (long)good);
	CHECK(check_contains(log.data, log.len, "truncated"));
	dlv_replay_free(&r);
	/* intact: nothing changes */
	write_file(path, dlv.data, dlv.len);
	buf_reset(&log);
	CHECK(dlv_recover(dir, 0, 2, (uint8_t *)seg.data, seg.len, &r, &log) == 0);
	CHECK(r.rcpts[1].outcome == DLV_DELIVERED && file_size(path) == (long)dlv.len);
	CHECK(log.len == 0);
	CHECK(dlv_segment_reclaimable(&r, false));
	dlv_replay_free(&r);
	/* a header cut short: emptied, for the writer to start again */
	write_file(path, dlv.data, 20);
	CHECK(dlv_recover(dir, 0, 2, (uint8_t *)seg.data, seg.len, &r, &log) == 0);
	CHECK(file_size(path) == 0 && r.rcpts[0].outcome == DLV_QUEUED);
	dlv_replay_free(&r);
	/* a bad header on a longer file: read, never cut */
	memcpy(dlv.data, "XXXX", 4);
	write_file(path, dlv.data, dlv.len - 5);
	CHECK(dlv_recover(dir, 0, 2, (uint8_t *)seg.data, seg.len, &r, &log) == 0);
	CHECK(r.dlv_header_bad && r.rcpts[0].outcome == DLV_DELIVERED);
	CHECK(file_size(path) == (long)dlv.len - 5);
	dlv_replay_free(&r);

	buf_free(&seg);
	buf_free(&dlv);
	buf_free(&log);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	test_header();
	test_record();
	test_walk();
	test_replay();
	test_schedule();
	test_recover();
	return check_report("test_delivery_state");
}
