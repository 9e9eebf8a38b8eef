/* test_smtp: scripted sessions through the SMTP state machine.
 *
 * Every script runs with its input fed in one piece, split in two at every
 * byte boundary, and one byte at a time; the replies, the events (message
 * ready, STARTTLS, AUTH check, close, with the input offset where each
 * happened) and the messages must be identical in every run, and the
 * one-piece run must match what the script expects. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "conf.h"
#include "policy.h"
#include "smtp.h"
#include "check.h"

/* ------------------------------------------------------------ fixtures */

#define HOST "mx.test"
#define MAX_SIZE 100
#define GREET "220 " HOST " ESMTP mxd\r\n"
#define EHLO_HEAD "250-" HOST " Hello c.test [192.0.2.1]\r\n"                           \
		  "250-PIPELINING\r\n250-SIZE 100\r\n250-8BITMIME\r\n"                   \
		  "250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
#define EHLO_OK EHLO_HEAD "250-STARTTLS\r\n250 HELP\r\n"
#define EHLO_TLS EHLO_HEAD "250 HELP\r\n"
#define OK "250 2.0.0 Ok\r\n"
#define MAIL_OK "250 2.1.0 Ok\r\n"
#define RCPT_OK "250 2.1.5 Ok\r\n"
#define GO "354 End data with <CR><LF>.<CR><LF>\r\n"
#define BYE "221 2.0.0 Bye\r\n"
#define SMUGGLED "521 5.5.2 " HOST " Error: bare CR or LF in message data (SMTP smuggling refused)\r\n"
#define BARE_REFUSED "550 5.6.0 Message refused: bare CR or LF in message data\r\n"
#define TOO_BIG "552 5.3.4 Message size exceeds fixed limit\r\n"
#define QUEUED(id) "250 2.0.0 Ok: queued as " id "\r\n"
#define START "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
#define START_OK GREET EHLO_OK MAIL_OK RCPT_OK
#define EHLO_AUTH EHLO_HEAD "250-AUTH PLAIN LOGIN\r\n250 HELP\r\n"
#define AUTH_OK "235 2.7.0 Authentication successful\r\n"
#define AUTH_BAD "535 5.7.8 Authentication credentials invalid\r\n"
#define AUTH_UNDECODABLE "501 5.5.2 Cannot decode response\r\n"
#define AUTH_MALFORMED "501 5.5.2 Malformed authentication response\r\n"
#define AUTH_CANCELLED "501 5.0.0 Authentication cancelled\r\n"
#define AUTH_TOO_LONG "500 5.5.6 Authentication exchange line is too long\r\n"
#define ASK_PLAIN "334 \r\n"
#define ASK_USER "334 VXNlcm5hbWU6\r\n"
#define ASK_PASS "334 UGFzc3dvcmQ6\r\n"
/* base64 of "\0alice\0secret", "alice", "secret" */
#define PLAIN_ALICE "AGFsaWNlAHNlY3JldA=="
#define B64_ALICE "YWxpY2U="
#define B64_SECRET "c2VjcmV0"

enum commit_mode { COMMIT_OK = 0, COMMIT_FAIL, COMMIT_FULL };
enum finale { FINALE_NONE = 0, FINALE_TIMEOUT, FINALE_SHUTDOWN };

struct seg {
	const char *p;
	size_t n;
};
#define S(lit) { lit, sizeof(lit) - 1 }

struct script {
	const char *name;
	struct seg in[3]; /* plaintext, then what follows each TLS handshake */
	const char *want_replies;
	const char *want_log;  /* NULL: not checked */
	/* config tweaks (0 / false: the defaults below) */
	uint32_t max_errors;
	uint32_t max_line;
	bool accept_bare;
	bool tls_required;
	bool no_starttls;
	bool peer_tls;
	bool use_policy;
	bool auth;             /* AUTH offered (inside TLS) */
	const char *verdicts;  /* one 'y'/'n' per AUTH check; NULL: all 'y' */
	enum commit_mode commit;
	enum finale finale;
};

static struct policy *test_policy;

static struct smtp_config config_for(const struct script *sc)
{
	return (struct smtp_config){
		.hostname = HOST,
		.max_line_length = sc->max_line ? sc->max_line : 512,
		.max_message_size = MAX_SIZE,
		.max_recipients = 3,
		.max_errors = sc->max_errors,
		.accept_bare_newlines = sc->accept_bare,
		.starttls_offered = !sc->no_starttls,
		.tls_required = sc->tls_required,
		.auth_offered = sc->auth,
		.policy = sc->use_policy ? test_policy : NULL,
	};
}

static struct smtp_peer peer_for(const struct script *sc)
{
	struct smtp_peer peer = { 0 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&peer.addr;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.1", &sin->sin_addr);
	peer.addr_len = sizeof *sin;
	strcpy(peer.addr_str, "192.0.2.1");
	peer.port = 40000;
	peer.tls = sc->peer_tls;
	return peer;
}

/* A real policy, built the way the daemon builds it: mail for example.com
 * from anyone, and of its users only alice exists. */
static struct policy *policy_make(void)
{
	static char *domain_keys[] = { "example.com" };
	static char *user_keys[] = { "alice@example.com" };
	static char *no_values[] = { NULL };
	static struct conf_table tables[] = {
		{ .name = "domains", .kind = CONF_TABLE_LIST, .keys = domain_keys,
		  .values = no_values, .n = 1 },
		{ .name = "users", .kind = CONF_TABLE_LIST, .keys = user_keys,
		  .values = no_values, .n = 1 },
	};
	static struct conf_rule rules[] = {
		{ .from = CONF_FROM_ANY, .for_what = CONF_FOR_DOMAIN, .domain_table = "domains",
		  .recipient_table = "users" },
	};
	static struct conf c = { .path = "test", .tables = tables, .ntables = 2,
				 .rules = rules, .nrules = 1 };
	struct buf errs;
	buf_init(&errs, 0);
	struct policy *p = policy_build(&c, &errs);
	if (!p)
		fprintf(stderr, "policy_build: %.*s\n", (int)errs.len, errs.data);
	buf_free(&errs);
	return p;
}

/* ------------------------------------------------------------ the runner */

/* Checked on every feed of every run: counted only when it fails, so the
 * pass count reflects the scripts rather than the number of byte splits. */
#define INVARIANT(cond)                                                          \
	do {                                                                     \
		if (!(cond))                                                     \
			CHECK(cond);                                             \
	} while (0)

struct transcript {
	struct buf out;     /* every reply, greeting first */
	struct buf log;     /* events and messages */
	unsigned rejects;   /* calls of the reject hook */
	unsigned commits;
	unsigned auth_checks;
};

static void on_reject(void *ctx, const char *command, const char *reply)
{
	struct transcript *t = ctx;
	t->rejects++;
	INVARIANT(command && command[0] && reply);
	INVARIANT(reply[0] == '4' || reply[0] == '5');
	INVARIANT(!strchr(reply, '\r') && !strchr(reply, '\n'));
}

static void log_escaped(struct buf *log, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\r')
			buf_append_str(log, "\\r");
		else if (c == '\n')
			buf_append_str(log, "\\n");
		else if (c == '\\' || c == '"')
			buf_printf(log, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			buf_printf(log, "\\x%02x", c);
		else
			buf_append(log, &c, 1);
	}
}

static void log_message(struct buf *log, const struct smtp_session *s, size_t at)
{
	const struct smtp_envelope *env = &s->env;
	buf_printf(log, "READY@%zu from=<%s>", at, env->mail_from);
	if (env->size_param)
		buf_printf(log, " size=%" PRIu64, env->size_param);
	if (env->body_type)
		buf_printf(log, " body=%s", env->body_type == SMTP_BODY_8BITMIME ? "8BITMIME" : "BINARYMIME");
	if (env->smtputf8)
		buf_append_str(log, " smtputf8");
	if (env->ret)
		buf_printf(log, " ret=%s", env->ret == SMTP_RET_FULL ? "FULL" : "HDRS");
	if (env->envid)
		buf_printf(log, " envid=%s", env->envid);
	if (env->chunking)
		buf_append_str(log, " chunking");
	buf_append_str(log, " rcpts=");
	for (uint32_t i = 0; i < env->nrcpt; i++) {
		buf_printf(log, "%s<%s>", i ? "," : "", env->rcpts[i].addr);
		if (env->rcpts[i].notify)
			buf_printf(log, "[notify=%u]", env->rcpts[i].notify);
		if (env->rcpts[i].orcpt)
			buf_printf(log, "[orcpt=%s]", env->rcpts[i].orcpt);
	}
	buf_append_str(log, " body=\"");
	log_escaped(log, s->body.data, s->body.len);
	buf_append_str(log, "\"\n");
}

/* Every reply line: three digits, space or dash, CRLF; nothing follows a
 * closing reply (221, 421, 521). */
static bool reply_stream_ok(const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		const char *lf = memchr(p + i, '\n', n - i);
		if (!lf)
			return false;
		size_t len = (size_t)(lf - (p + i)) + 1;
		const char *l = p + i;
		if (len < 6 || l[len - 2] != '\r' || l[0] < '2' || l[0] > '5' || l[1] < '0' ||
		    l[1] > '9' || l[2] < '0' || l[2] > '9' || (l[3] != ' ' && l[3] != '-'))
			return false;
		i += len;
		bool closing = l[3] == ' ' && (!strncmp(l, "221", 3) || !strncmp(l, "421", 3) ||
					       !strncmp(l, "521", 3));
		if (closing && i != n)
			return false;
	}
	return true;
}

static bool all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* The shell's side of SMTP_AUTH_CHECK: the credentials are complete and
 * NUL-terminated, nothing is taken until the verdict, the password is
 * gone after it. False when the session did not move on (the run stops
 * rather than loop). */
