#include "spool_writer.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "core.h"
#include "delivery.h"
#include "log.h"
#include "spool.h"

/* Message ids carry the offset in 8 hex digits, so no record may start
 * past 4 GiB into a segment. */
#define SEGMENT_OFFSET_LIMIT 0xffffffffull
/* Existing segment numbers skipped before open_segment gives up. */
#define SEGMENT_EEXIST_SKIP 1024

static uint64_t wall_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A new segment is durable — header and directory entry — before any
 * record in it is acknowledged. Rare (once per segment-size bytes), so
 * plain blocking calls are fine here. */
static bool is_no_space(int err)
{
	return err == ENOSPC || err == EDQUOT;
}

/* Fails with w->open_errno set; a number whose creation failed is tried
 * again next time, so a full disk does not leave a trail of segments. */
static int open_segment(struct spool_writer *w)
{
	if (w->held)
		return -1; /* the next process of an upgrade numbers past ours */
	uint64_t seq = w->next_seq;
	char path[sizeof w->dir + 32];
	snprintf(path, sizeof path, "%s/%08llu.seg", w->dir, (unsigned long long)seq);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	/* A number another process took (the new process of an upgrade that
	 * failed) is skipped: a segment has one writer. */
	for (int tries = 0; fd < 0 && errno == EEXIST && tries < SEGMENT_EEXIST_SKIP; tries++) {
		seq = ++w->next_seq;
		snprintf(path, sizeof path, "%s/%08llu.seg", w->dir, (unsigned long long)seq);
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	}
	if (fd < 0) {
		w->open_errno = errno;
		log_error("spool: cannot create %s: %s", path, strerror(errno));
		return -1;
	}
	uint8_t header[SPOOL_SEGMENT_HEADER_SIZE];
	spool_segment_header(header, w->core_index, seq, wall_clock_ns());
	ssize_t n = pwrite(fd, header, sizeof header, 0);
	if (n != (ssize_t)sizeof header || fdatasync(fd) < 0 || spool_fsync_dir(w->dir) < 0) {
		/* a short header write is a full disk too */
		w->open_errno = n >= 0 && n < (ssize_t)sizeof header ? ENOSPC : errno;
		log_error("spool: cannot initialise %s: %s", path, strerror(w->open_errno));
		close(fd);
		unlink(path);
		return -1;
	}
	if (w->fd >= 0)
		close(w->fd);
	w->fd = fd;
	w->seq = seq;
	w->next_seq = seq + 1;
	w->tail = SPOOL_SEGMENT_HEADER_SIZE;
	log_info("spool: writing segment %s", path);
	return 0;
}

int spool_writer_open(struct spool_writer *w, struct core *core, const char *spool_dir,
		      unsigned core_index, uint64_t first_seq, uint64_t segment_size)
{
	memset(w, 0, sizeof *w);
	w->core = core;
	w->core_index = core_index;
	w->fd = -1;
	w->segment_size = segment_size < SEGMENT_OFFSET_LIMIT ? segment_size : SEGMENT_OFFSET_LIMIT;
	int n = snprintf(w->dir, sizeof w->dir, "%s/%02u", spool_dir, core_index);
	if (n < 0 || (size_t)n >= sizeof w->dir) {
		log_error("spool: directory name too long: %s", spool_dir);
		return -1;
	}
	if (mkdir(w->dir, 0700) < 0 && errno != EEXIST) {
		log_error("spool: cannot create %s: %s", w->dir, strerror(errno));
		return -1;
	}
	w->next_seq = first_seq;
	if (open_segment(w) == 0)
		return 0;
	if (!is_no_space(w->open_errno))
		return -1;
	/* Serve anyway: every message gets 452 4.3.1 until space returns. */
	log_warn("spool: %s is full at start-up: new mail is refused with 452 4.3.1 until "
		 "there is space",
		 w->dir);
	return 0;
}

void spool_writer_close(struct spool_writer *w)
{
	assert(!w->in_flight);
	if (w->fd >= 0) {
		fdatasync(w->fd);
		close(w->fd);
		w->fd = -1;
	}
	struct spool_batch *b = &w->batch;
	for (uint32_t i = 0; i < b->heads_cap; i++) {
		buf_free(&b->heads[i]);
		buf_free(&b->received[i]);
	}
	free(b->heads);
	free(b->received);
	free(b->iov);
	free(b->conns);
	free(w->waiting);
}

