/* delivery: a core's delivery worker, see delivery.h and docs/relay.md.
 *
 * Memory: each of this core's segments is mapped read-only (the spool
 * writer's page cache), so routing, the envelope and the message bytes
 * fed to the next hop are read in place; a cold page is read from disk on
 * the core's thread (rare: a message is usually delivered seconds after
 * it was written). The segment's replay (delivery_state.h) is the state;
 * beside it, one flag byte per message says whether a delivery of it is
 * in flight (BUSY: from the moment it is queued until its records are
 * durable) or whether it is held (its recipients are kept or unrouted).
 *
 * The one .dlv writer of the core appends records exactly as the spool
 * writer does: what arrives in a loop turn is one write per .dlv plus
 * one fdatasync, linked, one batch in flight, and the worker acts on a
 * record only once its batch completed. A "release" entry queued behind a
 * message's records ends its BUSY state only when they are durable. */
#include "delivery.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "core.h"
#include "delivery_request.h"
#include "delivery_sched.h"
#include "delivery_state.h"
#include "dsn.h"
#include "log.h"
#include "relay_client.h"
#include "relay_tls.h"
#include "route.h"
#include "spool.h"
#include "upgrade.h"

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

#define RC_RX_SIZE (16 * 1024)          /* one recv's bytes: replies are short */
#define RC_OUT_HIGH (256 * 1024)        /* body bytes queued before a send */
#define RC_BODY_PIECE (64 * 1024)       /* body bytes given per relay_client_body */
#define RC_IDLE_MS 5000                 /* an idle connection is closed with QUIT */
#define RC_HOPS_MAX 16                  /* next hops of one route tried in turn */
#define MAP_EXTRA (64ull << 20)         /* the open segment's map past 4 GiB */
#define TLS_CTX_MAX 16                  /* client contexts kept (CA file, verify) */

enum { MF_BUSY = 1, MF_HELD = 2 };

struct dseg {
	struct dseg *next;
	uint64_t seq;
	const uint8_t *map;
	size_t map_len;
	uint64_t end;                  /* committed bytes taken into rp */
	int dlv_fd;                    /* -1: no .dlv yet */
	uint64_t dlv_tail;
	struct dlv_replay rp;
	size_t cap_msgs, cap_rcpts;
	uint8_t *mflags;               /* per message: MF_* */
	uint64_t unfinished;           /* recipients not finished */
	uint32_t busy;                 /* messages with MF_BUSY */
};

/* A message waiting for a connection to its route's next hops. */
struct ditem {
	struct dseg *seg;
	uint32_t mi;
	uint64_t key;                  /* the route's identity (dsched_route_key) */
};

/* What the .dlv writer holds: a record (len > 0) or a release (len 0). */
struct wentry {
	struct dseg *seg;
	uint32_t mi;
	uint32_t len;
	size_t off;                    /* in bytes (pending) or in its group (batch) */
	uint32_t group;
};

struct wgroup {
	struct dseg *seg;
	struct buf bytes;
	uint64_t at;                   /* .dlv offset of its first byte */
};

struct rconn {
	struct core_op op_connect, op_recv, op_send, op_close;
	struct delivery *d;
	struct rconn *next;
	struct relay_url hops[RC_HOPS_MAX];
	unsigned nhops, hop;
	uint64_t key;
	int fd;
	unsigned pending;              /* ring operations not yet completed */
	bool connected, closing, send_armed, recv_armed, lost;
	struct relay_client_config cfg;
	struct relay_client rc;
	char *reply;
	char rx[RC_RX_SIZE];
	struct buf out;                /* what relay_client wrote: plaintext */
	size_t out_sent;               /* of out, or of wire once TLS is on */
	/* TLS (smtps from the start, smtp+tls after STARTTLS) */
	char *ca;                      /* the route's "ca", else NULL */
	bool noverify;
	SSL *ssl;
	bool handshaking;
	bool ktls_switching;           /* handshake done: TX to the kernel once wire is sent */
	bool ktls_tx;                  /* the kernel seals what is sent: out goes as is */
	struct buf wire;               /* ciphertext to send */
	uint64_t deadline_ms;          /* 0: none */
	uint64_t idle_since_ms;
	/* the message in flight */
	bool msg_active;
	struct dseg *seg;
	uint32_t mi;
	struct relay_message msg;
	struct relay_rcpt *rcpts;
	uint32_t rcpts_cap;
	const char *body;
	uint64_t body_given;
};

struct delivery {
	struct core *core;
	char dir[4096];                /* DIR/<core> */
	bool active;                   /* false: waiting for an upgrade's old process */
	pid_t wait_ppid;
	uint64_t generation;           /* of the config the HELD flags were set under */
	struct dseg *segs;
	uint64_t queue;                /* unfinished recipients, every segment */
	uint64_t scan_at_ms;           /* next look for deferred recipients due */
	uint64_t hold_until_ms;        /* after a .dlv write failure: no new starts */
	struct ditem *ready;            /* FIFO; a taken entry has seg NULL */
	size_t ready_head, nready, ready_cap;
	size_t ready_live;             /* entries not taken */
	struct {
		uint64_t key;
		size_t waiting;        /* ready entries of this route */
	} *keys;                       /* the routes with mail waiting, few */
	size_t nkeys, keys_cap;
	struct rconn *conns;
	unsigned nconns;
	struct route *routes;          /* scratch for route_message */
	size_t routes_cap;
	uint32_t rnd;
	/* the .dlv writer */
	struct buf pend_bytes;
	struct wentry *pend;
	size_t npend, pend_cap;
	struct wentry *batch;
	size_t nbatch, batch_cap;
	struct wgroup *groups;
	uint32_t ngroups, groups_cap;
	uint32_t ops_left;
	bool in_flight, batch_failed;
	struct core_op op_batch;
	uint64_t last_request_ms;
	struct {
		char *ca;              /* NULL: relay ca or the system's store */
		bool verify;
		SSL_CTX *ctx;
	} tls[TLS_CTX_MAX];
	unsigned ntls;
};

/* ---- small helpers ---- */

static uint64_t wall_s(void)
{
	return (uint64_t)time(NULL);
}

static uint32_t next_rnd(struct delivery *d)
{
	/* xorshift32: jitter only, not security */
	uint32_t x = d->rnd;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return d->rnd = x;
}

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap : 16;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, n * size);
	if (!q)
		return -1;
	*p = q;
	*cap = n;
	return 0;
}

/* Count a ready entry of route key in (delta 1) or out (-1). */
static void key_count(struct delivery *d, uint64_t key, int delta)
{
	d->ready_live += (size_t)(ssize_t)delta;
	for (size_t i = 0; i < d->nkeys; i++) {
		if (d->keys[i].key == key) {
			d->keys[i].waiting += (size_t)(ssize_t)delta;
			if (d->keys[i].waiting == 0)
				d->keys[i] = d->keys[--d->nkeys];
			return;
		}
	}
	assert(delta > 0);
	if (grow((void **)&d->keys, &d->keys_cap, d->nkeys + 1, sizeof *d->keys) < 0)
		abort(); /* a few entries; without it waiting mail would stall */
	d->keys[d->nkeys].key = key;
	d->keys[d->nkeys].waiting = 1;
	d->nkeys++;
}

static const struct conf *cur_conf(const struct delivery *d)
{
	return d->core->view->snap->conf;
}

bool delivery_configured(const struct conf *c)
{
	if (c->relay.bounce.nhops)
		return true;
	for (size_t i = 0; i < c->nrules; i++)
		if (c->rules[i].relay.nhops)
			return true;
	return false;
}

static void gauge_queue(struct delivery *d)
{
	METRICS_SET(d->core->metrics.relay_queue, d->queue);
}

/* ---- segments ---- */

static void seg_path(const struct delivery *d, uint64_t seq, const char *ext, char *out,
		     size_t size)
{
	snprintf(out, size, "%s/%08" PRIu64 ".%s", d->dir, seq, ext);
}

static struct dseg *seg_find(struct delivery *d, uint64_t seq)
{
	for (struct dseg *s = d->segs; s; s = s->next)
		if (s->seq == seq)
			return s;
	return NULL;
}

/* The segment the spool writer appends to: never reclaimed. */
static bool seg_being_written(const struct delivery *d, const struct dseg *s)
{
	const struct spool_writer *w = &d->core->spool;
	return w->fd >= 0 && w->seq == s->seq;
}

/* Committed bytes of the writer's segment: a batch in flight is not. */
static uint64_t writer_committed_end(const struct delivery *d)
{
	const struct spool_writer *w = &d->core->spool;
	return w->in_flight ? w->batch.start : w->tail;
}

/* Map the segment: the one being written with room to grow into (reads
 * stay below what was committed, so never past the end of the file). */
static int seg_map(struct delivery *d, struct dseg *s, bool growing)
{
	char path[4200];
	seg_path(d, s->seq, "seg", path, sizeof path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_error("delivery: open %s: %s", path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size < SPOOL_SEGMENT_HEADER_SIZE) {
		close(fd);
		return -1;
	}
	size_t len = growing ? (size_t)0x100000000ull + (size_t)cur_conf(d)->max_message_size +
				       MAP_EXTRA
			     : (size_t)st.st_size;
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		log_error("delivery: mmap %s: %s", path, strerror(errno));
		return -1;
	}
	s->map = p;
	s->map_len = len;
	return 0;
}

