/* test_relay_client: scripted conversations through the SMTP/LMTP client.
 *
 * A script is what the next hop says, turn by turn (a turn is what it
 * sends after reading everything the client wrote), the messages given,
 * and what must come out: the client's whole output (commands and message
 * data, with "<TLS>" where the handshake happened), each recipient's
 * outcome, and the connection's error. Every script runs with each turn
 * fed whole, split in two at every byte, and byte by byte, and with each
 * message body given whole, split in two at every byte, and byte by byte;
 * every run must produce exactly the expected transcript. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_client.h"
#include "check.h"

#define HELO "relay.test"
#define GREET "220 mx.next ESMTP\r\n"
#define EHLO_PLAIN "250-mx.next\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PIPE "250-mx.next\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_CHUNK "250-mx.next\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
#define EHLO_ALL "250-mx.next greets you\r\n250-PIPELINING\r\n250-SIZE 1000\r\n" \
		 "250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n"
#define OK "250 2.0.0 Ok\r\n"
#define GO "354 go ahead\r\n"
#define BYE "221 2.0.0 Bye\r\n"
#define C_EHLO "EHLO " HELO "\r\n"
#define C_LHLO "LHLO " HELO "\r\n"
#define C_QUIT "QUIT\r\n"

#define MAX_TURNS 24
#define MAX_MSGS 4
#define MAX_RCPTS 4

struct msg_spec {
	const char *from;
	const char *rcpts[MAX_RCPTS];
	const char *orcpt[MAX_RCPTS];
	uint8_t notify[MAX_RCPTS];
	const char *body;
	enum smtp_body_type body_type;
	bool smtputf8;
	enum smtp_ret ret;
	const char *envid;
};

enum ending { END_QUIT = 0, END_LOST, END_TIMEOUT };

struct script {
	const char *name;
	enum relay_protocol protocol;
	enum relay_tls tls;
	uint32_t bdat_chunk;      /* 0: default */
	uint32_t bdat_window;     /* 0: default */
	size_t max_reply;         /* 0: default */
	bool no_pipelining;
	bool whole_turns_only;    /* the point is what one read holds */
	const char *turns[MAX_TURNS];
	struct msg_spec msgs[MAX_MSGS];
	enum ending ending;       /* what the driver does when the turns run out */
	const char *want_out;
	const char *want_outcomes;
	const char *want_error;
};

/* How a run cuts its input. */
struct cut {
	size_t turn_at;  /* 0: whole; SIZE_MAX: byte by byte; else split once there */
	size_t body_at;
};

struct run {
	struct buf out;
	struct buf outcomes;
	unsigned outcomes_seen;
};

static void on_outcome(void *ctx, const struct relay_outcome *o)
{
	struct run *r = ctx;
	static const char *names[] = { "delivered", "deferred", "failed" };
	r->outcomes_seen++;
	buf_printf(&r->outcomes, "%u %s %03u %s%s%.*s%s\n", o->rcpt->id, names[o->verdict],
		   o->reply.code, o->reply.enhanced, o->reply.enhanced[0] ? " " : "",
		   (int)o->reply.text_len, o->reply.text, o->reply.local ? " (local)" : "");
}

/* Pieces of [0, n) for a cut position. */
static size_t piece_len(size_t at, size_t done, size_t n)
{
	if (at == 0)
		return n - done;
	if (at == SIZE_MAX)
		return 1;
	if (done < at && at < n)
		return at - done;
	return n - done;
}

static void build_message(const struct msg_spec *ms, struct relay_message *m, struct relay_rcpt *rc,
			  unsigned msg_index)
{
	uint32_t n = 0;
	for (; n < MAX_RCPTS && ms->rcpts[n]; n++) {
		rc[n] = (struct relay_rcpt){
			.addr = ms->rcpts[n], .addr_len = strlen(ms->rcpts[n]),
			.orcpt = ms->orcpt[n], .orcpt_len = ms->orcpt[n] ? strlen(ms->orcpt[n]) : 0,
			.notify = ms->notify[n], .id = msg_index * 10 + n,
		};
	}
	*m = (struct relay_message){
		.mail_from = ms->from, .mail_from_len = strlen(ms->from),
		.size = strlen(ms->body), .body_type = ms->body_type, .smtputf8 = ms->smtputf8,
		.ret = ms->ret, .envid = ms->envid, .envid_len = ms->envid ? strlen(ms->envid) : 0,
		.rcpts = rc, .nrcpt = n,
	};
}

static unsigned count_rcpts(const struct script *sc)
{
	unsigned n = 0;
	for (unsigned i = 0; i < MAX_MSGS && sc->msgs[i].from; i++)
		for (unsigned j = 0; j < MAX_RCPTS && sc->msgs[i].rcpts[j]; j++)
			n++;
	return n;
}

static struct relay_client_config config_of(const struct script *sc)
{
	struct relay_client_config cfg = relay_client_config_default(HELO);
	cfg.protocol = sc->protocol;
	cfg.tls = sc->tls;
	if (sc->bdat_chunk)
		cfg.bdat_chunk = sc->bdat_chunk;
	if (sc->bdat_window)
		cfg.bdat_window = sc->bdat_window;
	if (sc->max_reply)
		cfg.max_reply = sc->max_reply;
	cfg.no_pipelining = sc->no_pipelining;
	return cfg;
}

/* One run of a script; false when it went wrong in a way the transcript
 * cannot show (a stuck client). */
