/* worker: one thread, one io_uring ring, its share of the connections.
 *
 * A connection slot cycles WAIT → CONNECTING → OPEN → QUITTING → (closed)
 * → CONNECTING ... while there is work; an error takes it through CLOSING
 * (its ring operations cancelled) and a short back-off. Receives are
 * multishot from a provided-buffer ring, as in mxd's core; each buffer goes
 * back to the ring as soon as its bytes are parsed (or given to TLS), so
 * idle connections hold none. One send per connection is in flight.
 *
 * Closed loop (default): every connection starts its next message as soon
 * as the previous one is answered, until --messages are started or
 * --duration is over. Open loop (--rate): message k of this worker is due
 * at start + k / rate, whether or not a connection is free; a due message
 * waits for an idle connection (the one idle longest: they queue FIFO) and
 * its latency counts from when it was due,
 * so a slow server cannot hide its delays by slowing the client down
 * (no coordinated omission). */
#include <assert.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "worker.h"

#define RING_ENTRIES 4096
#define RING_CQ_ENTRIES 32768
#define RX_COUNT 4096          /* a power of two */
#define RX_SIZE 4096
#define RX_GROUP 0
#define TICK_NS 100000000ull   /* timeouts and back-offs are checked every 100 ms */
#define BACKOFF_NS 100000000ull

uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t timeout_ns(const struct worker *w)
{
	return (uint64_t)(w->o->timeout * 1e9);
}

struct io_uring_sqe *worker_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	if (!sqe) {
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	assert(sqe);
	return sqe;
}

/* ------------------------------------------------------ errors */

static void begin_stop(struct worker *w);

void conn_error(struct conn *c, enum mxl_err kind, const char *fmt, ...)
{
	struct worker *w = c->w;
	w->st.errors[kind]++;
	w->errors_total++;
	c->failed = true;
	if (w->st.nexamples < MXL_MAX_EXAMPLES) {
		char *ex = w->st.examples[w->st.nexamples++];
		int n = snprintf(ex, MXL_EXAMPLE_LEN, "worker %u conn %u: ", w->id, c->slot);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ex + n, MXL_EXAMPLE_LEN - (size_t)n, fmt, ap);
		va_end(ap);
	}
	if (w->o->max_errors && w->errors_total >= w->o->max_errors)
		atomic_store(&w->run->stop, true);
}

/* ---------------------------------------------------- scheduling */

static uint64_t arrivals_due(const struct worker *w)
{
	if (w->now < w->start)
		return 0;
	uint64_t due = (uint64_t)((double)(w->now - w->start) / w->period_ns) + 1;
	if (w->arrivals_total && due > w->arrivals_total)
		due = w->arrivals_total;
	return due;
}

bool worker_take_message(struct worker *w, struct conn *c, uint64_t *t_start)
{
	if (w->stopping)
		return false;
	if (!w->open_loop) {
		if (c->reserved) {
			c->reserved--;
		} else if (w->o->messages) {
			if (w->budget == 0)
				return false;
			w->budget--;
		}
		*t_start = w->now;
		return true;
	}
	if (w->arrivals_taken >= arrivals_due(w))
		return false;
	*t_start = w->start + (uint64_t)((double)w->arrivals_taken * w->period_ns);
	w->arrivals_taken++;
	w->st.arrivals++;
	return true;
}

bool worker_more_later(struct worker *w)
{
	if (!w->open_loop || w->stopping)
		return false;
	return w->arrivals_total == 0 || w->arrivals_taken < w->arrivals_total;
}

/* Idle connections (open loop) wait in a FIFO: the one idle longest takes
 * the next due message, so every connection carries its share. (A stack
 * would keep reusing the last few and leave the rest idle for as long as
 * the load stays light: long enough for the server's command timeout to
 * close them, which the client would count as errors.) A ring of nconns
 * slots: [idle_head, idle_head + nidle). */
static struct conn **idle_at(struct worker *w, unsigned i)
{
	return &w->idle[(w->idle_head + i) % w->nconns];
}

void worker_park(struct worker *w, struct conn *c)
{
	assert(!c->parked && w->nidle < w->nconns);
	c->parked = true;
	*idle_at(w, w->nidle++) = c;
}

