/* session: the SMTP client of one connection.
 *
 * Every command pushes an expectation (what its reply must be); every reply
 * pops one and is checked against it, so a reply out of order, a wrong
 * code or a malformed line is an error with the reply kept as an example.
 * The output queue holds the bytes to send in order; one send is in flight
 * per connection, and whatever is queued meanwhile goes out with the next.
 *
 * PIPELINING (RFC 2920) when on and offered: MAIL, every RCPT and DATA go
 * in one write; after 354, the message content, then the next message's
 * MAIL..DATA (or QUIT) go in one write, as RFC 2920 allows ("the actual
 * transfer of message content is explicitly allowed to be the first
 * command in a group"). So a pipelined connection makes one round trip per
 * message. With BDAT, MAIL, RCPTs and the chunks go in one write, and the
 * next message starts when the last chunk's 250 is read. Without
 * PIPELINING, each command waits for its reply. */
#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "worker.h"

static void start_message(struct conn *c, uint64_t t_start);
static void emit_bdat(struct conn *c);

const char *expect_name(enum expect_kind k)
{
	static const char *const names[] = {
		[EX_GREETING] = "greeting", [EX_EHLO] = "EHLO", [EX_STARTTLS] = "STARTTLS",
		[EX_AUTH] = "AUTH", [EX_MAIL] = "MAIL", [EX_RCPT] = "RCPT", [EX_DATA] = "DATA",
		[EX_EOD] = "end of data", [EX_BDAT] = "BDAT", [EX_BDAT_LAST] = "BDAT LAST",
		[EX_QUIT] = "QUIT",
	};
	return names[k];
}

static int expected_code(enum expect_kind k)
{
	switch (k) {
	case EX_GREETING: return 220;
	case EX_STARTTLS: return 220;
	case EX_AUTH: return 235;
	case EX_DATA: return 354;
	case EX_QUIT: return 221;
	default: return 250;
	}
}

/* ---------------------------------------------------------- the queue */

static bool out_empty(const struct conn *c)
{
	return c->out.head == c->out.n;
}

static void out_maybe_reset(struct conn *c)
{
	if (out_empty(c) && !(c->send_busy && !c->tls_on)) {
		c->out.n = c->out.head = 0;
		c->out.head_off = 0;
		c->out.cmd_len = 0;
	}
}

static bool out_full(struct conn *c, size_t cmd_bytes, unsigned iovs)
{
	if (c->out.n + iovs <= OUT_IOV && c->out.cmd_len + cmd_bytes <= c->out.cmd_cap)
		return false;
	conn_error(c, ERR_LOCAL, "output queue full (%u iovecs, %zu command bytes)", c->out.n,
		   c->out.cmd_len);
	conn_abort(c);
	return true;
}

static void out_ref(struct conn *c, const void *p, size_t len)
{
	if (len == 0)
		return;
	struct outq *q = &c->out;
	if (q->n > q->head) {
		struct iovec *last = &q->iov[q->n - 1];
		if ((const char *)last->iov_base + last->iov_len == (const char *)p) {
			last->iov_len += len; /* contiguous with what is queued: one iovec */
			q->queued += len;
			return;
		}
	}
	if (out_full(c, 0, 1))
		return;
	q->iov[q->n].iov_base = (void *)p;
	q->iov[q->n].iov_len = len;
	q->n++;
	q->queued += len;
}

static void out_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct conn *c, const char *fmt, ...)
{
	struct outq *q = &c->out;
	out_maybe_reset(c);
	size_t room = q->cmd_cap - q->cmd_len;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(q->cmd + q->cmd_len, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room) {
		out_full(c, room + 1, 0);
		return;
	}
	char *p = q->cmd + q->cmd_len;
	q->cmd_len += (size_t)n;
	out_ref(c, p, (size_t)n);
}

/* ---------------------------------------------------- expectations */

static unsigned exp_outstanding(const struct conn *c)
{
	return (unsigned)(c->exp_pushed - c->exp_popped);
}

static struct expect *exp_front(struct conn *c)
{
	if (c->exp_popped == c->exp_pushed)
		return NULL;
	return &c->exp[c->exp_popped & (c->exp_cap - 1)];
}