static bool auth_check(struct smtp_session *s, struct smtp_peer *peer, struct transcript *t,
		       const struct script *sc, const char *rest, size_t rest_len, size_t at)
{
	INVARIANT(smtp_waiting_for(s) == SMTP_WAIT_COMMIT);
	INVARIANT(peer->tls && s->cfg->auth_offered && !s->authenticated && !s->in_transaction);
	INVARIANT(memchr(s->auth_user, '\0', sizeof s->auth_user) != NULL);
	INVARIANT(memchr(s->auth_password, '\0', sizeof s->auth_password) != NULL);
	INVARIANT(s->auth_user[0] && s->auth_password[0]);
	buf_printf(&t->log, "AUTH@%zu user=\"", at);
	log_escaped(&t->log, s->auth_user, strlen(s->auth_user));
	buf_append_str(&t->log, "\" pass=\"");
	log_escaped(&t->log, s->auth_password, strlen(s->auth_password));
	buf_append_str(&t->log, "\"\n");
	size_t again = 99999, len = t->out.len;
	INVARIANT(smtp_feed(s, rest, rest_len, &again, &t->out) == SMTP_AUTH_CHECK);
	INVARIANT(again == 0 && t->out.len == len);
	unsigned i = t->auth_checks++;
	bool ok = !sc->verdicts || (i < strlen(sc->verdicts) && sc->verdicts[i] == 'y');
	smtp_auth_done(s, ok, &t->out);
	INVARIANT(all_zero(s->auth_password, sizeof s->auth_password));
	INVARIANT(s->authenticated == ok);
	if (ok) {
		peer->authenticated = true;
		memcpy(peer->auth_user, s->auth_user, sizeof peer->auth_user);
	}
	bool moved_on = smtp_waiting_for(s) != SMTP_WAIT_COMMIT;
	INVARIANT(moved_on);
	return moved_on;
}

static unsigned count_negative_lines(const char *p, size_t n)
{
	unsigned count = 0;
	for (size_t i = 0; i < n; i++)
		if ((i == 0 || p[i - 1] == '\n') && (p[i] == '4' || p[i] == '5'))
			count++;
	return count;
}

/* Feed one piece; false when the session is over or this segment is to be
 * dropped (STARTTLS). */
static bool feed_piece(struct smtp_session *s, struct smtp_peer *peer, struct transcript *t,
		       const struct script *sc, const char *p, size_t n, size_t base)
{
	size_t pos = 0;
	for (;;) {
		size_t used = 99999;
		enum smtp_status st = smtp_feed(s, p + pos, n - pos, &used, &t->out);
		INVARIANT(used <= n - pos);
		pos += used;
		INVARIANT(s->env.nrcpt <= s->cfg->max_recipients);
		INVARIANT(s->body.len <= s->cfg->max_message_size);
		switch (st) {
		case SMTP_NEED_MORE:
			INVARIANT(pos == n);
			return true;
		case SMTP_MESSAGE_READY: {
			INVARIANT(smtp_waiting_for(s) == SMTP_WAIT_COMMIT);
			log_message(&t->log, s, base + pos);
			char id[16];
			snprintf(id, sizeof id, "Q%u", ++t->commits);
			smtp_commit_done(s, sc->commit == COMMIT_OK, sc->commit == COMMIT_FULL, id,
					 &t->out);
			continue;
		}
		case SMTP_STARTTLS:
			buf_printf(&t->log, "STARTTLS@%zu\n", base + pos);
			peer->tls = true;
			peer->authenticated = false;
			smtp_tls_established(s);
			INVARIANT(!s->authenticated);
			return false;
		case SMTP_AUTH_CHECK:
			if (!auth_check(s, peer, t, sc, p + pos, n - pos, base + pos))
				return false;
			continue;
		case SMTP_CLOSE:
			buf_printf(&t->log, "CLOSE@%zu\n", base + pos);
			INVARIANT(smtp_waiting_for(s) == SMTP_WAIT_CLOSED);
			return false;
		}
	}
}

enum split { SPLIT_NONE, SPLIT_AT, SPLIT_BYTES };

static void run_script(const struct script *sc, enum split mode, size_t cut, struct transcript *t)
{
	struct smtp_config cfg = config_for(sc);
	struct smtp_peer peer = peer_for(sc);
	char *line = malloc(cfg.max_line_length);
	struct smtp_session s;
	smtp_session_init(&s, &cfg, &peer, line, (struct smtp_hooks){ t, on_reject });
	buf_init(&t->out, 0);
	buf_init(&t->log, 0);
	t->rejects = t->commits = t->auth_checks = 0;
	smtp_greeting(&s, &t->out);
	size_t base = 0;
	bool open = true;
	for (int i = 0; i < 3 && sc->in[i].p && open; i++) {
		const char *p = sc->in[i].p;
		size_t n = sc->in[i].n;
		size_t at = 0;
		while (at < n) {
			size_t piece = n - at;
			if (mode == SPLIT_BYTES)
				piece = 1;
			else if (mode == SPLIT_AT && base + at < cut && cut < base + n)
				piece = cut - (base + at);
			if (!feed_piece(&s, &peer, t, sc, p + at, piece, base + at)) {
				open = smtp_waiting_for(&s) != SMTP_WAIT_CLOSED;
				break;
			}
			at += piece;
		}
		base += n;
	}
	if (sc->finale == FINALE_TIMEOUT)
		smtp_timeout(&s, &t->out);
	else if (sc->finale == FINALE_SHUTDOWN)
		smtp_shutdown(&s, &t->out);
	buf_printf(&t->log, "END wait=%d%s\n", (int)smtp_waiting_for(&s),
		   s.authenticated ? " authenticated" : "");
	smtp_session_free(&s);
	free(line);
	buf_append(&t->out, "", 1); /* NUL-terminate for the comparisons */
	t->out.len--;
	buf_append(&t->log, "", 1);
	t->log.len--;
}

static void transcript_free(struct transcript *t)
{
	buf_free(&t->out);
	buf_free(&t->log);
}

static bool transcripts_equal(const struct transcript *a, const struct transcript *b)
{
	return a->out.len == b->out.len && memcmp(a->out.data, b->out.data, a->out.len) == 0 &&
	       a->log.len == b->log.len && memcmp(a->log.data, b->log.data, a->log.len) == 0 &&
	       a->rejects == b->rejects;
}

static size_t script_len(const struct script *sc)
{
	size_t n = 0;
	for (int i = 0; i < 3 && sc->in[i].p; i++)
		n += sc->in[i].n;
	return n;
}

/* Run sc every way; check the expectations and that the split runs agree. */
static void check_script(const struct script *sc)
{
	struct transcript ref;
	run_script(sc, SPLIT_NONE, 0, &ref);
	if (sc->want_replies && strcmp(ref.out.data, sc->want_replies) != 0)
		fprintf(stderr, "script \"%s\": replies differ\n", sc->name);
	if (sc->want_replies)
		CHECK_STR_EQ(ref.out.data, sc->want_replies);
	if (sc->want_log && strcmp(ref.log.data, sc->want_log) != 0)
		fprintf(stderr, "script \"%s\": log differs\n", sc->name);
	if (sc->want_log)
		CHECK_STR_EQ(ref.log.data, sc->want_log);
	CHECK(reply_stream_ok(ref.out.data, ref.out.len));
	CHECK(ref.rejects == count_negative_lines(ref.out.data, ref.out.len));

	size_t total = script_len(sc);
	size_t bad_cut = 0;
	unsigned mismatches = 0;
	for (size_t cut = 1; cut < total; cut++) {
		struct transcript t;
		run_script(sc, SPLIT_AT, cut, &t);
		if (!transcripts_equal(&ref, &t) && mismatches++ == 0)
			bad_cut = cut;
		transcript_free(&t);
	}
	if (mismatches)
		fprintf(stderr, "script \"%s\": %u split runs differ, first at byte %zu\n", sc->name,
			mismatches, bad_cut);
	CHECK(mismatches == 0);

	struct transcript bytes;
	run_script(sc, SPLIT_BYTES, 0, &bytes);
	if (!transcripts_equal(&ref, &bytes))
		fprintf(stderr, "script \"%s\": byte-by-byte run differs:\n%s\n%s\n", sc->name,
			bytes.out.data, bytes.log.data);
	CHECK(transcripts_equal(&ref, &bytes));
	transcript_free(&bytes);
	transcript_free(&ref);
}

/* ------------------------------------------------------------ scripts */

