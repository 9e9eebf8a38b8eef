/* fuzz_spool: arbitrary bytes as spool records and segments.
 *
 * Properties checked besides "no crash, no out-of-bounds read":
 *   - a record that decodes re-encodes to exactly the same bytes (when its
 *     fields can be expressed as an envelope), so decode and encode agree;
 *   - the Received: header built from a decoded envelope is CRLF-clean and
 *     keeps every line under 998 octets;
 *   - walking a segment accounts for every byte: records + corrupt regions
 *     + torn tail cover [64, size) exactly. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool.h"

static volatile uint32_t sink;

static void touch(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint32_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += b[i];
	sink += s;
}

/* NUL-free and short enough to fit dst (with its NUL). */
static int copy_field(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= cap || (n && memchr(s, '\0', n)))
		return -1;
	if (n)
		memcpy(dst, s, n);
	dst[n] = '\0';
	return 0;
}

static char *dup_field(const char *s, size_t n)
{
	if (n && memchr(s, '\0', n))
		return NULL;
	char *d = malloc(n + 1);
	if (!d)
		return NULL;
	if (n)
		memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

static void check_received(const struct spool_meta *m)
{
	struct buf b;
	buf_init(&b, 0);
	if (spool_received_header(&b, m, "mx.example", (time_t)(m->received_unix_ns / 1000000000u)) < 0)
		abort();
	size_t line = 0;
	for (size_t i = 0; i < b.len; i++) {
		char c = b.data[i];
		if (c == '\r') {
			if (i + 1 >= b.len || b.data[i + 1] != '\n')
				abort(); /* bare CR */
			line = 0;
			i++;
			continue;
		}
		if (c == '\n')
			abort(); /* bare LF */
		if (++line >= 998)
			abort();
	}
	if (b.len < 2 || memcmp(b.data + b.len - 2, "\r\n", 2) != 0 ||
	    memcmp(b.data, "Received: from ", 15) != 0)
		abort();
	buf_free(&b);
}

/* Rebuild the envelope from the view and encode it again. */
static void check_reencode(const uint8_t *rec, size_t rec_len, const struct spool_record_view *v)
{
	if ((!v->tls && (v->tls_version_len || v->tls_cipher_len)) ||
	    (!v->authenticated && v->auth_user_len))
		return; /* not something the encoder writes */
	struct smtp_peer peer;
	memset(&peer, 0, sizeof peer);
	if (copy_field(peer.addr_str, sizeof peer.addr_str, v->client_addr, v->client_addr_len) < 0 ||
	    copy_field(peer.tls_version, sizeof peer.tls_version, v->tls_version, v->tls_version_len) < 0 ||
	    copy_field(peer.tls_cipher, sizeof peer.tls_cipher, v->tls_cipher, v->tls_cipher_len) < 0 ||
	    copy_field(peer.auth_user, sizeof peer.auth_user, v->auth_user, v->auth_user_len) < 0)
		return;
	peer.port = v->client_port;
	peer.tls = v->tls;
	peer.authenticated = v->authenticated;

	struct smtp_envelope env;
	memset(&env, 0, sizeof env);
	struct smtp_rcpt *rcpts = calloc(v->nrcpt ? v->nrcpt : 1, sizeof *rcpts);
	env.helo = dup_field(v->helo, v->helo_len);
	env.mail_from = dup_field(v->mail_from, v->mail_from_len);
	env.envid = v->envid ? dup_field(v->envid, v->envid_len) : NULL;
	bool ok = rcpts && env.helo && env.mail_from && (!v->envid || env.envid);
	size_t cur = 0;
	uint32_t n = 0;
	struct spool_rcpt_view r;
	while (ok && spool_rcpt_next(v, &cur, &r)) {
		if (n >= v->nrcpt)
			abort(); /* decode promised exactly nrcpt */
		rcpts[n].addr = dup_field(r.addr, r.addr_len);
		rcpts[n].orcpt = r.orcpt ? dup_field(r.orcpt, r.orcpt_len) : NULL;
		rcpts[n].notify = r.notify;
		ok = rcpts[n].addr && (!r.orcpt || rcpts[n].orcpt);
		n++;
	}
	if (ok && n != v->nrcpt)
		abort();
	env.rcpts = rcpts;
	env.nrcpt = n;
	env.esmtp = v->esmtp;
	env.smtputf8 = v->smtputf8;
	env.chunking = v->chunking;
	env.body_type = v->body_type;
	env.ret = v->ret;
	env.size_param = v->size_param;

	if (ok) {
		struct spool_meta m = {.id = v->id, .received_unix_ns = v->received_unix_ns,
				       .env = &env, .peer = &peer};
		struct buf head;
		buf_init(&head, 0);
		if (spool_record_head(&head, &m, v->message_len) < 0)
			abort();
		const void *parts[1] = {v->message};
		size_t lens[1] = {v->message_len};
		spool_record_seal(&head, parts, lens, 1);
		if (head.len + v->message_len != rec_len || memcmp(head.data, rec, head.len) != 0)
			abort();
		buf_free(&head);
		check_received(&m);
	}
	for (uint32_t i = 0; i < n; i++) {
		free(rcpts[i].addr);
		free(rcpts[i].orcpt);
	}
	free(rcpts);
	free(env.helo);
	free(env.mail_from);
	free(env.envid);
}

static void touch_view(const struct spool_record_view *v)
{
	touch(v->client_addr, v->client_addr_len);
	touch(v->helo, v->helo_len);
	touch(v->tls_version, v->tls_version_len);
	touch(v->tls_cipher, v->tls_cipher_len);
	touch(v->auth_user, v->auth_user_len);
	touch(v->mail_from, v->mail_from_len);
	if (v->envid)
		touch(v->envid, v->envid_len);
	touch(v->message, v->message_len);
	size_t cur = 0;
	struct spool_rcpt_view r;
	uint32_t n = 0;
	while (spool_rcpt_next(v, &cur, &r)) {
		touch(r.addr, r.addr_len);
		if (r.orcpt)
			touch(r.orcpt, r.orcpt_len);
		n++;
	}
	if (n != v->nrcpt)
		abort();
}

struct tally {
	uint64_t next; /* where the next event must start */
	uint64_t size;
};

static int on_walk(void *ctx, enum spool_walk_event ev, uint64_t off, uint64_t len,
		   const struct spool_record_view *v, const char *reason)
{
	struct tally *t = ctx;
	if (off != t->next || len == 0 || off + len > t->size)
		abort();
	t->next = off + len;
	if (ev == SPOOL_WALK_RECORD)
		touch_view(v);
	else if (!reason)
		abort();
	return 0;
}

static void one_record(const uint8_t *data, size_t size)
{
	struct spool_record_view v;
	size_t rl = 0;
	enum spool_decode d = spool_record_decode(data, size, &v, &rl);
	if (d != SPOOL_OK)
		return;
	if (rl < SPOOL_RECORD_MIN || rl > size)
		abort();
	touch_view(&v);
	check_reencode(data, rl, &v);
	/* every prefix of a record is a torn record */
	if (spool_record_decode(data, rl - 1, NULL, NULL) != SPOOL_TRUNCATED)
		abort();
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* the input as one record */
	one_record(data, size);

	/* again with the CRC made right, so mutations reach the field parser
	 * instead of stopping at the checksum */
	if (size >= SPOOL_RECORD_PREFIX && memcmp(data, SPOOL_RECORD_MAGIC, 4) == 0) {
		uint64_t len = le64(data + 4);
		if (len >= SPOOL_RECORD_PREFIX && len <= size) {
			uint8_t *copy = malloc(size);
			if (!copy)
				return 0;
			memcpy(copy, data, size);
			uint32_t c = crc32c(0, copy + 16, (size_t)len - 16);
			for (int i = 0; i < 4; i++)
				copy[12 + i] = (uint8_t)(c >> (8 * i));
			one_record(copy, size);
			free(copy);
		}
	}

	/* the input as a segment: core and seq from its header when it has one */
	struct spool_segment_info info = {.core = 0, .seq = 1};
	spool_segment_header_check(data, size, &info, NULL);
	struct tally t = {SPOOL_SEGMENT_HEADER_SIZE, size};
	struct spool_walk_result res;
	spool_segment_walk(data, size, info.core, info.seq, on_walk, &t, &res);
	if (size > SPOOL_SEGMENT_HEADER_SIZE && t.next != size)
		abort(); /* every byte accounted for */
	if (size >= SPOOL_SEGMENT_HEADER_SIZE && res.good_end + res.torn_bytes != size)
		abort();
	return 0;
}
