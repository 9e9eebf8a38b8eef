/* proxy: the PROXY protocol header parser (see proxy.h for the contract).
 *
 * Written from the protocol's layout, byte at a time: the header is read
 * once per connection and is at most a few hundred bytes, so clarity and a
 * refusal at the exact byte that makes it certain matter more than speed.
 * Only the v2 bytes that are skipped unread (TLV values, opaque blocks) are
 * taken in bulk. */
#include "proxy.h"

#include <assert.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

enum proxy_state {
	S_START = 0,  /* nothing yet: the first byte picks the version */
	S_V1,         /* reading the text line */
	S_V1_CR,      /* v1: CR seen, LF must follow */
	S_V2_HEAD,    /* v2: signature, version/command, family, length */
	S_V2_ADDR,    /* v2: address bytes kept in buf */
	S_V2_TLV_HDR, /* v2: a TLV's type and length */
	S_V2_TLV_VAL, /* v2: a TLV's value, skipped */
	S_V2_SKIP,    /* v2: an opaque block (LOCAL, UNSPEC), skipped */
	S_DONE,
	S_INVALID,
};

static const unsigned char v2_sig[12] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};
static const char v1_sig[] = "PROXY ";

/* v1 fields: "PROXY" proto src dst sport dport. */
enum { F_SIG = 0, F_PROTO, F_SRC, F_DST, F_SPORT, F_DPORT, F_COUNT };
/* INET6_ADDRSTRLEN - 1: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255". */
#define V1_ADDR6_MAX 45
#define V1_ADDR4_MAX 15
#define V1_PORT_MAX 5

_Static_assert(PROXY_V2_HEAD + PROXY_V2_ADDR_MAX <= PROXY_V1_MAX,
	       "buf holds the v2 head and addresses");
_Static_assert(PROXY_V1_MAX <= UINT8_MAX, "have and fstart fit a byte");

static const char *const reason_addr[2] = {
	"bad source address in PROXY v1 header",
	"bad destination address in PROXY v1 header",
};
static const char *const reason_port[2] = {
	"bad source port in PROXY v1 header",
	"bad destination port in PROXY v1 header",
};
static const char *const reason_port_range[2] = {
	"source port out of range in PROXY v1 header",
	"destination port out of range in PROXY v1 header",
};

void proxy_parser_init(struct proxy_parser *p, unsigned versions, size_t tlv_max)
{
	memset(p, 0, sizeof *p);
	versions &= PROXY_V1 | PROXY_V2;
	p->versions = versions ? versions : PROXY_V1 | PROXY_V2;
	p->tlv_max = tlv_max > UINT16_MAX ? UINT16_MAX : (uint32_t)tlv_max;
	p->state = S_START;
}

const char *proxy_reason(const struct proxy_parser *p)
{
	return p->state == S_INVALID ? p->reason : NULL;
}

size_t proxy_consumed_total(const struct proxy_parser *p)
{
	return p->total;
}

static enum proxy_result refuse(struct proxy_parser *p, const char *why)
{
	p->state = S_INVALID;
	p->reason = why;
	return PROXY_INVALID;
}

/* ---------------------------------------------------------------- v1 */

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Is the proto field so far (plus nothing) a prefix of a known protocol? */
static bool proto_prefix(const unsigned char *s, size_t n)
{
	static const char *const names[] = { "TCP4", "TCP6", "UNKNOWN" };
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (n <= strlen(names[i]) && memcmp(s, names[i], n) == 0)
			return true;
	return false;
}

static bool field_is(const struct proxy_parser *p, int f, const char *word)
{
	size_t n = strlen(word);
	return p->flen[f] == n && memcmp(p->buf + p->fstart[f], word, n) == 0;
}

/* The port field's value; it holds 1..5 digits, no leading zero. */
static uint32_t field_port(const struct proxy_parser *p, int f)
{
	uint32_t v = 0;
	for (size_t i = 0; i < p->flen[f]; i++)
		v = v * 10 + (uint32_t)(p->buf[p->fstart[f] + i] - '0');
	return v;
}

/* Parse address field f into a sockaddr (family from the protocol); false
 * when inet_pton refuses it. */
