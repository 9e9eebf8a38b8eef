/* test_policy: accept rules, first match, address and name tables. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "conf.h"
#include "policy.h"

static struct buf errs;
static char errtext[16384];

/* Config text → policy; *cp receives the config (free it after). */
static struct policy *build(const char *text, struct conf **cp)
{
	buf_reset(&errs);
	errtext[0] = '\0';
	struct conf *c = conf_parse("mxd.conf", text, strlen(text), &errs);
	*cp = c;
	struct policy *p = c ? policy_build(c, &errs) : NULL;
	size_t n = errs.len < sizeof errtext - 1 ? errs.len : sizeof errtext - 1;
	if (n)
		memcpy(errtext, errs.data, n);
	errtext[n] = '\0';
	return p;
}

static struct policy *build_ok(const char *text, struct conf **cp, int line)
{
	struct policy *p = build(text, cp);
	if (!p)
		fprintf(stderr, "test_policy.c:%d: build failed:\n%s", line, errtext);
	CHECK(p != NULL);
	return p;
}
#define BUILD_OK(text, cp) build_ok(text, cp, __LINE__)

static void build_err(const char *text, const char *want, int line)
{
	struct conf *c;
	struct policy *p = build(text, &c);
	int ok = p == NULL && strcmp(errtext, want) == 0;
	if (!ok)
		fprintf(stderr, "test_policy.c:%d: want:\n  %sgot:\n  %s", line, want, errtext);
	CHECK(ok);
	policy_free(p);
	conf_free(c);
}
#define BUILD_ERR(text, want) build_err(text, want, __LINE__)

static struct smtp_peer peer(const char *addr)
{
	struct smtp_peer pr;
	memset(&pr, 0, sizeof pr);
	struct sockaddr_in *in4 = (struct sockaddr_in *)&pr.addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&pr.addr;
	if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		pr.addr_len = sizeof *in4;
	} else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		pr.addr_len = sizeof *in6;
	} else {
		fprintf(stderr, "bad test address %s\n", addr);
		abort();
	}
	snprintf(pr.addr_str, sizeof pr.addr_str, "%s", addr);
	return pr;
}

static enum policy_verdict rcpt_from(const struct policy *p, const char *addr, const char *rcpt)
{
	struct smtp_peer pr = peer(addr);
	return policy_check_rcpt(p, &pr, rcpt);
}

static bool in_table(const struct policy *p, const char *table, const char *addr)
{
	struct smtp_peer pr = peer(addr);
	return policy_addr_in_table(p, table, &pr.addr);
}

/* ------------------------------------------------------------------ */

static void test_first_match(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table nets { 192.0.2.0/24 }\n"
				    "table doms { example.com }\n"
				    "table users { alice@example.com }\n"
				    "accept from <nets> for domain <doms> recipient <users>\n"
				    "accept from any for domain <doms>\n",
				    &c);
	if (p) {
		/* the first rule matches and decides: unknown user, even though
		 * the second rule would accept */
		CHECK(rcpt_from(p, "192.0.2.9", "bob@example.com") == POLICY_UNKNOWN_USER);
		CHECK(rcpt_from(p, "192.0.2.9", "alice@example.com") == POLICY_ACCEPT);
		/* not from <nets>: the first rule does not match, the second does */
		CHECK(rcpt_from(p, "198.51.100.1", "bob@example.com") == POLICY_ACCEPT);
		CHECK(rcpt_from(p, "198.51.100.1", "bob@example.net") == POLICY_RELAY_DENIED);
		CHECK(rcpt_from(p, "192.0.2.9", "bob@example.net") == POLICY_RELAY_DENIED);
	}
	policy_free(p);
	conf_free(c);

	/* swapped order: the permissive rule first wins */
	p = BUILD_OK("table nets { 192.0.2.0/24 }\n"
		     "table doms { example.com }\n"
		     "table users { alice@example.com }\n"
		     "accept from any for domain <doms>\n"
		     "accept from <nets> for domain <doms> recipient <users>\n",
		     &c);
	if (p)
		CHECK(rcpt_from(p, "192.0.2.9", "bob@example.com") == POLICY_ACCEPT);
	policy_free(p);
	conf_free(c);
}