/* The connection idle longest, off the queue. */
static struct conn *idle_take(struct worker *w)
{
	assert(w->nidle > 0);
	struct conn *c = *idle_at(w, 0);
	w->idle_head = (w->idle_head + 1) % w->nconns;
	w->nidle--;
	c->parked = false;
	return c;
}

static void unpark(struct worker *w, struct conn *c)
{
	if (!c->parked)
		return;
	for (unsigned i = 0; i < w->nidle; i++)
		if (*idle_at(w, i) == c) {
			/* rare (a parked connection closed): keep the order */
			for (unsigned k = i + 1; k < w->nidle; k++)
				*idle_at(w, k - 1) = *idle_at(w, k);
			w->nidle--;
			break;
		}
	c->parked = false;
}

/* Should a slot open a (new) connection? */
static bool slot_has_work(const struct worker *w)
{
	if (w->stopping)
		return false;
	if (w->open_loop)
		return w->arrivals_total == 0 || w->arrivals_taken < w->arrivals_total;
	return w->o->messages == 0 || w->budget > 0;
}

/* Closed loop with a message count: a new connection takes its messages
 * (--per-conn of them, else one) from the budget as it connects, so that
 * no connection is opened only to find the budget gone, and --messages M
 * --per-conn N opens exactly ceil(M / N) connections. A connection that
 * fails gives back what it did not use. */
static void reserve(struct conn *c)
{
	struct worker *w = c->w;
	if (w->open_loop || w->o->messages == 0)
		return;
	assert(w->budget > 0 && c->reserved == 0);
	uint64_t want = w->o->per_conn ? w->o->per_conn : 1;
	c->reserved = (unsigned)(want < w->budget ? want : w->budget);
	w->budget -= c->reserved;
}

static void release_reservation(struct conn *c)
{
	c->w->budget += c->reserved;
	c->reserved = 0;
}

/* -------------------------------------------------- a slot's life */

static void arm_recv(struct conn *c)
{
	struct io_uring_sqe *sqe = worker_sqe(c->w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RX_GROUP;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECV);
	c->recv_armed = true;
	c->inflight++;
}

static void slot_sleep(struct conn *c)
{
	c->state = CS_SLEEP;
	c->wake_at = c->w->now + BACKOFF_NS;
}

static void slot_done(struct conn *c)
{
	c->state = CS_DONE;
	c->w->active--;
}

static void conn_start(struct conn *c)
{
	struct worker *w = c->w;
	const struct mxl_options *o = w->o;
	c->failed = false;
	c->cancel_sent = false;
	c->fd = socket(o->server.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c->fd < 0) {
		conn_error(c, ERR_LOCAL, "socket: %s", strerror(errno));
		slot_sleep(c);
		return;
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (o->nsources) {
		/* the port is picked at connect time, per destination: many
		 * more connections than one address's ephemeral ports */
		setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		const struct sockaddr_storage *src = &o->sources[w->src_next++ % o->nsources];
		socklen_t len = src->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
							   : sizeof(struct sockaddr_in);
		if (bind(c->fd, (const struct sockaddr *)src, len) < 0) {
			conn_error(c, ERR_LOCAL, "bind to a --source address: %s", strerror(errno));
			close(c->fd);
			c->fd = -1;
			slot_sleep(c);
			return;
		}
	}
	c->state = CS_CONNECTING;
	c->t_connect = mono_ns();
	c->deadline = w->now + timeout_ns(w);
	c->connect_pending = true;
	c->inflight++;
	reserve(c);
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&o->server, o->server_len);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_CONNECT);
}

/* Every operation has ended: close, count, and start over if there is work. */
static void conn_finish(struct conn *c)
{
	struct worker *w = c->w;
	assert(c->inflight == 0);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	tls_reset(c);
	unpark(w, c);
	w->st.msgs_failed += c->msgs_unacked;
	release_reservation(c);
	session_reset(c);
	if (!slot_has_work(w))
		slot_done(c);
	else if (c->failed)
		slot_sleep(c);
	else
		conn_start(c);
}

