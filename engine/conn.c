#include "conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "clients.h"
#include "core.h"
#include "log.h"
#include "policy.h"
#include "proxy.h"

/* Past this much unprocessed input (a client pipelining far ahead while its
 * message is being committed) the connection stops reading until the
 * session has caught up: memory per session stays bounded. */
#define INBUF_PAUSE_AT (256 * 1024)
/* Past this much output the client has not taken (a client pipelining
 * commands without reading replies), the session stops taking input until
 * the kernel has taken some: replies are bounded like requests. */
#define OUT_PAUSE_AT (256 * 1024)
#define FEED_SLICE (16 * 1024)
/* A closing connection gets this long to take its last reply. */
#define CLOSE_LINGER_MS 10000
/* Buffers above this are returned to the allocator after use, so an idle
 * session does not keep the memory of its largest reply or message. */
#define IDLE_BUFFER_KEEP 4096
/* Accepted-message log lines name at most this many recipients. */
#define LOG_RCPTS_MAX 5

static void conn_pump(struct conn *c);
static void conn_early_talker(struct conn *c, size_t n);
static void conn_proxy_input(struct conn *c, const char *data, size_t len);
static void conn_maybe_finish(struct conn *c);

static const struct conf *conn_conf(const struct conn *c)
{
	return c->view->snap->conf;
}

static uint64_t wall_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- pool ---- */

static struct conn *conn_alloc(struct core *core, uint32_t line_cap)
{
	while (core->free_conns) {
		struct conn *c = core->free_conns;
		core->free_conns = c->next;
		core->nfree--;
		if (c->line_cap == line_cap) {
			memset(c, 0, sizeof *c);
			c->line_cap = line_cap;
			return c;
		}
		free(c); /* made for another max-line-length */
	}
	struct conn *c = calloc(1, sizeof *c + line_cap);
	if (c)
		c->line_cap = line_cap;
	return c;
}

static void conn_release(struct conn *c)
{
	struct core *core = c->core;
	buf_free(&c->out);
	buf_free(&c->sending);
	buf_free(&c->inbuf);
	c->next = core->free_conns;
	core->free_conns = c;
	core->nfree++;
}

void conn_free_pool(struct core *core)
{
	while (core->free_conns) {
		struct conn *c = core->free_conns;
		core->free_conns = c->next;
		free(c);
	}
	core->nfree = 0;
}

static void conn_link(struct core *core, struct conn *c)
{
	c->prev = NULL;
	c->next = core->conns;
	if (core->conns)
		core->conns->prev = c;
	core->conns = c;
	core->nconns++;
	METRICS_SET(core->metrics.connections_open, core->nconns);
}

static void conn_unlink(struct core *core, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		core->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	core->nconns--;
	METRICS_SET(core->metrics.connections_open, core->nconns);
}

/* ---- config views ---- */

static void view_put(struct core *core, struct core_view *v)
{
	assert(v->sessions > 0);
	if (--v->sessions > 0 || v == core->view)
		return;
	struct core_view **p = &core->old_views;
	while (*p && *p != v)
		p = &(*p)->next;
	if (*p)
		*p = v->next;
	snapshot_release(v->snap);
	free(v);
}

/* ---- peer ---- */

static void peer_set_address(struct smtp_peer *p, const struct sockaddr_storage *ss,
			     socklen_t len)
{
	p->addr = *ss;
	p->addr_len = len;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &in->sin_addr, p->addr_str, sizeof p->addr_str);
		p->port = ntohs(in->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, p->addr_str, sizeof p->addr_str);
		p->port = ntohs(in6->sin6_port);
	} else {
		snprintf(p->addr_str, sizeof p->addr_str, "unknown");
	}
	p->is_local = policy_is_loopback(ss);
}

/* The multishot accept takes no address, so the peer's comes from
 * getpeername(); a client that reset before that has none, and its log
 * lines say "unknown" rather than an empty client=. */
static int peer_fill(struct smtp_peer *p, int fd)
{
	memset(p, 0, sizeof *p);
	snprintf(p->addr_str, sizeof p->addr_str, "unknown");
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	peer_set_address(p, &ss, len);
	return 0;
}

/* ---- logging hooks ---- */

static void log_reject(void *ctx, const char *command, const char *reply)
{
	struct conn *c = ctx;
	log_info("session=%s reject client=%s command=%s reply=\"%s\"", c->sid, c->peer.addr_str,
		 command ? command : "-", reply);
	metrics_count_reject(&c->core->metrics, reply);
}

/* The state machine asks at each MAIL; a yes is a refusal, counted here
 * (the reject hook logs it). */