static void test_from(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("accept from local for any\n", &c);
	if (p) {
		struct smtp_peer pr = peer("127.0.0.1");
		CHECK(policy_check_rcpt(p, &pr, "x@anywhere.example") == POLICY_RELAY_DENIED);
		pr.is_local = true;
		CHECK(policy_check_rcpt(p, &pr, "x@anywhere.example") == POLICY_ACCEPT);
		pr.authenticated = true;
		CHECK(policy_check_rcpt(p, &pr, "x@anywhere.example") == POLICY_ACCEPT);
		CHECK(policy_check_rcpt(p, NULL, "x@anywhere.example") == POLICY_RELAY_DENIED);
	}
	policy_free(p);
	conf_free(c);

	p = BUILD_OK("accept from authenticated for any\n", &c);
	if (p) {
		struct smtp_peer pr = peer("203.0.113.5");
		pr.is_local = true;
		CHECK(policy_check_rcpt(p, &pr, "x@y.example") == POLICY_RELAY_DENIED);
		pr.is_local = false;
		pr.authenticated = true;
		CHECK(policy_check_rcpt(p, &pr, "x@y.example") == POLICY_ACCEPT);
	}
	policy_free(p);
	conf_free(c);

	p = BUILD_OK("accept from any for any\n", &c);
	if (p) {
		CHECK(rcpt_from(p, "203.0.113.5", "x@y.example") == POLICY_ACCEPT);
		CHECK(rcpt_from(p, "2001:db8::5", "nodomain") == POLICY_ACCEPT);
		CHECK(policy_check_rcpt(p, NULL, "x@y.example") == POLICY_ACCEPT);
	}
	policy_free(p);
	conf_free(c);
}

static void test_cidr_v4(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table n24 { 192.0.2.0/24 }\n"
				    "table n25 { 10.0.0.0/25 }\n"
				    "table host { 198.51.100.7/32, 203.0.113.9 }\n"
				    "table all4 { 0.0.0.0/0 }\n"
				    "table sloppy { 10.1.2.3/8 }\n"
				    "table mapped { ::ffff:172.16.0.0/108 }\n"
				    "table names { example.com }\n"
				    "accept from <n24> for any\n"
				    "accept from <n25> for any\n"
				    "accept from <host> for any\n"
				    "accept from <all4> for any\n"
				    "accept from <sloppy> for any\n"
				    "accept from <mapped> for any\n",
				    &c);
	if (!p) {
		conf_free(c);
		return;
	}
	CHECK(in_table(p, "n24", "192.0.2.0"));
	CHECK(in_table(p, "n24", "192.0.2.255"));
	CHECK(!in_table(p, "n24", "192.0.3.0"));
	CHECK(!in_table(p, "n24", "192.0.1.255"));
	CHECK(in_table(p, "n25", "10.0.0.0"));
	CHECK(in_table(p, "n25", "10.0.0.127"));
	CHECK(!in_table(p, "n25", "10.0.0.128"));
	CHECK(!in_table(p, "n25", "10.0.1.1"));
	CHECK(in_table(p, "host", "198.51.100.7"));
	CHECK(!in_table(p, "host", "198.51.100.6"));
	CHECK(!in_table(p, "host", "198.51.100.8"));
	CHECK(in_table(p, "host", "203.0.113.9"));
	CHECK(!in_table(p, "host", "203.0.113.8"));
	CHECK(in_table(p, "all4", "0.0.0.0"));
	CHECK(in_table(p, "all4", "255.255.255.255"));
	CHECK(!in_table(p, "all4", "::"));
	CHECK(!in_table(p, "all4", "2001:db8::1"));
	/* host bits after the prefix are ignored */
	CHECK(in_table(p, "sloppy", "10.255.255.255"));
	CHECK(in_table(p, "sloppy", "10.0.0.0"));
	CHECK(!in_table(p, "sloppy", "11.0.0.0"));
	/* an IPv4-mapped peer (dual-stack socket) matches IPv4 entries */
	CHECK(in_table(p, "n24", "::ffff:192.0.2.77"));
	CHECK(!in_table(p, "n24", "::ffff:192.0.3.77"));
	/* an IPv4-mapped entry matches IPv4 peers: /108 is /12 */
	CHECK(in_table(p, "mapped", "172.31.255.255"));
	CHECK(in_table(p, "mapped", "::ffff:172.16.0.1"));
	CHECK(!in_table(p, "mapped", "172.32.0.0"));
	/* unknown table, non-address table */
	CHECK(!in_table(p, "nope", "192.0.2.1"));
	CHECK(!in_table(p, "names", "192.0.2.1"));
	CHECK(rcpt_from(p, "192.0.2.1", "x@y.example") == POLICY_ACCEPT);
	policy_free(p);
	conf_free(c);

	/* a peer of no family matches no table */
	p = BUILD_OK("table all4 { 0.0.0.0/0, ::/0 }\naccept from <all4> for any\n", &c);
	if (p) {
		struct smtp_peer pr;
		memset(&pr, 0, sizeof pr);
		CHECK(policy_check_rcpt(p, &pr, "x@y.example") == POLICY_RELAY_DENIED);
		CHECK(!policy_addr_in_table(p, "all4", &pr.addr));
	}
	policy_free(p);
	conf_free(c);
}

