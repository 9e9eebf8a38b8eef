/* test_conf: the configuration language, directive by directive, with the
 * exact position of every error message. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "conf.h"

static struct buf errs;
static char errtext[65536];
static int nerr_lines;

static struct conf *parse(const char *text)
{
	buf_reset(&errs);
	struct conf *c = conf_parse("mxd.conf", text, strlen(text), &errs);
	size_t n = errs.len < sizeof errtext - 1 ? errs.len : sizeof errtext - 1;
	if (n)
		memcpy(errtext, errs.data, n);
	errtext[n] = '\0';
	nerr_lines = 0;
	for (size_t i = 0; i < n; i++)
		nerr_lines += errtext[i] == '\n';
	return c;
}

/* The config must parse with no message at all. */
static struct conf *parse_ok(const char *text, int line)
{
	struct conf *c = parse(text);
	if (!c || errs.len)
		fprintf(stderr, "test_conf.c:%d: unexpected errors:\n%s", line, errtext);
	CHECK(c != NULL);
	CHECK(errs.len == 0);
	return c;
}
#define PARSE_OK(text) parse_ok(text, __LINE__)

/* The config must fail with exactly this one message. */
static void parse_err(const char *text, const char *want, int line)
{
	struct conf *c = parse(text);
	int ok = c == NULL && strcmp(errtext, want) == 0;
	if (!ok)
		fprintf(stderr, "test_conf.c:%d: want error:\n  %sgot%s:\n  %s", line, want,
			c ? " a config and" : "", errtext);
	CHECK(ok);
	conf_free(c);
}
#define PARSE_ERR(text, want) parse_err(text, want, __LINE__)

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs(text, f);
	fclose(f);
}

static uint16_t sa_port(const struct conf_listener *l)
{
	if (l->addr.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&l->addr)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)&l->addr)->sin6_port);
}

/* ------------------------------------------------------------------ */

static void test_design_example(void)
{
	write_file("conf/passwd", "# users\n"
				  "alice $6$salt$hash\n"
				  "\n"
				  "  bob   $2b$10$x  y  \n"
				  "carol\r\n");
	struct conf *c = PARSE_OK(
		"pki mail.example.com cert \"conf/dev/mail.crt\" key \"conf/dev/mail.key\"\n"
		"table domains { example.com, example.org }\n"
		"table passwd file:conf/passwd\n"
		"listen on 127.0.0.1 port 2525 tls pki mail.example.com\n"
		"listen on 127.0.0.1 port 4650 smtps pki mail.example.com\n"
		"listen on 127.0.0.1 port 5870 tls-require pki mail.example.com auth <passwd>\n"
		"accept from any for domain <domains>\n"
		"accept from authenticated for any\n"
		"max-message-size 35M\n"
		"spool \"var/spool\"\n"
		"cores auto\n");
	if (!c)
		return;
	CHECK(c->npkis == 1);
	CHECK_STR_EQ(c->pkis[0].name, "mail.example.com");
	CHECK_STR_EQ(c->pkis[0].cert, "conf/dev/mail.crt");
	CHECK_STR_EQ(c->pkis[0].key, "conf/dev/mail.key");
	CHECK(c->pkis[0].ca == NULL);
	CHECK(c->pkis[0].line == 1 && c->pkis[0].col == 1);
	CHECK(conf_pki_find(c, "mail.example.com") == &c->pkis[0]);
	CHECK(conf_pki_find(c, "other") == NULL);

	CHECK(c->ntables == 2);
	const struct conf_table *d = conf_table_find(c, "domains");
	CHECK(d && d->kind == CONF_TABLE_LIST && d->n == 2 && d->line == 2);
	if (d && d->n == 2) {
		CHECK_STR_EQ(d->keys[0], "example.com");
		CHECK_STR_EQ(d->keys[1], "example.org");
		CHECK(d->values[0] == NULL);
		CHECK(d->entry_line[1] == 2 && d->entry_col[1] == 30);
	}
	const struct conf_table *pw = conf_table_find(c, "passwd");
	CHECK(pw && pw->kind == CONF_TABLE_FILE && pw->n == 3);
	if (pw && pw->n == 3) {
		CHECK_STR_EQ(pw->path, "conf/passwd");
		CHECK_STR_EQ(pw->keys[0], "alice");
		CHECK_STR_EQ(pw->values[0], "$6$salt$hash");
		CHECK_STR_EQ(pw->keys[1], "bob");
		CHECK_STR_EQ(pw->values[1], "$2b$10$x  y");
		CHECK(pw->entry_line[1] == 4 && pw->entry_col[1] == 3);
		CHECK_STR_EQ(pw->keys[2], "carol");
		CHECK(pw->values[2] == NULL);
	}
	CHECK(conf_table_find(c, "nope") == NULL);

	CHECK(c->nlisteners == 3);
	if (c->nlisteners == 3) {
		const struct conf_listener *l = c->listeners;
		CHECK_STR_EQ(l[0].addr_text, "127.0.0.1");
		CHECK(l[0].port == 2525 && sa_port(&l[0]) == 2525);
		CHECK(l[0].addr.ss_family == AF_INET && l[0].addr_len == sizeof(struct sockaddr_in));
		CHECK(((const struct sockaddr_in *)&l[0].addr)->sin_addr.s_addr == htonl(0x7f000001));
		CHECK(l[0].flags == CONF_LISTEN_TLS);
		CHECK_STR_EQ(l[0].pki, "mail.example.com");
		CHECK(l[0].auth_table == NULL && l[0].hostname == NULL);
		CHECK(l[0].line == 4 && l[0].col == 1);
		CHECK(l[1].port == 4650 && l[1].flags == CONF_LISTEN_SMTPS);
		CHECK(l[2].port == 5870);
		CHECK(l[2].flags == (CONF_LISTEN_TLS | CONF_LISTEN_TLS_REQUIRE | CONF_LISTEN_AUTH));
		CHECK_STR_EQ(l[2].auth_table, "passwd");
	}
	CHECK(c->nrules == 2);
	if (c->nrules == 2) {
		CHECK(c->rules[0].from == CONF_FROM_ANY && c->rules[0].for_what == CONF_FOR_DOMAIN);
		CHECK_STR_EQ(c->rules[0].domain_table, "domains");
		CHECK(c->rules[0].recipient_table == NULL && c->rules[0].line == 7);
		CHECK(c->rules[1].from == CONF_FROM_AUTHENTICATED);
		CHECK(c->rules[1].for_what == CONF_FOR_ANY && c->rules[1].domain_table == NULL);
	}
	CHECK(c->max_message_size == 35ull * 1024 * 1024);
	CHECK_STR_EQ(c->spool_dir, "var/spool");
	CHECK(c->cores == 0);
	CHECK_STR_EQ(c->path, "mxd.conf");
	conf_free(c);

	/* The same example with its table file missing. */
	unlink("conf/passwd");
	PARSE_ERR("table passwd file:conf/passwd\n",
		  "mxd.conf:1:14: cannot open table file conf/passwd: No such file or directory\n");
}

static void test_defaults(void)
{
	struct conf *c = PARSE_OK("");
	if (!c)
		return;
	CHECK(c->nlisteners == 0 && c->npkis == 0 && c->ntables == 0 && c->nrules == 0);
	CHECK(c->max_message_size == 35ull << 20);
	CHECK(c->max_recipients == 1000);
	CHECK(c->max_connections == 10000);
	CHECK(c->max_connections_per_client == 100);
	CHECK(c->max_errors == 10);
	CHECK(c->max_line_length == 2048);
	CHECK(c->accept_bare_newlines == false);
	CHECK(c->timeouts.command == 300000);
	CHECK(c->timeouts.data_init == 120000);
	CHECK(c->timeouts.data_block == 180000);
	CHECK(c->timeouts.data_term == 600000);
	CHECK(c->timeouts.drain == 30000);
	CHECK(c->timeouts.upgrade == 60000);
	CHECK_STR_EQ(c->spool_dir, "var/spool");
	CHECK(c->cores == 0);
	CHECK(c->segment_size == 256ull << 20);
	CHECK(c->ktls == CONF_KTLS_AUTO);
	CHECK(c->hostname != NULL && c->hostname[0] != '\0');
	conf_free(c);

	c = PARSE_OK("# only a comment\n\n   \t\n# another");
	conf_free(c);
	conf_free(NULL);
}