static void seg_count(struct delivery *d, struct dseg *s)
{
	s->unfinished = 0;
	for (size_t i = 0; i < s->rp.nmsgs; i++) {
		const struct dlv_message *m = &s->rp.msgs[i];
		for (uint32_t j = 0; j < m->nrcpt; j++)
			s->unfinished += !dlv_rcpt_finished(m, &s->rp.rcpts[m->first + j]);
	}
	d->queue += s->unfinished;
}

static void seg_free(struct dseg *s)
{
	if (s->map)
		munmap((void *)s->map, s->map_len);
	if (s->dlv_fd >= 0)
		close(s->dlv_fd);
	dlv_replay_free(&s->rp);
	free(s->mflags);
	free(s);
}

/* Replay one segment and its .dlv (start-up, blocking I/O). */
static struct dseg *seg_load(struct delivery *d, uint64_t seq)
{
	struct dseg *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->seq = seq;
	s->dlv_fd = -1;
	bool growing = d->core->spool.seq == seq && d->core->spool.fd >= 0;
	if (seg_map(d, s, growing) < 0) {
		free(s);
		return NULL;
	}
	uint64_t end = growing ? writer_committed_end(d) : s->map_len;
	struct buf log;
	buf_init(&log, 0);
	int rc = dlv_recover(d->dir, d->core->index, seq, s->map, end, &s->rp, &log);
	if (log.len) {
		buf_append(&log, "", 1);
		char *save = NULL;
		for (char *l = strtok_r(log.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
			log_msg(rc < 0 ? LOG_ERROR : LOG_INFO, "%s", l);
	}
	buf_free(&log);
	if (rc < 0) {
		munmap((void *)s->map, s->map_len);
		free(s);
		return NULL;
	}
	s->end = s->rp.seg.good_end;
	s->cap_msgs = s->rp.nmsgs;
	s->cap_rcpts = s->rp.nrcpts;
	s->mflags = calloc(s->rp.nmsgs ? s->rp.nmsgs : 1, 1);
	char path[4200];
	seg_path(d, seq, "dlv", path, sizeof path);
	s->dlv_fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (s->dlv_fd >= 0) {
		struct stat st;
		s->dlv_tail = fstat(s->dlv_fd, &st) == 0 ? (uint64_t)st.st_size : 0;
	}
	seg_count(d, s);
	return s;
}

/* New records of the writer's segment, committed up to end. */
static int seg_take_records(struct delivery *d, struct dseg *s, uint64_t end, bool queue_them);

static void enqueue(struct delivery *d, struct dseg *s, uint32_t mi);
static bool dsn_due(const struct dseg *s, uint32_t mi);
static void dsn_start(struct delivery *d, struct dseg *s, uint32_t mi);

static int seg_take_records(struct delivery *d, struct dseg *s, uint64_t end, bool queue_them)
{
	struct dlv_replay *r = &s->rp;
	while (s->end < end) {
		struct spool_record_view v;
		size_t len;
		if (spool_record_decode(s->map + s->end, end - s->end, &v, &len) != SPOOL_OK) {
			log_error("delivery: segment %08" PRIu64 ": committed record at %" PRIu64
				  " does not decode",
				  s->seq, s->end);
			return -1;
		}
		size_t cap_flags = s->cap_msgs;
		if (grow((void **)&r->msgs, &s->cap_msgs, r->nmsgs + 1, sizeof *r->msgs) < 0 ||
		    grow((void **)&r->rcpts, &s->cap_rcpts, r->nrcpts + v.nrcpt, sizeof *r->rcpts) < 0)
			return -1;
		if (s->cap_msgs != cap_flags || !s->mflags) {
			uint8_t *f = realloc(s->mflags, s->cap_msgs);
			if (!f)
				return -1;
			s->mflags = f;
		}
		struct dlv_message *m = &r->msgs[r->nmsgs];
		m->offset = s->end;
		m->received = v.received_unix_ns / 1000000000u;
		m->nrcpt = v.nrcpt;
		m->first = (uint32_t)r->nrcpts;
		m->null_sender = v.mail_from_len == 0;
		size_t cur = 0;
		struct spool_rcpt_view rv;
		for (uint32_t i = 0; i < v.nrcpt && spool_rcpt_next(&v, &cur, &rv); i++) {
			memset(&r->rcpts[m->first + i], 0, sizeof r->rcpts[0]);
			r->rcpts[m->first + i].notify = rv.notify;
		}
		r->nrcpts += v.nrcpt;
		s->mflags[r->nmsgs] = 0;
		uint32_t mi = (uint32_t)r->nmsgs++;
		r->seg.records++;
		s->end += len;
		r->seg.good_end = s->end;
		s->unfinished += v.nrcpt;
		d->queue += v.nrcpt;
		if (queue_them)
			enqueue(d, s, mi);
	}
	gauge_queue(d);
	return 0;
}

static void seg_add(struct delivery *d, struct dseg *s)
{
	struct dseg **p = &d->segs;
	while (*p && (*p)->seq < s->seq)
		p = &(*p)->next;
	s->next = *p;
	*p = s;
}

/* Every message finished, nothing damaged, not being written: the .seg
 * and the .dlv go, then the directory entry removal is made durable. */
static void seg_maybe_reclaim(struct delivery *d, struct dseg *s)
{
	if (s->unfinished || s->busy || s->rp.seg.corrupt_regions || s->rp.dlv.corrupt_regions ||
	    seg_being_written(d, s) || d->in_flight)
		return;
	if (!dlv_segment_reclaimable(&s->rp, false))
		return;
	char seg[4200], dlv[4200];
	seg_path(d, s->seq, "seg", seg, sizeof seg);
	seg_path(d, s->seq, "dlv", dlv, sizeof dlv);
	if (unlink(seg) < 0 && errno != ENOENT) {
		log_error("delivery: cannot remove %s: %s", seg, strerror(errno));
		return;
	}
	if (unlink(dlv) < 0 && errno != ENOENT)
		log_error("delivery: cannot remove %s: %s", dlv, strerror(errno));
	if (spool_fsync_dir(d->dir) < 0)
		log_error("delivery: fsync %s: %s", d->dir, strerror(errno));
	log_info("delivery: segment %08" PRIu64 " reclaimed: %zu messages, all finished", s->seq,
		 s->rp.nmsgs);
	METRICS_INC(d->core->metrics.relay_reclaimed);
	struct dseg **p = &d->segs;
	while (*p != s)
		p = &(*p)->next;
	*p = s->next;
	seg_free(s);
}

static void reclaim_all(struct delivery *d)
{
	struct dseg *s = d->segs;
	while (s) {
		struct dseg *next = s->next;
		seg_maybe_reclaim(d, s);
		s = next;
	}
}

/* ---- the schedule ---- */

static int msg_view(const struct dseg *s, uint32_t mi, struct spool_record_view *v)
{
	uint64_t off = s->rp.msgs[mi].offset;
	size_t len;
	return spool_record_decode(s->map + off, s->end - off, v, &len) == SPOOL_OK ? 0 : -1;
}

/* Route every recipient into d->routes; -1 when the record is unreadable. */
static int msg_routes(struct delivery *d, const struct dseg *s, uint32_t mi,
		      struct spool_record_view *v)
{
	if (msg_view(s, mi, v) < 0)
		return -1;
	if (grow((void **)&d->routes, &d->routes_cap, v->nrcpt ? v->nrcpt : 1, sizeof *d->routes) < 0)
		return -1;
	const struct snapshot *snap = d->core->view->snap;
	return route_message(snap->conf, snap->policy, v, d->routes, d->routes_cap) < 0 ? -1 : 0;
}

/* Queue the message for delivery if it has recipients due: the first
 * route group with due recipients decides the connection it waits for. */
static void enqueue(struct delivery *d, struct dseg *s, uint32_t mi)
{
	if (s->mflags[mi] & (MF_BUSY | MF_HELD))
		return;
	const struct dlv_message *m = &s->rp.msgs[mi];
	uint64_t now_s = wall_s();
	bool due = false;
	for (uint32_t j = 0; j < m->nrcpt && !due; j++)
		due = dsched_rcpt_due(&s->rp.rcpts[m->first + j], now_s);
	if (!due)
		return;
	struct spool_record_view v;
	if (msg_routes(d, s, mi, &v) < 0) {
		log_error("delivery: segment %08" PRIu64 " message at %" PRIu64 " cannot be routed",
			  s->seq, m->offset);
		s->mflags[mi] |= MF_HELD;
		return;
	}
	for (uint32_t j = 0; j < m->nrcpt; j++) {
		if (!dsched_rcpt_due(&s->rp.rcpts[m->first + j], now_s))
			continue;
		const struct route *r = &d->routes[j];
		if (r->kind != ROUTE_RELAY)
			continue;
		if (grow((void **)&d->ready, &d->ready_cap, d->nready + 1, sizeof *d->ready) < 0)
			return;
		d->ready[d->nready++] = (struct ditem){.seg = s, .mi = mi, .key = dsched_route_key(r->via)};
		key_count(d, d->ready[d->nready - 1].key, 1);
		s->mflags[mi] |= MF_BUSY;
		s->busy++;
		return;
	}
	/* every due recipient is kept for consumers or unrouted */
	s->mflags[mi] |= MF_HELD;
	for (uint32_t j = 0; j < m->nrcpt; j++)
		if (dsched_rcpt_due(&s->rp.rcpts[m->first + j], now_s) && d->routes[j].kind == ROUTE_NONE)
			log_warn("delivery: %s recipient %u: no rule accepts it now; held (mxspool drop "
				 "to give up)",
				 v.id, j);
}

/* Look at every message for deferred recipients whose time came. */
static void scan(struct delivery *d)
{
	uint64_t now_s = wall_s(), next = UINT64_MAX;
	for (struct dseg *s = d->segs; s; s = s->next) {
		for (uint32_t mi = 0; mi < s->rp.nmsgs; mi++) {
			const struct dlv_message *m = &s->rp.msgs[mi];
			if (s->mflags[mi] & (MF_BUSY | MF_HELD))
				continue;
			if (dsn_due(s, mi))
				dsn_start(d, s, mi);
			else
				enqueue(d, s, mi);
			if (s->mflags[mi] & (MF_BUSY | MF_HELD))
				continue;
			for (uint32_t j = 0; j < m->nrcpt; j++) {
				const struct dlv_rcpt *rc = &s->rp.rcpts[m->first + j];
				if (rc->outcome == DLV_DEFERRED && rc->next_try < next)
					next = rc->next_try;
			}
		}
	}
	uint64_t now_ms = d->core->now_ms;
	/* a recipient due now but not queued (its route is held) is looked
	 * at again in a second, not in a spin */
	d->scan_at_ms = next == UINT64_MAX ? UINT64_MAX
			: next <= now_s	   ? now_ms + 1000
					   : dsched_due_ms(next, now_s, now_ms);
}

/* ---- the .dlv writer ---- */

static void writer_add(struct delivery *d, struct dseg *s, uint32_t mi, const struct dlv_record *rec)
{
	size_t len = dlv_record_size(rec);
	if (grow((void **)&d->pend, &d->pend_cap, d->npend + 1, sizeof *d->pend) < 0 ||
	    buf_reserve(&d->pend_bytes, len) < 0) {
		log_error("delivery: out of memory for a .dlv record");
		return;
	}
	size_t n = dlv_record_encode((uint8_t *)d->pend_bytes.data + d->pend_bytes.len, len, rec);
	assert(n == len);
	d->pend[d->npend++] = (struct wentry){.seg = s, .mi = mi, .len = (uint32_t)n,
					      .off = d->pend_bytes.len};
	d->pend_bytes.len += n;
}

/* The message's delivery is over once what came before is durable. */
static void writer_release(struct delivery *d, struct dseg *s, uint32_t mi)
{
	if (grow((void **)&d->pend, &d->pend_cap, d->npend + 1, sizeof *d->pend) < 0) {
		log_error("delivery: out of memory releasing a message");
		abort(); /* a message left BUSY would never be delivered */
	}
	d->pend[d->npend++] = (struct wentry){.seg = s, .mi = mi, .len = 0};
}

/* A .dlv is created with its header, durable with its directory entry,
 * before the first record goes in (rare: once per segment). */
static int dlv_open(struct delivery *d, struct dseg *s)
{
	if (s->dlv_fd >= 0 && s->dlv_tail >= DLV_HEADER_SIZE)
		return 0;
	char path[4200];
	seg_path(d, s->seq, "dlv", path, sizeof path);
	if (s->dlv_fd < 0)
		s->dlv_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->dlv_fd < 0) {
		log_error("delivery: cannot create %s: %s", path, strerror(errno));
		return -1;
	}
	uint8_t h[DLV_HEADER_SIZE];
	dlv_file_header(h, d->core->index, s->seq);
	if (pwrite(s->dlv_fd, h, sizeof h, 0) != (ssize_t)sizeof h || fdatasync(s->dlv_fd) < 0 ||
	    spool_fsync_dir(d->dir) < 0) {
		log_error("delivery: cannot initialise %s: %s", path, strerror(errno));
		return -1;
	}
	s->dlv_tail = DLV_HEADER_SIZE;
	return 0;
}

static void apply_entry(struct delivery *d, const struct wentry *e, bool ok)
{
	struct dseg *s = e->seg;
	if (e->len == 0) {
		assert(s->mflags[e->mi] & MF_BUSY);
		s->mflags[e->mi] &= (uint8_t)~MF_BUSY;
		s->busy--;
		if (ok && dsn_due(s, e->mi))
			dsn_start(d, s, e->mi);
		else if (ok)
			enqueue(d, s, e->mi); /* another route group may be due */
		return;
	}
	if (!ok)
		return;
	const struct wgroup *g = &d->groups[e->group];
	struct dlv_record rec;
	size_t len;
	const char *why;
	if (dlv_record_decode((const uint8_t *)g->bytes.data + e->off, e->len, &rec, &len, &why) !=
	    SPOOL_OK)
		return;
	struct dlv_message *m = dlv_replay_find(&s->rp, rec.msg_offset);
	if (!m || rec.rcpt >= m->nrcpt)
		return;
	bool was = dlv_rcpt_finished(m, &s->rp.rcpts[m->first + rec.rcpt]);
	dlv_replay_apply(&s->rp, &rec, g->at + e->off);
	bool is = dlv_rcpt_finished(m, &s->rp.rcpts[m->first + rec.rcpt]);
	if (was != is) {
		s->unfinished += is ? -1 : 1;
		d->queue += is ? -1 : 1;
	}
	if (rec.outcome == DLV_DEFERRED) {
		uint64_t at = dsched_due_ms(rec.next_try, wall_s(), d->core->now_ms);
		if (at < d->scan_at_ms)
			d->scan_at_ms = at;
	}
}

static void batch_done(struct delivery *d)
{
	bool ok = !d->batch_failed;
	if (!ok) {
		for (uint32_t i = 0; i < d->ngroups; i++) {
			struct wgroup *g = &d->groups[i];
			if (ftruncate(g->seg->dlv_fd, (off_t)g->at) < 0 || fdatasync(g->seg->dlv_fd) < 0)
				log_error("delivery: cannot cut back %08" PRIu64 ".dlv: %s", g->seg->seq,
					  strerror(errno));
			g->seg->dlv_tail = g->at;
		}
		/* the outcomes are lost: the recipients are tried again later */
		d->hold_until_ms = d->core->now_ms + cur_conf(d)->relay.retry_first;
		log_error("delivery: a .dlv write failed; deliveries resume in %u ms",
			  cur_conf(d)->relay.retry_first);
	}
	d->in_flight = false;
	for (size_t i = 0; i < d->nbatch; i++)
		apply_entry(d, &d->batch[i], ok);
	d->nbatch = 0;
	gauge_queue(d);
	reclaim_all(d);
}

static void on_batch_op(struct core_op *op, int res, unsigned flags)
{
	(void)flags;
	struct delivery *d = container_of(op, struct delivery, op_batch);
	assert(d->in_flight && d->ops_left > 0);
	if (res < 0) {
		if (res != -ECANCELED && !d->batch_failed)
			log_error("delivery: .dlv write: %s", strerror(-res));
		d->batch_failed = true;
	}
	if (--d->ops_left == 0)
		batch_done(d);
}

static int group_of(struct delivery *d, struct dseg *s)
{
	for (uint32_t i = 0; i < d->ngroups; i++)
		if (d->groups[i].seg == s)
			return (int)i;
	size_t cap = d->groups_cap;
	if (grow((void **)&d->groups, &cap, d->ngroups + 1, sizeof *d->groups) < 0)
		return -1;
	for (size_t i = d->groups_cap; i < cap; i++)
		buf_init(&d->groups[i].bytes, 0);
	d->groups_cap = (uint32_t)cap;
	struct wgroup *g = &d->groups[d->ngroups];
	g->seg = s;
	buf_reset(&g->bytes);
	return (int)d->ngroups++;
}

static void writer_flush(struct delivery *d)
{
	if (d->in_flight || d->npend == 0)
		return;
	/* the pending entries become the batch */
	struct wentry *e = d->batch;
	size_t cap = d->batch_cap;
	d->batch = d->pend;
	d->batch_cap = d->pend_cap;
	d->nbatch = d->npend;
	d->pend = e;
	d->pend_cap = cap;
	d->npend = 0;
	d->ngroups = 0;
	d->batch_failed = false;
	for (size_t i = 0; i < d->nbatch; i++) {
		struct wentry *w = &d->batch[i];
		if (w->len == 0)
			continue;
		int g = group_of(d, w->seg);
		if (g < 0 || buf_append(&d->groups[g].bytes, d->pend_bytes.data + w->off, w->len) < 0) {
			d->batch_failed = true;
			continue;
		}
		w->group = (uint32_t)g;
		w->off = d->groups[g].bytes.len - w->len;
	}
	buf_reset(&d->pend_bytes);
	d->ops_left = 0;
	d->in_flight = true;
	uint32_t placed = 0;
	for (; placed < d->ngroups && !d->batch_failed; placed++) {
		struct wgroup *g = &d->groups[placed];
		if (dlv_open(d, g->seg) < 0) {
			d->batch_failed = true;
			break;
		}
		g->at = g->seg->dlv_tail;
		g->seg->dlv_tail += g->bytes.len;
	}
	if (d->batch_failed) {
		for (uint32_t i = 0; i < placed; i++)
			d->groups[i].seg->dlv_tail = d->groups[i].at;
		d->ngroups = 0; /* nothing was written: nothing to cut back */
		batch_done(d);
		return;
	}
	for (uint32_t i = 0; i < d->ngroups; i++) {
		struct wgroup *g = &d->groups[i];
		struct io_uring_sqe *sqe = core_sqe(d->core);
		io_uring_prep_write(sqe, g->seg->dlv_fd, g->bytes.data, (unsigned)g->bytes.len, g->at);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_sqe_set_data64(sqe, op_data(&d->op_batch, OP_HANDLER));
		sqe = core_sqe(d->core);
		io_uring_prep_fsync(sqe, g->seg->dlv_fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, op_data(&d->op_batch, OP_HANDLER));
		d->ops_left += 2;
	}
	if (d->ops_left == 0)
		batch_done(d); /* releases only: nothing to write */
}

/* ---- outcomes ---- */

/* A recipient's outcome as a .dlv record: a 4xx is rescheduled by the
 * retry schedule, or expires at the end of the lifetime. */
static void record_outcome(struct delivery *d, struct dseg *s, uint32_t mi, uint32_t rcpt,
			   enum relay_verdict verdict, uint16_t code, const char *hop,
			   const char *text, size_t text_len)
{
	const struct dlv_message *m = &s->rp.msgs[mi];
	const struct dlv_rcpt *rc = &s->rp.rcpts[m->first + rcpt];
	const struct conf_relay *cr = &cur_conf(d)->relay;
	uint64_t now_s = wall_s();
	struct dlv_record rec = {
		.msg_offset = m->offset,
		.rcpt = rcpt,
		.attempts = rc->attempts < UINT16_MAX ? (uint16_t)(rc->attempts + 1) : UINT16_MAX,
		.code = code,
		.at = now_s,
		.hop = hop, .hop_len = strlen(hop),
		.text = text, .text_len = text_len,
	};
	struct core_metrics *mt = &d->core->metrics;
	switch (verdict) {
	case RELAY_DELIVERED:
		rec.outcome = DLV_DELIVERED;
		METRICS_INC(mt->relay_outcomes[0]);
		break;
	case RELAY_FAILED:
		rec.outcome = DLV_FAILED;
		METRICS_INC(mt->relay_outcomes[2]);
		break;
	case RELAY_DEFERRED: {
		bool expired = false;
		rec.next_try = dlv_next_try(m->received, now_s, rec.attempts, cr->retry_first,
					    cr->retry_max, cr->lifetime, next_rnd(d), &expired);
		rec.outcome = expired ? DLV_EXPIRED : DLV_DEFERRED;
		if (expired)
			rec.next_try = 0;
		METRICS_INC(mt->relay_outcomes[expired ? 3 : 1]);
		break;
	}
	}
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, d->core->index, s->seq, m->offset);
	log_info("delivery: %s rcpt %u %s via %s: %.*s", id, rcpt, dlv_outcome_name(rec.outcome),
		 hop, (int)(text_len > 200 ? 200 : text_len), text);
	writer_add(d, s, mi, &rec);
}