static const struct script scripts[] = {
	{
		.name = "full transaction",
		.in = { S(START "DATA\r\nSubject: hi\r\n\r\nHello\r\n.\r\nQUIT\r\n") },
		.want_replies = START_OK GO QUEUED("Q1") BYE,
		.want_log = "READY@86 from=<a@x.test> rcpts=<b@y.test> body=\"Subject: hi\\r\\n\\r\\nHello\\r\\n\"\n"
			    "CLOSE@92\n"
			    "END wait=3\n",
	},
	{
		.name = "pipelined transactions, RSET, NOOP",
		.in = { S(START "RCPT TO:<c@y.test>\r\nDATA\r\none\r\n.\r\n"
			      "MAIL FROM:<>\r\nRCPT TO:<d@y.test>\r\nDATA\r\ntwo\r\n.\r\n"
			      "RSET\r\nNOOP\r\nQUIT\r\nNOOP\r\n") },
		.want_replies = START_OK RCPT_OK GO QUEUED("Q1") MAIL_OK RCPT_OK GO QUEUED("Q2") OK OK BYE,
		.want_log = "READY@89 from=<a@x.test> rcpts=<b@y.test>,<c@y.test> body=\"one\\r\\n\"\n"
			    "READY@137 from=<> rcpts=<d@y.test> body=\"two\\r\\n\"\n"
			    "CLOSE@155\n"
			    "END wait=3\n",
	},
	{
		.name = "dot stuffing",
		.in = { S(START "DATA\r\n..x\r\n..\r\n.y\r\n. \r\na.b.\r\n...\r\n.\r\n") },
		.want_replies = START_OK GO QUEUED("Q1"),
		.want_log = "READY@92 from=<a@x.test> rcpts=<b@y.test> body=\".x\\r\\n.\\r\\ny\\r\\n \\r\\na.b.\\r\\n..\\r\\n\"\n"
			    "END wait=0\n",
	},
	{
		.name = "empty message",
		.in = { S(START "DATA\r\n.\r\n") },
		.want_replies = START_OK GO QUEUED("Q1"),
		.want_log = "READY@64 from=<a@x.test> rcpts=<b@y.test> body=\"\"\n"
			    "END wait=0\n",
	},
	{
		.name = "line of only a dot is not the end without CRLF on both sides",
		.in = { S(START "DATA\r\na.\r\n.b\r\n.\r\n") },
		.want_replies = START_OK GO QUEUED("Q1"),
		.want_log = "READY@72 from=<a@x.test> rcpts=<b@y.test> body=\"a.\\r\\nb\\r\\n\"\n"
			    "END wait=0\n",
	},
	/* SMTP smuggling: a dot line with any bare CR or LF around it. */
#define SMUGGLE(label, variant)                                                          \
	{                                                                                \
		.name = "smuggling " label,                                              \
		.in = { S(START "DATA\r\nHi" variant "MAIL FROM:<evil@x.test>\r\n"        \
			      "RCPT TO:<v@y.test>\r\nDATA\r\nevil\r\n.\r\n.\r\n") },     \
		.want_replies = START_OK GO SMUGGLED,                                    \
	}
	SMUGGLE("\\n.\\n", "\n.\n"),
	SMUGGLE("\\r\\n.\\n", "\r\n.\n"),
	SMUGGLE("\\n.\\r\\n", "\n.\r\n"),
	SMUGGLE("\\r.\\r\\n", "\r.\r\n"),
	SMUGGLE("\\r\\n.\\rX", "\r\n.\rX"),
	SMUGGLE("\\r.\\n", "\r.\n"),
	SMUGGLE("\\n.\\r", "\n.\r"),
	SMUGGLE("\\r.\\r", "\r.\r"),
	{
		.name = "smuggling right after DATA",
		.in = { S(START "DATA\r\n.\nQUIT\r\n") },
		.want_replies = START_OK GO SMUGGLED,
		.want_log = "CLOSE@63\n"
			    "END wait=3\n",
	},
	{
		.name = "smuggling detected at the earliest byte",
		.in = { S(START "DATA\r\nHi\r\n.\nNOOP\r\n") },
		.want_replies = START_OK GO SMUGGLED,
		.want_log = "CLOSE@67\n"
			    "END wait=3\n",
	},
	{
		.name = "bare LF in content refused, session usable",
		.in = { S(START "DATA\r\nHi\nthere\r\n.\r\n"
			      "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nok\r\n.\r\nQUIT\r\n") },
		.want_replies = START_OK GO BARE_REFUSED MAIL_OK RCPT_OK GO QUEUED("Q1") BYE,
		.want_log = "READY@129 from=<a@x.test> rcpts=<b@y.test> body=\"ok\\r\\n\"\n"
			    "CLOSE@135\n"
			    "END wait=3\n",
	},
	{
		.name = "bare CR in content refused",
		.in = { S(START "DATA\r\na\rb\r\n.\r\nNOOP\r\n") },
		.want_replies = START_OK GO BARE_REFUSED OK,
	},
	{
		.name = "CR CR LF before the end refused",
		.in = { S(START "DATA\r\na\r\r\n.\r\nNOOP\r\n") },
		.want_replies = START_OK GO BARE_REFUSED OK,
	},
	{
		.name = "bare newlines accepted when configured",
		.accept_bare = true,
		.in = { S(START "DATA\r\nHi\nthere\r\nx\ry\r\n.\r\n") },
		.want_replies = START_OK GO QUEUED("Q1"),
		.want_log = "READY@79 from=<a@x.test> rcpts=<b@y.test> body=\"Hi\\nthere\\r\\nx\\ry\\r\\n\"\n"
			    "END wait=0\n",
	},
	{
		.name = "accepted bare newlines never end the message",
		.accept_bare = true,
		.in = { S(START "DATA\r\na\n.\nb\r\n.\nc\r\n.\rd\r\n.\r\nNOOP\r\n") },
		.want_replies = START_OK GO QUEUED("Q1") OK,
		.want_log = "READY@81 from=<a@x.test> rcpts=<b@y.test> body=\"a\\n.\\nb\\r\\n\\nc\\r\\n\\rd\\r\\n\"\n"
			    "END wait=0\n",
	},
	/* BDAT */
	{
		.name = "BDAT chunks",
		.in = { S(START "BDAT 5\r\nHelloBDAT 8 LAST\r\n world\r\nQUIT\r\n") },
		.want_replies = START_OK "250 2.0.0 Ok: 5 octets received\r\n" QUEUED("Q1") BYE,
		.want_log = "READY@89 from=<a@x.test> chunking rcpts=<b@y.test> body=\"Hello world\\r\\n\"\n"
			    "CLOSE@95\n"
			    "END wait=3\n",
	},
	{
		.name = "BDAT then BDAT 0 LAST, CRLF across chunks, dots raw",
		.in = { S(START "BDAT 3\r\n.a\rBDAT 2\r\n\n.BDAT 0 LAST\r\n") },
		.want_replies = START_OK "250 2.0.0 Ok: 3 octets received\r\n"
					 "250 2.0.0 Ok: 2 octets received\r\n" QUEUED("Q1"),
		.want_log = "READY@89 from=<a@x.test> chunking rcpts=<b@y.test> body=\".a\\r\\n.\"\n"
			    "END wait=0\n",
	},
	{
		.name = "BDAT 0 LAST alone",
		.in = { S(START "BDAT 0 last\r\n") },
		.want_replies = START_OK QUEUED("Q1"),
		.want_log = "READY@68 from=<a@x.test> chunking rcpts=<b@y.test> body=\"\"\n"
			    "END wait=0\n",
	},
	{
		.name = "BDAT without MAIL discards its bytes",
		.in = { S("EHLO c.test\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n") },
		.want_replies = GREET EHLO_OK "503 5.5.1 Error: need MAIL command\r\n" OK,
	},
	{
		.name = "BDAT without RCPT",
		.in = { S("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nBDAT 3\r\nabcBDAT 1 LAST\r\nxRSET\r\n"
			  "RCPT TO:<b@y.test>\r\nBDAT 1 LAST\r\nz") },
		.want_replies = GREET EHLO_OK MAIL_OK "554 5.5.1 Error: no valid recipients\r\n"
			"503 5.5.1 Error: transaction failed, send RSET\r\n" OK
			"503 5.5.1 Error: need MAIL command\r\n" "503 5.5.1 Error: need MAIL command\r\n",
	},
	{
		.name = "BDAT bad sizes",
		.in = { S(START "BDAT x\r\nBDAT\r\nBDAT 123456789012345678901\r\n"
			      "BDAT 18446744073709551616\r\nBDAT -1\r\nBDAT 5 LASTX\r\nBDAT 5 LAST X\r\n"
			      "BDAT 1 LAST\r\nq") },
		.want_replies = START_OK
			"501 5.5.4 Syntax: BDAT size [LAST]\r\n" "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
			"501 5.5.4 Syntax: BDAT size [LAST]\r\n" "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
			"501 5.5.4 Syntax: BDAT size [LAST]\r\n" "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
			"501 5.5.4 Syntax: BDAT size [LAST]\r\n" QUEUED("Q1"),
	},
	{
		.name = "BDAT exactly the size limit",
		.in = { S(START "BDAT 60\r\n" "012345678901234567890123456789012345678901234567890123456789"
			      "BDAT 40 LAST\r\n" "0123456789012345678901234567890123456789") },
		.want_replies = START_OK "250 2.0.0 Ok: 60 octets received\r\n" QUEUED("Q1"),
	},
	{
		.name = "BDAT one byte over the limit, later chunks refused until RSET",
		.in = { S(START "BDAT 60\r\n" "012345678901234567890123456789012345678901234567890123456789"
			      "BDAT 41\r\n" "01234567890123456789012345678901234567890"
			      "BDAT 3\r\nabcBDAT 2 LAST\r\nxyRCPT TO:<c@y.test>\r\nDATA\r\nRSET\r\n"
			      "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 1 LAST\r\nk") },
		.want_replies = START_OK "250 2.0.0 Ok: 60 octets received\r\n" TOO_BIG
			"503 5.5.1 Error: transaction failed, send RSET\r\n"
			"503 5.5.1 Error: transaction failed, send RSET\r\n"
			"503 5.5.1 Error: need MAIL command\r\n" "503 5.5.1 Error: need MAIL command\r\n"
			OK MAIL_OK RCPT_OK QUEUED("Q1"),
	},
	{
		.name = "BDAT LAST over the limit ends the transaction; MAIL after a failed BDAT",
		.in = { S(START "BDAT 101 LAST\r\n"
			      "01234567890123456789012345678901234567890123456789"
			      "012345678901234567890123456789012345678901234567890"
			      "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 101\r\n"
			      "01234567890123456789012345678901234567890123456789"
			      "012345678901234567890123456789012345678901234567890"
			      "MAIL FROM:<n@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 1 LAST\r\nk") },
		.want_replies = START_OK TOO_BIG MAIL_OK RCPT_OK TOO_BIG MAIL_OK RCPT_OK QUEUED("Q1"),
	},
	{
		.name = "DATA after BDAT, RCPT after BDAT",
		.in = { S(START "BDAT 2\r\nabDATA\r\nRCPT TO:<c@y.test>\r\nBDAT 1 LAST\r\nc") },
		.want_replies = START_OK "250 2.0.0 Ok: 2 octets received\r\n"
			"503 5.5.1 Error: DATA not allowed after BDAT\r\n"
			"503 5.5.1 Error: RCPT not allowed after BDAT\r\n" QUEUED("Q1"),
	},
	{
		.name = "bare LF in BDAT refused at LAST",
		.in = { S(START "BDAT 3\r\na\nbBDAT 1 LAST\r\ncNOOP\r\n") },
		.want_replies = START_OK "250 2.0.0 Ok: 3 octets received\r\n" BARE_REFUSED OK,
	},
	{
		.name = "BDAT message ending in a bare CR refused",
		.in = { S(START "BDAT 2 LAST\r\na\rNOOP\r\n") },
		.want_replies = START_OK BARE_REFUSED OK,
	},
	{
		.name = "BDAT bare LF accepted when configured",
		.accept_bare = true,
		.in = { S(START "BDAT 4 LAST\r\na\nb\r") },
		.want_replies = START_OK QUEUED("Q1"),
		.want_log = "READY@72 from=<a@x.test> chunking rcpts=<b@y.test> body=\"a\\nb\\r\"\n"
			    "END wait=0\n",
	},
	{
		.name = "BINARYMIME needs BDAT",
		.in = { S("EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=BINARYMIME\r\nRCPT TO:<b@y.test>\r\n"
			  "DATA\r\nBDAT 2 LAST\r\n\0\xff") },
		.want_replies = START_OK "503 5.5.1 Error: BINARYMIME requires BDAT\r\n" QUEUED("Q1"),
		.want_log = "READY@92 from=<a@x.test> body=BINARYMIME chunking rcpts=<b@y.test> body=\"\\x00\\xff\"\n"
			    "END wait=0\n",
	},
	/* MAIL parameters */
	{
		.name = "MAIL with every parameter",
		.in = { S("EHLO c.test\r\nmail from: <a@x.test> SIZE=100 body=8bitmime SMTPUTF8 RET=HDRS ENVID=q+2Bx\r\n"
			  "RCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n") },
		.want_replies = START_OK GO QUEUED("Q1"),
		.want_log = "READY@121 from=<a@x.test> size=100 body=8BITMIME smtputf8 ret=HDRS envid=q+2Bx rcpts=<b@y.test> body=\"x\\r\\n\"\n"
			    "END wait=0\n",
	},
	{
		.name = "MAIL parameter errors",
		.in = { S("EHLO c.test\r\n"
			  "MAIL FROM:<a@x.test> SIZE=101\r\n"
			  "MAIL FROM:<a@x.test> SIZE=18446744073709551615\r\n"
			  "MAIL FROM:<a@x.test> SIZE=18446744073709551616\r\n"
			  "MAIL FROM:<a@x.test> SIZE=123456789012345678901\r\n"
			  "MAIL FROM:<a@x.test> SIZE=abc\r\n"
			  "MAIL FROM:<a@x.test> SIZE=\r\n"
			  "MAIL FROM:<a@x.test> SIZE\r\n"
			  "MAIL FROM:<a@x.test> SIZE=-1\r\n"
			  "MAIL FROM:<a@x.test> BODY=9BIT\r\n"
			  "MAIL FROM:<a@x.test> SMTPUTF8=yes\r\n"
			  "MAIL FROM:<a@x.test> RET=ALL\r\n"
			  "MAIL FROM:<a@x.test> RET\r\n"
			  "MAIL FROM:<a@x.test> ENVID=\r\n"
			  "MAIL FROM:<a@x.test> ENVID=a+zz\r\n"
			  "MAIL FROM:<a@x.test> ENVID=a+2\r\n"
			  "MAIL FROM:<a@x.test> ENVID=a=b\r\n"
			  "MAIL FROM:<a@x.test> ENVID=01234567890123456789012345678901234567890123456789"
			  "012345678901234567890123456789012345678901234567890\r\n"
			  "MAIL FROM:<a@x.test> SIZE=1 SIZE=2\r\n"
			  "MAIL FROM:<a@x.test> BODY=7BIT BODY=7BIT\r\n"
			  "MAIL FROM:<a@x.test> FOO=bar\r\n"
			  "MAIL FROM:<a@x.test> NOTIFY=NEVER\r\n"
			  "MAIL FROM:<a@x.test> AUTH=<>\r\n"
			  "MAIL FROM:<a@x.test> SIZE=100 ENVID=01234567890123456789012345678901234567890123456789"
			  "01234567890123456789012345678901234567890123456789\r\n") },
		.want_replies = GREET EHLO_OK TOO_BIG TOO_BIG
			"501 5.5.4 Bad value for SIZE\r\n" "501 5.5.4 Bad value for SIZE\r\n"
			"501 5.5.4 Bad value for SIZE\r\n" "501 5.5.4 Bad value for SIZE\r\n"
			"501 5.5.4 Bad value for SIZE\r\n" "501 5.5.4 Bad value for SIZE\r\n"
			"501 5.5.4 Bad value for BODY\r\n" "501 5.5.4 Bad value for SMTPUTF8\r\n"
			"501 5.5.4 Bad value for RET\r\n" "501 5.5.4 Bad value for RET\r\n"
			"501 5.5.4 Bad value for ENVID\r\n" "501 5.5.4 Bad value for ENVID\r\n"
			"501 5.5.4 Bad value for ENVID\r\n" "501 5.5.4 Bad value for ENVID\r\n"
			"501 5.5.4 Bad value for ENVID\r\n"
			"501 5.5.4 Duplicate parameter: SIZE\r\n" "501 5.5.4 Duplicate parameter: BODY\r\n"
			"555 5.5.4 Unsupported option: FOO\r\n" "555 5.5.4 Unsupported option: NOTIFY\r\n"
			"555 5.5.4 Unsupported option: AUTH\r\n" MAIL_OK,
	},
	{
		.name = "parameters after HELO",
		.in = { S("HELO c.test\r\nMAIL FROM:<a@x.test> SIZE=10\r\nMAIL FROM:<a@x.test>\r\n"
			  "RCPT TO:<b@y.test> NOTIFY=NEVER\r\nRCPT TO:<b@y.test>\r\n") },
		.want_replies = GREET "250 " HOST "\r\n" "555 5.5.4 Unsupported option: SIZE\r\n" MAIL_OK
			"555 5.5.4 Unsupported option: NOTIFY\r\n" RCPT_OK,
	},
	{
		.name = "sender address syntax",
		.in = { S("EHLO c.test\r\n"
			  "MAIL FROM:a@x.test\r\n"
			  "MAIL FROM:<a@x.test\r\n"
			  "MAIL FROM:<a..b@x.test>\r\n"
			  "MAIL FROM:<.a@x.test>\r\n"
			  "MAIL FROM:<a.@x.test>\r\n"
			  "MAIL FROM:<a@-x.test>\r\n"
			  "MAIL FROM:<a@x-.test>\r\n"
			  "MAIL FROM:<a@x..test>\r\n"
			  "MAIL FROM:<a@x.test.>\r\n"
			  "MAIL FROM:<a>\r\n"
			  "MAIL FROM:<@x.test>\r\n"
			  "MAIL FROM:<a@>\r\n"
			  "MAIL FROM:<a b@x.test>\r\n"
			  "MAIL FROM:<a@[300.1.1.1]>\r\n"
			  "MAIL FROM:<a@[IPv6:zz::1]>\r\n"
			  "MAIL FROM:<a@[192.0.2.1>\r\n"
			  "MAIL FROM:<\"a@x.test>\r\n"
			  "MAIL FROM:<@r1.test:>\r\n"
			  "MAIL FROM:<a@x.test>SIZE=1\r\n"
			  "MAIL FROM:<postmaster>\r\n"
			  "MAIL FROM:<j\xc3@x.test> SMTPUTF8\r\n"
			  "MAIL FROM:<j\xc0\xaf@x.test> SMTPUTF8\r\n"
			  "MAIL TO:<a@x.test>\r\n"
			  "MAIL\r\n"
			  "MAIL FROM:<j\xc3\xb8@x.test>\r\n"
			  "MAIL FROM:<a@b\xc3\xb8.test>\r\n") },
		.want_replies = GREET EHLO_OK
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.1.7 Bad sender address syntax\r\n" "501 5.1.7 Bad sender address syntax\r\n"
			"501 5.5.4 Syntax: MAIL FROM:<address>\r\n" "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
			"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
			"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n",
	},
	{
		.name = "sender address forms accepted",
		.in = { S("EHLO c.test\r\nMAIL FROM:<@r1.test,@r2.test:a@x.test>\r\nRSET\r\n"
			  "MAIL FROM:<\"a b\\\"c\"@x.test>\r\nRSET\r\n"
			  "MAIL FROM:<a@[192.0.2.1]>\r\nRSET\r\n"
			  "MAIL FROM:<a@[IPv6:2001:db8::1]>\r\nRSET\r\n"
			  "MAIL FROM:<a@[x-tag:stuff]>\r\nRSET\r\n"
			  "MAIL FROM:<j\xc3\xb8@b\xc3\xb8.test> SMTPUTF8\r\n"
			  "RCPT TO:<\xc3\xb8@y.test>\r\nDATA\r\nx\r\n.\r\n"
			  "MAIL FROM:<!#$%&'*+-/=?^_`{|}~@x.test>\r\nRCPT TO:<b@y.test>\r\n"
			  "RCPT TO:<\xc3\xb8@y.test>\r\n") },
		.want_replies = GREET EHLO_OK MAIL_OK OK MAIL_OK OK MAIL_OK OK MAIL_OK OK MAIL_OK OK
			MAIL_OK RCPT_OK GO QUEUED("Q1") MAIL_OK RCPT_OK
			"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n",
	},
	/* RCPT */
	{
		.name = "RCPT forms and parameters",
		.in = { S("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n"
			  "RCPT TO:<PostMaster>\r\n"
			  "rcpt to: <b@y.test> NOTIFY=success,FAILURE,DELAY ORCPT=rfc822;b+40y.test\r\n"
			  "RCPT TO:<c@y.test> NOTIFY=NEVER\r\n"
			  "RCPT TO:<d@y.test> NOTIFY=NEVER,SUCCESS\r\n"
			  "RCPT TO:<d@y.test> NOTIFY=SUCCESS,SUCCESS\r\n"
			  "RCPT TO:<d@y.test> NOTIFY=\r\n"
			  "RCPT TO:<d@y.test> NOTIFY=SOMETIMES\r\n"
			  "RCPT TO:<d@y.test> NOTIFY=DELAY,\r\n"
			  "RCPT TO:<d@y.test> ORCPT=x400;abc\r\n"
			  "RCPT TO:<d@y.test> ORCPT=rfc822;\r\n"
			  "RCPT TO:<d@y.test> ORCPT=rfc822;a+4\r\n"
			  "RCPT TO:<d@y.test> NOTIFY=NEVER NOTIFY=NEVER\r\n"
			  "RCPT TO:<d@y.test> SIZE=1\r\n"
			  "RCPT TO:<>\r\n"
			  "RCPT TO:d@y.test\r\n"
			  "RCPT TO:<d@y.test\r\n"
			  "RCPT TO:<postmaster.x>\r\n"
			  "RCPT FROM:<d@y.test>\r\n"
			  "RCPT TO:<\xc3\xb8@y.test>\r\n"
			  "DATA\r\nz\r\n.\r\n") },
		.want_replies = GREET EHLO_OK MAIL_OK RCPT_OK RCPT_OK RCPT_OK
			"501 5.5.4 Bad value for NOTIFY\r\n" "501 5.5.4 Bad value for NOTIFY\r\n"
			"501 5.5.4 Bad value for NOTIFY\r\n" "501 5.5.4 Bad value for NOTIFY\r\n"
			"501 5.5.4 Bad value for NOTIFY\r\n"
			"501 5.5.4 Bad value for ORCPT\r\n" "501 5.5.4 Bad value for ORCPT\r\n"
			"501 5.5.4 Bad value for ORCPT\r\n"
			"501 5.5.4 Duplicate parameter: NOTIFY\r\n"
			"555 5.5.4 Unsupported option: SIZE\r\n"
			"501 5.1.3 Bad recipient address syntax\r\n" "501 5.1.3 Bad recipient address syntax\r\n"
			"501 5.1.3 Bad recipient address syntax\r\n" "501 5.1.3 Bad recipient address syntax\r\n"
			"501 5.5.4 Syntax: RCPT TO:<address>\r\n"
			"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
			GO QUEUED("Q1"),
		.want_log = "READY@654 from=<a@x.test> rcpts=<PostMaster>,<b@y.test>[notify=14][orcpt=rfc822;b+40y.test],<c@y.test>[notify=1] body=\"z\\r\\n\"\n"
			    "END wait=0\n",
	},
	{
		.name = "max recipients and one more",
		.in = { S(START "RCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\nRCPT TO:<e@y.test>\r\n"
			      "DATA\r\n.\r\n") },
		.want_replies = START_OK RCPT_OK RCPT_OK "452 4.5.3 Error: too many recipients\r\n" GO QUEUED("Q1"),
		.want_log = "READY@124 from=<a@x.test> rcpts=<b@y.test>,<c@y.test>,<d@y.test> body=\"\"\n"
			    "END wait=0\n",
	},
	{
		.name = "policy verdicts",
		.use_policy = true,
		.in = { S("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<alice@example.com>\r\n"
			  "RCPT TO:<bob@example.com>\r\nRCPT TO:<x@other.test>\r\nRCPT TO:<postmaster>\r\n") },
		.want_replies = GREET EHLO_OK MAIL_OK RCPT_OK
			"550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown\r\n"
			"554 5.7.1 <x@other.test>: Relay access denied\r\n" RCPT_OK,
	},
	/* line length (max 32 here), odd bytes in commands */
	{
		.name = "line length limit at +-1",
		.max_line = 32,
		.in = { S("NOOP 4567890123456789012345678\r\n"
			  "NOOP 45678901234567890123456789\r\n"
			  "NOOP 45678901234567890123456789\n"
			  "NOOP 456789012345678901234567890\n"
			  "NOOP 4567890123456789012345678901234567890123456789012345678901234567890\r\n"
			  "NOOP\r\n") },
		.want_replies = GREET OK "500 5.5.2 Error: line too long\r\n" OK
			"500 5.5.2 Error: line too long\r\n" "500 5.5.2 Error: line too long\r\n" OK,
	},
	{
		.name = "NUL, bare CR, empty and unknown commands, bare LF line ends",
		.in = { S("NO\0OP\r\nNOOP\rX\r\n\r\nFOO bar\r\nnoop\n  NOOP\r\nNOOP   \r\n") },
		.want_replies = GREET "500 5.5.2 Error: NUL character in command\r\n"
			"500 5.5.2 Error: bare CR in command\r\n"
			"500 5.5.2 Error: command not recognized\r\n"
			"500 5.5.2 Error: command not recognized\r\n" OK
			"500 5.5.2 Error: command not recognized\r\n" OK,
	},
	{
		.name = "max errors closes with 421",
		.max_errors = 3,
		.in = { S("FOO\r\nNOOP\r\nMAIL FROM:<a@x.test>\r\nBAR\r\nNOOP\r\nQUIT\r\n") },
		.want_replies = GREET "500 5.5.2 Error: command not recognized\r\n" OK
			"503 5.5.1 Error: send HELO/EHLO first\r\n"
			"500 5.5.2 Error: command not recognized\r\n"
			"421 4.7.0 " HOST " Error: too many errors\r\n",
		.want_log = "CLOSE@38\nEND wait=3\n",
	},
	{
		.name = "max errors reached by a refused message",
		.max_errors = 1,
		.in = { S(START "DATA\r\na\nb\r\n.\r\nNOOP\r\n") },
		.want_replies = START_OK GO BARE_REFUSED "421 4.7.0 " HOST " Error: too many errors\r\n",
	},
	/* ordering */
	{
		.name = "503 and friends: commands out of order",
		.in = { S("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nBDAT 1\r\nx"
			  "EHLO\r\nHELO\r\nEHLO c.test\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nDATA\r\n"
			  "MAIL FROM:<a@x.test>\r\nSTARTTLS\r\nRCPT TO:<b@y.test>\r\nDATA x\r\n"
			  "EHLO c.test\r\nRCPT TO:<b@y.test>\r\n") },
		.want_replies = GREET "503 5.5.1 Error: send HELO/EHLO first\r\n"
			"503 5.5.1 Error: need MAIL command\r\n" "503 5.5.1 Error: need MAIL command\r\n"
			"503 5.5.1 Error: need MAIL command\r\n"
			"501 5.5.4 Syntax: EHLO hostname\r\n" "501 5.5.4 Syntax: HELO hostname\r\n" EHLO_OK
			"503 5.5.1 Error: need MAIL command\r\n" MAIL_OK
			"554 5.5.1 Error: no valid recipients\r\n"
			"503 5.5.1 Error: nested MAIL command\r\n"
			"503 5.5.1 Error: STARTTLS not allowed during a mail transaction\r\n" RCPT_OK
			"501 5.5.4 Syntax: DATA\r\n" EHLO_OK "503 5.5.1 Error: need MAIL command\r\n",
	},
	{
		.name = "VRFY EXPN HELP NOOP RSET AUTH QUIT",
		.in = { S("VRFY bob\r\nVRFY\r\nEXPN staff\r\nHELP\r\nHELP MAIL\r\nNOOP hello\r\n"
			  "RSET\r\nRSET now\r\nAUTH PLAIN\r\nQUIT\r\nNOOP\r\n") },
		.want_replies = GREET "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n"
			"501 5.5.4 Syntax: VRFY address\r\n" "502 5.5.1 Error: EXPN not supported\r\n"
			"214 2.0.0 See RFC 5321\r\n" "214 2.0.0 See RFC 5321\r\n" OK OK
			"501 5.5.4 Syntax: RSET\r\n" "503 5.5.1 Error: authentication not enabled\r\n" BYE,
		.want_log = "CLOSE@91\nEND wait=3\n",
	},
	{
		.name = "HTTP on the SMTP port",
		.in = { S("POST / HTTP/1.1\r\nHost: x\r\n\r\nQUIT\r\n") },
		.want_replies = GREET "421 4.7.0 " HOST " Error: not an SMTP client\r\n",
		.want_log = "CLOSE@17\nEND wait=3\n",
	},
	/* STARTTLS */
	{
		.name = "STARTTLS drops what was pipelined behind it and forgets the EHLO",
		.in = { S("EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n"),
			S("MAIL FROM:<a@x.test>\r\nEHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<a@x.test>\r\n"
			  "RCPT TO:<b@y.test>\r\nDATA\r\n.\r\n") },
		.want_replies = GREET EHLO_OK "220 2.0.0 Ready to start TLS\r\n"
			"503 5.5.1 Error: send HELO/EHLO first\r\n" EHLO_TLS
			"503 5.5.1 Error: TLS already active\r\n" MAIL_OK RCPT_OK GO QUEUED("Q1"),
		.want_log = "STARTTLS@23\n"
			    "READY@144 from=<a@x.test> rcpts=<b@y.test> body=\"\"\n"
			    "END wait=0\n",
	},
	{
		.name = "STARTTLS refusals",
		.no_starttls = true,
		.in = { S("EHLO c.test\r\nSTARTTLS\r\n") },
		.want_replies = GREET EHLO_TLS "502 5.5.1 Error: command not implemented\r\n",
	},
	{
		.name = "STARTTLS with an argument, then a partial line before it",
		.in = { S("STARTTLS now\r\nSTARTTLS\r\nNOOP"), S("NOOP\r\n") },
		.want_replies = GREET "501 5.5.4 Syntax: STARTTLS\r\n" "220 2.0.0 Ready to start TLS\r\n" OK,
		.want_log = "STARTTLS@24\nEND wait=0\n",
	},
	{
		.name = "tls-require",
		.tls_required = true,
		.in = { S("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\n"),
			S("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n") },
		.want_replies = GREET EHLO_OK "530 5.7.0 Must issue a STARTTLS command first\r\n"
			"220 2.0.0 Ready to start TLS\r\n" EHLO_TLS MAIL_OK,
	},
	/* the shell's events */
	{
		.name = "timeout",
		.in = { S("EHLO c.test\r\nMAIL FR") },
		.finale = FINALE_TIMEOUT,
		.want_replies = GREET EHLO_OK "421 4.4.2 " HOST " Error: timeout exceeded\r\n",
		.want_log = "END wait=3\n",
	},
	{
		.name = "timeout inside DATA",
		.in = { S(START "DATA\r\nabc") },
		.finale = FINALE_TIMEOUT,
		.want_replies = START_OK GO "421 4.4.2 " HOST " Error: timeout exceeded\r\n",
	},
	{
		.name = "shutdown",
		.in = { S("EHLO c.test\r\n") },
		.finale = FINALE_SHUTDOWN,
		.want_replies = GREET EHLO_OK "421 4.3.2 " HOST " Service shutting down\r\n",
	},
	{
		.name = "spool failure, session goes on",
		.commit = COMMIT_FAIL,
		.in = { S(START "DATA\r\nx\r\n.\r\nMAIL FROM:<a@x.test>\r\n") },
		.want_replies = START_OK GO "451 4.3.0 Error: queue file write error\r\n" MAIL_OK,
	},
	{
		.name = "spool full",
		.commit = COMMIT_FULL,
		.in = { S(START "BDAT 1 LAST\r\nxMAIL FROM:<a@x.test>\r\n") },
		.want_replies = START_OK "452 4.3.1 Insufficient system storage\r\n" MAIL_OK,
	},
	{
		.name = "EHLO resets the transaction",
		.in = { S("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nHELO c.test\r\nRCPT TO:<b@y.test>\r\n") },
		.want_replies = GREET EHLO_OK MAIL_OK "250 " HOST "\r\n" "503 5.5.1 Error: need MAIL command\r\n",
	},	/* AUTH (RFC 4954) */
	{
		.name = "AUTH PLAIN with an initial response; EHLO then stops offering AUTH",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\nAUTH PLAIN " PLAIN_ALICE "\r\nEHLO c.test\r\n"
			  "MAIL FROM:<a@x.test> AUTH=<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n") },
		.want_replies = GREET EHLO_AUTH AUTH_OK EHLO_TLS MAIL_OK RCPT_OK GO QUEUED("Q1"),
		.want_log = "AUTH@46 user=\"alice\" pass=\"secret\"\n"
			    "READY@121 from=<a@x.test> rcpts=<b@y.test> body=\"x\\r\\n\"\n"
			    "END wait=0 authenticated\n",
	},
	{
		.name = "AUTH PLAIN after 334, authzid equal to authcid; AUTH twice",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\nauth plain\r\nYWxpY2UAYWxpY2UAc2VjcmV0\r\n"
			  "AUTH PLAIN " PLAIN_ALICE "\r\nAUTH LOGIN\r\nNOOP\r\n") },
		.want_replies = GREET EHLO_AUTH ASK_PLAIN AUTH_OK
			"503 5.5.1 Error: already authenticated\r\n"
			"503 5.5.1 Error: already authenticated\r\n" OK,
		.want_log = "AUTH@51 user=\"alice\" pass=\"secret\"\n"
			    "END wait=0 authenticated\n",
	},
	{
		.name = "AUTH PLAIN refused by the check, then accepted",
		.auth = true,
		.peer_tls = true,
		.verdicts = "ny",
		.in = { S("EHLO c.test\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n"
			  "AUTH PLAIN\r\n" PLAIN_ALICE "  \r\n") },
		.want_replies = GREET EHLO_AUTH AUTH_BAD ASK_PLAIN AUTH_OK,
		.want_log = "AUTH@42 user=\"alice\" pass=\"wrong\"\n"
			    "AUTH@78 user=\"alice\" pass=\"secret\"\n"
			    "END wait=0 authenticated\n",
	},
	{
		.name = "AUTH LOGIN, refused then accepted with an initial response",
		.auth = true,
		.peer_tls = true,
		.verdicts = "ny",
		.in = { S("EHLO c.test\r\nAUTH LOGIN\r\n" B64_ALICE "\r\n" B64_SECRET "\r\n"
			  "AUTH login " B64_ALICE "\n" B64_SECRET "\n") },
		.want_replies = GREET EHLO_AUTH ASK_USER ASK_PASS AUTH_BAD ASK_PASS AUTH_OK,
		.want_log = "AUTH@45 user=\"alice\" pass=\"secret\"\n"
			    "AUTH@74 user=\"alice\" pass=\"secret\"\n"
			    "END wait=0 authenticated\n",
	},
	{
		.name = "AUTH cancelled at every step",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n" B64_ALICE "\r\n*\r\n"
			  "AUTH LOGIN\r\n*  \r\nAUTH LOGIN " B64_ALICE "\r\n*\r\nNOOP\r\n") },
		.want_replies = GREET EHLO_AUTH ASK_PLAIN AUTH_CANCELLED ASK_USER ASK_PASS
			AUTH_CANCELLED ASK_USER AUTH_CANCELLED ASK_PASS AUTH_CANCELLED OK,
		.want_log = "END wait=0\n",
	},
	{
		.name = "AUTH responses that are not base64",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\n"
			  "AUTH PLAIN AGFsaWNlAHNlY3JldA=\r\n"       /* not whole quanta */
			  "AUTH PLAIN AGFsaWNl AHNlY3JldA==\r\n"     /* a space inside */
			  "AUTH PLAIN ====\r\n"
			  "AUTH PLAIN *\r\n"                         /* no cancel in the command */
			  "AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA=x\r\n"   /* padding inside */
			  "AUTH PLAIN\r\nYWxpY2V=\r\n"               /* bits set past the data */
			  "AUTH PLAIN\r\nYWxpYw==\r\n"               /* fine: "alic", no NULs */
			  "AUTH LOGIN\r\nYW@p\r\n"
			  "AUTH LOGIN\r\n" B64_ALICE "\r\nc2Vjc\xc3\xa9V0\r\n"
			  "AUTH PLAIN\r\nAGFsaWNl\0AHNlY3JldA==\r\n"
			  "NOOP\r\n") },
		.want_replies = GREET EHLO_AUTH AUTH_UNDECODABLE AUTH_UNDECODABLE AUTH_UNDECODABLE
			AUTH_UNDECODABLE ASK_PLAIN AUTH_UNDECODABLE ASK_PLAIN AUTH_UNDECODABLE
			ASK_PLAIN AUTH_MALFORMED ASK_USER AUTH_UNDECODABLE ASK_USER ASK_PASS
			AUTH_UNDECODABLE ASK_PLAIN AUTH_UNDECODABLE OK,
		.want_log = "END wait=0\n",
	},
	{
		.name = "AUTH PLAIN messages that decode but do not hold credentials",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\n"
			  "AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n" /* authzid bob, authcid alice */
			  "AUTH PLAIN YWxpY2UAc2VjcmV0\r\n"         /* one NUL */
			  "AUTH PLAIN AGFsaWNlAHNlYwByZXQ=\r\n"     /* three NULs */
			  "AUTH PLAIN AGFsaWNlAA==\r\n"             /* empty password */
			  "AUTH PLAIN AABzZWNyZXQ=\r\n"             /* empty user */
			  "AUTH PLAIN AGFsIGljZQBzZWNyZXQ=\r\n"     /* blank in the user */
			  "AUTH PLAIN AGENCmIAc2VjcmV0\r\n"         /* CR LF in the user */
			  "AUTH PLAIN AGFsf2ljZQBzZWNyZXQ=\r\n"     /* DEL in the user */
			  "AUTH LOGIN YSBi\r\n" B64_SECRET "\r\n"   /* blank in the user */
			  "AUTH PLAIN =\r\n"                        /* empty message */
			  "AUTH PLAIN\r\n=\r\n"
			  "AUTH PLAIN\r\n\r\n"
			  "AUTH LOGIN YWwAaWNl\r\n" B64_SECRET "\r\n" /* NUL in the user */
			  "AUTH LOGIN " B64_ALICE "\r\nYQBi\r\n"    /* NUL in the password */
			  "AUTH LOGIN =\r\n" B64_SECRET "\r\n"      /* empty user */
			  "AUTH LOGIN " B64_ALICE "\r\n\r\n") },    /* empty password */
		.want_replies = GREET EHLO_AUTH AUTH_BAD AUTH_MALFORMED AUTH_MALFORMED AUTH_BAD AUTH_BAD
			AUTH_BAD AUTH_BAD AUTH_BAD ASK_PASS AUTH_BAD AUTH_MALFORMED ASK_PLAIN AUTH_MALFORMED ASK_PLAIN AUTH_MALFORMED
			ASK_PASS AUTH_MALFORMED ASK_PASS AUTH_MALFORMED ASK_PASS AUTH_BAD
			ASK_PASS AUTH_BAD,
		.want_log = "END wait=0\n",
	},
	{
		.name = "AUTH user name in UTF-8 goes to the check",
		.auth = true,
		.peer_tls = true,
		.verdicts = "n",
		.in = { S("EHLO c.test\r\nAUTH PLAIN AMOlc2EAc2VjcmV0\r\n") },
		.want_replies = GREET EHLO_AUTH AUTH_BAD,
		.want_log = "AUTH@42 user=\"\\xc3\\xa5sa\" pass=\"secret\"\n"
			    "END wait=0\n",
	},
	{
		.name = "AUTH before TLS is 538; EHLO offers AUTH only inside TLS",
		.auth = true,
		.in = { S("EHLO c.test\r\nAUTH PLAIN " PLAIN_ALICE "\r\nAUTH FOO\r\n"
			  "MAIL FROM:<a@x.test> AUTH=<>\r\nSTARTTLS\r\n"),
			S("AUTH PLAIN " PLAIN_ALICE "\r\nEHLO c.test\r\nAUTH PLAIN " PLAIN_ALICE "\r\n"
			  "MAIL FROM:<a@x.test> AUTH=<>\r\n") },
		.want_replies = GREET EHLO_OK
			"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
			"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
			"555 5.5.4 Unsupported option: AUTH\r\n"
			"220 2.0.0 Ready to start TLS\r\n"
			"503 5.5.1 Error: send EHLO first\r\n" EHLO_AUTH AUTH_OK MAIL_OK,
		.want_log = "STARTTLS@96\n"
			    "AUTH@175 user=\"alice\" pass=\"secret\"\n"
			    "END wait=0 authenticated\n",
	},
	{
		.name = "AUTH not offered",
		.peer_tls = true,
		.in = { S("EHLO c.test\r\nAUTH PLAIN " PLAIN_ALICE "\r\nAUTH LOGIN\r\n"
			  "MAIL FROM:<a@x.test> AUTH=<>\r\n") },
		.want_replies = GREET EHLO_TLS "503 5.5.1 Error: authentication not enabled\r\n"
			"503 5.5.1 Error: authentication not enabled\r\n"
			"555 5.5.4 Unsupported option: AUTH\r\n",
	},
	{
		.name = "AUTH out of order: before EHLO, after HELO, in a transaction",
		.auth = true,
		.peer_tls = true,
		.in = { S("AUTH PLAIN " PLAIN_ALICE "\r\nHELO c.test\r\nAUTH LOGIN\r\nEHLO c.test\r\n"
			  "MAIL FROM:<a@x.test>\r\nAUTH PLAIN " PLAIN_ALICE "\r\nAUTH LOGIN\r\nRSET\r\n"
			  "AUTH PLAIN " PLAIN_ALICE "\r\n") },
		.want_replies = GREET "503 5.5.1 Error: send EHLO first\r\n" "250 " HOST "\r\n"
			"503 5.5.1 Error: send EHLO first\r\n" EHLO_AUTH MAIL_OK
			"503 5.5.1 Error: AUTH not permitted during a mail transaction\r\n"
			"503 5.5.1 Error: AUTH not permitted during a mail transaction\r\n" OK AUTH_OK,
	},
	{
		.name = "AUTH unknown mechanisms and syntax",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\nAUTH CRAM-MD5\r\nAUTH\r\nAUTH XOAUTH2 dXNlcg==\r\n"
			  "AUTH PLAINX\r\nAUTH  PLAIN\r\n*\r\n") },
		.want_replies = GREET EHLO_AUTH "504 5.5.4 Unrecognized authentication type\r\n"
			"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"
			"504 5.5.4 Unrecognized authentication type\r\n"
			"504 5.5.4 Unrecognized authentication type\r\n" ASK_PLAIN AUTH_CANCELLED,
	},
	{
		.name = "AUTH exchange lines are never commands",
		.auth = true,
		.peer_tls = true,
		.verdicts = "n",
		.in = { S("EHLO c.test\r\nAUTH LOGIN\r\nNOOP\r\nQUIT\r\nAUTH PLAIN\r\nDATA\r\n"
			  "AUTH PLAIN\r\nSTARTTLS\r\nNOOP\r\n") },
		.want_replies = GREET EHLO_AUTH ASK_USER ASK_PASS AUTH_BAD ASK_PLAIN AUTH_MALFORMED
			ASK_PLAIN AUTH_MALFORMED OK,
		.want_log = "AUTH@37 user=\"4\\xe3\\x8f\" pass=\"AB\\x13\"\n"
			    "END wait=0\n",
	},
	{
		.name = "AUTH response at the line limit and one past it",
		.auth = true,
		.peer_tls = true,
		.max_line = 32,
		.verdicts = "n",
		/* 28 base64 characters: "\0alice\0" and a 13-octet password */
		.in = { S("EHLO c.test\r\nAUTH PLAIN\r\nAGFsaWNlAHBhc3N3b3JkLTEyMzQ1  \r\n"
			  "AUTH PLAIN\r\nAGFsaWNlAHBhc3N3b3JkLTEyMzQ1   \r\nNOOP\r\n"
			  "AUTH LOGIN\r\nYWxpY2VhbGljZWFsaWNlYWxpY2VhbGljZWFsaWNl\r\nNOOP\r\n"
			  "AUTH PLAIN AGFsaWNlAHBhc3N3b3JkLTEyMzQ1\r\nNOOP\r\n") },
		.want_replies = GREET EHLO_AUTH ASK_PLAIN AUTH_BAD ASK_PLAIN AUTH_TOO_LONG OK ASK_USER AUTH_TOO_LONG OK
			"500 5.5.2 Error: line too long\r\n" OK,
		.want_log = "AUTH@57 user=\"alice\" pass=\"password-12345\"\n"
			    "END wait=0\n",
	},
	{
		.name = "MAIL AUTH= parameter",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\n"
			  "MAIL FROM:<a@x.test> AUTH=\r\n"
			  "MAIL FROM:<a@x.test> AUTH\r\n"
			  "MAIL FROM:<a@x.test> AUTH=a=b\r\n"
			  "MAIL FROM:<a@x.test> AUTH=a+2\r\n"
			  "MAIL FROM:<a@x.test> AUTH=<> AUTH=<>\r\n"
			  "MAIL FROM:<a@x.test> auth=e+2Bf@x.test SIZE=10\r\n"
			  "RCPT TO:<b@y.test>\r\nDATA\r\n.\r\n") },
		.want_replies = GREET EHLO_AUTH "501 5.5.4 Bad value for AUTH\r\n"
			"501 5.5.4 Bad value for AUTH\r\n" "501 5.5.4 Bad value for AUTH\r\n"
			"501 5.5.4 Bad value for AUTH\r\n" "501 5.5.4 Duplicate parameter: AUTH\r\n"
			MAIL_OK RCPT_OK GO QUEUED("Q1"),
		.want_log = "READY@245 from=<a@x.test> size=10 rcpts=<b@y.test> body=\"\"\n"
			    "END wait=0\n",
	},
	{
		.name = "AUTH failures count toward max errors",
		.auth = true,
		.peer_tls = true,
		.max_errors = 3,
		.verdicts = "nn",
		.in = { S("EHLO c.test\r\nAUTH PLAIN " PLAIN_ALICE "\r\nAUTH LOGIN\r\n*\r\n"
			  "AUTH PLAIN " PLAIN_ALICE "\r\nNOOP\r\n") },
		.want_replies = GREET EHLO_AUTH AUTH_BAD ASK_USER AUTH_CANCELLED AUTH_BAD
			"421 4.7.0 " HOST " Error: too many errors\r\n",
		.want_log = "AUTH@46 user=\"alice\" pass=\"secret\"\n"
			    "AUTH@94 user=\"alice\" pass=\"secret\"\n"
			    "CLOSE@94\n"
			    "END wait=3\n",
	},
	{
		.name = "timeout inside an AUTH exchange",
		.auth = true,
		.peer_tls = true,
		.in = { S("EHLO c.test\r\nAUTH LOGIN\r\nYWxp") },
		.finale = FINALE_TIMEOUT,
		.want_replies = GREET EHLO_AUTH ASK_USER "421 4.4.2 " HOST " Error: timeout exceeded\r\n",
		.want_log = "END wait=3\n",
	},
};

