/* test_proxy: the PROXY protocol header parser (engine/proxy.c).
 *
 * Every case, valid or not, is fed whole, split in two at every byte
 * boundary, and one byte at a time; each chunk is a separate allocation of
 * exactly its size, so ASan sees any read past it. Every run must give the
 * same result, the same reason and the same total of consumed bytes, and
 * that total must be exactly what the case expects: the header's length for
 * a valid header (with SMTP bytes behind it in the same input, never
 * consumed), the offset of the first byte that makes a refusal certain for
 * an invalid one. A split before that byte must leave the first call
 * wanting more; a split at or after it must end the first call. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxy.h"
#include "check.h"

#define SMTP_AFTER "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n"
#define BOTH (PROXY_V1 | PROXY_V2)
#define V2SIG "\r\n\r\n\0\r\nQUIT\n"
#define B(s) (const unsigned char *)(s), sizeof(s) - 1

struct pcase {
	const char *name;
	unsigned versions;
	size_t tlv_max;
	const unsigned char *data;
	size_t len;
	enum proxy_result want;
	const char *reason; /* INVALID */
	size_t at;          /* DONE: header length; INVALID: refused after this many bytes */
	const char *render; /* DONE */
};

struct outcome {
	enum proxy_result r;
	const char *reason;
	size_t total;
	char render[256];
};

static void render_addr(const struct sockaddr_storage *ss, socklen_t len, char *out, size_t n)
{
	char a[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET && len == sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s->sin_addr, a, sizeof a);
		snprintf(out, n, "%s:%u", a, ntohs(s->sin_port));
	} else if (ss->ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof a);
		snprintf(out, n, "[%s]:%u", a, ntohs(s->sin6_port));
	} else {
		snprintf(out, n, "?family %d len %u", ss->ss_family, (unsigned)len);
	}
}

static void render(const struct proxy_header *h, char *out, size_t n)
{
	if (h->local) {
		bool clean = h->src_len == 0 && h->dst_len == 0 && h->src.ss_family == 0 &&
			     h->dst.ss_family == 0;
		snprintf(out, n, "v%d local%s", h->version, clean ? "" : " (with addresses?)");
		return;
	}
	char s[72], d[72];
	render_addr(&h->src, h->src_len, s, sizeof s);
	render_addr(&h->dst, h->dst_len, d, sizeof d);
	snprintf(out, n, "v%d %s > %s", h->version, s, d);
}

/* Feed data cut at the given points (cuts ascending, inside (0, len)).
 * A final result reached early must be repeated, consuming nothing, by
 * every later call. first_final: whether the first call ended parsing. */
static struct outcome feed(const struct pcase *c, const unsigned char *data, size_t len,
			   const size_t *cuts, size_t ncuts, bool *first_final)
{
	struct proxy_parser p;
	struct proxy_header h;
	struct outcome o = { .r = PROXY_NEED_MORE };
	bool final = false;
	size_t start = 0;

	memset(&h, 0xA5, sizeof h);
	proxy_parser_init(&p, c->versions, c->tlv_max);
	for (size_t k = 0; k <= ncuts; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		size_t n = end - start, used = 12345;
		unsigned char *chunk = malloc(n ? n : 1);
		memcpy(chunk, data + start, n);
		enum proxy_result r = proxy_parse(&p, (const char *)chunk, n, &used, &h);
		free(chunk);
		if (final) {
			CHECK(r == o.r);
			CHECK(used == 0);
		} else {
			CHECK(used <= n);
			if (r == PROXY_NEED_MORE)
				CHECK(used == n);
			o.r = r;
			o.total += used;
			final = r != PROXY_NEED_MORE;
			if (k == 0 && first_final)
				*first_final = final;
		}
		start = end;
	}
	CHECK(proxy_consumed_total(&p) == o.total);
	o.reason = proxy_reason(&p);
	if (o.r == PROXY_DONE)
		render(&h, o.render, sizeof o.render);
	return o;
}

static bool same(const struct outcome *a, const struct outcome *b)
{
	return a->r == b->r && a->total == b->total &&
	       ((!a->reason && !b->reason) || (a->reason && b->reason && !strcmp(a->reason, b->reason))) &&
	       strcmp(a->render, b->render) == 0;
}