static void test_seed_pki_split(void)
{
	struct conf *c = PARSE_OK(
		"pki mail.example.com cert \"/etc/ssl/mail.example.com.crt\"\n"
		"pki mail.example.com key \"/etc/ssl/private/mail.example.com.key\"\n"
		"pki mail.example.com ca \"/etc/ssl/ca.crt\"\n"
		"listen on 0.0.0.0 tls pki mail.example.com auth\n");
	if (!c)
		return;
	CHECK(c->npkis == 1);
	CHECK_STR_EQ(c->pkis[0].cert, "/etc/ssl/mail.example.com.crt");
	CHECK_STR_EQ(c->pkis[0].key, "/etc/ssl/private/mail.example.com.key");
	CHECK_STR_EQ(c->pkis[0].ca, "/etc/ssl/ca.crt");
	CHECK(c->nlisteners == 1);
	if (c->nlisteners == 1) {
		CHECK(c->listeners[0].flags == (CONF_LISTEN_TLS | CONF_LISTEN_AUTH));
		CHECK(c->listeners[0].auth_table == NULL);
		CHECK(c->listeners[0].port == 25);
	}
	conf_free(c);

	/* two pkis, fields in any order */
	c = PARSE_OK("pki a key k1 cert c1\npki b cert c2 key k2\n");
	CHECK(c && c->npkis == 2);
	if (c && c->npkis == 2) {
		CHECK_STR_EQ(c->pkis[0].key, "k1");
		CHECK_STR_EQ(c->pkis[0].cert, "c1");
		CHECK_STR_EQ(c->pkis[1].name, "b");
	}
	conf_free(c);

	PARSE_ERR("pki a cert \"x\"\n", "mxd.conf:1:1: pki \"a\" has no key\n");
	PARSE_ERR("\npki a key \"x\"\n", "mxd.conf:2:1: pki \"a\" has no cert\n");
	PARSE_ERR("pki a cert x key y\npki a cert z\n", "mxd.conf:2:7: pki \"a\": cert already set\n");
	PARSE_ERR("pki a cert x key y certificate z\n", "mxd.conf:1:20: unexpected \"certificate\"\n");
	PARSE_ERR("pki a\n", "mxd.conf:1:6: expected cert, key or ca\n");
	PARSE_ERR("pki\n", "mxd.conf:1:4: expected a pki name\n");
	PARSE_ERR("pki a cert\n", "mxd.conf:1:11: expected a file name\n");
	PARSE_ERR("pki a cert x key y\npki b/c cert x key y\n",
		  "mxd.conf:2:5: invalid pki name \"b/c\"\n");
}

static void test_listen(void)
{
	struct conf *c = PARSE_OK("listen on ::1\n"
				  "listen on [::1] port 2526\n"
				  "listen on localhost port 2527 hostname mx.example.net\n"
				  "listen on 2001:db8::25 port 65535\n"
				  "pki p cert c key k\n"
				  "listen on 0.0.0.0 smtps pki p verify\n"
				  "listen on :: port 1 tls-require pki p\n");
	CHECK(c && c->nlisteners == 6);
	if (c && c->nlisteners == 6) {
		const struct conf_listener *l = c->listeners;
		CHECK(l[0].addr.ss_family == AF_INET6);
		CHECK(l[0].addr_len == sizeof(struct sockaddr_in6));
		CHECK(l[0].port == 25 && sa_port(&l[0]) == 25);
		CHECK(IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&l[0].addr)->sin6_addr));
		CHECK_STR_EQ(l[1].addr_text, "[::1]");
		CHECK(l[1].addr.ss_family == AF_INET6 && sa_port(&l[1]) == 2526);
		CHECK(l[2].addr.ss_family == AF_INET && sa_port(&l[2]) == 2527);
		CHECK_STR_EQ(l[2].hostname, "mx.example.net");
		CHECK(l[3].port == 65535 && l[3].flags == 0);
		CHECK(l[4].port == 465 && l[4].flags == (CONF_LISTEN_SMTPS | CONF_LISTEN_VERIFY));
		CHECK(l[5].port == 1 && l[5].flags == (CONF_LISTEN_TLS | CONF_LISTEN_TLS_REQUIRE));
	}
	conf_free(c);

	/* options in any order; smtps with an explicit port */
	c = PARSE_OK("table t { a }\npki p cert c key k\n"
		     "listen on 127.0.0.1 auth <t> pki p port 4650 smtps\n");
	CHECK(c && c->nlisteners == 1 && c->listeners[0].port == 4650);
	conf_free(c);

	PARSE_ERR("listen 127.0.0.1\n", "mxd.conf:1:8: expected \"on\"\n");
	PARSE_ERR("listen on\n", "mxd.conf:1:10: expected an address\n");
	PARSE_ERR("listen on 127.0.0.1 port\n", "mxd.conf:1:25: expected a port number\n");
	PARSE_ERR("listen on 127.0.0.1 port smtp\n", "mxd.conf:1:26: expected a port number\n");
	PARSE_ERR("listen on 127.0.0.1 port -1\n", "mxd.conf:1:26: expected a port number\n");
	PARSE_ERR("listen on 127.0.0.1 port 0\n", "mxd.conf:1:26: port out of range\n");
	PARSE_ERR("listen on 127.0.0.1 port 65536\n", "mxd.conf:1:26: port out of range\n");
	PARSE_ERR("listen on 127.0.0.1 port 99999999999999999999999\n",
		  "mxd.conf:1:26: port out of range\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 port 26\n",
		  "mxd.conf:1:29: duplicate option \"port\"\n");
	PARSE_ERR("listen on 1.2.3.4.5\n",
		  "mxd.conf:1:11: invalid listen address \"1.2.3.4.5\" (an IPv4 or IPv6 literal)\n");
	PARSE_ERR("listen on [127.0.0.1]\n",
		  "mxd.conf:1:11: invalid listen address \"[127.0.0.1]\" (an IPv4 or IPv6 literal)\n");
	PARSE_ERR("listen on mail.example.com\n",
		  "mxd.conf:1:11: invalid listen address \"mail.example.com\" (an IPv4 or IPv6 literal)\n");
	PARSE_ERR("pki mail.example.com cert c key k\n\nlisten on 127.0.0.1 tls pki foo\n",
		  "mxd.conf:3:29: unknown pki \"foo\"\n");
	PARSE_ERR("listen on 127.0.0.1 tls\n",
		  "mxd.conf:1:21: \"tls\" needs a pki (add \"pki NAME\")\n");
	PARSE_ERR("listen on 127.0.0.1 smtps\n",
		  "mxd.conf:1:21: \"smtps\" needs a pki (add \"pki NAME\")\n");
	PARSE_ERR("pki p cert c key k\nlisten on 127.0.0.1 tls smtps pki p\n",
		  "mxd.conf:2:25: \"smtps\" conflicts with \"tls\"\n");
	PARSE_ERR("pki p cert c key k\nlisten on 127.0.0.1 tls-require tls pki p\n",
		  "mxd.conf:2:33: \"tls\" conflicts with \"tls-require\"\n");
	PARSE_ERR("pki p cert c key k\nlisten on 127.0.0.1 tls tls pki p\n",
		  "mxd.conf:2:25: duplicate option \"tls\"\n");
	PARSE_ERR("pki p cert c key k\nlisten on 127.0.0.1 tls pki p auth <users>\n",
		  "mxd.conf:2:36: unknown table \"users\"\n");
	PARSE_ERR("listen on 127.0.0.1 auth\n",
		  "mxd.conf:1:21: \"auth\" needs tls, tls-require or smtps\n");
	PARSE_ERR("listen on 127.0.0.1 verify\n",
		  "mxd.conf:1:21: \"verify\" needs tls, tls-require or smtps\n");
	PARSE_ERR("pki p cert c key k\nlisten on 127.0.0.1 pki p\n",
		  "mxd.conf:2:21: \"pki\" needs tls, tls-require or smtps\n");
	PARSE_ERR("listen on 127.0.0.1 starttls\n",
		  "mxd.conf:1:21: unknown listen option \"starttls\"\n");
	PARSE_ERR("listen on 127.0.0.1 hostname bad/name\n",
		  "mxd.conf:1:30: invalid hostname \"bad/name\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 2525\nlisten on 127.0.0.1 port 2525\n",
		  "mxd.conf:2:11: duplicate listener on \"127.0.0.1\" port 2525 (first on line 1)\n");
	PARSE_ERR("listen on ::1\nlisten on [::1] port 25\n",
		  "mxd.conf:2:11: duplicate listener on \"[::1]\" port 25 (first on line 1)\n");
	/* same address, other port; same port, other address: fine */
	c = PARSE_OK("listen on 127.0.0.1 port 1\nlisten on 127.0.0.1 port 2\nlisten on ::1 port 1\n");
	CHECK(c && c->nlisteners == 3);
	conf_free(c);
}

