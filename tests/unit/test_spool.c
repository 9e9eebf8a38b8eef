/* test_spool: the spool format (spool.h) — CRC32C, ids, headers, record
 * round trips, the Received: header, damage detection and recovery. */
#include "check.h"
#include <stdarg.h>
#include "spool.h"
#include "delivery_state.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <sys/wait.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void peer_plain(struct smtp_peer *p, const char *addr, uint16_t port)
{
	memset(p, 0, sizeof *p);
	snprintf(p->addr_str, sizeof p->addr_str, "%s", addr);
	p->port = port;
}

static void peer_tls(struct smtp_peer *p)
{
	p->tls = true;
	snprintf(p->tls_version, sizeof p->tls_version, "TLSv1.3");
	snprintf(p->tls_cipher, sizeof p->tls_cipher, "TLS_AES_128_GCM_SHA256");
}

static void peer_auth(struct smtp_peer *p, const char *user)
{
	p->authenticated = true;
	snprintf(p->auth_user, sizeof p->auth_user, "%s", user);
}

static void env_init(struct smtp_envelope *e, const char *helo, bool esmtp, const char *from)
{
	memset(e, 0, sizeof *e);
	e->helo = (char *)helo;
	e->esmtp = esmtp;
	e->mail_from = (char *)from;
}

/* Encode and seal one record (message split into two parts to exercise
 * the CRC chaining) and append it to out. */
static int put_record(struct buf *out, const struct smtp_envelope *e, const struct smtp_peer *p,
		      const char *id, uint64_t ns, const char *msg, size_t msg_len)
{
	struct spool_meta m = {.id = id, .received_unix_ns = ns, .env = e, .peer = p};
	struct buf head;
	buf_init(&head, 0);
	if (spool_record_head(&head, &m, msg_len) < 0) {
		buf_free(&head);
		return -1;
	}
	size_t half = msg_len / 3;
	const void *parts[2] = {msg, msg + half};
	size_t lens[2] = {half, msg_len - half};
	spool_record_seal(&head, parts, lens, 2);
	int rc = buf_append(out, head.data, head.len);
	if (rc == 0)
		rc = buf_append(out, msg, msg_len);
	buf_free(&head);
	return rc;
}

static bool view_str_eq(const char *p, size_t n, const char *want)
{
	if (!want)
		return n == 0;
	return n == strlen(want) && (n == 0 || memcmp(p, want, n) == 0);
}

/* ---- CRC32C ---- */

static void test_crc(void)
{
	static const char v1[] = "123456789";
	uint8_t zeros[32], ones[32], inc[32], dec[32];
	for (int i = 0; i < 32; i++) {
		zeros[i] = 0;
		ones[i] = 0xff;
		inc[i] = (uint8_t)i;
		dec[i] = (uint8_t)(31 - i);
	}
	struct {
		const void *p;
		size_t n;
		uint32_t want;
	} vec[] = {
		{v1, 9, 0xE3069283u},  {"", 0, 0},          {zeros, 32, 0x8A9136AAu},
		{ones, 32, 0x62A8AB43u}, {inc, 32, 0x46DD794Eu}, {dec, 32, 0x113FDB5Cu},
		{"a", 1, 0xC1D04330u},
	};
	for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
		CHECK(crc32c_sw(0, vec[i].p, vec[i].n) == vec[i].want);
		CHECK(crc32c(0, vec[i].p, vec[i].n) == vec[i].want);
		if (crc32c_hw_available())
			CHECK(crc32c_hw(0, vec[i].p, vec[i].n) == vec[i].want);
	}
	/* chaining */
	CHECK(crc32c(crc32c(0, "1234", 4), "56789", 5) == 0xE3069283u);
	CHECK(crc32c_sw(crc32c_sw(0, "12345678", 8), "9", 1) == 0xE3069283u);
	printf("test_spool: crc32c hardware %s\n", crc32c_hw_available() ? "yes" : "no");

	/* sw and hw agree on random data, every alignment and many lengths */
	static uint8_t data[4096 + 16];
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (uint8_t)rng();
	int mismatch = 0;
	for (int t = 0; t < 2000; t++) {
		size_t off = rng() % 16, len = rng() % 4097;
		uint32_t seed = (uint32_t)rng();
		uint32_t a = crc32c_sw(seed, data + off, len);
		uint32_t b = crc32c_hw_available() ? crc32c_hw(seed, data + off, len) : a;
		uint32_t c = crc32c(seed, data + off, len);
		/* and splitting anywhere gives the same answer */
		size_t cut = len ? rng() % len : 0;
		uint32_t d = crc32c_sw(crc32c_sw(seed, data + off, cut), data + off + cut, len - cut);
		if (a != b || a != c || a != d)
			mismatch++;
	}
	CHECK(mismatch == 0);
	/* a reference bit-by-bit CRC for a few random buffers */
	for (int t = 0; t < 20; t++) {
		size_t len = rng() % 300;
		uint32_t c = ~0u;
		for (size_t i = 0; i < len; i++) {
			c ^= data[i];
			for (int k = 0; k < 8; k++)
				c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
		}
		CHECK(crc32c(0, data, len) == ~c);
	}
}

/* ---- ids and segment headers ---- */

static void test_id(void)
{
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 3, 0x12, 0x40);
	CHECK_STR_EQ(id, "0300001200000040");
	spool_make_id(id, 0, 1, 64);
	CHECK_STR_EQ(id, "0000000100000040");
	spool_make_id(id, 255, 0xABCDEF, 0xFEDCBA98u);
	CHECK_STR_EQ(id, "FFABCDEFFEDCBA98");
	spool_make_id(id, 0x1ff, 0x1ABCDEFull, 0x1FEDCBA98ull);
	CHECK_STR_EQ(id, "FFABCDEFFEDCBA98"); /* low bits only */
	CHECK(strlen(id) == SPOOL_ID_LEN);
	for (int i = 0; i < SPOOL_ID_LEN; i++)
		CHECK((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'F'));
}