/* ---- DSNs ---- */

/* A failed (or expired) recipient that still owes its sender a DSN. */
static bool dsn_due(const struct dseg *s, uint32_t mi)
{
	const struct dlv_message *m = &s->rp.msgs[mi];
	for (uint32_t j = 0; j < m->nrcpt; j++) {
		const struct dlv_rcpt *rc = &s->rp.rcpts[m->first + j];
		if ((rc->outcome == DLV_FAILED || rc->outcome == DLV_EXPIRED) &&
		    !dlv_rcpt_finished(m, rc))
			return true;
	}
	return false;
}

/* A DSN on its way to the spool, and who it reports. */
struct dsn_job {
	struct spool_local local;      /* first: the spool writer's view of it */
	struct delivery *d;
	struct dseg *seg;
	uint32_t mi;
	uint32_t n;
	struct smtp_rcpt to;
	char *sender;
	uint32_t *rcpts;               /* indexes in the spool record */
};

/* The reply text of the recipient's latest record (the .dlv keeps it). */
static int dlv_text(const struct dseg *s, const struct dlv_rcpt *rc, uint8_t *buf,
		    struct dlv_record *rec)
{
	if (!rc->record || s->dlv_fd < 0)
		return -1;
	ssize_t n = pread(s->dlv_fd, buf, DLV_RECORD_MAX, (off_t)rc->record);
	size_t len;
	const char *why;
	if (n <= 0 || dlv_record_decode(buf, (size_t)n, rec, &len, &why) != SPOOL_OK)
		return -1;
	return 0;
}