static bool field_addr(const struct proxy_parser *p, int f, uint16_t port,
		       struct sockaddr_storage *ss, socklen_t *len)
{
	char text[V1_ADDR6_MAX + 1];
	assert(p->flen[f] <= V1_ADDR6_MAX);
	memcpy(text, p->buf + p->fstart[f], p->flen[f]);
	text[p->flen[f]] = '\0';
	if (ss)
		memset(ss, 0, sizeof *ss);
	if (p->v1_tcp6) {
		struct in6_addr a;
		if (inet_pton(AF_INET6, text, &a) != 1)
			return false;
		if (ss) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
			s6->sin6_family = AF_INET6;
			s6->sin6_addr = a;
			s6->sin6_port = htons(port);
			*len = sizeof *s6;
		}
	} else {
		struct in_addr a;
		if (inet_pton(AF_INET, text, &a) != 1)
			return false;
		if (ss) {
			struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
			s4->sin_family = AF_INET;
			s4->sin_addr = a;
			s4->sin_port = htons(port);
			*len = sizeof *s4;
		}
	}
	return true;
}

/* The field being read ends (at a space or CR): check it whole. */
static enum proxy_result v1_end_field(struct proxy_parser *p, unsigned char term)
{
	int f = p->field;
	if (p->flen[f] == 0)
		return refuse(p, "empty field in PROXY v1 header");
	switch (f) {
	case F_PROTO:
		if (field_is(p, f, "UNKNOWN")) {
			p->local = true;
			break;
		}
		if (!field_is(p, f, "TCP4") && !field_is(p, f, "TCP6"))
			return refuse(p, "unknown PROXY v1 protocol");
		p->v1_tcp6 = field_is(p, f, "TCP6");
		break;
	case F_SRC:
	case F_DST:
		if (!field_addr(p, f, 0, NULL, NULL))
			return refuse(p, reason_addr[f - F_SRC]);
		break;
	case F_SPORT:
	case F_DPORT:
		if (field_port(p, f) > UINT16_MAX)
			return refuse(p, reason_port_range[f - F_SPORT]);
		break;
	default:
		assert(0 && "F_SIG ends inside the signature check");
	}
	if (term == '\r') {
		if (!p->local && f != F_DPORT)
			return refuse(p, "too few fields in PROXY v1 header");
	} else if (f == F_DPORT) {
		return refuse(p, "too many fields in PROXY v1 header");
	}
	if (term == ' ' && !(p->local && f == F_PROTO)) {
		assert(f < F_DPORT);
		p->field++;
		p->fstart[p->field] = (uint8_t)(p->have + 1);
	}
	return PROXY_NEED_MORE;
}

/* One character inside field f (not a space, CR or LF). */
static enum proxy_result v1_field_char(struct proxy_parser *p, unsigned char c)
{
	int f = p->field;
	size_t n = p->flen[f]; /* before c */
	switch (f) {
	case F_PROTO:
		if (p->local) /* after "UNKNOWN ": anything printable */
			return c >= 0x21 && c <= 0x7e ? PROXY_NEED_MORE
						       : refuse(p, "bad character in PROXY v1 header");
		p->buf[p->have] = c;
		if (!proto_prefix(p->buf + p->fstart[f], n + 1))
			return refuse(p, "unknown PROXY v1 protocol");
		break;
	case F_SRC:
	case F_DST:
		if (p->v1_tcp6 ? !(is_hex(c) || c == ':' || c == '.') || n >= V1_ADDR6_MAX
			       : !(is_digit(c) || c == '.') || n >= V1_ADDR4_MAX)
			return refuse(p, reason_addr[f - F_SRC]);
		break;
	case F_SPORT:
	case F_DPORT:
		if (!is_digit(c) || n >= V1_PORT_MAX || (n > 0 && p->buf[p->fstart[f]] == '0'))
			return refuse(p, reason_port[f - F_SPORT]);
		break;
	default:
		assert(0 && "no field after the destination port");
	}
	p->flen[f]++;
	return PROXY_NEED_MORE;
}

