/* relay_client: SMTP / LMTP client as a pure state machine (see the header).
 *
 * Two readers of the next hop's bytes sit on top of each other: the reply
 * reader collects one reply (one or more lines with the same code) into
 * the caller's buffer, and the dispatcher decides what the reply means in
 * the state the connection is in. Inside a transaction the order of
 * replies is fixed by the order of commands (RFC 2920 3.1: MAIL, each
 * RCPT, DATA or each BDAT, then one reply after the data, or one per
 * accepted recipient for LMTP), so counters say which command the next
 * reply answers; no queue is kept.
 *
 * Nothing here reads the clock, a socket or a file, or allocates. */
#include "relay_client.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum client_state {
	CS_GREETING = 0,
	CS_EHLO,            /* EHLO or LHLO sent */
	CS_HELO,            /* HELO sent after EHLO got a 5xx */
	CS_STARTTLS,
	CS_TLS_HANDSHAKE,   /* the caller's handshake */
	CS_READY,
	CS_TXN,             /* a message in flight */
	CS_RSET,
	CS_QUIT,
	CS_CLOSED,
};

/* Per-recipient state bits (struct relay_rcpt.state). */
enum {
	R_SENT = 1,         /* RCPT written: a reply to it is due */
	R_ACCEPTED = 2,     /* 2xx to RCPT */
	R_DONE = 4,         /* its outcome was given */
};

/* ---------------------------------------------------------------- helpers */

static bool is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

static char lower(char ch)
{
	return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* Does the span start with the keyword (case-insensitive), followed by its
 * end or a space? */
static bool keyword_is(const char *p, size_t n, const char *kw)
{
	size_t k = strlen(kw);
	if (n < k)
		return false;
	for (size_t i = 0; i < k; i++)
		if (lower(p[i]) != lower(kw[i]))
			return false;
	return n == k || p[k] == ' ';
}

enum relay_verdict relay_verdict_of(uint16_t code)
{
	switch (code / 100) {
	case 2: return RELAY_DELIVERED;
	case 5: return RELAY_FAILED;
	default: return RELAY_DEFERRED;
	}
}

static void emit(struct relay_client *c, struct buf *out, const void *p, size_t n)
{
	if (!c->out_failed && buf_append(out, p, n) < 0)
		c->out_failed = true;
}

static void emit_str(struct relay_client *c, struct buf *out, const char *s)
{
	emit(c, out, s, strlen(s));
}

__attribute__((format(printf, 3, 4)))
static void emitf(struct relay_client *c, struct buf *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (!c->out_failed && buf_vprintf(out, fmt, ap) < 0)
		c->out_failed = true;
	va_end(ap);
}

__attribute__((format(printf, 2, 3)))
static void set_error(struct relay_client *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->error, sizeof c->error, fmt, ap);
	va_end(ap);
}

/* A reply the client makes up; text lives in the caller's storage. */
static struct relay_reply local_reply(uint16_t code, const char *enhanced, const char *text)
{
	struct relay_reply r = { .code = code, .text = text, .text_len = strlen(text), .local = true };
	snprintf(r.enhanced, sizeof r.enhanced, "%s", enhanced);
	return r;
}

/* -------------------------------------------------------------- outcomes */

static void give_outcome(struct relay_client *c, uint32_t i, enum relay_verdict v,
			 const struct relay_reply *r)
{
	struct relay_rcpt *rc = &c->msg->rcpts[i];
	assert(!(rc->state & R_DONE));
	assert(c->rcpt_open > 0);
	rc->state |= R_DONE;
	c->rcpt_open--;
	if (c->hooks.outcome) {
		struct relay_outcome o = { .rcpt = rc, .index = i, .verdict = v, .reply = *r };
		c->hooks.outcome(c->hooks.ctx, &o);
	}
}

/* Every recipient still open (and, with only_accepted, only those the
 * next hop accepted) gets verdict v with reply r. */
static void finish_open(struct relay_client *c, bool only_accepted, enum relay_verdict v,
			const struct relay_reply *r)
{
	if (!c->msg)
		return;
	for (uint32_t i = 0; i < c->msg->nrcpt && c->rcpt_open > 0; i++) {
		uint8_t st = c->msg->rcpts[i].state;
		if ((st & R_DONE) || (only_accepted && !(st & R_ACCEPTED)))
			continue;
		give_outcome(c, i, v, r);
	}
}

/* ------------------------------------------------------------ the phases */

static const char *phase_name(const struct relay_client *c)
{
	switch ((enum client_state)c->state) {
	case CS_GREETING: return "waiting for the greeting";
	case CS_EHLO: return c->cfg->protocol == RELAY_LMTP ? "waiting for the reply to LHLO"
							    : "waiting for the reply to EHLO";
	case CS_HELO: return "waiting for the reply to HELO";
	case CS_STARTTLS: return "waiting for the reply to STARTTLS";
	case CS_TLS_HANDSHAKE: return "in the TLS handshake";
	case CS_READY: return "idle";
	case CS_RSET: return "waiting for the reply to RSET";
	case CS_QUIT: return "waiting for the reply to QUIT";
	case CS_CLOSED: return "closed";
	case CS_TXN: break;
	}
	if (!c->mail_replied)
		return "waiting for the reply to MAIL";
	if (c->rcpt_outstanding)
		return "waiting for the reply to RCPT";
	if (c->data_sent && !c->data_replied)
		return "waiting for the reply to DATA";
	if (c->body_phase && !c->last_sent)
		return "sending the message";
	if (c->chunking)
		return "waiting for the reply to BDAT";
	return "waiting for the reply to the end of data";
}