static void dsn_done(struct spool_local *l, bool ok)
{
	struct dsn_job *j = (struct dsn_job *)l;
	struct delivery *d = j->d;
	struct dseg *s = j->seg;
	const struct dlv_message *m = &s->rp.msgs[j->mi];
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, d->core->index, s->seq, m->offset);
	if (ok) {
		METRICS_INC(d->core->metrics.relay_dsns);
		char text[64];
		snprintf(text, sizeof text, "DSN %s spooled", l->id);
		log_info("delivery: %s: DSN %s to <%s> for %u recipients", id, l->id, j->sender, j->n);
		for (uint32_t i = 0; i < j->n; i++) {
			const struct dlv_rcpt *rc = &s->rp.rcpts[m->first + j->rcpts[i]];
			struct dlv_record rec = {
				.msg_offset = m->offset, .rcpt = j->rcpts[i], .outcome = DLV_BOUNCED,
				.attempts = rc->attempts, .code = rc->code, .at = wall_s(),
				.hop = "", .hop_len = 0, .text = text, .text_len = strlen(text),
			};
			writer_add(d, s, j->mi, &rec);
		}
	} else {
		log_error("delivery: %s: the DSN could not be spooled; tried again later", id);
		d->hold_until_ms = d->core->now_ms + cur_conf(d)->relay.retry_first;
		d->scan_at_ms = d->hold_until_ms;
	}
	writer_release(d, s, j->mi);
	buf_free(&l->body);
	free(j->sender);
	free(j->rcpts);
	free(j);
}

/* Build the DSN for the message's failed recipients and hand it to the
 * spool writer; once it is durable they become "bounced". */
static void dsn_start(struct delivery *d, struct dseg *s, uint32_t mi)
{
	if (d->core->draining || d->core->now_ms < d->hold_until_ms || (s->mflags[mi] & MF_BUSY))
		return;
	const struct dlv_message *m = &s->rp.msgs[mi];
	struct spool_record_view v;
	if (msg_view(s, mi, &v) < 0)
		return;
	const struct conf *cf = cur_conf(d);
	struct dsn_job *j = calloc(1, sizeof *j);
	struct dsn_rcpt *dr = calloc(m->nrcpt, sizeof *dr);
	uint8_t (*recbuf)[DLV_RECORD_MAX] = calloc(m->nrcpt, DLV_RECORD_MAX);
	char (*status)[RELAY_ENHANCED_MAX] = calloc(m->nrcpt, RELAY_ENHANCED_MAX);
	char (*hosts)[64] = calloc(m->nrcpt, 64);
	if (j)
		j->rcpts = calloc(m->nrcpt, sizeof *j->rcpts);
	if (!j || !dr || !recbuf || !status || !hosts || !j->rcpts) {
		log_error("delivery: out of memory for a DSN");
		if (j)
			free(j->rcpts);
		free(j), free(dr), free(recbuf), free(status), free(hosts);
		return;
	}
	size_t cur = 0;
	struct spool_rcpt_view rv;
	for (uint32_t r = 0; r < m->nrcpt && spool_rcpt_next(&v, &cur, &rv); r++) {
		const struct dlv_rcpt *rc = &s->rp.rcpts[m->first + r];
		if (!((rc->outcome == DLV_FAILED || rc->outcome == DLV_EXPIRED) &&
		      !dlv_rcpt_finished(m, rc)))
			continue;
		struct dsn_rcpt *x = &dr[j->n];
		*x = (struct dsn_rcpt){.addr = rv.addr, .addr_len = rv.addr_len, .orcpt = rv.orcpt,
				       .orcpt_len = rv.orcpt_len, .notify = rv.notify,
				       .action = DSN_ACTION_FAILED, .code = rc->code,
				       .last_attempt = (int64_t)rc->at};
		struct dlv_record rec;
		if (dlv_text(s, rc, recbuf[j->n], &rec) == 0) {
			/* the text is "CODE X.Y.Z words" (the enhanced code when the
			 * reply had one); dsn.c writes code and status itself */
			if (rec.code && rec.text_len >= 4 && rec.text[3] == ' ') {
				rec.text += 4;
				rec.text_len -= 4;
			}
			size_t k = 0;
			while (k < rec.text_len && k + 1 < RELAY_ENHANCED_MAX && rec.text[k] != ' ')
				k++;
			x->diagnostic = rec.text;
			x->diagnostic_len = rec.text_len;
			if (k >= 5 && k < RELAY_ENHANCED_MAX && rec.text[1] == '.') {
				memcpy(status[j->n], rec.text, k);
				status[j->n][k] = '\0';
				x->status = status[j->n];
				/* dsn.c writes the code and status before the text */
				x->diagnostic += k < rec.text_len ? k + 1 : k;
				x->diagnostic_len -= k < rec.text_len ? k + 1 : k;
			}
			/* Remote-MTA: the next hop's host (a Unix socket has none) */
			struct relay_url u;
			const char *why;
			size_t at;
			if (rec.hop_len && relay_url_parse(rec.hop, rec.hop_len, &u, &why, &at) == 0 &&
			    u.host[0]) {
				memcpy(hosts[j->n], u.host, sizeof u.host);
				x->remote_mta = hosts[j->n];
				x->remote_mta_len = strlen(hosts[j->n]);
			}
			if (rc->outcome == DLV_EXPIRED && !x->status)
				x->status = "4.4.7";
		}
		j->rcpts[j->n++] = r;
	}
	char dsn_id[SPOOL_ID_LEN + 32];
	char id[SPOOL_ID_LEN + 1];
	spool_make_id(id, d->core->index, s->seq, m->offset);
	snprintf(dsn_id, sizeof dsn_id, "%s.%" PRIu64, id, wall_s());
	const char *mta = cf->relay.helo ? cf->relay.helo : cf->hostname;
	struct dsn_message dm = {
		.reporting_mta = mta,
		.mail_from = v.mail_from, .mail_from_len = v.mail_from_len,
		.envid = v.envid, .envid_len = v.envid_len,
		.ret = v.ret,
		.arrival = (int64_t)m->received,
		.now = (int64_t)wall_s(),
		.id = dsn_id,
		.original = v.message, .original_len = v.message_len,
		.rcpts = dr, .nrcpt = j->n,
	};
	buf_init(&j->local.body, cf->max_message_size + (1u << 20));
	struct dsn_result res;
	int rc = dsn_build(&j->local.body, &dm, &res);
	free(dr);
	free(recbuf);
	free(status);
	free(hosts);
	j->d = d;
	j->seg = s;
	j->mi = mi;
	s->mflags[mi] |= MF_BUSY;
	s->busy++;
	if (rc < 0 || res.reported == 0) {
		/* nothing to send after all (or it cannot be built): the
		 * recipients are finished as bounced so the segment can go */
		log_warn("delivery: %s: no DSN %s", id, rc < 0 ? "(too large)" : "due");
		buf_free(&j->local.body);
		j->sender = strdup("");
		dsn_done(&j->local, true);
		return;
	}
	j->sender = strndup(v.mail_from, v.mail_from_len);
	j->to = (struct smtp_rcpt){.addr = j->sender, .notify = SMTP_NOTIFY_NEVER};
	j->local.env = (struct smtp_envelope){
		.helo = (char *)mta, .esmtp = true, .mail_from = (char *)"",
		.body_type = res.eightbit ? SMTP_BODY_8BITMIME : SMTP_BODY_7BIT,
		.rcpts = &j->to, .nrcpt = 1, .rcpt_cap = 1,
	};
	j->local.done = dsn_done;
	spool_writer_enqueue_local(&d->core->spool, &j->local);
}

