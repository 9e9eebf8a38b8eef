/* delivery_sched: the delivery worker's pure decisions, see delivery_sched.h. */
#include "delivery_sched.h"

#define FNV_OFFSET 1469598103934665603ull
#define FNV_PRIME 1099511628211ull

bool dsched_rcpt_due(const struct dlv_rcpt *rc, uint64_t now_s)
{
	return rc->outcome == DLV_QUEUED || (rc->outcome == DLV_DEFERRED && rc->next_try <= now_s);
}

/* FNV-1a of a string and a separator that no URL or path can hold */
static uint64_t mix(uint64_t h, const char *p)
{
	for (; *p; p++)
		h = (h ^ (uint8_t)*p) * FNV_PRIME;
	return (h ^ 0xffu) * FNV_PRIME;
}

uint64_t dsched_route_key(const struct conf_route *via)
{
	uint64_t h = FNV_OFFSET;
	for (size_t i = 0; i < via->nhops; i++)
		h = mix(h, via->hops[i].text);
	h = mix(h, via->noverify ? "noverify" : "verify");
	return mix(h, via->ca ? via->ca : "");
}

bool dsched_may_open(unsigned open, unsigned starting, unsigned max)
{
	return open < max && starting == 0;
}

uint64_t dsched_due_ms(uint64_t next_try_s, uint64_t now_s, uint64_t now_ms)
{
	return next_try_s > now_s ? now_ms + (next_try_s - now_s) * 1000u : now_ms;
}
