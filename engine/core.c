#include "core.h"

#include <assert.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"

/* Ring sizes: the submission queue is flushed whenever it fills, so it
 * only bounds batching; the completion queue is larger because multishot
 * operations post many completions per submission. */
#define RING_ENTRIES 4096
#define RING_CQ_ENTRIES 16384
/* Provided receive buffers: RX_COUNT × RX_SIZE bytes per core. Buffers go
 * back to the ring as soon as their bytes are handled, so idle connections
 * hold none of them. */
#define RX_COUNT 512
#define RX_SIZE (32 * 1024)
#define RX_GROUP 0

struct daemon g_daemon;

static uint64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct io_uring_sqe *core_sqe(struct core *core)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&core->ring);
	if (!sqe) {
		io_uring_submit(&core->ring);
		sqe = io_uring_get_sqe(&core->ring);
	}
	assert(sqe);
	return sqe;
}

void core_rx_recycle(struct core *core, unsigned bid)
{
	assert(bid < core->rx_count);
	io_uring_buf_ring_add(core->rx_ring, core->rx_mem + (size_t)bid * core->rx_size,
			      core->rx_size, (unsigned short)bid,
			      io_uring_buf_ring_mask(core->rx_count), 0);
	io_uring_buf_ring_advance(core->rx_ring, 1);
}

/* ---- set-up (main thread) ---- */

int core_prepare(struct core *core, unsigned index, int cpu, struct snapshot *snap,
		 const int *listener_fds, uint64_t spool_next_seq)
{
	memset(core, 0, sizeof *core);
	core->index = index;
	core->cpu = cpu;
	core->view = calloc(1, sizeof *core->view);
	if (!core->view)
		return -1;
	snapshot_hold(snap);
	core->view->snap = snap;
	atomic_init(&core->mailbox, NULL);
	core->nlisteners = (unsigned)snap->conf->nlisteners;
	core->listeners = calloc(core->nlisteners, sizeof *core->listeners);
	if (!core->listeners)
		return -1;
	for (unsigned i = 0; i < core->nlisteners; i++) {
		core->listeners[i] = (struct core_listener){
			.core = core, .index = i, .fd = listener_fds[i], .accepting = true};
	}
	core->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (core->wake_fd < 0) {
		log_error("core %u: eventfd: %s", index, strerror(errno));
		return -1;
	}
	core->tick_ts.tv_sec = 1;
	return spool_writer_open(&core->spool, core, snap->conf->spool_dir, index, spool_next_seq,
				 snap->conf->segment_size);
}

void core_post_config(struct core *core, struct snapshot *snap)
{
	snapshot_hold(snap);
	struct snapshot *old = atomic_exchange(&core->mailbox, snap);
	if (old) /* the core never picked the previous one up */
		snapshot_release(old);
	core_wake(core);
}

void core_wake(struct core *core)
{
	uint64_t one = 1;
	if (write(core->wake_fd, &one, sizeof one) < 0)
		log_error("core %u: cannot wake: %s", core->index, strerror(errno));
}

/* ---- on the core's thread ---- */

static int setup_ring(struct core *core)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
		  IORING_SETUP_SUBMIT_ALL;
	p.cq_entries = RING_CQ_ENTRIES;
	int rc = io_uring_queue_init_params(RING_ENTRIES, &core->ring, &p);
	if (rc == -EINVAL) {
		/* an older kernel: the same loop works without the hints */
		memset(&p, 0, sizeof p);
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = RING_CQ_ENTRIES;
		rc = io_uring_queue_init_params(RING_ENTRIES, &core->ring, &p);
		if (rc == 0)
			log_warn("io_uring without SINGLE_ISSUER/DEFER_TASKRUN on this kernel");
	}
	if (rc < 0) {
		log_error("io_uring_queue_init: %s", strerror(-rc));
		return -1;
	}
	return 0;
}

static int setup_rx_buffers(struct core *core)
{
	core->rx_count = RX_COUNT;
	core->rx_size = RX_SIZE;
	size_t ring_bytes = core->rx_count * sizeof(struct io_uring_buf);
	void *ring_mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
			      -1, 0);
	if (ring_mem == MAP_FAILED) {
		log_error("mmap of the buffer ring: %s", strerror(errno));
		return -1;
	}
	core->rx_ring = ring_mem;
	core->rx_mem = malloc((size_t)core->rx_count * core->rx_size);
	if (!core->rx_mem) {
		log_error("out of memory for receive buffers");
		return -1;
	}
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)ring_mem,
		.ring_entries = core->rx_count,
		.bgid = RX_GROUP,
	};
	int rc = io_uring_register_buf_ring(&core->ring, &reg, 0);
	if (rc < 0) {
		log_error("io_uring_register_buf_ring: %s", strerror(-rc));
		return -1;
	}
	io_uring_buf_ring_init(core->rx_ring);
	for (unsigned i = 0; i < core->rx_count; i++)
		io_uring_buf_ring_add(core->rx_ring, core->rx_mem + (size_t)i * core->rx_size,
				      core->rx_size, (unsigned short)i,
				      io_uring_buf_ring_mask(core->rx_count), (int)i);
	io_uring_buf_ring_advance(core->rx_ring, (int)core->rx_count);
	return 0;
}