static void test_segment_header(void)
{
	uint8_t h[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(h, 7, 123456789ull, 1795900809000000000ull);
	CHECK(memcmp(h, "MXDSEG01", 8) == 0);
	struct spool_segment_info info;
	const char *why = "x";
	CHECK(spool_segment_header_check(h, sizeof h, &info, &why) == SPOOL_OK);
	CHECK(why == NULL);
	CHECK(info.version == SPOOL_FORMAT_VERSION && info.core == 7 && info.seq == 123456789ull &&
	      info.created_unix_ns == 1795900809000000000ull);
	for (size_t i = 0; i < sizeof h; i++)
		CHECK(spool_segment_header_check(h, i, NULL, NULL) == SPOOL_TRUNCATED);
	int bad = 0;
	for (size_t bit = 0; bit < sizeof h * 8; bit++) {
		h[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		if (spool_segment_header_check(h, sizeof h, NULL, NULL) != SPOOL_CORRUPT)
			bad++;
		h[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	CHECK(bad == 0);
	CHECK(spool_segment_header_check(h, sizeof h, NULL, NULL) == SPOOL_OK);
}

/* ---- records ---- */

static void check_roundtrip(const struct smtp_envelope *e, const struct smtp_peer *p,
			    const char *msg, size_t msg_len)
{
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 1, 2, 64);
	struct buf b;
	buf_init(&b, 0);
	CHECK(put_record(&b, e, p, id, 1795900809123456789ull, msg, msg_len) == 0);
	/* trailing bytes after the record must not matter */
	buf_append(&b, "MXR1junk", 8);
	struct spool_record_view v;
	size_t rl = 0;
	CHECK(spool_record_decode((const uint8_t *)b.data, b.len, &v, &rl) == SPOOL_OK);
	CHECK(rl == b.len - 8);
	CHECK_STR_EQ(v.id, id);
	CHECK(v.received_unix_ns == 1795900809123456789ull);
	CHECK(view_str_eq(v.client_addr, v.client_addr_len, p->addr_str));
	CHECK(v.client_port == p->port);
	CHECK(view_str_eq(v.helo, v.helo_len, e->helo));
	CHECK(v.esmtp == e->esmtp);
	CHECK(v.tls == p->tls);
	CHECK(view_str_eq(v.tls_version, v.tls_version_len, p->tls ? p->tls_version : ""));
	CHECK(view_str_eq(v.tls_cipher, v.tls_cipher_len, p->tls ? p->tls_cipher : ""));
	CHECK(v.authenticated == p->authenticated);
	CHECK(view_str_eq(v.auth_user, v.auth_user_len, p->authenticated ? p->auth_user : ""));
	CHECK(view_str_eq(v.mail_from, v.mail_from_len, e->mail_from));
	CHECK(v.size_param == e->size_param);
	CHECK(v.body_type == e->body_type);
	CHECK(v.smtputf8 == e->smtputf8);
	CHECK(v.chunking == e->chunking);
	CHECK(v.ret == e->ret);
	if (e->envid)
		CHECK(v.envid && view_str_eq(v.envid, v.envid_len, e->envid));
	else
		CHECK(v.envid == NULL && v.envid_len == 0);
	CHECK(v.nrcpt == e->nrcpt);
	size_t cur = 0;
	struct spool_rcpt_view rv;
	uint32_t n = 0;
	int wrong = 0;
	while (spool_rcpt_next(&v, &cur, &rv)) {
		if (n >= e->nrcpt) {
			wrong++;
			break;
		}
		const struct smtp_rcpt *r = &e->rcpts[n];
		if (!view_str_eq(rv.addr, rv.addr_len, r->addr) || rv.notify != r->notify)
			wrong++;
		if (r->orcpt ? !(rv.orcpt && view_str_eq(rv.orcpt, rv.orcpt_len, r->orcpt))
			     : rv.orcpt != NULL)
			wrong++;
		n++;
	}
	CHECK(wrong == 0);
	CHECK(n == e->nrcpt);
	CHECK(!spool_rcpt_next(&v, &cur, &rv)); /* stays at the end */
	CHECK(v.message_len == msg_len);
	CHECK(msg_len == 0 || memcmp(v.message, msg, msg_len) == 0);
	CHECK((const uint8_t *)v.message + v.message_len == (const uint8_t *)b.data + rl);
	buf_free(&b);
}

static void test_roundtrip(void)
{
	static const char msg[] = "Received: from x\r\n\tby y; Sat, 28 Nov 2026 21:20:09 +0000\r\n"
				  "Subject: hi\r\n\r\nbody\r\n.dot\r\n";
	struct smtp_peer p;
	struct smtp_envelope e;

	/* 0 recipients, null sender, HELO, empty message */
	peer_plain(&p, "192.0.2.1", 40000);
	env_init(&e, "client.example", false, "");
	check_roundtrip(&e, &p, "", 0);

	/* 1 recipient, NOTIFY and ORCPT, ENVID, RET, SIZE, 8BITMIME */
	struct smtp_rcpt one = {.addr = "alice@example.com", .orcpt = "rfc822;alice@example.com",
				.notify = SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE};
	env_init(&e, "client.example", true, "bob@example.org");
	e.rcpts = &one;
	e.nrcpt = 1;
	e.envid = "QQ314159";
	e.ret = SMTP_RET_HDRS;
	e.size_param = 12345;
	e.body_type = SMTP_BODY_8BITMIME;
	check_roundtrip(&e, &p, msg, sizeof msg - 1);

	/* TLS, AUTH, SMTPUTF8, BINARYMIME via BDAT, IPv6, no ENVID */
	peer_plain(&p, "2001:db8::1", 65535);
	peer_tls(&p);
	peer_auth(&p, "alice");
	struct smtp_rcpt utf = {.addr = "j\xc3\xb6rg@b\xc3\xbc" "cher.example", .orcpt = NULL, .notify = 0};
	env_init(&e, "[IPv6:2001:db8::1]", true, "alice@example.com");
	e.rcpts = &utf;
	e.nrcpt = 1;
	e.smtputf8 = true;
	e.chunking = true;
	e.body_type = SMTP_BODY_BINARYMIME;
	e.ret = SMTP_RET_FULL;
	check_roundtrip(&e, &p, msg, sizeof msg - 1);

	/* many recipients, mixed DSN parameters; auth flag off hides the user */
	enum { MANY = 300 };
	static struct smtp_rcpt many[MANY];
	static char addrs[MANY][40], orcpts[MANY][48];
	for (int i = 0; i < MANY; i++) {
		snprintf(addrs[i], sizeof addrs[i], "user%d@example.com", i);
		snprintf(orcpts[i], sizeof orcpts[i], "rfc822;orig%d@example.net", i);
		many[i].addr = addrs[i];
		many[i].orcpt = i % 3 == 0 ? orcpts[i] : NULL;
		many[i].notify = (uint8_t)(i % 2 ? SMTP_NOTIFY_NEVER : (i % 16));
	}
	peer_plain(&p, "198.51.100.7", 25);
	snprintf(p.auth_user, sizeof p.auth_user, "not-authenticated");
	env_init(&e, "mx.example", true, "list@example.org");
	e.rcpts = many;
	e.nrcpt = MANY;
	e.envid = "";
	check_roundtrip(&e, &p, msg, sizeof msg - 1);

	/* a big message */
	size_t big = 1 << 20;
	char *bm = malloc(big);
	for (size_t i = 0; i < big; i++)
		bm[i] = (char)rng();
	check_roundtrip(&e, &p, bm, big);
	free(bm);
}

static void test_encode_limits(void)
{
	struct smtp_peer p;
	struct smtp_envelope e;
	peer_plain(&p, "192.0.2.1", 25);
	char *huge = malloc(70000);
	memset(huge, 'a', 69999);
	huge[69999] = '\0';
	env_init(&e, huge, true, "a@b");
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 0, 1, 64);
	struct spool_meta m = {.id = id, .env = &e, .peer = &p};
	struct buf b;
	buf_init(&b, 0);
	buf_append(&b, "xyz", 3);
	CHECK(spool_record_head(&b, &m, 10) == -1);
	CHECK(b.len == 3);
	env_init(&e, "ok", true, "a@b");
	struct smtp_rcpt r = {.addr = huge, .orcpt = NULL, .notify = 0};
	e.rcpts = &r;
	e.nrcpt = 1;
	CHECK(spool_record_head(&b, &m, 10) == -1);
	e.nrcpt = 0;
	CHECK(spool_record_head(&b, &m, SPOOL_RECORD_MAX) == -1);
	CHECK(spool_record_head(&b, &m, UINT64_MAX) == -1);
	CHECK(b.len == 3);
	struct spool_meta bad = m;
	bad.id = "0123";
	CHECK(spool_record_head(&b, &bad, 10) == -1);
	CHECK(b.len == 3);
	/* a buf limit too small */
	struct buf small;
	buf_init(&small, 40);
	CHECK(spool_record_head(&small, &m, 10) == -1);
	CHECK(small.len == 0);
	buf_free(&small);
	/* and a head of its own in a non-empty buf: seal_raw */
	CHECK(spool_record_head(&b, &m, 4) == 0);
	const void *parts[1] = {"abcd"};
	size_t lens[1] = {4};
	spool_record_seal_raw((uint8_t *)b.data + 3, b.len - 3, parts, lens, 1);
	buf_append(&b, "abcd", 4);
	struct spool_record_view v;
	size_t rl;
	CHECK(spool_record_decode((const uint8_t *)b.data + 3, b.len - 3, &v, &rl) == SPOOL_OK);
	CHECK(rl == b.len - 3 && v.message_len == 4 && memcmp(v.message, "abcd", 4) == 0);
	buf_free(&b);
	free(huge);
}

static void sample_record(struct buf *b)
{
	static struct smtp_rcpt rc[3] = {
		{.addr = "a@example.com", .orcpt = "rfc822;a@example.com", .notify = SMTP_NOTIFY_DELAY},
		{.addr = "b@example.com", .orcpt = NULL, .notify = 0},
		{.addr = "c@example.com", .orcpt = "rfc822;c@x", .notify = SMTP_NOTIFY_NEVER},
	};
	struct smtp_peer p;
	struct smtp_envelope e;
	peer_plain(&p, "192.0.2.1", 1234);
	peer_tls(&p);
	env_init(&e, "helo.example", true, "s@example.org");
	e.rcpts = rc;
	e.nrcpt = 3;
	e.envid = "ENV1";
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 0, 1, 64);
	static const char msg[] = "Received: x\r\n\r\nhello\r\n";
	put_record(b, &e, &p, id, 42, msg, sizeof msg - 1);
}

static void test_damage(void)
{
	struct buf b;
	buf_init(&b, 0);
	sample_record(&b);
	const uint8_t *rec = (const uint8_t *)b.data;
	size_t len = b.len;
	CHECK(spool_record_decode(rec, len, NULL, NULL) == SPOOL_OK);

	/* every truncation: TRUNCATED, never OK; copies so ASan sees overreads */
	int trunc_bad = 0;
	for (size_t n = 0; n < len; n++) {
		uint8_t *cp = malloc(n ? n : 1);
		memcpy(cp, rec, n);
		struct spool_record_view v;
		size_t rl = 0;
		if (spool_record_decode(cp, n, &v, &rl) != SPOOL_TRUNCATED)
			trunc_bad++;
		free(cp);
	}
	CHECK(trunc_bad == 0);

	/* every single-bit flip: CORRUPT or TRUNCATED */
	uint8_t *cp = malloc(len);
	int flip_ok = 0, flip_corrupt = 0, flip_trunc = 0;
	for (size_t bit = 0; bit < len * 8; bit++) {
		memcpy(cp, rec, len);
		cp[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		enum spool_decode d = spool_record_decode(cp, len, NULL, NULL);
		if (d == SPOOL_OK)
			flip_ok++;
		else if (d == SPOOL_CORRUPT)
			flip_corrupt++;
		else
			flip_trunc++;
	}
	CHECK(flip_ok == 0);
	CHECK(flip_corrupt > 0 && flip_trunc > 0); /* length bits going up are "truncated" */
	free(cp);

	/* wrong magic, absurd and tiny lengths */
	uint8_t tmp[256];
	memcpy(tmp, rec, len < sizeof tmp ? len : sizeof tmp);
	tmp[0] = 'X';
	CHECK(spool_record_decode(tmp, 3, NULL, NULL) == SPOOL_CORRUPT);
	CHECK(spool_record_decode(rec, 3, NULL, NULL) == SPOOL_TRUNCATED);
	memcpy(tmp, rec, 16);
	for (int i = 4; i < 12; i++)
		tmp[i] = 0xff;
	const char *why = NULL;
	CHECK(spool_record_decode_why(tmp, 16, NULL, NULL, &why) == SPOOL_CORRUPT);
	CHECK_STR_EQ(why, "bad record length");
	memset(tmp + 4, 0, 8);
	tmp[4] = 20;
	CHECK(spool_record_decode(tmp, 16, NULL, NULL) == SPOOL_CORRUPT);

	/* a record whose CRC is right but whose fields lie (a writer bug or a
	 * crafted file): the structure checks still refuse it */
	uint8_t *lie = malloc(len);
	memcpy(lie, rec, len);
	lie[43] = 7; /* body type */
	uint32_t c = crc32c(0, lie + 16, len - 16);
	memcpy(lie + 12, &c, 4); /* little-endian host */
	CHECK(spool_record_decode_why(lie, len, NULL, NULL, &why) == SPOOL_CORRUPT);
	CHECK_STR_EQ(why, "bad field");
	memcpy(lie, rec, len);
	lie[len - 1] ^= 0; /* unchanged message, but bump the recipient count */
	/* find the u32 N: right after the strings; recompute by decoding */
	struct spool_record_view v;
	CHECK(spool_record_decode(rec, len, &v, NULL) == SPOOL_OK);
	size_t n_off = (size_t)(v.rcpt_bytes - rec) - 8;
	lie[n_off] = 4;
	c = crc32c(0, lie + 16, len - 16);
	memcpy(lie + 12, &c, 4);
	CHECK(spool_record_decode_why(lie, len, NULL, NULL, &why) == SPOOL_CORRUPT);
	CHECK_STR_EQ(why, "bad recipients");
	memcpy(lie, rec, len);
	lie[16] = 'g'; /* id not hex */
	c = crc32c(0, lie + 16, len - 16);
	memcpy(lie + 12, &c, 4);
	CHECK(spool_record_decode_why(lie, len, NULL, NULL, &why) == SPOOL_CORRUPT);
	CHECK_STR_EQ(why, "bad id");
	free(lie);
	buf_free(&b);
}

/* ---- Received: ---- */

static char *received(const struct smtp_envelope *e, const struct smtp_peer *p, const char *host)
{
	static char out[4096];
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 0, 1, 64);
	struct spool_meta m = {.id = id, .env = e, .peer = p};
	struct buf b;
	buf_init(&b, 0);
	if (spool_received_header(&b, &m, host, (time_t)1795900809) < 0) {
		buf_free(&b);
		return NULL;
	}
	snprintf(out, sizeof out, "%.*s", (int)b.len, b.data);
	buf_free(&b);
	return out;
}

static void test_received(void)
{
	struct smtp_peer p;
	struct smtp_envelope e;
	struct smtp_rcpt one = {.addr = "alice@example.com"};
	struct smtp_rcpt two[2] = {{.addr = "a@example.com"}, {.addr = "b@example.com"}};

	peer_plain(&p, "192.0.2.1", 1);
	env_init(&e, "client.example", false, "x@y");
	e.rcpts = &one;
	e.nrcpt = 1;
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([192.0.2.1])\r\n"
		     "\tby mx.example (mxd) with SMTP id 0000000100000040\r\n"
		     "\tfor <alice@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n");

	e.esmtp = true;
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([192.0.2.1])\r\n"
		     "\tby mx.example (mxd) with ESMTP id 0000000100000040\r\n"
		     "\tfor <alice@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n");

	e.rcpts = two;
	e.nrcpt = 2;
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([192.0.2.1])\r\n"
		     "\tby mx.example (mxd) with ESMTP id 0000000100000040;\r\n"
		     "\tSat, 28 Nov 2026 21:20:09 +0000\r\n");

	peer_tls(&p);
	e.rcpts = &one;
	e.nrcpt = 1;
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([192.0.2.1])\r\n"
		     "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n"
		     "\tby mx.example (mxd) with ESMTPS id 0000000100000040\r\n"
		     "\tfor <alice@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n");

	peer_auth(&p, "alice");
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([192.0.2.1])\r\n"
		     "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n"
		     "\tby mx.example (mxd) with ESMTPSA id 0000000100000040\r\n"
		     "\tfor <alice@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n");

	peer_plain(&p, "2001:db8::25", 1);
	peer_auth(&p, "alice");
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([IPv6:2001:db8::25])\r\n"
		     "\tby mx.example (mxd) with ESMTPA id 0000000100000040\r\n"
		     "\tfor <alice@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n");

	/* IPv4-mapped IPv6 is written as the IPv4 address it is */
	peer_plain(&p, "::ffff:192.0.2.9", 1);
	e.rcpts = NULL;
	e.nrcpt = 0;
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from client.example ([192.0.2.9])\r\n"
		     "\tby mx.example (mxd) with ESMTP id 0000000100000040;\r\n"
		     "\tSat, 28 Nov 2026 21:20:09 +0000\r\n");

	/* SMTPUTF8 (RFC 6531 protocol names), hostile HELO */
	peer_plain(&p, "192.0.2.1", 1);
	peer_tls(&p);
	env_init(&e, "evil) (x\r\nBcc: y\\ z\x01\xc3", true, "x@y");
	e.smtputf8 = true;
	struct smtp_rcpt u = {.addr = "j\xc3\xb6rg@example.com"};
	e.rcpts = &u;
	e.nrcpt = 1;
	CHECK_STR_EQ(received(&e, &p, "mx.example"),
		     "Received: from evil?" "??x?" "?Bcc:?y?" "?z?" "? ([192.0.2.1])\r\n"
		     "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n"
		     "\tby mx.example (mxd) with UTF8SMTPS id 0000000100000040\r\n"
		     "\tfor <j\xc3\xb6rg@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n");
	/* ...but the same 8-bit recipient without SMTPUTF8 is left out */
	e.smtputf8 = false;
	CHECK(check_contains(received(&e, &p, "mx.example"), 4096, "ESMTPS id 0000000100000040;\r\n\tSat"));

	/* no HELO at all; overlong HELO cut; every line < 998 */
	env_init(&e, NULL, true, "x@y");
	CHECK(strncmp(received(&e, &p, NULL), "Received: from unknown ([192.0.2.1])", 36) == 0);
	char longhelo[3000];
	memset(longhelo, 'h', sizeof longhelo - 1);
	longhelo[sizeof longhelo - 1] = '\0';
	char longrcpt[2000];
	memset(longrcpt, 'r', sizeof longrcpt - 1);
	longrcpt[sizeof longrcpt - 1] = '\0';
	struct smtp_rcpt lr = {.addr = longrcpt};
	env_init(&e, longhelo, true, "x@y");
	e.rcpts = &lr;
	e.nrcpt = 1;
	const char *r = received(&e, &p, longhelo);
	size_t line = 0, maxline = 0;
	for (const char *q = r; *q; q++) {
		if (*q == '\n') {
			line = 0;
			continue;
		}
		if (++line > maxline)
			maxline = line;
	}
	CHECK(maxline < 998);
	CHECK(!check_contains(r, strlen(r), "for <"));

	/* dates: single-digit day, leap day, another weekday */
	env_init(&e, "h", true, "x@y");
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 0, 1, 64);
	struct spool_meta m = {.id = id, .env = &e, .peer = &p};
	struct buf b;
	buf_init(&b, 0);
	CHECK(spool_received_header(&b, &m, "h", (time_t)951782400) == 0); /* 2000-02-29 */
	CHECK(check_contains(b.data, b.len, "\tTue, 29 Feb 2000 00:00:00 +0000\r\n"));
	buf_reset(&b);
	CHECK(spool_received_header(&b, &m, "h", (time_t)0) == 0);
	CHECK(check_contains(b.data, b.len, "\tThu, 1 Jan 1970 00:00:00 +0000\r\n"));
	buf_free(&b);
	/* buf limit: fails and leaves the buffer as it was */
	struct buf small;
	buf_init(&small, 50);
	buf_append(&small, "keep", 4);
	CHECK(spool_received_header(&small, &m, "h", 0) == -1);
	CHECK(small.len == 4);
	buf_free(&small);
}