static void test_cidr_v6(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table doc { 2001:db8::/32 }\n"
				    "table lo { ::1/128 }\n"
				    "table bare { [2001:db8::25] }\n"
				    "table all6 { ::/0 }\n"
				    "table n127 { 2001:db8::/127 }\n"
				    "table n65 { 2001:db8:0:0:8000::/65 }\n"
				    "accept from <doc> for any\n"
				    "accept from <lo> for any\n"
				    "accept from <bare> for any\n"
				    "accept from <all6> for any\n"
				    "accept from <n127> for any\n"
				    "accept from <n65> for any\n",
				    &c);
	if (!p) {
		conf_free(c);
		return;
	}
	CHECK(in_table(p, "doc", "2001:db8::"));
	CHECK(in_table(p, "doc", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
	CHECK(!in_table(p, "doc", "2001:db9::"));
	CHECK(!in_table(p, "doc", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
	CHECK(!in_table(p, "doc", "32.1.13.184")); /* same first bytes as IPv4 */
	CHECK(in_table(p, "lo", "::1"));
	CHECK(!in_table(p, "lo", "::2"));
	CHECK(!in_table(p, "lo", "::"));
	CHECK(!in_table(p, "lo", "127.0.0.1"));
	CHECK(in_table(p, "bare", "2001:db8::25"));
	CHECK(!in_table(p, "bare", "2001:db8::26"));
	CHECK(in_table(p, "all6", "::"));
	CHECK(in_table(p, "all6", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
	CHECK(!in_table(p, "all6", "10.0.0.1"));
	CHECK(!in_table(p, "all6", "::ffff:10.0.0.1")); /* that is IPv4 */
	CHECK(in_table(p, "n127", "2001:db8::"));
	CHECK(in_table(p, "n127", "2001:db8::1"));
	CHECK(!in_table(p, "n127", "2001:db8::2"));
	CHECK(in_table(p, "n65", "2001:db8:0:0:8000::"));
	CHECK(in_table(p, "n65", "2001:db8:0:0:ffff:ffff:ffff:ffff"));
	CHECK(!in_table(p, "n65", "2001:db8:0:0:7fff:ffff:ffff:ffff"));
	CHECK(!in_table(p, "n65", "2001:db8:0:1:8000::"));
	CHECK(rcpt_from(p, "2001:db8::77", "x@y.example") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "10.0.0.1", "x@y.example") == POLICY_RELAY_DENIED);
	policy_free(p);
	conf_free(c);
}

static void test_bad_cidr(void)
{
	BUILD_ERR("table nets { 10.0.0.0/33 }\naccept from <nets> for any\n",
		  "mxd.conf:1:14: table \"nets\": invalid address or CIDR \"10.0.0.0/33\"\n");
	/* every bad entry is reported, each at its place */
	BUILD_ERR("table nets { 1.2.3.4/,\n  ::/129, 10.0.0/8,\n"
		  "  nonsense, 10.0.0.0/+8, 10.0.0.0/008x, 192.0.2.1 }\n"
		  "accept from <nets> for any\n",
		  "mxd.conf:1:14: table \"nets\": invalid address or CIDR \"1.2.3.4/\"\n"
		  "mxd.conf:2:3: table \"nets\": invalid address or CIDR \"::/129\"\n"
		  "mxd.conf:2:11: table \"nets\": invalid address or CIDR \"10.0.0/8\"\n"
		  "mxd.conf:3:3: table \"nets\": invalid address or CIDR \"nonsense\"\n"
		  "mxd.conf:3:13: table \"nets\": invalid address or CIDR \"10.0.0.0/+8\"\n"
		  "mxd.conf:3:26: table \"nets\": invalid address or CIDR \"10.0.0.0/008x\"\n");
	/* from a file: the file's own line */
	FILE *f = fopen("nets.txt", "w");
	CHECK(f != NULL);
	if (f) {
		fputs("# trusted\n192.0.2.0/24\n  192.0.2.300\n", f);
		fclose(f);
	}
	BUILD_ERR("table nets file:nets.txt\naccept from <nets> for any\n",
		  "nets.txt:3:3: table \"nets\": invalid address or CIDR \"192.0.2.300\"\n");
	unlink("nets.txt");
	/* a table of names is fine when nothing uses it as addresses */
	struct conf *c;
	struct policy *p = BUILD_OK("table d { example.com }\naccept from any for domain <d>\n", &c);
	policy_free(p);
	conf_free(c);
	/* the same table used as "from" is not */
	BUILD_ERR("table d { example.com }\naccept from <d> for domain <d>\n",
		  "mxd.conf:1:11: table \"d\": invalid address or CIDR \"example.com\"\n");
}

static bool proxy_ok(const struct policy *p, const struct conf_listener *l, const char *addr)
{
	struct smtp_peer pr = peer(addr);
	return policy_proxy_peer_allowed(p, l, &pr.addr);
}

/* proxy-from: whose PROXY header each listener believes. */
static void test_proxy_from(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table lbs { 10.1.0.0/16, 2001:db8::7 }\n"
				    "listen on 127.0.0.1 port 2525 proxy-v2\n"
				    "listen on 127.0.0.1 port 2526 proxy-v2 proxy-from any\n"
				    "listen on 127.0.0.1 port 2527 proxy-v2 proxy-from <lbs>\n"
				    "listen on 127.0.0.1 port 2528 proxy-v1 proxy-from { 127.0.0.2 }\n",
				    &c);
	if (p && c->nlisteners == 4) {
		const struct conf_listener *l = c->listeners;
		/* default: the loopback only */
		CHECK(proxy_ok(p, &l[0], "127.0.0.1"));
		CHECK(proxy_ok(p, &l[0], "127.200.0.3"));
		CHECK(proxy_ok(p, &l[0], "::1"));
		CHECK(proxy_ok(p, &l[0], "::ffff:127.0.0.1"));
		CHECK(!proxy_ok(p, &l[0], "10.1.2.3"));
		CHECK(!proxy_ok(p, &l[0], "::2"));
		/* any */
		CHECK(proxy_ok(p, &l[1], "198.51.100.1"));
		CHECK(proxy_ok(p, &l[1], "2001:db8::1"));
		/* a table: its networks, nothing else (not even the loopback) */
		CHECK(proxy_ok(p, &l[2], "10.1.255.255"));
		CHECK(proxy_ok(p, &l[2], "::ffff:10.1.0.9"));
		CHECK(proxy_ok(p, &l[2], "2001:db8::7"));
		CHECK(!proxy_ok(p, &l[2], "10.2.0.1"));
		CHECK(!proxy_ok(p, &l[2], "2001:db8::8"));
		CHECK(!proxy_ok(p, &l[2], "127.0.0.1"));
		/* a literal list: one loopback address and not its neighbour */
		CHECK(proxy_ok(p, &l[3], "127.0.0.2"));
		CHECK(!proxy_ok(p, &l[3], "127.0.0.3"));
		CHECK(!proxy_ok(p, &l[3], "127.0.0.1"));
	}
	policy_free(p);
	conf_free(c);

	/* a config built by other means naming a table that is not there */
	p = BUILD_OK("listen on 127.0.0.1 port 2525 proxy-v2\n", &c);
	policy_free(p);
	if (c && c->nlisteners == 1) {
		c->listeners[0].proxy_from = CONF_PROXY_FROM_TABLE;
		c->listeners[0].proxy_from_table = strdup("gone");
		buf_reset(&errs);
		p = policy_build(c, &errs);
		CHECK(p == NULL);
		buf_append(&errs, "", 1);
		CHECK(strcmp(errs.data, "mxd.conf:1:1: unknown table \"gone\"\n") == 0);
		policy_free(p);
	}
	conf_free(c);
}

static void test_domains(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table doms { Example.COM, example.org }\n"
				    "accept from any for domain <doms>\n"
				    "accept from any for domain example.net\n",
				    &c);
	if (!p) {
		conf_free(c);
		return;
	}
	CHECK(rcpt_from(p, "192.0.2.1", "user@example.com") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "User@EXAMPLE.com") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "user@example.org") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "user@EXAMPLE.NET") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "user@example.co") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "user@example.comm") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "user@sub.example.com") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "user@") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "user") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "") == POLICY_RELAY_DENIED);
	/* the domain is after the last '@' */
	CHECK(rcpt_from(p, "192.0.2.1", "\"a@b\"@example.com") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "a@example.com@evil.example") == POLICY_RELAY_DENIED);
	/* bare postmaster is always ours (RFC 5321 4.5.1) */
	CHECK(rcpt_from(p, "192.0.2.1", "postmaster") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "PostMaster") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "postmasters") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "postmaster@evil.example") == POLICY_RELAY_DENIED);
	policy_free(p);
	conf_free(c);

	/* a large table: every member found, no false hits */
	struct buf t;
	buf_init(&t, 0);
	buf_append_str(&t, "table big {");
	for (int i = 0; i < 5000; i++)
		buf_printf(&t, " d%d.example", i);
	buf_append_str(&t, " }\naccept from any for domain <big>\n");
	buf_append(&t, "", 1);
	p = BUILD_OK(t.data, &c);
	if (p) {
		int hits = 0, misses = 0;
		char r[64];
		for (int i = 0; i < 5000; i++) {
			snprintf(r, sizeof r, "u@D%d.EXAMPLE", i);
			hits += policy_check_rcpt(p, NULL, r) == POLICY_ACCEPT;
			snprintf(r, sizeof r, "u@d%d.example", i + 5000);
			misses += policy_check_rcpt(p, NULL, r) == POLICY_RELAY_DENIED;
		}
		CHECK(hits == 5000);
		CHECK(misses == 5000);
	}
	policy_free(p);
	conf_free(c);
	buf_free(&t);
}