/* The connection ends. Open recipients are deferred with `why` (whatever
 * its class: a connection problem is never a verdict on a recipient).
 * QUIT is said when the stream is still in step and the next hop did not
 * close first. */
static void conn_close(struct relay_client *c, const struct relay_reply *why, bool quit,
		       struct buf *out)
{
	if (c->state == CS_CLOSED)
		return;
	/* Local replies say where they happened in their text already. */
	set_error(c, "%03u%s%s %.*s%s%s%s", why->code, why->enhanced[0] ? " " : "", why->enhanced,
		  (int)why->text_len, why->text, why->local ? "" : " (", why->local ? "" : phase_name(c),
		  why->local ? "" : ")");
	c->error_code = why->code;
	finish_open(c, false, RELAY_DEFERRED, why);
	if (quit && c->state != CS_QUIT && out)
		emit_str(c, out, "QUIT\r\n");
	c->msg = NULL;
	c->state = CS_CLOSED;
}

/* The next hop said something that makes no sense here: the stream is out
 * of step, so nothing more is said. */
__attribute__((format(printf, 2, 3)))
static void protocol_error(struct relay_client *c, const char *fmt, ...)
{
	char text[RELAY_ERROR_MAX / 2];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof text)
		snprintf(text + n, sizeof text - (size_t)n, " while %s", phase_name(c));
	struct relay_reply r = local_reply(451, "4.5.0", text);
	conn_close(c, &r, false, NULL);
}

static bool body_wanted(const struct relay_client *c)
{
	if (c->state != CS_TXN || !c->body_phase)
		return false;
	if (!c->chunking)
		return !c->last_sent;
	if (c->chunk_left > 0)
		return true; /* a chunk once begun is always completed, LAST too */
	return !c->last_sent && !c->txn_failed &&
	       c->chunks_sent - c->chunks_replied < c->cfg->bdat_window;
}

enum relay_status relay_client_status(const struct relay_client *c)
{
	switch ((enum client_state)c->state) {
	case CS_TLS_HANDSHAKE: return RELAY_START_TLS;
	case CS_READY: return RELAY_READY;
	case CS_CLOSED: return RELAY_CLOSED;
	case CS_TXN: return body_wanted(c) ? RELAY_WANT_BODY : RELAY_WANT_REPLY;
	default: return RELAY_WANT_REPLY;
	}
}

enum relay_wait relay_client_waiting_for(const struct relay_client *c)
{
	switch ((enum client_state)c->state) {
	case CS_GREETING: return RELAY_WAIT_GREETING;
	case CS_TLS_HANDSHAKE: return RELAY_WAIT_TLS;
	case CS_READY: return RELAY_WAIT_IDLE;
	case CS_CLOSED: return RELAY_WAIT_NONE;
	case CS_TXN:
		if (body_wanted(c))
			return RELAY_WAIT_BODY;
		if (c->last_sent && c->final_due > 0)
			return RELAY_WAIT_DATA_END;
		return RELAY_WAIT_COMMAND;
	default: return RELAY_WAIT_COMMAND;
	}
}

const char *relay_client_error(const struct relay_client *c)
{
	return c->error;
}

/* ----------------------------------------------------------- reply reader */

static void reply_reset(struct relay_client *c)
{
	c->reply_text_len = 0;
	c->reply_line_len = 0;
	c->reply_raw = 0;
	c->reply_lines = 0;
	c->reply_code = 0;
	c->reply_enhanced[0] = '\0';
}

/* "C.D{1,3}.D{1,3}" then the end or a space, C the reply's class digit
 * (RFC 3463 2). Returns its length, 0 when there is none. */
static size_t enhanced_len(const char *p, size_t n, char class)
{
	if (n < 5 || p[0] != class || p[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < n && is_digit(p[i]) && i - start < 4)
			i++;
		if (i == start || i - start > 3)
			return 0;
		if (part == 0) {
			if (i >= n || p[i] != '.')
				return 0;
			i++;
		}
	}
	return (i == n || p[i] == ' ') ? i : 0;
}

static bool parse_u64(const char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit(p[i]) || v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = v;
	return true;
}

/* One EHLO/LHLO keyword line (RFC 5321 4.1.1.1), e.g. "SIZE 35882577". */
static void capability_line(struct relay_client *c, const char *p, size_t n)
{
	static const struct { const char *kw; uint32_t bit; } known[] = {
		{ "PIPELINING", RELAY_EXT_PIPELINING },
		{ "CHUNKING", RELAY_EXT_CHUNKING },
		{ "SIZE", RELAY_EXT_SIZE },
		{ "8BITMIME", RELAY_EXT_8BITMIME },
		{ "BINARYMIME", RELAY_EXT_BINARYMIME },
		{ "SMTPUTF8", RELAY_EXT_SMTPUTF8 },
		{ "DSN", RELAY_EXT_DSN },
		{ "STARTTLS", RELAY_EXT_STARTTLS },
		{ "ENHANCEDSTATUSCODES", RELAY_EXT_ENHANCEDSTATUSCODES },
	};
	for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
		if (!keyword_is(p, n, known[k].kw))
			continue;
		c->ext |= known[k].bit;
		size_t kl = strlen(known[k].kw);
		uint64_t limit;
		if (known[k].bit == RELAY_EXT_SIZE && n > kl + 1 &&
		    parse_u64(p + kl + 1, n - kl - 1, &limit))
			c->size_limit = limit;
		return;
	}
}