static void test_tables(void)
{
	struct conf *c = PARSE_OK("table a { one, two three\n"
				  "   \"four five\",\n"
				  "   # a comment inside\n"
				  "   six, }\n"
				  "table empty { }\n"
				  "table b {x}\n"
				  "table c \"file:conf/t1\"\n");
	CHECK(c != NULL);
	if (c) {
		const struct conf_table *t = conf_table_find(c, "a");
		CHECK(t && t->n == 5);
		if (t && t->n == 5) {
			CHECK_STR_EQ(t->keys[2], "three");
			CHECK_STR_EQ(t->keys[3], "four five");
			CHECK(t->entry_line[3] == 2 && t->entry_col[3] == 4);
			CHECK_STR_EQ(t->keys[4], "six");
			CHECK(t->entry_line[4] == 4);
		}
		t = conf_table_find(c, "empty");
		CHECK(t && t->n == 0);
		t = conf_table_find(c, "b");
		CHECK(t && t->n == 1 && strcmp(t->keys[0], "x") == 0);
		t = conf_table_find(c, "c");
		CHECK(t && t->kind == CONF_TABLE_FILE && t->n == 2);
		if (t && t->n == 2) {
			CHECK_STR_EQ(t->keys[0], "192.0.2.0/24");
			CHECK_STR_EQ(t->keys[1], "k#1");
			CHECK_STR_EQ(t->values[1], "v");
			CHECK(t->entry_line[1] == 3);
		}
	}
	conf_free(c);

	PARSE_ERR("table a { x }\ntable a { y }\n",
		  "mxd.conf:2:7: duplicate table \"a\" (first defined on line 1)\n");
	PARSE_ERR("table\n", "mxd.conf:1:6: expected a table name\n");
	PARSE_ERR("table a:b { x }\n", "mxd.conf:1:7: invalid table name \"a:b\"\n");
	PARSE_ERR("table a\n", "mxd.conf:1:8: expected \"{\" or file:PATH\n");
	PARSE_ERR("table a db:/etc/x\n", "mxd.conf:1:9: expected \"{\" or file:PATH\n");
	PARSE_ERR("table a file:\n", "mxd.conf:1:9: expected a path after \"file:\"\n");
	PARSE_ERR("table a { x,\n y\n", "mxd.conf:1:9: missing \"}\" for this \"{\"\n");
	PARSE_ERR("table a { x <y> }\n", "mxd.conf:1:13: unexpected table reference <y> in table\n");
	PARSE_ERR("table a { x { }\n", "mxd.conf:1:13: unexpected \"{\" in table\n");
	PARSE_ERR("table a { \"\" }\n", "mxd.conf:1:11: empty table entry\n");
	PARSE_ERR("table a { x } y\n", "mxd.conf:1:15: unexpected \"y\"\n");
	PARSE_ERR("table a file:conf\n", "mxd.conf:1:9: cannot open table file conf: Is a directory\n");
	PARSE_ERR("table a file:/dev/null\n",
		  "mxd.conf:1:9: cannot open table file /dev/null: not a regular file\n");
	PARSE_ERR("table a file:conf/nul\n", "mxd.conf:1:9: table file \"conf/nul\" line 2: NUL byte\n");
	/* a bad table still exists, so its users do not add errors */
	PARSE_ERR("table a file:missing\naccept from any for domain <a>\n",
		  "mxd.conf:1:9: cannot open table file missing: No such file or directory\n");
	/* a mistake inside braces is skipped whole, not read as directives */
	PARSE_ERR("tabel a { x,\n  y,\n  z }\nspool x\n", "mxd.conf:1:1: unknown directive \"tabel\"\n");
}

static void test_accept(void)
{
	struct conf *c = PARSE_OK("table nets { 192.0.2.0/24 }\n"
				  "table doms { example.com }\n"
				  "table users { a@example.com }\n"
				  "accept from <nets> for any\n"
				  "accept from local for domain <doms> recipient <users>\n"
				  "accept from any for domain example.net\n"
				  "accept from authenticated for domain example.net\n"
				  "accept from any for any recipient <users>\n");
	CHECK(c && c->nrules == 5);
	if (c && c->nrules == 5) {
		const struct conf_rule *r = c->rules;
		CHECK(r[0].from == CONF_FROM_TABLE && strcmp(r[0].from_table, "nets") == 0);
		CHECK(r[0].for_what == CONF_FOR_ANY);
		CHECK(r[1].from == CONF_FROM_LOCAL && strcmp(r[1].domain_table, "doms") == 0);
		CHECK_STR_EQ(r[1].recipient_table, "users");
		CHECK(r[2].for_what == CONF_FOR_DOMAIN);
		/* a literal domain is a one-entry table, shared by rules */
		const struct conf_table *t = conf_table_find(c, r[2].domain_table);
		CHECK(t && t->n == 1 && strcmp(t->keys[0], "example.net") == 0);
		CHECK(r[3].domain_table && strcmp(r[3].domain_table, r[2].domain_table) == 0);
		CHECK(c->ntables == 4);
		CHECK(r[4].for_what == CONF_FOR_ANY && strcmp(r[4].recipient_table, "users") == 0);
		CHECK(r[4].line == 8 && r[4].col == 1);
	}
	conf_free(c);

	PARSE_ERR("accept for any\n", "mxd.conf:1:8: expected \"from\"\n");
	PARSE_ERR("accept from anywhere for any\n",
		  "mxd.conf:1:13: expected any, local, authenticated or <table> after \"from\"\n");
	PARSE_ERR("accept from <nets> for any\n", "mxd.conf:1:13: unknown table \"nets\"\n");
	/* a from-table holds addresses: bad entries are errors where they
	 * were written, reported once, among the other errors */
	c = parse("table nets { 192.0.2.0/24, 10.0.0.0/33,\n  example.com }\n"
		  "lisen\n"
		  "accept from <nets> for any\n"
		  "accept from <nets> for domain example.com\n"
		  "cores 0\n");
	CHECK(c == NULL);
	CHECK_STR_EQ(errtext, "mxd.conf:3:1: unknown directive \"lisen\"\n"
			      "mxd.conf:1:28: table \"nets\": invalid address or CIDR \"10.0.0.0/33\"\n"
			      "mxd.conf:2:3: table \"nets\": invalid address or CIDR \"example.com\"\n"
			      "mxd.conf:6:7: cores below 1\n");
	PARSE_ERR("table nets file:conf/t1\naccept from <nets> for any\n",
		  "conf/t1:3:3: table \"nets\": invalid address or CIDR \"k#1\"\n");
	/* the same table for domains only: no address check */
	c = PARSE_OK("table t { example.com }\naccept from any for domain <t>\n");
	conf_free(c);
	PARSE_ERR("accept from any\n", "mxd.conf:1:16: expected \"for\"\n");
	PARSE_ERR("accept from any to any\n", "mxd.conf:1:17: expected \"for\"\n");
	PARSE_ERR("accept from any for all\n", "mxd.conf:1:21: expected any or domain after \"for\"\n");
	PARSE_ERR("accept from any for domain\n",
		  "mxd.conf:1:27: expected <table> or a domain name after \"domain\"\n");
	PARSE_ERR("table d { x }\naccept from any for domain <domains>\n",
		  "mxd.conf:2:28: unknown table \"domains\"\n");
	PARSE_ERR("accept from any for any recipient users\n",
		  "mxd.conf:1:35: expected <table> after \"recipient\"\n");
	PARSE_ERR("accept from any for any recipient <u>\n", "mxd.conf:1:35: unknown table \"u\"\n");
	PARSE_ERR("accept from any for any reject\n", "mxd.conf:1:25: unexpected \"reject\"\n");
	/* defined below its use is too late */
	PARSE_ERR("accept from any for domain <d>\ntable d { x }\n",
		  "mxd.conf:1:28: unknown table \"d\"\n");
}

