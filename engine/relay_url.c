/* relay_url: parse a next-hop URL (grammar in relay_url.h). */
#include "relay_url.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct {
	const char *name;
	enum relay_proto proto;
	enum relay_tls tls;
	uint16_t port;
} schemes[] = {
	{"lmtp", RELAY_PROTO_LMTP, RELAY_TLS_NONE, 24},
	{"smtp", RELAY_PROTO_SMTP, RELAY_TLS_NONE, 25},
	{"smtp+tls", RELAY_PROTO_SMTP, RELAY_TLS_STARTTLS, 25},
	{"smtps", RELAY_PROTO_SMTP, RELAY_TLS_IMPLICIT, 465},
};

const char *relay_url_scheme(const struct relay_url *u)
{
	for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
		if (schemes[i].proto == u->proto && schemes[i].tls == u->tls)
			return schemes[i].name;
	return "?";
}

static int fail(const char **why, size_t *err_off, const char *msg, size_t off)
{
	*why = msg;
	*err_off = off;
	return -1;
}

/* "lmtp:" "smtp+tls:" ...: the index into schemes, and where the rest starts. */
static int scheme_of(const char *s, size_t len, size_t *rest)
{
	const char *colon = memchr(s, ':', len);
	if (!colon)
		return -1;
	size_t n = (size_t)(colon - s);
	for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
		if (strlen(schemes[i].name) == n && strncasecmp(s, schemes[i].name, n) == 0) {
			*rest = n + 1;
			return (int)i;
		}
	return -1;
}

static int parse_unix(const char *s, size_t len, size_t at, struct relay_url *u, const char **why,
		      size_t *err_off)
{
	if (u->tls != RELAY_TLS_NONE)
		return fail(why, err_off, "a Unix socket next hop is only for lmtp: and smtp:", 0);
	size_t n = len - at;
	if (n > RELAY_URL_PATH_MAX)
		return fail(why, err_off, "Unix socket path too long", at);
	for (size_t i = at; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c == 0x7f)
			return fail(why, err_off, "blank or control character in the socket path", i);
	}
	memcpy(u->path, s + at, n);
	u->path[n] = '\0';
	if (n < 2 || u->path[n - 1] == '/')
		return fail(why, err_off, "expected a socket path after \"/\"", len);
	u->unix_socket = true;
	u->port = 0;
	struct sockaddr_un *sun = (struct sockaddr_un *)&u->addr;
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, u->path, n + 1);
	u->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	snprintf(u->text, sizeof u->text, "%s:%s", relay_url_scheme(u), u->path);
	return 0;
}

/* ":PORT" with an optional trailing "/", or nothing. */
static int parse_port(const char *s, size_t len, size_t at, struct relay_url *u, const char **why,
		      size_t *err_off)
{
	if (at < len && s[at] == ':') {
		size_t start = ++at;
		uint32_t v = 0;
		while (at < len && s[at] >= '0' && s[at] <= '9') {
			v = v * 10 + (uint32_t)(s[at] - '0');
			if (v > 65535)
				return fail(why, err_off, "port out of range", start);
			at++;
		}
		if (at == start)
			return fail(why, err_off, "expected a port number after \":\"", start);
		if (v == 0)
			return fail(why, err_off, "port out of range", start);
		u->port = (uint16_t)v;
	}
	bool slash = at < len && s[at] == '/';
	if (slash)
		at++;
	if (at < len)
		return fail(why, err_off,
			    slash || s[at] == '?' || s[at] == '#'
				    ? "a next-hop URL has no path, query or fragment"
				    : "unexpected text after the host",
			    at);
	return 0;
}