/* Where the line in progress is kept: right after the reply's text, with
 * one byte of room for the joining space after the first line. Every
 * earlier line left at least 4 raw bytes ("250-") out of the text, so the
 * text, that byte and the line never take more than the reply's raw bytes:
 * the bound on raw bytes is the bound on the buffer. */
static size_t line_offset(const struct relay_client *c)
{
	return c->reply_text_len + (c->reply_lines > 0 ? 1 : 0);
}

/* A complete line (LF included) is at line_offset(). Check it, then move
 * its text down onto the reply's text. Returns 1 when it was the last line
 * of the reply, 0 when more lines follow, -1 on a malformed line. */
static int reply_line_done(struct relay_client *c)
{
	char *line = c->reply + line_offset(c);
	size_t n = c->reply_line_len;
	assert(n > 0 && line[n - 1] == '\n');
	n--;
	if (n > 0 && line[n - 1] == '\r')
		n--;
	c->reply_line_len = 0;
	if (n < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2])) {
		protocol_error(c, "malformed reply line from the next hop");
		return -1;
	}
	if (n > 3 && line[3] != ' ' && line[3] != '-') {
		protocol_error(c, "malformed reply line from the next hop");
		return -1;
	}
	uint16_t code = (uint16_t)((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
	if (c->reply_lines > 0 && code != c->reply_code) {
		protocol_error(c, "reply code changed from %03u to %03u inside one reply",
			       c->reply_code, code);
		return -1;
	}
	c->reply_code = code;
	bool more = n > 3 && line[3] == '-';
	const char *text = n > 4 ? line + 4 : line + n;
	size_t tn = n > 4 ? n - 4 : 0;

	if (c->state == CS_EHLO && c->reply_lines > 0 && code / 100 == 2)
		capability_line(c, text, tn);

	size_t el = enhanced_len(text, tn, line[0]);
	if (el) {
		if (c->reply_lines == 0 && el < sizeof c->reply_enhanced) {
			memcpy(c->reply_enhanced, text, el);
			c->reply_enhanced[el] = '\0';
		}
		text += el;
		tn -= el;
		while (tn > 0 && *text == ' ') {
			text++;
			tn--;
		}
	}
	if (tn > 0) {
		char *dst = c->reply + c->reply_text_len;
		if (c->reply_text_len > 0)
			*dst++ = ' ';
		memmove(dst, text, tn);
		for (size_t i = 0; i < tn; i++)
			if ((unsigned char)dst[i] < 0x20 || (unsigned char)dst[i] > 0x7e)
				dst[i] = '?';
		c->reply_text_len = (size_t)(dst + tn - c->reply);
	}
	c->reply_lines++;
	return more ? 0 : 1;
}

/* Take bytes of the reply in progress. Returns 1 with *used at the end of
 * a complete reply, 0 when all n bytes were taken and the reply goes on,
 * -1 when the connection was closed for a protocol error. */
static int reply_read(struct relay_client *c, const char *p, size_t n, size_t *used)
{
	size_t i = 0;
	while (i < n) {
		const char *lf = memchr(p + i, '\n', n - i);
		size_t take = lf ? (size_t)(lf - (p + i)) + 1 : n - i;
		if (c->reply_raw + take > c->cfg->max_reply) {
			*used = i;
			protocol_error(c, "reply from the next hop longer than %zu bytes",
				       c->cfg->max_reply);
			return -1;
		}
		assert(line_offset(c) + c->reply_line_len + take <= c->cfg->max_reply);
		memcpy(c->reply + line_offset(c) + c->reply_line_len, p + i, take);
		c->reply_line_len += take;
		c->reply_raw += take;
		i += take;
		if (lf) {
			int r = reply_line_done(c);
			if (r != 0) {
				*used = i;
				return r;
			}
		}
	}
	*used = n;
	return 0;
}

/* ---------------------------------------------------------- command writers */

static void send_hello(struct relay_client *c, struct buf *out)
{
	c->ext = 0;
	c->size_limit = 0;
	emitf(c, out, "%s %s\r\n", c->cfg->protocol == RELAY_LMTP ? "LHLO" : "EHLO",
	      c->cfg->helo_name);
	c->state = CS_EHLO;
}

static void emit_notify(struct relay_client *c, struct buf *out, uint8_t notify)
{
	if (notify & SMTP_NOTIFY_NEVER) {
		emit_str(c, out, " NOTIFY=NEVER");
		return;
	}
	static const struct { uint8_t bit; const char *name; } names[] = {
		{ SMTP_NOTIFY_SUCCESS, "SUCCESS" },
		{ SMTP_NOTIFY_FAILURE, "FAILURE" },
		{ SMTP_NOTIFY_DELAY, "DELAY" },
	};
	const char *sep = " NOTIFY=";
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (!(notify & names[i].bit))
			continue;
		emit_str(c, out, sep);
		emit_str(c, out, names[i].name);
		sep = ",";
	}
}