static uint64_t expect(struct conn *c, enum expect_kind kind, uint64_t t_start)
{
	if (exp_outstanding(c) == 0)
		c->deadline = c->w->now + (uint64_t)(c->w->o->timeout * 1e9);
	assert(exp_outstanding(c) < c->exp_cap);
	struct expect *e = &c->exp[c->exp_pushed & (c->exp_cap - 1)];
	e->kind = (uint8_t)kind;
	e->t_start = t_start;
	e->t_eod = 0;
	return c->exp_pushed++;
}

/* The end of a message is queued: its reply's clock starts when the send
 * that carries its last byte is submitted (see submit_*). */
static void mark_end_of_data(struct conn *c, uint64_t seq)
{
	if (c->nstamps == STAMPS)
		return; /* four messages queued unsent: this one goes untimed */
	struct stamp *s = &c->stamps[c->nstamps++];
	s->at = c->out.queued; /* in plaintext bytes; tls.c converts */
	s->seq = seq;
	s->cipher = false;
}

static void stamp_submitted(struct conn *c, uint64_t submitted_end, bool cipher)
{
	uint64_t t = 0;
	for (unsigned i = 0; i < c->nstamps; i++) {
		struct stamp *s = &c->stamps[i];
		if (s->cipher != cipher || s->at > submitted_end || s->seq < c->exp_popped)
			continue;
		if (!t)
			t = mono_ns();
		c->exp[s->seq & (c->exp_cap - 1)].t_eod = t;
	}
}

static void stamps_drop_sent(struct conn *c, uint64_t sent, bool cipher)
{
	unsigned k = 0;
	for (unsigned i = 0; i < c->nstamps; i++) {
		struct stamp *s = &c->stamps[i];
		if (s->cipher == cipher && s->at <= sent)
			continue;
		c->stamps[k++] = *s;
	}
	c->nstamps = k;
}

/* ---------------------------------------------------------- sending */

static void submit_plain(struct conn *c)
{
	struct outq *q = &c->out;
	unsigned k = 0;
	uint64_t end = q->taken;
	for (unsigned i = q->head; i < q->n; i++, k++) {
		size_t off = i == q->head ? q->head_off : 0;
		c->sub_iov[k].iov_base = (char *)q->iov[i].iov_base + off;
		c->sub_iov[k].iov_len = q->iov[i].iov_len - off;
		end += c->sub_iov[k].iov_len;
	}
	assert(k > 0);
	struct io_uring_sqe *sqe = worker_sqe(c->w);
	if (k == 1) {
		/* one buffer (every command without pipelining): plain send */
		io_uring_prep_send(sqe, c->fd, c->sub_iov[0].iov_base, c->sub_iov[0].iov_len,
				   MSG_NOSIGNAL | MSG_WAITALL);
	} else {
		memset(&c->msg, 0, sizeof c->msg);
		c->msg.msg_iov = c->sub_iov;
		c->msg.msg_iovlen = k;
		io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL | MSG_WAITALL);
	}
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
	c->send_busy = true;
	c->inflight++;
	stamp_submitted(c, end, false);
}

static void submit_wire(struct conn *c)
{
	assert(c->wire_len > c->wire_off);
	c->wire_sub = c->wire_len;
	struct io_uring_sqe *sqe = worker_sqe(c->w);
	io_uring_prep_send(sqe, c->fd, c->wire + c->wire_off, c->wire_len - c->wire_off,
			   MSG_NOSIGNAL | MSG_WAITALL);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
	c->send_busy = true;
	c->inflight++;
	stamp_submitted(c, c->wire_total_out + (c->wire_len - c->wire_off), true);
}

void session_pump(struct conn *c)
{
	if (c->state != CS_OPEN)
		return;
	if (c->tls_start_pending && !c->send_busy && out_empty(c)) {
		c->tls_start_pending = false;
		if (tls_begin(c) < 0)
			return;
	}
	if (c->body && c->pipelining && c->w->o->bdat)
		emit_bdat(c); /* more chunks, now that there is room */
	if (c->state != CS_OPEN)
		return;
	if (c->tls_on) {
		tls_fill_wire(c);
		if (c->state == CS_OPEN && !c->send_busy && c->wire_len > c->wire_off)
			submit_wire(c);
	} else if (!c->send_busy && !out_empty(c)) {
		submit_plain(c);
	}
}

