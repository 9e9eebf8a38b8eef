/* spool_format: the bytes of the spool (specified in spool.h), and the
 * start-up recovery that checks them. Pure encode/decode plus blocking
 * file I/O for recovery; the hot-path writer is spool_writer.c. */
#include "spool.h"
#include "le.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define MXD_CRC_SSE42 1
#endif

/* ---- CRC32C ---- */

#define CRC32C_POLY 0x82F63B78u /* Castagnoli, reflected */

/* Slicing-by-8: crc_table[k][b] is the CRC of byte b followed by k zero
 * bytes, so eight input bytes cost eight lookups and no per-bit loop. */
static uint32_t crc_table[8][256];
static bool crc_use_hw;

__attribute__((constructor)) static void crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
		crc_table[0][i] = c;
	}
	for (int t = 1; t < 8; t++)
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t prev = crc_table[t - 1][i];
			crc_table[t][i] = (prev >> 8) ^ crc_table[0][prev & 0xff];
		}
#ifdef MXD_CRC_SSE42
	__builtin_cpu_init();
	crc_use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t c = ~crc;
	while (len >= 8) {
		uint64_t w = get_u64(p) ^ c;
		c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
		    crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
		    crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
		    crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
	return ~c;
}

#ifdef MXD_CRC_SSE42
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p,
								size_t len)
{
	uint64_t c = (uint32_t)~crc;
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = _mm_crc32_u64(c, w);
		p += 8;
		len -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (len--)
		c32 = _mm_crc32_u8(c32, *p++);
	return ~c32;
}
#endif

bool crc32c_hw_available(void)
{
	return crc_use_hw;
}

uint32_t crc32c_hw(uint32_t crc, const void *data, size_t len)
{
#ifdef MXD_CRC_SSE42
	if (crc_use_hw)
		return crc32c_sse42(crc, data, len);
#endif
	return crc32c_sw(crc, data, len);
}

uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
#ifdef MXD_CRC_SSE42
	if (crc_use_hw)
		return crc32c_sse42(crc, data, len);
#endif
	return crc32c_sw(crc, data, len);
}

/* ---- ids and segment headers ---- */

static void put_hex(char *out, uint64_t v, int digits)
{
	static const char hex[] = "0123456789ABCDEF";
	for (int i = digits - 1; i >= 0; i--) {
		out[i] = hex[v & 0xf];
		v >>= 4;
	}
}

void spool_make_id(char out[SPOOL_ID_LEN + 1], unsigned core, uint64_t seq, uint64_t offset)
{
	put_hex(out, core & 0xffu, 2);
	put_hex(out + 2, seq & 0xffffffu, 6);
	put_hex(out + 8, offset & 0xffffffffu, 8);
	out[SPOOL_ID_LEN] = '\0';
}

#define SEG_OFF_VERSION 8
#define SEG_OFF_CORE 12
#define SEG_OFF_SEQ 16
#define SEG_OFF_CREATED 24
#define SEG_OFF_PAD 32
#define SEG_OFF_CRC 60

void spool_segment_header(uint8_t out[SPOOL_SEGMENT_HEADER_SIZE], unsigned core,
			  uint64_t seq, uint64_t created_unix_ns)
{
	memset(out, 0, SPOOL_SEGMENT_HEADER_SIZE);
	memcpy(out, SPOOL_SEGMENT_MAGIC, 8);
	put_u32(out + SEG_OFF_VERSION, SPOOL_FORMAT_VERSION);
	put_u32(out + SEG_OFF_CORE, core);
	put_u64(out + SEG_OFF_SEQ, seq);
	put_u64(out + SEG_OFF_CREATED, created_unix_ns);
	put_u32(out + SEG_OFF_CRC, crc32c(0, out, SEG_OFF_CRC));
}