/* An xtext parameter value (ENVID, ORCPT) goes out only when it cannot
 * break the command line: printable ASCII, no space, at most 500 octets
 * (RFC 3461 4.2). The spool only holds values smtp.c checked, so a bad one
 * means damage; leaving an optional parameter out is the safe side. */
static bool param_ok(const char *p, size_t n)
{
	if (!p || n == 0 || n > 500)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
			return false;
	return true;
}

static void send_mail(struct relay_client *c, struct buf *out)
{
	const struct relay_message *m = c->msg;
	emitf(c, out, "MAIL FROM:<%.*s>", (int)m->mail_from_len, m->mail_from);
	if (c->ext & RELAY_EXT_SIZE)
		emitf(c, out, " SIZE=%" PRIu64, m->size);
	if (m->body_type == SMTP_BODY_BINARYMIME)
		emit_str(c, out, " BODY=BINARYMIME");
	else if (m->body_type == SMTP_BODY_8BITMIME && (c->ext & RELAY_EXT_8BITMIME))
		emit_str(c, out, " BODY=8BITMIME");
	if (c->utf8)
		emit_str(c, out, " SMTPUTF8");
	if (c->ext & RELAY_EXT_DSN) {
		if (m->ret == SMTP_RET_FULL)
			emit_str(c, out, " RET=FULL");
		else if (m->ret == SMTP_RET_HDRS)
			emit_str(c, out, " RET=HDRS");
		if (param_ok(m->envid, m->envid_len))
			emitf(c, out, " ENVID=%.*s", (int)m->envid_len, m->envid);
	}
	emit_str(c, out, "\r\n");
	c->mail_sent = true;
}

static void send_rcpt(struct relay_client *c, struct buf *out, uint32_t i)
{
	struct relay_rcpt *r = &c->msg->rcpts[i];
	emitf(c, out, "RCPT TO:<%.*s>", (int)r->addr_len, r->addr);
	if (c->ext & RELAY_EXT_DSN) {
		if (r->notify)
			emit_notify(c, out, r->notify);
		if (param_ok(r->orcpt, r->orcpt_len))
			emitf(c, out, " ORCPT=%.*s", (int)r->orcpt_len, r->orcpt);
	}
	emit_str(c, out, "\r\n");
	r->state |= R_SENT;
	c->rcpt_outstanding++;
}

/* The next recipient not yet sent and not failed locally; nrcpt if none. */
static uint32_t next_unsent(const struct relay_client *c)
{
	uint32_t i = c->rcpt_send;
	while (i < c->msg->nrcpt && (c->msg->rcpts[i].state & (R_SENT | R_DONE)))
		i++;
	return i;
}

static bool send_next_rcpt(struct relay_client *c, struct buf *out)
{
	uint32_t i = next_unsent(c);
	c->rcpt_send = i;
	if (i >= c->msg->nrcpt)
		return false;
	send_rcpt(c, out, i);
	c->rcpt_send = i + 1;
	return true;
}

static void send_data(struct relay_client *c, struct buf *out)
{
	emit_str(c, out, "DATA\r\n");
	c->data_sent = true;
}

static uint32_t final_replies(const struct relay_client *c)
{
	return c->cfg->protocol == RELAY_LMTP ? c->rcpt_accepted : 1;
}

/* ---------------------------------------------------------- body writers */

/* The end of DATA content: the last line completed, then ".". */
static void finish_data(struct relay_client *c, struct buf *out)
{
	if (c->cr_pending) {
		emit_str(c, out, "\r\n");
		c->cr_pending = false;
		c->at_line_start = true;
	}
	if (!c->at_line_start)
		emit_str(c, out, "\r\n");
	emit_str(c, out, ".\r\n");
	c->last_sent = true;
	c->final_due = final_replies(c);
}

/* DATA content (RFC 5321 4.5.2): a '.' that starts a line is doubled, and
 * a CR or LF that is not part of a CRLF is sent as CRLF, so the next hop
 * can never see an end of data (or a smuggling-shaped one) that is not
 * ours. Line state is carried across calls, so the split does not matter. */
static void stuff(struct relay_client *c, const char *p, size_t n, struct buf *out)
{
	size_t i = 0;
	while (i < n) {
		if (c->cr_pending) {
			c->cr_pending = false;
			emit_str(c, out, "\r\n");
			c->at_line_start = true;
			if (p[i] == '\n') {
				i++;
				continue;
			}
		}
		if (p[i] == '\r') {
			c->cr_pending = true;
			i++;
			continue;
		}
		if (p[i] == '\n') {
			emit_str(c, out, "\r\n");
			c->at_line_start = true;
			i++;
			continue;
		}
		size_t j = i;
		while (j < n && p[j] != '\r' && p[j] != '\n')
			j++;
		if (c->at_line_start && p[i] == '.')
			emit_str(c, out, ".");
		emit(c, out, p + i, j - i);
		c->at_line_start = false;
		i = j;
	}
}