void session_sent(struct conn *c, int res)
{
	if (c->tls_on) {
		c->wire_off += (size_t)res;
		c->wire_total_out += (uint64_t)res;
		assert(c->wire_off <= c->wire_len);
		if (c->wire_off == c->wire_len)
			c->wire_off = c->wire_len = 0;
		stamps_drop_sent(c, c->wire_total_out, true);
	} else {
		struct outq *q = &c->out;
		size_t left = (size_t)res;
		while (left > 0) {
			assert(q->head < q->n);
			size_t avail = q->iov[q->head].iov_len - q->head_off;
			if (left < avail) {
				q->head_off += left;
				break;
			}
			left -= avail;
			q->head++;
			q->head_off = 0;
		}
		q->taken += (uint64_t)res;
		stamps_drop_sent(c, q->taken, false);
		out_maybe_reset(c);
	}
	session_pump(c);
}

/* ------------------------------------------------------- commands */

static void emit_ehlo(struct conn *c)
{
	c->cap_pipelining = c->cap_chunking = c->cap_starttls = c->cap_auth_plain = false;
	out_printf(c, "EHLO %s\r\n", c->w->o->helo);
	expect(c, EX_EHLO, 0);
}

static void emit_quit(struct conn *c)
{
	out_printf(c, "QUIT\r\n");
	expect(c, EX_QUIT, 0);
	c->quit_sent = true;
}

static void emit_rcpt(struct conn *c, unsigned n)
{
	char to[MXL_ADDR_MAX + 16];
	/* the pattern has at most one %d and was checked by options.c */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	snprintf(to, sizeof to, c->w->o->to, n);
#pragma GCC diagnostic pop
	out_printf(c, "RCPT TO:<%s>\r\n", to);
	expect(c, EX_RCPT, 0);
}

static uint64_t content_size(const struct conn *c)
{
	return c->body->size;
}

static void emit_data_content(struct conn *c, uint64_t t_start, const char *hdr)
{
	out_ref(c, hdr, MXL_MSGID_LEN);
	out_ref(c, c->body->data, c->body->data_len);
	uint64_t seq = expect(c, EX_EOD, t_start);
	c->exp[seq & (c->exp_cap - 1)].size = content_size(c);
	mark_end_of_data(c, seq);
}

/* The next BDAT chunks of the current message: as many as there is room
 * for when pipelining, else one (its 250 brings the next). */
static void emit_bdat(struct conn *c)
{
	const struct mxl_options *o = c->w->o;
	if (!c->body)
		return;
	uint64_t total = content_size(c);
	const char *hdr = c->hdr[c->hdr_next];
	while (c->body && c->bdat_off < total && c->state == CS_OPEN) {
		if (c->exp_cap - exp_outstanding(c) < 2 || c->out.n + 4 > OUT_IOV ||
		    c->out.cmd_cap - c->out.cmd_len < 64)
			return; /* the queue is busy: more after the next send */
		uint64_t off = c->bdat_off;
		uint64_t n = total - off < o->bdat_chunk ? total - off : o->bdat_chunk;
		bool last = off + n == total;
		out_printf(c, "BDAT %" PRIu64 "%s\r\n", n, last ? " LAST" : "");
		uint64_t end = off + n;
		if (off < MXL_MSGID_LEN) {
			uint64_t k = end < MXL_MSGID_LEN ? end : MXL_MSGID_LEN;
			out_ref(c, hdr + off, (size_t)(k - off));
			off = k;
		}
		if (end > off)
			out_ref(c, c->body->raw + (off - MXL_MSGID_LEN), (size_t)(end - off));
		c->bdat_off = end;
		if (last) {
			uint64_t seq = expect(c, EX_BDAT_LAST, c->msg_start);
			c->exp[seq & (c->exp_cap - 1)].size = total;
			mark_end_of_data(c, seq);
			c->body = NULL; /* all of it is queued */
		} else {
			expect(c, EX_BDAT, 0);
		}
		if (!c->pipelining)
			return;
	}
}

