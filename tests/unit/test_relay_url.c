/* test_relay_url: next-hop URLs — schemes, default ports, IPv6 brackets,
 * Unix sockets, canonical text, and every error with its offset. */
#include "check.h"
#include "relay_url.h"

#include <arpa/inet.h>
#include <netinet/in.h>

static int parse(const char *s, struct relay_url *u, const char **why, size_t *off)
{
	*why = NULL;
	*off = 999;
	return relay_url_parse(s, strlen(s), u, why, off);
}

static void ok(const char *s, enum relay_proto proto, enum relay_tls tls, const char *host,
	       uint16_t port, const char *canon)
{
	struct relay_url u;
	const char *why;
	size_t off;
	int rc = parse(s, &u, &why, &off);
	if (rc != 0)
		fprintf(stderr, "%s: %s at %zu\n", s, why, off);
	CHECK(rc == 0);
	CHECK(u.proto == proto);
	CHECK(u.tls == tls);
	CHECK(!u.unix_socket);
	CHECK_STR_EQ(u.host, host);
	CHECK(u.port == port);
	CHECK_STR_EQ(u.text, canon);
	if (u.addr.ss_family == AF_INET) {
		CHECK(u.addr_len == sizeof(struct sockaddr_in));
		CHECK(ntohs(((struct sockaddr_in *)&u.addr)->sin_port) == port);
	} else {
		CHECK(u.addr.ss_family == AF_INET6);
		CHECK(u.addr_len == sizeof(struct sockaddr_in6));
		CHECK(ntohs(((struct sockaddr_in6 *)&u.addr)->sin6_port) == port);
	}
	/* the canonical text parses to the same thing */
	struct relay_url again;
	CHECK(parse(u.text, &again, &why, &off) == 0);
	CHECK_STR_EQ(again.text, u.text);
}

static void bad(const char *s, const char *want_why, size_t want_off)
{
	struct relay_url u;
	const char *why;
	size_t off;
	CHECK(parse(s, &u, &why, &off) == -1);
	if (why && strcmp(why, want_why) != 0)
		fprintf(stderr, "%s: got \"%s\"\n", s, why);
	CHECK_STR_EQ(why, want_why);
	if (off != want_off)
		fprintf(stderr, "%s: offset %zu, want %zu\n", s, off, want_off);
	CHECK(off == want_off);
}

static void test_inet(void)
{
	ok("lmtp://127.0.0.1:24", RELAY_PROTO_LMTP, RELAY_TLS_NONE, "127.0.0.1", 24,
	   "lmtp://127.0.0.1:24");
	ok("lmtp://127.0.0.1", RELAY_PROTO_LMTP, RELAY_TLS_NONE, "127.0.0.1", 24,
	   "lmtp://127.0.0.1:24");
	ok("smtp://10.0.0.1", RELAY_PROTO_SMTP, RELAY_TLS_NONE, "10.0.0.1", 25, "smtp://10.0.0.1:25");
	ok("smtp+tls://10.0.0.2:587", RELAY_PROTO_SMTP, RELAY_TLS_STARTTLS, "10.0.0.2", 587,
	   "smtp+tls://10.0.0.2:587");
	ok("smtp+tls://10.0.0.2", RELAY_PROTO_SMTP, RELAY_TLS_STARTTLS, "10.0.0.2", 25,
	   "smtp+tls://10.0.0.2:25");
	ok("smtps://192.0.2.1", RELAY_PROTO_SMTP, RELAY_TLS_IMPLICIT, "192.0.2.1", 465,
	   "smtps://192.0.2.1:465");
	ok("SMTPS://192.0.2.1:1/", RELAY_PROTO_SMTP, RELAY_TLS_IMPLICIT, "192.0.2.1", 1,
	   "smtps://192.0.2.1:1");
	ok("smtp://192.0.2.1:65535", RELAY_PROTO_SMTP, RELAY_TLS_NONE, "192.0.2.1", 65535,
	   "smtp://192.0.2.1:65535");
	ok("lmtp://localhost", RELAY_PROTO_LMTP, RELAY_TLS_NONE, "127.0.0.1", 24,
	   "lmtp://127.0.0.1:24");
	ok("smtp://[::1]:2525", RELAY_PROTO_SMTP, RELAY_TLS_NONE, "::1", 2525, "smtp://[::1]:2525");
	ok("smtp://[::1]", RELAY_PROTO_SMTP, RELAY_TLS_NONE, "::1", 25, "smtp://[::1]:25");
	ok("smtps://[2001:DB8:0:0::7]", RELAY_PROTO_SMTP, RELAY_TLS_IMPLICIT, "2001:db8::7", 465,
	   "smtps://[2001:db8::7]:465");
	ok("smtp://[::ffff:192.0.2.1]:25", RELAY_PROTO_SMTP, RELAY_TLS_NONE, "::ffff:192.0.2.1", 25,
	   "smtp://[::ffff:192.0.2.1]:25");
}