void conn_abort(struct conn *c)
{
	struct worker *w = c->w;
	if (c->state == CS_CLOSING || c->state == CS_DONE || c->state == CS_SLEEP ||
	    c->state == CS_WAIT)
		return;
	c->state = CS_CLOSING;
	unpark(w, c);
	if (c->inflight == 0) {
		conn_finish(c);
		return;
	}
	if (!c->cancel_sent) {
		c->cancel_sent = true;
		struct io_uring_sqe *sqe = worker_sqe(w);
		io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, OP_IGNORE);
		/* now, so that the cancel cannot outlive this fd number */
		io_uring_submit(&w->ring);
	}
}

/* -------------------------------------------------- completions */

static void rx_recycle(struct worker *w, unsigned bid)
{
	io_uring_buf_ring_add(w->rx_ring, w->rx_mem + (size_t)bid * RX_SIZE, RX_SIZE,
			      (unsigned short)bid, io_uring_buf_ring_mask(RX_COUNT), 0);
	io_uring_buf_ring_advance(w->rx_ring, 1);
}

static bool live(const struct conn *c)
{
	return c->state == CS_OPEN || c->state == CS_QUITTING;
}

static void on_connect(struct conn *c, int res)
{
	struct worker *w = c->w;
	c->connect_pending = false;
	c->inflight--;
	if (c->state == CS_CLOSING) {
		if (c->inflight == 0)
			conn_finish(c);
		return;
	}
	if (res < 0) {
		conn_error(c, ERR_CONNECT, "connect to %s: %s", w->o->server_str, strerror(-res));
		conn_abort(c);
		return;
	}
	c->state = CS_OPEN;
	w->st.conns_opened++;
	c->deadline = w->now + timeout_ns(w);
	arm_recv(c);
	session_connected(c);
}

static void on_eof(struct conn *c)
{
	struct worker *w = c->w;
	if (c->state == CS_QUITTING) {
		w->st.conns_closed_clean++;
		c->state = CS_CLOSING;
		if (c->inflight == 0)
			conn_finish(c);
		else
			conn_abort(c);
		return;
	}
	const struct expect *e = c->exp_popped < c->exp_pushed
					 ? &c->exp[c->exp_popped & (c->exp_cap - 1)]
					 : NULL;
	if (e)
		conn_error(c, ERR_CLOSED, "server closed the connection before the reply to %s",
			   expect_name(e->kind));
	else
		conn_error(c, ERR_CLOSED, "server closed an idle connection");
	conn_abort(c);
}

static void on_recv(struct conn *c, int res, unsigned flags)
{
	struct worker *w = c->w;
	bool more = flags & IORING_CQE_F_MORE;
	if (!more) {
		c->recv_armed = false;
		c->inflight--;
	}
	if (res > 0) {
		unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
		if (live(c)) {
			c->deadline = w->now + timeout_ns(w);
			const char *p = w->rx_mem + (size_t)bid * RX_SIZE;
			if (c->tls_on)
				tls_input(c, p, (size_t)res);
			else
				session_input(c, p, (size_t)res);
		}
		rx_recycle(w, bid);
	} else if (res == 0) {
		if (live(c))
			on_eof(c);
	} else if (res != -ENOBUFS && res != -ECANCELED) {
		if (live(c)) {
			conn_error(c, ERR_CLOSED, "receive: %s", strerror(-res));
			conn_abort(c);
		}
	}
	if (c->state == CS_CLOSING) {
		if (c->inflight == 0)
			conn_finish(c);
		return;
	}
	if (!more && !c->recv_armed && live(c) && res != 0)
		arm_recv(c); /* out of buffers for a moment, or the kernel ended it */
}

static void on_send(struct conn *c, int res)
{
	struct worker *w = c->w;
	c->send_busy = false;
	c->inflight--;
	if (c->state == CS_CLOSING) {
		if (c->inflight == 0)
			conn_finish(c);
		return;
	}
	if (!live(c))
		return;
	if (res < 0) {
		conn_error(c, ERR_CLOSED, "send: %s", strerror(-res));
		conn_abort(c);
		return;
	}
	c->deadline = w->now + timeout_ns(w);
	session_sent(c, res);
}