void spool_writer_enqueue_local(struct spool_writer *w, struct spool_local *m)
{
	m->next = NULL;
	if (!w->local_waiting)
		w->local_tail = &w->local_waiting;
	*w->local_tail = m;
	w->local_tail = &m->next;
}

static uint32_t count_locals(const struct spool_local *m)
{
	uint32_t n = 0;
	for (; m; m = m->next)
		n++;
	return n;
}

static void locals_done(struct spool_local *m, bool ok)
{
	while (m) {
		struct spool_local *next = m->next;
		m->done(m, ok);
		m = next;
	}
}

/* A session-less message as record i of the batch (no Received:). */
static int encode_local(struct spool_writer *w, uint32_t i, struct spool_local *l, uint64_t now_ns)
{
	struct spool_batch *b = &w->batch;
	spool_make_id(l->id, w->core_index, w->seq, w->tail);
	struct spool_meta m = {
		.id = l->id,
		.received_unix_ns = l->received_unix_ns ? l->received_unix_ns : now_ns,
		.env = &l->env,
		.peer = &l->peer,
	};
	struct buf *head = &b->heads[i];
	buf_reset(head);
	buf_reset(&b->received[i]);
	if (spool_record_head(head, &m, l->body.len) < 0)
		return -1;
	const void *parts[1] = {l->body.data};
	size_t lens[1] = {l->body.len};
	spool_record_seal(head, parts, lens, 1);
	struct iovec *iov = &b->iov[3 * (size_t)i];
	iov[0] = (struct iovec){head->data, head->len};
	iov[1] = (struct iovec){b->received[i].data, 0};
	iov[2] = (struct iovec){l->body.data, l->body.len};
	return 0;
}

int spool_writer_enqueue(struct spool_writer *w, struct conn *c)
{
	if (w->nwaiting == w->waiting_cap) {
		uint32_t cap = w->waiting_cap ? w->waiting_cap * 2 : 64;
		struct conn **p = realloc(w->waiting, cap * sizeof *p);
		if (!p)
			return -1;
		w->waiting = p;
		w->waiting_cap = cap;
	}
	w->waiting[w->nwaiting++] = c;
	return 0;
}

bool spool_writer_idle(const struct spool_writer *w)
{
	return !w->in_flight && w->nwaiting == 0 && !w->local_waiting;
}

/* Room for n messages in the batch's per-message arrays. */
static int batch_reserve(struct spool_batch *b, uint32_t n)
{
	if (n <= b->heads_cap)
		return 0;
	struct buf *heads = realloc(b->heads, n * sizeof *heads);
	if (!heads)
		return -1;
	b->heads = heads;
	struct buf *received = realloc(b->received, n * sizeof *received);
	if (!received)
		return -1;
	b->received = received;
	struct iovec *iov = realloc(b->iov, 3 * (size_t)n * sizeof *iov);
	if (!iov)
		return -1;
	b->iov = iov;
	for (uint32_t i = b->heads_cap; i < n; i++) {
		buf_init(&b->heads[i], 0);
		buf_init(&b->received[i], 0);
	}
	b->heads_cap = n;
	return 0;
}

/* Encode message i of the batch at the writer's tail. */
static int encode_record(struct spool_writer *w, uint32_t i, uint64_t now_ns)
{
	struct spool_batch *b = &w->batch;
	struct conn *c = b->conns[i];
	spool_make_id(c->message_id, w->core_index, w->seq, w->tail);
	struct spool_meta m = {
		.id = c->message_id,
		.received_unix_ns = c->message_started_ns ? c->message_started_ns : now_ns,
		.env = &c->smtp.env,
		.peer = &c->peer,
	};
	struct buf *head = &b->heads[i], *received = &b->received[i];
	buf_reset(head);
	buf_reset(received);
	if (spool_received_header(received, &m, c->smtp.cfg->hostname,
				  (time_t)(m.received_unix_ns / 1000000000u)) < 0)
		return -1;
	const struct buf *body = &c->smtp.body;
	if (spool_record_head(head, &m, (uint64_t)received->len + body->len) < 0)
		return -1;
	const void *parts[2] = {received->data, body->data};
	size_t lens[2] = {received->len, body->len};
	spool_record_seal(head, parts, lens, 2);
	struct iovec *iov = &b->iov[3 * (size_t)i];
	iov[0] = (struct iovec){head->data, head->len};
	iov[1] = (struct iovec){received->data, received->len};
	iov[2] = (struct iovec){body->data, body->len};
	return 0;
}

