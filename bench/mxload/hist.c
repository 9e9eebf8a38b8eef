#include "hist.h"

#include <assert.h>
#include <string.h>

unsigned hist_index(uint64_t v)
{
	if (v < 2u * HIST_HALF)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - (HIST_SUB_BITS - 1u); /* >= 1: v >> shift is in [64, 128) */
	unsigned idx = shift * HIST_HALF + (unsigned)(v >> shift);
	assert(idx < HIST_BUCKETS);
	return idx;
}

uint64_t hist_bucket_low(unsigned idx)
{
	assert(idx < HIST_BUCKETS);
	if (idx < 2u * HIST_HALF)
		return idx;
	unsigned shift = idx / HIST_HALF - 1u;
	uint64_t mant = idx - shift * HIST_HALF;
	return mant << shift;
}

static uint64_t bucket_high(unsigned idx)
{
	if (idx < 2u * HIST_HALF)
		return idx;
	unsigned shift = idx / HIST_HALF - 1u;
	return hist_bucket_low(idx) + ((uint64_t)1 << shift) - 1u;
}

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof *h);
	h->min = UINT64_MAX;
}

void hist_record(struct hist *h, uint64_t v)
{
	h->buckets[hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->buckets[i] += from->buckets[i];
	into->count += from->count;
	into->sum += from->sum;
	if (from->min < into->min)
		into->min = from->min;
	if (from->max > into->max)
		into->max = from->max;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	if (q <= 0)
		return h->min;
	/* the rank of the wanted sample, 1-based, rounded up */
	double want = q * (double)h->count;
	uint64_t rank = (uint64_t)want;
	if ((double)rank < want)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->buckets[i];
		if (seen >= rank) {
			uint64_t v = bucket_high(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}