static const char *rname(enum proxy_result r)
{
	return r == PROXY_DONE ? "DONE" : r == PROXY_INVALID ? "INVALID" : "NEED_MORE";
}

static int cases_run;

static void run_case(const struct pcase *c)
{
	/* Valid and invalid headers get SMTP bytes behind them; an incomplete
	 * one is fed alone and must want more. */
	size_t extra = c->want == PROXY_NEED_MORE ? 0 : sizeof SMTP_AFTER - 1;
	size_t len = c->len + extra;
	unsigned char *data = malloc(len);
	memcpy(data, c->data, c->len);
	memcpy(data + c->len, SMTP_AFTER, extra);
	cases_run++;

	struct outcome whole = feed(c, data, len, NULL, 0, NULL);
	bool ok = whole.r == c->want;
	if (c->want == PROXY_INVALID)
		ok = ok && whole.reason && c->reason && !strcmp(whole.reason, c->reason) && whole.total == c->at;
	else if (c->want == PROXY_DONE)
		ok = ok && !whole.reason && whole.total == c->at && !strcmp(whole.render, c->render);
	else
		ok = ok && !whole.reason && whole.total == len;
	CHECK(ok);
	if (!ok)
		fprintf(stderr, "  case \"%s\": got %s reason \"%s\" consumed %zu render \"%s\"; "
				"want %s reason \"%s\" at %zu render \"%s\"\n",
			c->name, rname(whole.r), whole.reason ? whole.reason : "", whole.total,
			whole.render, rname(c->want), c->reason ? c->reason : "", c->at,
			c->render ? c->render : "");
	if (whole.r == PROXY_DONE)
		CHECK(memcmp(data + whole.total, SMTP_AFTER, extra) == 0);

	for (size_t k = 0; k <= len; k++) {
		size_t cut = k;
		bool first_final = false;
		struct outcome o = feed(c, data, len, &cut, 1, &first_final);
		if (!same(&o, &whole)) {
			CHECK(!"split differs");
			fprintf(stderr, "  case \"%s\" split at %zu: %s \"%s\" %zu\n", c->name, k,
				rname(o.r), o.reason ? o.reason : "", o.total);
		}
		/* Refused or recognised exactly when the deciding byte arrives. */
		if (whole.r != PROXY_NEED_MORE)
			CHECK(first_final == (k >= whole.total));
	}

	size_t *cuts = malloc((len ? len : 1) * sizeof *cuts);
	for (size_t k = 1; k < len; k++)
		cuts[k - 1] = k;
	struct outcome bytes = feed(c, data, len, cuts, len ? len - 1 : 0, NULL);
	free(cuts);
	if (!same(&bytes, &whole)) {
		CHECK(!"byte by byte differs");
		fprintf(stderr, "  case \"%s\" byte by byte: %s \"%s\" %zu\n", c->name,
			rname(bytes.r), bytes.reason ? bytes.reason : "", bytes.total);
	}
	free(data);
}

/* ------------------------------------------------------------ v1 cases */

#define V1(name, text, render) \
	{ name, BOTH, PROXY_TLV_MAX_DEFAULT, B(text), PROXY_DONE, NULL, sizeof(text) - 1, render }
#define V1BAD(name, text, why, at) \
	{ name, BOTH, PROXY_TLV_MAX_DEFAULT, B(text), PROXY_INVALID, why, at, NULL }
#define V1MORE(name, text) \
	{ name, BOTH, PROXY_TLV_MAX_DEFAULT, B(text), PROXY_NEED_MORE, NULL, 0, NULL }

#define R_ADDR_S "bad source address in PROXY v1 header"
#define R_ADDR_D "bad destination address in PROXY v1 header"
#define R_PORT_S "bad source port in PROXY v1 header"
#define R_PORT_D "bad destination port in PROXY v1 header"
#define R_EMPTY "empty field in PROXY v1 header"
#define R_PROTO "unknown PROXY v1 protocol"
#define T4 "PROXY TCP4 192.0.2.1 198.51.100.7 " /* 34 bytes */