enum spool_decode spool_segment_header_check(const uint8_t *p, size_t avail,
					     struct spool_segment_info *info, const char **reason)
{
	const char *why_unused;
	if (!reason)
		reason = &why_unused;
	if (avail < SPOOL_SEGMENT_HEADER_SIZE) {
		*reason = "segment shorter than its header";
		return SPOOL_TRUNCATED;
	}
	if (memcmp(p, SPOOL_SEGMENT_MAGIC, 8) != 0) {
		*reason = "bad header magic";
		return SPOOL_CORRUPT;
	}
	if (get_u32(p + SEG_OFF_CRC) != crc32c(0, p, SEG_OFF_CRC)) {
		*reason = "bad header CRC";
		return SPOOL_CORRUPT;
	}
	if (get_u32(p + SEG_OFF_VERSION) != SPOOL_FORMAT_VERSION) {
		*reason = "unsupported format version";
		return SPOOL_CORRUPT;
	}
	for (size_t i = SEG_OFF_PAD; i < SEG_OFF_CRC; i++)
		if (p[i] != 0) {
			*reason = "bad header padding";
			return SPOOL_CORRUPT;
		}
	if (info) {
		info->version = get_u32(p + SEG_OFF_VERSION);
		info->core = get_u32(p + SEG_OFF_CORE);
		info->seq = get_u64(p + SEG_OFF_SEQ);
		info->created_unix_ns = get_u64(p + SEG_OFF_CREATED);
	}
	*reason = NULL;
	return SPOOL_OK;
}

/* ---- the Received: header ---- */

#define TRACE_FIELD_MAX 255

static bool trace_char_ok(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '\\';
}

/* Printable ASCII that cannot end or nest the comment it may sit in;
 * anything else becomes '?'. Cut at TRACE_FIELD_MAX. */
static int append_clean(struct buf *out, const char *s, size_t n, const char *fallback)
{
	if (!s || n == 0)
		return buf_append_str(out, fallback);
	if (n > TRACE_FIELD_MAX)
		n = TRACE_FIELD_MAX;
	if (buf_reserve(out, n) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		out->data[out->len++] = trace_char_ok(c) ? (char)c : '?';
	}
	return 0;
}

static int append_addr_literal(struct buf *out, const struct smtp_peer *pe)
{
	const char *a = pe->addr_str;
	size_t n = strnlen(a, sizeof pe->addr_str);
	/* An IPv4 client on a dual-stack socket: say what it really is. */
	if (n > 7 && strncasecmp(a, "::ffff:", 7) == 0 && memchr(a + 7, '.', n - 7) &&
	    !memchr(a + 7, ':', n - 7)) {
		a += 7;
		n -= 7;
	}
	if (n == 0)
		return buf_append_str(out, "unknown");
	bool v6 = memchr(a, ':', n) != NULL;
	if (buf_append_str(out, v6 ? "[IPv6:" : "[") < 0 || buf_reserve(out, n + 1) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = a[i];
		bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
			  c == '.' || c == ':';
		out->data[out->len++] = ok ? c : '?';
	}
	out->data[out->len++] = ']';
	return 0;
}

/* "for <rcpt>" only when the address can sit in a header line as is. */
static bool rcpt_fits_trace(const char *addr, bool utf8)
{
	if (!addr)
		return false;
	size_t n = strlen(addr);
	if (n == 0 || n > 900)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)addr[i];
		if (c < 0x20 || c == 0x7f || c == '<' || c == '>' || (c >= 0x80 && !utf8))
			return false;
	}
	return true;
}

static const char *trace_protocol(const struct smtp_envelope *e, const struct smtp_peer *pe)
{
	if (!e->esmtp)
		return "SMTP";
	static const char *const esmtp[4] = {"ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA"};
	static const char *const utf8[4] = {"UTF8SMTP", "UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA"};
	int k = (pe->tls ? 1 : 0) | (pe->authenticated ? 2 : 0);
	return e->smtputf8 ? utf8[k] : esmtp[k];
}

