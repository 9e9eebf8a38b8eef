/* test_delivery_sched: the delivery worker's pure decisions — which
 * recipients are due, which routes share connections, when a route may
 * open another connection, when a deferred recipient comes due. */
#include "check.h"
#include "delivery_sched.h"

#include <string.h>

static void test_rcpt_due(void)
{
	struct dlv_rcpt rc;
	memset(&rc, 0, sizeof rc);
	CHECK(dsched_rcpt_due(&rc, 1000)); /* queued: no record yet */
	rc.outcome = DLV_DEFERRED;
	rc.next_try = 1000;
	CHECK(dsched_rcpt_due(&rc, 1000));  /* its time has come */
	CHECK(dsched_rcpt_due(&rc, 5000));
	CHECK(!dsched_rcpt_due(&rc, 999));  /* not yet */
	enum dlv_outcome done[] = {DLV_DELIVERED, DLV_FAILED, DLV_BOUNCED, DLV_DROPPED, DLV_EXPIRED};
	for (size_t i = 0; i < sizeof done / sizeof done[0]; i++) {
		rc.outcome = done[i];
		rc.next_try = 0;
		CHECK(!dsched_rcpt_due(&rc, 5000)); /* never tried again */
	}
}

static struct relay_url url(const char *text)
{
	struct relay_url u;
	const char *why;
	size_t at;
	memset(&u, 0, sizeof u);
	CHECK(relay_url_parse(text, strlen(text), &u, &why, &at) == 0);
	return u;
}

static void test_route_key(void)
{
	struct relay_url a[2] = {url("smtp://10.0.0.1"), url("smtp://10.0.0.2")};
	struct relay_url b[2] = {url("smtp://10.0.0.1:25"), url("smtp://10.0.0.2:25")};
	struct relay_url rev[2] = {url("smtp://10.0.0.2"), url("smtp://10.0.0.1")};
	struct conf_route ra = {.hops = a, .nhops = 2}, rb = {.hops = b, .nhops = 2};
	struct conf_route rr = {.hops = rev, .nhops = 2}, r1 = {.hops = a, .nhops = 1};
	/* the same hops however written (canonical URLs): one pool */
	CHECK(dsched_route_key(&ra) == dsched_route_key(&rb));
	/* order is fail-over order: another route */
	CHECK(dsched_route_key(&ra) != dsched_route_key(&rr));
	CHECK(dsched_route_key(&ra) != dsched_route_key(&r1));
	/* the same hop checked differently never shares a connection */
	struct relay_url t = url("smtp+tls://127.0.0.1:2525");
	struct conf_route v = {.hops = &t, .nhops = 1};
	struct conf_route nv = {.hops = &t, .nhops = 1, .noverify = true};
	struct conf_route ca1 = {.hops = &t, .nhops = 1, .ca = (char *)"/etc/a.pem"};
	struct conf_route ca2 = {.hops = &t, .nhops = 1, .ca = (char *)"/etc/b.pem"};
	struct conf_route ca1b = {.hops = &t, .nhops = 1, .ca = (char *)"/etc/a.pem"};
	CHECK(dsched_route_key(&v) != dsched_route_key(&nv));
	CHECK(dsched_route_key(&v) != dsched_route_key(&ca1));
	CHECK(dsched_route_key(&ca1) != dsched_route_key(&ca2));
	CHECK(dsched_route_key(&ca1) == dsched_route_key(&ca1b));
	/* hop boundaries count: "ab" + "c" is not "a" + "bc" */
	struct relay_url u1[2] = {url("lmtp:/run/ab"), url("lmtp:/c")};
	struct relay_url u2[2] = {url("lmtp:/run/a"), url("lmtp:/bc")};
	struct conf_route q1 = {.hops = u1, .nhops = 2}, q2 = {.hops = u2, .nhops = 2};
	CHECK(dsched_route_key(&q1) != dsched_route_key(&q2));
}

static void test_may_open(void)
{
	CHECK(dsched_may_open(0, 0, 4));    /* mail waits, no connection */
	CHECK(dsched_may_open(3, 0, 4));    /* all busy, room for one more */
	CHECK(!dsched_may_open(4, 0, 4));   /* the pool is full */
	CHECK(!dsched_may_open(1, 1, 4));   /* one is still connecting: wait for it */
	CHECK(!dsched_may_open(0, 0, 0));
	CHECK(dsched_may_open(0, 0, 1));
	CHECK(!dsched_may_open(1, 0, 1));
}

static void test_due_ms(void)
{
	CHECK(dsched_due_ms(1060, 1000, 500000) == 560000); /* a minute on */
	CHECK(dsched_due_ms(1000, 1000, 500000) == 500000); /* now */
	CHECK(dsched_due_ms(900, 1000, 500000) == 500000);  /* overdue: now, not the past */
	CHECK(dsched_due_ms(0, 1000, 7) == 7);
}

int main(void)
{
	test_rcpt_due();
	test_route_key();
	test_may_open();
	test_due_ms();
	return check_report("test_delivery_sched");
}