/* The longest TCP6 line the spec mentions: 104 bytes with CRLF. */
#define FFFF8 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
/* 11 + 2 * 39 + 2 + 5 + 1 + 5 + 2 = 104 */
#define LONG6 "PROXY TCP6 " FFFF8 " " FFFF8 " 65535 65535\r\n"
/* UNKNOWN padded to the 107-byte limit exactly, and one byte over. */
#define PAD91 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define U107 "PROXY UNKNOWN " PAD91 "\r\n"
#define U108 "PROXY UNKNOWN " PAD91 "x\r\n"
_Static_assert(sizeof(U107) - 1 == 107, "U107 is 107 bytes");
_Static_assert(sizeof(LONG6) - 1 == 104, "LONG6 is 104 bytes");

static const struct pcase v1_cases[] = {
	V1("tcp4", T4 "12345 25\r\n", "v1 192.0.2.1:12345 > 198.51.100.7:25"),
	V1("tcp4 edges", "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
	   "v1 0.0.0.0:0 > 255.255.255.255:65535"),
	V1("tcp6", "PROXY TCP6 2001:db8::1 2001:DB8::2 65535 0\r\n",
	   "v1 [2001:db8::1]:65535 > [2001:db8::2]:0"),
	V1("tcp6 mapped", "PROXY TCP6 ::ffff:192.0.2.1 :: 1 2\r\n",
	   "v1 [::ffff:192.0.2.1]:1 > [::]:2"),
	V1("tcp6 longest", LONG6, "v1 [" FFFF8 "]:65535 > [" FFFF8 "]:65535"),
	V1("unknown", "PROXY UNKNOWN\r\n", "v1 local"),
	V1("unknown with addresses", "PROXY UNKNOWN " FFFF8 " " FFFF8 " 65535 65535\r\n", "v1 local"),
	V1("unknown tail with spaces", "PROXY UNKNOWN  a  b \r\n", "v1 local"),
	V1("unknown 107 bytes", U107, "v1 local"),
	{ "tcp4 on v1 only listener", PROXY_V1, 0, B(T4 "1 2\r\n"), PROXY_DONE, NULL,
	  sizeof(T4 "1 2\r\n") - 1, "v1 192.0.2.1:1 > 198.51.100.7:2" },

	V1BAD("smtp client", "EHLO client.test\r\n", "not a PROXY protocol header", 1),
	V1BAD("lower case", "proxy TCP4 ", "not a PROXY protocol header", 1),
	V1BAD("empty line", "\r\n", "bad PROXY v2 signature", 3), /* at the 'E' behind it */
	V1BAD("bad signature", "PROXZ TCP4", "bad PROXY v1 signature", 5),
	V1BAD("no space after PROXY", "PROXY\r\n", "bad PROXY v1 signature", 6),
	V1BAD("tab after PROXY", "PROXY\tTCP4", "bad PROXY v1 signature", 6),
	V1BAD("double space", "PROXY  TCP4", R_EMPTY, 7),
	V1BAD("no protocol", "PROXY \r\n", R_EMPTY, 7),
	V1BAD("bad protocol", "PROXY TCP5 ", R_PROTO, 10),
	V1BAD("udp", "PROXY UDP4 ", R_PROTO, 8), /* "U" could start UNKNOWN */
	V1BAD("lower protocol", "PROXY tcp4 ", R_PROTO, 7),
	V1BAD("protocol too long", "PROXY TCP44 ", R_PROTO, 11),
	V1BAD("protocol prefix only", "PROXY TCP ", R_PROTO, 10),
	V1BAD("unknownx", "PROXY UNKNOWNX\r\n", R_PROTO, 14),
	V1BAD("unknown bare LF", "PROXY UNKNOWN\n", "LF without CR in PROXY v1 header", 14),
	V1BAD("unknown control byte", "PROXY UNKNOWN a\x01\r\n", "bad character in PROXY v1 header", 16),
	V1BAD("unknown high byte", "PROXY UNKNOWN \xc3\xa9\r\n", "bad character in PROXY v1 header", 15),
	V1BAD("unknown 108 bytes", U108, "PROXY v1 header too long", 106),
	V1BAD("tcp4 no addresses", "PROXY TCP4\r\n", "too few fields in PROXY v1 header", 11),
	V1BAD("tcp4 one address", "PROXY TCP4 192.0.2.1\r\n", "too few fields in PROXY v1 header", 21),
	V1BAD("tcp4 no ports", "PROXY TCP4 192.0.2.1 198.51.100.7\r\n",
	      "too few fields in PROXY v1 header", 34),
	V1BAD("tcp4 one port", T4 "12345\r\n", "too few fields in PROXY v1 header", 40),
	V1BAD("trailing space", T4 "12345 25 \r\n", "too many fields in PROXY v1 header", 43),
	V1BAD("extra field", T4 "12345 25 x\r\n", "too many fields in PROXY v1 header", 43),
	V1BAD("space before CR", "PROXY TCP4 192.0.2.1 198.51.100.7 \r\n", R_EMPTY, 35),
	V1BAD("double space between addresses", "PROXY TCP4 192.0.2.1  198", R_EMPTY, 22),
	V1BAD("octet 256", "PROXY TCP4 192.0.2.256 198.51.100.7 1 2\r\n", R_ADDR_S, 23),
	V1BAD("three octets", "PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n", R_ADDR_S, 19),
	V1BAD("leading zero octet", "PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n", R_ADDR_S, 22),
	V1BAD("ipv6 in tcp4", "PROXY TCP4 2001:db8::1 ", R_ADDR_S, 16),
	V1BAD("ipv4 in tcp6", "PROXY TCP6 192.0.2.1 ::1 1 2\r\n", R_ADDR_S, 21),
	V1BAD("hostname", "PROXY TCP4 localhost ", R_ADDR_S, 12),
	V1BAD("tab in address", "PROXY TCP4 192.0.2.1\t", R_ADDR_S, 21),
	V1BAD("ipv4 too long", "PROXY TCP4 0192.000.002.001 ", R_ADDR_S, 27),
	V1BAD("ipv6 too long", "PROXY TCP6 0000:0000:0000:0000:0000:0000:255.255.255.2550 ", R_ADDR_S, 57),
	V1BAD("ipv6 scope", "PROXY TCP6 fe80::1%eth0 ", R_ADDR_S, 19),
	V1BAD("bad destination", "PROXY TCP4 192.0.2.1 198.51.100.700 1 2\r\n", R_ADDR_D, 36),
	V1BAD("CR in destination", "PROXY TCP4 192.0.2.1 198.51\r\n", R_ADDR_D, 28),
	V1BAD("plus port", T4 "+1 25\r\n", R_PORT_S, 35),
	V1BAD("minus port", T4 "-1 25\r\n", R_PORT_S, 35),
	V1BAD("leading zero port", T4 "025 25\r\n", R_PORT_S, 36),
	V1BAD("double zero port", T4 "00 25\r\n", R_PORT_S, 36),
	V1BAD("six digit port", T4 "100000 25\r\n", R_PORT_S, 40),
	V1BAD("hex port", T4 "0x19 25\r\n", R_PORT_S, 36),
	V1BAD("source port 65536", T4 "65536 25\r\n", "source port out of range in PROXY v1 header", 40),
	V1BAD("destination port 99999", T4 "1 99999\r\n",
	      "destination port out of range in PROXY v1 header", 42),
	V1BAD("destination port letter", T4 "1 2a\r\n", R_PORT_D, 38),
	V1BAD("CR without LF", T4 "1 2\rX", "CR without LF in PROXY v1 header", 39),
	V1BAD("CR CR", T4 "1 2\r\r\n", "CR without LF in PROXY v1 header", 39),
	V1BAD("LF without CR", T4 "1 2\n", "LF without CR in PROXY v1 header", 38),
	V1BAD("NUL in header", "PROXY TCP4 1\0", R_ADDR_S, 13),
	V1BAD("tcp6 far too long", "PROXY TCP6 " FFFF8 " " FFFF8 " 65535 655355\r\n", R_PORT_D, 103),
	{ "v1 on v2 listener", PROXY_V2, PROXY_TLV_MAX_DEFAULT, B(T4 "1 2\r\n"), PROXY_INVALID,
	  "not a PROXY protocol header", 1, NULL },

	V1MORE("nothing", ""),
	V1MORE("signature only", "PROXY "),
	V1MORE("tcp4 up to CR", T4 "12345 25\r"),
	V1MORE("unknown up to CR", "PROXY UNKNOWN whatever\r"),
	V1MORE("unknown 105 bytes, CRLF due", "PROXY UNKNOWN " PAD91),
};

