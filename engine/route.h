/* route: where a spooled message's recipients go, decided at delivery
 * time (docs/relay.md, "Routing").
 *
 * The accept rules of the config in force are evaluated again for each
 * recipient, with the client address, AUTH and TLS facts the spool record
 * kept: the first rule that accepts the recipient gives the route (the
 * same matching as at RCPT time, policy_match_rcpt). The delivery worker
 * groups a message's recipients by route (same kind and same `via`).
 * Pure: no allocation, no I/O. */
#ifndef MXD_ROUTE_H
#define MXD_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"
#include "policy.h"
#include "spool.h"

enum route_kind {
	ROUTE_RELAY,   /* deliver through via's next hops */
	ROUTE_KEEP,    /* the rule has no "relay via": stays in the spool, for
	                  external consumers, never delivered nor deleted */
	ROUTE_NONE,    /* no rule accepts it now (the config changed since):
	                  held like ROUTE_KEEP until a config routes it or the
	                  operator drops it; logged */
};

struct route {
	enum route_kind kind;
	const struct conf_route *via;     /* ROUTE_RELAY: a rule's or the bounce route */
	long rule;                        /* the deciding rule's index; -1: none, or
	                                     the bounce route */
	enum policy_verdict verdict;      /* ROUTE_NONE: relay denied or unknown user */
};

/* Longest recipient address routed; longer ones get ROUTE_NONE. */
#define ROUTE_ADDR_MAX 1023

/* The client as the rules see it, rebuilt from the spool record: address
 * (an unparsable or empty one has family AF_UNSPEC: only "from any" and
 * "from authenticated" can match), "from local", AUTH, TLS. */
void route_peer(const struct spool_record_view *v, struct smtp_peer *out);

/* A DSN mxd generated itself: the null sender and no client address (the
 * DSN writer spools them so). With "bounce relay via" they go there. */
bool route_is_dsn(const struct spool_record_view *v);

/* The route of one recipient (addr, len: no NUL needed). */
void route_rcpt(const struct conf *c, const struct policy *p, const struct spool_record_view *v,
		const struct smtp_peer *peer, const char *addr, size_t len, struct route *out);

/* Every recipient of the record, in order, into out[0..v->nrcpt).
 * Returns v->nrcpt, or -1 when cap is smaller. */
long route_message(const struct conf *c, const struct policy *p, const struct spool_record_view *v,
		   struct route *out, size_t cap);

/* Do two recipients travel together? (the same kind, the same next hops) */
bool route_same(const struct route *a, const struct route *b);

#endif