/* ---- segments and recovery ---- */

/* Build a segment of n records, with their ids naming their offsets.
 * offs[i] receives each record's offset (offs has n+1 slots: the end). */
static void build_segment(struct buf *seg, unsigned core, uint64_t seq, int n, size_t *offs)
{
	uint8_t h[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(h, core, seq, 1);
	buf_append(seg, h, sizeof h);
	struct smtp_peer p;
	peer_plain(&p, "192.0.2.1", 25);
	struct smtp_envelope e;
	env_init(&e, "h.example", true, "s@example.org");
	struct smtp_rcpt r = {.addr = "r@example.com"};
	e.rcpts = &r;
	e.nrcpt = 1;
	for (int i = 0; i < n; i++) {
		char id[SPOOL_ID_LEN + 1], msg[200];
		spool_make_id(id, core, seq, seg->len);
		int ml = snprintf(msg, sizeof msg, "Received: test\r\n\r\nmessage %d %s\r\n", i,
				  i % 2 ? "with a longer body line to vary sizes" : "");
		offs[i] = seg->len;
		put_record(seg, &e, &p, id, (uint64_t)i, msg, (size_t)ml);
	}
	offs[n] = seg->len;
}

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

struct walk_log {
	int records, corrupt, torn;
	uint64_t offs[16];
};

static int walk_cb(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
		   const struct spool_record_view *v, const char *reason)
{
	struct walk_log *w = ctx;
	(void)len;
	(void)reason;
	if (ev == SPOOL_WALK_RECORD) {
		if (w->records < 16)
			w->offs[w->records] = off;
		w->records++;
		CHECK(v != NULL);
	} else if (ev == SPOOL_WALK_CORRUPT) {
		w->corrupt++;
	} else {
		w->torn++;
	}
	return 0;
}

static void test_walk(void)
{
	struct buf seg;
	buf_init(&seg, 0);
	size_t offs[6];
	build_segment(&seg, 2, 9, 5, offs);
	struct spool_walk_result res;
	struct walk_log w = {0};
	spool_segment_walk((uint8_t *)seg.data, seg.len, 2, 9, walk_cb, &w, &res);
	CHECK(res.records == 5 && w.records == 5 && res.corrupt_regions == 0 && res.torn_bytes == 0);
	CHECK(res.good_end == seg.len);
	CHECK(w.offs[3] == offs[3]);

	/* corrupt the length of record 1 upwards: it now claims to run past
	 * the end, yet records 2.. must still be found */
	uint8_t *s = (uint8_t *)seg.data;
	s[offs[1] + 4 + 3] ^= 0x10;
	memset(&w, 0, sizeof w);
	spool_segment_walk(s, seg.len, 2, 9, walk_cb, &w, &res);
	CHECK(res.records == 4 && res.corrupt_regions == 1 && res.torn_bytes == 0);
	CHECK(res.corrupt_bytes == offs[2] - offs[1]);
	CHECK(w.offs[1] == offs[2]);
	s[offs[1] + 4 + 3] ^= 0x10;

	/* damage in the last record: a torn tail */
	s[offs[4] + 40] ^= 1;
	spool_segment_walk(s, seg.len, 2, 9, NULL, NULL, &res);
	CHECK(res.records == 4 && res.corrupt_regions == 0 && res.torn_bytes == offs[5] - offs[4]);
	CHECK(res.good_end == offs[4]);
	s[offs[4] + 40] ^= 1;

	/* the wrong segment identity: ids no longer match, so a damaged
	 * record is not skipped over (everything after it is "torn") */
	s[offs[1] + 20] ^= 1;
	spool_segment_walk(s, seg.len, 2, 10, NULL, NULL, &res);
	CHECK(res.records == 1 && res.torn_bytes == seg.len - offs[1]);
	spool_segment_walk(s, seg.len, 2, 9, NULL, NULL, &res);
	CHECK(res.records == 4 && res.corrupt_regions == 1);
	buf_free(&seg);

	/* header only, and shorter than a header */
	uint8_t h[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(h, 0, 1, 0);
	spool_segment_walk(h, sizeof h, 0, 1, NULL, NULL, &res);
	CHECK(res.records == 0 && res.torn_bytes == 0 && res.good_end == 64);
	spool_segment_walk(h, 10, 0, 1, NULL, NULL, &res);
	CHECK(res.records == 0 && res.torn_bytes == 0 && res.good_end == 10);
}

/* A message that carries a whole valid record (someone mailing a spool
 * file): if the outer record is damaged, the inner one must not be taken
 * for a record of this segment. */
static void test_walk_embedded(void)
{
	struct buf inner;
	buf_init(&inner, 0);
	size_t ioffs[2];
	build_segment(&inner, 0, 1, 1, ioffs);

	struct buf seg;
	buf_init(&seg, 0);
	uint8_t h[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(h, 0, 1, 0);
	buf_append(&seg, h, sizeof h);
	struct smtp_peer p;
	peer_plain(&p, "192.0.2.1", 25);
	struct smtp_envelope e;
	env_init(&e, "h", true, "s@x");
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, 0, 1, seg.len);
	put_record(&seg, &e, &p, id, 0, inner.data, inner.len);
	struct spool_walk_result res;
	spool_segment_walk((uint8_t *)seg.data, seg.len, 0, 1, NULL, NULL, &res);
	CHECK(res.records == 1 && res.torn_bytes == 0);
	seg.data[64 + 20] ^= 1;
	spool_segment_walk((uint8_t *)seg.data, seg.len, 0, 1, NULL, NULL, &res);
	CHECK(res.records == 0 && res.torn_bytes == seg.len - 64);
	buf_free(&seg);
	buf_free(&inner);
}

static char tmpdir[256];

static void seg_path(char *out, size_t n, unsigned core, uint64_t seq)
{
	snprintf(out, n, "%s/%02u/%08llu.seg", tmpdir, core, (unsigned long long)seq);
}

static int rescan(unsigned core, struct spool_recovery *r)
{
	struct buf log;
	buf_init(&log, 0);
	int rc = spool_recover(tmpdir, core, r, &log);
	buf_free(&log);
	return rc;
}

static void test_recover(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/test_spool.XXXXXX");
	CHECK(mkdtemp(tmpdir) != NULL);
	struct spool_recovery r;
	struct buf log;
	buf_init(&log, 0);

	/* empty: directory created, next_seq 1 */
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(r.next_seq == 1 && r.segments == 0 && r.records == 0);
	char dir[300];
	snprintf(dir, sizeof dir, "%s/00", tmpdir);
	struct stat st;
	CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
	CHECK(check_contains(log.data, log.len, "spool: core 0: 0 segments, 0 records, next segment 00000001"));

	/* clean segments 1 and 3 */
	char path[400];
	struct buf seg;
	buf_init(&seg, 0);
	size_t offs[11];
	build_segment(&seg, 0, 1, 10, offs);
	seg_path(path, sizeof path, 0, 1);
	write_file(path, seg.data, seg.len);
	buf_reset(&seg);
	build_segment(&seg, 0, 3, 4, offs);
	seg_path(path, sizeof path, 0, 3);
	write_file(path, seg.data, seg.len);
	/* a stray file is ignored */
	snprintf(path, sizeof path, "%s/00/notes.txt", tmpdir);
	write_file(path, "x", 1);
	buf_reset(&log);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(r.segments == 2 && r.records == 14 && r.truncated_bytes == 0 && r.corrupt_records == 0);
	CHECK(r.next_seq == 4);
	CHECK(check_contains(log.data, log.len, "spool: core 0 segment 00000001: 10 records\n"));

	/* torn tail in segment 3: half a fifth record */
	seg_path(path, sizeof path, 0, 3);
	size_t good = seg.len;
	buf_reset(&seg);
	build_segment(&seg, 0, 3, 5, offs);
	CHECK(offs[4] == good);
	size_t torn = (offs[5] - offs[4]) / 2;
	write_file(path, seg.data, good + torn);
	buf_reset(&log);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(r.records == 14 && r.truncated_bytes == torn && r.corrupt_records == 0);
	CHECK(file_size(path) == (long)good);
	char want[200];
	snprintf(want, sizeof want, "spool: core 0 segment 00000003: 4 records, truncated %zu torn bytes\n",
		 torn);
	CHECK(check_contains(log.data, log.len, want));
	/* a re-scan finds the same records and nothing to cut */
	CHECK(rescan(0, &r) == 0);
	CHECK(r.records == 14 && r.truncated_bytes == 0 && file_size(path) == (long)good);

	/* garbage tail (zeros, as after a crash with a preallocated end) */
	{
		uint8_t *z = calloc(1, good + 4096);
		memcpy(z, seg.data, good);
		write_file(path, z, good + 4096);
		free(z);
	}
	CHECK(rescan(0, &r) == 0);
	CHECK(r.records == 14 && r.truncated_bytes == 4096 && file_size(path) == (long)good);

	/* corrupt record in the middle of segment 3: the ones after it stay */
	buf_reset(&seg);
	build_segment(&seg, 0, 3, 5, offs);
	seg.data[offs[2] + 60] ^= 0x40;
	write_file(path, seg.data, seg.len);
	buf_reset(&log);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(r.records == 10 + 4 && r.corrupt_records == 1 && r.truncated_bytes == 0);
	CHECK(file_size(path) == (long)seg.len);
	CHECK(check_contains(log.data, log.len, "1 corrupt regions"));
	/* corrupt middle and torn tail together */
	write_file(path, seg.data, seg.len - 5);
	CHECK(rescan(0, &r) == 0);
	CHECK(r.records == 10 + 3 && r.corrupt_records == 1 && r.truncated_bytes == offs[5] - offs[4] - 5);
	CHECK(file_size(path) == (long)offs[4]);

	/* a segment with a torn header: removed; its number is not reused */
	seg_path(path, sizeof path, 0, 7);
	write_file(path, "MXDSEG", 6);
	buf_reset(&log);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(file_size(path) == -1 && errno == ENOENT);
	CHECK(r.next_seq == 8 && r.segments == 2);
	CHECK(check_contains(log.data, log.len, "segment 00000007: segment shorter than its header (6 bytes), removed"));
	/* a header-sized file of zeros: removed as well */
	seg_path(path, sizeof path, 0, 8);
	{
		uint8_t z[SPOOL_SEGMENT_HEADER_SIZE] = {0};
		write_file(path, z, sizeof z);
	}
	CHECK(rescan(0, &r) == 0);
	CHECK(file_size(path) == -1 && r.next_seq == 9);

	/* a bigger file with a bad header: left untouched, records counted */
	buf_reset(&seg);
	build_segment(&seg, 0, 9, 3, offs);
	seg.data[0] = 'X';
	seg_path(path, sizeof path, 0, 9);
	write_file(path, seg.data, seg.len - 1);
	buf_reset(&log);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(file_size(path) == (long)seg.len - 1);
	CHECK(r.records == 13 + 2 && r.next_seq == 10 && r.truncated_bytes == 0);
	CHECK(check_contains(log.data, log.len, "bad header magic, left untouched: 2 intact records"));
	/* a header that names another segment is a bad header too */
	buf_reset(&seg);
	build_segment(&seg, 0, 11, 1, offs);
	seg_path(path, sizeof path, 0, 12);
	write_file(path, seg.data, seg.len);
	buf_reset(&log);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(check_contains(log.data, log.len, "header names core 0 segment 11"));
	CHECK(r.next_seq == 13);

	/* another core is separate */
	CHECK(rescan(5, &r) == 0);
	CHECK(r.next_seq == 1 && r.records == 0);

	/* an unusable spool directory fails with a reason */
	snprintf(path, sizeof path, "%s/file", tmpdir);
	write_file(path, "x", 1);
	buf_reset(&log);
	CHECK(spool_recover(path, 0, &r, &log) == -1);
	CHECK(log.len > 0);

	buf_free(&seg);
	buf_free(&log);
	char cmd[400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	CHECK(system(cmd) == 0);
}


/* ---- mxspool, run as a program ---- */

/* The tool next to this test in the build tree ($MXSPOOL overrides). */
static bool find_mxspool(char *out, size_t n)
{
	const char *env = getenv("MXSPOOL");
	if (env) {
		snprintf(out, n, "%s", env);
		return access(out, X_OK) == 0;
	}
	char self[PATH_MAX];
	ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
	if (k <= 0)
		return false;
	self[k] = '\0';
	snprintf(out, n, "%s/../bin/mxspool", dirname(self));
	return access(out, X_OK) == 0;
}

/* Run a shell command, capture stdout; returns the exit status. */
static int run(struct buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(struct buf *out, const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	buf_reset(out);
	FILE *f = popen(cmd, "r");
	if (!f)
		return -1;
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		buf_append(out, chunk, n);
	buf_append(out, "", 1); /* keep it a C string */
	out->len--;
	int st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const struct buf *b)
{
	int n = 0;
	for (size_t i = 0; i < b->len; i++)
		n += b->data[i] == '\n';
	return n;
}

static void test_mxspool(void)
{
	char tool[PATH_MAX + 32];
	if (!find_mxspool(tool, sizeof tool)) {
		printf("test_spool: mxspool not built next to this test, its checks are skipped\n");
		return;
	}
	char dir[] = "/tmp/test_mxspool.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char path[PATH_MAX];
	struct buf seg, out;
	buf_init(&seg, 0);
	buf_init(&out, 0);
	size_t offs0[4], offs1[3];
	snprintf(path, sizeof path, "%s/00", dir);
	mkdir(path, 0700);
	snprintf(path, sizeof path, "%s/01", dir);
	mkdir(path, 0700);
	build_segment(&seg, 0, 1, 3, offs0);
	snprintf(path, sizeof path, "%s/00/00000001.seg", dir);
	write_file(path, seg.data, seg.len);
	struct spool_record_view v;
	CHECK(spool_record_decode((uint8_t *)seg.data + offs0[1], seg.len - offs0[1], &v, NULL) == SPOOL_OK);
	char *want_msg = malloc(v.message_len);
	memcpy(want_msg, v.message, v.message_len);
	size_t want_len = v.message_len;
	char id1[SPOOL_ID_LEN + 1];
	snprintf(id1, sizeof id1, "%s", v.id);
	char id_upper[SPOOL_ID_LEN + 1];
	snprintf(id_upper, sizeof id_upper, "%s", v.id);
	struct buf seg1;
	buf_init(&seg1, 0);
	build_segment(&seg1, 1, 2, 2, offs1);
	snprintf(path, sizeof path, "%s/01/00000002.seg", dir);
	write_file(path, seg1.data, seg1.len);

	CHECK(run(&out, "'%s' -d '%s' list", tool, dir) == 0);
	CHECK(count_lines(&out) == 5);
	CHECK(out.len > 0 && strncmp(out.data, "0000000100000040 1970-01-01T00:00:00Z ", 38) == 0);
	CHECK(check_contains(out.data, out.len, " s@example.org r@example.com queued\n"));
	CHECK(check_contains(out.data, out.len, "\n0100000200000040 "));

	CHECK(run(&out, "'%s' -d '%s' cat %s", tool, dir, id1) == 0);
	CHECK(out.len == want_len && memcmp(out.data, want_msg, want_len) == 0);
	/* lower-case ids are fine; an unknown one is an error */
	for (char *c = id1; *c; c++)
		if (*c >= 'A' && *c <= 'F')
			*c = (char)(*c - 'A' + 'a');
	CHECK(run(&out, "'%s' -d '%s' cat %s", tool, dir, id1) == 0);
	CHECK(out.len == want_len);
	CHECK(run(&out, "'%s' -d '%s' cat 0000000100000041 2>/dev/null", tool, dir) == 1);
	CHECK(out.len == 0);
	CHECK(run(&out, "'%s' -d '%s' show 0100000200000040", tool, dir) == 0);
	CHECK(check_contains(out.data, out.len, "helo: h.example (EHLO)\n"));
	CHECK(check_contains(out.data, out.len, "rcpt: <r@example.com> notify=- orcpt=-\n"));
	CHECK(run(&out, "'%s' -d '%s' cat --envelope 0100000200000040", tool, dir) == 0);
	CHECK(check_contains(out.data, out.len, "mail-from: <s@example.org>\n"));

	CHECK(run(&out, "'%s' -d '%s' verify", tool, dir) == 0);
	CHECK_STR_EQ(out.len ? out.data : "", "5 records ok, 0 corrupt, 0 torn\n");

	CHECK(run(&out, "'%s' -d '%s' export --maildir '%s/md'", tool, dir, dir) == 0);
	CHECK(check_contains(out.data, out.len, "exported 5 messages"));
	CHECK(run(&out, "ls '%s/md/new' | wc -l", dir) == 0 && out.len && atoi(out.data) == 5);
	/* received_unix_ns is 1 for the second record: 0 seconds */
	CHECK(run(&out, "'%s' -d '%s' cat %s | cmp -s - '%s/md/new/0.M%s.mxd'", tool, dir, id_upper,
		  dir, id_upper) == 0);
	CHECK(run(&out, "'%s' -d '%s' export --maildir '%s/md'", tool, dir, dir) == 0);
	CHECK(check_contains(out.data, out.len, "exported 0 messages"));
	CHECK(check_contains(out.data, out.len, "(5 already there)"));

	/* damage: a bad record in the middle, a torn tail; verify reports and
	 * fails, and changes nothing */
	seg.data[offs0[1] + 70] ^= 4;
	snprintf(path, sizeof path, "%s/00/00000001.seg", dir);
	write_file(path, seg.data, seg.len);
	snprintf(path, sizeof path, "%s/01/00000002.seg", dir);
	write_file(path, seg1.data, seg1.len - 3);
	CHECK(run(&out, "'%s' -d '%s' verify", tool, dir) == 1);
	char want[400];
	snprintf(want, sizeof want, "%s/00/00000001.seg: offset %zu: bad CRC", dir, offs0[1]);
	CHECK(check_contains(out.data, out.len, want));
	snprintf(want, sizeof want, "%s/01/00000002.seg: offset %zu: torn tail", dir, offs1[1]);
	CHECK(check_contains(out.data, out.len, want));
	CHECK(check_contains(out.data, out.len, "3 records ok, 1 corrupt, 1 torn\n"));
	CHECK(file_size(path) == (long)seg1.len - 3);
	CHECK(run(&out, "'%s' -d '%s' list 2>/dev/null", tool, dir) == 0);
	CHECK(count_lines(&out) == 3);

	/* usage errors */
	CHECK(run(&out, "'%s' -d '%s' 2>/dev/null", tool, dir) == 2);
	CHECK(run(&out, "'%s' -d '%s' frobnicate 2>/dev/null", tool, dir) == 2);
	CHECK(run(&out, "'%s' -d '%s' export 2>/dev/null", tool, dir) == 2);
	CHECK(run(&out, "'%s' -h", tool) == 0 && check_contains(out.data, out.len, "usage:"));
	CHECK(run(&out, "'%s' -d '%s/nonexistent' list 2>/dev/null", tool, dir) == 1);

	free(want_msg);
	buf_free(&seg);
	buf_free(&seg1);
	buf_free(&out);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

/* mxspool's delivery states (list, show, -f), and retry / drop as request
 * files for the owning core. */
static void test_mxspool_delivery(void)
{
	char tool[PATH_MAX + 32];
	if (!find_mxspool(tool, sizeof tool))
		return;
	char dir[] = "/tmp/test_mxspool_dlv.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char path[PATH_MAX];
	struct buf seg, dlv, out;
	buf_init(&seg, 0);
	buf_init(&dlv, 0);
	buf_init(&out, 0);
	size_t offs[4];
	snprintf(path, sizeof path, "%s/00", dir);
	mkdir(path, 0700);
	build_segment(&seg, 0, 1, 3, offs);
	snprintf(path, sizeof path, "%s/00/00000001.seg", dir);
	write_file(path, seg.data, seg.len);
	char id[3][SPOOL_ID_LEN + 1];
	for (int i = 0; i < 3; i++)
		spool_make_id(id[i], 0, 1, offs[i]);

	/* no delivery log yet: everything queued */
	CHECK(run(&out, "'%s' -d '%s' list", tool, dir) == 0);
	CHECK(count_lines(&out) == 3);
	CHECK(check_contains(out.data, out.len, " r@example.com queued\n"));

	/* message 0 delivered, message 1 deferred twice, message 2 untouched */
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, 0, 1);
	buf_append(&dlv, h, sizeof h);
	struct dlv_record r = {.msg_offset = offs[1], .rcpt = 0, .outcome = DLV_DEFERRED,
			       .attempts = 1, .code = 0, .next_try = 1800000000, .at = 1700000000,
			       .hop = "smtp://10.0.0.1:25", .hop_len = 18,
			       .text = "connection refused", .text_len = 18};
	uint8_t b[DLV_RECORD_MAX];
	buf_append(&dlv, b, dlv_record_encode(b, sizeof b, &r));
	r.attempts = 2;
	r.code = 451;
	r.next_try = 1800000120; /* 2027-01-15T08:02:00Z */
	r.at = 1700000060;
	r.text = "451 4.3.0 mailbox busy";
	r.text_len = strlen(r.text);
	buf_append(&dlv, b, dlv_record_encode(b, sizeof b, &r));
	r = (struct dlv_record){.msg_offset = offs[0], .rcpt = 0, .outcome = DLV_DELIVERED,
				.attempts = 1, .code = 250, .at = 1700000000,
				.hop = "lmtp://127.0.0.1:24", .hop_len = 19,
				.text = "250 2.0.0 <r@example.com> Saved", .text_len = 31};
	buf_append(&dlv, b, dlv_record_encode(b, sizeof b, &r));
	snprintf(path, sizeof path, "%s/00/00000001.dlv", dir);
	write_file(path, dlv.data, dlv.len);

	CHECK(run(&out, "'%s' -d '%s' list", tool, dir) == 0);
	CHECK(count_lines(&out) == 4);
	char want[512];
	snprintf(want, sizeof want, "%s 1970-01-01T00:00:00Z ", id[0]);
	CHECK(check_contains(out.data, out.len, want));
	CHECK(check_contains(out.data, out.len, " r@example.com delivered\n"));
	CHECK(check_contains(out.data, out.len,
			     " r@example.com deferred\n  deferred: next try 2027-01-15T08:02:00Z, 2 "
			     "attempts, smtp://10.0.0.1:25: 451 4.3.0 mailbox busy\n"));
	CHECK(check_contains(out.data, out.len, " r@example.com queued\n"));

	CHECK(run(&out, "'%s' -d '%s' show %s", tool, dir, id[1]) == 0);
	CHECK(check_contains(out.data, out.len, "state: deferred\n"));
	CHECK(check_contains(out.data, out.len,
			     "delivery: <r@example.com> deferred attempts=2 next-try=2027-01-15T08:02:00Z "
			     "at=2023-11-14T22:14:20Z via=smtp://10.0.0.1:25 reply=451 4.3.0 mailbox "
			     "busy\n"));
	CHECK(run(&out, "'%s' -d '%s' show %s", tool, dir, id[0]) == 0);
	CHECK(check_contains(out.data, out.len, "delivery: <r@example.com> delivered attempts=1 "));
	CHECK(run(&out, "'%s' -d '%s' show %s", tool, dir, id[2]) == 0);
	CHECK(check_contains(out.data, out.len, "delivery: <r@example.com> queued attempts=0\n"));

	/* with the config: a rule without relay keeps the mail; with one, it
	 * waits; no rule at all, unrouted */
	snprintf(path, sizeof path, "%s/keep.conf", dir);
	write_file(path, "accept from any for domain example.com\n", 39);
	CHECK(run(&out, "'%s' -d '%s' -f '%s' list", tool, dir, path) == 0);
	CHECK(check_contains(out.data, out.len, " r@example.com kept\n"));
	CHECK(check_contains(out.data, out.len, " r@example.com delivered\n"));
	CHECK(run(&out, "'%s' -d '%s' -f '%s' show %s", tool, dir, path, id[2]) == 0);
	CHECK(check_contains(out.data, out.len, "delivery: <r@example.com> kept attempts=0\n"));
	snprintf(path, sizeof path, "%s/relay.conf", dir);
	const char *relay = "accept from any for domain example.com relay via lmtp://127.0.0.1\n";
	write_file(path, relay, strlen(relay));
	CHECK(run(&out, "'%s' -d '%s' -f '%s' show %s", tool, dir, path, id[2]) == 0);
	CHECK(check_contains(out.data, out.len,
			     "delivery: <r@example.com> queued attempts=0 route=lmtp://127.0.0.1:24\n"));
	snprintf(path, sizeof path, "%s/none.conf", dir);
	write_file(path, "accept from local for any\n", 26);
	CHECK(run(&out, "'%s' -d '%s' -f '%s' list", tool, dir, path) == 0);
	CHECK(check_contains(out.data, out.len, " r@example.com unrouted\n"));
	snprintf(path, sizeof path, "%s/bad.conf", dir);
	write_file(path, "accept from nowhere\n", 20);
	CHECK(run(&out, "'%s' -d '%s' -f '%s' list 2>&1", tool, dir, path) == 1);
	CHECK(check_contains(out.data, out.len, "bad.conf:1:13: expected any, local"));

	/* retry and drop: a request file each, in the core's requests/ */
	CHECK(run(&out, "'%s' -d '%s' retry %s", tool, dir, id[1]) == 0);
	CHECK(check_contains(out.data, out.len, "retry of "));
	char drop_want[64];
	snprintf(drop_want, sizeof drop_want, "mxd-request 1\ndrop %s\n", id[2]);
	for (char *c = id[2]; *c; c++) /* lower case on the command line */
		if (*c >= 'A' && *c <= 'F')
			*c = (char)(*c - 'A' + 'a');
	CHECK(run(&out, "'%s' -d '%s' drop %s", tool, dir, id[2]) == 0);
	CHECK(run(&out, "cat '%s'/00/requests/*.req", dir) == 0);
	snprintf(want, sizeof want, "mxd-request 1\nretry %s\n", id[1]);
	CHECK(check_contains(out.data, out.len, want));
	CHECK(check_contains(out.data, out.len, drop_want));
	CHECK(run(&out, "ls -a '%s'/00/requests | grep -c 'req$'", dir) == 0);
	CHECK(out.len && atoi(out.data) == 2);
	CHECK(run(&out, "ls -a '%s'/00/requests | grep -c tmp", dir) == 1); /* no temp left */
	/* unknown or malformed ids write nothing */
	CHECK(run(&out, "'%s' -d '%s' retry 0000000100000041 2>&1", tool, dir) == 1);
	CHECK(check_contains(out.data, out.len, "no message 0000000100000041"));
	CHECK(run(&out, "'%s' -d '%s' drop xyz 2>&1", tool, dir) == 1);
	CHECK(check_contains(out.data, out.len, "not a message id: xyz"));
	CHECK(run(&out, "'%s' -d '%s' drop 2>/dev/null", tool, dir) == 2);
	CHECK(run(&out, "ls '%s'/00/requests | wc -l", dir) == 0 && atoi(out.data) == 2);
	/* listing still reads the spool only */
	CHECK(run(&out, "'%s' -d '%s' verify", tool, dir) == 0);

	buf_free(&seg);
	buf_free(&dlv);
	buf_free(&out);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

/* Binary upgrade: the segment the previous process still appends to is
 * neither scanned nor cut, and the new process numbers past it. */
static void test_recover_in_use(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/test_spool.XXXXXX");
	CHECK(mkdtemp(tmpdir) != NULL);
	struct spool_recovery r;
	struct buf log, seg;
	buf_init(&log, 0);
	buf_init(&seg, 0);
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0); /* creates DIR/00 */
	size_t offs[11];
	char path[400];
	build_segment(&seg, 0, 1, 3, offs);
	seg_path(path, sizeof path, 0, 1);
	write_file(path, seg.data, seg.len);
	/* segment 2 is being written: its last record is half there */
	buf_reset(&seg);
	build_segment(&seg, 0, 2, 4, offs);
	size_t in_flight = offs[3] + (offs[4] - offs[3]) / 2;
	seg_path(path, sizeof path, 0, 2);
	write_file(path, seg.data, in_flight);

	buf_reset(&log);
	CHECK(spool_recover_except(tmpdir, 0, 2, &r, &log) == 0);
	CHECK(r.segments == 1 && r.records == 3 && r.truncated_bytes == 0);
	CHECK(r.next_seq == 3);
	CHECK(file_size(path) == (long)in_flight);
	CHECK(check_contains(log.data, log.len,
			     "spool: core 0 segment 00000002: in use by the previous process, left alone\n"));
	/* the in-use number counts even before its file exists */
	CHECK(spool_recover_except(tmpdir, 0, 7, &r, &log) == 0);
	CHECK(r.next_seq == 8);
	/* once that process is gone, a plain recovery cuts the tail */
	CHECK(spool_recover(tmpdir, 0, &r, &log) == 0);
	CHECK(r.records == 6 && file_size(path) == (long)offs[3]);

	buf_free(&seg);
	buf_free(&log);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	test_crc();
	test_id();
	test_segment_header();
	test_roundtrip();
	test_encode_limits();
	test_damage();
	test_received();
	test_walk();
	test_walk_embedded();
	test_recover();
	test_recover_in_use();
	test_mxspool();
	test_mxspool_delivery();
	return check_report("test_spool");
}