/* RFC 3030 2: "BDAT size [LAST]", then exactly size octets. */
static void open_chunk(struct relay_client *c, struct buf *out)
{
	uint64_t remaining = c->msg->size - c->body_given;
	uint64_t n = remaining < c->cfg->bdat_chunk ? remaining : c->cfg->bdat_chunk;
	bool last = n == remaining;
	emitf(c, out, "BDAT %" PRIu64 "%s\r\n", n, last ? " LAST" : "");
	c->chunk_left = n;
	c->chunks_sent++;
	if (last) {
		c->last_sent = true;
		c->final_due = c->txn_failed ? 0 : final_replies(c);
	}
}

/* The body may go: after 354, or for BDAT once the recipients are known.
 * An empty message needs no bytes from the caller. */
static void body_begin(struct relay_client *c, struct buf *out)
{
	c->body_phase = true;
	if (c->msg->size > 0)
		return;
	if (c->chunking)
		open_chunk(c, out);
	else
		finish_data(c, out);
}

/* ------------------------------------------------------- the transaction */

static unsigned replies_due(const struct relay_client *c)
{
	unsigned due = c->rcpt_outstanding;
	if (c->mail_sent && !c->mail_replied)
		due++;
	if (c->data_sent && !c->data_replied)
		due++;
	if (c->chunking)
		due += c->chunks_sent - c->chunks_replied;
	else if (c->last_sent)
		due += c->final_due;
	return due;
}

/* Nothing is due and nothing more will be sent: the message is over. */
static void txn_maybe_end(struct relay_client *c, struct buf *out)
{
	if (c->state != CS_TXN || replies_due(c) > 0 || body_wanted(c))
		return;
	if (c->body_phase && !c->last_sent && !c->txn_failed)
		return;
	assert(c->rcpt_open == 0);
	c->msg = NULL;
	if (c->txn_failed) {
		/* MAIL was accepted and the transaction did not complete:
		 * the next MAIL must start clean (RFC 5321 4.1.1.5). */
		emit_str(c, out, "RSET\r\n");
		c->state = CS_RSET;
	} else {
		c->state = CS_READY;
	}
}

static void mail_reply(struct relay_client *c, const struct relay_reply *r, struct buf *out)
{
	c->mail_replied = true;
	if (r->code / 100 == 2) {
		c->mail_ok = true;
		if (!c->pipelining)
			send_next_rcpt(c, out);
		return;
	}
	if (r->code / 100 == 3) {
		protocol_error(c, "%03u to MAIL", r->code);
		return;
	}
	/* Recipients already sent behind it still get replies (ignored). */
	finish_open(c, false, relay_verdict_of(r->code), r);
}

/* Which recipient the next RCPT reply answers: RCPTs are sent in order. */
static uint32_t rcpt_of_next_reply(struct relay_client *c)
{
	uint32_t i = c->rcpt_reply;
	while (i < c->msg->nrcpt && !(c->msg->rcpts[i].state & R_SENT))
		i++;
	assert(i < c->msg->nrcpt);
	c->rcpt_reply = i + 1;
	return i;
}

/* All RCPT replies are in: what comes next for this message. */
static void after_rcpts(struct relay_client *c, struct buf *out)
{
	if (!c->mail_ok)
		return;
	if (c->rcpt_accepted == 0) {
		c->txn_failed = true;
		return;
	}
	if (c->chunking)
		body_begin(c, out);
	else if (!c->data_sent)
		send_data(c, out);
}

static void rcpt_reply(struct relay_client *c, const struct relay_reply *r, struct buf *out)
{
	uint32_t i = rcpt_of_next_reply(c);
	c->rcpt_outstanding--;
	struct relay_rcpt *rc = &c->msg->rcpts[i];
	if (!(rc->state & R_DONE)) {
		switch (r->code / 100) {
		case 2:
			rc->state |= R_ACCEPTED;
			c->rcpt_accepted++;
			break;
		case 3:
			protocol_error(c, "%03u to RCPT", r->code);
			return;
		default:
			/* RFC 5321 4.5.3.1.10: 552 to RCPT means too many
			 * recipients, to be retried. */
			give_outcome(c, i, r->code == 552 ? RELAY_DEFERRED : relay_verdict_of(r->code), r);
			break;
		}
	}
	if (!c->pipelining && c->mail_ok && send_next_rcpt(c, out))
		return;
	if (c->rcpt_outstanding == 0 && next_unsent(c) >= c->msg->nrcpt)
		after_rcpts(c, out);
}

static void data_reply(struct relay_client *c, const struct relay_reply *r, struct buf *out)
{
	c->data_replied = true;
	unsigned cls = r->code / 100;
	if (cls == 3 && c->rcpt_accepted > 0) {
		body_begin(c, out);
		return;
	}
	if (cls == 3 || cls == 2) {
		protocol_error(c, "%03u to DATA%s", r->code,
			       c->rcpt_accepted ? "" : " with no recipient accepted");
		return;
	}
	finish_open(c, true, relay_verdict_of(r->code), r);
	if (c->mail_ok)
		c->txn_failed = true;
}