static int append_date(struct buf *out, time_t now)
{
	static const char *const days[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;
	if (!gmtime_r(&now, &tm)) {
		time_t zero = 0;
		gmtime_r(&zero, &tm);
	}
	return buf_printf(out, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
			  tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
			  tm.tm_min, tm.tm_sec);
}

static int received_body(struct buf *out, const struct spool_meta *m, const char *hostname,
			 time_t now)
{
	const struct smtp_envelope *e = m->env;
	const struct smtp_peer *pe = m->peer;

	if (buf_append_str(out, "Received: from ") < 0 ||
	    append_clean(out, e->helo, e->helo ? strlen(e->helo) : 0, "unknown") < 0 ||
	    buf_append_str(out, " (") < 0 || append_addr_literal(out, pe) < 0 ||
	    buf_append_str(out, ")\r\n") < 0)
		return -1;
	if (pe->tls) {
		if (buf_append_str(out, "\t(using ") < 0 ||
		    append_clean(out, pe->tls_version, strnlen(pe->tls_version, sizeof pe->tls_version),
				 "TLS") < 0 ||
		    buf_append_str(out, " with cipher ") < 0 ||
		    append_clean(out, pe->tls_cipher, strnlen(pe->tls_cipher, sizeof pe->tls_cipher),
				 "unknown") < 0 ||
		    buf_append_str(out, ")\r\n") < 0)
			return -1;
	}
	if (buf_append_str(out, "\tby ") < 0 ||
	    append_clean(out, hostname, hostname ? strlen(hostname) : 0, "localhost") < 0 ||
	    buf_printf(out, " (mxd) with %s id ", trace_protocol(e, pe)) < 0 ||
	    append_clean(out, m->id, strnlen(m->id, SPOOL_ID_LEN), "unknown") < 0)
		return -1;
	if (e->nrcpt == 1 && e->rcpts && rcpt_fits_trace(e->rcpts[0].addr, e->smtputf8)) {
		if (buf_append_str(out, "\r\n\tfor <") < 0 || buf_append_str(out, e->rcpts[0].addr) < 0 ||
		    buf_append_str(out, ">; ") < 0)
			return -1;
	} else if (buf_append_str(out, ";\r\n\t") < 0) {
		return -1;
	}
	if (append_date(out, now) < 0 || buf_append_str(out, "\r\n") < 0)
		return -1;
	return 0;
}

int spool_received_header(struct buf *out, const struct spool_meta *m, const char *hostname,
			  time_t now)
{
	assert(out && m && m->env && m->peer && m->id);
	size_t start = out->len;
	if (received_body(out, m, hostname, now) < 0) {
		out->len = start;
		return -1;
	}
	return 0;
}

/* ---- record encoding ---- */

#define REC_OFF_LEN 4
#define REC_OFF_CRC 12
#define REC_OFF_ID 16
#define REC_OFF_RECEIVED 32
#define REC_OFF_PORT 40
#define REC_OFF_FLAGS 42
#define REC_OFF_BODY 43
#define REC_OFF_RET 44
#define REC_OFF_RESERVED 45
#define REC_OFF_SIZE 48
#define REC_OFF_STRINGS 56

#define REC_F_ESMTP 0x01u
#define REC_F_SMTPUTF8 0x02u
#define REC_F_ENVID 0x04u
#define REC_F_TLS 0x08u
#define REC_F_AUTH 0x10u
#define REC_F_CHUNKING 0x20u
#define REC_F_ALL 0x3fu

#define RCPT_F_ORCPT 0x01u
#define RCPT_NOTIFY_ALL 0x0fu

struct head_strings {
	const char *s[7];
	size_t n[7];
	int count; /* 6, or 7 with ENVID */
};

static uint8_t *put_string(uint8_t *p, const char *s, size_t n)
{
	put_u16(p, (uint16_t)n);
	if (n)
		memcpy(p + 2, s, n);
	return p + 2 + n;
}

int spool_record_head(struct buf *out, const struct spool_meta *m, uint64_t message_len)
{
	assert(out && m && m->env && m->peer && m->id);
	const struct smtp_envelope *e = m->env;
	const struct smtp_peer *pe = m->peer;
	if (strnlen(m->id, SPOOL_ID_LEN + 1) != SPOOL_ID_LEN)
		return -1;
	assert(e->nrcpt == 0 || e->rcpts);

	struct head_strings hs = {0};
	hs.s[0] = pe->addr_str;
	hs.n[0] = strnlen(pe->addr_str, sizeof pe->addr_str);
	hs.s[1] = e->helo;
	hs.n[1] = e->helo ? strlen(e->helo) : 0;
	hs.s[2] = pe->tls ? pe->tls_version : "";
	hs.n[2] = pe->tls ? strnlen(pe->tls_version, sizeof pe->tls_version) : 0;
	hs.s[3] = pe->tls ? pe->tls_cipher : "";
	hs.n[3] = pe->tls ? strnlen(pe->tls_cipher, sizeof pe->tls_cipher) : 0;
	hs.s[4] = pe->authenticated ? pe->auth_user : "";
	hs.n[4] = pe->authenticated ? strnlen(pe->auth_user, sizeof pe->auth_user) : 0;
	hs.s[5] = e->mail_from;
	hs.n[5] = e->mail_from ? strlen(e->mail_from) : 0;
	hs.count = 6;
	if (e->envid) {
		hs.s[6] = e->envid;
		hs.n[6] = strlen(e->envid);
		hs.count = 7;
	}

	uint64_t head_len = REC_OFF_STRINGS;
	for (int i = 0; i < hs.count; i++) {
		if (hs.n[i] > SPOOL_STRING_MAX)
			return -1;
		head_len += 2 + hs.n[i];
	}
	uint64_t rcpt_len = 0;
	for (uint32_t i = 0; i < e->nrcpt; i++) {
		const struct smtp_rcpt *r = &e->rcpts[i];
		size_t an = r->addr ? strlen(r->addr) : 0;
		size_t on = r->orcpt ? strlen(r->orcpt) : 0;
		if (an > SPOOL_STRING_MAX || on > SPOOL_STRING_MAX)
			return -1;
		rcpt_len += 4 + an + (r->orcpt ? 2 + on : 0);
	}
	if (rcpt_len > UINT32_MAX)
		return -1;
	head_len += 8 + rcpt_len + 8;
	if (head_len > SPOOL_RECORD_MAX || message_len > SPOOL_RECORD_MAX - head_len)
		return -1;
	if (head_len > SIZE_MAX || buf_reserve(out, (size_t)head_len) < 0)
		return -1;

	uint8_t *h = (uint8_t *)out->data + out->len;
	uint8_t *p = h;
	memcpy(p, SPOOL_RECORD_MAGIC, 4);
	put_u64(p + REC_OFF_LEN, head_len + message_len);
	put_u32(p + REC_OFF_CRC, 0);
	memcpy(p + REC_OFF_ID, m->id, SPOOL_ID_LEN);
	put_u64(p + REC_OFF_RECEIVED, m->received_unix_ns);
	put_u16(p + REC_OFF_PORT, pe->port);
	unsigned flags = (e->esmtp ? REC_F_ESMTP : 0) | (e->smtputf8 ? REC_F_SMTPUTF8 : 0) |
			 (e->envid ? REC_F_ENVID : 0) | (pe->tls ? REC_F_TLS : 0) |
			 (pe->authenticated ? REC_F_AUTH : 0) | (e->chunking ? REC_F_CHUNKING : 0);
	p[REC_OFF_FLAGS] = (uint8_t)flags;
	p[REC_OFF_BODY] = (uint8_t)e->body_type;
	p[REC_OFF_RET] = (uint8_t)e->ret;
	memset(p + REC_OFF_RESERVED, 0, 3);
	put_u64(p + REC_OFF_SIZE, e->size_param);
	p += REC_OFF_STRINGS;
	for (int i = 0; i < hs.count; i++)
		p = put_string(p, hs.s[i], hs.n[i]);
	put_u32(p, e->nrcpt);
	put_u32(p + 4, (uint32_t)rcpt_len);
	p += 8;
	for (uint32_t i = 0; i < e->nrcpt; i++) {
		const struct smtp_rcpt *r = &e->rcpts[i];
		p[0] = (uint8_t)(r->notify & RCPT_NOTIFY_ALL);
		p[1] = r->orcpt ? RCPT_F_ORCPT : 0;
		p = put_string(p + 2, r->addr, r->addr ? strlen(r->addr) : 0);
		if (r->orcpt)
			p = put_string(p, r->orcpt, strlen(r->orcpt));
	}
	put_u64(p, message_len);
	p += 8;
	assert((uint64_t)(p - h) == head_len);
	out->len += (size_t)head_len;
	return 0;
}

void spool_record_seal_raw(uint8_t *head, size_t head_len, const void *const *parts,
			   const size_t *part_lens, size_t nparts)
{
	assert(head_len >= SPOOL_RECORD_MIN);
	assert(memcmp(head, SPOOL_RECORD_MAGIC, 4) == 0);
	uint32_t c = crc32c(0, head + REC_OFF_ID, head_len - REC_OFF_ID);
	uint64_t total = head_len;
	for (size_t i = 0; i < nparts; i++) {
		c = crc32c(c, parts[i], part_lens[i]);
		total += part_lens[i];
	}
	assert(total == get_u64(head + REC_OFF_LEN));
	(void)total;
	put_u32(head + REC_OFF_CRC, c);
}

void spool_record_seal(struct buf *head, const void *const *parts, const size_t *part_lens,
		       size_t nparts)
{
	spool_record_seal_raw((uint8_t *)head->data, head->len, parts, part_lens, nparts);
}

/* ---- record decoding ---- */

/* A bounded reader: every get checks the bytes are there. */
struct reader {
	const uint8_t *p;
	size_t pos, end;
};

static bool rd_u8(struct reader *r, uint8_t *v)
{
	if (r->end - r->pos < 1)
		return false;
	*v = r->p[r->pos++];
	return true;
}

static bool rd_u32(struct reader *r, uint32_t *v)
{
	if (r->end - r->pos < 4)
		return false;
	*v = get_u32(r->p + r->pos);
	r->pos += 4;
	return true;
}

static bool rd_u64(struct reader *r, uint64_t *v)
{
	if (r->end - r->pos < 8)
		return false;
	*v = get_u64(r->p + r->pos);
	r->pos += 8;
	return true;
}

static bool rd_str(struct reader *r, const char **s, size_t *n)
{
	if (r->end - r->pos < 2)
		return false;
	size_t len = get_u16(r->p + r->pos);
	if (r->end - r->pos - 2 < len)
		return false;
	*s = (const char *)r->p + r->pos + 2;
	*n = len;
	r->pos += 2 + len;
	return true;
}

/* One recipient at *cursor: 1 read, 0 clean end, -1 malformed. */
static int rcpt_read(const uint8_t *b, size_t len, size_t *cursor, struct spool_rcpt_view *out)
{
	if (*cursor >= len)
		return *cursor == len ? 0 : -1;
	struct reader r = {b, *cursor, len};
	uint8_t notify, flags;
	struct spool_rcpt_view v = {0};
	if (!rd_u8(&r, &notify) || !rd_u8(&r, &flags) || (notify & ~RCPT_NOTIFY_ALL) ||
	    (flags & ~RCPT_F_ORCPT) || !rd_str(&r, &v.addr, &v.addr_len))
		return -1;
	if ((flags & RCPT_F_ORCPT) && !rd_str(&r, &v.orcpt, &v.orcpt_len))
		return -1;
	v.notify = notify;
	*cursor = r.pos;
	if (out)
		*out = v;
	return 1;
}

bool spool_rcpt_next(const struct spool_record_view *v, size_t *cursor,
		     struct spool_rcpt_view *out)
{
	if (!v->rcpt_bytes)
		return false;
	return rcpt_read(v->rcpt_bytes, v->rcpt_bytes_len, cursor, out) == 1;
}

static bool id_ok(const uint8_t *p)
{
	for (int i = 0; i < SPOOL_ID_LEN; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'F')))
			return false;
	return true;
}