static bool run_script(const struct script *sc, struct cut cut, struct run *r)
{
	struct relay_client_config cfg = config_of(sc);
	char *reply = malloc(cfg.max_reply);
	struct relay_client c;
	relay_client_init(&c, &cfg, reply, (struct relay_hooks){ r, on_outcome });
	struct relay_message msgs[MAX_MSGS];
	struct relay_rcpt rcpts[MAX_MSGS][MAX_RCPTS];
	unsigned next_msg = 0, turn = 0;
	size_t turn_done = 0, body_done = 0;
	bool quit_sent = false, ok = true;

	for (int steps = 0; steps < 100000; steps++) {
		enum relay_status st = relay_client_status(&c);
		if (st == RELAY_CLOSED)
			break;
		if (st == RELAY_READY) {
			if (next_msg < MAX_MSGS && sc->msgs[next_msg].from) {
				build_message(&sc->msgs[next_msg], &msgs[next_msg], rcpts[next_msg], next_msg);
				body_done = 0;
				relay_client_message(&c, &msgs[next_msg++], &r->out);
			} else if (!quit_sent) {
				quit_sent = true;
				relay_client_quit(&c, &r->out);
			} else {
				ok = false;
				break;
			}
		} else if (st == RELAY_WANT_BODY) {
			const struct relay_message *m = &msgs[next_msg - 1];
			const char *body = sc->msgs[next_msg - 1].body;
			size_t n = piece_len(cut.body_at, body_done, m->size), used = 0;
			relay_client_body(&c, body + body_done, n, &used, &r->out);
			if (used > n) {
				ok = false;
				break;
			}
			body_done += used;
		} else if (st == RELAY_START_TLS) {
			buf_append_str(&r->out, "<TLS>");
			relay_client_tls_done(&c, &r->out);
		} else {
			if (turn >= MAX_TURNS || !sc->turns[turn]) {
				relay_client_abort(&c, sc->ending == END_TIMEOUT ? RELAY_ABORT_TIMEOUT
										 : RELAY_ABORT_LOST);
				continue;
			}
			const char *t = sc->turns[turn];
			size_t tn = strlen(t);
			size_t n = piece_len(cut.turn_at, turn_done, tn), used = 0;
			enum relay_status after = relay_client_feed(&c, t + turn_done, n, &used, &r->out);
			if (used > n || (used < n && after != RELAY_CLOSED && after != RELAY_START_TLS)) {
				ok = false;
				break;
			}
			turn_done += n; /* what was not taken is dropped, as the shell does */
			if (turn_done >= tn) {
				turn++;
				turn_done = 0;
			}
		}
	}
	/* Nothing is said once closed. */
	size_t len = r->out.len, used = 1;
	if (relay_client_feed(&c, "250 ok\r\n", 8, &used, &r->out) != RELAY_CLOSED || used != 0 ||
	    r->out.len != len)
		ok = false;
	buf_printf(&r->outcomes, "error: %s\n", relay_client_error(&c));
	free(reply);
	return ok;
}

static void show_diff(const char *what, const char *cut, const struct buf *got, const char *want)
{
	fprintf(stderr, "  %s (%s):\n    got:  \"", what, cut);
	for (size_t i = 0; i < got->len; i++) {
		char ch = got->data[i];
		if (ch == '\r')
			fputs("\\r", stderr);
		else if (ch == '\n')
			fputs("\\n", stderr);
		else
			fputc(ch, stderr);
	}
	fprintf(stderr, "\"\n    want: \"");
	for (const char *p = want; *p; p++) {
		if (*p == '\r')
			fputs("\\r", stderr);
		else if (*p == '\n')
			fputs("\\n", stderr);
		else
			fputc(*p, stderr);
	}
	fprintf(stderr, "\"\n");
}

static bool same(const struct buf *b, const char *want)
{
	return b->len == strlen(want) && (b->len == 0 || memcmp(b->data, want, b->len) == 0);
}

static void check_one(const struct script *sc, struct cut cut, const char *label, const char *want_oc)
{
	struct run r = { 0 };
	buf_init(&r.out, 0);
	buf_init(&r.outcomes, 0);
	bool ok = run_script(sc, cut, &r);
	bool good = ok && same(&r.out, sc->want_out) && same(&r.outcomes, want_oc) &&
		    r.outcomes_seen == count_rcpts(sc);
	if (!good) {
		fprintf(stderr, "%s: run %s differs%s (outcomes %u of %u)\n", sc->name, label,
			ok ? "" : " (client stuck or overran)", r.outcomes_seen, count_rcpts(sc));
		show_diff("output", label, &r.out, sc->want_out);
		show_diff("outcomes", label, &r.outcomes, want_oc);
	}
	CHECK(good);
	buf_free(&r.out);
	buf_free(&r.outcomes);
}

static size_t longest_turn(const struct script *sc)
{
	size_t m = 0;
	for (unsigned i = 0; i < MAX_TURNS && sc->turns[i]; i++)
		if (strlen(sc->turns[i]) > m)
			m = strlen(sc->turns[i]);
	return m;
}

static size_t longest_body(const struct script *sc)
{
	size_t m = 0;
	for (unsigned i = 0; i < MAX_MSGS && sc->msgs[i].from; i++)
		if (strlen(sc->msgs[i].body) > m)
			m = strlen(sc->msgs[i].body);
	return m;
}

static void run_all_cuts(const struct script *sc)
{
	char want_oc[8192];
	snprintf(want_oc, sizeof want_oc, "%serror: %s\n", sc->want_outcomes, sc->want_error);
	int before = check_failed;
	check_one(sc, (struct cut){ 0, 0 }, "whole", want_oc);
	if (sc->whole_turns_only) {
		check_one(sc, (struct cut){ 0, SIZE_MAX }, "bodies byte by byte", want_oc);
		return;
	}
	check_one(sc, (struct cut){ SIZE_MAX, SIZE_MAX }, "byte by byte", want_oc);
	if (check_failed != before)
		return; /* one report per script is enough */
	char label[64];
	for (size_t at = 1; at < longest_turn(sc) && check_failed == before; at++) {
		snprintf(label, sizeof label, "turns split at %zu", at);
		check_one(sc, (struct cut){ at, 0 }, label, want_oc);
	}
	for (size_t at = 1; at < longest_body(sc) && check_failed == before; at++) {
		snprintf(label, sizeof label, "bodies split at %zu", at);
		check_one(sc, (struct cut){ 0, at }, label, want_oc);
	}
}

/* ----------------------------------------------------------- the scripts */

