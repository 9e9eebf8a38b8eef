/* fuzz_relay_client: the SMTP/LMTP client against a next hop that says
 * whatever the fuzzer wants.
 *
 * Input: byte 0 picks the configuration, byte 1 how server bytes and
 * message bytes are cut into calls, byte 2 the BDAT chunk size and window,
 * byte 3 how many messages (1-4) and recipients each (1-4), byte 4 the
 * body length L; then L body bytes (fewer when the input is short); the
 * rest is the next hop's side of the conversation. The harness plays the
 * I/O shell: it gives every message when the client is ready, the body in
 * pieces when asked, completes STARTTLS handshakes (or fails one), and
 * when the server's bytes run out the connection is lost or times out.
 *
 * Invariants (any broken one aborts):
 *   - the output, read as a server would read it, is well-formed: command
 *     lines end in CRLF and hold no other CR, LF or NUL, with a known verb;
 *     BDAT is followed by exactly its count of octets; DATA content has no
 *     bare CR or LF, every line starting with '.' is stuffed, and it ends
 *     with CRLF.CRLF; the message bytes that reach the wire, unstuffed,
 *     are the message given (bare line ends made CRLF for DATA);
 *   - nothing is sent after QUIT, and nothing at all once closed;
 *   - every recipient of every message given gets exactly one outcome, of
 *     the message in flight; delivered means a 2xx, failed a 5xx; reply
 *     texts are printable ASCII and enhanced codes well-formed;
 *   - the client never asks for body bytes past the message's size, and
 *     never stalls (a status that cannot be acted on). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay_client.h"

#define MAX_MSGS 4
#define MAX_RCPTS 4
#define MAX_CMD 2048

enum parse_mode { P_COMMAND = 0, P_DATA, P_BDAT };

struct harness {
	struct relay_client_config cfg;
	struct relay_client c;
	struct buf out;

	struct relay_message msgs[MAX_MSGS];
	struct relay_rcpt rcpts[MAX_MSGS][MAX_RCPTS];
	char addrs[MAX_MSGS][MAX_RCPTS][12];
	unsigned outcomes[MAX_MSGS][MAX_RCPTS];
	unsigned nmsg, given;           /* messages, messages given so far */
	int in_flight;                  /* message index, -1 none */
	bool body_seen[MAX_MSGS];       /* the client began sending its body */
	int mail_msg[MAX_MSGS];         /* message of the k-th MAIL on the wire */
	unsigned nmail;
	const char *body;
	size_t body_len;
	char norm[1024];                /* body with bare CR/LF made CRLF, + CRLF */
	size_t norm_len;

	/* the output parser */
	size_t parsed;                  /* out bytes checked */
	enum parse_mode mode;
	unsigned mails_parsed;          /* MAIL commands seen */
	int parse_msg;                  /* message of the current transaction */
	uint64_t bdat_left;
	bool bdat_last;                 /* the chunk being read is the LAST one */
	size_t sent_body;               /* message bytes seen on the wire */
	bool at_line_start, quit_seen, closed_checked;
};

static struct harness *H;

static bool is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

static void check_enhanced(const char *e, uint16_t code)
{
	if (!e[0])
		return;
	if (e[0] != (char)('0' + code / 100) || e[1] != '.')
		abort();
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (is_digit(e[i]))
			i++;
		if (i == start || i - start > 3)
			abort();
		if (part == 0 && e[i++] != '.')
			abort();
	}
	if (e[i] != '\0')
		abort();
}

static void on_outcome(void *ctx, const struct relay_outcome *o)
{
	struct harness *h = ctx;
	if (h->in_flight < 0)
		abort();
	struct relay_message *m = &h->msgs[h->in_flight];
	if (o->index >= m->nrcpt || o->rcpt != &m->rcpts[o->index])
		abort();
	if (++h->outcomes[h->in_flight][o->index] != 1)
		abort();
	uint16_t code = o->reply.code;
	if (code < 200 || code > 599)
		abort();
	if (o->verdict == RELAY_DELIVERED && code / 100 != 2)
		abort();
	if (o->verdict == RELAY_FAILED && code / 100 != 5)
		abort();
	check_enhanced(o->reply.enhanced, code);
	for (size_t i = 0; i < o->reply.text_len; i++)
		if ((unsigned char)o->reply.text[i] < 0x20 || (unsigned char)o->reply.text[i] > 0x7e)
			abort();
}