static void chunk_reply(struct relay_client *c, const struct relay_reply *r)
{
	c->chunks_replied++;
	unsigned cls = r->code / 100;
	if (cls == 2 || c->txn_failed)
		return;
	if (cls == 3) {
		protocol_error(c, "%03u to BDAT", r->code);
		return;
	}
	/* RFC 3030 2: a failed chunk fails the transaction; the chunks after
	 * it are answered but discarded, LAST included. */
	c->txn_failed = true;
	c->final_due = 0;
	finish_open(c, true, relay_verdict_of(r->code), r);
}

/* The reply after the end of the data: one for SMTP, one per accepted
 * recipient in RCPT order for LMTP (RFC 2033 4.2). */
static void final_reply(struct relay_client *c, const struct relay_reply *r)
{
	if (r->code / 100 == 3) {
		protocol_error(c, "%03u after the end of the data", r->code);
		return;
	}
	enum relay_verdict v = relay_verdict_of(r->code);
	if (c->cfg->protocol == RELAY_LMTP) {
		uint32_t i = c->final_cursor;
		while (i < c->msg->nrcpt && (c->msg->rcpts[i].state & (R_ACCEPTED | R_DONE)) != R_ACCEPTED)
			i++;
		assert(i < c->msg->nrcpt);
		c->final_cursor = i + 1;
		give_outcome(c, i, v, r);
	} else {
		finish_open(c, true, v, r);
	}
	c->final_due--;
	if (c->final_due == 0) {
		if (c->chunking)
			c->chunks_replied++;
		c->transactions++;
	}
}

/* A reply while DATA content is still being sent: the next hop gave up on
 * the message (a 5xx for its size, say). Its verdict stands for the
 * accepted recipients; the stream cannot be brought back in step. */
static void early_reply(struct relay_client *c, const struct relay_reply *r)
{
	unsigned cls = r->code / 100;
	if (cls != 4 && cls != 5) {
		protocol_error(c, "%03u while the message was being sent", r->code);
		return;
	}
	finish_open(c, true, relay_verdict_of(r->code), r);
	conn_close(c, r, false, NULL);
}

static void txn_reply(struct relay_client *c, const struct relay_reply *r, struct buf *out)
{
	if (!c->mail_replied) {
		mail_reply(c, r, out);
	} else if (c->rcpt_outstanding > 0) {
		rcpt_reply(c, r, out);
	} else if (c->data_sent && !c->data_replied) {
		data_reply(c, r, out);
	} else if (c->chunking && c->chunks_sent - c->chunks_replied > (c->final_due ? 1u : 0u)) {
		chunk_reply(c, r);
	} else if (c->last_sent && c->final_due > 0) {
		final_reply(c, r);
	} else if (c->body_phase && !c->chunking && !c->last_sent) {
		early_reply(c, r);
	} else {
		protocol_error(c, "unexpected %03u reply", r->code);
	}
	txn_maybe_end(c, out);
}

/* --------------------------------------------------------- the session */

/* After EHLO/LHLO/HELO succeeded. */
static void after_hello(struct relay_client *c, struct buf *out)
{
	if (c->cfg->tls != RELAY_TLS_STARTTLS || c->tls) {
		c->state = CS_READY;
		return;
	}
	if (c->esmtp && (c->ext & RELAY_EXT_STARTTLS)) {
		emit_str(c, out, "STARTTLS\r\n");
		c->state = CS_STARTTLS;
		return;
	}
	struct relay_reply r = local_reply(451, "4.7.4", "next hop does not offer STARTTLS");
	conn_close(c, &r, true, out);
}

static void hello_reply(struct relay_client *c, const struct relay_reply *r, struct buf *out)
{
	if (r->code / 100 == 2) {
		c->esmtp = c->state == CS_EHLO;
		if (!c->esmtp) {
			c->ext = 0;
			c->size_limit = 0;
		}
		after_hello(c, out);
	} else if (c->state == CS_EHLO && r->code / 100 == 5 && c->cfg->protocol == RELAY_SMTP) {
		/* RFC 5321 3.2: a server that does not know EHLO. */
		c->ext = 0;
		c->size_limit = 0;
		emitf(c, out, "HELO %s\r\n", c->cfg->helo_name);
		c->state = CS_HELO;
	} else {
		conn_close(c, r, true, out);
	}
}

static void reply_dispatch(struct relay_client *c, const struct relay_reply *r, struct buf *out)
{
	if (r->code == 421 && c->state != CS_QUIT) {
		/* The next hop is closing (RFC 5321 3.8): whatever was asked. */
		conn_close(c, r, false, out);
		return;
	}
	switch ((enum client_state)c->state) {
	case CS_GREETING:
		if (r->code == 220) {
			send_hello(c, out);
		} else if (r->code / 100 == 2 || r->code / 100 == 3) {
			protocol_error(c, "greeting %03u, not 220", r->code);
		} else {
			conn_close(c, r, true, out);
		}
		break;
	case CS_EHLO:
	case CS_HELO:
		hello_reply(c, r, out);
		break;
	case CS_STARTTLS:
		if (r->code == 220)
			c->state = CS_TLS_HANDSHAKE;
		else
			conn_close(c, r, r->code / 100 >= 4, out);
		break;
	case CS_RSET:
		if (r->code / 100 == 2)
			c->state = CS_READY;
		else
			conn_close(c, r, true, out);
		break;
	case CS_QUIT:
		c->state = CS_CLOSED;
		break;
	case CS_TXN:
		txn_reply(c, r, out);
		break;
	case CS_READY:
		protocol_error(c, "unexpected %03u reply", r->code);
		break;
	case CS_TLS_HANDSHAKE:
	case CS_CLOSED:
		assert(0 && "no reply is read in this state");
		break;
	}
}