/* ------------------------------------------------- scripts built at run time */

static char *repeat(char c, size_t n)
{
	char *p = malloc(n + 1);
	memset(p, c, n);
	p[n] = '\0';
	return p;
}

/* Run a script whose input is text, with the given expected replies. */
static void check_dynamic(const char *name, const char *input, const char *want,
			  const char *want_log)
{
	struct script sc = { .name = name, .want_replies = want, .want_log = want_log };
	sc.in[0] = (struct seg){ input, strlen(input) };
	check_script(&sc);
}

static void test_message_size_limits(void)
{
	char *x98 = repeat('x', 98), *x99 = repeat('x', 99), *in;
	/* 98 + CRLF = 100 octets: fits exactly. */
	if (asprintf(&in, START "DATA\r\n%s\r\n.\r\n", x98) < 0)
		abort();
	check_dynamic("DATA content exactly max", in, START_OK GO QUEUED("Q1"), NULL);
	free(in);
	/* 99 + CRLF = 101 octets: refused, and the session goes on. */
	if (asprintf(&in, START "DATA\r\n%s\r\n.\r\nMAIL FROM:<a@x.test>\r\n", x99) < 0)
		abort();
	check_dynamic("DATA content max+1", in, START_OK GO TOO_BIG MAIL_OK, NULL);
	free(in);
	/* Stuffed dots do not count: 1 + 97 + CRLF after unstuffing. */
	if (asprintf(&in, START "DATA\r\n..%.97s\r\n.\r\n", x98) < 0)
		abort();
	check_dynamic("DATA content max, dot-stuffed", in, START_OK GO QUEUED("Q1"), NULL);
	free(in);
	/* An oversized message that also has a smuggled end is still closed. */
	if (asprintf(&in, START "DATA\r\n%s%s\n.\nQUIT\r\n", x99, x99) < 0)
		abort();
	check_dynamic("oversize then smuggling", in, START_OK GO SMUGGLED, NULL);
	free(in);
	free(x98);
	free(x99);
}