static void test_limits(void)
{
	struct conf *c = PARSE_OK("max-message-size 10k\n"
				  "max-recipients 100\n"
				  "max-connections 5\n"
				  "max-connections-per-client 2\n"
				  "max-errors 3\n"
				  "max-line-length 512\n"
				  "bare-newlines accept\n"
				  "timeout command 1s\n"
				  "timeout data-init 2m\n"
				  "timeout data-block 3h\n"
				  "timeout data-term 1500ms\n"
				  "timeout drain 45\n"
				  "timeout greeting 1d\n"
				  "timeout upgrade 90s\n"
				  "spool /var/spool/mxd\n"
				  "cores 256\n"
				  "hostname mx1.example.com\n"
				  "segment-size 1G\n");
	CHECK(c != NULL);
	if (c) {
		CHECK(c->max_message_size == 10240);
		CHECK(c->max_recipients == 100);
		CHECK(c->max_connections == 5);
		CHECK(c->max_connections_per_client == 2);
		CHECK(c->max_errors == 3);
		CHECK(c->max_line_length == 512);
		CHECK(c->accept_bare_newlines == true);
		CHECK(c->timeouts.command == 1000);
		CHECK(c->timeouts.data_init == 120000);
		CHECK(c->timeouts.data_block == 3 * 3600000);
		CHECK(c->timeouts.data_term == 1500);
		CHECK(c->timeouts.drain == 45000);
		CHECK(c->timeouts.greeting == 86400000);
		CHECK(c->timeouts.upgrade == 90000);
		CHECK_STR_EQ(c->spool_dir, "/var/spool/mxd");
		CHECK(c->cores == 256);
		CHECK_STR_EQ(c->hostname, "mx1.example.com");
		CHECK(c->segment_size == 1ull << 30);
	}
	conf_free(c);

	c = PARSE_OK("max-line-length 1048576\ncores 1\nbare-newlines reject\n");
	CHECK(c && c->max_line_length == 1048576 && c->cores == 1 && !c->accept_bare_newlines);
	conf_free(c);

	PARSE_ERR("max-line-length 511\n", "mxd.conf:1:17: max-line-length below 512\n");
	PARSE_ERR("max-line-length 1048577\n", "mxd.conf:1:17: max-line-length above 1048576\n");
	PARSE_ERR("max-line-length 2k\n", "mxd.conf:1:17: expected a number\n");
	PARSE_ERR("max-recipients 0\n", "mxd.conf:1:16: max-recipients below 1\n");
	PARSE_ERR("max-recipients\n", "mxd.conf:1:15: expected a number\n");
	PARSE_ERR("max-errors 18446744073709551616\n", "mxd.conf:1:12: max-errors above 1000000\n");
	PARSE_ERR("max-connections 0\n", "mxd.conf:1:17: max-connections below 1\n");
	PARSE_ERR("max-connections-per-client 0\n",
		  "mxd.conf:1:28: max-connections-per-client below 1\n");
	PARSE_ERR("max-message-size 0\n", "mxd.conf:1:18: max-message-size below 1 bytes\n");
	PARSE_ERR("max-message-size 35Q\n",
		  "mxd.conf:1:18: invalid size \"35Q\" (a number with k, M or G)\n");
	PARSE_ERR("max-message-size 99999999999G\n",
		  "mxd.conf:1:18: invalid size \"99999999999G\" (a number with k, M or G)\n");
	PARSE_ERR("max-message-size\n", "mxd.conf:1:17: expected a size\n");
	PARSE_ERR("segment-size 4095\n", "mxd.conf:1:14: segment-size below 4096 bytes\n");
	PARSE_ERR("bare-newlines maybe\n", "mxd.conf:1:15: expected accept or reject\n");
	PARSE_ERR("timeout data 5m\n",
		  "mxd.conf:1:9: unknown timeout \"data\" (command, data-init, data-block, data-term, drain, greeting or upgrade)\n");
	PARSE_ERR("timeout\n", "mxd.conf:1:8: expected a timeout name\n");
	PARSE_ERR("timeout command 5 minutes\n", "mxd.conf:1:19: unexpected \"minutes\"\n");
	PARSE_ERR("timeout command 5x\n",
		  "mxd.conf:1:17: invalid duration \"5x\" (a number with ms, s, m, h or d)\n");
	PARSE_ERR("timeout command 0s\n", "mxd.conf:1:17: timeout command must be longer than 0\n");
	PARSE_ERR("timeout command\n", "mxd.conf:1:16: expected a duration\n");
	PARSE_ERR("timeout drain 1s\ntimeout drain 2s\n",
		  "mxd.conf:2:9: duplicate \"timeout drain\" (first set on line 1)\n");
	PARSE_ERR("cores 0\n", "mxd.conf:1:7: cores below 1\n");
	PARSE_ERR("cores 257\n", "mxd.conf:1:7: cores above 256\n");
	PARSE_ERR("cores many\n", "mxd.conf:1:7: expected auto or a number of cores\n");
	PARSE_ERR("spool\n", "mxd.conf:1:6: expected a spool directory\n");
	PARSE_ERR("spool \"\"\n", "mxd.conf:1:7: expected a spool directory\n");
	PARSE_ERR("spool a b\n", "mxd.conf:1:9: unexpected \"b\"\n");
	PARSE_ERR("hostname \"bad host\"\n", "mxd.conf:1:10: invalid hostname \"bad host\"\n");
	PARSE_ERR("hostname\n", "mxd.conf:1:9: expected a host name\n");
	PARSE_ERR("spool a\n\nspool b\n", "mxd.conf:3:1: duplicate \"spool\" (first set on line 1)\n");
	PARSE_ERR("max-message-size 1M\nmax-message-size 2M\n",
		  "mxd.conf:2:1: duplicate \"max-message-size\" (first set on line 1)\n");
}

static void test_ktls(void)
{
	struct conf *c = PARSE_OK("ktls on\n");
	CHECK(c && c->ktls == CONF_KTLS_ON);
	conf_free(c);
	c = PARSE_OK("ktls off # userspace records only\n");
	CHECK(c && c->ktls == CONF_KTLS_OFF);
	conf_free(c);
	c = PARSE_OK("ktls auto\n");
	CHECK(c && c->ktls == CONF_KTLS_AUTO);
	conf_free(c);

	PARSE_ERR("ktls\n", "mxd.conf:1:5: expected auto, on or off\n");
	PARSE_ERR("ktls yes\n", "mxd.conf:1:6: expected auto, on or off\n");
	PARSE_ERR("ktls \"off\"\n", "mxd.conf:1:6: expected auto, on or off\n"); /* a keyword */
	PARSE_ERR("ktls ON\n", "mxd.conf:1:6: expected auto, on or off\n");
	PARSE_ERR("ktls on off\n", "mxd.conf:1:9: unexpected \"off\"\n");
	PARSE_ERR("ktls on\nktls off\n", "mxd.conf:2:1: duplicate \"ktls\" (first set on line 1)\n");
}

static void test_listen_proxy(void)
{
	struct conf *c = PARSE_OK("listen on 127.0.0.1 port 2525 proxy-v1\n"
				  "listen on ::1 port 2526 proxy-v2\n");
	CHECK(c && c->nlisteners == 2);
	if (c && c->nlisteners == 2) {
		CHECK(c->listeners[0].flags == CONF_LISTEN_PROXY_V1);
		CHECK(c->listeners[1].flags == CONF_LISTEN_PROXY_V2);
	}
	conf_free(c);
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v1 proxy-v2\n",
		  "mxd.conf:1:38: \"proxy-v2\" conflicts with \"proxy-v1\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-v2\n",
		  "mxd.conf:1:38: duplicate option \"proxy-v2\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy\n",
		  "mxd.conf:1:29: unknown listen option \"proxy\"\n");
}

/* proxy-from: whose PROXY header a proxy listener believes. */
static void test_listen_proxy_from(void)
{
	struct conf *c = PARSE_OK(
		"pki p cert \"c\" key \"k\"\n"
		"table lbs { 10.0.0.0/8, 192.0.2.7 }\n"
		"listen on 127.0.0.1 port 2525 proxy-v2\n"
		"listen on 127.0.0.1 port 2526 proxy-v2 proxy-from any\n"
		"listen on 127.0.0.1 port 2527 proxy-from local proxy-v1\n"
		"listen on 127.0.0.1 port 2528 proxy-v2 proxy-from <lbs>\n"
		"listen on 127.0.0.1 port 2529 proxy-v2 proxy-from { 198.51.100.0/24,\n"
		"                                                  2001:db8::1 } tls pki p\n"
		"listen on 127.0.0.1 port 2530 proxy-v1 proxy-from 203.0.113.9\n");
	CHECK(c && c->nlisteners == 6);
	if (c && c->nlisteners == 6) {
		const struct conf_listener *l = c->listeners;
		CHECK(l[0].proxy_from == CONF_PROXY_FROM_LOCAL && !l[0].proxy_from_table);
		CHECK(l[1].proxy_from == CONF_PROXY_FROM_ANY && !l[1].proxy_from_table);
		CHECK(l[2].proxy_from == CONF_PROXY_FROM_LOCAL);
		CHECK(l[3].proxy_from == CONF_PROXY_FROM_TABLE);
		CHECK(l[3].proxy_from_table && strcmp(l[3].proxy_from_table, "lbs") == 0);
		/* a literal list is a table of the config's own, named where it is */
		CHECK(l[4].proxy_from == CONF_PROXY_FROM_TABLE);
		CHECK(l[4].proxy_from_table &&
		      strcmp(l[4].proxy_from_table, "proxy-from:7:51") == 0);
		const struct conf_table *t = conf_table_find(c, "proxy-from:7:51");
		CHECK(t && t->n == 2 && strcmp(t->keys[1], "2001:db8::1") == 0);
		CHECK(l[4].flags == (CONF_LISTEN_PROXY_V2 | CONF_LISTEN_TLS));
		t = l[5].proxy_from_table ? conf_table_find(c, l[5].proxy_from_table) : NULL;
		CHECK(t && t->n == 1 && strcmp(t->keys[0], "203.0.113.9") == 0);

		/* the start-up log's words */
		struct buf d;
		buf_init(&d, 0);
		const char *want[6] = {
			"the loopback only (127.0.0.0/8, ::1)",
			"any peer (proxy-from any)",
			"the loopback only (127.0.0.0/8, ::1)",
			"<lbs> (10.0.0.0/8, 192.0.2.7)",
			"(198.51.100.0/24, 2001:db8::1)",
			"(203.0.113.9)",
		};
		for (int i = 0; i < 6; i++) {
			buf_reset(&d);
			conf_proxy_from_describe(c, &l[i], &d);
			buf_append(&d, "", 1);
			if (strcmp(d.data, want[i]) != 0)
				fprintf(stderr, "test_conf.c: listener %d: %s\n", i, d.data);
			CHECK(strcmp(d.data, want[i]) == 0);
		}
		buf_free(&d);
	}
	conf_free(c);

	/* more than eight entries: the log line says how many it left out */
	c = PARSE_OK("listen on 127.0.0.1 proxy-v2 proxy-from { 192.0.2.1 192.0.2.2 192.0.2.3\n"
		     "  192.0.2.4 192.0.2.5 192.0.2.6 192.0.2.7 192.0.2.8 192.0.2.9 192.0.2.10 }\n");
	if (c && c->nlisteners == 1) {
		struct buf d;
		buf_init(&d, 0);
		conf_proxy_from_describe(c, &c->listeners[0], &d);
		buf_append(&d, "", 1);
		CHECK(strstr(d.data, "192.0.2.8) ") == NULL);
		CHECK(strstr(d.data, ", 192.0.2.8 and 2 more)") != NULL);
		buf_free(&d);
	}
	conf_free(c);

	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-from any\n",
		  "mxd.conf:1:29: \"proxy-from\" needs proxy-v1 or proxy-v2\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from any proxy-from local\n",
		  "mxd.conf:1:53: duplicate option \"proxy-from\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from\n",
		  "mxd.conf:1:48: expected any, local, <table>, an address or { list } after "
		  "\"proxy-from\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from <lbs>\n",
		  "mxd.conf:1:49: unknown table \"lbs\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from lb.example.com\n",
		  "mxd.conf:1:49: invalid address or CIDR \"lb.example.com\" after "
		  "\"proxy-from\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from { 10.0.0.1,\n"
		  "    10.0.0.300 }\n",
		  "mxd.conf:2:5: table \"proxy-from:1:49\": invalid address or CIDR "
		  "\"10.0.0.300\"\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from { }\n",
		  "mxd.conf:1:49: empty list: no peer could send a PROXY header\n");
	PARSE_ERR("listen on 127.0.0.1 port 25 proxy-v2 proxy-from { 10.0.0.1\n",
		  "mxd.conf:1:49: missing \"}\" for this \"{\"\n");
	/* a table of names is no table of peers: the error is at its entry */
	PARSE_ERR("table doms { example.com }\n"
		  "listen on 127.0.0.1 port 25 proxy-v2 proxy-from <doms>\n",
		  "mxd.conf:1:14: table \"doms\": invalid address or CIDR \"example.com\"\n");
}