static bool session_paused(void *ctx)
{
	struct conn *c = ctx;
	if (!atomic_load_explicit(&g_daemon.paused, memory_order_relaxed))
		return false;
	METRICS_INC(c->core->metrics.refused[METRICS_REFUSED_PAUSED]);
	return true;
}

static void log_accepted(struct conn *c)
{
	const struct smtp_envelope *env = &c->smtp.env;
	char rcpts[1024];
	size_t used = 0;
	rcpts[0] = '\0';
	for (uint32_t i = 0; i < env->nrcpt && i < LOG_RCPTS_MAX; i++) {
		int n = snprintf(rcpts + used, sizeof rcpts - used, "%s<%s>", i ? "," : "",
				 env->rcpts[i].addr);
		if (n < 0 || (size_t)n >= sizeof rcpts - used)
			break;
		used += (size_t)n;
	}
	log_info("session=%s accepted id=%s client=%s from=<%s> nrcpt=%u rcpt=%s%s size=%zu%s%s%s%s",
		 c->sid, c->message_id, c->peer.addr_str, env->mail_from ? env->mail_from : "",
		 env->nrcpt, rcpts, env->nrcpt > LOG_RCPTS_MAX ? ",..." : "", c->smtp.body.len,
		 c->peer.tls ? " tls=" : "", c->peer.tls ? c->peer.tls_version : "",
		 c->peer.tls ? " cipher=" : "", c->peer.tls ? c->peer.tls_cipher : "");
}

/* ---- deadlines ---- */

/* A client sending a command byte by byte keeps the deadline of the
 * command's start, so a slowloris cannot stretch one command forever; inside
 * message content each read restarts the block timer (RFC 5321 4.5.3.2.5)
 * and min-data-rate bounds the whole. */
static void conn_set_deadline(struct conn *c)
{
	const struct conf_timeouts *t = &conn_conf(c)->timeouts;
	uint64_t now = c->core->now_ms;
	if (c->closing) {
		c->deadline_ms = now + CLOSE_LINGER_MS;
		return;
	}
	enum smtp_wait wait = smtp_waiting_for(&c->smtp);
	bool same_wait = wait == c->deadline_for && c->deadline_ms != 0;
	if (wait == SMTP_WAIT_DATA_BLOCK && !same_wait) {
		c->data_started_ms = now;
		c->data_started_rx = c->rx_bytes;
	}
	c->deadline_for = wait;
	switch (wait) {
	case SMTP_WAIT_COMMAND:
		if (!(same_wait && c->smtp.line_len > 0))
			c->deadline_ms = now + t->command;
		break;
	case SMTP_WAIT_DATA_BLOCK:
		c->deadline_ms = now + t->data_block;
		break;
	case SMTP_WAIT_COMMIT:
		c->deadline_ms = 0; /* waiting on us, not on the client */
		break;
	case SMTP_WAIT_CLOSED:
		c->deadline_ms = now + CLOSE_LINGER_MS;
		break;
	}
}

/* Content must arrive at min-data-rate on average once the first
 * DATA_RATE_GRACE_MS have passed. */
#define DATA_RATE_GRACE_MS 10000

static bool data_rate_too_low(const struct conn *c)
{
	uint32_t min_rate = conn_conf(c)->min_data_rate;
	if (!min_rate || c->deadline_for != SMTP_WAIT_DATA_BLOCK ||
	    smtp_waiting_for(&c->smtp) != SMTP_WAIT_DATA_BLOCK)
		return false;
	uint64_t elapsed = c->core->now_ms - c->data_started_ms;
	if (elapsed < DATA_RATE_GRACE_MS)
		return false;
	return (c->rx_bytes - c->data_started_rx) * 1000 / elapsed < min_rate;
}

/* ---- closing ---- */

void conn_close_after_flush(struct conn *c, const char *reason)
{
	if (c->closing)
		return;
	c->closing = true;
	c->close_reason = reason;
	c->deadline_ms = c->core->now_ms + CLOSE_LINGER_MS;
}

/* The client is gone or broke the protocol beyond repair: nothing more
 * will be sent to it. */
void conn_abort(struct conn *c, const char *reason)
{
	conn_close_after_flush(c, reason);
	buf_reset(&c->out);
	buf_reset(&c->inbuf);
	if (!c->shut) {
		shutdown(c->fd, SHUT_RDWR);
		c->shut = true;
	}
}