static void arm_accept(struct core_listener *l)
{
	struct io_uring_sqe *sqe = core_sqe(l->core);
	io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, op_data(l, OP_ACCEPT));
}

static void arm_tick(struct core *core)
{
	struct io_uring_sqe *sqe = core_sqe(core);
	io_uring_prep_timeout(sqe, &core->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, op_data(core, OP_TICK));
}

static void arm_wake(struct core *core)
{
	struct io_uring_sqe *sqe = core_sqe(core);
	io_uring_prep_read(sqe, core->wake_fd, &core->wake_value, sizeof core->wake_value, 0);
	io_uring_sqe_set_data64(sqe, op_data(core, OP_WAKE));
}

static void on_accept(struct core_listener *l, int res, unsigned flags)
{
	struct core *core = l->core;
	if (res >= 0) {
		if (l->accepting)
			conn_accept(core, l->index, res);
		else
			close(res);
	} else if (res != -ECANCELED) {
		log_warn("accept on listener %u: %s", l->index, strerror(-res));
	}
	if (!(flags & IORING_CQE_F_MORE) && l->accepting) {
		if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
			l->rearm_on_tick = true; /* retry once a second, not in a spin */
		else
			arm_accept(l);
	}
}

static void stop_listeners(struct core *core)
{
	for (unsigned i = 0; i < core->nlisteners; i++) {
		struct core_listener *l = &core->listeners[i];
		if (!l->accepting)
			continue;
		l->accepting = false;
		struct io_uring_sqe *sqe = core_sqe(core);
		io_uring_prep_cancel64(sqe, op_data(l, OP_ACCEPT), 0);
		io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
		close(l->fd); /* the ring holds its own reference until the cancel */
		l->fd = -1;
	}
}

static void for_each_conn(struct core *core, void (*fn)(struct conn *, bool), bool arg)
{
	struct conn *c = core->conns;
	while (c) {
		struct conn *next = c->next; /* fn may free c */
		fn(c, arg);
		c = next;
	}
}

static void begin_drain(struct core *core)
{
	core->draining = true;
	core->drain_deadline_ms = core->now_ms + core->view->snap->conf->timeouts.drain;
	log_info("draining: %u sessions open, deadline in %u ms", core->nconns,
		 core->view->snap->conf->timeouts.drain);
	stop_listeners(core);
	for_each_conn(core, conn_drain, false);
}

static void take_new_config(struct core *core)
{
	struct snapshot *snap = atomic_exchange(&core->mailbox, NULL);
	if (!snap)
		return;
	struct core_view *v = calloc(1, sizeof *v);
	if (!v) {
		log_error("out of memory taking config generation %llu",
			  (unsigned long long)snap->generation);
		snapshot_release(snap);
		return;
	}
	v->snap = snap; /* the reference core_post_config took is now ours */
	struct core_view *old = core->view;
	core->view = v;
	if (old->sessions == 0) {
		snapshot_release(old->snap);
		free(old);
	} else {
		old->next = core->old_views;
		core->old_views = old;
	}
	log_info("config generation %llu in use for new sessions",
		 (unsigned long long)snap->generation);
}

static void on_wake(struct core *core, int res)
{
	if (res < 0 && res != -EAGAIN && res != -EINTR)
		log_error("wake read: %s", strerror(-res));
	take_new_config(core);
	core_query_serve(core); /* the control socket's session list */
	if (atomic_load(&g_daemon.draining) && !core->draining)
		begin_drain(core);
	arm_wake(core);
}

static void conn_tick_adapter(struct conn *c, bool unused)
{
	(void)unused;
	conn_tick(c);
}

static void on_tick(struct core *core)
{
	for_each_conn(core, conn_tick_adapter, false);
	for (unsigned i = 0; i < core->nlisteners; i++) {
		struct core_listener *l = &core->listeners[i];
		if (l->rearm_on_tick && l->accepting) {
			l->rearm_on_tick = false;
			arm_accept(l);
		}
	}
	if (core->draining && core->now_ms >= core->drain_deadline_ms)
		for_each_conn(core, conn_drain, true);
	arm_tick(core);
}