/* ---- outbound connections ---- */

static void conn_advance(struct rconn *c, enum relay_status st);
static void conn_close(struct rconn *c);
static void pump(struct delivery *d);

static void on_outcome(void *ctx, const struct relay_outcome *o)
{
	struct rconn *c = ctx;
	assert(c->msg_active);
	char text[DLV_TEXT_MAX];
	/* the record keeps the reply as received: "550 5.1.1 text" */
	int n = snprintf(text, sizeof text, "%u %s%s%.*s", o->reply.code, o->reply.enhanced,
			 o->reply.enhanced[0] ? " " : "", (int)o->reply.text_len, o->reply.text);
	size_t len = n < 0 ? 0 : (size_t)n >= sizeof text ? sizeof text - 1 : (size_t)n;
	record_outcome(c->d, c->seg, c->mi, o->rcpt->id, o->verdict, o->reply.code,
		       c->hops[c->hop].text, text, len);
}

static void conn_arm_recv(struct rconn *c)
{
	if (c->recv_armed || c->closing)
		return;
	struct io_uring_sqe *sqe = core_sqe(c->d->core);
	io_uring_prep_recv(sqe, c->fd, c->rx, sizeof c->rx, 0);
	io_uring_sqe_set_data64(sqe, op_data(&c->op_recv, OP_HANDLER));
	c->recv_armed = true;
	c->pending++;
}

static void conn_lost(struct rconn *c, enum relay_abort why);

/* Does the socket get BoringSSL's records (wire) rather than
 * relay_client's plaintext (out)? Not once the kernel seals them. */
static bool conn_sends_wire(const struct rconn *c)
{
	return c->ssl && !c->ktls_tx;
}

/* Bytes queued for the socket and not yet sent. */
static size_t conn_unsent(const struct rconn *c)
{
	return conn_sends_wire(c) ? c->wire.len - c->out_sent + c->out.len
				  : c->out.len - c->out_sent;
}

static void conn_ktls_switch(struct rconn *c);

static void conn_flush_out(struct rconn *c)
{
	if (c->lost)
		return;
	if (c->ktls_switching && !c->send_armed && c->wire.len == c->out_sent) {
		conn_ktls_switch(c); /* the handshake's last flight is out */
		if (c->lost)
			return;
	}
	if (conn_sends_wire(c) && !c->handshaking && !c->ktls_switching &&
	    relay_tls_write(c->ssl, &c->out, &c->wire) < 0) {
		log_warn("delivery: %s: TLS write failed", c->hops[c->hop].text);
		conn_lost(c, RELAY_ABORT_LOST);
		return;
	}
	struct buf *b = conn_sends_wire(c) ? &c->wire : &c->out;
	if (c->send_armed || b->len == c->out_sent)
		return;
	struct io_uring_sqe *sqe = core_sqe(c->d->core);
	io_uring_prep_send(sqe, c->fd, b->data + c->out_sent, b->len - c->out_sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, op_data(&c->op_send, OP_HANDLER));
	c->send_armed = true;
	c->pending++;
}

static void conn_set_deadline(struct rconn *c)
{
	const struct conf_relay *cr = &cur_conf(c->d)->relay;
	uint64_t now = c->d->core->now_ms;
	switch (relay_client_waiting_for(&c->rc)) {
	case RELAY_WAIT_GREETING:
		c->deadline_ms = now + cr->timeout_greeting;
		break;
	case RELAY_WAIT_COMMAND:
		c->deadline_ms = now + cr->timeout_command;
		break;
	case RELAY_WAIT_DATA_END:
		c->deadline_ms = now + cr->timeout_data_end;
		break;
	case RELAY_WAIT_TLS:
		c->deadline_ms = now + cr->timeout_connect;
		break;
	default:
		c->deadline_ms = 0;
	}
}

/* Start msg (seg, mi) on c: its due recipients that go this route. */
static bool conn_start_message(struct rconn *c, struct dseg *s, uint32_t mi)
{
	struct delivery *d = c->d;
	struct spool_record_view v;
	if (msg_routes(d, s, mi, &v) < 0)
		return false;
	const struct dlv_message *m = &s->rp.msgs[mi];
	size_t cap = c->rcpts_cap;
	if (grow((void **)&c->rcpts, &cap, m->nrcpt, sizeof *c->rcpts) < 0)
		return false;
	c->rcpts_cap = (uint32_t)cap;
	uint64_t now_s = wall_s();
	uint32_t n = 0;
	size_t cur = 0;
	struct spool_rcpt_view rv;
	for (uint32_t j = 0; j < m->nrcpt && spool_rcpt_next(&v, &cur, &rv); j++) {
		const struct route *r = &d->routes[j];
		if (!dsched_rcpt_due(&s->rp.rcpts[m->first + j], now_s) || r->kind != ROUTE_RELAY ||
		    dsched_route_key(r->via) != c->key)
			continue;
		c->rcpts[n++] = (struct relay_rcpt){.addr = rv.addr, .addr_len = rv.addr_len,
						    .orcpt = rv.orcpt, .orcpt_len = rv.orcpt_len,
						    .notify = rv.notify, .id = j};
	}
	if (n == 0)
		return false;
	c->msg = (struct relay_message){
		.mail_from = v.mail_from, .mail_from_len = v.mail_from_len,
		.size = v.message_len, .body_type = v.body_type, .smtputf8 = v.smtputf8,
		.ret = v.ret, .envid = v.envid, .envid_len = v.envid_len,
		.rcpts = c->rcpts, .nrcpt = n,
	};
	c->seg = s;
	c->mi = mi;
	c->body = v.message;
	c->body_given = 0;
	c->msg_active = true;
	conn_advance(c, relay_client_message(&c->rc, &c->msg, &c->out));
	return true;
}

/* The message in flight is over (every recipient has its outcome). */
static void conn_message_over(struct rconn *c)
{
	if (!c->msg_active)
		return;
	c->msg_active = false;
	writer_release(c->d, c->seg, c->mi);
}

/* The next waiting message of this connection's route, if any. */
static bool conn_take_work(struct rconn *c)
{
	struct delivery *d = c->d;
	if (d->core->draining || !d->active)
		return false;
	for (size_t i = d->ready_head; i < d->nready; i++) {
		if (!d->ready[i].seg || d->ready[i].key != c->key)
			continue;
		struct ditem it = d->ready[i];
		d->ready[i].seg = NULL; /* taken; compacted by ready_compact */
		key_count(d, it.key, -1);
		while (d->ready_head < d->nready && !d->ready[d->ready_head].seg)
			d->ready_head++;
		if (conn_start_message(c, it.seg, it.mi))
			return true;
		writer_release(d, it.seg, it.mi); /* nothing due on this route any more */
	}
	return false;
}

static void conn_body(struct rconn *c, enum relay_status *st)
{
	while (*st == RELAY_WANT_BODY && conn_unsent(c) < RC_OUT_HIGH) {
		uint64_t left = c->msg.size - c->body_given;
		size_t piece = left < RC_BODY_PIECE ? (size_t)left : RC_BODY_PIECE;
		size_t used = 0;
		*st = relay_client_body(&c->rc, c->body + c->body_given, piece, &used, &c->out);
		c->body_given += used;
		if (used == 0 && *st == RELAY_WANT_BODY)
			break; /* waiting for BDAT replies */
	}
}

static void conn_tls_begin(struct rconn *c);