static int parse_inet(const char *s, size_t len, size_t at, struct relay_url *u, const char **why,
		      size_t *err_off)
{
	size_t hstart = at, hend;
	bool bracket = at < len && s[at] == '[';
	if (bracket) {
		const char *close = memchr(s + at, ']', len - at);
		if (!close)
			return fail(why, err_off, "missing \"]\" after the IPv6 address", at);
		hstart = at + 1;
		hend = (size_t)(close - s);
		at = hend + 1;
	} else {
		while (at < len && !strchr(":/@?#", s[at]))
			at++;
		hend = at;
		if (at < len && s[at] == '@')
			return fail(why, err_off, "credentials in a next-hop URL are not supported",
				    hstart);
		/* "::1" without brackets: the first ':' ends nothing sensible */
		if (at < len && s[at] == ':' && memchr(s + at + 1, ':', len - at - 1))
			return fail(why, err_off, "an IPv6 address needs brackets: [::1]", hstart);
	}
	size_t hn = hend - hstart;
	if (hn == 0)
		return fail(why, err_off, "expected a host", hstart);
	if (hn >= sizeof u->host)
		return fail(why, err_off, "host too long (an IP address literal)", hstart);
	memcpy(u->host, s + hstart, hn);
	u->host[hn] = '\0';
	if (!bracket && strcasecmp(u->host, "localhost") == 0)
		snprintf(u->host, sizeof u->host, "127.0.0.1");

	struct sockaddr_in *in4 = (struct sockaddr_in *)&u->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&u->addr;
	if (bracket) {
		if (inet_pton(AF_INET6, u->host, &in6->sin6_addr) != 1)
			return fail(why, err_off, "invalid IPv6 address", hstart);
		in6->sin6_family = AF_INET6;
		u->addr_len = sizeof *in6;
	} else if (inet_pton(AF_INET, u->host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		u->addr_len = sizeof *in4;
	} else {
		return fail(why, err_off,
			    "the host must be an IP address literal or localhost (mxd makes no DNS lookups)",
			    hstart);
	}
	if (parse_port(s, len, at, u, why, err_off) < 0)
		return -1;
	if (u->addr.ss_family == AF_INET) {
		in4->sin_port = htons(u->port);
		snprintf(u->text, sizeof u->text, "%s://%s:%u", relay_url_scheme(u), u->host, u->port);
	} else {
		in6->sin6_port = htons(u->port);
		/* canonical spelling: inet_ntop of what was parsed */
		char canon[INET6_ADDRSTRLEN];
		if (inet_ntop(AF_INET6, &in6->sin6_addr, canon, sizeof canon))
			snprintf(u->host, sizeof u->host, "%s", canon);
		snprintf(u->text, sizeof u->text, "%s://[%s]:%u", relay_url_scheme(u), u->host,
			 u->port);
	}
	return 0;
}

int relay_url_parse(const char *text, size_t len, struct relay_url *out, const char **why,
		    size_t *err_off)
{
	assert(text && out && why && err_off);
	memset(out, 0, sizeof *out);
	if (len == 0)
		return fail(why, err_off, "empty next-hop URL", 0);
	if (len > RELAY_URL_INPUT_MAX)
		return fail(why, err_off, "next-hop URL too long", 0);
	if (memchr(text, '\0', len))
		return fail(why, err_off, "NUL byte in a next-hop URL",
			    (size_t)((const char *)memchr(text, '\0', len) - text));
	size_t at;
	int k = scheme_of(text, len, &at);
	if (k < 0)
		return fail(why, err_off,
			    "unknown next-hop scheme (lmtp://, lmtp:/socket, smtp://, smtp+tls:// or smtps://)",
			    0);
	out->proto = schemes[k].proto;
	out->tls = schemes[k].tls;
	out->port = schemes[k].port;
	if (len - at >= 2 && text[at] == '/' && text[at + 1] == '/')
		return parse_inet(text, len, at + 2, out, why, err_off);
	if (at < len && text[at] == '/')
		return parse_unix(text, len, at, out, why, err_off);
	return fail(why, err_off, "expected \"//HOST\" or \"/path/to/socket\" after the scheme", at);
}