static enum spool_decode fail(const char **reason, const char *why, enum spool_decode d)
{
	*reason = why;
	return d;
}

enum spool_decode spool_record_decode_why(const uint8_t *p, size_t avail,
					  struct spool_record_view *out, size_t *rec_len,
					  const char **reason)
{
	const char *why_unused;
	if (!reason)
		reason = &why_unused;
	*reason = NULL;
	if (avail == 0)
		return fail(reason, "truncated record", SPOOL_TRUNCATED);
	if (memcmp(p, SPOOL_RECORD_MAGIC, avail < 4 ? avail : 4) != 0)
		return fail(reason, "bad magic", SPOOL_CORRUPT);
	if (avail < SPOOL_RECORD_PREFIX)
		return fail(reason, "truncated record", SPOOL_TRUNCATED);
	uint64_t len = get_u64(p + REC_OFF_LEN);
	if (len < SPOOL_RECORD_MIN || len > SPOOL_RECORD_MAX)
		return fail(reason, "bad record length", SPOOL_CORRUPT);
	if (len > avail)
		return fail(reason, "truncated record", SPOOL_TRUNCATED);
	if (crc32c(0, p + REC_OFF_ID, (size_t)len - REC_OFF_ID) != get_u32(p + REC_OFF_CRC))
		return fail(reason, "bad CRC", SPOOL_CORRUPT);

	/* The CRC matched: what follows catches writer bugs and crafted
	 * input, never a torn write. */
	struct spool_record_view v;
	memset(&v, 0, sizeof v);
	if (!id_ok(p + REC_OFF_ID))
		return fail(reason, "bad id", SPOOL_CORRUPT);
	memcpy(v.id, p + REC_OFF_ID, SPOOL_ID_LEN);
	v.id[SPOOL_ID_LEN] = '\0';
	v.received_unix_ns = get_u64(p + REC_OFF_RECEIVED);
	v.client_port = get_u16(p + REC_OFF_PORT);
	unsigned flags = p[REC_OFF_FLAGS];
	if (flags & ~REC_F_ALL)
		return fail(reason, "bad flags", SPOOL_CORRUPT);
	if (p[REC_OFF_BODY] > SMTP_BODY_BINARYMIME || p[REC_OFF_RET] > SMTP_RET_HDRS ||
	    p[REC_OFF_RESERVED] || p[REC_OFF_RESERVED + 1] || p[REC_OFF_RESERVED + 2])
		return fail(reason, "bad field", SPOOL_CORRUPT);
	v.esmtp = flags & REC_F_ESMTP;
	v.smtputf8 = flags & REC_F_SMTPUTF8;
	v.tls = flags & REC_F_TLS;
	v.authenticated = flags & REC_F_AUTH;
	v.chunking = flags & REC_F_CHUNKING;
	v.body_type = (enum smtp_body_type)p[REC_OFF_BODY];
	v.ret = (enum smtp_ret)p[REC_OFF_RET];
	v.size_param = get_u64(p + REC_OFF_SIZE);

	struct reader r = {p, REC_OFF_STRINGS, (size_t)len};
	if (!rd_str(&r, &v.client_addr, &v.client_addr_len) || !rd_str(&r, &v.helo, &v.helo_len) ||
	    !rd_str(&r, &v.tls_version, &v.tls_version_len) ||
	    !rd_str(&r, &v.tls_cipher, &v.tls_cipher_len) ||
	    !rd_str(&r, &v.auth_user, &v.auth_user_len) ||
	    !rd_str(&r, &v.mail_from, &v.mail_from_len))
		return fail(reason, "bad field", SPOOL_CORRUPT);
	if ((flags & REC_F_ENVID) && !rd_str(&r, &v.envid, &v.envid_len))
		return fail(reason, "bad field", SPOOL_CORRUPT);

	uint32_t nrcpt, rcpt_len;
	if (!rd_u32(&r, &nrcpt) || !rd_u32(&r, &rcpt_len) || r.end - r.pos < rcpt_len)
		return fail(reason, "bad recipients", SPOOL_CORRUPT);
	v.nrcpt = nrcpt;
	v.rcpt_bytes = p + r.pos;
	v.rcpt_bytes_len = rcpt_len;
	size_t cursor = 0;
	uint32_t seen = 0;
	int got;
	while ((got = rcpt_read(v.rcpt_bytes, rcpt_len, &cursor, NULL)) == 1)
		seen++;
	if (got < 0 || seen != nrcpt)
		return fail(reason, "bad recipients", SPOOL_CORRUPT);
	r.pos += rcpt_len;

	uint64_t msg_len;
	if (!rd_u64(&r, &msg_len) || msg_len != (uint64_t)(r.end - r.pos))
		return fail(reason, "bad message length", SPOOL_CORRUPT);
	v.message = (const char *)p + r.pos;
	v.message_len = (size_t)msg_len;

	if (out)
		*out = v;
	if (rec_len)
		*rec_len = (size_t)len;
	return SPOOL_OK;
}

