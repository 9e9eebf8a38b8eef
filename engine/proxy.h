/* proxy: the HAProxy PROXY protocol header (versions 1 and 2) as a pure,
 * incremental parser.
 *
 * A listener behind a load balancer ("listen on ... proxy-v1|proxy-v2")
 * receives, before any SMTP byte, a header naming the real client. The
 * parser takes the connection's first bytes as they arrive, split anywhere,
 * keeps what it needs in a small fixed buffer inside struct proxy_parser
 * (no allocation, no syscalls), and says where the header ends so that the
 * SMTP bytes behind it stay with the session.
 *
 *   proxy_parser_init(&p, PROXY_V2, PROXY_TLV_MAX_DEFAULT);
 *   loop: proxy_parse(&p, data, len, &used, &hdr)
 *     PROXY_NEED_MORE   used == len: every byte is part of an incomplete
 *                       header; read more and call again with new bytes only
 *     PROXY_DONE        used == the header's remaining bytes, never more:
 *                       data + used is the first SMTP byte (it may already be
 *                       in this buffer) and belongs to the session; hdr is
 *                       filled in
 *     PROXY_INVALID     refuse the connection: proxy_reason(&p) says why, in
 *                       words fit for the log; used counts the bytes up to
 *                       and including the one that made the refusal certain
 *   After DONE or INVALID the parser is finished: later calls consume
 *   nothing and return the same result (hdr is left alone).
 *
 * The outcome (result, reason, total bytes consumed) does not depend on how
 * the input is split. A refusal comes as soon as it is certain: a first byte
 * that starts neither accepted signature ("EHLO" fails at 'E'), a version 1
 * field at the byte that ends it (or at the first character it cannot
 * hold), a version 2 length over the bound at its second length byte.
 *
 * Version 1 (text), at most PROXY_V1_MAX (107) bytes including CRLF:
 *   "PROXY TCP4 <src> <dst> <sport> <dport>\r\n"   (TCP6 the same)
 *   "PROXY UNKNOWN\r\n" or "PROXY UNKNOWN <anything printable>\r\n"
 * Strict: single spaces, no empty field; addresses must pass inet_pton for
 * the family the protocol names (no IPv6 in TCP4); ports are decimal
 * 0..65535 with no sign and no leading zero; CR must be followed by LF and
 * LF preceded by CR; only printable ASCII after UNKNOWN.
 *
 * Version 2 (binary): the 12-byte signature \r\n\r\n\0\r\nQUIT\n, a byte
 * version (high nibble, must be 2) / command (low nibble: 0 LOCAL, 1 PROXY),
 * a byte family / transport, a big-endian u16 length, then that many bytes:
 * the addresses, then TLVs.
 *   PROXY  + TCP over IPv4 (0x11) or IPv6 (0x21): addresses read (the block
 *          must hold them); the TLVs behind them are skipped unread but must
 *          tile the rest of the block exactly (type u8, length u16, value)
 *          and total at most tlv_max bytes.
 *   PROXY  + UNSPEC (0x00): "use the socket's addresses"; the block is
 *          skipped, at most tlv_max bytes.
 *   PROXY  + UDP (0x12, 0x22) or unix (0x31, 0x32): refused, not SMTP.
 *   LOCAL  (health checks, the proxy's own connections) with any valid
 *          family: "use the socket's addresses"; the block is skipped unread
 *          as the spec requires, at most the family's address size plus
 *          tlv_max bytes.
 *   Any other family byte, version or command is refused.
 *
 * Refusal reasons (proxy_reason), each a static string:
 *   "not a PROXY protocol header"            first byte starts no accepted
 *                                            signature (an SMTP client
 *                                            talking directly, say)
 *   "bad PROXY v1 signature"                 not "PROXY " at the start
 *   "unknown PROXY v1 protocol"              not TCP4, TCP6 or UNKNOWN
 *   "empty field in PROXY v1 header"         two spaces, or a space before CR
 *   "too few fields in PROXY v1 header"      CR before the destination port
 *   "too many fields in PROXY v1 header"     a space after the destination port
 *   "bad source address in PROXY v1 header"  (and "destination"): a character
 *                                            no address of that family has,
 *                                            too long, or inet_pton refuses
 *   "bad source port in PROXY v1 header"     (and "destination"): not
 *                                            digits, a leading zero, > 5 digits
 *   "source port out of range in PROXY v1 header" (and "destination"): > 65535
 *   "bad character in PROXY v1 header"       control or non-ASCII byte after
 *                                            UNKNOWN
 *   "CR without LF in PROXY v1 header"
 *   "LF without CR in PROXY v1 header"
 *   "PROXY v1 header too long"               no CRLF within 107 bytes
 *   "bad PROXY v2 signature"
 *   "bad PROXY v2 version"                   high nibble of byte 13 is not 2
 *   "bad PROXY v2 command"                   neither LOCAL nor PROXY
 *   "bad PROXY v2 address family"            a family/transport byte the
 *                                            protocol does not define
 *   "unsupported PROXY v2 transport (UDP or unix socket)"
 *   "PROXY v2 address block too short"       length below the address size
 *   "PROXY v2 header too long"               TLVs (or a skipped block) over
 *                                            the bound
 *   "PROXY v2 TLV overruns the header"       a TLV does not fit the block
 */