static void test_control(void)
{
	struct conf *c = PARSE_OK("\n");
	if (c) {
		CHECK_STR_EQ(c->control.path, "var/spool/mxd.sock");
		CHECK(c->control.path_default && c->control.line == 0);
		CHECK(c->control.max_clients == CONF_DEFAULT_CONTROL_MAX_CLIENTS);
		CHECK(c->control.timeout == CONF_DEFAULT_CONTROL_TIMEOUT);
	}
	conf_free(c);
	c = PARSE_OK("control socket \"/tmp/x.sock\"\nspool \"/srv/spool\"\n");
	if (c) {
		CHECK_STR_EQ(c->control.path, "/tmp/x.sock");
		CHECK(!c->control.path_default && c->control.line == 1);
	}
	conf_free(c);
	c = PARSE_OK("spool \"/srv/spool\"\n");
	CHECK(c && strcmp(c->control.path, "/srv/spool/mxd.sock") == 0);
	conf_free(c);
	c = PARSE_OK("control socket run/mxd.sock timeout 2s max-clients 8\n");
	if (c) {
		CHECK_STR_EQ(c->control.path, "run/mxd.sock");
		CHECK(c->control.max_clients == 8 && c->control.timeout == 2000);
	}
	conf_free(c);

	PARSE_ERR("control\n", "mxd.conf:1:8: expected \"socket\"\n");
	PARSE_ERR("control socket\n", "mxd.conf:1:15: expected a socket path\n");
	PARSE_ERR("control socket \"\"\n", "mxd.conf:1:16: expected a socket path\n");
	PARSE_ERR("control socket \"/012345678901234567890123456789012345678901234567890123456789"
		  "0123456789012345678901234567890123456789012345678\"\n",
		  "mxd.conf:1:16: control socket path longer than 107 bytes\n");
	PARSE_ERR("control socket x max-clients 0\n", "mxd.conf:1:30: max-clients below 1\n");
	PARSE_ERR("control socket x max-clients 65\n", "mxd.conf:1:30: max-clients above 64\n");
	c = PARSE_OK("control socket x timeout 10\n"); /* a bare number is seconds */
	CHECK(c && c->control.timeout == 10000);
	conf_free(c);
	PARSE_ERR("control socket x timeout soon\n", "mxd.conf:1:26: expected a duration\n");
	PARSE_ERR("control socket x timeout 50ms\n",
		  "mxd.conf:1:26: control timeout must be between 100ms and 1h\n");
	PARSE_ERR("control socket x timeout 1s timeout 2s\n",
		  "mxd.conf:1:29: duplicate option \"timeout\"\n");
	PARSE_ERR("control socket x mode 0666\n",
		  "mxd.conf:1:18: unknown control option \"mode\"\n");
	PARSE_ERR("control socket x\ncontrol socket y\n",
		  "mxd.conf:2:1: duplicate \"control\" (first set on line 1)\n");
}

static void test_metrics(void)
{
	struct conf *c = PARSE_OK("\n");
	CHECK(c && c->metrics.addr_text == NULL);
	conf_free(c);
	c = PARSE_OK("listen on 127.0.0.1 port 25\nmetrics listen on 127.0.0.1 port 9125\n");
	CHECK(c && c->metrics.addr_text && strcmp(c->metrics.addr_text, "127.0.0.1") == 0);
	if (c) {
		CHECK(c->metrics.port == 9125 && sa_port(&c->metrics) == 9125);
		CHECK(c->metrics.addr.ss_family == AF_INET && c->metrics.line == 2);
	}
	conf_free(c);
	c = PARSE_OK("metrics listen on ::1 port 9125\n");
	CHECK(c && c->metrics.addr.ss_family == AF_INET6 && sa_port(&c->metrics) == 9125);
	conf_free(c);
	c = PARSE_OK("metrics listen on [::] port 1\n");
	CHECK(c && c->metrics.addr.ss_family == AF_INET6 && c->metrics.port == 1);
	conf_free(c);

	PARSE_ERR("metrics\n", "mxd.conf:1:8: expected \"listen\"\n");
	PARSE_ERR("metrics on 127.0.0.1 port 9\n", "mxd.conf:1:9: expected \"listen\"\n");
	PARSE_ERR("metrics listen 127.0.0.1 port 9\n", "mxd.conf:1:16: expected \"on\"\n");
	PARSE_ERR("metrics listen on\n", "mxd.conf:1:18: expected an address\n");
	PARSE_ERR("metrics listen on example.org port 9\n",
		  "mxd.conf:1:19: invalid metrics address \"example.org\" (an IPv4 or IPv6 literal)\n");
	PARSE_ERR("metrics listen on 127.0.0.1\n", "mxd.conf:1:28: expected \"port\"\n");
	PARSE_ERR("metrics listen on 127.0.0.1 port\n", "mxd.conf:1:33: expected a port number\n");
	PARSE_ERR("metrics listen on 127.0.0.1 port x\n", "mxd.conf:1:34: expected a port number\n");
	PARSE_ERR("metrics listen on 127.0.0.1 port 0\n", "mxd.conf:1:34: port out of range\n");
	PARSE_ERR("metrics listen on 127.0.0.1 port 65536\n", "mxd.conf:1:34: port out of range\n");
	PARSE_ERR("metrics listen on 127.0.0.1 port 9 tls\n", "mxd.conf:1:36: unexpected \"tls\"\n");
	PARSE_ERR("metrics listen on 127.0.0.1 port 9\nmetrics listen on ::1 port 9\n",
		  "mxd.conf:2:1: duplicate \"metrics\" (first set on line 1)\n");
	PARSE_ERR("listen on 127.0.0.1 port 25\nmetrics listen on 127.0.0.1 port 25\n",
		  "mxd.conf:2:19: metrics on \"127.0.0.1\" port 25 clashes with the listener on line 1\n");
}