/* A public call ends: an append that out refused ends the connection. */
static enum relay_status settle(struct relay_client *c)
{
	if (c->out_failed && c->state != CS_CLOSED) {
		struct relay_reply r = local_reply(451, "4.3.0", "output buffer limit reached");
		conn_close(c, &r, false, NULL);
	}
	return relay_client_status(c);
}

/* ------------------------------------------------------------ public API */

struct relay_client_config relay_client_config_default(const char *helo_name)
{
	return (struct relay_client_config){
		.protocol = RELAY_SMTP,
		.tls = RELAY_TLS_NONE,
		.helo_name = helo_name,
		.max_reply = RELAY_REPLY_MAX_DEFAULT,
		.bdat_chunk = RELAY_BDAT_CHUNK_DEFAULT,
		.bdat_window = RELAY_BDAT_WINDOW_DEFAULT,
	};
}

void relay_client_init(struct relay_client *c, const struct relay_client_config *cfg,
		       char *reply_buf, struct relay_hooks hooks)
{
	assert(cfg->helo_name && cfg->helo_name[0]);
	assert(cfg->max_reply >= RELAY_REPLY_MIN);
	assert(cfg->bdat_chunk >= 1 && cfg->bdat_window >= 1);
	memset(c, 0, sizeof *c);
	c->cfg = cfg;
	c->hooks = hooks;
	c->reply = reply_buf;
	c->tls = cfg->tls == RELAY_TLS_IMPLICIT;
	c->state = CS_GREETING;
}

enum relay_status relay_client_feed(struct relay_client *c, const char *data, size_t len,
				    size_t *consumed, struct buf *out)
{
	size_t pos = 0;
	while (pos < len && c->state != CS_CLOSED && c->state != CS_TLS_HANDSHAKE) {
		size_t used = 0;
		int r = reply_read(c, data + pos, len - pos, &used);
		pos += used;
		if (r <= 0)
			break;
		struct relay_reply rep = {
			.code = c->reply_code,
			.text = c->reply,
			.text_len = c->reply_text_len,
		};
		memcpy(rep.enhanced, c->reply_enhanced, sizeof rep.enhanced);
		reply_dispatch(c, &rep, out);
		reply_reset(c);
		if (c->state == CS_TLS_HANDSHAKE && pos < len) {
			/* RFC 3207 4.2 / CVE-2011-0411 class: nothing may come
			 * between the 220 and the handshake. */
			c->state = CS_STARTTLS;
			protocol_error(c, "data after the 220 to STARTTLS");
		}
	}
	*consumed = pos;
	return settle(c);
}

/* Bytes an address may hold on the wire: no control character, and
 * non-ASCII only with SMTPUTF8. */
enum addr_check { ADDR_OK = 0, ADDR_BAD, ADDR_NEEDS_UTF8 };

static enum addr_check address_check(const char *p, size_t n, bool utf8)
{
	enum addr_check res = ADDR_OK;
	if (n > 0 && !p)
		return ADDR_BAD;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];
		if (ch < 0x20 || ch == 0x7f)
			return ADDR_BAD;
		if (ch >= 0x80 && !utf8)
			res = ADDR_NEEDS_UTF8;
	}
	return res;
}

static void fail_all(struct relay_client *c, uint16_t code, const char *enhanced, const char *text)
{
	struct relay_reply r = local_reply(code, enhanced, text);
	finish_open(c, false, relay_verdict_of(code), &r);
}

/* What must fail before a byte is sent: the message as a whole. */
static bool message_acceptable(struct relay_client *c)
{
	const struct relay_message *m = c->msg;
	char text[160];
	if (c->size_limit && m->size > c->size_limit) {
		snprintf(text, sizeof text,
			 "message size %" PRIu64 " exceeds the next hop's limit of %" PRIu64, m->size,
			 c->size_limit);
		fail_all(c, 552, "5.3.4", text);
		return false;
	}
	if (m->body_type == SMTP_BODY_BINARYMIME &&
	    !(c->chunking && (c->ext & RELAY_EXT_BINARYMIME))) {
		fail_all(c, 554, "5.6.3", "binary content and the next hop does not take BINARYMIME");
		return false;
	}
	switch (address_check(m->mail_from, m->mail_from_len, c->utf8)) {
	case ADDR_OK:
		return true;
	case ADDR_BAD:
		fail_all(c, 501, "5.1.7", "sender address holds a control character");
		return false;
	case ADDR_NEEDS_UTF8:
		fail_all(c, 553, "5.6.7", "non-ASCII sender address and the next hop does not offer SMTPUTF8");
		return false;
	}
	return false;
}

