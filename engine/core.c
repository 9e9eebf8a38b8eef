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
#include "delivery.h"
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

struct core_mail *core_mail_new(struct snapshot *snap, unsigned nsocks)
{
	struct core_mail *m = calloc(1, sizeof *m + (size_t)nsocks * sizeof m->socks[0]);
	if (!m)
		return NULL;
	snapshot_hold(snap);
	m->snap = snap;
	m->nsocks = nsocks;
	for (unsigned i = 0; i < nsocks; i++)
		m->socks[i].fd = -1;
	return m;
}

void core_mail_free(struct core_mail *m)
{
	if (!m)
		return;
	for (unsigned i = 0; i < m->nsocks; i++)
		if (m->socks[i].fd >= 0)
			close(m->socks[i].fd);
	snapshot_release(m->snap);
	free(m);
}

static struct core_listener *listener_new(struct core *core, const struct core_mail_sock *ms)
{
	struct core_listener *l = calloc(1, sizeof *l);
	if (!l)
		return NULL;
	*l = (struct core_listener){
		.core = core, .id = ms->id, .index = ms->index, .fd = ms->fd, .accepting = true};
	return l;
}

int core_prepare(struct core *core, unsigned index, int cpu, struct core_mail *mail,
		 uint64_t spool_next_seq)
{
	memset(core, 0, sizeof *core);
	core->index = index;
	core->cpu = cpu;
	core->wake_fd = -1; /* core_discard after a failure here closes no fd 0 */
	atomic_init(&core->mailbox, NULL);
	atomic_init(&core->spool_hold_req, 0);
	atomic_init(&core->spool_hold_ack, 0);
	atomic_init(&core->spool_hold_seq, 0);
	atomic_init(&core->ready, false);
	core->view = calloc(1, sizeof *core->view);
	if (!core->view) {
		core_mail_free(mail);
		return -1;
	}
	struct snapshot *snap = mail->snap;
	core->view->snap = snap; /* the mail's reference is now the view's */
	mail->snap = NULL;
	struct core_listener **tail = &core->listeners;
	for (unsigned i = 0; i < mail->nsocks; i++) {
		struct core_listener *l = listener_new(core, &mail->socks[i]);
		if (!l) {
			core_mail_free(mail);
			return -1;
		}
		mail->socks[i].fd = -1;
		*tail = l;
		tail = &l->next;
	}
	core_mail_free(mail);
	core->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (core->wake_fd < 0) {
		log_error("core %u: eventfd: %s", index, strerror(errno));
		return -1;
	}
	core->tick_ts.tv_sec = 1;
	return spool_writer_open(&core->spool, core, snap->conf->spool_dir, index, spool_next_seq,
				 snap->conf->segment_size);
}

void core_post_mail(struct core *core, struct core_mail *mail)
{
	struct core_mail *old = atomic_exchange(&core->mailbox, mail);
	core_mail_free(old); /* the core never picked the previous one up */
	core_wake(core);
}

/* The main thread waits here only for a binary upgrade's hand-over: a
 * core answers on its next loop turn, which the wake starts at once. */
int core_spool_hold(struct core *core, bool hold, unsigned timeout_ms, uint64_t *open_seq)
{
	uint64_t req = atomic_load(&core->spool_hold_req);
	req += (req % 2 == 1) == hold ? 2 : 1; /* odd: hold, even: release */
	atomic_store(&core->spool_hold_req, req);
	core_wake(core);
	if (!hold)
		return 0;
	for (unsigned waited = 0; atomic_load(&core->spool_hold_ack) != req; waited++) {
		if (waited >= timeout_ms)
			return -1;
		usleep(1000);
	}
	*open_seq = atomic_load(&core->spool_hold_seq);
	return 0;
}

bool core_wait_ready(struct core *cores, unsigned n, unsigned timeout_ms)
{
	for (unsigned i = 0, waited = 0; i < n; i++) {
		while (!atomic_load(&cores[i].ready)) {
			if (waited++ >= timeout_ms)
				return false;
			usleep(1000);
		}
	}
	return true;
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
	assert(l->fd >= 0 && !l->armed);
	struct io_uring_sqe *sqe = core_sqe(l->core);
	io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, op_data(l, OP_ACCEPT));
	l->armed = true;
}

#ifdef MXD_TEST_HOOKS
/* Test builds only: while the file named by MXD_ACCEPT_HOLD_FILE exists,
 * the cores take no connection (looked at once a second, on the tick), so
 * a test can have connections wait in the kernel's queues across a reload
 * or an upgrade. */