#ifndef MXD_PROXY_H
#define MXD_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Which versions a listener accepts (a bit mask). With both, the first byte
 * decides: 'P' is version 1, '\r' version 2. */
#define PROXY_V1 1u
#define PROXY_V2 2u

/* The version 1 line limit of the spec, CRLF included. */
#define PROXY_V1_MAX 107
/* Version 2: signature, version/command, family, length. */
#define PROXY_V2_HEAD 16
/* The largest address block kept: TCP over IPv6 (2 * 16 + 2 * 2). */
#define PROXY_V2_ADDR_MAX 36
/* Default bound on a version 2 header's TLV bytes (tlv_max). */
#define PROXY_TLV_MAX_DEFAULT 1024

enum proxy_result {
	PROXY_INVALID = -1,
	PROXY_NEED_MORE = 0,
	PROXY_DONE = 1,
};

struct proxy_header {
	int version; /* 1 or 2 */
	/* true: v1 UNKNOWN, v2 LOCAL, v2 PROXY over UNSPEC. The header names no
	 * client: use the socket's own addresses. src and dst are then zeroed
	 * and src_len == dst_len == 0. */
	bool local;
	/* The client (src) and the address it connected to (dst), as
	 * sockaddr_in or sockaddr_in6 with the port in network order. */
	struct sockaddr_storage src, dst;
	socklen_t src_len, dst_len;
};

/* Opaque to callers: fields may change. 160 bytes on x86-64. */
struct proxy_parser {
	unsigned versions;  /* PROXY_V1 | PROXY_V2 accepted */
	uint32_t tlv_max;   /* bound on v2 TLV / skipped bytes */
	uint32_t total;     /* bytes consumed so far, all calls */
	uint32_t left;      /* v2: bytes of the block still to come */
	uint16_t tlv_len;   /* v2: the TLV header being read */
	uint16_t tlv_left;  /* v2: value bytes of the current TLV to skip */
	uint8_t state;
	uint8_t have;       /* bytes kept in buf */
	uint8_t field;      /* v1: index of the field being read */
	uint8_t tlv_have;   /* v2: TLV header bytes read (0..3) */
	uint8_t addr_len;   /* v2: address bytes to keep (0, 12 or 36) */
	bool v1_tcp6;       /* v1: TCP6 rather than TCP4 */
	bool local;         /* v1 UNKNOWN or v2 LOCAL / UNSPEC */
	uint8_t fstart[6];  /* v1: where each field starts in buf */
	uint8_t flen[6];    /* v1: and its length */
	const char *reason;
	/* v1: the whole line; v2: the 16-byte head then the addresses. */
	unsigned char buf[PROXY_V1_MAX];
};

/* versions: PROXY_V1, PROXY_V2 or both (0 is taken as both). tlv_max: the
 * bound on a version 2 header's TLV bytes (PROXY_TLV_MAX_DEFAULT is a sane
 * value; above 65535 it bounds nothing, the length being a u16). */
void proxy_parser_init(struct proxy_parser *p, unsigned versions, size_t tlv_max);

/* Feed the next len bytes of the connection (data may be NULL when len is
 * 0). *consumed is always set. out is written only when PROXY_DONE is
 * returned for the first time. */
enum proxy_result proxy_parse(struct proxy_parser *p, const char *data, size_t len,
			      size_t *consumed, struct proxy_header *out);

/* Why the header was refused, NULL unless proxy_parse returned INVALID. */
const char *proxy_reason(const struct proxy_parser *p);

/* Bytes consumed so far over every call: the header's size after DONE. */
size_t proxy_consumed_total(const struct proxy_parser *p);

#endif