static void test_abuse_settings(void)
{
	struct conf *c = PARSE_OK("\n");
	CHECK(c && c->greeting_delay == 0 && c->min_data_rate == CONF_DEFAULT_MIN_DATA_RATE);
	conf_free(c);
	c = PARSE_OK("greeting-delay 1500ms\nmin-data-rate 0\n");
	CHECK(c && c->greeting_delay == 1500 && c->min_data_rate == 0);
	conf_free(c);
	c = PARSE_OK("greeting-delay 5m\nmin-data-rate 1073741824\n"); /* the upper edges */
	CHECK(c && c->greeting_delay == 300000 && c->min_data_rate == 1u << 30);
	conf_free(c);
	c = PARSE_OK("greeting-delay 0\n");
	CHECK(c && c->greeting_delay == 0);
	conf_free(c);

	PARSE_ERR("greeting-delay 301s\n",
		  "mxd.conf:1:16: greeting-delay longer than 5m would trip clients' own timeouts\n");
	PARSE_ERR("greeting-delay soon\n",
		  "mxd.conf:1:16: invalid duration \"soon\" (a number with ms, s, m, h or d)\n");
	PARSE_ERR("greeting-delay\n", "mxd.conf:1:15: expected a duration\n");
	PARSE_ERR("min-data-rate fast\n", "mxd.conf:1:15: expected a number\n");
	PARSE_ERR("greeting-delay 1s\ngreeting-delay 2s\n",
		  "mxd.conf:2:1: duplicate \"greeting-delay\" (first set on line 1)\n");
}

static void test_lexer(void)
{
	/* strings with escapes, comments after statements, CRLF, continuation */
	struct conf *c = PARSE_OK("spool \"a \\\"b\\\\c\" # trailing comment\r\n"
				  "hostname\\\n   mx.example.com\n"
				  "max-errors 7# comment glued to a word\n"
				  "listen on 127.0.0.1 \\\r\n port 2525\n");
	CHECK(c != NULL);
	if (c) {
		CHECK_STR_EQ(c->spool_dir, "a \"b\\c");
		CHECK_STR_EQ(c->hostname, "mx.example.com");
		CHECK(c->max_errors == 7);
		CHECK(c->nlisteners == 1 && c->listeners[0].port == 2525 && c->listeners[0].line == 5);
	}
	conf_free(c);

	PARSE_ERR("lisen on 127.0.0.1\n", "mxd.conf:1:1: unknown directive \"lisen\"\n");
	PARSE_ERR("  spool \"var/spool\n", "mxd.conf:1:9: unterminated string\n");
	PARSE_ERR("spool \"a\\nb\"\n", "mxd.conf:1:9: invalid escape in string (only \\\" and \\\\)\n");
	PARSE_ERR("spool \"a\x01\"\n", "mxd.conf:1:9: invalid character 0x01 in string\n");
	PARSE_ERR("spool a\x01\n", "mxd.conf:1:8: invalid character 0x01\n");
	PARSE_ERR("{ x }\n", "mxd.conf:1:1: expected a directive, got \"{\"\n");
	PARSE_ERR("spool >\n", "mxd.conf:1:7: unexpected \">\"\n");
	PARSE_ERR("accept from <a for any\n",
		  "mxd.conf:1:13: unterminated table reference, expected \">\"\n");
	PARSE_ERR("accept from <> for any\n", "mxd.conf:1:13: empty table reference\n");
	PARSE_ERR("accept from <a/b> for any\n", "mxd.conf:1:13: invalid table name \"a/b\"\n");
	/* messages quote input safely */
	PARSE_ERR("\"x\\\"y\xff\"\n", "mxd.conf:1:1: expected a directive, got \"x\\\"y\\xff\"\n");

	/* a NUL byte in the text */
	buf_reset(&errs);
	c = conf_parse("mxd.conf", "spool a\0b\n", 10, &errs);
	CHECK(c == NULL);
	CHECK(check_contains(errs.data, errs.len, "mxd.conf:1:8: invalid character 0x00\n"));
	conf_free(c);

	/* every error is reported, each at its place */
	c = parse("lisen on x\n"
		  "spool a\n"
		  "cores 0\n"
		  "\n"
		  "listen on 127.0.0.1 port 0\n"
		  "max-line-length 100\n");
	CHECK(c == NULL);
	CHECK_STR_EQ(errtext, "mxd.conf:1:1: unknown directive \"lisen\"\n"
			      "mxd.conf:3:7: cores below 1\n"
			      "mxd.conf:5:26: port out of range\n"
			      "mxd.conf:6:17: max-line-length below 512\n");

	/* a long word is refused, not truncated */
	static char big[6000];
	memcpy(big, "spool ", 6);
	memset(big + 6, 'a', 5000);
	big[5006] = '\n';
	big[5007] = '\0';
	PARSE_ERR(big, "mxd.conf:1:7: word longer than 4096 bytes\n");

	/* error count is bounded */
	static char many[4000];
	many[0] = '\0';
	for (int i = 0; i < 300; i++)
		strcat(many, "x y\n");
	c = parse(many);
	CHECK(c == NULL);
	CHECK(nerr_lines == 101);
	CHECK(check_contains(errtext, strlen(errtext), "mxd.conf:101:1: too many errors, giving up\n"));
	conf_free(c);

	/* no error buffer: still refuses */
	CHECK(conf_parse("mxd.conf", "lisen\n", 6, NULL) == NULL);
}

static void test_sizes(void)
{
	uint64_t v = 7;
	CHECK(conf_parse_size("35M", &v) == 0 && v == 35ull << 20);
	CHECK(conf_parse_size("1G", &v) == 0 && v == 1ull << 30);
	CHECK(conf_parse_size("512k", &v) == 0 && v == 512ull << 10);
	CHECK(conf_parse_size("512K", &v) == 0 && v == 512ull << 10);
	CHECK(conf_parse_size("2m", &v) == 0 && v == 2ull << 20);
	CHECK(conf_parse_size("1000", &v) == 0 && v == 1000);
	CHECK(conf_parse_size("0", &v) == 0 && v == 0);
	CHECK(conf_parse_size("3T", &v) == 0 && v == 3ull << 40);
	CHECK(conf_parse_size("18446744073709551615", &v) == 0 && v == UINT64_MAX);
	CHECK(conf_parse_size("16777215T", &v) == 0 && v == 16777215ull << 40);
	v = 7;
	CHECK(conf_parse_size("18446744073709551616", &v) == -1);
	CHECK(conf_parse_size("16777216T", &v) == -1);
	CHECK(conf_parse_size("17179869184G", &v) == -1);
	CHECK(conf_parse_size("", &v) == -1);
	CHECK(conf_parse_size("M", &v) == -1);
	CHECK(conf_parse_size("-1", &v) == -1);
	CHECK(conf_parse_size("+1", &v) == -1);
	CHECK(conf_parse_size(" 1", &v) == -1);
	CHECK(conf_parse_size("1MB", &v) == -1);
	CHECK(conf_parse_size("1.5M", &v) == -1);
	CHECK(conf_parse_size("1 M", &v) == -1);
	CHECK(v == 7); /* untouched on error */

	uint32_t ms = 7;
	CHECK(conf_parse_duration("5m", &ms) == 0 && ms == 300000);
	CHECK(conf_parse_duration("30s", &ms) == 0 && ms == 30000);
	CHECK(conf_parse_duration("2h", &ms) == 0 && ms == 7200000);
	CHECK(conf_parse_duration("1500ms", &ms) == 0 && ms == 1500);
	CHECK(conf_parse_duration("10", &ms) == 0 && ms == 10000);
	CHECK(conf_parse_duration("1d", &ms) == 0 && ms == 86400000);
	CHECK(conf_parse_duration("0s", &ms) == 0 && ms == 0);
	CHECK(conf_parse_duration("4294967295ms", &ms) == 0 && ms == UINT32_MAX);
	CHECK(conf_parse_duration("49d", &ms) == 0 && ms == 49u * 86400000u);
	ms = 7;
	CHECK(conf_parse_duration("4294967296ms", &ms) == -1);
	CHECK(conf_parse_duration("50d", &ms) == -1);
	CHECK(conf_parse_duration("4294968s", &ms) == -1);
	CHECK(conf_parse_duration("99999999999999999999999s", &ms) == -1);
	CHECK(conf_parse_duration("", &ms) == -1);
	CHECK(conf_parse_duration("m", &ms) == -1);
	CHECK(conf_parse_duration("-1s", &ms) == -1);
	CHECK(conf_parse_duration("5x", &ms) == -1);
	CHECK(conf_parse_duration("5 s", &ms) == -1);
	CHECK(conf_parse_duration("5sec", &ms) == -1);
	CHECK(conf_parse_duration("5M", &ms) == -1);
	CHECK(ms == 7);
}