static const struct mxl_body *pick_size(struct worker *w)
{
	const struct mxl_options *o = w->o;
	if (o->nsizes == 1)
		return &o->sizes[0];
	/* xorshift64*: deterministic per worker, no locks, no syscalls */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	uint64_t r = (w->rng * UINT64_C(2685821657736338717)) >> 33;
	unsigned pick = (unsigned)(r % o->weight_total);
	for (unsigned i = 0; i < o->nsizes; i++) {
		if (pick < o->sizes[i].weight)
			return &o->sizes[i];
		pick -= o->sizes[i].weight;
	}
	return &o->sizes[o->nsizes - 1];
}

static void start_message(struct conn *c, uint64_t t_start)
{
	struct worker *w = c->w;
	const struct mxl_options *o = w->o;
	c->body = pick_size(w);
	c->msg_start = t_start;
	c->bdat_off = 0;
	c->msgs_started++;
	c->msgs_unacked++;
	c->hdr_next ^= 1; /* the other buffer may still be in flight */
	body_msgid(c->hdr[c->hdr_next], w->run->run_id, w->id, w->msgid_counter++);
	out_printf(c, "MAIL FROM:<%s>\r\n", o->from);
	expect(c, EX_MAIL, 0);
	if (c->pipelining) {
		for (unsigned i = 1; i <= o->rcpts; i++)
			emit_rcpt(c, i);
		if (o->bdat) {
			emit_bdat(c);
		} else {
			out_printf(c, "DATA\r\n");
			expect(c, EX_DATA, 0);
		}
	} else {
		c->rcpt_next = 1;
	}
	session_pump(c);
}

/* After a message's content is queued on a pipelined connection: the next
 * message's envelope (or QUIT) goes in the same write when there is one
 * to send right now. */
static void pipeline_next(struct conn *c)
{
	struct worker *w = c->w;
	uint64_t t;
	if (w->o->per_conn && c->msgs_started >= w->o->per_conn)
		emit_quit(c);
	else if (worker_take_message(w, c, &t))
		start_message(c, t);
	else if (!worker_more_later(w))
		emit_quit(c);
	/* else: the 250 for this message brings the connection back to ready */
}

void session_ready(struct conn *c)
{
	struct worker *w = c->w;
	if (c->state != CS_OPEN || c->quit_sent || c->msgs_unacked)
		return;
	uint64_t t;
	if (w->o->per_conn && c->msgs_started >= w->o->per_conn)
		emit_quit(c);
	else if (worker_take_message(w, c, &t))
		start_message(c, t);
	else if (worker_more_later(w))
		worker_park(w, c);
	else
		emit_quit(c);
	session_pump(c);
}