enum spool_decode spool_record_decode(const uint8_t *p, size_t avail,
				      struct spool_record_view *v, size_t *rec_len)
{
	return spool_record_decode_why(p, avail, v, rec_len, NULL);
}

/* ---- walking a segment ---- */

/* The next offset >= from holding an intact record whose id says it was
 * written at that very offset of this segment, or 0. Checking the id
 * before the CRC keeps a scan over a large damaged region linear, and
 * skips record-like bytes inside a message (a spool file sent as mail). */
static size_t resync(const uint8_t *seg, size_t len, size_t from, unsigned core, uint64_t seq)
{
	for (size_t q = from; q < len && len - q >= SPOOL_RECORD_MIN; q++) {
		const uint8_t *hit = memmem(seg + q, len - q, SPOOL_RECORD_MAGIC, 4);
		if (!hit)
			return 0;
		q = (size_t)(hit - seg);
		if (len - q < SPOOL_RECORD_MIN)
			return 0;
		char id[SPOOL_ID_LEN + 1];
		spool_make_id(id, core, seq, q);
		if (memcmp(seg + q + REC_OFF_ID, id, SPOOL_ID_LEN) != 0)
			continue;
		if (spool_record_decode(seg + q, len - q, NULL, NULL) == SPOOL_OK)
			return q;
	}
	return 0;
}