static void test_recipients(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table doms { example.com, example.org }\n"
				    "table users { alice@example.com, Bob@Example.com, @example.org }\n"
				    "accept from any for domain <doms> recipient <users>\n",
				    &c);
	if (!p) {
		conf_free(c);
		return;
	}
	CHECK(rcpt_from(p, "192.0.2.1", "alice@example.com") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "ALICE@EXAMPLE.COM") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "bob@example.com") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "carol@example.com") == POLICY_UNKNOWN_USER);
	CHECK(rcpt_from(p, "192.0.2.1", "alic@example.com") == POLICY_UNKNOWN_USER);
	/* "@domain" accepts every user of that domain */
	CHECK(rcpt_from(p, "192.0.2.1", "anyone@example.org") == POLICY_ACCEPT);
	CHECK(rcpt_from(p, "192.0.2.1", "anyone@Example.Org") == POLICY_ACCEPT);
	/* not our domain: relay denied, not unknown user */
	CHECK(rcpt_from(p, "192.0.2.1", "alice@example.net") == POLICY_RELAY_DENIED);
	CHECK(rcpt_from(p, "192.0.2.1", "postmaster") == POLICY_ACCEPT);
	policy_free(p);
	conf_free(c);

	/* recipient table with "for any" */
	p = BUILD_OK("table users { a@x.example }\naccept from local for any recipient <users>\n", &c);
	if (p) {
		struct smtp_peer pr = peer("127.0.0.1");
		pr.is_local = true;
		CHECK(policy_check_rcpt(p, &pr, "a@x.example") == POLICY_ACCEPT);
		CHECK(policy_check_rcpt(p, &pr, "b@y.example") == POLICY_UNKNOWN_USER);
		pr.is_local = false;
		CHECK(policy_check_rcpt(p, &pr, "a@x.example") == POLICY_RELAY_DENIED);
	}
	policy_free(p);
	conf_free(c);
}