/* ------------------------------------------------------------ v2 cases */

/* Built at start-up into this arena: binary headers with exact lengths. */
static unsigned char arena[16384];
static size_t arena_used;

struct v2spec {
	unsigned char vercmd, fam;
	int len;                   /* -1: addresses + TLVs */
	const unsigned char *addr; /* addr_n bytes */
	size_t addr_n;
	const unsigned char *tlv;  /* tlv_n bytes */
	size_t tlv_n;
	size_t fill;               /* then this many bytes of 0x04-type padding content */
	size_t cut;                /* keep only this many bytes (0: all) */
	unsigned char sig_fix_at;  /* >0: replace signature byte (index + 1) */
	unsigned char sig_fix;
};

static const unsigned char *v2_build(const struct v2spec *s, size_t *n)
{
	unsigned char *b = arena + arena_used;
	size_t o = 0;
	memcpy(b, V2SIG, 12);
	if (s->sig_fix_at)
		b[s->sig_fix_at - 1] = s->sig_fix;
	o = 12;
	b[o++] = s->vercmd;
	b[o++] = s->fam;
	size_t body = s->addr_n + s->tlv_n + s->fill;
	size_t len = s->len >= 0 ? (size_t)s->len : body;
	b[o++] = (unsigned char)(len >> 8);
	b[o++] = (unsigned char)len;
	if (s->addr_n)
		memcpy(b + o, s->addr, s->addr_n);
	o += s->addr_n;
	if (s->tlv_n)
		memcpy(b + o, s->tlv, s->tlv_n);
	o += s->tlv_n;
	memset(b + o, 'z', s->fill);
	o += s->fill;
	if (s->cut)
		o = s->cut;
	arena_used += o;
	if (arena_used > sizeof arena)
		abort();
	*n = o;
	return b;
}