void spool_segment_walk(const uint8_t *seg, size_t len, unsigned core, uint64_t seq,
			spool_walk_fn fn, void *ctx, struct spool_walk_result *res)
{
	memset(res, 0, sizeof *res);
	size_t pos = SPOOL_SEGMENT_HEADER_SIZE;
	res->good_end = len < pos ? len : pos;
	while (pos < len) {
		struct spool_record_view v;
		size_t rl = 0;
		const char *why = NULL;
		enum spool_decode d = spool_record_decode_why(seg + pos, len - pos, &v, &rl, &why);
		if (d == SPOOL_OK) {
			res->records++;
			res->good_end = pos + rl;
			if (fn && fn(ctx, SPOOL_WALK_RECORD, pos, rl, &v, NULL)) {
				res->stopped = true;
				return;
			}
			pos += rl;
			continue;
		}
		size_t q = resync(seg, len, pos + 1, core, seq);
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

/* ---- segment files ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* "<digits>.seg" with a value that fits u64. */
static bool segment_name(const char *name, uint64_t *seq)
{
	size_t n = strlen(name);
	if (n < 5 || n > 24 || strcmp(name + n - 4, ".seg") != 0)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n - 4; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		unsigned d = (unsigned)(name[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*seq = v;
	return true;
}

int spool_list_segments(const char *core_dir, uint64_t **seqs, size_t *n)
{
	*seqs = NULL;
	*n = 0;
	DIR *d = opendir(core_dir);
	if (!d)
		return -1;
	uint64_t *v = NULL;
	size_t len = 0, cap = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;
		if (!segment_name(de->d_name, &seq))
			continue;
		if (len == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			uint64_t *nv = realloc(v, ncap * sizeof *nv);
			if (!nv) {
				free(v);
				closedir(d);
				errno = ENOMEM;
				return -1;
			}
			v = nv;
			cap = ncap;
		}
		v[len++] = seq;
	}
	int saved = errno;
	closedir(d);
	if (saved) {
		free(v);
		errno = saved;
		return -1;
	}
	if (len)
		qsort(v, len, sizeof *v, cmp_u64);
	*seqs = v;
	*n = len;
	return 0;
}

/* ---- recovery ---- */

static int mkdir_p(const char *path, struct buf *log)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof tmp) {
		buf_printf(log, "spool: directory path too long: %s\n", path);
		return -1;
	}
	memcpy(tmp, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (tmp[i] != '/' && tmp[i] != '\0')
			continue;
		char saved = tmp[i];
		tmp[i] = '\0';
		if (mkdir(tmp, 0700) < 0 && errno != EEXIST) {
			buf_printf(log, "spool: mkdir %s: %s\n", tmp, strerror(errno));
			return -1;
		}
		tmp[i] = saved;
	}
	struct stat st;
	if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
		buf_printf(log, "spool: %s is not a directory\n", path);
		return -1;
	}
	return 0;
}

