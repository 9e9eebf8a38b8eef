/* delivery_sched: the delivery worker's pure decisions (delivery.c): when
 * a recipient is due, which messages share a connection, whether a route
 * may open another connection, and when to look for retries again. No
 * I/O, no clock: the caller passes the time. */
#ifndef MXD_DELIVERY_SCHED_H
#define MXD_DELIVERY_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "conf.h"
#include "delivery_state.h"

/* Is the recipient to be tried now? (queued, or deferred and its next try
 * has come; finished, failed and expired ones are not) */
bool dsched_rcpt_due(const struct dlv_rcpt *rc, uint64_t now_s);

/* A route's identity across reloads: its hops' canonical URLs in order,
 * its CA file and noverify. Messages of one identity share connections;
 * two routes to the same hop checked differently never do. */
uint64_t dsched_route_key(const struct conf_route *via);

/* May a route with `open` connections, `starting` of them not yet ready
 * for a message (connecting, greeting, TLS), open one more for waiting
 * mail? One at a time, and at most `max`. */
bool dsched_may_open(unsigned open, unsigned starting, unsigned max);

/* The monotonic time (ms) at which a recipient whose next try is
 * next_try_s (unix seconds) is due, given the clocks now; never before
 * now_ms. */
uint64_t dsched_due_ms(uint64_t next_try_s, uint64_t now_s, uint64_t now_ms);

#endif