static void update_accept_hold(struct core *core)
{
	const char *trigger = getenv("MXD_ACCEPT_HOLD_FILE");
	bool hold = trigger && access(trigger, F_OK) == 0;
	if (hold == core->accepts_held)
		return;
	core->accepts_held = hold;
	log_info("test hook: accepts %s", hold ? "held" : "released");
	for (struct core_listener *l = core->listeners; hold && l; l = l->next) {
		if (!l->accepting || !l->armed)
			continue;
		struct io_uring_sqe *sqe = core_sqe(core);
		io_uring_prep_cancel64(sqe, op_data(l, OP_ACCEPT), 0);
		io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
	}
}
#else
static void update_accept_hold(struct core *core)
{
	(void)core;
}
#endif

/* Accept now, or on a later tick while the test hook holds accepts. */
static void arm_or_defer(struct core_listener *l)
{
	if (l->core->accepts_held)
		l->rearm_on_tick = true;
	else
		arm_accept(l);
}

/* Stop accepting on l: cancel its accept and close this core's descriptor
 * (the ring holds its own reference until the cancel lands). The kernel
 * socket and its queue live on while another descriptor has it: the
 * listener set's, or the next process's after an upgrade. */
static void stop_accepting(struct core_listener *l)
{
	if (!l->accepting)
		return;
	l->accepting = false;
	l->rearm_on_tick = false;
	if (l->armed) {
		struct io_uring_sqe *sqe = core_sqe(l->core);
		io_uring_prep_cancel64(sqe, op_data(l, OP_ACCEPT), 0);
		io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
	}
	close(l->fd);
	l->fd = -1;
}

static void free_retired(struct core *core, struct core_listener *l)
{
	struct core_listener **p = &core->retired;
	while (*p != l)
		p = &(*p)->next;
	*p = l->next;
	free(l);
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
	if (!(flags & IORING_CQE_F_MORE))
		l->armed = false;
	if (res >= 0) {
		/* Taken off the queue after an upgrade's drain stopped the
		 * accepts: the client came for the new process, and is served
		 * here rather than reset. After SIGTERM it is closed, and so
		 * is one from a listener gone from the config (its index means
		 * nothing in the current snapshot). */
		if (l->removed || (!l->accepting && !core->drain_soft))
			close(res);
		else
			conn_accept(core, l->index, res);
	} else if (res != -ECANCELED) {
		log_warn("accept on listener %u: %s", l->index, strerror(-res));
	}
	if (l->armed)
		return;
	if (l->removed) {
		free_retired(core, l);
	} else if (l->accepting) {
		if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
			l->rearm_on_tick = true; /* retry once a second, not in a spin */
		else
			arm_or_defer(l);
	}
}

static void stop_listeners(struct core *core)
{
	for (struct core_listener *l = core->listeners; l; l = l->next)
		stop_accepting(l);
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
	core->drain_soft = atomic_load(&g_daemon.drain_soft);
	core->drain_deadline_ms = core->now_ms + core->view->snap->conf->timeouts.drain;
	log_info("draining: %u sessions open, deadline in %u ms", core->nconns,
		 core->view->snap->conf->timeouts.drain);
	stop_listeners(core);
	for_each_conn(core, conn_drain, false);
}

static const struct core_mail_sock *mail_find(const struct core_mail *m, uint64_t id)
{
	for (unsigned i = 0; i < m->nsocks; i++)
		if (m->socks[i].id == id)
			return &m->socks[i];
	return NULL;
}

/* Move to the mail's socket set: keep (and remap) the sockets that stay,
 * retire the ones that are gone, accept on the new ones. Sessions accepted
 * from here on use the new indexes with the new view. */
static void adopt_listeners(struct core *core, struct core_mail *m)
{
	struct core_listener **p = &core->listeners;
	while (*p) {
		struct core_listener *l = *p;
		const struct core_mail_sock *ms = mail_find(m, l->id);
		if (ms) {
			l->index = ms->index;
			p = &l->next;
			continue;
		}
		*p = l->next;
		stop_accepting(l);
		l->removed = true;
		log_info("listener socket %llu closed: no longer in the config",
			 (unsigned long long)l->id);
		if (l->armed) {
			l->next = core->retired;
			core->retired = l;
		} else {
			free(l);
		}
	}
	for (unsigned i = 0; i < m->nsocks; i++) {
		struct core_mail_sock *ms = &m->socks[i];
		bool known = false;
		for (struct core_listener *l = core->listeners; l && !known; l = l->next)
			known = l->id == ms->id;
		if (known)
			continue; /* the mail's dup of a socket we have: closed with the mail */
		struct core_listener *l = listener_new(core, ms);
		if (!l) {
			log_error("out of memory for listener socket %llu", (unsigned long long)ms->id);
			continue;
		}
		ms->fd = -1;
		*p = l;
		p = &l->next;
		arm_or_defer(l);
	}
}