static void test_path_length(void)
{
	/* "<" + local + "@x.test" + ">" is 256 octets with a 247-octet local part. */
	char *l247 = repeat('l', 247), *l248 = repeat('l', 248), *in;
	if (asprintf(&in, "EHLO c.test\r\nMAIL FROM:<%s@x.test>\r\nRSET\r\nMAIL FROM:<%s@x.test>\r\n"
			  "RCPT TO:<%s@x.test>\r\nRCPT TO:<%s@x.test>\r\n",
		     l247, l248, l247, l248) < 0)
		abort();
	check_dynamic("path length 256 and 257", in,
		      GREET EHLO_OK MAIL_OK OK "501 5.1.7 Bad sender address syntax\r\n"
		      "503 5.5.1 Error: need MAIL command\r\n" "503 5.5.1 Error: need MAIL command\r\n",
		      NULL);
	free(in);
	if (asprintf(&in, "EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<%s@x.test>\r\nRCPT TO:<%s@x.test>\r\n",
		     l247, l248) < 0)
		abort();
	check_dynamic("recipient path length 256 and 257", in,
		      GREET EHLO_OK MAIL_OK RCPT_OK "501 5.1.3 Bad recipient address syntax\r\n", NULL);
	free(in);
	/* ENVID of exactly 100 characters is fine. */
	char *e100 = repeat('e', 100);
	if (asprintf(&in, "EHLO c.test\r\nMAIL FROM:<> ENVID=%s\r\n", e100) < 0)
		abort();
	check_dynamic("ENVID of 100", in, GREET EHLO_OK MAIL_OK, NULL);
	free(in);
	free(e100);
	free(l247);
	free(l248);
}