/* Recipients that cannot go to this next hop fail alone. */
static void recipients_check(struct relay_client *c)
{
	for (uint32_t i = 0; i < c->msg->nrcpt; i++) {
		const struct relay_rcpt *rc = &c->msg->rcpts[i];
		struct relay_reply r;
		switch (address_check(rc->addr, rc->addr_len, c->utf8)) {
		case ADDR_OK:
			if (rc->addr_len > 0)
				continue;
			r = local_reply(501, "5.1.3", "empty recipient address");
			break;
		case ADDR_BAD:
			r = local_reply(501, "5.1.3", "recipient address holds a control character");
			break;
		case ADDR_NEEDS_UTF8:
		default:
			r = local_reply(553, "5.6.7",
					"non-ASCII recipient address and the next hop does not offer SMTPUTF8");
			break;
		}
		give_outcome(c, i, RELAY_FAILED, &r);
	}
}

static void txn_reset(struct relay_client *c, struct relay_message *msg)
{
	c->msg = msg;
	c->rcpt_send = c->rcpt_reply = c->rcpt_outstanding = 0;
	c->rcpt_accepted = 0;
	c->rcpt_open = msg->nrcpt;
	c->final_cursor = c->final_due = 0;
	c->mail_sent = c->mail_replied = c->mail_ok = false;
	c->data_sent = c->data_replied = false;
	c->txn_failed = false;
	c->body_phase = false;
	c->body_given = 0;
	c->chunk_left = 0;
	c->chunks_sent = c->chunks_replied = 0;
	c->last_sent = false;
	c->at_line_start = true;
	c->cr_pending = false;
	for (uint32_t i = 0; i < msg->nrcpt; i++)
		msg->rcpts[i].state = 0;
	c->pipelining = (c->ext & RELAY_EXT_PIPELINING) && !c->cfg->no_pipelining;
	c->chunking = (c->ext & RELAY_EXT_CHUNKING) && !c->cfg->no_chunking;
	c->utf8 = msg->smtputf8 && (c->ext & RELAY_EXT_SMTPUTF8);
}

enum relay_status relay_client_message(struct relay_client *c, struct relay_message *msg,
				       struct buf *out)
{
	assert(c->state == CS_READY);
	assert(msg && msg->nrcpt > 0 && msg->rcpts);
	if (c->state != CS_READY)
		return relay_client_status(c);
	txn_reset(c, msg);
	if (!message_acceptable(c)) {
		c->msg = NULL;
		return settle(c);
	}
	recipients_check(c);
	if (c->rcpt_open == 0) {
		c->msg = NULL;
		return settle(c);
	}
	c->state = CS_TXN;
	send_mail(c, out);
	if (c->pipelining) {
		while (send_next_rcpt(c, out))
			;
		if (!c->chunking)
			send_data(c, out);
	}
	return settle(c);
}

enum relay_status relay_client_body(struct relay_client *c, const char *data, size_t len,
				    size_t *consumed, struct buf *out)
{
	size_t pos = 0;
	while (pos < len && body_wanted(c) && !c->out_failed) {
		uint64_t left = c->msg->size - c->body_given;
		size_t take = len - pos;
		if (c->chunking) {
			if (c->chunk_left == 0)
				open_chunk(c, out);
			if (take > c->chunk_left)
				take = (size_t)c->chunk_left;
			emit(c, out, data + pos, take);
			c->chunk_left -= take;
		} else {
			if (take > left)
				take = (size_t)left;
			stuff(c, data + pos, take, out);
		}
		c->body_given += take;
		pos += take;
		if (!c->chunking && c->body_given == c->msg->size)
			finish_data(c, out);
	}
	*consumed = pos;
	if (c->state == CS_TXN)
		txn_maybe_end(c, out);
	return settle(c);
}

enum relay_status relay_client_tls_done(struct relay_client *c, struct buf *out)
{
	assert(c->state == CS_TLS_HANDSHAKE);
	if (c->state != CS_TLS_HANDSHAKE)
		return relay_client_status(c);
	c->tls = true;
	c->esmtp = false;
	send_hello(c, out); /* RFC 3207 4.2: forget what was learnt before */
	return settle(c);
}

enum relay_status relay_client_quit(struct relay_client *c, struct buf *out)
{
	assert(c->state == CS_READY);
	if (c->state != CS_READY)
		return relay_client_status(c);
	emit_str(c, out, "QUIT\r\n");
	c->state = CS_QUIT;
	return settle(c);
}

void relay_client_abort(struct relay_client *c, enum relay_abort why)
{
	if (c->state == CS_CLOSED)
		return;
	if (c->state == CS_QUIT) {
		c->state = CS_CLOSED; /* the end we asked for */
		return;
	}
	static const struct { const char *enhanced, *what; } whys[] = {
		[RELAY_ABORT_LOST] = { "4.4.2", "lost connection with the next hop" },
		[RELAY_ABORT_TIMEOUT] = { "4.4.2", "timeout with the next hop" },
		[RELAY_ABORT_TLS] = { "4.7.0", "TLS handshake with the next hop failed" },
		[RELAY_ABORT_SHUTDOWN] = { "4.3.2", "delivery interrupted by shutdown" },
	};
	if ((unsigned)why >= sizeof whys / sizeof whys[0])
		why = RELAY_ABORT_LOST;
	char text[160];
	snprintf(text, sizeof text, "%s while %s", whys[why].what, phase_name(c));
	struct relay_reply r = local_reply(451, whys[why].enhanced, text);
	conn_close(c, &r, false, NULL);
}