static void test_empty_and_hand_built(void)
{
	struct conf *c;
	struct policy *p = BUILD_OK("table d { example.com }\n", &c);
	if (p) {
		CHECK(rcpt_from(p, "127.0.0.1", "u@example.com") == POLICY_RELAY_DENIED);
		CHECK(rcpt_from(p, "127.0.0.1", "postmaster") == POLICY_RELAY_DENIED);
	}
	policy_free(p);
	conf_free(c);

	/* a config not from conf_parse: policy_build checks for itself */
	char *keys[] = {"192.0.2.0/24", "10.0.0.0/33", "ok.example", "\"q\"\x01"};
	int lines[] = {1, 2, 3, 4}, cols[] = {5, 6, 7, 8};
	struct conf_table tab = {0};
	tab.name = "nets";
	tab.kind = CONF_TABLE_LIST;
	tab.keys = keys;
	tab.n = 4;
	tab.entry_line = lines;
	tab.entry_col = cols;
	struct conf_rule from_rule = {0};
	from_rule.from = CONF_FROM_TABLE;
	from_rule.from_table = "nets";
	struct conf hand_t = {0};
	hand_t.path = "hand.conf";
	hand_t.tables = &tab;
	hand_t.ntables = 1;
	hand_t.rules = &from_rule;
	hand_t.nrules = 1;
	buf_reset(&errs);
	p = policy_build(&hand_t, &errs);
	CHECK(p == NULL);
	buf_append(&errs, "", 1);
	CHECK_STR_EQ(errs.data, "hand.conf:2:6: table \"nets\": invalid address or CIDR \"10.0.0.0/33\"\n"
				"hand.conf:3:7: table \"nets\": invalid address or CIDR \"ok.example\"\n"
				"hand.conf:4:8: table \"nets\": invalid address or CIDR \"\\\"q\\\"\\x01\"\n");
	policy_free(p);
	/* the same table used only for domains is fine */
	from_rule.from = CONF_FROM_ANY;
	from_rule.for_what = CONF_FOR_DOMAIN;
	from_rule.domain_table = "nets";
	buf_reset(&errs);
	p = policy_build(&hand_t, &errs);
	CHECK(p != NULL && errs.len == 0);
	if (p) {
		CHECK(policy_check_rcpt(p, NULL, "u@OK.example") == POLICY_ACCEPT);
		CHECK(policy_check_rcpt(p, NULL, "u@ok.example.") == POLICY_RELAY_DENIED);
		CHECK(!in_table(p, "nets", "192.0.2.1")); /* not all entries are addresses */
	}
	policy_free(p);

	CHECK(policy_valid_net("192.0.2.0/24"));
	CHECK(policy_valid_net("[2001:db8::1]"));
	CHECK(policy_valid_net("::/0"));
	CHECK(!policy_valid_net("192.0.2.0/"));
	CHECK(!policy_valid_net("/24"));
	CHECK(!policy_valid_net(""));
	CHECK(!policy_valid_net("[192.0.2.1"));
	CHECK(!policy_valid_net("192.0.2.1/1234"));

	/* a config not from conf_parse may name a table that is not there */
	struct conf_rule rule = {0};
	rule.from = CONF_FROM_ANY;
	rule.for_what = CONF_FOR_DOMAIN;
	rule.domain_table = "ghost";
	rule.line = 4;
	rule.col = 2;
	struct conf hand = {0};
	hand.path = "hand.conf";
	hand.rules = &rule;
	hand.nrules = 1;
	buf_reset(&errs);
	p = policy_build(&hand, &errs);
	CHECK(p == NULL);
	CHECK(check_contains(errs.data, errs.len, "hand.conf:4:2: unknown table \"ghost\"\n"));
	policy_free(NULL);
}

int main(void)
{
	buf_init(&errs, 1 << 20);
	char cwd[4096], tmp[] = "/tmp/test_policy.XXXXXX";
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	CHECK(mkdtemp(tmp) != NULL);
	CHECK(chdir(tmp) == 0);

	test_first_match();
	test_from();
	test_cidr_v4();
	test_cidr_v6();
	test_bad_cidr();
	test_proxy_from();
	test_domains();
	test_recipients();
	test_empty_and_hand_built();

	CHECK(chdir(cwd) == 0);
	rmdir(tmp);
	buf_free(&errs);
	return check_report("test_policy");
}