static void test_unix(void)
{
	struct relay_url u;
	const char *why;
	size_t off;
	CHECK(parse("lmtp:/run/dovecot/lmtp", &u, &why, &off) == 0);
	CHECK(u.unix_socket);
	CHECK(u.proto == RELAY_PROTO_LMTP && u.tls == RELAY_TLS_NONE);
	CHECK(u.port == 0);
	CHECK_STR_EQ(u.path, "/run/dovecot/lmtp");
	CHECK_STR_EQ(u.text, "lmtp:/run/dovecot/lmtp");
	CHECK(u.addr.ss_family == AF_UNIX);
	CHECK_STR_EQ(((struct sockaddr_un *)&u.addr)->sun_path, "/run/dovecot/lmtp");
	CHECK(parse("smtp:/var/run/s", &u, &why, &off) == 0);
	CHECK(u.unix_socket && u.proto == RELAY_PROTO_SMTP);

	/* the longest path that fits sun_path, and one byte more */
	char s[300] = "lmtp:/";
	memset(s + 6, 'a', RELAY_URL_PATH_MAX - 1);
	s[6 + RELAY_URL_PATH_MAX - 1] = '\0';
	CHECK(parse(s, &u, &why, &off) == 0);
	CHECK(strlen(u.path) == RELAY_URL_PATH_MAX);
	strcat(s, "b");
	bad(s, "Unix socket path too long", 5);

	bad("smtps:/run/x", "a Unix socket next hop is only for lmtp: and smtp:", 0);
	bad("smtp+tls:/run/x", "a Unix socket next hop is only for lmtp: and smtp:", 0);
	bad("lmtp:/", "expected a socket path after \"/\"", 6);
	bad("lmtp:/run/", "expected a socket path after \"/\"", 10);
	bad("lmtp:/run/a\tb", "blank or control character in the socket path", 11);
}

static void test_errors(void)
{
	bad("", "empty next-hop URL", 0);
	bad("127.0.0.1:24",
	    "unknown next-hop scheme (lmtp://, lmtp:/socket, smtp://, smtp+tls:// or smtps://)", 0);
	bad("http://127.0.0.1",
	    "unknown next-hop scheme (lmtp://, lmtp:/socket, smtp://, smtp+tls:// or smtps://)", 0);
	bad("lmtp", "unknown next-hop scheme (lmtp://, lmtp:/socket, smtp://, smtp+tls:// or smtps://)",
	    0);
	bad("lmtp:127.0.0.1", "expected \"//HOST\" or \"/path/to/socket\" after the scheme", 5);
	bad("smtp://", "expected a host", 7);
	bad("smtp://:25", "expected a host", 7);
	bad("smtp://[]:25", "expected a host", 8);
	bad("smtp://mx.example.com",
	    "the host must be an IP address literal or localhost (mxd makes no DNS lookups)", 7);
	bad("smtp://300.0.0.1",
	    "the host must be an IP address literal or localhost (mxd makes no DNS lookups)", 7);
	bad("smtp://::1", "an IPv6 address needs brackets: [::1]", 7);
	bad("smtp://2001:db8::1:25", "an IPv6 address needs brackets: [::1]", 7);
	bad("smtp://[::1", "missing \"]\" after the IPv6 address", 7);
	bad("smtp://[127.0.0.1]", "invalid IPv6 address", 8);
	bad("smtp://[::1]x", "unexpected text after the host", 12);
	bad("smtp://1.2.3.4:", "expected a port number after \":\"", 15);
	bad("smtp://1.2.3.4:x", "expected a port number after \":\"", 15);
	bad("smtp://1.2.3.4:0", "port out of range", 15);
	bad("smtp://1.2.3.4:65536", "port out of range", 15);
	bad("smtp://1.2.3.4:99999999999", "port out of range", 15);
	bad("smtp://1.2.3.4:25x", "unexpected text after the host", 17);
	bad("smtp://1.2.3.4:25/x", "a next-hop URL has no path, query or fragment", 18);
	bad("smtp://1.2.3.4:25//", "a next-hop URL has no path, query or fragment", 18);
	bad("smtp://1.2.3.4?a", "a next-hop URL has no path, query or fragment", 14);
	bad("smtp://user@1.2.3.4", "credentials in a next-hop URL are not supported", 7);
	bad("smtp://1.2.3.4.5",
	    "the host must be an IP address literal or localhost (mxd makes no DNS lookups)", 7);
	char nul[] = "smtp://1.2.3.4\0x";
	struct relay_url u;
	const char *why;
	size_t off;
	CHECK(relay_url_parse(nul, sizeof nul - 1, &u, &why, &off) == -1);
	CHECK(off == 14);
	char longs[RELAY_URL_INPUT_MAX + 2];
	memset(longs, 'a', sizeof longs - 1);
	longs[sizeof longs - 1] = '\0';
	bad(longs, "next-hop URL too long", 0);
}

int main(void)
{
	test_inet();
	test_unix();
	test_errors();
	CHECK_STR_EQ(relay_url_scheme(&(struct relay_url){.proto = RELAY_PROTO_SMTP,
							  .tls = RELAY_TLS_STARTTLS}),
		     "smtp+tls");
	return check_report("test_relay_url");
}