/* SIZE= at the limit and one past it. */
static void test_size_param(void)
{
	check_dynamic("SIZE=max", "EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=100\r\n",
		      GREET EHLO_OK MAIL_OK, NULL);
	check_dynamic("SIZE=max+1", "EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=101\r\n",
		      GREET EHLO_OK TOO_BIG, NULL);
}

/* ------------------------------------------------------ direct checks */

struct hook_record {
	char verb[32];
	char reply[256];
	unsigned calls;
};

static void record_reject(void *ctx, const char *command, const char *reply)
{
	struct hook_record *r = ctx;
	snprintf(r->verb, sizeof r->verb, "%s", command);
	snprintf(r->reply, sizeof r->reply, "%s", reply);
	r->calls++;
}

static enum smtp_status feed_str(struct smtp_session *s, const char *text, size_t *used,
				 struct buf *out)
{
	return smtp_feed(s, text, strlen(text), used, out);
}

static void test_hooks_and_waiting(void)
{
	struct script sc = { 0 };
	struct smtp_config cfg = config_for(&sc);
	struct smtp_peer peer = peer_for(&sc);
	char line[512];
	struct hook_record rec = { 0 };
	struct smtp_session s;
	struct buf out;
	size_t used;
	buf_init(&out, 0);
	smtp_session_init(&s, &cfg, &peer, line, (struct smtp_hooks){ &rec, record_reject });
	smtp_greeting(&s, &out);
	CHECK(rec.calls == 0);
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_COMMAND);

	CHECK(feed_str(&s, "RCPT TO:<a@b.test>\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK(rec.calls == 1);
	CHECK_STR_EQ(rec.verb, "RCPT");
	CHECK_STR_EQ(rec.reply, "503 5.5.1 Error: need MAIL command");
	CHECK(s.errors == 1);

	CHECK(feed_str(&s, "XYZZY\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK_STR_EQ(rec.verb, "XYZZY");

	CHECK(feed_str(&s, "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nab",
		       &used, &out) == SMTP_NEED_MORE);
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_DATA_BLOCK);
	CHECK(s.in_transaction);
	CHECK(feed_str(&s, "\r\n.\r\nNOOP\r\n", &used, &out) == SMTP_MESSAGE_READY);
	CHECK(used == 5);
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_COMMIT);
	/* Fed again before the verdict: nothing is taken. */
	CHECK(feed_str(&s, "NOOP\r\n", &used, &out) == SMTP_MESSAGE_READY);
	CHECK(used == 0);
	smtp_commit_done(&s, true, false, "ID1", &out);
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_COMMAND);
	CHECK(s.messages == 1);
	CHECK(!s.in_transaction && s.env.mail_from == NULL && s.env.nrcpt == 0 && s.body.len == 0);
	CHECK(s.env.helo && strcmp(s.env.helo, "c.test") == 0);
	CHECK(check_contains(out.data, out.len, "250 2.0.0 Ok: queued as ID1\r\n"));

	CHECK(feed_str(&s, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 10\r\nabc", &used,
		       &out) == SMTP_NEED_MORE);
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_DATA_BLOCK);

	unsigned before = rec.calls;
	smtp_timeout(&s, &out);
	CHECK(rec.calls == before + 1);
	CHECK_STR_EQ(rec.verb, "TIMEOUT");
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_CLOSED);
	size_t len_after_close = out.len;
	CHECK(feed_str(&s, "NOOP\r\n", &used, &out) == SMTP_CLOSE);
	CHECK(used == 0);
	smtp_timeout(&s, &out);
	smtp_shutdown(&s, &out);
	CHECK(out.len == len_after_close);
	smtp_session_free(&s);
	buf_free(&out);
}