static enum proxy_result v1_byte(struct proxy_parser *p, unsigned char c)
{
	enum proxy_result r;
	if (p->field == F_SIG) {
		/* "PROXY " byte by byte. */
		if (c != (unsigned char)v1_sig[p->have])
			return refuse(p, "bad PROXY v1 signature");
		if (p->have == sizeof v1_sig - 2) { /* the space */
			p->flen[F_SIG] = 5;
			p->field = F_PROTO;
			p->fstart[F_PROTO] = (uint8_t)(p->have + 1);
		}
		r = PROXY_NEED_MORE;
	} else if (c == '\n') {
		return refuse(p, "LF without CR in PROXY v1 header");
	} else if (c == ' ' && p->local && p->field == F_PROTO && p->flen[F_PROTO] == 7) {
		/* The UNKNOWN tail: spaces are just more ignored text. */
		r = PROXY_NEED_MORE;
	} else if (c == ' ' || c == '\r') {
		r = v1_end_field(p, c);
		if (r == PROXY_NEED_MORE && c == '\r')
			p->state = S_V1_CR;
	} else if (c < 0x20 || c > 0x7e) {
		return refuse(p, p->local && p->field == F_PROTO ? "bad character in PROXY v1 header"
			      : p->field >= F_SRC && p->field <= F_DST ? reason_addr[p->field - F_SRC]
			      : p->field >= F_SPORT ? reason_port[p->field - F_SPORT]
						    : "unknown PROXY v1 protocol");
	} else {
		r = v1_field_char(p, c);
	}
	if (r != PROXY_NEED_MORE)
		return r;
	p->buf[p->have++] = c;
	/* The line must still fit: CRLF (or the LF after this CR) to come. */
	if (p->have + (c == '\r' ? 1 : 2) > PROXY_V1_MAX)
		return refuse(p, "PROXY v1 header too long");
	return PROXY_NEED_MORE;
}

static void v1_finish(struct proxy_parser *p, struct proxy_header *out)
{
	memset(out, 0, sizeof *out);
	out->version = 1;
	out->local = p->local;
	if (p->local)
		return;
	bool ok = field_addr(p, F_SRC, (uint16_t)field_port(p, F_SPORT), &out->src, &out->src_len) &&
		  field_addr(p, F_DST, (uint16_t)field_port(p, F_DPORT), &out->dst, &out->dst_len);
	assert(ok && "fields were checked as they ended");
	(void)ok;
}

/* ---------------------------------------------------------------- v2 */

/* The address block size of a family/transport byte, -1 if undefined. */
static int v2_addr_size(unsigned char fam)
{
	switch (fam) {
	case 0x00:
		return 0;
	case 0x11:
	case 0x12:
		return 12;
	case 0x21:
	case 0x22:
		return 36;
	case 0x31:
	case 0x32:
		return 216;
	default:
		return -1;
	}
}

/* The 16-byte head is complete: decide how to read the block. */
static enum proxy_result v2_head_done(struct proxy_parser *p)
{
	bool local_cmd = (p->buf[12] & 0x0F) == 0;
	unsigned char fam = p->buf[13];
	uint32_t len = (uint32_t)p->buf[14] << 8 | p->buf[15];
	uint32_t addr = (uint32_t)v2_addr_size(fam);

	p->left = len;
	if (local_cmd || fam == 0x00) {
		/* No client named: the block is skipped unread. */
		if (len > addr + p->tlv_max)
			return refuse(p, "PROXY v2 header too long");
		p->local = true;
		p->state = S_V2_SKIP;
	} else {
		if (len < addr)
			return refuse(p, "PROXY v2 address block too short");
		if (len - addr > p->tlv_max)
			return refuse(p, "PROXY v2 header too long");
		p->addr_len = (uint8_t)addr;
		p->state = S_V2_ADDR;
	}
	return PROXY_NEED_MORE;
}

static enum proxy_result v2_head_byte(struct proxy_parser *p, unsigned char c)
{
	size_t i = p->have;
	if (i < sizeof v2_sig) {
		if (c != v2_sig[i])
			return refuse(p, "bad PROXY v2 signature");
	} else if (i == 12) {
		if ((c >> 4) != 2)
			return refuse(p, "bad PROXY v2 version");
		if ((c & 0x0F) > 1)
			return refuse(p, "bad PROXY v2 command");
	} else if (i == 13) {
		if (v2_addr_size(c) < 0)
			return refuse(p, "bad PROXY v2 address family");
		/* A LOCAL block is discarded whatever its family; a PROXY one
		 * must name TCP (or nothing). */
		bool local_cmd = (p->buf[12] & 0x0F) == 0;
		if (!local_cmd && c != 0x00 && c != 0x11 && c != 0x21)
			return refuse(p, "unsupported PROXY v2 transport (UDP or unix socket)");
	}
	p->buf[p->have++] = c;
	if (p->have == PROXY_V2_HEAD)
		return v2_head_done(p);
	return PROXY_NEED_MORE;
}