static void dispatch(struct worker *w, const struct io_uring_cqe *cqe)
{
	(void)w;
	uint64_t data = io_uring_cqe_get_data64(cqe);
	struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)OP_TAG_MASK);
	switch ((enum op_tag)(data & OP_TAG_MASK)) {
	case OP_CONNECT:
		on_connect(c, cqe->res);
		break;
	case OP_RECV:
		on_recv(c, cqe->res, cqe->flags);
		break;
	case OP_SEND:
		on_send(c, cqe->res);
		break;
	case OP_IGNORE:
		break;
	}
}

/* ------------------------------------------------------ the loop */

static void begin_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	while (w->nidle > 0)
		session_ready(idle_take(w)); /* nothing to take: QUIT */
	for (unsigned i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CS_SLEEP || c->state == CS_WAIT)
			slot_done(c);
	}
}

static void tick(struct worker *w)
{
	for (unsigned i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		switch (c->state) {
		case CS_SLEEP:
			if (w->now >= c->wake_at) {
				if (slot_has_work(w))
					conn_start(c);
				else
					slot_done(c);
			}
			break;
		case CS_CONNECTING:
		case CS_OPEN:
		case CS_QUITTING: {
			bool waiting = c->state != CS_OPEN || c->send_busy || c->tls_handshaking ||
				       c->exp_popped < c->exp_pushed;
			if (waiting && w->now > c->deadline) {
				const char *what = c->state == CS_CONNECTING ? "connect"
						   : c->state == CS_QUITTING ? "the close after QUIT"
						   : c->tls_handshaking      ? "the TLS handshake"
						   : c->exp_popped < c->exp_pushed
							   ? expect_name(c->exp[c->exp_popped & (c->exp_cap - 1)].kind)
							   : "a send";
				conn_error(c, ERR_TIMEOUT, "nothing for %.0f s waiting for %s",
					   w->o->timeout, what);
				conn_abort(c);
			}
			break;
		}
		default:
			break;
		}
	}
}

/* Open loop: hand due messages to idle connections. Once no message can
 * come any more, idle connections say QUIT. */
static void dispatch_arrivals(struct worker *w)
{
	uint64_t t;
	while (w->nidle > 0 && worker_take_message(w, *idle_at(w, 0), &t))
		session_start(idle_take(w), t);
	if (!worker_more_later(w))
		while (w->nidle > 0)
			session_ready(idle_take(w));
}

static uint64_t next_wait_ns(struct worker *w)
{
	uint64_t wait = w->next_tick > w->now ? w->next_tick - w->now : 0;
	if (w->open_loop && w->nidle > 0 && worker_more_later(w)) {
		uint64_t next = w->start + (uint64_t)((double)w->arrivals_taken * w->period_ns);
		uint64_t d = next > w->now ? next - w->now : 0;
		if (d < wait)
			wait = d;
	}
	if (w->end_at && !w->stopping) {
		uint64_t d = w->end_at > w->now ? w->end_at - w->now : 0;
		if (d < wait)
			wait = d;
	}
	return wait;
}

static void run_loop(struct worker *w)
{
	while (w->active > 0) {
		uint64_t wait = next_wait_ns(w);
		struct __kernel_timespec ts = {.tv_sec = (long long)(wait / 1000000000ull),
					       .tv_nsec = (long long)(wait % 1000000000ull)};
		struct io_uring_cqe *cqe;
		int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
			fprintf(stderr, "mxload: worker %u: io_uring_submit_and_wait: %s\n", w->id,
				strerror(-rc));
			w->exit_status = 1;
			break;
		}
		w->now = mono_ns();
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			dispatch(w, cqe);
			seen++;
		}
		io_uring_cq_advance(&w->ring, seen);
		if (!w->stopping && ((w->end_at && w->now >= w->end_at) || atomic_load(&w->run->stop)))
			begin_stop(w);
		if (w->open_loop)
			dispatch_arrivals(w);
		if (w->now >= w->next_tick) {
			tick(w);
			w->next_tick = w->now + TICK_NS;
		}
		atomic_store_explicit(&w->pub_msgs, w->st.msgs_ok, memory_order_relaxed);
		atomic_store_explicit(&w->pub_errors, w->errors_total, memory_order_relaxed);
	}
}

/* ------------------------------------------------------ set-up */