void session_connected(struct conn *c)
{
	struct worker *w = c->w;
	const struct mxl_options *o = w->o;
	if (o->proxy) {
		struct sockaddr_storage src, dst;
		socklen_t sl = sizeof src, dl = sizeof dst;
		getsockname(c->fd, (struct sockaddr *)&src, &sl);
		getpeername(c->fd, (struct sockaddr *)&dst, &dl);
		if (o->proxy == 1) {
			char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
			bool v6 = src.ss_family == AF_INET6;
			const void *sa = v6 ? (const void *)&((struct sockaddr_in6 *)&src)->sin6_addr
					    : (const void *)&((struct sockaddr_in *)&src)->sin_addr;
			const void *da = v6 ? (const void *)&((struct sockaddr_in6 *)&dst)->sin6_addr
					    : (const void *)&((struct sockaddr_in *)&dst)->sin_addr;
			inet_ntop(src.ss_family, sa, s, sizeof s);
			inet_ntop(dst.ss_family, da, d, sizeof d);
			unsigned sp = ntohs(v6 ? ((struct sockaddr_in6 *)&src)->sin6_port
					       : ((struct sockaddr_in *)&src)->sin_port);
			unsigned dp = ntohs(v6 ? ((struct sockaddr_in6 *)&dst)->sin6_port
					       : ((struct sockaddr_in *)&dst)->sin_port);
			out_printf(c, "PROXY %s %s %s %u %u\r\n", v6 ? "TCP6" : "TCP4", s, d, sp, dp);
		} else {
			/* v2: signature, version 2 / PROXY, family, length, addresses */
			static const unsigned char sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
							      0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
			unsigned char h[16 + 36];
			size_t n = 16;
			memcpy(h, sig, 12);
			h[12] = 0x21;
			if (src.ss_family == AF_INET6) {
				struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
				struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&dst;
				h[13] = 0x21; /* TCP over IPv6 */
				memcpy(h + n, &s6->sin6_addr, 16);
				memcpy(h + n + 16, &d6->sin6_addr, 16);
				memcpy(h + n + 32, &s6->sin6_port, 2);
				memcpy(h + n + 34, &d6->sin6_port, 2);
				n += 36;
			} else {
				struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
				struct sockaddr_in *d4 = (struct sockaddr_in *)&dst;
				h[13] = 0x11; /* TCP over IPv4 */
				memcpy(h + n, &s4->sin_addr, 4);
				memcpy(h + n + 4, &d4->sin_addr, 4);
				memcpy(h + n + 8, &s4->sin_port, 2);
				memcpy(h + n + 10, &d4->sin_port, 2);
				n += 12;
			}
			h[14] = (unsigned char)((n - 16) >> 8);
			h[15] = (unsigned char)(n - 16);
			/* binary: copy into the command buffer by hand */
			out_maybe_reset(c);
			if (out_full(c, n, 1))
				return;
			char *p = c->out.cmd + c->out.cmd_len;
			memcpy(p, h, n);
			c->out.cmd_len += n;
			out_ref(c, p, n);
		}
	}
	expect(c, EX_GREETING, 0);
	if (o->tls == MXL_TLS_SMTPS)
		c->tls_start_pending = true;
	session_pump(c);
}

/* ------------------------------------------------------- replies */

static void after_ehlo(struct conn *c)
{
	const struct mxl_options *o = c->w->o;
	if (o->tls == MXL_TLS_STARTTLS && !c->tls_on) {
		if (!c->cap_starttls) {
			conn_error(c, ERR_PROTOCOL, "EHLO reply does not offer STARTTLS");
			conn_abort(c);
			return;
		}
		out_printf(c, "STARTTLS\r\n");
		expect(c, EX_STARTTLS, 0);
		session_pump(c);
		return;
	}
	if (o->auth_user && !c->authed) {
		if (!c->cap_auth_plain) {
			conn_error(c, ERR_PROTOCOL, "EHLO reply does not offer AUTH PLAIN%s",
				   c->tls_on ? "" : " (before TLS)");
			conn_abort(c);
			return;
		}
		out_printf(c, "AUTH PLAIN %s\r\n", o->auth_plain);
		expect(c, EX_AUTH, 0);
		session_pump(c);
		return;
	}
	if (o->bdat && !c->cap_chunking) {
		conn_error(c, ERR_PROTOCOL, "EHLO reply does not offer CHUNKING (--bdat)");
		conn_abort(c);
		return;
	}
	c->pipelining = o->pipelining && c->cap_pipelining;
	if (o->pipelining && !c->cap_pipelining)
		c->w->no_pipelining_seen = true;
	session_ready(c);
}

static void message_acked(struct conn *c, const struct expect *e)
{
	struct worker *w = c->w;
	struct mxl_stats *st = &w->st;
	st->msgs_ok++;
	st->bytes_ok += e->size;
	st->last_ack_ns = w->now;
	if (e->t_eod)
		hist_record(&st->h_eod, w->now > e->t_eod ? w->now - e->t_eod : 0);
	hist_record(&st->h_msg, w->now > e->t_start ? w->now - e->t_start : 0);
	assert(c->msgs_unacked > 0);
	c->msgs_unacked--;
}