static uint64_t record_bytes(const struct spool_batch *b, uint32_t i)
{
	const struct iovec *iov = &b->iov[3 * (size_t)i];
	return iov[0].iov_len + iov[1].iov_len + iov[2].iov_len;
}

/* Messages the batch could not take get their 451 (or 452 on a full
 * disk) now, outside the batch. */
static void fail_now(struct conn **conns, uint32_t n, bool no_space)
{
	for (uint32_t i = 0; i < n; i++)
		conn_spool_done(conns[i], false, no_space);
}

void spool_writer_flush(struct spool_writer *w)
{
	if (w->in_flight || (w->nwaiting == 0 && !w->local_waiting))
		return;
	if (w->fd < 0 || w->tail >= w->segment_size) {
		if (open_segment(w) < 0 && w->fd < 0) {
			struct conn **conns = w->waiting;
			uint32_t n = w->nwaiting;
			w->waiting = NULL;
			w->nwaiting = w->waiting_cap = 0;
			struct spool_local *locals = w->local_waiting;
			w->local_waiting = NULL;
			fail_now(conns, n, is_no_space(w->open_errno));
			free(conns);
			locals_done(locals, false);
			return;
		}
	}
	struct spool_local *locals = w->local_waiting;
	w->local_waiting = NULL;
	uint32_t nlocals = count_locals(locals);
	struct spool_batch *b = &w->batch;
	/* Swap the waiting list into the batch: sessions answered when this
	 * batch completes queue their next messages on the other array. */
	struct conn **conns = b->conns;
	uint32_t cap = b->cap;
	b->conns = w->waiting;
	b->cap = w->waiting_cap;
	b->n = w->nwaiting;
	w->waiting = conns;
	w->waiting_cap = cap;
	w->nwaiting = 0;
	if (batch_reserve(b, b->n + nlocals) < 0) {
		log_error("spool: out of memory for a batch of %u", b->n);
		uint32_t n = b->n;
		b->n = 0;
		fail_now(b->conns, n, false);
		locals_done(locals, false);
		return;
	}

	uint64_t now_ns = wall_clock_ns();
	b->fd = w->fd;
	b->start = w->tail;
	b->failed = b->cancelled = b->no_space = false;
	b->ops_left = 0;
	uint64_t expected = 0;
	uint32_t kept = 0;
	struct conn *refused[64];
	uint32_t nrefused = 0;
	for (uint32_t i = 0; i < b->n; i++) {
		b->conns[kept] = b->conns[i];
		if (w->tail > SEGMENT_OFFSET_LIMIT || encode_record(w, kept, now_ns) < 0) {
			if (nrefused < 64)
				refused[nrefused++] = b->conns[i];
			else
				conn_spool_done(b->conns[i], false, false);
			continue;
		}
		uint64_t len = record_bytes(b, kept);
		struct io_uring_sqe *sqe = core_sqe(w->core);
		io_uring_prep_writev(sqe, w->fd, &b->iov[3 * (size_t)kept], 3, w->tail);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_sqe_set_data64(sqe, op_data(w, OP_SPOOL));
		w->tail += len;
		expected += len;
		b->ops_left++;
		kept++;
	}
	b->n = kept;
	/* session-less messages (DSNs) go after the sessions' */
	b->locals = NULL;
	struct spool_local **ltail = &b->locals, *lfailed = NULL;
	for (uint32_t i = kept; locals; i++) {
		struct spool_local *l = locals;
		locals = l->next;
		l->next = NULL;
		if (w->tail > SEGMENT_OFFSET_LIMIT || encode_local(w, i, l, now_ns) < 0) {
			l->next = lfailed;
			lfailed = l;
			i--;
			continue;
		}
		uint64_t len = record_bytes(b, i);
		struct io_uring_sqe *sqe = core_sqe(w->core);
		io_uring_prep_writev(sqe, w->fd, &b->iov[3 * (size_t)i], 3, w->tail);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_sqe_set_data64(sqe, op_data(w, OP_SPOOL));
		w->tail += len;
		expected += len;
		b->ops_left++;
		*ltail = l;
		ltail = &l->next;
	}
	if (kept > 0 || b->locals) {
		struct io_uring_sqe *sqe = core_sqe(w->core);
		io_uring_prep_fsync(sqe, w->fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, op_data(b, OP_SPOOL));
		b->ops_left++;
		w->expected_bytes = expected;
		w->written_bytes = 0;
		w->in_flight = true;
		w->batches++;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		w->batch_submitted_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	}
	fail_now(refused, nrefused, false);
	locals_done(lfailed, false);
}

