/* relay_url: the next-hop URLs of "relay via" (docs/relay.md).
 *
 *   lmtp://HOST[:PORT]      LMTP over TCP, port 24 by default
 *   lmtp:/path/to/socket    LMTP over a Unix socket (absolute path)
 *   smtp://HOST[:PORT]      SMTP, port 25, no TLS required
 *   smtp:/path/to/socket    SMTP over a Unix socket
 *   smtp+tls://HOST[:PORT]  SMTP with STARTTLS required, port 25
 *   smtps://HOST[:PORT]     SMTP inside TLS from the first byte, port 465
 *
 * HOST is an IPv4 literal, an IPv6 literal in brackets ("[::1]") or
 * "localhost" (127.0.0.1): mxd makes no DNS lookups. The scheme is matched
 * without regard to case; one trailing "/" is allowed after the port.
 * Pure: no allocation, no I/O. */
#ifndef MXD_RELAY_URL_H
#define MXD_RELAY_URL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

enum relay_proto {
	RELAY_PROTO_LMTP,
	RELAY_PROTO_SMTP,
};

enum relay_tls {
	RELAY_TLS_NONE,     /* lmtp, smtp: plaintext */
	RELAY_TLS_STARTTLS, /* smtp+tls: STARTTLS required, certificate checked */
	RELAY_TLS_IMPLICIT, /* smtps: TLS from the first byte (RFC 8314) */
};

#define RELAY_URL_TEXT_MAX 160            /* the longest canonical form */
#define RELAY_URL_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)
#define RELAY_URL_INPUT_MAX 512           /* longer input is an error */

struct relay_url {
	enum relay_proto proto;
	enum relay_tls tls;
	bool unix_socket;                 /* addr is AF_UNIX, path holds it */
	uint16_t port;                    /* 0 for a Unix socket */
	char host[64];                    /* "127.0.0.1", "::1" (no brackets); "" for Unix */
	char path[RELAY_URL_PATH_MAX + 1];
	struct sockaddr_storage addr;     /* ready for connect(), port set */
	socklen_t addr_len;
	char text[RELAY_URL_TEXT_MAX];    /* canonical: "smtp://[::1]:25", "lmtp:/run/lmtp" */
};

/* Parse text[0..len). 0 on success; -1 with *why (a static message) and
 * *err_off (the byte offset in text the problem is at, for a column). */
int relay_url_parse(const char *text, size_t len, struct relay_url *out, const char **why,
		    size_t *err_off);

/* The scheme as written in URLs ("lmtp", "smtp", "smtp+tls", "smtps"). */
const char *relay_url_scheme(const struct relay_url *u);

#endif
