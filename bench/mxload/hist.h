/* hist: a log-linear latency histogram in the manner of HdrHistogram.
 *
 * Fixed buckets, no allocation: values below 128 have a bucket each; above,
 * every power of two is cut into 64 equal buckets, so a reported value is
 * within 1/64 (1.6 %) of the true one over the whole uint64 range. Values
 * are nanoseconds here, but nothing in this file knows that. One histogram
 * per worker thread; the report merges them. */
#ifndef MXLOAD_HIST_H
#define MXLOAD_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7u                         /* 128 linear buckets at the bottom */
#define HIST_HALF (1u << (HIST_SUB_BITS - 1))     /* 64 buckets per power of two */
#define HIST_BUCKETS ((64u - HIST_SUB_BITS + 1u) * HIST_HALF + HIST_HALF) /* 3776 */

struct hist {
	uint64_t count;
	uint64_t sum;   /* for the mean; wraps only after 584 years of ns */
	uint64_t min;
	uint64_t max;
	uint64_t buckets[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t value);
void hist_merge(struct hist *into, const struct hist *from);
/* The value at quantile q (0..1): the upper edge of the bucket holding it,
 * never above the recorded maximum. 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);

/* Exposed for the self-check in hist.c's callers and tests. */
unsigned hist_index(uint64_t value);
uint64_t hist_bucket_low(unsigned index);

#endif