/* A failed batch may have left part of its records on disk: cut them off so
 * a message that got 4xx does not reappear after a restart. After an I/O
 * error the segment's page cache cannot be trusted, so writing goes on in
 * a fresh segment; after a full disk the cut-back is enough (a fresh
 * segment would only leave an empty file behind per failed batch). */
static void discard_failed_batch(struct spool_writer *w)
{
	struct spool_batch *b = &w->batch;
	bool cut = ftruncate(b->fd, (off_t)b->start) == 0 && fdatasync(b->fd) == 0;
	if (!cut)
		log_error("spool: cannot cut back segment %08llu to %llu: %s",
			  (unsigned long long)w->seq, (unsigned long long)b->start, strerror(errno));
	w->tail = b->start;
	if (cut && b->no_space)
		return;
	if (open_segment(w) < 0)
		log_error("spool: staying on segment %08llu", (unsigned long long)w->seq);
}

#ifdef MXD_TEST_HOOKS
/* Test builds only: while the file named by MXD_SPOOL_FAULT_FILE exists,
 * every spool write and fdatasync fails with EIO, as a dying disk would. */
static int injected_fault(int res)
{
	const char *trigger = getenv("MXD_SPOOL_FAULT_FILE");
	return trigger && access(trigger, F_OK) == 0 ? -EIO : res;
}
#endif

void spool_writer_complete(struct spool_writer *w, bool is_fsync, int res)
{
	struct spool_batch *b = &w->batch;
#ifdef MXD_TEST_HOOKS
	res = injected_fault(res);
#endif
	assert(w->in_flight && b->ops_left > 0);
	if (res == -ECANCELED) {
		/* An earlier linked op failed or came back short: that one
		 * decides how the batch failed and says why. */
		b->cancelled = true;
	} else if (res < 0) {
		if (!b->failed)
			log_error("spool: %s failed on segment %08llu: %s", is_fsync ? "fdatasync" : "write",
				  (unsigned long long)w->seq, strerror(-res));
		b->failed = true;
		if (res == -ENOSPC || res == -EDQUOT)
			b->no_space = true;
	} else if (!is_fsync) {
		w->written_bytes += (uint64_t)res;
	}
	if (--b->ops_left > 0)
		return;
	/* A regular-file write comes back short when the file system runs out
	 * of space (the linked fsync is then cancelled): that is a full disk,
	 * 452 4.3.1, not a write error. A write that failed outright has
	 * already said why. */
	bool short_write = w->written_bytes < w->expected_bytes;
	if (short_write && !b->failed) {
		log_error("spool: short write on segment %08llu: file system full?",
			  (unsigned long long)w->seq);
		b->no_space = true;
	}
	bool ok = !b->failed && !b->cancelled && !short_write;
	if (!ok)
		discard_failed_batch(w);
	w->in_flight = false;
	if (ok) {
		w->committed_messages += b->n;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
		struct core_metrics *m = &w->core->metrics;
		metrics_commit_latency(m, (now_ns - w->batch_submitted_ns) / 1000u);
		metrics_batch_size(m, b->n);
		if (w->core->delivery) /* one check per batch, none per message */
			delivery_committed(w->core->delivery, w->seq, w->tail);
	}
	uint32_t n = b->n;
	b->n = 0;
	for (uint32_t i = 0; i < n; i++)
		conn_spool_done(b->conns[i], ok, b->no_space);
	struct spool_local *locals = b->locals;
	b->locals = NULL;
	locals_done(locals, ok);
}

uint64_t spool_writer_hold(struct spool_writer *w, bool hold)
{
	if (w->held != hold)
		log_info("spool: %s segment %08llu%s", hold ? "holding on to" : "released from",
			 (unsigned long long)w->seq, w->fd >= 0 ? "" : " (none open)");
	w->held = hold;
	return w->fd >= 0 ? w->seq : 0;
}