/* ------------------------------------------------------- output parser */

static bool has_prefix(const char *p, size_t n, const char *lit)
{
	size_t k = strlen(lit);
	return n >= k && memcmp(p, lit, k) == 0;
}

/* Is message m's transaction over as far as the harness can tell? */
static bool message_over(const struct harness *h, int m)
{
	return h->in_flight != m;
}

static void body_byte_expected(struct harness *h, const char *p, size_t n, bool normalized)
{
	const char *want = normalized ? h->norm : h->body;
	size_t want_len = normalized ? h->norm_len : h->body_len;
	if (h->sent_body + n > want_len || memcmp(want + h->sent_body, p, n) != 0)
		abort();
	h->sent_body += n;
}

/* A chunk's bytes are all out: after the LAST one, the whole message. */
static void bdat_chunk_done(struct harness *h)
{
	if (h->bdat_last && h->sent_body != h->body_len)
		abort();
	h->mode = P_COMMAND;
}

static void command_line(struct harness *h, const char *l, size_t n)
{
	/* n excludes CRLF */
	if (memchr(l, '\r', n) || memchr(l, '\n', n) || memchr(l, '\0', n) || n > MAX_CMD)
		abort();
	if (has_prefix(l, n, "QUIT") && n == 4) {
		h->quit_seen = true;
	} else if (has_prefix(l, n, "MAIL FROM:<")) {
		if (h->mails_parsed >= h->nmail)
			abort();
		h->parse_msg = h->mail_msg[h->mails_parsed++];
		h->sent_body = 0;
		h->at_line_start = true;
	} else if (has_prefix(l, n, "BDAT ")) {
		uint64_t v = 0;
		size_t i = 5;
		if (i >= n || !is_digit(l[i]))
			abort();
		while (i < n && is_digit(l[i]))
			v = v * 10 + (uint64_t)(l[i++] - '0');
		bool last = i != n;
		if (last && !(n - i == 5 && memcmp(l + i, " LAST", 5) == 0))
			abort();
		h->bdat_left = v;
		h->bdat_last = last;
		h->mode = P_BDAT;
		if (v == 0) /* "BDAT 0 LAST": an empty last chunk */
			bdat_chunk_done(h);
	} else if (!(has_prefix(l, n, "EHLO ") || has_prefix(l, n, "LHLO ") ||
		     has_prefix(l, n, "HELO ") || (has_prefix(l, n, "DATA") && n == 4) ||
		     (has_prefix(l, n, "RSET") && n == 4) || (has_prefix(l, n, "STARTTLS") && n == 8) ||
		     has_prefix(l, n, "RCPT TO:<"))) {
		abort();
	}
}

/* Check out from h->parsed as far as it can be decided now. */
static void parse_output(struct harness *h, bool final)
{
	const char *p = h->out.data;
	size_t n = h->out.len;
	while (h->parsed < n) {
		size_t at = h->parsed;
		if (h->mode == P_BDAT) {
			size_t take = n - at;
			if (take > h->bdat_left)
				take = (size_t)h->bdat_left;
			body_byte_expected(h, p + at, take, false);
			h->bdat_left -= take;
			h->parsed += take;
			if (h->bdat_left == 0)
				bdat_chunk_done(h);
			continue;
		}
		if (h->mode == P_DATA) {
			/* One line of content at a time. */
			const char *lf = memchr(p + at, '\n', n - at);
			if (!lf)
				break;
			size_t len = (size_t)(lf - (p + at)); /* without LF */
			if (len == 0 || p[at + len - 1] != '\r' || memchr(p + at, '\r', len - 1))
				abort(); /* bare LF or CR */
			len--;
			const char *l = p + at;
			h->parsed = (size_t)(lf - p) + 1;
			if (len == 1 && l[0] == '.') {
				if (h->sent_body != h->norm_len)
					abort(); /* the end came before the whole message */
				h->mode = P_COMMAND;
				continue;
			}
			if (len > 0 && l[0] == '.') {
				if (len < 2 || l[1] != '.')
					abort(); /* not stuffed */
				l++;
				len--;
			}
			body_byte_expected(h, l, len, true);
			body_byte_expected(h, "\r\n", 2, true);
			continue;
		}
		if (h->quit_seen)
			abort(); /* nothing after QUIT */
		const char *lf = memchr(p + at, '\n', n - at);
		if (!lf) {
			if (final || n - at > MAX_CMD)
				abort(); /* commands are written whole */
			break;
		}
		size_t len = (size_t)(lf - (p + at));
		if (len == 0 || p[at + len - 1] != '\r')
			abort();
		len--;
		if (len == 4 && memcmp(p + at, "DATA", 4) == 0) {
			/* Content follows only if the next hop said 354: the
			 * client's own record of that decides, once known. */
			int m = h->parse_msg;
			if (m < 0)
				abort();
			if (!h->body_seen[m] && !message_over(h, m) && !final)
				break; /* not known yet */
			h->parsed = (size_t)(lf - p) + 1;
			if (h->body_seen[m]) {
				h->mode = P_DATA;
				h->sent_body = 0;
			}
			continue;
		}
		command_line(h, p + at, len);
		h->parsed = (size_t)(lf - p) + 1;
	}
}