static const struct script scripts[] = {
	{
		.name = "smtp without extensions, dot-stuffing",
		.no_pipelining = true,
		.turns = { GREET, EHLO_PLAIN, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", GO,
			   "250 2.0.0 Ok: queued as X\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" },
			    .body = "Subject: t\r\n\r\n.\r\n..two\r\nmid.dle\r\n.\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
			    "Subject: t\r\n\r\n..\r\n...two\r\nmid.dle\r\n..\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok: queued as X\n",
		.want_error = "",
	},
	{
		.name = "DATA: bare CR and LF become CRLF, a last line is completed",
		.turns = { GREET, EHLO_PLAIN, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" },
			    .body = "a\nb\rc\r\n.d\r\r\n\n.\n.\r.\r\n.end" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
			    "a\r\nb\r\nc\r\n..d\r\n\r\n\r\n..\r\n..\r\n..\r\n..end\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "DATA: a body whose end looks like an end of data",
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" },
			    .body = "x\r\n.\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
			    "x\r\n..\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "DATA: an empty message",
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "", .rcpts = { "b@y.test" }, .body = "" } },
		.want_out = C_EHLO "MAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "pipelining: one write, a recipient refused",
		.turns = { GREET, EHLO_PIPE,
			   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <c@y.test>: no such user\r\n"
			   "250 2.1.5 Ok\r\n" GO,
			   "250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test", "d@y.test" },
			    .body = "hi\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
			    "RCPT TO:<d@y.test>\r\nDATA\r\nhi\r\n.\r\n" C_QUIT,
		.want_outcomes = "1 failed 550 5.1.1 <c@y.test>: no such user\n"
				 "0 delivered 250 2.0.0 queued\n2 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "pipelining switched off by the config",
		.no_pipelining = true,
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "250 2.1.5 Ok\r\n",
			   GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test" }, .body = "hi\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
			    "DATA\r\nhi\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n1 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "every parameter when offered: SIZE, BODY, SMTPUTF8, DSN",
		.turns = { GREET, EHLO_ALL, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test" },
			    .orcpt = { "rfc822;b+40y.test", NULL },
			    .notify = { SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE, SMTP_NOTIFY_NEVER },
			    .body = "8bit\r\n", .body_type = SMTP_BODY_8BITMIME, .smtputf8 = true,
			    .ret = SMTP_RET_HDRS, .envid = "QQ+2Bx" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test> SIZE=6 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bx\r\n"
			    "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40y.test\r\n"
			    "RCPT TO:<c@y.test> NOTIFY=NEVER\r\nDATA\r\n8bit\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n1 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "no parameter the next hop did not offer",
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .orcpt = { "rfc822;b@y.test" },
			    .notify = { SMTP_NOTIFY_DELAY }, .body = "8bit\r\n",
			    .body_type = SMTP_BODY_8BITMIME, .smtputf8 = true, .ret = SMTP_RET_FULL,
			    .envid = "E1" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n8bit\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "SIZE: a message over the next hop's limit fails unsent, the next goes",
		.turns = { GREET, EHLO_ALL, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test" },
			    .body = "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "0123456789012345678901234567890123456789012345678901234567890123456789"
				    "012345678901234567890" },
			  { .from = "a@x.test", .rcpts = { "d@y.test" }, .body = "small\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test> SIZE=7\r\nRCPT TO:<d@y.test>\r\nDATA\r\nsmall\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 failed 552 5.3.4 message size 1001 exceeds the next hop's limit of 1000 (local)\n"
				 "1 failed 552 5.3.4 message size 1001 exceeds the next hop's limit of 1000 (local)\n"
				 "10 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "BDAT: chunks at their edges (10 + 10 + 8 LAST), pipelined",
		.bdat_chunk = 10,
		.turns = { GREET, EHLO_CHUNK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
			   "250 2.0.0 10 octets\r\n250 2.0.0 10 octets\r\n250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" },
			    .body = "0123456789.\r\n.\r\n\r\nabcdefghij" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			    "BDAT 10\r\n0123456789BDAT 10\r\n.\r\n.\r\n\r\nabBDAT 8 LAST\r\ncdefghij" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "BDAT: exactly one chunk",
		.bdat_chunk = 10,
		.turns = { GREET, EHLO_CHUNK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "0123456789" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 10 LAST\r\n0123456789" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "BDAT: one byte over a chunk",
		.bdat_chunk = 10,
		.turns = { GREET, EHLO_CHUNK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
			   "250 2.0.0 10\r\n250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "0123456789X" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			    "BDAT 10\r\n0123456789BDAT 1 LAST\r\nX" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "BDAT: an empty message is BDAT 0 LAST",
		.turns = { GREET, EHLO_CHUNK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 0 LAST\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "BDAT: chunks of one byte, window of two",
		.bdat_chunk = 1,
		.bdat_window = 2,
		.turns = { GREET, EHLO_CHUNK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
			   "250 2.0.0 1\r\n", "250 2.0.0 1\r\n", "250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "abc" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			    "BDAT 1\r\naBDAT 1\r\nbBDAT 1 LAST\r\nc" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "BDAT without pipelining: one chunk at a time",
		.bdat_chunk = 4,
		.turns = { GREET, "250-mx.next\r\n250 CHUNKING\r\n", "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n",
			   "250 2.0.0 4\r\n", "250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "abcdefg" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			    "BDAT 4\r\nabcdBDAT 3 LAST\r\nefg" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "BDAT: a refused chunk fails the message, RSET, the next one goes",
		.bdat_chunk = 2,
		.turns = { GREET, EHLO_CHUNK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
			   "554 5.6.0 content refused\r\n554 5.5.0 no transaction\r\n554 5.5.0 no transaction\r\n",
			   OK, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.0.0 queued\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "abcdef" },
			  { .from = "a@x.test", .rcpts = { "c@y.test" }, .body = "z" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			    "BDAT 2\r\nabBDAT 2\r\ncdBDAT 2 LAST\r\nef" "RSET\r\n"
			    "MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nBDAT 1 LAST\r\nz" C_QUIT,
		.want_outcomes = "0 failed 554 5.6.0 content refused\n10 delivered 250 2.0.0 queued\n",
		.want_error = "",
	},
	{
		.name = "LMTP: per-recipient replies after DATA",
		.protocol = RELAY_LMTP,
		.turns = { "220 store LMTP ready\r\n", "250-store\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
			   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <c@y.test> User doesn't exist\r\n"
			   "250 2.1.5 Ok\r\n" GO,
			   "250 2.0.0 <b@y.test> Saved\r\n452 4.2.2 <d@y.test> Quota exceeded (mailbox for user is full)\r\n",
			   BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test", "d@y.test" },
			    .body = "m\r\n" } },
		.want_out = C_LHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
			    "RCPT TO:<d@y.test>\r\nDATA\r\nm\r\n.\r\n" C_QUIT,
		.want_outcomes = "1 failed 550 5.1.1 <c@y.test> User doesn't exist\n"
				 "0 delivered 250 2.0.0 <b@y.test> Saved\n"
				 "2 deferred 452 4.2.2 <d@y.test> Quota exceeded (mailbox for user is full)\n",
		.want_error = "",
	},
	{
		.name = "LMTP with BDAT: per-recipient replies after LAST",
		.protocol = RELAY_LMTP,
		.bdat_chunk = 3,
		.turns = { "220 store LMTP\r\n", "250-store\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
			   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n",
			   "250 2.0.0 3 octets\r\n550 5.2.0 <b@y.test> sieve said no\r\n250 2.0.0 <c@y.test> Saved\r\n",
			   BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test" }, .body = "hello" } },
		.want_out = C_LHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
			    "BDAT 3\r\nhelBDAT 2 LAST\r\nlo" C_QUIT,
		.want_outcomes = "0 failed 550 5.2.0 <b@y.test> sieve said no\n"
				 "1 delivered 250 2.0.0 <c@y.test> Saved\n",
		.want_error = "",
	},
	{
		.name = "LMTP: a 5xx to LHLO ends the connection (no HELO in LMTP)",
		.protocol = RELAY_LMTP,
		.turns = { "220 store\r\n", "500 5.5.1 what\r\n" },
		.want_out = C_LHLO C_QUIT,
		.want_outcomes = "",
		.want_error = "500 5.5.1 what (waiting for the reply to LHLO)",
	},
	{
		.name = "EHLO refused: HELO, then plain SMTP",
		.turns = { GREET, "502 5.5.2 Error: command not recognized\r\n", "250 mx.next\r\n",
			   "250 Ok\r\n", "250 Ok\r\n", GO, "250 Ok\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n",
			    .body_type = SMTP_BODY_8BITMIME, .ret = SMTP_RET_FULL, .envid = "E" } },
		.want_out = C_EHLO "HELO " HELO "\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			    "DATA\r\nx\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 Ok\n",
		.want_error = "",
	},
	{
		.name = "EHLO and HELO refused",
		.turns = { GREET, "502 5.5.2 no EHLO\r\n", "550 5.7.1 go away\r\n" },
		.want_out = C_EHLO "HELO " HELO "\r\n" C_QUIT,
		.want_outcomes = "",
		.want_error = "550 5.7.1 go away (waiting for the reply to HELO)",
	},
	{
		.name = "greeting 554: QUIT",
		.turns = { "554 5.3.2 no service\r\n" },
		.want_out = C_QUIT,
		.want_outcomes = "",
		.want_error = "554 5.3.2 no service (waiting for the greeting)",
	},
	{
		.name = "421 in the middle of the transaction defers the rest",
		.turns = { GREET, EHLO_PIPE,
			   "250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n" },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test", "d@y.test" },
			    .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
			    "RCPT TO:<d@y.test>\r\nDATA\r\n",
		.want_outcomes = "0 failed 550 5.1.1 unknown\n1 deferred 421 4.3.2 shutting down\n"
				 "2 deferred 421 4.3.2 shutting down\n",
		.want_error = "421 4.3.2 shutting down (waiting for the reply to RCPT)",
	},
	{
		.name = "421 after the data",
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, "421 4.4.2 timeout\r\n" },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n",
		.want_outcomes = "0 deferred 421 4.4.2 timeout\n",
		.want_error = "421 4.4.2 timeout (waiting for the reply to the end of data)",
	},
	{
		.name = "connection lost after the data: deferred (at least once)",
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n",
		.want_outcomes = "0 deferred 451 4.4.2 lost connection with the next hop while waiting for "
				 "the reply to the end of data (local)\n",
		.want_error = "451 4.4.2 lost connection with the next hop while waiting for the reply to "
			      "the end of data",
	},
	{
		.name = "timeout waiting for RCPT",
		.no_pipelining = true,
		.ending = END_TIMEOUT,
		.turns = { GREET, EHLO_PLAIN, "250 2.1.0 Ok\r\n" },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n",
		.want_outcomes = "0 deferred 451 4.4.2 timeout with the next hop while waiting for the reply "
				 "to RCPT (local)\n",
		.want_error = "451 4.4.2 timeout with the next hop while waiting for the reply to RCPT",
	},
	{
		.name = "multi-line replies: text joined, enhanced codes taken off",
		.turns = { "220-mx.next ESMTP\r\n220-second line\r\n220 third\r\n", EHLO_PIPE,
			   "250 2.1.0 Ok\r\n550-5.7.1 Service unavailable;\r\n550-5.7.1 client host\r\n"
			   "550 5.7.1 blocked\r\n" "554 5.5.1 no valid recipients\r\n",
			   OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nRSET\r\n" C_QUIT,
		.want_outcomes = "0 failed 550 5.7.1 Service unavailable; client host blocked\n",
		.want_error = "",
	},
	{
		.name = "bare LF line ends and a code alone on a line",
		.turns = { "220 mx\n", "250-mx\n250 PIPELINING\n", "250\n250 2.1.5\n354\n", "250 ok\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 ok\n",
		.want_error = "",
	},
	{
		.name = "a reply whose code changes between lines",
		.turns = { "220-mx\r\n250 mx\r\n" },
		.want_out = "",
		.want_outcomes = "",
		.want_error = "451 4.5.0 reply code changed from 220 to 250 inside one reply while waiting "
			      "for the greeting",
	},
	{
		.name = "a reply one byte over the length bound",
		.max_reply = 64,
		.turns = { GREET, "250-mx.next12345678\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n" },
		.want_out = C_EHLO,
		.want_outcomes = "",
		.want_error = "451 4.5.0 reply from the next hop longer than 64 bytes while waiting for the "
			      "reply to EHLO",
	},
	{
		.name = "a reply at the length bound exactly",
		.max_reply = 64,
		.turns = { GREET, "250-mx.next1234567\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n",
			   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.0.0 Ok\r\n", BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 1 LAST\r\nx" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "a garbage line",
		.turns = { "hello there\r\n" },
		.want_out = "",
		.want_outcomes = "",
		.want_error = "451 4.5.0 malformed reply line from the next hop while waiting for the greeting",
	},
	{
		.name = "several messages: RSET only after the one that failed part-way",
		.no_pipelining = true,
		.turns = { GREET, EHLO_PLAIN,
			   /* 1: delivered */
			   "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", GO, "250 2.0.0 one\r\n",
			   /* 2: DATA refused after the recipient was taken */
			   "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "451 4.3.0 try later\r\n", OK,
			   /* 3: every recipient refused */
			   "250 2.1.0 Ok\r\n", "550 5.1.1 no\r\n", OK,
			   /* 4: the sender refused: no RSET needed */
			   "553 5.1.8 bad sender\r\n",
			   BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "1\r\n" },
			  { .from = "a@x.test", .rcpts = { "c@y.test" }, .body = "2\r\n" },
			  { .from = "a@x.test", .rcpts = { "d@y.test" }, .body = "3\r\n" },
			  { .from = "e@x.test", .rcpts = { "f@y.test", "g@y.test" }, .body = "4\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n1\r\n.\r\n"
			    "MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nRSET\r\n"
			    "MAIL FROM:<a@x.test>\r\nRCPT TO:<d@y.test>\r\nRSET\r\n"
			    "MAIL FROM:<e@x.test>\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 one\n10 deferred 451 4.3.0 try later\n"
				 "20 failed 550 5.1.1 no\n30 failed 553 5.1.8 bad sender\n"
				 "31 failed 553 5.1.8 bad sender\n",
		.want_error = "",
	},
	{
		.name = "pipelined MAIL refused: RCPT and DATA replies read, no RSET",
		.turns = { GREET, EHLO_PIPE,
			   "451 4.3.0 sender check failed\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
			   BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" C_QUIT,
		.want_outcomes = "0 deferred 451 4.3.0 sender check failed\n",
		.want_error = "",
	},
	{
		.name = "552 to RCPT means too many recipients: deferred",
		.turns = { GREET, EHLO_PIPE,
			   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n552 5.5.3 too many recipients\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test", "c@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
			    "DATA\r\nx\r\n.\r\n" C_QUIT,
		.want_outcomes = "1 deferred 552 5.5.3 too many recipients\n0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "STARTTLS, then EHLO again and the message",
		.tls = RELAY_TLS_STARTTLS,
		.turns = { GREET, "250-mx.next\r\n250-STARTTLS\r\n250 PIPELINING\r\n", "220 2.0.0 Ready\r\n",
			   "250-mx.next\r\n250 PIPELINING\r\n", "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "x\r\n" } },
		.want_out = C_EHLO "STARTTLS\r\n<TLS>" C_EHLO
			    "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
	{
		.name = "STARTTLS required and not offered",
		.tls = RELAY_TLS_STARTTLS,
		.turns = { GREET, EHLO_PIPE },
		.want_out = C_EHLO C_QUIT,
		.want_outcomes = "",
		.want_error = "451 4.7.4 next hop does not offer STARTTLS",
	},
	{
		.name = "STARTTLS: bytes behind the 220 are an injection",
		.tls = RELAY_TLS_STARTTLS,
		.whole_turns_only = true,
		.turns = { GREET, "250-mx.next\r\n250 STARTTLS\r\n", "220 2.0.0 Ready\r\n250 injected\r\n" },
		.want_out = C_EHLO "STARTTLS\r\n",
		.want_outcomes = "",
		.want_error = "451 4.5.0 data after the 220 to STARTTLS while waiting for the reply to STARTTLS",
	},
	{
		.name = "STARTTLS refused",
		.tls = RELAY_TLS_STARTTLS,
		.turns = { GREET, "250-mx.next\r\n250 STARTTLS\r\n", "454 4.7.0 TLS not available\r\n" },
		.want_out = C_EHLO "STARTTLS\r\n" C_QUIT,
		.want_outcomes = "",
		.want_error = "454 4.7.0 TLS not available (waiting for the reply to STARTTLS)",
	},
	{
		.name = "implicit TLS: no STARTTLS even when offered",
		.tls = RELAY_TLS_IMPLICIT,
		.turns = { GREET, "250-mx.next\r\n250 STARTTLS\r\n", BYE },
		.want_out = C_EHLO C_QUIT,
		.want_outcomes = "",
		.want_error = "",
	},
	{
		.name = "BINARYMIME without CHUNKING fails unsent; non-ASCII recipient without SMTPUTF8",
		.turns = { GREET, EHLO_PIPE, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" GO, OK, BYE },
		.msgs = { { .from = "a@x.test", .rcpts = { "b@y.test" }, .body = "\0x",
			    .body_type = SMTP_BODY_BINARYMIME },
			  { .from = "a@x.test", .rcpts = { "j\xc3\xb6rg@y.test", "k@y.test" }, .body = "x\r\n",
			    .smtputf8 = true } },
		.want_out = C_EHLO "MAIL FROM:<a@x.test>\r\nRCPT TO:<k@y.test>\r\nDATA\r\nx\r\n.\r\n" C_QUIT,
		.want_outcomes = "0 failed 554 5.6.3 binary content and the next hop does not take BINARYMIME (local)\n"
				 "10 failed 553 5.6.7 non-ASCII recipient address and the next hop does not offer "
				 "SMTPUTF8 (local)\n11 delivered 250 2.0.0 Ok\n",
		.want_error = "",
	},
};

/* ------------------------------------------------ hand-driven situations */

struct hand {
	struct relay_client_config cfg;
	char reply[4096];
	struct relay_client c;
	struct run r;
	struct relay_rcpt rc[2];
	struct relay_message m;
};

static void hand_start(struct hand *h, const char *ehlo, const char *body_text)
{
	memset(h, 0, sizeof *h);
	h->cfg = relay_client_config_default(HELO);
	buf_init(&h->r.out, 0);
	buf_init(&h->r.outcomes, 0);
	relay_client_init(&h->c, &h->cfg, h->reply, (struct relay_hooks){ &h->r, on_outcome });
	size_t used;
	relay_client_feed(&h->c, GREET, strlen(GREET), &used, &h->r.out);
	relay_client_feed(&h->c, ehlo, strlen(ehlo), &used, &h->r.out);
	h->rc[0] = (struct relay_rcpt){ .addr = "b@y.test", .addr_len = 8, .id = 0 };
	h->rc[1] = (struct relay_rcpt){ .addr = "c@y.test", .addr_len = 8, .id = 1 };
	h->m = (struct relay_message){ .mail_from = "a@x.test", .mail_from_len = 8,
				       .size = strlen(body_text), .rcpts = h->rc, .nrcpt = 2 };
	buf_reset(&h->r.out);
}

static enum relay_status hand_feed(struct hand *h, const char *s)
{
	size_t used;
	return relay_client_feed(&h->c, s, strlen(s), &used, &h->r.out);
}

static void hand_end(struct hand *h)
{
	buf_free(&h->r.out);
	buf_free(&h->r.outcomes);
}

/* A 5xx while the message data is still going: its verdict for the
 * accepted recipients, then the connection ends without another word. */
static void test_early_reply(void)
{
	struct hand h;
	const char *body = "line one\r\nline two\r\n";
	hand_start(&h, EHLO_PIPE, body);
	CHECK(relay_client_message(&h.c, &h.m, &h.r.out) == RELAY_WANT_REPLY);
	CHECK(hand_feed(&h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n" GO) == RELAY_WANT_BODY);
	CHECK(relay_client_waiting_for(&h.c) == RELAY_WAIT_BODY);
	size_t used;
	CHECK(relay_client_body(&h.c, body, 5, &used, &h.r.out) == RELAY_WANT_BODY && used == 5);
	CHECK(hand_feed(&h, "552 5.3.4 Message size exceeds fixed limit\r\n") == RELAY_CLOSED);
	CHECK_STR_EQ(h.r.outcomes.data ? (buf_append(&h.r.outcomes, "", 1), h.r.outcomes.data) : "",
		     "1 failed 550 5.1.1 no\n0 failed 552 5.3.4 Message size exceeds fixed limit\n");
	size_t len = h.r.out.len;
	CHECK(relay_client_body(&h.c, body + 5, 3, &used, &h.r.out) == RELAY_CLOSED && used == 0);
	CHECK(h.r.out.len == len);
	hand_end(&h);
}

/* A lost connection while the body is going defers the accepted
 * recipients; the refused one keeps its failure. */
static void test_lost_in_body(void)
{
	struct hand h;
	hand_start(&h, EHLO_CHUNK, "0123456789");
	h.cfg.bdat_chunk = 4;
	relay_client_message(&h.c, &h.m, &h.r.out);
	CHECK(hand_feed(&h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.1 busy\r\n") == RELAY_WANT_BODY);
	size_t used;
	CHECK(relay_client_body(&h.c, "01234", 5, &used, &h.r.out) == RELAY_WANT_BODY && used == 5);
	relay_client_abort(&h.c, RELAY_ABORT_LOST);
	CHECK(relay_client_status(&h.c) == RELAY_CLOSED);
	buf_append(&h.r.outcomes, "", 1);
	CHECK_STR_EQ(h.r.outcomes.data,
		     "1 deferred 450 4.2.1 busy\n"
		     "0 deferred 451 4.4.2 lost connection with the next hop while sending the message (local)\n");
	hand_end(&h);
}

/* A refused BDAT chunk in the middle of a chunk: the chunk is completed
 * (the byte count was promised), nothing after it, then RSET. */
static void test_chunk_refused_mid_chunk(void)
{
	struct hand h;
	hand_start(&h, EHLO_CHUNK, "0123456789");
	h.cfg.bdat_chunk = 4;
	h.m.nrcpt = 1;
	relay_client_message(&h.c, &h.m, &h.r.out);
	CHECK(hand_feed(&h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n") == RELAY_WANT_BODY);
	size_t used;
	CHECK(relay_client_body(&h.c, "012345", 6, &used, &h.r.out) == RELAY_WANT_BODY && used == 6);
	CHECK(hand_feed(&h, "552 5.3.4 too big\r\n") == RELAY_WANT_BODY);
	CHECK(relay_client_body(&h.c, "6789", 4, &used, &h.r.out) == RELAY_WANT_REPLY && used == 2);
	CHECK(hand_feed(&h, "503 5.5.1 no\r\n") == RELAY_WANT_REPLY);
	CHECK(hand_feed(&h, OK) == RELAY_READY);
	buf_append(&h.r.out, "", 1);
	CHECK_STR_EQ(h.r.out.data, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
				   "BDAT 4\r\n0123BDAT 4\r\n4567RSET\r\n");
	hand_end(&h);
}

/* Deadlines asked for in each phase. */
static void test_waiting_for(void)
{
	struct hand h;
	hand_start(&h, EHLO_PIPE, "x");
	CHECK(relay_client_waiting_for(&h.c) == RELAY_WAIT_IDLE);
	relay_client_message(&h.c, &h.m, &h.r.out);
	CHECK(relay_client_waiting_for(&h.c) == RELAY_WAIT_COMMAND);
	hand_feed(&h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n" GO);
	CHECK(relay_client_waiting_for(&h.c) == RELAY_WAIT_BODY);
	size_t used;
	relay_client_body(&h.c, "x", 1, &used, &h.r.out);
	CHECK(relay_client_waiting_for(&h.c) == RELAY_WAIT_DATA_END);
	CHECK(hand_feed(&h, OK) == RELAY_READY);
	CHECK(h.c.transactions == 1);
	relay_client_quit(&h.c, &h.r.out);
	relay_client_abort(&h.c, RELAY_ABORT_LOST);
	CHECK(relay_client_waiting_for(&h.c) == RELAY_WAIT_NONE);
	CHECK_STR_EQ(relay_client_error(&h.c), "");
	hand_end(&h);

	struct relay_client_config cfg = relay_client_config_default(HELO);
	char reply[RELAY_REPLY_MAX_DEFAULT];
	struct relay_client c;
	relay_client_init(&c, &cfg, reply, (struct relay_hooks){ 0 });
	CHECK(relay_client_waiting_for(&c) == RELAY_WAIT_GREETING);
	CHECK(relay_client_status(&c) == RELAY_WANT_REPLY);
}

/* The output buffer's limit ends the connection, deferring what is open. */
static void test_out_limit(void)
{
	struct hand h;
	hand_start(&h, EHLO_PIPE, "x");
	struct buf small;
	buf_init(&small, 30);
	CHECK(relay_client_message(&h.c, &h.m, &small) == RELAY_CLOSED);
	buf_append(&h.r.outcomes, "", 1);
	CHECK_STR_EQ(h.r.outcomes.data, "0 deferred 451 4.3.0 output buffer limit reached (local)\n"
					"1 deferred 451 4.3.0 output buffer limit reached (local)\n");
	buf_free(&small);
	hand_end(&h);
}

/* A control character in an address never reaches the wire. */
static void test_bad_addresses(void)
{
	struct hand h;
	hand_start(&h, EHLO_PIPE, "x");
	h.rc[1].addr = "c@y\r\nDATA";
	h.rc[1].addr_len = 11;
	relay_client_message(&h.c, &h.m, &h.r.out);
	buf_append(&h.r.out, "", 1);
	CHECK_STR_EQ(h.r.out.data, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
	buf_append(&h.r.outcomes, "", 1);
	CHECK_STR_EQ(h.r.outcomes.data,
		     "1 failed 501 5.1.3 recipient address holds a control character (local)\n");
	hand_end(&h);

	hand_start(&h, EHLO_PIPE, "x");
	h.m.mail_from = "a\n@x";
	h.m.mail_from_len = 4;
	CHECK(relay_client_message(&h.c, &h.m, &h.r.out) == RELAY_READY);
	CHECK(h.r.out.len == 0);
	hand_end(&h);
}

/* Nothing is due while idle: a 421 is the next hop going away, anything
 * else is out of step. Neither gets a QUIT. */
static void test_idle_replies(void)
{
	struct hand h;
	hand_start(&h, EHLO_PIPE, "x");
	CHECK(hand_feed(&h, "421 4.4.2 idle too long\r\n") == RELAY_CLOSED);
	CHECK_STR_EQ(relay_client_error(&h.c), "421 4.4.2 idle too long (idle)");
	CHECK(h.c.error_code == 421);
	CHECK(h.r.out.len == 0);
	hand_end(&h);

	hand_start(&h, EHLO_PIPE, "x");
	CHECK(hand_feed(&h, "250 2.0.0 surprise\r\n") == RELAY_CLOSED);
	CHECK_STR_EQ(relay_client_error(&h.c),
		     "451 4.5.0 unexpected 250 reply while idle");
	CHECK(h.r.out.len == 0);
	hand_end(&h);
}

/* ------------------------------------------- against mxd's own server */

/* The client and engine/smtp.c, mxd's real SMTP server state machine,
 * wired back to back: whatever the extensions used, what the server takes
 * in must be exactly what the client was given. */
struct interop {
	struct smtp_config scfg;
	struct smtp_peer peer;
	struct smtp_session s;
	char line[1000];
	struct buf s_out, c_out;
	struct relay_client_config ccfg;
	char reply[4096];
	struct relay_client c;
	struct run r;
	struct buf got;        /* what the server received, message by message */
};

static void log_received(struct interop *io)
{
	const struct smtp_envelope *e = &io->s.env;
	buf_printf(&io->got, "from=<%s> size=%" PRIu64 " body=%d utf8=%d ret=%d envid=%s chunking=%d\n",
		   e->mail_from, e->size_param, e->body_type, e->smtputf8, e->ret,
		   e->envid ? e->envid : "-", e->chunking);
	for (uint32_t i = 0; i < e->nrcpt; i++)
		buf_printf(&io->got, " to=<%s> notify=%u orcpt=%s\n", e->rcpts[i].addr, e->rcpts[i].notify,
			   e->rcpts[i].orcpt ? e->rcpts[i].orcpt : "-");
	buf_append_str(&io->got, " [");
	buf_append(&io->got, io->s.body.data, io->s.body.len);
	buf_append_str(&io->got, "]\n");
}

static void server_take(struct interop *io)
{
	size_t pos = 0;
	while (pos < io->c_out.len) {
		size_t used = 0;
		enum smtp_status st = smtp_feed(&io->s, io->c_out.data + pos, io->c_out.len - pos, &used,
						&io->s_out);
		pos += used;
		if (st == SMTP_MESSAGE_READY) {
			log_received(io);
			smtp_commit_done(&io->s, true, false, "ID", &io->s_out);
		} else if (st == SMTP_STARTTLS) {
			io->peer.tls = true;
			smtp_tls_established(&io->s);
		} else if (st != SMTP_NEED_MORE) {
			break;
		}
	}
	buf_consume(&io->c_out, pos);
}

static const char interop_body1[] = "Subject: one\r\n\r\n.hello\r\n..\r\n.\r\nend\r\n";
static const char interop_body2[] = "Subject: two\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n";

static void interop_run(bool pipelining, bool chunking, uint32_t chunk, bool starttls, size_t piece,
			const char *want)
{
	struct interop *io = calloc(1, sizeof *io);
	io->scfg = (struct smtp_config){ .hostname = "mx.test", .max_line_length = sizeof io->line,
					 .max_message_size = 200, .max_recipients = 10,
					 .starttls_offered = starttls };
	strcpy(io->peer.addr_str, "192.0.2.1");
	smtp_session_init(&io->s, &io->scfg, &io->peer, io->line, (struct smtp_hooks){ 0 });
	buf_init(&io->s_out, 0);
	buf_init(&io->c_out, 0);
	buf_init(&io->got, 0);
	buf_init(&io->r.out, 0);
	buf_init(&io->r.outcomes, 0);
	io->ccfg = relay_client_config_default(HELO);
	io->ccfg.no_pipelining = !pipelining;
	io->ccfg.no_chunking = !chunking;
	io->ccfg.bdat_chunk = chunk;
	io->ccfg.tls = starttls ? RELAY_TLS_STARTTLS : RELAY_TLS_NONE;
	relay_client_init(&io->c, &io->ccfg, io->reply, (struct relay_hooks){ &io->r, on_outcome });
	smtp_greeting(&io->s, &io->s_out);

	struct relay_rcpt rc1[2] = {
		{ .addr = "b@y.test", .addr_len = 8, .notify = SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY,
		  .orcpt = "rfc822;b+2By@y.test", .orcpt_len = 19, .id = 0 },
		{ .addr = "c@y.test", .addr_len = 8, .id = 1 },
	};
	struct relay_rcpt rc2[1] = { { .addr = "j\xc3\xb6rg@y.test", .addr_len = 12, .id = 10 } };
	struct relay_rcpt rc3[1] = { { .addr = "big@y.test", .addr_len = 10, .id = 20 } };
	static char big[300];
	memset(big, 'x', sizeof big);
	struct relay_message msgs[3] = {
		{ .mail_from = "a@x.test", .mail_from_len = 8, .size = sizeof interop_body1 - 1,
		  .ret = SMTP_RET_HDRS, .envid = "E+2B1", .envid_len = 5, .rcpts = rc1, .nrcpt = 2 },
		{ .mail_from = "", .mail_from_len = 0, .size = sizeof interop_body2 - 1,
		  .body_type = SMTP_BODY_8BITMIME, .smtputf8 = true, .rcpts = rc2, .nrcpt = 1 },
		{ .mail_from = "a@x.test", .mail_from_len = 8, .size = sizeof big, .rcpts = rc3, .nrcpt = 1 },
	};
	const char *bodies[3] = { interop_body1, interop_body2, big };
	unsigned next = 0;
	size_t given = 0;
	bool quit = false;
	for (int steps = 0; steps < 10000; steps++) {
		if (io->s_out.len) {
			size_t used = 0;
			relay_client_feed(&io->c, io->s_out.data, io->s_out.len, &used, &io->c_out);
			buf_consume(&io->s_out, used);
		}
		enum relay_status st = relay_client_status(&io->c);
		if (st == RELAY_CLOSED)
			break;
		if (st == RELAY_READY && next < 3) {
			given = 0;
			relay_client_message(&io->c, &msgs[next++], &io->c_out);
		} else if (st == RELAY_READY && !quit) {
			quit = true;
			relay_client_quit(&io->c, &io->c_out);
		} else if (st == RELAY_WANT_BODY) {
			size_t n = msgs[next - 1].size - given, used = 0;
			if (n > piece)
				n = piece;
			relay_client_body(&io->c, bodies[next - 1] + given, n, &used, &io->c_out);
			given += used;
		} else if (st == RELAY_START_TLS) {
			relay_client_tls_done(&io->c, &io->c_out);
		}
		server_take(io);
	}
	buf_append(&io->got, "", 1);
	buf_append(&io->r.outcomes, "", 1);
	char label[96];
	snprintf(label, sizeof label, "interop pipelining=%d chunking=%d chunk=%u starttls=%d piece=%zu",
		 pipelining, chunking, chunk, starttls, piece);
	if (strcmp(io->got.data, want) != 0)
		fprintf(stderr, "%s: server got:\n%s\nwant:\n%s\n", label, io->got.data, want);
	CHECK(strcmp(io->got.data, want) == 0);
	const char *want_oc = "0 delivered 250 2.0.0 Ok: queued as ID\n1 delivered 250 2.0.0 Ok: queued as ID\n"
			      "10 delivered 250 2.0.0 Ok: queued as ID\n"
			      "20 failed 552 5.3.4 message size 300 exceeds the next hop's limit of 200 (local)\n";
	if (strcmp(io->r.outcomes.data, want_oc) != 0)
		fprintf(stderr, "%s: outcomes:\n%s\n", label, io->r.outcomes.data);
	CHECK(strcmp(io->r.outcomes.data, want_oc) == 0);
	CHECK(relay_client_status(&io->c) == RELAY_CLOSED && relay_client_error(&io->c)[0] == '\0');
	CHECK(smtp_waiting_for(&io->s) == SMTP_WAIT_CLOSED);
	smtp_session_free(&io->s);
	buf_free(&io->s_out);
	buf_free(&io->c_out);
	buf_free(&io->got);
	buf_free(&io->r.out);
	buf_free(&io->r.outcomes);
	free(io);
}

static void test_against_smtp_c(void)
{
	for (int pipe = 0; pipe < 2; pipe++)
		for (int tls = 0; tls < 2; tls++)
			for (size_t piece = 1; piece <= 64; piece *= 4) {
				for (int chunking = 0; chunking < 2; chunking++) {
					const uint32_t sizes[] = { 1, 7, 1u << 20 };
					for (size_t k = 0; k < (chunking ? 3u : 1u); k++) {
						char want[1024];
						snprintf(want, sizeof want,
							 "from=<a@x.test> size=%zu body=0 utf8=0 ret=2 envid=E+2B1 chunking=%d\n"
							 " to=<b@y.test> notify=12 orcpt=rfc822;b+2By@y.test\n"
							 " to=<c@y.test> notify=0 orcpt=-\n"
							 " [%s]\n"
							 "from=<> size=%zu body=1 utf8=1 ret=0 envid=- chunking=%d\n"
							 " to=<j\xc3\xb6rg@y.test> notify=0 orcpt=-\n"
							 " [%s]\n",
							 sizeof interop_body1 - 1, chunking, interop_body1,
							 sizeof interop_body2 - 1, chunking, interop_body2);
						interop_run(pipe, chunking, sizes[k], tls, piece, want);
					}
				}
			}
}

int main(void)
{
	for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++)
		run_all_cuts(&scripts[i]);
	test_early_reply();
	test_lost_in_body();
	test_chunk_refused_mid_chunk();
	test_waiting_for();
	test_out_limit();
	test_bad_addresses();
	test_idle_replies();
	test_against_smtp_c();
	return check_report("test_relay_client");
}