static int setup_ring(struct worker *w)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
		  IORING_SETUP_SUBMIT_ALL;
	p.cq_entries = RING_CQ_ENTRIES;
	int rc = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
	if (rc == -EINVAL) {
		memset(&p, 0, sizeof p);
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = RING_CQ_ENTRIES;
		rc = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
	}
	if (rc < 0) {
		fprintf(stderr, "mxload: io_uring_queue_init: %s\n", strerror(-rc));
		return -1;
	}
	io_uring_register_ring_fd(&w->ring); /* saves a file lookup per enter; optional */
	size_t ring_bytes = RX_COUNT * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "mxload: mmap: %s\n", strerror(errno));
		return -1;
	}
	w->rx_ring = mem;
	w->rx_mem = malloc((size_t)RX_COUNT * RX_SIZE);
	if (!w->rx_mem)
		return -1;
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)mem, .ring_entries = RX_COUNT, .bgid = RX_GROUP};
	rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (rc < 0) {
		fprintf(stderr, "mxload: io_uring_register_buf_ring: %s\n", strerror(-rc));
		return -1;
	}
	io_uring_buf_ring_init(w->rx_ring);
	for (unsigned i = 0; i < RX_COUNT; i++)
		io_uring_buf_ring_add(w->rx_ring, w->rx_mem + (size_t)i * RX_SIZE, RX_SIZE,
				      (unsigned short)i, io_uring_buf_ring_mask(RX_COUNT), (int)i);
	io_uring_buf_ring_advance(w->rx_ring, RX_COUNT);
	return 0;
}

static unsigned pow2_at_least(unsigned n)
{
	unsigned p = 1;
	while (p < n)
		p <<= 1;
	return p;
}

/* Per-slot memory, all of it now: nothing is allocated per message. */
static int setup_slots(struct worker *w)
{
	const struct mxl_options *o = w->o;
	w->conns = calloc(w->nconns, sizeof *w->conns);
	w->idle = calloc(w->nconns, sizeof *w->idle);
	if (!w->conns || !w->idle)
		return -1;
	/* two messages' envelopes (one sent, one queued), QUIT, EHLO, AUTH,
	 * a PROXY header and BDAT chunk headers */
	size_t envelope = 32 + strlen(o->from) + (size_t)o->rcpts * (16 + strlen(o->to) + 10);
	size_t cmd_cap = 2 * envelope + 4096 + sizeof o->auth_plain;
	unsigned exp_cap = pow2_at_least(2 * o->rcpts + 32);
	for (unsigned i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		c->w = w;
		c->slot = i;
		c->fd = -1;
		c->state = CS_WAIT;
		c->exp_cap = exp_cap;
		c->exp = calloc(exp_cap, sizeof *c->exp);
		c->out.cmd_cap = cmd_cap;
		c->out.cmd = malloc(cmd_cap);
		if (!c->exp || !c->out.cmd)
			return -1;
		if (o->tls != MXL_TLS_NONE) {
			c->wire = malloc(WIRE_CAP);
			if (!c->wire)
				return -1;
		}
		session_reset(c);
	}
	return 0;
}

static void pin(struct worker *w)
{
	if (w->cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
	if (rc != 0)
		fprintf(stderr, "mxload: cannot pin worker %u to CPU %d: %s\n", w->id, w->cpu,
			strerror(rc));
}

static pthread_barrier_t start_barrier;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	pin(w);
	int ok = setup_ring(w) == 0 && setup_slots(w) == 0;
	char err[256] = "";
	if (ok && w->o->tls != MXL_TLS_NONE) {
		w->ssl_ctx = tls_client_ctx(w->o, w, err, sizeof err);
		ok = w->ssl_ctx != NULL;
	}
	if (!ok) {
		fprintf(stderr, "mxload: worker %u set-up failed%s%s\n", w->id, err[0] ? ": " : "", err);
		w->exit_status = 1;
		atomic_store(&w->run->stop, true);
	}
	pthread_barrier_wait(&start_barrier);
	if (ok) {
		w->now = w->start = mono_ns();
		w->st.first_ns = w->start;
		w->next_tick = w->now + TICK_NS;
		if (w->o->duration > 0)
			w->end_at = w->start + (uint64_t)(w->o->duration * 1e9);
		w->active = w->nconns;
		for (unsigned i = 0; i < w->nconns; i++) {
			struct conn *c = &w->conns[i];
			if (slot_has_work(w))
				conn_start(c);
			else
				slot_done(c);
		}
		run_loop(w);
	}
	atomic_store(&w->done, true);
	return NULL;
}