/* The verdict for a message whose session timed out while it was being
 * spooled is not sent: nothing follows a 421. */
static void test_commit_after_close(void)
{
	struct script sc = { 0 };
	struct smtp_config cfg = config_for(&sc);
	struct smtp_peer peer = peer_for(&sc);
	char line[512];
	struct smtp_session s;
	struct buf out;
	size_t used;
	buf_init(&out, 0);
	smtp_session_init(&s, &cfg, &peer, line, (struct smtp_hooks){ 0 });
	CHECK(feed_str(&s, START "DATA\r\nx\r\n.\r\n", &used, &out) == SMTP_MESSAGE_READY);
	CHECK(s.body.len == 3 && memcmp(s.body.data, "x\r\n", 3) == 0);
	smtp_timeout(&s, &out);
	/* The spool may still read the message: a timeout must not free it. */
	CHECK(s.body.len == 3 && s.env.nrcpt == 1);
	size_t len = out.len;
	smtp_commit_done(&s, true, false, "ID", &out);
	CHECK(out.len == len);
	smtp_session_free(&s);
	buf_free(&out);
}

/* Bytes after STARTTLS stay unconsumed, in the same feed. */
static void test_starttls_consumed(void)
{
	struct script sc = { 0 };
	struct smtp_config cfg = config_for(&sc);
	struct smtp_peer peer = peer_for(&sc);
	char line[512];
	struct smtp_session s;
	struct buf out;
	size_t used;
	buf_init(&out, 0);
	smtp_session_init(&s, &cfg, &peer, line, (struct smtp_hooks){ 0 });
	const char *in = "EHLO c.test\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<x@y.test>\r\n";
	CHECK(feed_str(&s, in, &used, &out) == SMTP_STARTTLS);
	CHECK(used == strlen("EHLO c.test\r\nSTARTTLS\r\n"));
	/* A shell that feeds again before the handshake gets nothing run. */
	size_t len = out.len;
	CHECK(feed_str(&s, in + used, &used, &out) == SMTP_STARTTLS);
	CHECK(used == 0 && out.len == len);
	peer.tls = true;
	smtp_tls_established(&s);
	CHECK(!s.greeted && s.env.helo == NULL && s.line_len == 0);
	CHECK(feed_str(&s, "EHLO c.test\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK(!check_contains(out.data + len, out.len - len, "STARTTLS"));
	smtp_session_free(&s);
	buf_free(&out);
}

/* The shell's view of an AUTH check: where the input stops, what
 * waiting_for says, the verdict's reply and hook, and what is wiped. */
static void test_auth_check(void)
{
	struct script sc = { .auth = true, .peer_tls = true };
	struct smtp_config cfg = config_for(&sc);
	struct smtp_peer peer = peer_for(&sc);
	char line[512] = { 0 };
	struct hook_record rec = { 0 };
	struct smtp_session s;
	struct buf out;
	size_t used;
	buf_init(&out, 0);
	smtp_session_init(&s, &cfg, &peer, line, (struct smtp_hooks){ &rec, record_reject });
	const char *in = "EHLO c.test\r\nAUTH PLAIN " PLAIN_ALICE "\r\nNOOP\r\n";
	CHECK(feed_str(&s, in, &used, &out) == SMTP_AUTH_CHECK);
	CHECK(used == strlen(in) - strlen("NOOP\r\n"));
	CHECK_STR_EQ(s.auth_user, "alice");
	CHECK_STR_EQ(s.auth_password, "secret");
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_COMMIT);
	size_t len = out.len;
	CHECK(feed_str(&s, "NOOP\r\n", &used, &out) == SMTP_AUTH_CHECK);
	CHECK(used == 0 && out.len == len);
	smtp_auth_done(&s, false, &out);
	CHECK(rec.calls == 1);
	CHECK_STR_EQ(rec.verb, "AUTH");
	CHECK_STR_EQ(rec.reply, "535 5.7.8 Authentication credentials invalid");
	CHECK(s.errors == 1 && !s.authenticated);
	CHECK(all_zero(s.auth_password, sizeof s.auth_password));
	CHECK_STR_EQ(s.auth_user, "alice"); /* kept for the log */
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_COMMAND);

	/* Split across feeds, the line is assembled in the session's buffer:
	 * it is wiped once read. */
	CHECK(feed_str(&s, "NOOP\r\nAUTH PLAIN AGFsaWNl", &used, &out) == SMTP_NEED_MORE);
	CHECK(feed_str(&s, "AHNlY3JldA==\r\n", &used, &out) == SMTP_AUTH_CHECK);
	CHECK(all_zero(line, sizeof line));
	smtp_auth_done(&s, true, &out);
	CHECK(s.authenticated && rec.calls == 1);
	CHECK(all_zero(s.auth_password, sizeof s.auth_password));
	CHECK(check_contains(out.data, out.len, "235 2.7.0 Authentication successful\r\n"));
	/* So is a response line. */
	smtp_tls_established(&s); /* (as if) a new TLS session forgets it all */
	CHECK(!s.authenticated && s.auth_user[0] == '\0');
	CHECK(feed_str(&s, "EHLO c.test\r\nAUTH LOGIN\r\nYWxp", &used, &out) == SMTP_NEED_MORE);
	CHECK(feed_str(&s, "Y2U=\r\nc2Vj", &used, &out) == SMTP_NEED_MORE);
	CHECK(feed_str(&s, "cmV0\r\n", &used, &out) == SMTP_AUTH_CHECK);
	CHECK(all_zero(line, sizeof line));
	CHECK_STR_EQ(s.auth_password, "secret");

	/* Closed while the check runs: the verdict says nothing. */
	smtp_timeout(&s, &out);
	CHECK_STR_EQ(s.auth_password, "secret"); /* the shell may still be reading it */
	len = out.len;
	smtp_auth_done(&s, true, &out);
	CHECK(out.len == len && !s.authenticated);
	CHECK(all_zero(s.auth_password, sizeof s.auth_password));
	CHECK(smtp_waiting_for(&s) == SMTP_WAIT_CLOSED);
	smtp_session_free(&s);
	buf_free(&out);
}