static void conn_advance(struct rconn *c, enum relay_status st)
{
	for (;;) {
		if (st == RELAY_WANT_BODY) {
			conn_body(c, &st);
			break;
		}
		if (st == RELAY_READY) {
			conn_message_over(c);
			if (conn_take_work(c))
				return; /* conn_start_message advanced it */
			c->idle_since_ms = c->d->core->now_ms;
			break;
		}
		if (st == RELAY_START_TLS) {
			/* the STARTTLS command may still be on its way out */
			if (!c->ssl && !c->send_armed && c->out.len == c->out_sent)
				conn_tls_begin(c);
			return;
		}
		if (st == RELAY_CLOSED) {
			conn_message_over(c);
			if (conn_unsent(c) == 0 || c->lost)
				conn_close(c);
			break;
		}
		break; /* RELAY_WANT_REPLY */
	}
	conn_set_deadline(c);
	conn_flush_out(c);
}

static void conn_maybe_free(struct rconn *c)
{
	if (!c->closing || c->pending)
		return;
	struct delivery *d = c->d;
	if (c->fd >= 0)
		close(c->fd);
	struct rconn **p = &d->conns;
	while (*p != c)
		p = &(*p)->next;
	*p = c->next;
	d->nconns--;
	buf_free(&c->out);
	buf_free(&c->wire);
	SSL_free(c->ssl);
	free(c->ca);
	free(c->reply);
	free(c->rcpts);
	free(c); /* the next pump (end of the loop turn) may open another */
}

static void on_close_nop(struct core_op *op, int res, unsigned flags)
{
	(void)res;
	(void)flags;
	struct rconn *c = container_of(op, struct rconn, op_close);
	c->pending--;
	conn_maybe_free(c);
}

/* The connection is freed from a later completion (a NOP queued here,
 * after the recv and send still in flight), never under its callers'
 * feet: code that closed it may still look at it in this turn. */
static void conn_close(struct rconn *c)
{
	if (c->closing)
		return;
	assert(!c->msg_active);
	c->closing = true;
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR); /* completes the recv in flight */
	struct io_uring_sqe *sqe = core_sqe(c->d->core);
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data64(sqe, op_data(&c->op_close, OP_HANDLER));
	c->pending++;
}

static struct rconn *conn_open(struct delivery *d, const struct conf_route *via, unsigned hop,
			       uint64_t key);

/* Every message waiting for this route is deferred: no next hop answered. */
static void defer_waiting(struct delivery *d, uint64_t key, const char *hop, const char *why)
{
	size_t kept = 0;
	uint64_t now_s = wall_s();
	for (size_t i = d->ready_head; i < d->nready; i++) {
		struct ditem it = d->ready[i];
		if (!it.seg)
			continue;
		if (it.key != key) {
			d->ready[kept++] = it;
			continue;
		}
		key_count(d, key, -1);
		struct spool_record_view v;
		const struct dlv_message *m = &it.seg->rp.msgs[it.mi];
		if (msg_routes(d, it.seg, it.mi, &v) == 0) {
			for (uint32_t j = 0; j < m->nrcpt; j++) {
				const struct route *r = &d->routes[j];
				if (dsched_rcpt_due(&it.seg->rp.rcpts[m->first + j], now_s) &&
				    r->kind == ROUTE_RELAY && dsched_route_key(r->via) == key)
					record_outcome(d, it.seg, it.mi, j, RELAY_DEFERRED, 0, hop, why,
						       strlen(why));
			}
		}
		writer_release(d, it.seg, it.mi);
	}
	d->nready = kept;
	d->ready_head = 0;
}

/* A connection that ended before its first message: the next hop, if
 * any (fail-over), else the route's waiting messages are deferred. */
static void conn_failed(struct rconn *c, const char *why)
{
	struct delivery *d = c->d;
	log_warn("delivery: %s: %s", c->hops[c->hop].text, why);
	if (c->hop + 1 < c->nhops && !d->core->draining) {
		struct conf_route via = {.hops = c->hops, .nhops = c->nhops, .ca = c->ca,
					 .noverify = c->noverify};
		conn_open(d, &via, c->hop + 1, c->key);
	} else {
		defer_waiting(d, c->key, c->hops[c->hop].text, why);
	}
}

static void on_connect(struct core_op *op, int res, unsigned flags)
{
	(void)flags;
	struct rconn *c = container_of(op, struct rconn, op_connect);
	c->pending--;
	if (c->closing) {
		conn_maybe_free(c);
		return;
	}
	if (res < 0) {
		char why[160];
		/* a connect the tick cancelled ran out of "relay timeout connect" */
		snprintf(why, sizeof why, "connect: %s",
			 res == -ECANCELED ? "timed out" : strerror(-res));
		c->closing = true; /* before conn_failed opens the next hop */
		conn_failed(c, why);
		conn_maybe_free(c);
		return;
	}
	c->connected = true;
	METRICS_INC(c->d->core->metrics.relay_connections);
	log_debug("delivery: connected to %s", c->hops[c->hop].text);
	conn_arm_recv(c);
	conn_set_deadline(c);
	if (c->hops[c->hop].tls == RELAY_TLS_IMPLICIT)
		conn_tls_begin(c); /* smtps: TLS before the greeting */
}

static void conn_lost(struct rconn *c, enum relay_abort why)
{
	bool first = c->rc.transactions == 0 && !c->msg_active;
	relay_client_abort(&c->rc, why);
	c->lost = true;
	if (first && c->connected) {
		const char *e = relay_client_error(&c->rc);
		char text[RELAY_ERROR_MAX + 32];
		snprintf(text, sizeof text, "%s", e[0] ? e : "connection lost");
		conn_failed(c, text);
	}
	conn_advance(c, RELAY_CLOSED);
}

/* The context for this connection's CA and verification, made once. */
static SSL_CTX *tls_ctx_for(struct delivery *d, const struct rconn *c, char *why, size_t len)
{
	const char *ca = c->ca ? c->ca : cur_conf(d)->relay.ca;
	bool verify = !c->noverify;
	for (unsigned i = 0; i < d->ntls; i++)
		if (d->tls[i].verify == verify &&
		    (!verify || (ca ? d->tls[i].ca && strcmp(d->tls[i].ca, ca) == 0 : !d->tls[i].ca)))
			return d->tls[i].ctx;
	SSL_CTX *ctx = relay_tls_ctx_new(ca, verify, why, len);
	if (!ctx)
		return NULL;
	if (d->ntls == TLS_CTX_MAX) {
		d->ntls--;
		SSL_CTX_free(d->tls[d->ntls].ctx); /* sessions hold their own reference */
		free(d->tls[d->ntls].ca);
	}
	d->tls[d->ntls].ca = ca ? strdup(ca) : NULL;
	d->tls[d->ntls].verify = verify;
	d->tls[d->ntls].ctx = ctx;
	d->ntls++;
	return ctx;
}

static void tls_ctx_drop(struct delivery *d)
{
	for (unsigned i = 0; i < d->ntls; i++) {
		SSL_CTX_free(d->tls[i].ctx);
		free(d->tls[i].ca);
	}
	d->ntls = 0;
}

/* The handshake failed or could not start: no byte goes in clear. */
static void conn_tls_fail(struct rconn *c, const char *why)
{
	bool first = c->rc.transactions == 0 && !c->msg_active;
	if (!first)
		log_warn("delivery: %s: %s", c->hops[c->hop].text, why);
	relay_client_abort(&c->rc, RELAY_ABORT_TLS);
	c->lost = true;
	if (first)
		conn_failed(c, why);
	conn_advance(c, RELAY_CLOSED);
}

static void conn_tls_path_chosen(struct rconn *c, bool ktls, const char *why);

/* Handshake bytes for the wire, then send them. */
static void conn_tls_step(struct rconn *c)
{
	char why[300];
	int rc = relay_tls_handshake(c->ssl, why, sizeof why);
	struct buf none;
	buf_init(&none, 0);
	if (relay_tls_write(c->ssl, &none, &c->wire) < 0) {
		conn_tls_fail(c, "out of memory for TLS");
		return;
	}
	if (rc < 0) {
		conn_flush_out(c); /* the alert, if any */
		conn_tls_fail(c, why);
		return;
	}
	if (rc == 0) {
		conn_flush_out(c);
		return;
	}
	c->handshaking = false;
	char desc[128];
	relay_tls_describe(c->ssl, desc, sizeof desc);
	log_info("delivery: %s: TLS established %s%s", c->hops[c->hop].text, desc,
		 c->noverify ? " (not verified: noverify)" : "");
	if (c->d->core->view->snap->ktls)
		c->ktls_switching = true; /* once the Finished is sent: conn_flush_out */
	else
		conn_tls_path_chosen(c, false, cur_conf(c->d)->ktls == CONF_KTLS_OFF
						       ? "ktls off"
						       : "no kTLS in this kernel");
	if (c->hops[c->hop].tls == RELAY_TLS_STARTTLS)
		conn_advance(c, relay_client_tls_done(&c->rc, &c->out));
	else
		conn_flush_out(c);
}

/* Which record path this connection's TLS took, once: the log and the
 * metrics, as the inbound side's tls_path=. */
static void conn_tls_path_chosen(struct rconn *c, bool ktls, const char *why)
{
	METRICS_INC(c->d->core->metrics.relay_tls_path[ktls ? 1 : 0]);
	if (ktls)
		log_info("delivery: %s: tls_path=ktls (TX sealed by the kernel, RX in BoringSSL)",
			 c->hops[c->hop].text);
	else
		log_info("delivery: %s: tls_path=userspace (%s)", c->hops[c->hop].text, why);
}

