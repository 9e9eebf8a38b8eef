/* fuzz_proxy: the PROXY protocol header parser (engine/proxy.c).
 *
 * Byte 0 picks the listener: bits 0-1 the versions accepted (0 = both),
 * bits 2-3 the TLV bound (0, 20, 1024, 65535). Byte 1 seeds how the input
 * is cut into feeds. The rest is the connection's first bytes. Each input
 * is parsed whole, in the seeded chunks (each a separate allocation of its
 * exact size) and byte by byte. Any broken invariant aborts:
 *   - the three runs agree: result, reason, bytes consumed, header;
 *   - NEED_MORE consumes all; after DONE / INVALID nothing more is consumed
 *     and the same result comes back;
 *   - INVALID has a reason, the others none; DONE at most the input;
 *   - NEED_MORE never lasts past a v1 line's 107 bytes or a v2 header's
 *     16 + address + tlv_max bytes;
 *   - a DONE header is self-delimiting: its own bytes parse to the same
 *     header, one byte less wants more;
 *   - v1 headers are at most 107 bytes and end in CRLF; v2 headers are
 *     16 + the length they declare; version matches the first byte;
 *   - local headers carry no address; the others carry sockaddr_in or
 *     sockaddr_in6 of the right size, the same family on both sides;
 *   - a v1 TCP4 header re-formatted from its result is the input itself
 *     (inet_pton and the port rules accept one spelling per value). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxy.h"

struct run {
	enum proxy_result r;
	const char *reason;
	size_t total;
	struct proxy_header h;
};

static const size_t tlv_bounds[4] = { 0, 20, 1024, 65535 };

/* cuts: chunk sizes to use in turn (0 = the rest in one piece). */
static void parse(unsigned versions, size_t tlv_max, const uint8_t *data, size_t len,
		  uint8_t seed, bool bytewise, struct run *out)
{
	struct proxy_parser p;
	size_t off = 0;
	uint32_t x = seed * 2654435761u + 1;
	bool final = false;

	memset(out, 0, sizeof *out);
	out->r = PROXY_NEED_MORE;
	proxy_parser_init(&p, versions, tlv_max);
	do {
		size_t n = len - off;
		if (bytewise) {
			n = n ? 1 : 0;
		} else if (seed) {
			x = x * 1103515245u + 12345u;
			size_t want = (x >> 16) % 40;
			if (want < n)
				n = want;
		}
		uint8_t *chunk = malloc(n ? n : 1);
		memcpy(chunk, data + off, n);
		size_t used = 777;
		enum proxy_result r = proxy_parse(&p, (const char *)chunk, n, &used, &out->h);
		free(chunk);
		if (used > n)
			abort();
		if (final) {
			if (r != out->r || used != 0)
				abort();
		} else {
			if (r == PROXY_NEED_MORE && used != n)
				abort();
			out->r = r;
			out->total += used;
			final = r != PROXY_NEED_MORE;
		}
		off += n;
	} while (off < len);
	out->reason = proxy_reason(&p);
	if (proxy_consumed_total(&p) != out->total)
		abort();
}

static bool same_header(const struct proxy_header *a, const struct proxy_header *b)
{
	return a->version == b->version && a->local == b->local && a->src_len == b->src_len &&
	       a->dst_len == b->dst_len && memcmp(&a->src, &b->src, a->src_len) == 0 &&
	       memcmp(&a->dst, &b->dst, a->dst_len) == 0;
}

static bool same(const struct run *a, const struct run *b)
{
	if (a->r != b->r || a->total != b->total)
		return false;
	if ((a->reason == NULL) != (b->reason == NULL))
		return false;
	if (a->reason && strcmp(a->reason, b->reason) != 0)
		return false;
	return a->r != PROXY_DONE || same_header(&a->h, &b->h);
}

static void check_sockaddr(const struct sockaddr_storage *ss, socklen_t len)
{
	if (ss->ss_family == AF_INET) {
		if (len != sizeof(struct sockaddr_in))
			abort();
	} else if (ss->ss_family == AF_INET6) {
		if (len != sizeof(struct sockaddr_in6))
			abort();
	} else {
		abort();
	}
}

static void check_v1_tcp4(const uint8_t *data, size_t n, const struct proxy_header *h)
{
	const struct sockaddr_in *s = (const struct sockaddr_in *)&h->src;
	const struct sockaddr_in *d = (const struct sockaddr_in *)&h->dst;
	char sa[INET_ADDRSTRLEN], da[INET_ADDRSTRLEN], line[128];
	if (!inet_ntop(AF_INET, &s->sin_addr, sa, sizeof sa) ||
	    !inet_ntop(AF_INET, &d->sin_addr, da, sizeof da))
		abort();
	int k = snprintf(line, sizeof line, "PROXY TCP4 %s %s %u %u\r\n", sa, da,
			 ntohs(s->sin_port), ntohs(d->sin_port));
	if (k < 0 || (size_t)k != n || memcmp(line, data, n) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	unsigned versions = data[0] & 3;
	size_t tlv_max = tlv_bounds[(data[0] >> 2) & 3];
	uint8_t seed = data[1];
	data += 2;
	size_t len = size - 2;

	struct run whole, chunks, bytes;
	parse(versions, tlv_max, data, len, 0, false, &whole);
	parse(versions, tlv_max, data, len, seed, false, &chunks);
	parse(versions, tlv_max, data, len, 0, true, &bytes);
	if (!same(&whole, &chunks) || !same(&whole, &bytes))
		abort();
	if ((whole.r == PROXY_INVALID) != (whole.reason != NULL))
		abort();
	if (whole.total > len)
		abort();

	if (whole.r == PROXY_NEED_MORE) {
		if (whole.total != len)
			abort();
		/* An incomplete header is still within its limits. */
		if (len > 0 && data[0] == 'P' && len >= PROXY_V1_MAX)
			abort();
		if (len > 0 && data[0] == '\r' && len > 16 + 216 + tlv_max)
			abort();
		return 0;
	}
	if (whole.r == PROXY_INVALID) {
		if (whole.total == 0)
			abort();
		return 0;
	}

	/* DONE. */
	const struct proxy_header *h = &whole.h;
	size_t n = whole.total;
	if (h->version == 1) {
		if (data[0] != 'P' || n > PROXY_V1_MAX || n < 8 || data[n - 2] != '\r' ||
		    data[n - 1] != '\n')
			abort();
		if (versions == PROXY_V2)
			abort();
	} else if (h->version == 2) {
		if (data[0] != '\r' || n < 16 || n != 16 + ((size_t)data[14] << 8 | data[15]))
			abort();
		if (versions == PROXY_V1)
			abort();
	} else {
		abort();
	}
	if (h->local) {
		if (h->src_len || h->dst_len || h->src.ss_family || h->dst.ss_family)
			abort();
	} else {
		check_sockaddr(&h->src, h->src_len);
		check_sockaddr(&h->dst, h->dst_len);
		if (h->src.ss_family != h->dst.ss_family)
			abort();
		if (h->version == 1 && h->src.ss_family == AF_INET)
			check_v1_tcp4(data, n, h);
	}

	/* Self-delimiting: the header alone is the same header, one byte less
	 * is incomplete. */
	struct run alone, less;
	parse(versions, tlv_max, data, n, 0, false, &alone);
	if (!same(&alone, &whole))
		abort();
	parse(versions, tlv_max, data, n - 1, 0, false, &less);
	if (less.r != PROXY_NEED_MORE || less.total != n - 1)
		abort();
	return 0;
}