static const unsigned char A4[12] = { 192, 0, 2, 1, 198, 51, 100, 7, 0x30, 0x39, 0, 25 };
static const unsigned char A6[36] = {
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
	0xff, 0xff, 0, 0,
};
static const unsigned char UNIX216[216] = { '/', 't', 'm', 'p' };
/* ALPN "smtp", a NOOP with no value, authority "mx.test". */
static const unsigned char TLVS[] = {
	0x01, 0x00, 0x04, 's', 'm', 't', 'p',
	0x04, 0x00, 0x00,
	0x02, 0x00, 0x07, 'm', 'x', '.', 't', 'e', 's', 't',
};
/* A NOOP TLV header announcing 1021 bytes: with them, exactly 1024 bytes. */
static const unsigned char TLV_1021[] = { 0x04, 0x03, 0xFD };
static const unsigned char TLV_1022[] = { 0x04, 0x03, 0xFE };
static const unsigned char TLV_SHORT[] = { 0x01, 0x00, 0x05, 'a', 'b', 'c' };
static const unsigned char TLV_HALF[] = { 0x01, 0x00 };

#define R4 "v2 192.0.2.1:12345 > 198.51.100.7:25"
#define R6 "v2 [2001:db8::1]:65535 > [2001:db8::2]:0"

struct v2case {
	const char *name;
	unsigned versions;
	size_t tlv_max;
	struct v2spec spec;
	enum proxy_result want;
	const char *reason;
	size_t at; /* INVALID only; DONE is the whole built header */
	const char *render;
};