static void on_reply(struct conn *c, int code)
{
	struct worker *w = c->w;
	w->st.replies[code >= 0 && code < 600 ? code : 0]++;
	struct expect *front = exp_front(c);
	if (!front) {
		conn_error(c, ERR_PROTOCOL, "reply with no command outstanding: %s", c->reply_first);
		conn_abort(c);
		return;
	}
	struct expect e = *front;
	c->exp_popped++;
	int want = expected_code(e.kind);
	if (code != want && !(e.kind == EX_RCPT && code == 251)) {
		conn_error(c, ERR_REPLY, "%s: expected %d, got: %s", expect_name(e.kind), want,
			   c->reply_first);
		conn_abort(c);
		return;
	}
	if (exp_outstanding(c) > 0)
		c->deadline = w->now + (uint64_t)(w->o->timeout * 1e9);
	switch ((enum expect_kind)e.kind) {
	case EX_GREETING:
		hist_record(&w->st.h_connect, w->now - c->t_connect);
		emit_ehlo(c);
		break;
	case EX_EHLO:
		after_ehlo(c);
		return;
	case EX_STARTTLS:
		c->tls_start_pending = true;
		break;
	case EX_AUTH:
		c->authed = true;
		after_ehlo(c);
		return;
	case EX_MAIL:
		if (!c->pipelining)
			emit_rcpt(c, c->rcpt_next++);
		break;
	case EX_RCPT:
		if (!c->pipelining) {
			if (c->rcpt_next <= w->o->rcpts) {
				emit_rcpt(c, c->rcpt_next++);
			} else if (w->o->bdat) {
				emit_bdat(c);
			} else {
				out_printf(c, "DATA\r\n");
				expect(c, EX_DATA, 0);
			}
		}
		break;
	case EX_DATA:
		emit_data_content(c, c->msg_start, c->hdr[c->hdr_next]);
		c->body = NULL;
		if (c->pipelining)
			pipeline_next(c);
		break;
	case EX_BDAT:
		if (!c->pipelining)
			emit_bdat(c);
		break;
	case EX_EOD:
	case EX_BDAT_LAST:
		message_acked(c, &e);
		if (c->msgs_unacked == 0 && !c->quit_sent) {
			session_ready(c);
			return;
		}
		break;
	case EX_QUIT:
		c->state = CS_QUITTING;
		return;
	}
	session_pump(c);
}

static bool word_is(const char *p, size_t n, const char *word)
{
	size_t wl = strlen(word);
	return n >= wl && strncasecmp(p, word, wl) == 0 && (n == wl || p[wl] == ' ' || p[wl] == '=');
}

static void ehlo_keyword(struct conn *c, const char *p, size_t n)
{
	if (word_is(p, n, "PIPELINING"))
		c->cap_pipelining = true;
	else if (word_is(p, n, "CHUNKING"))
		c->cap_chunking = true;
	else if (word_is(p, n, "STARTTLS"))
		c->cap_starttls = true;
	else if (word_is(p, n, "AUTH")) {
		for (size_t i = 4; i + 5 <= n; i++)
			if ((p[i - 1] == ' ' || p[i - 1] == '=') && word_is(p + i, n - i, "PLAIN"))
				c->cap_auth_plain = true;
	}
}

static void reply_line(struct conn *c, const char *p, size_t n, bool crlf)
{
	if (!crlf) {
		conn_error(c, ERR_PROTOCOL, "reply line not ended by CRLF: %.80s", p);
		conn_abort(c);
		return;
	}
	if (n < 3 || p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' ||
	    p[2] > '9' || (n > 3 && p[3] != ' ' && p[3] != '-')) {
		conn_error(c, ERR_PROTOCOL, "malformed reply line: %.*s", (int)(n < 120 ? n : 120), p);
		conn_abort(c);
		return;
	}
	int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
	bool last = n == 3 || p[3] == ' ';
	if (c->reply_code < 0) {
		c->reply_code = code;
		c->reply_lines = 0;
		size_t k = n < sizeof c->reply_first - 1 ? n : sizeof c->reply_first - 1;
		for (size_t i = 0; i < k; i++)
			c->reply_first[i] = p[i] >= ' ' && p[i] < 0x7f ? p[i] : '?';
		c->reply_first[k] = '\0';
	} else if (code != c->reply_code) {
		conn_error(c, ERR_PROTOCOL, "reply code changed inside a multi-line reply: %s / %.*s",
			   c->reply_first, (int)(n < 80 ? n : 80), p);
		conn_abort(c);
		return;
	}
	struct expect *e = exp_front(c);
	if (e && e->kind == EX_EHLO && code == 250 && c->reply_lines > 0 && n > 4)
		ehlo_keyword(c, p + 4, n - 4);
	c->reply_lines++;
	if (last) {
		c->reply_code = -1;
		on_reply(c, code);
	}
}