static void conn_finish(struct conn *c)
{
	struct core *core = c->core;
	close(c->fd);
	log_info("session=%s close client=%s reason=%s messages=%u duration_ms=%llu tls_path=%s%s%s%s%s",
		 c->sid, c->peer.addr_str, c->close_reason ? c->close_reason : "-",
		 c->smtp.messages, (unsigned long long)(core->now_ms - c->opened_ms),
		 conn_tls_path(c), c->peer.tls ? " tls=" : "", c->peer.tls ? c->peer.tls_version : "",
		 c->peer.tls ? " cipher=" : "", c->peer.tls ? c->peer.tls_cipher : "");
	core->sessions_by_path[c->tls_used_ktls ? 2 : c->peer.tls ? 1 : 0]++;
	METRICS_INC(core->metrics.sessions_closed[c->tls_used_ktls ? 2 : c->peer.tls ? 1 : 0]);
	conn_tls_free(c);
	if (c->admitted) {
		clients_release(&c->peer.addr);
		smtp_session_free(&c->smtp);
	}
	view_put(core, c->view);
	conn_unlink(core, c);
	conn_release(c);
}

static void conn_maybe_finish(struct conn *c)
{
	if (c->closing && c->greet_timer_armed) {
		if (!c->greet_timer_cancelled) {
			c->greet_timer_cancelled = true;
			struct io_uring_sqe *sqe = core_sqe(c->core);
			io_uring_prep_timeout_remove(sqe, op_data(c, OP_GREET), 0);
			io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
		}
		return; /* finished when the timer's completion comes back */
	}
	if (c->closing && c->shut && !c->recv_armed && !c->send_busy && !c->in_spool)
		conn_finish(c);
}

/* ---- sending ---- */

static void conn_submit_send(struct conn *c)
{
	struct io_uring_sqe *sqe = core_sqe(c->core);
	io_uring_prep_send(sqe, c->fd, c->sending.data, c->sending.len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, op_data(c, OP_SEND));
	c->send_busy = true;
}

/* Hand pending replies to the kernel: one send in flight per connection,
 * so replies leave in order and the buffer under a send never moves. */
void conn_flush(struct conn *c)
{
	if (c->send_busy)
		return;
	if (c->sending.len == 0 && c->tls_mode != CONN_TLS_NONE && c->tls_mode != CONN_TLS_KTLS) {
		conn_tls_fill_wire(c);
	} else if (c->sending.len == 0 && c->out.len > 0) {
		metrics_count_replies(&c->core->metrics, c->out.data, c->out.len);
		struct buf t = c->sending;
		c->sending = c->out;
		c->out = t;
	}
	if (c->sending.len > 0) {
		conn_submit_send(c);
		return;
	}
	if (c->closing && !c->shut) {
		shutdown(c->fd, SHUT_RDWR); /* ends the multishot recv too */
		c->shut = true;
	}
}

void conn_on_send(struct conn *c, int res)
{
	c->send_busy = false;
	if (res < 0) {
		if (res != -EPIPE && res != -ECONNRESET)
			log_info("session=%s send failed: %s", c->sid, strerror(-res));
		buf_reset(&c->sending);
		conn_abort(c, "send error");
	} else {
		buf_consume(&c->sending, (size_t)res);
		if (c->sending.len == 0)
			buf_shrink(&c->sending, IDLE_BUFFER_KEEP);
		conn_flush(c);
		if (c->tls_mode == CONN_TLS_KTLS_SWITCH)
			conn_tls_progress(c);
		else if (c->inbuf.len > 0) /* input held back while replies piled up */
			conn_pump(c);
		conn_flush(c);
	}
	conn_maybe_finish(c);
}

/* ---- receiving ---- */

void conn_arm_recv(struct conn *c)
{
	struct io_uring_sqe *sqe = core_sqe(c->core);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, op_data(c, OP_RECV));
	c->recv_armed = true;
}

void conn_cancel_recv(struct conn *c)
{
	struct io_uring_sqe *sqe = core_sqe(c->core);
	io_uring_prep_cancel64(sqe, op_data(c, OP_RECV), 0);
	io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
}

static void conn_pause_recv(struct conn *c)
{
	if (c->recv_paused || !c->recv_armed)
		return;
	conn_cancel_recv(c);
	c->recv_paused = true;
	c->recv_cancel_pending = true;
}

static void conn_resume_recv(struct conn *c)
{
	if (!c->recv_paused || c->inbuf.len >= INBUF_PAUSE_AT)
		return;
	c->recv_paused = false;
	if (!c->recv_armed && !c->closing && c->tls_mode != CONN_TLS_KTLS_SWITCH)
		conn_arm_recv(c);
}