/* ------------------------------------------------------------- driving */

static void observe(struct harness *h)
{
	if (h->in_flight >= 0 && h->c.body_phase)
		h->body_seen[h->in_flight] = true;
	if (h->in_flight >= 0 && relay_client_status(&h->c) != RELAY_WANT_REPLY &&
	    relay_client_status(&h->c) != RELAY_WANT_BODY && relay_client_status(&h->c) != RELAY_START_TLS) {
		/* ready or closed: the message is over, every outcome given */
		for (uint32_t i = 0; i < h->msgs[h->in_flight].nrcpt; i++)
			if (h->outcomes[h->in_flight][i] != 1)
				abort();
		h->in_flight = -1;
	}
	parse_output(h, false);
}

static void make_messages(struct harness *h, uint8_t shape, uint8_t flags, const char *body,
			  size_t body_len, const uint8_t *addr_bytes, size_t addr_avail)
{
	h->nmsg = 1 + (shape & 3);
	unsigned nr = 1 + ((shape >> 2) & 3);
	h->body = body;
	h->body_len = body_len;
	for (unsigned m = 0; m < h->nmsg; m++) {
		for (unsigned r = 0; r < nr; r++) {
			char *a = h->addrs[m][r];
			size_t len;
			if ((flags & 0x80) && addr_avail >= 2) {
				/* fuzzer-chosen bytes for the first recipient */
				len = addr_bytes[0] % 8;
				if (len > addr_avail - 1)
					len = addr_avail - 1;
				memcpy(a, addr_bytes + 1, len);
			} else {
				len = 8;
				memcpy(a, "r0@y.tst", 8);
				a[1] = (char)('0' + r);
			}
			h->rcpts[m][r] = (struct relay_rcpt){
				.addr = a, .addr_len = len, .id = m * 10 + r,
				.orcpt = (r & 1) ? "rfc822;x+2By" : NULL, .orcpt_len = (r & 1) ? 12 : 0,
				.notify = (uint8_t)(r * 5 & 0x0F),
			};
		}
		h->msgs[m] = (struct relay_message){
			.mail_from = m == 1 ? "" : "s@x.tst", .mail_from_len = m == 1 ? 0 : 7,
			.size = body_len,
			.body_type = (enum smtp_body_type)((flags >> 5) % 3),
			.smtputf8 = flags & 0x40, .ret = (enum smtp_ret)(m % 3),
			.envid = (m & 1) ? "E+2B1" : NULL, .envid_len = (m & 1) ? 5 : 0,
			.rcpts = h->rcpts[m], .nrcpt = nr,
		};
	}
	/* What DATA content must look like on the wire, unstuffed. */
	size_t o = 0;
	bool line_start = true;
	for (size_t i = 0; i < body_len; i++) {
		char ch = body[i];
		if (ch == '\r' || ch == '\n') {
			h->norm[o++] = '\r';
			h->norm[o++] = '\n';
			line_start = true;
			if (ch == '\r' && i + 1 < body_len && body[i + 1] == '\n')
				i++;
			continue;
		}
		h->norm[o++] = ch;
		line_start = false;
	}
	if (!line_start) {
		h->norm[o++] = '\r';
		h->norm[o++] = '\n';
	}
	h->norm_len = o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 5)
		return 0;
	static struct harness h;
	memset(&h, 0, sizeof h);
	H = &h;
	uint8_t flags = data[0], cut = data[1], chunking = data[2], shape = data[3];
	size_t body_len = data[4];
	data += 5;
	size -= 5;
	if (body_len > size)
		body_len = size;
	const char *body = (const char *)data;
	const char *server = (const char *)data + body_len;
	size_t server_len = size - body_len;

	h.cfg = relay_client_config_default("relay.tst");
	h.cfg.protocol = (flags & 1) ? RELAY_LMTP : RELAY_SMTP;
	h.cfg.tls = (enum relay_tls)((flags >> 1) % 3);
	h.cfg.no_pipelining = flags & 0x08;
	h.cfg.no_chunking = flags & 0x10;
	h.cfg.max_reply = (shape & 0x80) ? 64 : 1024;
	h.cfg.bdat_chunk = 1 + (chunking & 0x1F);
	h.cfg.bdat_window = 1 + (chunking >> 5);
	make_messages(&h, shape, flags, body, body_len, (const uint8_t *)server, server_len);
	h.in_flight = -1;
	h.parse_msg = -1;

	char *reply = malloc(h.cfg.max_reply);
	if (!reply)
		return 0;
	buf_init(&h.out, 1 << 20);
	relay_client_init(&h.c, &h.cfg, reply, (struct relay_hooks){ &h, on_outcome });

	uint32_t lcg = cut;
	size_t spos = 0, bpos = 0;
	bool quit_called = false;
	for (unsigned steps = 0;; steps++) {
		if (steps > 100000)
			abort(); /* a stalled client */
		enum relay_status st = relay_client_status(&h.c);
		lcg = lcg * 1103515245u + 12345u;
		size_t piece = cut ? 1 + (lcg >> 16) % cut : SIZE_MAX;
		if (st == RELAY_CLOSED)
			break;
		if (st == RELAY_READY) {
			if (h.given < h.nmsg) {
				unsigned m = h.given++;
				h.in_flight = (int)m;
				bpos = 0;
				relay_client_message(&h.c, &h.msgs[m], &h.out);
				if (h.c.mail_sent && h.c.msg == &h.msgs[m])
					h.mail_msg[h.nmail++] = (int)m;
			} else {
				if (quit_called)
					abort();
				quit_called = true;
				relay_client_quit(&h.c, &h.out);
			}
		} else if (st == RELAY_WANT_BODY) {
			if (h.in_flight < 0 || bpos >= h.body_len)
				abort(); /* asked for bytes past the end */
			size_t n = h.body_len - bpos, used = 0;
			if (piece < n)
				n = piece;
			relay_client_body(&h.c, body + bpos, n, &used, &h.out);
			if (used > n)
				abort();
			bpos += used;
		} else if (st == RELAY_START_TLS) {
			if (h.c.tls || h.cfg.tls != RELAY_TLS_STARTTLS)
				abort();
			if (flags & 0x04 && (lcg & 0x100))
				relay_client_abort(&h.c, RELAY_ABORT_TLS);
			else
				relay_client_tls_done(&h.c, &h.out);
		} else {
			if (spos >= server_len) {
				relay_client_abort(&h.c, (cut & 1) ? RELAY_ABORT_TIMEOUT : RELAY_ABORT_LOST);
			} else {
				size_t n = server_len - spos, used = 0;
				if (piece < n)
					n = piece;
				enum relay_status after = relay_client_feed(&h.c, server + spos, n, &used, &h.out);
				if (used > n || (used < n && after != RELAY_CLOSED && after != RELAY_START_TLS))
					abort();
				spos += n; /* unconsumed bytes are dropped, as the shell does */
			}
		}
		observe(&h);
	}
	parse_output(&h, true);
	/* Every message given: every recipient exactly once. */
	for (unsigned m = 0; m < h.given; m++)
		for (uint32_t r = 0; r < h.msgs[m].nrcpt; r++)
			if (h.outcomes[m][r] != 1)
				abort();
	/* Closed means closed. */
	size_t len = h.out.len, used = 1;
	if (relay_client_feed(&h.c, "250 ok\r\n", 8, &used, &h.out) != RELAY_CLOSED || used != 0 ||
	    h.out.len != len)
		abort();
	buf_free(&h.out);
	free(reply);
	return 0;
}