static void test_load(void)
{
	write_file("load.conf", "spool \"s\"\nlisen\n");
	buf_reset(&errs);
	struct conf *c = conf_load("load.conf", &errs);
	CHECK(c == NULL);
	CHECK(check_contains(errs.data, errs.len, "load.conf:2:1: unknown directive \"lisen\"\n"));

	write_file("load.conf", "spool \"s\"\n");
	buf_reset(&errs);
	c = conf_load("load.conf", &errs);
	CHECK(c != NULL && errs.len == 0);
	if (c) {
		CHECK_STR_EQ(c->path, "load.conf");
		CHECK_STR_EQ(c->spool_dir, "s");
	}
	conf_free(c);
	unlink("load.conf");

	buf_reset(&errs);
	CHECK(conf_load("missing.conf", &errs) == NULL);
	CHECK(check_contains(errs.data, errs.len,
			     "missing.conf: cannot read config: No such file or directory\n"));
	buf_reset(&errs);
	CHECK(conf_load("/dev/null", &errs) == NULL);
	CHECK(check_contains(errs.data, errs.len, "/dev/null: cannot read config: not a regular file\n"));
}

/* The shipped default config must parse (run from the source tree). */
static void test_default_config(const char *srcdir)
{
	char path[4096 + 32];
	snprintf(path, sizeof path, "%.4095s/conf/mxd.conf", srcdir);
	buf_reset(&errs);
	struct conf *c = conf_load(path, &errs);
	if (!c)
		fprintf(stderr, "%.*s", (int)errs.len, errs.data);
	CHECK(c != NULL);
	if (c) {
		CHECK(c->nlisteners >= 1);
		CHECK(c->nlisteners >= 1 && c->listeners[0].port == 2525);
		CHECK(c->nrules >= 2);
		CHECK_STR_EQ(c->spool_dir, "var/spool");
		CHECK(c->cores == 0);
		CHECK(c->max_message_size == 35ull << 20);
	}
	conf_free(c);
}