static void v2_finish(struct proxy_parser *p, struct proxy_header *out)
{
	const unsigned char *a = p->buf + PROXY_V2_HEAD;
	memset(out, 0, sizeof *out);
	out->version = 2;
	out->local = p->local;
	if (p->local)
		return;
	if (p->addr_len == 12) {
		struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;
		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, a, 4);
		memcpy(&d->sin_addr, a + 4, 4);
		memcpy(&s->sin_port, a + 8, 2); /* both in network order */
		memcpy(&d->sin_port, a + 10, 2);
		out->src_len = out->dst_len = sizeof *s;
	} else {
		assert(p->addr_len == 36);
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;
		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, a, 16);
		memcpy(&d->sin6_addr, a + 16, 16);
		memcpy(&s->sin6_port, a + 32, 2);
		memcpy(&d->sin6_port, a + 34, 2);
		out->src_len = out->dst_len = sizeof *s;
	}
}

/* ---------------------------------------------------------------- driver */

static enum proxy_result finish(struct proxy_parser *p, struct proxy_header *out)
{
	p->state = S_DONE;
	if (p->buf[0] == 'P')
		v1_finish(p, out);
	else
		v2_finish(p, out);
	return PROXY_DONE;
}

/* The block's end is reached in a v2 state: done, or wait for a TLV. */
static enum proxy_result v2_block_next(struct proxy_parser *p, struct proxy_header *out)
{
	if (p->left == 0)
		return finish(p, out);
	p->state = S_V2_TLV_HDR;
	p->tlv_have = 0;
	p->tlv_len = 0;
	return PROXY_NEED_MORE;
}

enum proxy_result proxy_parse(struct proxy_parser *p, const char *data, size_t len,
			      size_t *consumed, struct proxy_header *out)
{
	const unsigned char *in = (const unsigned char *)data;
	size_t i = 0;
	enum proxy_result r = PROXY_NEED_MORE;

	*consumed = 0;
	if (p->state == S_DONE)
		return PROXY_DONE;
	if (p->state == S_INVALID)
		return PROXY_INVALID;

	while (i < len && r == PROXY_NEED_MORE) {
		unsigned char c = in[i];
		switch ((enum proxy_state)p->state) {
		case S_START:
			if (c == 'P' && (p->versions & PROXY_V1))
				p->state = S_V1;
			else if (c == v2_sig[0] && (p->versions & PROXY_V2))
				p->state = S_V2_HEAD;
			else {
				r = refuse(p, "not a PROXY protocol header");
				i++;
				break;
			}
			continue; /* the same byte, now in its version's state */
		case S_V1:
			r = v1_byte(p, c);
			i++;
			break;
		case S_V1_CR:
			i++;
			if (c != '\n')
				r = refuse(p, "CR without LF in PROXY v1 header");
			else
				r = finish(p, out);
			break;
		case S_V2_HEAD:
			r = v2_head_byte(p, c);
			i++;
			if (r == PROXY_NEED_MORE && p->state == S_V2_SKIP && p->left == 0)
				r = finish(p, out);
			break;
		case S_V2_ADDR:
			p->buf[p->have++] = c;
			p->left--;
			i++;
			if (p->have == PROXY_V2_HEAD + p->addr_len)
				r = v2_block_next(p, out);
			break;
		case S_V2_TLV_HDR:
			p->tlv_have++;
			p->left--;
			i++;
			if (p->tlv_have > 1) /* byte 0 is the type */
				p->tlv_len = (uint16_t)(p->tlv_len << 8 | c);
			if (p->tlv_have < 3) {
				if (p->left == 0)
					r = refuse(p, "PROXY v2 TLV overruns the header");
				break;
			}
			if (p->tlv_len > p->left) {
				r = refuse(p, "PROXY v2 TLV overruns the header");
			} else if (p->tlv_len == 0) {
				r = v2_block_next(p, out);
			} else {
				p->tlv_left = p->tlv_len;
				p->state = S_V2_TLV_VAL;
			}
			break;
		case S_V2_TLV_VAL: {
			size_t k = len - i < p->tlv_left ? len - i : p->tlv_left;
			p->tlv_left = (uint16_t)(p->tlv_left - k);
			p->left -= (uint32_t)k;
			i += k;
			if (p->tlv_left == 0)
				r = v2_block_next(p, out);
			break;
		}
		case S_V2_SKIP: {
			size_t k = len - i < p->left ? len - i : p->left;
			p->left -= (uint32_t)k;
			i += k;
			if (p->left == 0)
				r = finish(p, out);
			break;
		}
		case S_DONE:
		case S_INVALID:
			assert(0 && "the loop stops at a final state");
			break;
		}
	}
	*consumed = i;
	p->total += (uint32_t)i;
	return r;
}
