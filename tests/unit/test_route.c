/* test_route: delivery-time routing — the accept rules evaluated again
 * with what the spool record kept (client address, AUTH), the route of
 * the first rule that accepts, kept mail, mail no rule takes any more,
 * DSNs to the bounce route. */
#include "check.h"
#include "route.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char config[] =
	"table nets { 192.0.2.0/24, 2001:db8::/32 }\n"
	"table store { example.com, example.net }\n"
	"table users { a@example.net, @example.com }\n"
	"accept from local for domain example.org relay via lmtp:/run/lmtp\n"
	"accept from <nets> for domain <store> recipient <users> relay via \"lmtp://127.0.0.1:24\"\n"
	"accept from authenticated for any relay via smtp://10.0.0.1, smtp://10.0.0.2\n"
	"accept from any for domain keep.example\n"
	"accept from any for domain <store> relay via smtp+tls://[::1]:2525 noverify\n";

/* A decoded record for a client, AUTH state, sender and recipients; the
 * record's bytes live in *store. */
static void record(struct buf *store, const char *client, bool auth, const char *from,
		   const char *const *rcpts, uint32_t n, struct spool_record_view *v)
{
	struct smtp_peer peer;
	memset(&peer, 0, sizeof peer);
	snprintf(peer.addr_str, sizeof peer.addr_str, "%s", client);
	if (auth) {
		peer.authenticated = true;
		snprintf(peer.auth_user, sizeof peer.auth_user, "alice");
	}
	struct smtp_rcpt r[8];
	memset(r, 0, sizeof r);
	for (uint32_t i = 0; i < n; i++)
		r[i].addr = (char *)rcpts[i];
	struct smtp_envelope e;
	memset(&e, 0, sizeof e);
	e.helo = "h.example";
	e.mail_from = (char *)from;
	e.rcpts = r;
	e.nrcpt = n;
	struct spool_meta m = {.id = "0000000100000040", .env = &e, .peer = &peer};
	buf_reset(store);
	CHECK(spool_record_head(store, &m, 0) == 0);
	const void *parts[1] = {""};
	size_t lens[1] = {0};
	spool_record_seal(store, parts, lens, 1);
	CHECK(spool_record_decode((uint8_t *)store->data, store->len, v, NULL) == SPOOL_OK);
}