int spool_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	close(fd);
	return rc;
}

static int recover_segment(const char *core_dir, unsigned core, uint64_t seq,
			   struct spool_recovery *r, struct buf *log)
{
	char path[PATH_MAX];
	if ((size_t)snprintf(path, sizeof path, "%s/%08" PRIu64 ".seg", core_dir, seq) >= sizeof path) {
		buf_printf(log, "spool: core %u segment %08" PRIu64 ": path too long\n", core, seq);
		return -1;
	}
	int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		buf_printf(log, "spool: open %s: %s\n", path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > SIZE_MAX) {
		buf_printf(log, "spool: %s: not a readable regular file\n", path);
		close(fd);
		return -1;
	}
	size_t size = (size_t)st.st_size;
	const uint8_t *map = NULL;
	if (size) {
		void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED) {
			buf_printf(log, "spool: mmap %s: %s\n", path, strerror(errno));
			close(fd);
			return -1;
		}
		map = m;
	}

	struct spool_segment_info info;
	const char *why = NULL;
	char whybuf[96];
	enum spool_decode hd = spool_segment_header_check(map, size, &info, &why);
	if (hd == SPOOL_OK && (info.core != core || info.seq != seq)) {
		snprintf(whybuf, sizeof whybuf, "header names core %u segment %" PRIu64, info.core,
			 info.seq);
		why = whybuf;
		hd = SPOOL_CORRUPT;
	}
	struct spool_walk_result w;
	spool_segment_walk(map, size, core, seq, NULL, NULL, &w);
	if (map)
		munmap((void *)map, size);
	if (hd != SPOOL_OK) {
		close(fd);
		if (size <= SPOOL_SEGMENT_HEADER_SIZE) {
			/* Created, header never completed: it cannot hold a record. */
			if (unlink(path) < 0 || spool_fsync_dir(core_dir) < 0) {
				buf_printf(log, "spool: remove %s: %s\n", path, strerror(errno));
				return -1;
			}
			buf_printf(log,
				   "spool: core %u segment %08" PRIu64 ": %s (%zu bytes), removed\n",
				   core, seq, why, size);
			return 0;
		}
		/* Maybe not ours: count what is intact, change nothing. */
		r->segments++;
		r->records += w.records;
		r->corrupt_records += w.corrupt_regions;
		buf_printf(log,
			   "spool: core %u segment %08" PRIu64 ": %s, left untouched: %" PRIu64
			   " intact records\n",
			   core, seq, why, w.records);
		return 0;
	}

	r->segments++;
	r->records += w.records;
	r->corrupt_records += w.corrupt_regions;

	int rc = 0;
	if (w.torn_bytes) {
		if (ftruncate(fd, (off_t)w.good_end) < 0 || fsync(fd) < 0) {
			buf_printf(log, "spool: truncate %s to %" PRIu64 ": %s\n", path, w.good_end,
				   strerror(errno));
			rc = -1;
		} else {
			r->truncated_bytes += w.torn_bytes;
		}
	}
	close(fd);
	if (rc < 0)
		return -1;

	buf_printf(log, "spool: core %u segment %08" PRIu64 ": %" PRIu64 " records", core, seq,
		   w.records);
	if (w.corrupt_regions)
		buf_printf(log, ", %" PRIu64 " corrupt regions (%" PRIu64 " bytes) skipped",
			   w.corrupt_regions, w.corrupt_bytes);
	if (w.torn_bytes)
		buf_printf(log, ", truncated %" PRIu64 " torn bytes", w.torn_bytes);
	buf_append_str(log, "\n");
	return 0;
}