#define DEF PROXY_TLV_MAX_DEFAULT
static const struct v2case v2_cases[] = {
	{ "proxy tcp4", BOTH, DEF, { 0x21, 0x11, -1, A4, 12 }, PROXY_DONE, NULL, 0, R4 },
	{ "proxy tcp6", BOTH, DEF, { 0x21, 0x21, -1, A6, 36 }, PROXY_DONE, NULL, 0, R6 },
	{ "proxy tcp4 tlvs", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, TLVS, sizeof TLVS }, PROXY_DONE, NULL, 0, R4 },
	{ "proxy tcp6 tlvs", PROXY_V2, DEF, { 0x21, 0x21, -1, A6, 36, TLVS, sizeof TLVS }, PROXY_DONE, NULL, 0, R6 },
	{ "tlvs at the bound", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, TLV_1021, 3, 1021 }, PROXY_DONE, NULL, 0, R4 },
	{ "tlvs at a small bound", BOTH, 20, { 0x21, 0x21, -1, A6, 36, TLVS, sizeof TLVS }, PROXY_DONE, NULL, 0, R6 },
	{ "local unspec (health check)", BOTH, DEF, { 0x20, 0x00, -1 }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "local tcp4", BOTH, DEF, { 0x20, 0x11, -1, A4, 12 }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "local tcp4 no addresses", BOTH, DEF, { 0x20, 0x11, -1 }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "local udp6", BOTH, DEF, { 0x20, 0x22, -1, A6, 36 }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "local unix", BOTH, DEF, { 0x20, 0x31, -1, UNIX216, 216, TLVS, sizeof TLVS }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "local tcp4 + 1024", BOTH, DEF, { 0x20, 0x11, -1, A4, 12, NULL, 0, 1024 }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "proxy unspec", BOTH, DEF, { 0x21, 0x00, -1 }, PROXY_DONE, NULL, 0, "v2 local" },
	{ "proxy unspec opaque", BOTH, DEF, { 0x21, 0x00, -1, NULL, 0, NULL, 0, 7 }, PROXY_DONE, NULL, 0, "v2 local" },

	{ "v2 on v1 listener", PROXY_V1, DEF, { 0x21, 0x11, -1, A4, 12 }, PROXY_INVALID,
	  "not a PROXY protocol header", 1 },
	{ "bad signature byte 5", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, .sig_fix_at = 5, .sig_fix = 'x' },
	  PROXY_INVALID, "bad PROXY v2 signature", 5 },
	{ "bad signature last byte", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, .sig_fix_at = 12, .sig_fix = '\r' },
	  PROXY_INVALID, "bad PROXY v2 signature", 12 },
	{ "version 1", BOTH, DEF, { 0x11, 0x11, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 version", 13 },
	{ "version 3", BOTH, DEF, { 0x31, 0x11, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 version", 13 },
	{ "command 2", BOTH, DEF, { 0x22, 0x11, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 command", 13 },
	{ "command F", BOTH, DEF, { 0x2F, 0x11, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 command", 13 },
	{ "family 0x13", BOTH, DEF, { 0x21, 0x13, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 address family", 14 },
	{ "family 0x10", BOTH, DEF, { 0x21, 0x10, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 address family", 14 },
	{ "family 0x41", BOTH, DEF, { 0x21, 0x41, -1, A4, 12 }, PROXY_INVALID, "bad PROXY v2 address family", 14 },
	{ "local family 0x01", BOTH, DEF, { 0x20, 0x01, -1 }, PROXY_INVALID, "bad PROXY v2 address family", 14 },
	{ "proxy udp4", BOTH, DEF, { 0x21, 0x12, -1, A4, 12 }, PROXY_INVALID,
	  "unsupported PROXY v2 transport (UDP or unix socket)", 14 },
	{ "proxy udp6", BOTH, DEF, { 0x21, 0x22, -1, A6, 36 }, PROXY_INVALID,
	  "unsupported PROXY v2 transport (UDP or unix socket)", 14 },
	{ "proxy unix stream", BOTH, DEF, { 0x21, 0x31, -1, UNIX216, 216 }, PROXY_INVALID,
	  "unsupported PROXY v2 transport (UDP or unix socket)", 14 },
	{ "proxy unix dgram", BOTH, DEF, { 0x21, 0x32, -1, UNIX216, 216 }, PROXY_INVALID,
	  "unsupported PROXY v2 transport (UDP or unix socket)", 14 },
	{ "tcp4 block 11", BOTH, DEF, { 0x21, 0x11, 11, A4, 11 }, PROXY_INVALID,
	  "PROXY v2 address block too short", 16 },
	{ "tcp6 block 12", BOTH, DEF, { 0x21, 0x21, 12, A4, 12 }, PROXY_INVALID,
	  "PROXY v2 address block too short", 16 },
	{ "tcp4 tlvs over the bound", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, TLV_1022, 3, 1022 }, PROXY_INVALID,
	  "PROXY v2 header too long", 16 },
	{ "tcp4 tlvs over a small bound", BOTH, 19, { 0x21, 0x11, -1, A4, 12, TLVS, sizeof TLVS }, PROXY_INVALID,
	  "PROXY v2 header too long", 16 },
	{ "tcp4 length 65535", BOTH, DEF, { 0x21, 0x11, 65535, A4, 12 }, PROXY_INVALID,
	  "PROXY v2 header too long", 16 },
	{ "local unspec over the bound", BOTH, DEF, { 0x20, 0x00, 1025 }, PROXY_INVALID,
	  "PROXY v2 header too long", 16 },
	{ "local tcp4 over the bound", BOTH, DEF, { 0x20, 0x11, 12 + 1025 }, PROXY_INVALID,
	  "PROXY v2 header too long", 16 },
	{ "no TLVs allowed", BOTH, 0, { 0x21, 0x11, -1, A4, 12, TLV_HALF, 2 }, PROXY_INVALID,
	  "PROXY v2 header too long", 16 },
	{ "TLV header cut by the block", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, TLV_HALF, 2 }, PROXY_INVALID,
	  "PROXY v2 TLV overruns the header", 30 },
	{ "TLV value past the block", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, TLV_SHORT, sizeof TLV_SHORT },
	  PROXY_INVALID, "PROXY v2 TLV overruns the header", 31 },
	{ "second TLV past the block", BOTH, DEF, { 0x21, 0x21, 36 + 10 + 3, A6, 36, TLVS, sizeof TLVS },
	  PROXY_INVALID, "PROXY v2 TLV overruns the header", 16 + 36 + 10 + 3 },

	{ "head only", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, .cut = 16 }, PROXY_NEED_MORE },
	{ "signature only", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, .cut = 12 }, PROXY_NEED_MORE },
	{ "addresses short", BOTH, DEF, { 0x21, 0x21, -1, A6, 36, .cut = 40 }, PROXY_NEED_MORE },
	{ "in a TLV", BOTH, DEF, { 0x21, 0x11, -1, A4, 12, TLVS, sizeof TLVS, .cut = 16 + 12 + 9 }, PROXY_NEED_MORE },
	{ "local block short", BOTH, DEF, { 0x20, 0x31, -1, UNIX216, 216, .cut = 100 }, PROXY_NEED_MORE },
};

/* Every strict prefix of a valid header wants more; one more byte of
 * garbage in each position changes nothing about split independence. */
static void run_mutations(const struct pcase *c)
{
	static const unsigned char vals[] = { 0x00, 0xFF, ' ', '\r', '\n', '0', ':', 'P', 0x21 };
	unsigned char *m = malloc(c->len);
	for (size_t i = 0; i < c->len; i++) {
		for (size_t v = 0; v < sizeof vals; v++) {
			memcpy(m, c->data, c->len);
			m[i] = vals[v];
			struct pcase mc = *c;
			mc.data = m;
			struct outcome whole = feed(&mc, m, c->len, NULL, 0, NULL);
			size_t cuts[3] = { i / 2, i, i + 1 < c->len ? i + 1 : i };
			size_t n = 0, uniq[3];
			for (size_t k = 0; k < 3; k++)
				if (cuts[k] > 0 && cuts[k] < c->len && (n == 0 || uniq[n - 1] < cuts[k]))
					uniq[n++] = cuts[k];
			struct outcome split = feed(&mc, m, c->len, uniq, n, NULL);
			CHECK(same(&whole, &split));
			CHECK(whole.total <= c->len);
			CHECK((whole.r == PROXY_INVALID) == (whole.reason != NULL));
		}
	}
	free(m);
}

static void test_misc(void)
{
	struct proxy_parser p;
	struct proxy_header h;
	size_t used = 99;

	/* Empty feeds before and after. */
	proxy_parser_init(&p, 0, PROXY_TLV_MAX_DEFAULT);
	CHECK(proxy_parse(&p, NULL, 0, &used, &h) == PROXY_NEED_MORE && used == 0);
	CHECK(proxy_reason(&p) == NULL);
	const char *line = "PROXY UNKNOWN\r\nQUIT\r\n";
	CHECK(proxy_parse(&p, line, strlen(line), &used, &h) == PROXY_DONE && used == 15);
	CHECK(h.version == 1 && h.local);
	CHECK(proxy_parse(&p, NULL, 0, &used, &h) == PROXY_DONE && used == 0);
	CHECK(proxy_parse(&p, "QUIT", 4, &used, &h) == PROXY_DONE && used == 0);
	CHECK(proxy_reason(&p) == NULL);
	CHECK(proxy_consumed_total(&p) == 15);

	/* The header is written only once, at DONE. */
	proxy_parser_init(&p, PROXY_V1, PROXY_TLV_MAX_DEFAULT);
	memset(&h, 0x5A, sizeof h);
	CHECK(proxy_parse(&p, "PROXY TCP4 1.2.3.4 ", 19, &used, &h) == PROXY_NEED_MORE);
	CHECK(h.version == 0x5A5A5A5A);
	CHECK(proxy_parse(&p, "5.6.7.8 1 2\r\n", 13, &used, &h) == PROXY_DONE && used == 13);
	struct proxy_header keep = h;
	CHECK(proxy_parse(&p, "PROXY", 5, &used, &h) == PROXY_DONE);
	CHECK(memcmp(&keep, &h, sizeof h) == 0);

	/* After INVALID: the same answer, nothing consumed. */
	proxy_parser_init(&p, PROXY_V2, PROXY_TLV_MAX_DEFAULT);
	CHECK(proxy_parse(&p, "EHLO x\r\n", 8, &used, &h) == PROXY_INVALID && used == 1);
	CHECK_STR_EQ(proxy_reason(&p), "not a PROXY protocol header");
	CHECK(proxy_parse(&p, "\r\n", 2, &used, &h) == PROXY_INVALID && used == 0);

	/* A tlv_max past the u16 length bounds nothing. */
	proxy_parser_init(&p, PROXY_V2, SIZE_MAX);
	unsigned char big[16 + 12 + 3] = { 0 };
	memcpy(big, V2SIG, 12);
	big[12] = 0x21, big[13] = 0x11, big[14] = 0xFF, big[15] = 0xFF;
	memcpy(big + 16, A4, 12);
	big[28] = 0x04, big[29] = 0xFF, big[30] = 0xF0; /* 65520 = 65535 - 12 - 3 */
	CHECK(proxy_parse(&p, (const char *)big, sizeof big, &used, &h) == PROXY_NEED_MORE);
	static char zeros[65520];
	CHECK(proxy_parse(&p, zeros, sizeof zeros, &used, &h) == PROXY_DONE && used == sizeof zeros);
	CHECK(proxy_consumed_total(&p) == 16 + 65535);

	printf("sizeof(struct proxy_parser) = %zu, sizeof(struct proxy_header) = %zu\n",
	       sizeof(struct proxy_parser), sizeof(struct proxy_header));
	CHECK(sizeof(struct proxy_parser) <= 192);
}

int main(void)
{
	size_t nv1 = sizeof v1_cases / sizeof v1_cases[0];
	size_t nv2 = sizeof v2_cases / sizeof v2_cases[0];
	int done = 0, invalid = 0, more = 0;

	for (size_t i = 0; i < nv1; i++) {
		run_case(&v1_cases[i]);
		if (v1_cases[i].want == PROXY_DONE)
			run_mutations(&v1_cases[i]);
		done += v1_cases[i].want == PROXY_DONE;
		invalid += v1_cases[i].want == PROXY_INVALID;
		more += v1_cases[i].want == PROXY_NEED_MORE;
	}
	for (size_t i = 0; i < nv2; i++) {
		const struct v2case *v = &v2_cases[i];
		struct pcase c = { v->name, v->versions, v->tlv_max, NULL, 0, v->want, v->reason, v->at, v->render };
		c.data = v2_build(&v->spec, &c.len);
		if (v->want == PROXY_DONE)
			c.at = c.len;
		run_case(&c);
		if (v->want == PROXY_DONE && c.len < 300)
			run_mutations(&c);
		done += v->want == PROXY_DONE;
		invalid += v->want == PROXY_INVALID;
		more += v->want == PROXY_NEED_MORE;
	}
	test_misc();
	printf("test_proxy: %d cases (%d valid, %d refused, %d incomplete), v1 %zu, v2 %zu\n",
	       cases_run, done, invalid, more, nv1, nv2);
	return check_report("test_proxy");
}