static void test_relay(void)
{
	/* defaults */
	struct conf *c = PARSE_OK("hostname mx.example\naccept from any for any\n");
	if (c) {
		CHECK(c->relay.lifetime == 5u * 24 * 3600 * 1000);
		CHECK(c->relay.retry_first == 60u * 1000);
		CHECK(c->relay.retry_max == 4u * 3600 * 1000);
		CHECK(c->relay.connections == 4);
		CHECK(c->relay.chunk_size == 1u << 20);
		CHECK(c->relay.timeout_connect == 30u * 1000);
		CHECK(c->relay.timeout_greeting == 120u * 1000);
		CHECK(c->relay.timeout_command == 120u * 1000);
		CHECK(c->relay.timeout_data_end == 300u * 1000);
		CHECK_STR_EQ(c->relay.helo, "mx.example"); /* the banner's name */
		CHECK(c->relay.ca == NULL);
		CHECK(c->relay.bounce.nhops == 0);
		CHECK(c->rules[0].relay.nhops == 0); /* kept in the spool */
	}
	conf_free(c);

	/* every global setting */
	c = PARSE_OK("relay lifetime 2d\n"
		     "relay retry 30s..2h\n"
		     "relay connections 16\n"
		     "relay chunk-size 256k\n"
		     "relay helo out.example\n"
		     "relay ca \"/etc/ssl/certs/ca.pem\"\n"
		     "relay timeout connect 5s\n"
		     "relay timeout greeting 1m\n"
		     "relay timeout command 90s\n"
		     "relay timeout data-end 10m\n"
		     "bounce relay via \"smtp://192.0.2.9\", smtp+tls://[2001:db8::9]:587 noverify\n");
	if (c) {
		CHECK(c->relay.lifetime == 2u * 24 * 3600 * 1000);
		CHECK(c->relay.retry_first == 30u * 1000 && c->relay.retry_max == 2u * 3600 * 1000);
		CHECK(c->relay.connections == 16);
		CHECK(c->relay.chunk_size == 256u << 10);
		CHECK_STR_EQ(c->relay.helo, "out.example");
		CHECK_STR_EQ(c->relay.ca, "/etc/ssl/certs/ca.pem");
		CHECK(c->relay.timeout_connect == 5000 && c->relay.timeout_greeting == 60000);
		CHECK(c->relay.timeout_command == 90000 && c->relay.timeout_data_end == 600000);
		CHECK(c->relay.bounce.nhops == 2);
		if (c->relay.bounce.nhops == 2) {
			CHECK_STR_EQ(c->relay.bounce.hops[0].text, "smtp://192.0.2.9:25");
			CHECK_STR_EQ(c->relay.bounce.hops[1].text, "smtp+tls://[2001:db8::9]:587");
		}
		CHECK(c->relay.bounce.noverify && !c->relay.bounce.ca);
		CHECK(c->relay.bounce.line == 11 && c->relay.bounce.col == 8);
	}
	conf_free(c);

	/* routes on accept rules: one hop, fail-over in order, ca, noverify */
	c = PARSE_OK("table domains { example.com }\n"
		     "accept from any for domain <domains> relay via \"lmtp://127.0.0.1:24\"\n"
		     "accept from local for domain example.org relay via lmtp:/run/dovecot/lmtp\n"
		     "accept from authenticated for any relay via \"smtp://10.0.0.1:25\", "
		     "\"smtp://10.0.0.2:25\"\n"
		     "accept from any for domain b.example relay via smtp+tls://10.0.0.3 ca \"c.pem\"\n"
		     "accept from any for domain c.example relay via smtps://[::1]:4650 noverify\n"
		     "accept from any for domain d.example recipient <domains> relay via smtp://[::1]\n"
		     "accept from any for domain e.example\n");
	CHECK(c && c->nrules == 7);
	if (c && c->nrules == 7) {
		const struct conf_rule *r = c->rules;
		CHECK(r[0].relay.nhops == 1 && r[0].relay.hops[0].proto == RELAY_PROTO_LMTP);
		CHECK_STR_EQ(r[0].relay.hops[0].text, "lmtp://127.0.0.1:24");
		CHECK(r[0].relay.line == 2 && r[0].relay.col == 38);
		CHECK(r[1].relay.nhops == 1 && r[1].relay.hops[0].unix_socket);
		CHECK_STR_EQ(r[1].relay.hops[0].path, "/run/dovecot/lmtp");
		CHECK(r[2].relay.nhops == 2);
		if (r[2].relay.nhops == 2) {
			CHECK_STR_EQ(r[2].relay.hops[0].text, "smtp://10.0.0.1:25");
			CHECK_STR_EQ(r[2].relay.hops[1].text, "smtp://10.0.0.2:25");
		}
		CHECK(r[3].relay.hops[0].tls == RELAY_TLS_STARTTLS);
		CHECK_STR_EQ(r[3].relay.ca, "c.pem");
		CHECK(!r[3].relay.noverify);
		CHECK(r[4].relay.hops[0].tls == RELAY_TLS_IMPLICIT && r[4].relay.noverify);
		CHECK_STR_EQ(r[5].recipient_table, "domains");
		CHECK_STR_EQ(r[5].relay.hops[0].text, "smtp://[::1]:25");
		CHECK(r[6].relay.nhops == 0);
	}
	conf_free(c);
	/* sixteen hops at most */
	{
		char text[4096] = "accept from any for any relay via smtp://10.0.0.1";
		for (int i = 2; i <= 16; i++)
			snprintf(text + strlen(text), sizeof text - strlen(text), ", smtp://10.0.0.%d", i);
		strcat(text, "\n");
		c = PARSE_OK(text);
		CHECK(c && c->rules[0].relay.nhops == 16);
		conf_free(c);
		size_t col = strlen(text) + 2; /* where the 17th starts, after ", " */
		text[strlen(text) - 1] = '\0';
		strcat(text, ", smtp://10.0.0.17\n");
		char want[128];
		snprintf(want, sizeof want, "mxd.conf:1:%zu: more than 16 next hops\n", col);
		PARSE_ERR(text, want);
	}

	/* errors in routes, at the byte they are about */
	PARSE_ERR("accept from any for any relay\n", "mxd.conf:1:30: expected \"via\" after \"relay\"\n");
	PARSE_ERR("accept from any for any relay to smtp://1.2.3.4\n",
		  "mxd.conf:1:31: expected \"via\" after \"relay\"\n");
	PARSE_ERR("accept from any for any relay via\n", "mxd.conf:1:34: expected a next-hop URL\n");
	PARSE_ERR("accept from any for any relay via \"\"\n", "mxd.conf:1:35: expected a next-hop URL\n");
	PARSE_ERR("accept from any for any relay via smtp://1.2.3.4,\n",
		  "mxd.conf:1:50: expected a next-hop URL\n");
	PARSE_ERR("accept from any for any relay via http://1.2.3.4\n",
		  "mxd.conf:1:35: invalid next hop \"http://1.2.3.4\": unknown next-hop scheme "
		  "(lmtp://, lmtp:/socket, smtp://, smtp+tls:// or smtps://)\n");
	PARSE_ERR("accept from any for any relay via smtp://mx.example.com\n",
		  "mxd.conf:1:42: invalid next hop \"smtp://mx.example.com\": the host must be an IP "
		  "address literal or localhost (mxd makes no DNS lookups)\n");
	PARSE_ERR("accept from any for any relay via \"smtp://1.2.3.4:70000\"\n",
		  "mxd.conf:1:51: invalid next hop \"smtp://1.2.3.4:70000\": port out of range\n");
	PARSE_ERR("accept from any for any relay via smtp://10.0.0.1, smtp://[::1]:x\n",
		  "mxd.conf:1:65: invalid next hop \"smtp://[::1]:x\": expected a port number after "
		  "\":\"\n");
	PARSE_ERR("accept from any for any relay via smtp://10.0.0.1, smtp://10.0.0.1:25\n",
		  "mxd.conf:1:52: next hop \"smtp://10.0.0.1:25\" given twice\n");
	PARSE_ERR("accept from any for any relay via smtp://10.0.0.1 ca \"x.pem\"\n",
		  "mxd.conf:1:51: \"ca\" needs an smtp+tls:// or smtps:// next hop\n");
	PARSE_ERR("accept from any for any relay via lmtp://10.0.0.1 noverify\n",
		  "mxd.conf:1:51: \"noverify\" needs an smtp+tls:// or smtps:// next hop\n");
	PARSE_ERR("accept from any for any relay via smtps://10.0.0.1 ca x.pem noverify\n",
		  "mxd.conf:1:61: \"noverify\" conflicts with \"ca\"\n");
	PARSE_ERR("accept from any for any relay via smtps://10.0.0.1 noverify noverify\n",
		  "mxd.conf:1:61: duplicate option \"noverify\"\n");
	PARSE_ERR("accept from any for any relay via smtps://10.0.0.1 ca\n",
		  "mxd.conf:1:54: expected a CA file name\n");
	PARSE_ERR("accept from any for any relay via smtps://10.0.0.1 verify\n",
		  "mxd.conf:1:52: unexpected \"verify\"\n");
	PARSE_ERR("accept from any for any relay via smtp://10.0.0.1 relay via smtp://10.0.0.2\n",
		  "mxd.conf:1:51: unexpected \"relay\"\n");

	/* errors in global settings */
	PARSE_ERR("relay\n", "mxd.conf:1:6: expected a relay setting\n");
	PARSE_ERR("relay speed 1\n",
		  "mxd.conf:1:7: unknown relay setting \"speed\" (lifetime, retry, connections, "
		  "chunk-size, helo, ca or timeout)\n");
	PARSE_ERR("relay via smtp://1.2.3.4\n",
		  "mxd.conf:1:7: \"relay via\" belongs at the end of an accept rule (or \"bounce relay "
		  "via\" for DSNs)\n");
	PARSE_ERR("relay lifetime\n", "mxd.conf:1:15: expected a duration\n");
	PARSE_ERR("relay lifetime 5 days\n", "mxd.conf:1:18: unexpected \"days\"\n");
	PARSE_ERR("relay lifetime 5x\n",
		  "mxd.conf:1:16: invalid duration \"5x\" (a number with ms, s, m, h or d)\n");
	PARSE_ERR("relay lifetime 0d\n", "mxd.conf:1:16: a duration must be longer than 0\n");
	PARSE_ERR("relay lifetime 50d\n",
		  "mxd.conf:1:16: invalid duration \"50d\" (a number with ms, s, m, h or d)\n");
	PARSE_ERR("relay lifetime 1d\nrelay lifetime 2d\n",
		  "mxd.conf:2:7: duplicate \"relay lifetime\" (first set on line 1)\n");
	PARSE_ERR("relay retry 1m\n", "mxd.conf:1:13: expected FIRST..MAX retry delays (e.g. 1m..4h)\n");
	PARSE_ERR("relay retry\n", "mxd.conf:1:12: expected FIRST..MAX retry delays (e.g. 1m..4h)\n");
	PARSE_ERR("relay retry 1m..\n",
		  "mxd.conf:1:13: invalid retry delays \"1m..\" (durations above 0, e.g. 1m..4h)\n");
	PARSE_ERR("relay retry 0s..4h\n",
		  "mxd.conf:1:13: invalid retry delays \"0s..4h\" (durations above 0, e.g. 1m..4h)\n");
	PARSE_ERR("relay retry 5h..4h\n", "mxd.conf:1:13: first retry delay longer than the maximum\n");
	PARSE_ERR("relay retry 1m..1h\nrelay retry 1m..1h\n",
		  "mxd.conf:2:7: duplicate \"relay retry\" (first set on line 1)\n");
	PARSE_ERR("relay connections 0\n", "mxd.conf:1:19: relay connections below 1\n");
	PARSE_ERR("relay connections 10001\n", "mxd.conf:1:19: relay connections above 10000\n");
	PARSE_ERR("relay connections many\n", "mxd.conf:1:19: expected a number\n");
	PARSE_ERR("relay chunk-size 1000\n", "mxd.conf:1:18: relay chunk-size below 1024 bytes\n");
	PARSE_ERR("relay chunk-size 1q\n",
		  "mxd.conf:1:18: invalid size \"1q\" (a number with k, M or G)\n");
	PARSE_ERR("relay helo bad/name\n", "mxd.conf:1:12: invalid hostname \"bad/name\"\n");
	PARSE_ERR("relay helo\n", "mxd.conf:1:11: expected a host name\n");
	PARSE_ERR("relay helo a.example\nrelay helo b.example\n",
		  "mxd.conf:2:7: duplicate \"relay helo\" (first set on line 1)\n");
	PARSE_ERR("relay ca\n", "mxd.conf:1:9: expected a CA file name\n");
	PARSE_ERR("relay ca a\nrelay ca b\n", "mxd.conf:2:7: duplicate \"relay ca\" (first set on line 1)\n");
	PARSE_ERR("relay timeout\n", "mxd.conf:1:14: expected a relay timeout name\n");
	PARSE_ERR("relay timeout data 1m\n",
		  "mxd.conf:1:15: unknown relay timeout \"data\" (connect, greeting, command or "
		  "data-end)\n");
	PARSE_ERR("relay timeout connect 0s\n", "mxd.conf:1:23: a duration must be longer than 0\n");
	PARSE_ERR("relay timeout command 1m\nrelay timeout command 2m\n",
		  "mxd.conf:2:15: duplicate \"relay timeout command\" (first set on line 1)\n");
	/* the server's timeouts and the relay's are separate settings */
	c = PARSE_OK("timeout command 1m\nrelay timeout command 2m\n");
	CHECK(c && c->timeouts.command == 60000 && c->relay.timeout_command == 120000);
	conf_free(c);
	PARSE_ERR("bounce\n", "mxd.conf:1:7: expected \"relay\" after \"bounce\"\n");
	PARSE_ERR("bounce relay\n", "mxd.conf:1:13: expected \"via\" after \"relay\"\n");
	PARSE_ERR("bounce relay via smtp://1.2.3.4 noverify\n",
		  "mxd.conf:1:33: \"noverify\" needs an smtp+tls:// or smtps:// next hop\n");
	PARSE_ERR("bounce relay via smtp://1.2.3.4\nbounce relay via smtp://1.2.3.5\n",
		  "mxd.conf:2:1: duplicate \"bounce\" (first set on line 1)\n");
	/* several errors in one run, each at its place */
	c = parse("relay lifetime 0s\naccept from any for any relay via smtp://x\nrelay retry 2m..1m\n");
	CHECK(c == NULL);
	CHECK_STR_EQ(errtext, "mxd.conf:1:16: a duration must be longer than 0\n"
			      "mxd.conf:2:42: invalid next hop \"smtp://x\": the host must be an IP "
			      "address literal or localhost (mxd makes no DNS lookups)\n"
			      "mxd.conf:3:13: first retry delay longer than the maximum\n");
}

int main(void)
{
	buf_init(&errs, 1 << 20);
	char srcdir[4096];
	CHECK(getcwd(srcdir, sizeof srcdir) != NULL);

	/* Table files are read relative to the current directory: work in a
	 * scratch directory of our own. */
	char tmp[] = "/tmp/test_conf.XXXXXX";
	CHECK(mkdtemp(tmp) != NULL);
	CHECK(chdir(tmp) == 0);
	CHECK(mkdir("conf", 0700) == 0);
	write_file("conf/t1", "# addresses\n192.0.2.0/24\n  k#1 v # comment\n\n");
	FILE *f = fopen("conf/nul", "w");
	CHECK(f != NULL);
	if (f) {
		fwrite("a\nb\0c\n", 1, 6, f);
		fclose(f);
	}

	test_design_example();
	test_defaults();
	test_seed_pki_split();
	test_listen();
	test_tables();
	test_accept();
	test_relay();
	test_limits();
	test_ktls();
	test_abuse_settings();
	test_listen_proxy();
	test_listen_proxy_from();
	test_metrics();
	test_control();
	test_lexer();
	test_sizes();
	test_load();

	unlink("conf/t1");
	unlink("conf/nul");
	rmdir("conf");
	CHECK(chdir(srcdir) == 0);
	rmdir(tmp);
	test_default_config(srcdir);

	buf_free(&errs);
	return check_report("test_conf");
}