static void conn_message_ready(struct conn *c)
{
	c->in_spool = true;
	c->message_started_ns = wall_clock_ns();
	if (spool_writer_enqueue(&c->core->spool, c) < 0) {
		log_error("session=%s cannot queue message for the spool: out of memory", c->sid);
		conn_spool_done(c, false, false);
	}
}

/* Client-chosen text in a log line: printable ASCII only, so a name with
 * CR/LF cannot forge log lines. */
static const char *printable(const char *in, char *out, size_t out_len)
{
	size_t i = 0;
	for (; in[i] && i + 1 < out_len; i++)
		out[i] = in[i] > 0x20 && in[i] < 0x7f ? in[i] : '?';
	out[i] = '\0';
	return out;
}

/* crypt(3) runs on the core: AUTH is rare next to mail, and bounded by
 * max-errors per session. */
static void conn_check_credentials(struct conn *c)
{
	const struct conf *conf = conn_conf(c);
	const struct conf_listener *l = &conf->listeners[c->listener];
	const struct conf_table *t = l->auth_table ? conf_table_find(conf, l->auth_table) : NULL;
	bool ok = t ? auth_check_password(t, c->smtp.auth_user, c->smtp.auth_password)
		    : auth_check_system(c->smtp.auth_user, c->smtp.auth_password);
	char user[sizeof c->smtp.auth_user];
	printable(c->smtp.auth_user, user, sizeof user);
	if (ok) {
		c->peer.authenticated = true;
		snprintf(c->peer.auth_user, sizeof c->peer.auth_user, "%s", c->smtp.auth_user);
	}
	log_info("session=%s auth %s client=%s user=%s", c->sid, ok ? "ok" : "failed",
		 c->peer.addr_str, user);
	smtp_auth_done(&c->smtp, ok, &c->out);
}

static bool session_takes_input(const struct conn *c)
{
	return !c->closing && !c->in_spool && c->smtp.state != SMTP_S_WAIT_COMMIT &&
	       c->out.len + c->sending.len < OUT_PAUSE_AT;
}

/* Run the state machine over data; returns how many bytes it took. It
 * stops early when a message waits for the spool. */
/* At debug level, the replies the session just wrote, a line each
 * (replies only: commands may carry AUTH secrets). */
static void log_debug_replies(const struct conn *c, size_t from)
{
	if (log_get_level() < LOG_DEBUG || from >= c->out.len)
		return;
	const char *p = c->out.data + from, *end = c->out.data + c->out.len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		size_t shown = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
		log_debug("session=%s reply \"%.*s\"", c->sid, (int)(shown < 200 ? shown : 200), p);
		p += n + 1;
	}
}

static size_t conn_feed_session(struct conn *c, const char *data, size_t len);

static size_t conn_feed(struct conn *c, const char *data, size_t len)
{
	size_t from = c->out.len;
	size_t used = conn_feed_session(c, data, len);
	log_debug_replies(c, from);
	return used;
}

static size_t conn_feed_session(struct conn *c, const char *data, size_t len)
{
	size_t off = 0;
	while (off < len && session_takes_input(c)) {
		/* Input goes in slices so the reply bound is checked often: one
		 * 8-byte "EHLO x" line can ask for ~170 bytes of reply. */
		size_t slice = len - off < FEED_SLICE ? len - off : FEED_SLICE;
		size_t used = 0;
		enum smtp_status st = smtp_feed(&c->smtp, data + off, slice, &used, &c->out);
		off += used;
		switch (st) {
		case SMTP_NEED_MORE:
			assert(used == slice);
			continue;
		case SMTP_MESSAGE_READY:
			conn_message_ready(c);
			return off;
		case SMTP_STARTTLS:
			/* Whatever the client pipelined behind STARTTLS is
			 * dropped, never run inside TLS (CVE-2011-0411 class). */
			if (len > off)
				log_info("session=%s discarded %zu bytes pipelined after STARTTLS",
					 c->sid, len - off);
			buf_reset(&c->inbuf);
			conn_tls_start(c, false);
			return len;
		case SMTP_CLOSE:
			conn_close_after_flush(c, c->smtp.errors ? "closed by server" : "quit");
			return len; /* nothing after QUIT / 421 is read */
		case SMTP_AUTH_CHECK:
			conn_check_credentials(c);
			break;
		}
	}
	return c->closing ? len : off;
}

