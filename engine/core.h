/* core: one thread, one io_uring ring, pinned to one CPU.
 *
 * Everything a session touches lives on the core that accepted it: the
 * ring, the listeners' SO_REUSEPORT sockets, the connection pool, the spool
 * segment and the timers. The main thread talks to a core only through its
 * wake eventfd, its config mailbox and the draining flag. */
#ifndef MXD_CORE_H
#define MXD_CORE_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core_query.h"
#include "metrics.h"
#include "snapshot.h"
#include "spool_writer.h"

struct conn;

/* What a completion is for: the low bits of its user_data. Pointers carried
 * in user_data are at least 8-byte aligned. */
enum op_tag {
	OP_RECV = 0,     /* conn */
	OP_SEND = 1,     /* conn */
	OP_ACCEPT = 2,   /* core_listener */
	OP_TICK = 3,     /* core */
	OP_WAKE = 4,     /* core */
	OP_SPOOL = 5,    /* spool_writer: a write or the fsync of a batch */
	OP_CANCEL = 6,   /* nothing to do */
	OP_GREET = 7,    /* conn: its greeting-delay timer */
};
#define OP_TAG_MASK 7u

static inline uint64_t op_data(void *ptr, enum op_tag tag)
{
	return (uint64_t)(uintptr_t)ptr | (uint64_t)tag;
}

/* Config as seen by this core's sessions: each session counts itself on
 * the view it started with, and a view is dropped when it is no longer
 * current and its last session is gone. */
struct core_view {
	struct snapshot *snap;
	uint32_t sessions;
	struct core_view *next;
};

struct core_listener {
	struct core *core;
	unsigned index;   /* into snapshot conf->listeners */
	int fd;
	bool accepting;
	bool rearm_on_tick;  /* accept failed for lack of fds or memory */
};

struct core {
	unsigned index;
	int cpu;          /* -1: not pinned */
	pthread_t thread;
	struct io_uring ring;

	/* provided buffers for multishot recv */
	struct io_uring_buf_ring *rx_ring;
	char *rx_mem;
	unsigned rx_count;
	unsigned rx_size;

	struct core_listener *listeners;
	unsigned nlisteners;

	struct core_view *view;       /* current config */
	struct core_view *old_views;  /* still used by sessions */
	_Atomic(struct snapshot *) mailbox; /* new config from the main thread */

	int wake_fd;
	uint64_t wake_value;
	struct __kernel_timespec tick_ts;

	struct conn *conns;           /* every open connection (list) */
	uint32_t nconns;
	struct conn *free_conns;      /* pool */
	uint32_t nfree;
	uint64_t next_session;

	struct spool_writer spool;

	uint64_t sessions_by_path[3]; /* closed sessions: plaintext, userspace TLS, kTLS */
	struct core_metrics metrics;  /* written by this core only, read by the scraper */
	struct core_query query;      /* the control socket's questions (core_query.h) */

	uint64_t now_ms;              /* monotonic, read once per loop turn */
	bool draining;
	uint64_t drain_deadline_ms;
	bool stopped;
	int exit_status;
};

/* Shared by the main thread and every core. */
struct daemon {
	unsigned ncores;
	struct core *cores;
	atomic_bool draining;
	atomic_bool paused;           /* control "pause": new mail gets 421 4.3.2 */
	const char *config_path;
};

extern struct daemon g_daemon;

/* Create listener sockets and per-core state (main thread, before
 * core_start). Returns 0 or -1 after logging why. */
int core_prepare(struct core *core, unsigned index, int cpu, struct snapshot *snap,
		 const int *listener_fds, uint64_t spool_next_seq);
int core_start(struct core *core);
/* Main thread: hand the core a new snapshot (takes its own reference). */
void core_post_config(struct core *core, struct snapshot *snap);
/* Main thread: nudge the core to look at its mailbox / draining flag. */
void core_wake(struct core *core);

/* For conn.c and spool_writer.c, on the core's own thread. */
struct io_uring_sqe *core_sqe(struct core *core);
void core_rx_recycle(struct core *core, unsigned bid);

#endif