/* Hand TX to the kernel (docs/relay.md, "Outbound TLS"); a session that
 * cannot go stays on userspace TLS. */
static void conn_ktls_switch(struct rconn *c)
{
	assert(c->ssl && !c->handshaking && !c->send_armed && c->wire.len == c->out_sent);
	c->ktls_switching = false;
	char why[200];
	int rc = relay_tls_ktls_tx(c->ssl, c->fd, why, sizeof why);
	if (rc < 0) {
		log_warn("delivery: %s: %s; closing", c->hops[c->hop].text, why);
		conn_lost(c, RELAY_ABORT_LOST);
		return;
	}
	c->ktls_tx = rc == 1;
	buf_reset(&c->wire);
	c->out_sent = 0; /* of out from now on, when ktls_tx */
	conn_tls_path_chosen(c, c->ktls_tx, why);
}

/* With TX in the kernel, BoringSSL must not write: if it wants to (the
 * answer to a KeyUpdate with update_requested, an alert), the stream
 * cannot follow. Close; the recipients in flight are deferred. */
static bool conn_ktls_tx_stuck(struct rconn *c)
{
	if (!c->ktls_tx || !relay_tls_wrote_after_handshake(c->ssl))
		return false;
	log_warn("delivery: %s: BoringSSL has TLS to send (a KeyUpdate answer or an alert) while "
		 "the kernel holds the write keys: closing",
		 c->hops[c->hop].text);
	conn_lost(c, RELAY_ABORT_LOST);
	return true;
}

static void conn_tls_begin(struct rconn *c)
{
	char why[300];
	SSL_CTX *ctx = tls_ctx_for(c->d, c, why, sizeof why);
	if (!ctx) {
		conn_tls_fail(c, why);
		return;
	}
	c->ssl = relay_tls_new(ctx, &c->hops[c->hop], !c->noverify);
	if (!c->ssl) {
		conn_tls_fail(c, "TLS set-up failed");
		return;
	}
	buf_reset(&c->out);
	c->out_sent = 0;
	c->handshaking = true;
	c->deadline_ms = c->d->core->now_ms + cur_conf(c->d)->relay.timeout_connect;
	conn_tls_step(c);
}

/* Ciphertext arrived: the handshake, or records for the client. false
 * when the connection was handled (failed or still handshaking). */
static bool conn_tls_input(struct rconn *c, int res, enum relay_status *st)
{
	if (relay_tls_input(c->ssl, c->rx, (size_t)res) < 0) {
		conn_lost(c, RELAY_ABORT_LOST);
		return false;
	}
	if (c->handshaking) {
		conn_tls_step(c);
		if (c->handshaking || c->lost || c->closing) {
			conn_arm_recv(c);
			return false;
		}
	}
	static _Thread_local char plain[16384];
	*st = relay_client_status(&c->rc);
	long n;
	while (*st != RELAY_CLOSED && (n = relay_tls_read(c->ssl, plain, sizeof plain)) != 0) {
		if (n < 0) {
			conn_lost(c, RELAY_ABORT_LOST);
			return false;
		}
		if (conn_ktls_tx_stuck(c))
			return false; /* what follows a KeyUpdate must not be answered */
		size_t consumed = 0;
		*st = relay_client_feed(&c->rc, plain, (size_t)n, &consumed, &c->out);
	}
	return !conn_ktls_tx_stuck(c);
}

static void on_recv(struct core_op *op, int res, unsigned flags)
{
	(void)flags;
	struct rconn *c = container_of(op, struct rconn, op_recv);
	c->pending--;
	c->recv_armed = false;
	if (c->closing) {
		conn_maybe_free(c);
		return;
	}
	if (res <= 0) {
		conn_lost(c, RELAY_ABORT_LOST);
		return;
	}
	bool first = c->rc.transactions == 0 && !c->msg_active;
	size_t consumed = 0;
	enum relay_status st;
	if (c->ssl) {
		if (!conn_tls_input(c, res, &st))
			return;
	} else {
		st = relay_client_feed(&c->rc, c->rx, (size_t)res, &consumed, &c->out);
	}
	if (st == RELAY_CLOSED && first && relay_client_error(&c->rc)[0]) {
		/* refused at the greeting, EHLO or STARTTLS (421 included) */
		conn_failed(c, relay_client_error(&c->rc));
	}
	if (st != RELAY_CLOSED)
		conn_arm_recv(c);
	conn_advance(c, st);
}

static void on_send(struct core_op *op, int res, unsigned flags)
{
	(void)flags;
	struct rconn *c = container_of(op, struct rconn, op_send);
	c->pending--;
	c->send_armed = false;
	if (c->closing) {
		conn_maybe_free(c);
		return;
	}
	if (res < 0) {
		conn_lost(c, RELAY_ABORT_LOST);
		return;
	}
	c->out_sent += (size_t)res;
	struct buf *b = conn_sends_wire(c) ? &c->wire : &c->out;
	if (c->out_sent == b->len) {
		buf_reset(b);
		c->out_sent = 0;
	}
	if (c->handshaking)
		conn_flush_out(c);
	else
		conn_advance(c, relay_client_status(&c->rc));
}

static struct rconn *conn_open(struct delivery *d, const struct conf_route *via, unsigned hop,
			       uint64_t key)
{
	const struct conf *cf = cur_conf(d);
	struct rconn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->d = d;
	c->key = key;
	c->nhops = via->nhops < RC_HOPS_MAX ? (unsigned)via->nhops : RC_HOPS_MAX;
	memcpy(c->hops, via->hops, c->nhops * sizeof c->hops[0]);
	c->hop = hop;
	c->fd = -1;
	c->ca = via->ca ? strdup(via->ca) : NULL;
	c->noverify = via->noverify;
	buf_init(&c->wire, 0);
	c->op_connect.handler = on_connect;
	c->op_recv.handler = on_recv;
	c->op_send.handler = on_send;
	c->op_close.handler = on_close_nop;
	buf_init(&c->out, 0);
	const struct relay_url *u = &c->hops[hop];
	c->cfg = relay_client_config_default(cf->relay.helo ? cf->relay.helo : cf->hostname);
	c->cfg.protocol = u->proto == RELAY_PROTO_LMTP ? RELAY_LMTP : RELAY_SMTP;
	c->cfg.tls = u->tls;
	if (cf->relay.chunk_size && cf->relay.chunk_size < UINT32_MAX)
		c->cfg.bdat_chunk = (uint32_t)cf->relay.chunk_size;
	c->reply = malloc(c->cfg.max_reply);
	c->next = d->conns;
	d->conns = c;
	d->nconns++;
	if (!c->reply) {
		c->closing = true;
		conn_maybe_free(c);
		return NULL;
	}
	relay_client_init(&c->rc, &c->cfg, c->reply, (struct relay_hooks){.ctx = c, .outcome = on_outcome});
	c->fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		char why[160];
		snprintf(why, sizeof why, "socket: %s", strerror(errno));
		c->closing = true;
		conn_failed(c, why);
		conn_maybe_free(c);
		return NULL;
	}
	struct io_uring_sqe *sqe = core_sqe(d->core);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&c->hops[hop].addr,
			      c->hops[hop].addr_len);
	io_uring_sqe_set_data64(sqe, op_data(&c->op_connect, OP_HANDLER));
	c->pending++;
	c->deadline_ms = d->core->now_ms + cf->relay.timeout_connect;
	return c;
}

/* Give waiting messages to idle connections of their route, and open
 * connections where the pool has room. */
/* Drop the taken entries once they outnumber the live ones. */
static void ready_compact(struct delivery *d)
{
	if (d->nready - d->ready_head <= 2 * d->ready_live + 64)
		return;
	size_t kept = 0;
	for (size_t i = d->ready_head; i < d->nready; i++)
		if (d->ready[i].seg)
			d->ready[kept++] = d->ready[i];
	d->nready = kept;
	d->ready_head = 0;
}

/* Open a connection for route key, if its pool may grow: the route (its
 * hops, CA) is taken from the first message waiting for it. */
static void pump_route(struct delivery *d, uint64_t key)
{
	unsigned n = 0, starting = 0;
	for (struct rconn *c = d->conns; c; c = c->next) {
		if (c->key != key || c->closing)
			continue;
		n++;
		/* not yet ready for a first message: connect, greeting, TLS */
		starting += !c->connected ||
			    (!c->msg_active && relay_client_status(&c->rc) != RELAY_READY);
	}
	if (!dsched_may_open(n, starting, cur_conf(d)->relay.connections))
		return;
	for (size_t i = d->ready_head; i < d->nready; i++) {
		struct ditem it = d->ready[i];
		struct spool_record_view v;
		if (!it.seg || it.key != key || msg_routes(d, it.seg, it.mi, &v) < 0)
			continue;
		const struct dlv_message *m = &it.seg->rp.msgs[it.mi];
		for (uint32_t j = 0; j < m->nrcpt; j++) {
			if (d->routes[j].kind == ROUTE_RELAY && dsched_route_key(d->routes[j].via) == key) {
				conn_open(d, d->routes[j].via, 0, key);
				return;
			}
		}
	}
}

/* Give waiting messages to idle connections of their route, and open
 * connections where a pool has room. Runs at the end of a loop turn
 * while mail waits: its cost is in connections and routes, not in the
 * length of the queue. */