/* RFC 4954 4: exchange lines are bounded by 12288 octets even when the
 * configured line limit is larger; commands keep the configured limit. */
static void test_auth_line_cap(void)
{
	/* Trailing blanks are not part of the response but count toward the
	 * line: 12284 + 2 + CRLF is 12288 octets, one more blank is 12289. */
	char *b64 = repeat('A', 12284), *cmd_long = repeat('x', 15000), *in;
	if (asprintf(&in, "EHLO c.test\r\nAUTH PLAIN\r\n%s  \r\nAUTH PLAIN\r\n%s   \r\n"
			  "NOOP %s\r\n", b64, b64, cmd_long) < 0)
		abort();
	struct script sc = {
		.name = "AUTH line cap at 12288",
		.auth = true,
		.peer_tls = true,
		.max_line = 20000,
		/* 12284 'A's decode to 9213 zero octets: a well-formed line
		 * whose content is too long to be credentials. */
		.want_replies = GREET EHLO_AUTH ASK_PLAIN AUTH_BAD ASK_PLAIN AUTH_TOO_LONG OK,
	};
	sc.in[0] = (struct seg){ in, strlen(in) };
	check_script(&sc);
	free(in);
	free(b64);
	free(cmd_long);
}

/* The pause hook: asked at MAIL only; a transaction begun before the
 * pause finishes; the next MAIL gets 421 4.3.2 and the session closes. The
 * state names follow the session. */
struct pause_record {
	struct hook_record rec;
	bool paused;
	unsigned asked;
};

static void pause_reject(void *ctx, const char *command, const char *reply)
{
	record_reject(&((struct pause_record *)ctx)->rec, command, reply);
}

static bool pause_asked(void *ctx)
{
	struct pause_record *p = ctx;
	p->asked++;
	return p->paused;
}

static void test_paused(void)
{
	struct script sc = { 0 };
	struct smtp_config cfg = config_for(&sc);
	struct smtp_peer peer = peer_for(&sc);
	char line[512] = { 0 };
	struct pause_record pr = { 0 };
	struct smtp_session s;
	struct buf out;
	size_t used;
	buf_init(&out, 0);
	smtp_session_init(&s, &cfg, &peer, line,
			  (struct smtp_hooks){ .ctx = &pr, .reject = pause_reject,
					       .paused = pause_asked });
	smtp_greeting(&s, &out);
	CHECK_STR_EQ(smtp_state_name(&s), "greeting");
	CHECK(feed_str(&s, "EHLO c.test\r\nNOOP\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK(pr.asked == 0);
	CHECK_STR_EQ(smtp_state_name(&s), "ehlo");
	CHECK(feed_str(&s, "MAIL FROM:<a@x.test>\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK(pr.asked == 1);
	CHECK_STR_EQ(smtp_state_name(&s), "mail");
	pr.paused = true; /* paused inside the transaction: it finishes */
	CHECK(feed_str(&s, "RCPT TO:<b@y.test>\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK_STR_EQ(smtp_state_name(&s), "rcpt");
	CHECK(feed_str(&s, "DATA\r\nx\r\n", &used, &out) == SMTP_NEED_MORE);
	CHECK_STR_EQ(smtp_state_name(&s), "data");
	CHECK(feed_str(&s, ".\r\n", &used, &out) == SMTP_MESSAGE_READY);
	CHECK_STR_EQ(smtp_state_name(&s), "commit");
	smtp_commit_done(&s, true, false, "ID1", &out);
	CHECK(pr.rec.calls == 0 && pr.asked == 1);
	size_t len = out.len;
	CHECK(feed_str(&s, "MAIL FROM:<a@x.test>\r\nNOOP\r\n", &used, &out) == SMTP_CLOSE);
	CHECK(used == strlen("MAIL FROM:<a@x.test>\r\n"));
	CHECK(pr.asked == 2 && pr.rec.calls == 1);
	CHECK_STR_EQ(pr.rec.verb, "MAIL");
	CHECK_STR_EQ(pr.rec.reply, "421 4.3.2 " HOST " Service paused, try again later");
	CHECK(out.len - len == strlen(pr.rec.reply) + 2 &&
	      memcmp(out.data + len, pr.rec.reply, out.len - len - 2) == 0);
	CHECK_STR_EQ(smtp_state_name(&s), "closed");
	smtp_session_free(&s);
	buf_free(&out);
}

int main(void)
{
	test_policy = policy_make();
	CHECK(test_policy != NULL);
	for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++)
		check_script(&scripts[i]);
	test_message_size_limits();
	test_path_length();
	test_size_param();
	test_hooks_and_waiting();
	test_commit_after_close();
	test_starttls_consumed();
	test_auth_check();
	test_auth_line_cap();
	test_paused();
	policy_free(test_policy);
	return check_report("test_smtp");
}
