/* metrics: per-core counters, summed by a scraper thread into the
 * Prometheus text format.
 *
 * Shared nothing (DESIGN rule 1): every counter is a plain uint64_t in the
 * core's own struct core, written only by that core's thread. A write is a
 * relaxed atomic store of the incremented value (a plain mov on x86-64, no
 * lock prefix, no read-modify-write), so the scraper thread can read it
 * with a relaxed atomic load without a data race. The scraper may see a
 * snapshot a few increments old, never a torn value. */
#ifndef MXD_METRICS_H
#define MXD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum metrics_refusal {
	METRICS_REFUSED_CONN_LIMIT,
	METRICS_REFUSED_EARLY_TALKER,
	METRICS_REFUSED_BAD_PROXY,
	METRICS_REFUSED_PAUSED,       /* mxctl pause: at connect or at MAIL */
	METRICS_REFUSED_PROXY_NOT_ALLOWED, /* a proxy listener's peer not in proxy-from */
	METRICS_REFUSED_COUNT,
};

enum metrics_tls_version {
	METRICS_TLS_1_2,
	METRICS_TLS_1_3,
	METRICS_TLS_OTHER,
	METRICS_TLS_VERSION_COUNT,
};

enum metrics_reject {
	METRICS_REJECT_RELAY_DENIED,  /* 554 5.7.1 */
	METRICS_REJECT_UNKNOWN_USER,  /* 550 5.1.1 */
	METRICS_REJECT_SIZE,          /* 552 */
	METRICS_REJECT_SMUGGLING,     /* 521/550 5.6.0 */
	METRICS_REJECT_TIMEOUT,       /* 421 4.4.2 */
	METRICS_REJECT_OTHER,
	METRICS_REJECT_COUNT,
};

/* Spool commit latency buckets, in microseconds (0.1 ms .. 1000 ms). */
#define METRICS_LATENCY_BUCKETS 14
/* Group-commit batch size buckets: 1, 2, 4, ... 1024. */
#define METRICS_BATCH_BUCKETS 11

struct metrics_histogram {
	uint64_t bucket[16];          /* per bucket (not cumulative); last: +Inf */
	uint64_t sum;                 /* in the histogram's unit (us or messages) */
	uint64_t count;
};

struct core_metrics {
	uint64_t connections;                 /* accepted sockets */
	uint64_t connections_open;            /* gauge */
	uint64_t refused[METRICS_REFUSED_COUNT];
	uint64_t sessions_closed[3];          /* none, userspace, ktls */
	uint64_t tls_ok[METRICS_TLS_VERSION_COUNT];
	uint64_t tls_failed;
	uint64_t messages;
	uint64_t message_bytes;
	uint64_t replies[4];                  /* 2xx 3xx 4xx 5xx */
	uint64_t rejects[METRICS_REJECT_COUNT];
	struct metrics_histogram commit_latency; /* microseconds */
	struct metrics_histogram batch_size;     /* messages */
	uint64_t busy_ns;                     /* loop time outside submit_and_wait */
	/* delivery (delivery.c) */
	uint64_t relay_outcomes[4];           /* delivered, deferred, failed, expired */
	uint64_t relay_connections;           /* outbound connections established */
	uint64_t relay_tls_path[2];           /* outbound TLS: userspace, ktls (TX) */
	uint64_t relay_queue;                 /* gauge: unfinished recipients */
	uint64_t relay_dsns;                  /* DSNs spooled */
	uint64_t relay_reclaimed;             /* segments removed, all finished */
};

/* The core thread's increment: a load and a relaxed store, no RMW. */
#define METRICS_ADD(field, n) \
	__atomic_store_n(&(field), (field) + (uint64_t)(n), __ATOMIC_RELAXED)
#define METRICS_INC(field) METRICS_ADD(field, 1)
#define METRICS_SET(field, v) __atomic_store_n(&(field), (uint64_t)(v), __ATOMIC_RELAXED)

void metrics_commit_latency(struct core_metrics *m, uint64_t us);
void metrics_batch_size(struct core_metrics *m, uint64_t n);
/* Counts the final reply lines ("NNN " at a line start) in bytes of
 * replies about to be sent. */
void metrics_count_replies(struct core_metrics *m, const char *data, size_t len);
/* The reject hook: classifies a 4xx/5xx reply. */
void metrics_count_reject(struct core_metrics *m, const char *reply);
enum metrics_tls_version metrics_tls_version(const char *name);

/* Scraper: the Prometheus text exposition of the sum over n cores. */
struct core;
int metrics_render(struct buf *out, const struct core *cores, unsigned n);
/* One uint64_t of struct core_metrics (at offset) summed over n cores, as
 * the scrape sums it (relaxed loads). */
uint64_t metrics_sum(const struct core *cores, unsigned n, size_t offset);
#define METRICS_SUM(cores, n, field) \
	metrics_sum(cores, n, offsetof(struct core_metrics, field))

/* Serving thread: started by main when "metrics listen on" is configured.
 * metrics_server_start binds (errors logged, -1); stop closes the socket
 * and joins the thread. */
struct conf_listener;
int metrics_server_start(const struct conf_listener *l, const struct core *cores,
			 unsigned ncores);
void metrics_server_stop(void);

#endif
