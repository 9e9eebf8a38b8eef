/* delivery: a core's delivery worker (docs/relay.md, "The delivery worker").
 *
 * On the core's own thread and ring: the schedule of this core's
 * unfinished recipients (replayed from the segments and their .dlv files
 * at start, fed by the spool writer's commits), outbound connections to
 * the next hops (delivery_conn.c), the .dlv writer with group commit, the
 * operator's request files, and reclaiming finished segments.
 *
 * A core has a worker only while some rule (or the bounce route) has
 * "relay via": otherwise core->delivery is NULL and nothing here runs. */
#ifndef MXD_DELIVERY_H
#define MXD_DELIVERY_H

#include <stdbool.h>
#include <stdint.h>

struct core;
struct conf;
struct delivery;

/* Does this config deliver anything? (a rule or the bounce route with hops) */
bool delivery_configured(const struct conf *c);

/* The core's thread, before its loop: replay this core's segments (or,
 * after a binary upgrade, wait until the previous process has exited).
 * NULL when out of memory (logged): the core then runs without delivery. */
struct delivery *delivery_start(struct core *core);
/* The spool writer committed records up to `end` of segment seq. */
void delivery_committed(struct delivery *d, uint64_t seq, uint64_t end);
/* Once a second: deadlines, idle connections, retries due, requests,
 * reclaim, and the drain. */
void delivery_tick(struct delivery *d);
/* End of a loop turn: start what is due, and the .dlv batch. */
void delivery_flush(struct delivery *d);
/* Nothing in flight: no connection, no .dlv batch (the core may stop). */
bool delivery_idle(const struct delivery *d);
/* Unfinished recipients this core knows of (mxctl status, metrics). */
uint64_t delivery_queue_size(const struct delivery *d);
void delivery_stop(struct delivery *d);

#endif