/* A draining core closes sessions between transactions. */
static void conn_check_drain(struct conn *c)
{
	if (!c->core->draining || c->closing || c->in_spool || c->smtp.in_transaction ||
	    c->smtp.state != SMTP_S_COMMAND)
		return;
	if (c->core->drain_soft && c->smtp.messages == 0)
		return; /* after an upgrade: let it deliver first (core.h) */
	smtp_shutdown(&c->smtp, &c->out);
	conn_close_after_flush(c, "shutdown");
}

static void conn_pump(struct conn *c)
{
	if (c->inbuf.len > 0 && session_takes_input(c)) {
		size_t used = conn_feed(c, c->inbuf.data, c->inbuf.len);
		buf_consume(&c->inbuf, used);
		if (c->inbuf.len == 0)
			buf_shrink(&c->inbuf, IDLE_BUFFER_KEEP);
	}
	conn_check_drain(c);
	conn_resume_recv(c);
	conn_set_deadline(c);
}

void conn_input(struct conn *c, const char *data, size_t len)
{
	if (c->closing)
		return;
	if (c->inbuf.len == 0 && session_takes_input(c)) {
		size_t used = conn_feed(c, data, len);
		data += used;
		len -= used;
	}
	if (len > 0 && !c->closing) {
		if (buf_append(&c->inbuf, data, len) < 0) {
			log_error("session=%s out of memory buffering input", c->sid);
			conn_abort(c, "out of memory");
			return;
		}
	}
	conn_pump(c);
	if (c->inbuf.len >= INBUF_PAUSE_AT)
		conn_pause_recv(c);
}

void conn_on_recv(struct conn *c, int res, unsigned flags)
{
	bool more = flags & IORING_CQE_F_MORE;
	bool cancelled_by_us = res == -ECANCELED && c->recv_cancel_pending;
	if (!more) {
		c->recv_armed = false;
		c->recv_cancel_pending = false;
	}
	if (c->ktls_filling) {
		c->recv_armed = false;
		conn_tls_fill_done(c, res);
	} else if (res > 0) {
		assert(flags & IORING_CQE_F_BUFFER);
		unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
		const char *data = c->core->rx_mem + (size_t)bid * c->core->rx_size;
		c->rx_bytes += (uint64_t)res;
		if (c->proxy_pending)
			conn_proxy_input(c, data, (size_t)res);
		else if (c->greeting_pending)
			conn_early_talker(c, (size_t)res);
		else if (c->tls_mode == CONN_TLS_NONE || c->tls_mode == CONN_TLS_KTLS)
			conn_input(c, data, (size_t)res);
		else
			conn_tls_input(c, data, (size_t)res);
		core_rx_recycle(c->core, bid);
		if (!more && !c->closing && !c->recv_paused && c->tls_mode != CONN_TLS_KTLS_SWITCH)
			conn_arm_recv(c);
	} else if (c->tls_mode == CONN_TLS_KTLS && (res == -EIO || res == -EKEYEXPIRED ||
						    res == -EBADMSG)) {
		conn_ktls_read_error(c, res);
	} else if (res == -ECANCELED && c->tls_mode == CONN_TLS_KTLS_SWITCH) {
		/* stopped on purpose: the switch to kTLS continues below */
	} else if (res == -ENOBUFS) {
		/* every provided buffer was in use; they are back by now */
		if (!c->closing && !c->recv_paused && !c->recv_armed &&
		    c->tls_mode != CONN_TLS_KTLS_SWITCH)
			conn_arm_recv(c);
	} else if (cancelled_by_us) {
		/* paused on purpose; if the pause already ended, read again */
		if (!c->recv_paused && !c->closing && c->tls_mode != CONN_TLS_KTLS_SWITCH)
			conn_arm_recv(c);
	} else if (!c->closing) {
		c->close_reason = res == 0 ? "disconnect" : "receive error";
		if (res < 0 && res != -ECONNRESET)
			log_info("session=%s receive failed: %s", c->sid, strerror(-res));
		conn_abort(c, c->close_reason);
	}
	if (c->tls_mode == CONN_TLS_KTLS_SWITCH && !c->recv_armed)
		conn_tls_progress(c);
	conn_flush(c);
	conn_maybe_finish(c);
}

/* ---- greeting-delay ---- */

/* A client that talks before the 220 is not waiting for the server, as
 * RFC 5321 4.3.1 requires: most such clients are spam engines. */
static void conn_early_talker(struct conn *c, size_t n)
{
	c->greeting_pending = false;
	buf_printf(&c->out, "554 5.5.1 %s Error: SMTP protocol violation: client talked before the greeting\r\n",
		   conn_conf(c)->hostname);
	log_info("session=%s reject client=%s command=CONNECT reply=\"554 5.5.1 early talker: %zu bytes "
		 "before the greeting\"",
		 c->sid, c->peer.addr_str, n);
	METRICS_INC(c->core->metrics.refused[METRICS_REFUSED_EARLY_TALKER]);
	conn_close_after_flush(c, "early talker");
}