void session_input(struct conn *c, const char *data, size_t len)
{
	while (len > 0 && c->state == CS_OPEN) {
		const char *nl = memchr(data, '\n', len);
		if (!nl) {
			size_t room = LINE_CAP - c->line_len;
			size_t k = len < room ? len : room;
			memcpy(c->line + c->line_len, data, k);
			c->line_len += (unsigned)k;
			if (k < len)
				c->line_long = true;
			c->line_cr = data[len - 1] == '\r';
			return;
		}
		size_t n = (size_t)(nl - data) + 1;
		bool crlf = n >= 2 ? nl[-1] == '\r' : c->line_cr;
		if (c->line_len == 0 && !c->line_long) {
			reply_line(c, data, crlf ? n - 2 : n - 1, crlf);
		} else {
			size_t room = LINE_CAP - c->line_len;
			size_t k = n - 1 < room ? n - 1 : room; /* without the LF */
			memcpy(c->line + c->line_len, data, k);
			c->line_len += (unsigned)k;
			size_t ln = c->line_len;
			if (crlf && ln > 0 && c->line[ln - 1] == '\r')
				ln--;
			c->line_len = 0;
			c->line_long = false;
			reply_line(c, c->line, ln, crlf);
		}
		data += n;
		len -= n;
	}
	if (c->state == CS_QUITTING && len > 0) {
		conn_error(c, ERR_PROTOCOL, "data after the 221 reply to QUIT");
		conn_abort(c);
	}
}

size_t session_take_plain(struct conn *c, char *dst, size_t max)
{
	struct outq *q = &c->out;
	size_t n = 0;
	while (n < max && q->head < q->n) {
		size_t avail = q->iov[q->head].iov_len - q->head_off;
		size_t k = avail < max - n ? avail : max - n;
		memcpy(dst + n, (char *)q->iov[q->head].iov_base + q->head_off, k);
		n += k;
		if (k == avail) {
			q->head++;
			q->head_off = 0;
		} else {
			q->head_off += k;
		}
	}
	q->taken += n;
	out_maybe_reset(c);
	return n;
}

void session_stamps_to_cipher(struct conn *c, uint64_t plain, uint64_t cipher)
{
	for (unsigned i = 0; i < c->nstamps; i++) {
		struct stamp *s = &c->stamps[i];
		if (!s->cipher && s->at <= plain) {
			s->at = cipher;
			s->cipher = true;
		}
	}
}

/* TLS is up (tls.c): STARTTLS asks again for the extensions; with smtps
 * the greeting comes next, inside TLS. */
void session_tls_up(struct conn *c)
{
	if (c->w->o->tls == MXL_TLS_STARTTLS)
		emit_ehlo(c);
	session_pump(c);
}

void session_reset(struct conn *c)
{
	c->cap_pipelining = c->cap_chunking = c->cap_starttls = c->cap_auth_plain = false;
	c->pipelining = false;
	c->authed = false;
	c->line_len = 0;
	c->line_long = false;
	c->line_cr = false;
	c->reply_code = -1;
	c->reply_lines = 0;
	c->exp_pushed = c->exp_popped = 0;
	c->rcpt_next = 0;
	c->msgs_started = c->msgs_unacked = 0;
	c->quit_sent = false;
	c->body = NULL;
	c->bdat_off = 0;
	c->out.n = c->out.head = 0;
	c->out.head_off = 0;
	c->out.cmd_len = 0;
	c->out.queued = c->out.taken = 0;
	c->nstamps = 0;
	c->tls_start_pending = false;
}

void session_start(struct conn *c, uint64_t t_start)
{
	if (c->state != CS_OPEN || c->quit_sent)
		return;
	start_message(c, t_start);
}