int spool_recover(const char *spool_dir, unsigned core, struct spool_recovery *r, struct buf *log)
{
	return spool_recover_except(spool_dir, core, 0, r, log);
}

int spool_recover_except(const char *spool_dir, unsigned core, uint64_t in_use_seq,
			 struct spool_recovery *r, struct buf *log)
{
	memset(r, 0, sizeof *r);
	r->next_seq = 1;
	char core_dir[PATH_MAX];
	if ((size_t)snprintf(core_dir, sizeof core_dir, "%s/%02u", spool_dir, core) >=
	    sizeof core_dir) {
		buf_printf(log, "spool: directory path too long: %s\n", spool_dir);
		return -1;
	}
	struct stat st;
	bool existed = stat(core_dir, &st) == 0;
	if (mkdir_p(core_dir, log) < 0)
		return -1;
	if (!existed)
		spool_fsync_dir(spool_dir);

	uint64_t *seqs;
	size_t n;
	if (spool_list_segments(core_dir, &seqs, &n) < 0) {
		buf_printf(log, "spool: list %s: %s\n", core_dir, strerror(errno));
		return -1;
	}
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		if (in_use_seq != 0 && seqs[i] == in_use_seq) {
			/* another process appends to it (see UPGRADE in spool.h) */
			buf_printf(log,
				   "spool: core %u segment %08" PRIu64
				   ": in use by the previous process, left alone\n",
				   core, seqs[i]);
			continue;
		}
		if (recover_segment(core_dir, core, seqs[i], r, log) < 0) {
			rc = -1;
			break;
		}
	}
	if (n && seqs[n - 1] < UINT64_MAX)
		r->next_seq = seqs[n - 1] + 1;
	if (in_use_seq != 0 && in_use_seq < UINT64_MAX && r->next_seq <= in_use_seq)
		r->next_seq = in_use_seq + 1; /* even if its file is not there (yet) */
	free(seqs);
	if (rc == 0)
		buf_printf(log,
			   "spool: core %u: %" PRIu64 " segments, %" PRIu64
			   " records, next segment %08" PRIu64 "\n",
			   core, r->segments, r->records, r->next_seq);
	return rc;
}