static void conn_delay_greeting(struct conn *c, uint32_t delay_ms)
{
	c->greeting_pending = true;
	c->greet_timer_armed = true;
	c->greet_ts.tv_sec = delay_ms / 1000;
	c->greet_ts.tv_nsec = (long long)(delay_ms % 1000) * 1000000;
	struct io_uring_sqe *sqe = core_sqe(c->core);
	io_uring_prep_timeout(sqe, &c->greet_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, op_data(c, OP_GREET));
}

void conn_on_greet_timer(struct conn *c)
{
	c->greet_timer_armed = false;
	if (c->greeting_pending && !c->closing) {
		c->greeting_pending = false;
		smtp_greeting(&c->smtp, &c->out);
		conn_set_deadline(c);
		conn_flush(c);
	}
	conn_maybe_finish(c);
}

/* ---- accept ---- */

static void conn_refuse(struct conn *c, enum clients_refusal why)
{
	const char *host = conn_conf(c)->hostname;
	if (why == CLIENTS_TOO_MANY_FROM_ADDRESS)
		buf_printf(&c->out, "421 4.7.0 %s Error: too many connections from %s\r\n", host,
			   c->peer.addr_str);
	else
		buf_printf(&c->out, "421 4.7.0 %s Error: too many connections\r\n", host);
	log_info("session=%s reject client=%s command=CONNECT reply=\"%.*s\"", c->sid,
		 c->peer.addr_str, (int)(c->out.len - 2), c->out.data);
	METRICS_INC(c->core->metrics.refused[METRICS_REFUSED_CONN_LIMIT]);
	conn_close_after_flush(c, "connection limit");
}

/* Paused (mxctl pause): a new connection is told so and closed; on an
 * smtps listener, where no plaintext word may come first, it is closed
 * without one. */
static void conn_refuse_paused(struct conn *c, bool smtps)
{
	static const char reply[] = "421 4.3.2 %s Service paused, try again later";
	char text[300];
	snprintf(text, sizeof text, reply, conn_conf(c)->hostname);
	log_info("session=%s reject client=%s command=CONNECT reply=\"%s\"%s", c->sid,
		 c->peer.addr_str, text, smtps ? " (smtps: closed without a reply)" : "");
	METRICS_INC(c->core->metrics.refused[METRICS_REFUSED_PAUSED]);
	if (smtps) {
		conn_abort(c, "paused");
		return;
	}
	buf_printf(&c->out, "%s\r\n", text);
	conn_close_after_flush(c, "paused");
}

/* The session proper starts once the client's address is known: at once,
 * or after the PROXY header. `early` holds bytes that came behind that
 * header. */
static void conn_begin(struct conn *c, const char *early, size_t early_len)
{
	struct core *core = c->core;
	const struct conf *conf = conn_conf(c);
	const struct conf_listener *l = &conf->listeners[c->listener];
	log_info("session=%s open client=%s port=%u listener=%s:%u%s%s", c->sid, c->peer.addr_str,
		 c->peer.port, l->addr_text, l->port, c->proxy_via[0] ? " via=" : "",
		 c->proxy_via);
	if (atomic_load_explicit(&g_daemon.paused, memory_order_relaxed) && !core->draining) {
		conn_refuse_paused(c, l->flags & CONF_LISTEN_SMTPS);
		conn_flush(c);
		return;
	}
	enum clients_refusal why = clients_admit(&c->peer.addr, conf->max_connections,
						 conf->max_connections_per_client);
	if (why != CLIENTS_ADMITTED) {
		conn_refuse(c, why);
		conn_flush(c);
		return;
	}
	c->admitted = true;
	struct smtp_hooks hooks = {.ctx = c, .reject = log_reject, .paused = session_paused};
	smtp_session_init(&c->smtp, &c->view->snap->smtp[c->listener], &c->peer, c->line, hooks);
	bool smtps = l->flags & CONF_LISTEN_SMTPS;
	/* After an upgrade's hand-over (drain_soft) a client the old process
	 * still took off the queue came for the new one: serve it. */
	bool refuse = core->draining && !core->drain_soft;
	if (refuse && smtps) {
		conn_abort(c, "shutdown"); /* no words before a handshake */
	} else if (refuse) {
		smtp_shutdown(&c->smtp, &c->out);
		conn_close_after_flush(c, "shutdown");
	} else if (smtps) {
		/* implicit TLS (RFC 8314): the greeting follows the handshake */
		if (conn_tls_start(c, true) == 0 && !c->recv_armed)
			conn_arm_recv(c);
		conn_set_deadline(c);
		if (early_len > 0)
			conn_tls_input(c, early, early_len);
	} else if (conf->greeting_delay) {
		conn_delay_greeting(c, conf->greeting_delay);
		if (!c->recv_armed)
			conn_arm_recv(c);
		if (early_len > 0)
			conn_early_talker(c, early_len);
	} else {
		smtp_greeting(&c->smtp, &c->out);
		if (!c->recv_armed)
			conn_arm_recv(c);
		conn_set_deadline(c);
		if (early_len > 0)
			conn_input(c, early, early_len);
	}
	conn_flush(c);
}