static void test_rules(const struct conf *c, const struct policy *p)
{
	struct buf store;
	buf_init(&store, 0);
	struct spool_record_view v;
	struct route rt[8];

	/* a client on the loopback, five recipients, five fates */
	const char *const r1[] = {"x@example.org", "a@example.net", "z@example.net",
				  "k@keep.example", "q@elsewhere.example"};
	record(&store, "127.0.0.1", false, "s@example.org", r1, 5, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 5);
	CHECK(rt[0].kind == ROUTE_RELAY && rt[0].rule == 0 && rt[0].via == &c->rules[0].relay);
	CHECK_STR_EQ(rt[0].via->hops[0].text, "lmtp:/run/lmtp");
	/* 127.0.0.1 is not in <nets>: a@example.net falls to the last rule */
	CHECK(rt[1].kind == ROUTE_RELAY && rt[1].rule == 4);
	CHECK_STR_EQ(rt[1].via->hops[0].text, "smtp+tls://[::1]:2525");
	CHECK(rt[2].kind == ROUTE_RELAY && rt[2].rule == 4);
	CHECK(route_same(&rt[1], &rt[2]) && !route_same(&rt[0], &rt[1]));
	CHECK(rt[3].kind == ROUTE_KEEP && rt[3].rule == 3 && rt[3].via == NULL);
	CHECK(rt[4].kind == ROUTE_NONE && rt[4].rule == -1 && rt[4].verdict == POLICY_RELAY_DENIED);
	CHECK(route_message(c, p, &v, rt, 4) == -1);

	/* from <nets>: its recipient table decides, a miss is an unknown user */
	const char *const r2[] = {"a@example.net", "b@example.net", "any@example.com",
				  "x@example.org", "postmaster"};
	record(&store, "192.0.2.77", false, "s@example.org", r2, 5, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 5);
	CHECK(rt[0].kind == ROUTE_RELAY && rt[0].rule == 1);
	CHECK_STR_EQ(rt[0].via->hops[0].text, "lmtp://127.0.0.1:24");
	CHECK(rt[1].kind == ROUTE_NONE && rt[1].rule == 1 && rt[1].verdict == POLICY_UNKNOWN_USER);
	CHECK(rt[2].kind == ROUTE_RELAY && rt[2].rule == 1); /* @example.com catch-all */
	CHECK(rt[3].kind == ROUTE_NONE);                     /* not local any more */
	/* postmaster matches every for-domain rule: the first one whose FROM fits */
	CHECK(rt[4].kind == ROUTE_RELAY && rt[4].rule == 1);

	/* IPv6 in the table, and a client that is IPv6 loopback */
	const char *const r3[] = {"a@example.net", "x@example.org"};
	record(&store, "2001:db8::5", false, "s@example.org", r3, 2, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 2);
	CHECK(rt[0].rule == 1 && rt[1].kind == ROUTE_NONE);
	record(&store, "::1", false, "s@example.org", r3, 2, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 2);
	CHECK(rt[1].kind == ROUTE_RELAY && rt[1].rule == 0);

	/* AUTH kept in the spool: relays anywhere, over two next hops */
	const char *const r4[] = {"friend@far.example"};
	record(&store, "203.0.113.9", true, "alice@example.org", r4, 1, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 1);
	CHECK(rt[0].kind == ROUTE_RELAY && rt[0].rule == 2 && rt[0].via->nhops == 2);
	record(&store, "203.0.113.9", false, "alice@example.org", r4, 1, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 1 && rt[0].kind == ROUTE_NONE);

	/* the peer the rules saw */
	struct smtp_peer peer;
	record(&store, "192.0.2.1", true, "s@example.org", r4, 1, &v);
	route_peer(&v, &peer);
	CHECK(peer.addr.ss_family == AF_INET && !peer.is_local && peer.authenticated);
	CHECK_STR_EQ(peer.addr_str, "192.0.2.1");
	CHECK_STR_EQ(peer.auth_user, "alice");
	record(&store, "not an address", false, "s@example.org", r4, 1, &v);
	route_peer(&v, &peer);
	CHECK(peer.addr.ss_family == AF_UNSPEC && !peer.is_local);

	/* an address too long to route */
	char longaddr[ROUTE_ADDR_MAX + 20];
	memset(longaddr, 'a', sizeof longaddr);
	snprintf(longaddr + sizeof longaddr - 13, 13, "@example.com");
	const char *const r5[] = {longaddr};
	record(&store, "192.0.2.1", false, "s@example.org", r5, 1, &v);
	CHECK(route_message(c, p, &v, rt, 8) == 1 && rt[0].kind == ROUTE_NONE);

	/* a DSN of our own (null sender, no client) with no bounce route:
	 * routed by the rules like any message */
	const char *const r6[] = {"s@example.com"};
	record(&store, "", false, "", r6, 1, &v);
	CHECK(route_is_dsn(&v));
	CHECK(route_message(c, p, &v, rt, 8) == 1);
	CHECK(rt[0].kind == ROUTE_RELAY && rt[0].rule == 4);
	/* a null sender from a real client is not ours */
	record(&store, "192.0.2.1", false, "", r6, 1, &v);
	CHECK(!route_is_dsn(&v));
	buf_free(&store);
}

static void test_bounce(void)
{
	struct buf errs;
	buf_init(&errs, 0);
	const char text[] = "accept from any for domain example.com relay via lmtp://127.0.0.1\n"
			    "bounce relay via smtp://192.0.2.25\n";
	struct conf *c = conf_parse("route.conf", text, strlen(text), &errs);
	CHECK(c != NULL);
	struct policy *p = c ? policy_build(c, &errs) : NULL;
	CHECK(p != NULL);
	if (!p) {
		conf_free(c);
		return;
	}
	struct buf store;
	buf_init(&store, 0);
	struct spool_record_view v;
	struct route rt[2];
	const char *const r[] = {"s@example.com", "t@elsewhere.example"};
	record(&store, "", false, "", r, 2, &v);
	CHECK(route_message(c, p, &v, rt, 2) == 2);
	for (int i = 0; i < 2; i++) {
		CHECK(rt[i].kind == ROUTE_RELAY && rt[i].rule == -1);
		CHECK(rt[i].via == &c->relay.bounce);
	}
	CHECK(route_same(&rt[0], &rt[1]));
	/* a client's message to the same recipient takes the rule */
	record(&store, "198.51.100.1", false, "x@example.org", r, 2, &v);
	CHECK(route_message(c, p, &v, rt, 2) == 2);
	CHECK(rt[0].kind == ROUTE_RELAY && rt[0].rule == 0 && rt[1].kind == ROUTE_NONE);
	buf_free(&store);
	buf_free(&errs);
	policy_free(p);
	conf_free(c);
}

int main(void)
{
	struct buf errs;
	buf_init(&errs, 0);
	struct conf *c = conf_parse("route.conf", config, strlen(config), &errs);
	if (!c)
		fprintf(stderr, "%.*s", (int)errs.len, errs.data);
	CHECK(c != NULL);
	struct policy *p = c ? policy_build(c, &errs) : NULL;
	CHECK(p != NULL);
	if (c && p)
		test_rules(c, p);
	policy_free(p);
	conf_free(c);
	buf_free(&errs);
	test_bounce();
	return check_report("test_route");
}