static void pump(struct delivery *d)
{
	if (!d->active || d->core->draining || d->core->now_ms < d->hold_until_ms)
		return;
	ready_compact(d);
	for (struct rconn *c = d->conns; c && d->ready_live; c = c->next)
		if (!c->closing && c->connected && relay_client_status(&c->rc) == RELAY_READY &&
		    !c->msg_active)
			conn_take_work(c);
	for (size_t k = 0; k < d->nkeys; k++) {
		uint64_t key = d->keys[k].key;
		pump_route(d, key);
		/* conn_open may have deferred (and uncounted) this route's mail */
		if (k < d->nkeys && d->keys[k].key != key)
			k--;
	}
}

/* ---- requests ---- */

static int take_request(void *ctx, const struct dlv_request *q)
{
	struct delivery *d = ctx;
	struct dseg *s = NULL;
	for (struct dseg *t = d->segs; t && !s; t = t->next)
		if ((t->seq & 0xffffff) == q->seq24)
			s = t;
	struct dlv_message *m = s ? dlv_replay_find(&s->rp, q->offset) : NULL;
	if (!m) {
		log_warn("delivery: request for %s: no such message here", q->id);
		return 0;
	}
	uint32_t mi = (uint32_t)(m - s->rp.msgs);
	if (s->mflags[mi] & MF_BUSY)
		return 1; /* in flight: next tick */
	struct dlv_record *recs = calloc(m->nrcpt ? m->nrcpt : 1, sizeof *recs);
	struct buf bytes;
	buf_init(&bytes, 0);
	if (!recs)
		return 1;
	size_t n = dlv_request_records(&s->rp, m, q, wall_s(), recs, m->nrcpt);
	for (size_t i = 0; i < n; i++) {
		size_t len = dlv_record_size(&recs[i]);
		if (buf_reserve(&bytes, len) < 0)
			break;
		bytes.len += dlv_record_encode((uint8_t *)bytes.data + bytes.len, len, &recs[i]);
	}
	int rc = 0;
	if (n && (dlv_open(d, s) < 0 ||
		  pwrite(s->dlv_fd, bytes.data, bytes.len, (off_t)s->dlv_tail) != (ssize_t)bytes.len ||
		  fdatasync(s->dlv_fd) < 0)) {
		log_error("delivery: request for %s: .dlv write: %s", q->id, strerror(errno));
		rc = 1;
	} else if (n) {
		uint64_t at = s->dlv_tail;
		for (size_t i = 0; i < n; i++) {
			const struct dlv_rcpt *rcp = &s->rp.rcpts[m->first + recs[i].rcpt];
			bool was = dlv_rcpt_finished(m, rcp);
			dlv_replay_apply(&s->rp, &recs[i], at);
			bool is = dlv_rcpt_finished(m, rcp);
			if (was != is) {
				s->unfinished += is ? -1 : 1;
				d->queue += is ? -1 : 1;
			}
			at += dlv_record_size(&recs[i]);
		}
		s->dlv_tail = at;
		s->mflags[mi] &= (uint8_t)~MF_HELD;
		log_info("delivery: request %s %s: %zu recipients", q->kind == DLV_REQ_DROP ? "drop" : "retry",
			 q->id, n);
		enqueue(d, s, mi);
	}
	free(recs);
	buf_free(&bytes);
	return rc;
}

static void take_requests(struct delivery *d)
{
	if (d->in_flight || d->npend)
		return; /* one writer of each .dlv: between batches only */
	struct buf log;
	buf_init(&log, 0);
	dlv_requests_take(d->dir, take_request, d, &log);
	if (log.len) {
		buf_append(&log, "", 1);
		char *save = NULL;
		for (char *l = strtok_r(log.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
			log_warn("%s", l);
	}
	buf_free(&log);
	gauge_queue(d);
	reclaim_all(d);
}

/* ---- the worker ---- */

static int replay_all(struct delivery *d)
{
	uint64_t *seqs = NULL;
	size_t n = 0;
	if (spool_list_segments(d->dir, &seqs, &n) < 0) {
		log_error("delivery: cannot list %s: %s", d->dir, strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (seg_find(d, seqs[i]))
			continue;
		struct dseg *s = seg_load(d, seqs[i]);
		if (!s) {
			log_error("delivery: segment %08" PRIu64 " left alone", seqs[i]);
			continue;
		}
		seg_add(d, s);
	}
	free(seqs);
	d->active = true;
	uint64_t nsegs = 0;
	for (struct dseg *s = d->segs; s; s = s->next)
		nsegs++;
	log_info("delivery: %" PRIu64 " unfinished recipients in %" PRIu64 " segments", d->queue,
		 nsegs);
	gauge_queue(d);
	take_requests(d);
	scan(d);
	return 0;
}

struct delivery *delivery_start(struct core *core)
{
	struct delivery *d = calloc(1, sizeof *d);
	if (!d) {
		log_error("delivery: out of memory: this core delivers nothing");
		return NULL;
	}
	d->core = core;
	snprintf(d->dir, sizeof d->dir, "%s", core->spool.dir);
	d->op_batch.handler = on_batch_op;
	d->rnd = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 8) ^ (core->index * 2654435761u) ^ 1u;
	d->generation = core->view->snap->generation;
	d->scan_at_ms = UINT64_MAX;
	buf_init(&d->pend_bytes, 0);
	if (upgrade_inherited()) {
		/* the previous process may still deliver (or write a .dlv) until
		 * it exits: a segment has one delivering process at a time */
		d->wait_ppid = getppid();
		log_info("delivery: waits for the previous process (pid %d) to exit", (int)d->wait_ppid);
		return d;
	}
	replay_all(d);
	return d;
}

void delivery_committed(struct delivery *d, uint64_t seq, uint64_t end)
{
	if (!d->active)
		return; /* the replay will find them */
	struct dseg *s = seg_find(d, seq);
	if (!s) {
		s = calloc(1, sizeof *s);
		if (!s)
			return;
		s->seq = seq;
		s->dlv_fd = -1;
		s->end = SPOOL_SEGMENT_HEADER_SIZE;
		s->rp.seg.good_end = s->end;
		if (seg_map(d, s, true) < 0) {
			free(s);
			return;
		}
		seg_add(d, s);
	}
	if (seg_take_records(d, s, end, true) < 0)
		log_error("delivery: segment %08" PRIu64 ": new messages not scheduled", seq);
}

static void conn_tick(struct rconn *c)
{
	struct delivery *d = c->d;
	uint64_t now = d->core->now_ms;
	if (c->closing)
		return;
	if (!c->connected) {
		if (c->deadline_ms && now >= c->deadline_ms) {
			/* cancel the connect: it completes with -ECANCELED */
			struct io_uring_sqe *sqe = core_sqe(d->core);
			io_uring_prep_cancel64(sqe, op_data(&c->op_connect, OP_HANDLER), 0);
			io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
			c->deadline_ms = 0;
		}
		return;
	}
	enum relay_status st = relay_client_status(&c->rc);
	if (d->core->draining && d->core->now_ms >= d->core->drain_deadline_ms) {
		conn_lost(c, RELAY_ABORT_SHUTDOWN);
		return;
	}
	if (c->deadline_ms && now >= c->deadline_ms) {
		log_warn("delivery: %s: timeout", c->hops[c->hop].text);
		conn_lost(c, RELAY_ABORT_TIMEOUT);
		return;
	}
	if (st == RELAY_READY && !c->msg_active &&
	    (d->core->draining || now - c->idle_since_ms >= RC_IDLE_MS))
		conn_advance(c, relay_client_quit(&c->rc, &c->out));
}

void delivery_tick(struct delivery *d)
{
	if (!d->active) {
		if (getppid() == d->wait_ppid)
			return;
		log_info("delivery: the previous process has exited; replaying the spool");
		replay_all(d);
	}
	if (d->core->view->snap->generation != d->generation) {
		/* a new config may route what was held */
		d->generation = d->core->view->snap->generation;
		tls_ctx_drop(d); /* CA files may have changed */
		for (struct dseg *s = d->segs; s; s = s->next)
			for (uint32_t mi = 0; mi < s->rp.nmsgs; mi++)
				s->mflags[mi] &= (uint8_t)~MF_HELD;
		d->scan_at_ms = 0;
	}
	struct rconn *c = d->conns;
	while (c) {
		struct rconn *next = c->next;
		conn_tick(c);
		c = next;
	}
	if (!d->core->draining) {
		take_requests(d);
		if (d->core->now_ms >= d->scan_at_ms)
			scan(d);
	}
	reclaim_all(d);
}

void delivery_flush(struct delivery *d)
{
	if (d->ready_live)
		pump(d);
	writer_flush(d);
}

bool delivery_idle(const struct delivery *d)
{
	return d->nconns == 0 && !d->in_flight && d->npend == 0;
}

uint64_t delivery_queue_size(const struct delivery *d)
{
	return d->queue;
}

void delivery_stop(struct delivery *d)
{
	if (!d)
		return;
	if (!delivery_idle(d))
		return; /* the loop broke on an error: the process exits anyway */
	while (d->segs) {
		struct dseg *s = d->segs;
		d->segs = s->next;
		seg_free(s);
	}
	for (uint32_t i = 0; i < d->groups_cap; i++)
		buf_free(&d->groups[i].bytes);
	free(d->groups);
	tls_ctx_drop(d);
	free(d->ready);
	free(d->keys);
	free(d->routes);
	free(d->pend);
	free(d->batch);
	buf_free(&d->pend_bytes);
	free(d);
}