/* A listener behind a load balancer: the PROXY header (v1 or v2) names
 * the real client, used for logs, limits, policy and Received:. Nothing
 * behind the header is taken by the parser; a bad or missing header closes
 * the connection without a word. */
static void conn_proxy_input(struct conn *c, const char *data, size_t len)
{
	size_t used = 0;
	struct proxy_header h;
	enum proxy_result r = proxy_parse(&c->proxy, data, len, &used, &h);
	if (r == PROXY_NEED_MORE)
		return;
	if (r == PROXY_INVALID) {
		log_info("session=%s client=%s PROXY header refused: %s", c->sid, c->peer.addr_str,
			 proxy_reason(&c->proxy));
		METRICS_INC(c->core->metrics.refused[METRICS_REFUSED_BAD_PROXY]);
		conn_abort(c, "bad proxy header");
		return;
	}
	c->proxy_pending = false;
	snprintf(c->proxy_via, sizeof c->proxy_via, "%s", c->peer.addr_str);
	if (!h.local)
		peer_set_address(&c->peer, &h.src, h.src_len);
	conn_begin(c, data + used, len - used);
}

/* A peer outside the listener's proxy-from could claim any client
 * address: closed before a byte of it is read, without a word, as a bad
 * header is. */
static void conn_refuse_proxy_peer(struct conn *c, const struct conf_listener *l)
{
	log_info("session=%s client=%s PROXY header not allowed from this peer on listener "
		 "%s:%u (proxy-from)",
		 c->sid, c->peer.addr_str, l->addr_text, l->port);
	METRICS_INC(c->core->metrics.refused[METRICS_REFUSED_PROXY_NOT_ALLOWED]);
	conn_abort(c, "proxy not allowed");
	conn_maybe_finish(c);
}

void conn_accept(struct core *core, unsigned listener, int fd)
{
	struct core_view *view = core->view;
	const struct conf *conf = view->snap->conf;
	struct conn *c = conn_alloc(core, conf->max_line_length);
	if (!c) {
		log_error("out of memory for a new connection");
		close(fd);
		return;
	}
	c->core = core;
	c->fd = fd;
	c->listener = listener;
	c->view = view;
	view->sessions++;
	c->opened_ms = core->now_ms;
	snprintf(c->sid, sizeof c->sid, "%02X%010llX", core->index,
		 (unsigned long long)++core->next_session);
	buf_init(&c->out, 0);
	buf_init(&c->sending, 0);
	buf_init(&c->inbuf, 0);
	conn_link(core, c);
	METRICS_INC(core->metrics.connections);
	if (peer_fill(&c->peer, fd) < 0) {
		c->close_reason = "peer vanished";
		conn_abort(c, "peer vanished");
		conn_maybe_finish(c);
		return;
	}
	const struct conf_listener *l = &conf->listeners[listener];
	unsigned proxy = l->flags & (CONF_LISTEN_PROXY_V1 | CONF_LISTEN_PROXY_V2);
	if (!proxy) {
		conn_begin(c, NULL, 0);
		return;
	}
	if (!policy_proxy_peer_allowed(view->snap->policy, l, &c->peer.addr)) {
		conn_refuse_proxy_peer(c, l);
		return;
	}
	c->proxy_pending = true;
	proxy_parser_init(&c->proxy, proxy & CONF_LISTEN_PROXY_V1 ? PROXY_V1 : PROXY_V2,
			  PROXY_TLV_MAX_DEFAULT);
	c->deadline_ms = core->now_ms + conf->timeouts.command;
	conn_arm_recv(c);
}

/* ---- description (mxctl sessions) ---- */