static void take_new_config(struct core *core)
{
	struct core_mail *m = atomic_exchange(&core->mailbox, NULL);
	if (!m)
		return;
	struct snapshot *snap = m->snap;
	struct core_view *v = calloc(1, sizeof *v);
	if (!v) {
		log_error("out of memory taking config generation %llu",
			  (unsigned long long)snap->generation);
		core_mail_free(m);
		return;
	}
	v->snap = snap; /* the mail's reference is now the view's */
	m->snap = NULL;
	struct core_view *old = core->view;
	core->view = v;
	if (old->sessions == 0) {
		snapshot_release(old->snap);
		free(old);
	} else {
		old->next = core->old_views;
		core->old_views = old;
	}
	if (!core->draining)
		adopt_listeners(core, m);
	core_mail_free(m);
	if (!core->delivery && !core->draining && delivery_configured(snap->conf))
		core->delivery = delivery_start(core); /* a reload added "relay via" */
	log_info("config generation %llu in use for new sessions",
		 (unsigned long long)snap->generation);
}

/* A binary upgrade's hand-over: see core_spool_hold(). */
static void apply_spool_hold(struct core *core)
{
	uint64_t req = atomic_load(&core->spool_hold_req);
	if (req == atomic_load(&core->spool_hold_ack))
		return;
	uint64_t seq = spool_writer_hold(&core->spool, req % 2 == 1);
	atomic_store(&core->spool_hold_seq, seq);
	atomic_store(&core->spool_hold_ack, req);
}

static void on_wake(struct core *core, int res)
{
	if (res < 0 && res != -EAGAIN && res != -EINTR)
		log_error("wake read: %s", strerror(-res));
	take_new_config(core);
	core_query_serve(core); /* the control socket's session list */
	apply_spool_hold(core);
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
	update_accept_hold(core);
	for (struct core_listener *l = core->listeners; l; l = l->next) {
		if (l->rearm_on_tick && l->accepting && !core->accepts_held) {
			l->rearm_on_tick = false;
			arm_accept(l);
		}
	}
	if (core->draining && core->now_ms >= core->drain_deadline_ms)
		for_each_conn(core, conn_drain, true);
	if (core->delivery)
		delivery_tick(core->delivery);
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
	case OP_HANDLER:
		if (ptr) {
			struct core_op *op = ptr;
			op->handler(op, cqe->res, cqe->flags);
		}
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
		if (core->delivery)
			delivery_flush(core->delivery);
		if (core->draining && core->nconns == 0 && spool_writer_idle(&core->spool) &&
		    (!core->delivery || delivery_idle(core->delivery)))
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
	core_mail_free(atomic_exchange(&core->mailbox, NULL));
	if (core->view) /* NULL when core_prepare failed early */
		snapshot_release(core->view->snap);
	free(core->view);
	core->view = NULL;
	struct core_listener *lists[2] = {core->listeners, core->retired};
	for (int i = 0; i < 2; i++) {
		while (lists[i]) {
			struct core_listener *l = lists[i];
			lists[i] = l->next;
			if (l->fd >= 0)
				close(l->fd);
			free(l);
		}
	}
	core->listeners = core->retired = NULL;
	if (core->rx_ring) /* set up by the core's thread */
		munmap(core->rx_ring, core->rx_count * sizeof(struct io_uring_buf));
	free(core->rx_mem);
	if (core->wake_fd >= 0)
		close(core->wake_fd);
	core->wake_fd = -1;
}

void core_discard(struct core *core)
{
	if (core->spool.core) /* spool_writer_open got as far as its first line */
		spool_writer_close(&core->spool);
	release_views(core);
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
	update_accept_hold(core);
	for (struct core_listener *l = core->listeners; l; l = l->next)
		arm_or_defer(l);
	if (delivery_configured(core->view->snap->conf))
		core->delivery = delivery_start(core); /* replays this core's segments */
	arm_tick(core);
	arm_wake(core);
	if (atomic_load(&g_daemon.draining))
		begin_drain(core);
	/* accepting from here: a binary upgrade tells the old process only
	 * when every core is */
	io_uring_submit(&core->ring);
	atomic_store(&core->ready, true);
	run_loop(core);
	delivery_stop(core->delivery);
	core->delivery = NULL;
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
