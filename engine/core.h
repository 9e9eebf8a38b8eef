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
struct delivery;

/* What a completion is for: the low bits of its user_data. Pointers carried
 * in user_data are at least 8-byte aligned. */
enum op_tag {
	OP_RECV = 0,     /* conn */
	OP_SEND = 1,     /* conn */
	OP_ACCEPT = 2,   /* core_listener */
	OP_TICK = 3,     /* core */
	OP_WAKE = 4,     /* core */
	OP_SPOOL = 5,    /* spool_writer: a write or the fsync of a batch */
	OP_HANDLER = 6,  /* struct core_op: its handler runs; NULL: nothing to do */
	OP_GREET = 7,    /* conn: its greeting-delay timer */
};
#define OP_TAG_MASK 7u
/* A completion nobody waits for (a cancel's own result). */
#define OP_CANCEL OP_HANDLER

/* Operations of the less frequent kinds (delivery: outbound connections,
 * the delivery log's writer) share one tag: user_data points to one of
 * these, embedded in the object, and the handler finds its object with
 * container_of. The inbound path keeps its own tags and its direct
 * dispatch. */
struct core_op {
	void (*handler)(struct core_op *op, int res, unsigned flags);
} __attribute__((aligned(8)));

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

/* One listening socket this core accepts on. Allocated one by one: the
 * ring's multishot accept points at it until its last completion, so a
 * listener removed by a reload is freed only then (core->retired). */
struct core_listener {
	struct core *core;
	struct core_listener *next;
	uint64_t id;      /* the listener set's socket id (listeners.h) */
	unsigned index;   /* into the current snapshot's conf->listeners */
	int fd;           /* this core's own descriptor; -1 once closed */
	bool accepting;
	bool armed;       /* a multishot accept is in the ring */
	bool removed;     /* gone from the config: its index means nothing */
	bool rearm_on_tick;  /* accept failed for lack of fds or memory */
};

/* What the main thread posts to a core: a config snapshot and the sockets
 * to accept on under it. The core takes the snapshot reference and the
 * descriptors (its own dups): a socket whose id it already has keeps its
 * accept running (with the index remapped), a new one gets an accept, and
 * one of its sockets missing from the mail has its accept cancelled and
 * is closed. */
struct core_mail_sock {
	int fd;
	uint64_t id;
	unsigned index;   /* into snap->conf->listeners */
};

struct core_mail {
	struct snapshot *snap;
	unsigned nsocks;
	struct core_mail_sock socks[];
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

	struct core_listener *listeners; /* accepting (or stopped by a drain) */
	struct core_listener *retired;   /* removed, waiting for their last accept completion */

	struct core_view *view;       /* current config */
	struct core_view *old_views;  /* still used by sessions */
	_Atomic(struct core_mail *) mailbox; /* new config from the main thread */

	/* Binary upgrade: the main thread asks the core to hold its spool
	 * (open no new segment: the next process starts its own past this
	 * one's). Odd request numbers hold, even ones release; the core
	 * answers with the request it applied and the segment it has open. */
	atomic_uint_fast64_t spool_hold_req;
	atomic_uint_fast64_t spool_hold_ack;
	atomic_uint_fast64_t spool_hold_seq; /* 0: no segment open */
	atomic_bool ready;            /* accepts armed and submitted */
	bool accepts_held;            /* test builds: MXD_ACCEPT_HOLD_FILE exists */

	int wake_fd;
	uint64_t wake_value;
	struct __kernel_timespec tick_ts;

	struct conn *conns;           /* every open connection (list) */
	uint32_t nconns;
	struct conn *free_conns;      /* pool */
	uint32_t nfree;
	uint64_t next_session;

	struct spool_writer spool;
	struct delivery *delivery;    /* NULL while no rule has "relay via" */

	uint64_t sessions_by_path[3]; /* closed sessions: plaintext, userspace TLS, kTLS */
	struct core_metrics metrics;  /* written by this core only, read by the scraper */
	struct core_query query;      /* the control socket's questions (core_query.h) */

	uint64_t now_ms;              /* monotonic, read once per loop turn */
	bool draining;
	bool drain_soft;              /* g_daemon.drain_soft when the drain began */
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
	/* A drain after a binary upgrade: a session that has not yet
	 * committed a message is left to finish (its client connected to
	 * deliver); one that has gets 421 once idle, as on SIGTERM. The
	 * drain deadline applies to both. */
	atomic_bool drain_soft;
	const char *config_path;
};

extern struct daemon g_daemon;

/* Per-core state (main thread, before core_start); takes the mail (its
 * snapshot and sockets). Returns 0 or -1 after logging why. */
int core_prepare(struct core *core, unsigned index, int cpu, struct core_mail *mail,
		 uint64_t spool_next_seq);
int core_start(struct core *core);
/* Main thread, start-up failed: give back what core_prepare took (all of
 * it or, after a failed core_prepare, the part it got) from a core whose
 * thread never started. */
void core_discard(struct core *core);
/* Main thread: wait until every core accepts (true) or timeout_ms passed. */
bool core_wait_ready(struct core *cores, unsigned n, unsigned timeout_ms);

/* A mail for nsocks sockets under snap (takes its own reference); the
 * sockets' fds start at -1. core_mail_free closes the fds still in it. */
struct core_mail *core_mail_new(struct snapshot *snap, unsigned nsocks);
void core_mail_free(struct core_mail *m);
/* Main thread: hand the core a new config and socket set (the core owns
 * the mail from here; one it never picked up is freed). */
void core_post_mail(struct core *core, struct core_mail *mail);

/* Main thread: hold (true) or release the core's spool, see spool_hold_*.
 * Holding waits up to timeout_ms for the core's answer and gives the
 * segment it has open (0: none); -1 when the core did not answer. */
int core_spool_hold(struct core *core, bool hold, unsigned timeout_ms, uint64_t *open_seq);
/* Main thread: nudge the core to look at its mailbox / draining flag. */
void core_wake(struct core *core);

/* For conn.c and spool_writer.c, on the core's own thread. */
struct io_uring_sqe *core_sqe(struct core *core);
void core_rx_recycle(struct core *core, unsigned bid);

#endif