static const char *conn_state_name(const struct conn *c)
{
	if (c->proxy_pending)
		return "proxy";
	if (c->closing)
		return "closing";
	if (c->greeting_pending)
		return "greeting-delay";
	if (c->tls_mode == CONN_TLS_HANDSHAKE)
		return "tls-handshake";
	if (c->tls_mode == CONN_TLS_KTLS_SWITCH)
		return "ktls-switch";
	if (!c->admitted)
		return "connect";
	return smtp_state_name(&c->smtp);
}

void conn_describe(const struct conn *c, struct buf *out)
{
	bool v6 = c->peer.addr.ss_family == AF_INET6;
	const char *tls_where = c->tls_mode == CONN_TLS_KTLS ? "ktls" : "userspace";
	char tls[128];
	if (c->peer.tls)
		snprintf(tls, sizeof tls, "%s/%s/%s", c->peer.tls_version, c->peer.tls_cipher,
			 tls_where);
	else
		snprintf(tls, sizeof tls, "%s",
			 c->tls_mode == CONN_TLS_HANDSHAKE ? "handshake" : "none");
	buf_printf(out, "core=%u session=%s client=%s%s%s:%u state=%s tls=%s age=%llu bytes_in=%llu\n",
		   c->core->index, c->sid, v6 ? "[" : "", c->peer.addr_str, v6 ? "]" : "",
		   c->peer.port, conn_state_name(c), tls,
		   (unsigned long long)((c->core->now_ms - c->opened_ms) / 1000),
		   (unsigned long long)c->rx_bytes);
}

/* ---- the spool's answer ---- */

void conn_spool_done(struct conn *c, bool ok, bool no_space)
{
	assert(c->in_spool);
	c->in_spool = false;
	if (ok) {
		log_accepted(c);
		METRICS_INC(c->core->metrics.messages);
		METRICS_ADD(c->core->metrics.message_bytes, c->smtp.body.len);
	}
	else
		log_warn("session=%s message not queued: %s", c->sid,
			 no_space ? "spool full" : "spool write failed");
	if (!c->shut) {
		/* Even a closing session gets its verdict if the socket is open. */
		smtp_commit_done(&c->smtp, ok, no_space, c->message_id, &c->out);
		conn_pump(c);
		conn_flush(c);
	}
	conn_maybe_finish(c);
}

/* ---- time ---- */

void conn_tick(struct conn *c)
{
	if (!c->closing && data_rate_too_low(c)) {
		log_info("session=%s client=%s data rate below min-data-rate %u bytes/s", c->sid,
			 c->peer.addr_str, conn_conf(c)->min_data_rate);
		c->deadline_ms = c->core->now_ms; /* handled as a timeout below */
	}
	if (!c->deadline_ms || c->core->now_ms < c->deadline_ms)
		return;
	c->deadline_ms = 0;
	if (c->proxy_pending && !c->closing) {
		log_info("session=%s client=%s no PROXY header in time", c->sid, c->peer.addr_str);
		conn_abort(c, "proxy header timeout");
		conn_maybe_finish(c);
		return;
	}
	if (c->closing) {
		/* the client will not take its last reply: drop it */
		log_info("session=%s close timed out, dropping", c->sid);
		buf_reset(&c->out);
		if (!c->shut) {
			shutdown(c->fd, SHUT_RDWR);
			c->shut = true;
		}
		if (c->recv_armed) {
			struct io_uring_sqe *sqe = core_sqe(c->core);
			io_uring_prep_cancel64(sqe, op_data(c, OP_RECV), 0);
			io_uring_sqe_set_data64(sqe, op_data(NULL, OP_CANCEL));
		}
		conn_maybe_finish(c);
		return;
	}
	log_info("session=%s timeout client=%s waiting for %s", c->sid, c->peer.addr_str,
		 smtp_waiting_for(&c->smtp) == SMTP_WAIT_DATA_BLOCK ? "message data" : "a command");
	smtp_timeout(&c->smtp, &c->out);
	conn_close_after_flush(c, "timeout");
	conn_flush(c);
	conn_maybe_finish(c);
}

void conn_drain(struct conn *c, bool force)
{
	if (c->closing)
		return;
	if (c->proxy_pending) {
		conn_abort(c, "shutdown");
		conn_maybe_finish(c);
		return;
	}
	if (!force) {
		conn_check_drain(c);
	} else if (!c->in_spool) {
		smtp_shutdown(&c->smtp, &c->out);
		conn_close_after_flush(c, "shutdown");
	} else {
		/* its verdict is still owed: conn_spool_done sends it, then closes */
		conn_close_after_flush(c, "shutdown");
	}
	conn_flush(c);
	conn_maybe_finish(c);
}