/* ------------------------------------------------ for main.c */

int workers_create(struct mxl_run *run)
{
	const struct mxl_options *o = run->opt;
	unsigned n = o->ncpus ? o->ncpus : 1;
	run->nworkers = n;
	run->workers = calloc(n, sizeof *run->workers);
	if (!run->workers)
		return -1;
	for (unsigned i = 0; i < n; i++) {
		struct worker *w = &run->workers[i];
		w->run = run;
		w->o = o;
		w->id = i;
		w->cpu = o->ncpus ? o->cpus[i] : -1;
		w->nconns = o->connections / n + (i < o->connections % n);
		w->budget = o->messages / n + (i < o->messages % n);
		w->rng = run->run_id ^ (0x9e3779b97f4a7c15ull * (i + 1));
		w->src_next = i;
		hist_init(&w->st.h_connect);
		hist_init(&w->st.h_handshake);
		hist_init(&w->st.h_eod);
		hist_init(&w->st.h_msg);
		if (o->rate > 0) {
			w->open_loop = true;
			w->period_ns = 1e9 * n / o->rate;
			w->arrivals_total = w->budget; /* 0 with --duration: no limit */
		}
	}
	return 0;
}

int workers_start(struct mxl_run *run)
{
	pthread_barrier_init(&start_barrier, NULL, run->nworkers + 1);
	for (unsigned i = 0; i < run->nworkers; i++) {
		int rc = pthread_create(&run->workers[i].thread, NULL, worker_main, &run->workers[i]);
		if (rc != 0) {
			fprintf(stderr, "mxload: pthread_create: %s\n", strerror(rc));
			exit(1);
		}
	}
	pthread_barrier_wait(&start_barrier);
	run->start_ns = mono_ns();
	return 0;
}

void workers_join(struct mxl_run *run)
{
	for (unsigned i = 0; i < run->nworkers; i++)
		pthread_join(run->workers[i].thread, NULL);
	pthread_barrier_destroy(&start_barrier);
}

void workers_destroy(struct mxl_run *run)
{
	for (unsigned i = 0; i < run->nworkers; i++) {
		struct worker *w = &run->workers[i];
		for (unsigned k = 0; w->conns && k < w->nconns; k++) {
			struct conn *c = &w->conns[k];
			if (c->fd >= 0)
				close(c->fd);
			SSL_free(c->ssl);
			free(c->exp);
			free(c->out.cmd);
			free(c->wire);
		}
		free(w->conns);
		free(w->idle);
		if (w->session)
			SSL_SESSION_free(w->session);
		SSL_CTX_free(w->ssl_ctx);
		if (w->rx_ring) {
			io_uring_queue_exit(&w->ring);
			munmap(w->rx_ring, RX_COUNT * sizeof(struct io_uring_buf));
		}
		free(w->rx_mem);
	}
	free(run->workers);
	run->workers = NULL;
}

void workers_progress(const struct mxl_run *run, uint64_t *msgs, uint64_t *errors, unsigned *done)
{
	*msgs = *errors = 0;
	*done = 0;
	for (unsigned i = 0; i < run->nworkers; i++) {
		struct worker *w = &run->workers[i];
		*msgs += atomic_load_explicit(&w->pub_msgs, memory_order_relaxed);
		*errors += atomic_load_explicit(&w->pub_errors, memory_order_relaxed);
		*done += atomic_load(&w->done);
	}
}

const struct mxl_stats *worker_stats(const struct mxl_run *run, unsigned i)
{
	return &run->workers[i].st;
}

bool worker_saw_no_pipelining(const struct mxl_run *run)
{
	for (unsigned i = 0; i < run->nworkers; i++)
		if (run->workers[i].no_pipelining_seen)
			return true;
	return false;
}

bool worker_failed(const struct mxl_run *run, unsigned i)
{
	return run->workers[i].exit_status != 0;
}