static void dispatch(struct core *core, const struct io_uring_cqe *cqe)
{
	uint64_t data = io_uring_cqe_get_data64(cqe);
	void *ptr = (void *)(uintptr_t)(data & ~(uint64_t)OP_TAG_MASK);
	switch ((enum op_tag)(data & OP_TAG_MASK)) {
	case OP_RECV:
		conn_on_recv(ptr, cqe->res, cqe->flags);
		break;
	case OP_SEND:
		conn_on_send(ptr, cqe->res);
		break;
	case OP_ACCEPT:
		on_accept(ptr, cqe->res, cqe->flags);
		break;
	case OP_TICK:
		on_tick(core);
		break;
	case OP_WAKE:
		on_wake(core, cqe->res);
		break;
	case OP_SPOOL:
		spool_writer_complete(&core->spool, ptr == (void *)&core->spool.batch, cqe->res);
		break;
	case OP_GREET:
		conn_on_greet_timer(ptr);
		break;
	case OP_CANCEL:
		break;
	}
}

static void pin_to_cpu(struct core *core)
{
	if (core->cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(core->cpu, &set);
	int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
	if (rc != 0)
		log_warn("cannot pin to CPU %d: %s", core->cpu, strerror(rc));
}

static void run_loop(struct core *core)
{
	uint64_t busy_from = monotonic_ns();
	while (!core->stopped) {
		/* utilisation: time outside the wait counts as busy (one clock
		 * read on each side of the wait per loop turn) */
		uint64_t wait_from = monotonic_ns();
		METRICS_ADD(core->metrics.busy_ns, wait_from - busy_from);
		int rc = io_uring_submit_and_wait(&core->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY) {
			log_error("io_uring_submit_and_wait: %s", strerror(-rc));
			core->exit_status = 1;
			break;
		}
		busy_from = monotonic_ns();
		core->now_ms = busy_from / 1000000u;
		unsigned head, seen = 0;
		struct io_uring_cqe *cqe;
		io_uring_for_each_cqe(&core->ring, head, cqe)
		{
			dispatch(core, cqe);
			seen++;
		}
		io_uring_cq_advance(&core->ring, seen);
		spool_writer_flush(&core->spool);
		if (core->draining && core->nconns == 0 && spool_writer_idle(&core->spool))
			core->stopped = true;
		log_flush();
	}
}

static void release_views(struct core *core)
{
	while (core->old_views) {
		struct core_view *v = core->old_views;
		core->old_views = v->next;
		snapshot_release(v->snap);
		free(v);
	}
	snapshot_release(atomic_exchange(&core->mailbox, NULL));
	snapshot_release(core->view->snap);
	free(core->view);
	core->view = NULL;
	free(core->listeners);
	munmap(core->rx_ring, core->rx_count * sizeof(struct io_uring_buf));
	free(core->rx_mem);
	close(core->wake_fd);
}

static void *core_main(void *arg)
{
	struct core *core = arg;
	char name[16];
	snprintf(name, sizeof name, "core%u", core->index);
	log_thread_init(name, 1);
	pin_to_cpu(core);
	if (setup_ring(core) < 0 || setup_rx_buffers(core) < 0) {
		log_flush();
		exit(1); /* start-up: the daemon cannot run without this core */
	}
	core->now_ms = monotonic_ms();
	for (unsigned i = 0; i < core->nlisteners; i++)
		arm_accept(&core->listeners[i]);
	arm_tick(core);
	arm_wake(core);
	if (atomic_load(&g_daemon.draining))
		begin_drain(core);
	run_loop(core);
	spool_writer_close(&core->spool);
	log_info("stopped: %llu messages committed in %llu batches; sessions plaintext=%llu "
		 "tls_userspace=%llu tls_ktls=%llu",
		 (unsigned long long)core->spool.committed_messages,
		 (unsigned long long)core->spool.batches,
		 (unsigned long long)core->sessions_by_path[0],
		 (unsigned long long)core->sessions_by_path[1],
		 (unsigned long long)core->sessions_by_path[2]);
	log_thread_exit();
	core_query_free(&core->query);
	io_uring_queue_exit(&core->ring);
	conn_free_pool(core);
	release_views(core);
	return NULL;
}

int core_start(struct core *core)
{
	int rc = pthread_create(&core->thread, NULL, core_main, core);
	if (rc != 0) {
		log_error("core %u: pthread_create: %s", core->index, strerror(rc));
		return -1;
	}
	return 0;
}
