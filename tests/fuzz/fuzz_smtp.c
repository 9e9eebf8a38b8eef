/* fuzz_smtp: a whole SMTP session from the fuzzer's bytes.
 *
 * Byte 0 picks the configuration, byte 1 how the input is cut into feeds
 * (and whether AUTH is offered); the rest is what the client sends. The
 * harness plays the I/O shell: it commits every ready message, completes
 * every STARTTLS handshake (and drops what was pipelined behind it),
 * answers every AUTH check (accepted and refused in turn), and at the end
 * may time out. Any broken invariant aborts:
 *   - every reply line is "[2-5]xx" then ' ' or '-', and ends in CRLF;
 *   - every 2xx/4xx/5xx reply carries an enhanced status code of its class,
 *     except the banner and the EHLO/HELO greeting lines, which have none
 *     by design (RFC 2034), and 354, which has no class to carry;
 *   - a multi-line reply continues with the same code;
 *   - nothing is ever said after a 221, 421 or 521;
 *   - the reject hook is called once per 4xx/5xx line;
 *   - recipients and stored content stay within their limits;
 *   - credentials are asked for only inside TLS with AUTH offered, come
 *     NUL-terminated within their buffers, are not consumed past until the
 *     verdict, and the password is wiped after it; there is one 235 per
 *     accepted check and none when AUTH is not offered. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "policy.h"
#include "smtp.h"

#define HOST "fuzz.test"

struct fuzz_run {
	struct smtp_config cfg;
	struct smtp_peer peer;
	struct smtp_session s;
	struct buf out;
	unsigned rejects;
	unsigned commit_mode;
	unsigned commits;
	unsigned auth_checks;
	unsigned auth_accepted;
};

static void count_reject(void *ctx, const char *command, const char *reply)
{
	struct fuzz_run *r = ctx;
	if (!command || !command[0] || !reply || (reply[0] != '4' && reply[0] != '5'))
		abort();
	r->rejects++;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* "D.D{1,3}.D{1,3} " with D the class of the reply code. */
static bool has_enhanced_code(const char *text, size_t n, char class)
{
	size_t i = 0;
	if (n < 6 || text[0] != class || text[1] != '.')
		return false;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < n && is_digit(text[i]))
			i++;
		if (i == start || i - start > 3)
			return false;
		if (part == 0 && (i >= n || text[i++] != '.'))
			return false;
	}
	return i < n && text[i] == ' ';
}

/* Lines that by design have no enhanced code (RFC 2034 3: the greeting
 * and the EHLO/HELO replies). */
static bool is_greeting_line(const char *l, size_t n)
{
	static const char banner[] = "220 " HOST " ESMTP mxd";
	static const char helo[] = "250 " HOST;
	static const char help[] = "250 HELP";
	if (n >= 4 && memcmp(l, "250-", 4) == 0)
		return true;
	return (n == sizeof banner - 1 && memcmp(l, banner, n) == 0) ||
	       (n == sizeof helo - 1 && memcmp(l, helo, n) == 0) ||
	       (n == sizeof help - 1 && memcmp(l, help, n) == 0);
}

static void check_replies(const struct fuzz_run *r)
{
	const char *p = r->out.data;
	size_t n = r->out.len, i = 0;
	unsigned negative = 0, accepted = 0;
	bool continued = false;
	char code[3] = { 0 };
	while (i < n) {
		const char *lf = memchr(p + i, '\n', n - i);
		if (!lf)
			abort(); /* every reply ends in CRLF */
		const char *l = p + i;
		size_t len = (size_t)(lf - l); /* without LF */
		if (len < 5 || l[len - 1] != '\r' || memchr(l, '\r', len - 1))
			abort();
		len--; /* without CR */
		if (l[0] < '2' || l[0] > '5' || !is_digit(l[1]) || !is_digit(l[2]) ||
		    (l[3] != ' ' && l[3] != '-'))
			abort();
		if (continued && memcmp(code, l, 3) != 0)
			abort();
		memcpy(code, l, 3);
		continued = l[3] == '-';
		/* 3xx replies are not final, and RFC 3463 codes have no class 3. */
		if (l[0] != '3' && !is_greeting_line(l, len) &&
		    !has_enhanced_code(l + 4, len - 4, l[0]))
			abort();
		if (l[0] == '4' || l[0] == '5')
			negative++;
		if (memcmp(l, "235", 3) == 0)
			accepted++;
		if (!r->cfg.auth_offered && (memcmp(l, "334", 3) == 0 || memcmp(l, "235", 3) == 0))
			abort();
		i += len + 2;
		bool closing = !continued && (memcmp(l, "221", 3) == 0 || memcmp(l, "421", 3) == 0 ||
					      memcmp(l, "521", 3) == 0);
		if (closing && i != n)
			abort();
	}
	if (continued || negative != r->rejects || accepted != r->auth_accepted)
		abort();
}

static void check_limits(const struct fuzz_run *r)
{
	if (r->s.env.nrcpt > r->cfg.max_recipients || r->s.body.len > r->cfg.max_message_size)
		abort();
}

static volatile unsigned char body_sink;

static void message_ready(struct fuzz_run *r)
{
	const struct smtp_envelope *env = &r->s.env;
	if (smtp_waiting_for(&r->s) != SMTP_WAIT_COMMIT || !env->mail_from || env->nrcpt == 0 ||
	    !r->s.greeted)
		abort();
	/* Touch the whole message so ASan sees any stale byte. */
	unsigned char sum = 0;
	for (size_t i = 0; i < r->s.body.len; i++)
		sum += (unsigned char)r->s.body.data[i];
	body_sink = sum;
	for (uint32_t i = 0; i < env->nrcpt; i++)
		if (!env->rcpts[i].addr || strlen(env->rcpts[i].addr) > 256)
			abort();
	/* ok, write error, spool full, ok, ... */
	unsigned mode = (r->commit_mode + r->commits++) % 3;
	smtp_commit_done(&r->s, mode == 0, mode == 2, "FUZZ1", &r->out);
}

static bool all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* The shell's side of SMTP_AUTH_CHECK. rest is the unconsumed input. */
static void auth_check(struct fuzz_run *r, const char *rest, size_t rest_len)
{
	struct smtp_session *s = &r->s;
	if (!r->peer.tls || !r->cfg.auth_offered || s->authenticated || s->in_transaction ||
	    !s->greeted || smtp_waiting_for(s) != SMTP_WAIT_COMMIT)
		abort();
	const char *user_end = memchr(s->auth_user, '\0', sizeof s->auth_user);
	const char *pass_end = memchr(s->auth_password, '\0', sizeof s->auth_password);
	if (!user_end || !pass_end || user_end == s->auth_user || pass_end == s->auth_password)
		abort();
	/* Fed again before the verdict: nothing taken, nothing said. */
	size_t used = 1, len = r->out.len;
	if (smtp_feed(s, rest, rest_len, &used, &r->out) != SMTP_AUTH_CHECK || used != 0 ||
	    r->out.len != len)
		abort();
	bool ok = (r->commit_mode + r->auth_checks++) % 2 == 0;
	smtp_auth_done(s, ok, &r->out);
	if (!all_zero(s->auth_password, sizeof s->auth_password) || s->authenticated != ok ||
	    smtp_waiting_for(s) == SMTP_WAIT_COMMIT)
		abort();
	if (ok) {
		r->auth_accepted++;
		r->peer.authenticated = true;
		memcpy(r->peer.auth_user, s->auth_user, sizeof r->peer.auth_user);
	}
}

/* Feed one piece; false once the session is over. *drop is set when the
 * rest of the piece must be thrown away (it was pipelined behind STARTTLS). */
static bool feed_piece(struct fuzz_run *r, const char *p, size_t n)
{
	size_t pos = 0;
	while (pos <= n) {
		size_t used = 0;
		enum smtp_status st = smtp_feed(&r->s, p + pos, n - pos, &used, &r->out);
		if (used > n - pos)
			abort();
		pos += used;
		check_limits(r);
		switch (st) {
		case SMTP_NEED_MORE:
			if (pos != n)
				abort();
			return true;
		case SMTP_MESSAGE_READY:
			message_ready(r);
			break;
		case SMTP_STARTTLS:
			if (r->peer.tls)
				abort();
			r->peer.tls = true;
			r->peer.authenticated = false;
			smtp_tls_established(&r->s);
			if (r->s.authenticated)
				abort();
			return true; /* the shell discards the rest */
		case SMTP_AUTH_CHECK:
			auth_check(r, p + pos, n - pos);
			break;
		case SMTP_CLOSE:
			if (smtp_waiting_for(&r->s) != SMTP_WAIT_CLOSED)
				abort();
			return false;
		}
	}
	abort();
}

/* The real policy: example.com is ours and only alice exists there. */
static const struct policy *fuzz_policy(void)
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
	static struct conf c = { .path = "fuzz", .tables = tables, .ntables = 2,
				 .rules = rules, .nrules = 1 };
	static struct policy *p;
	if (!p && !(p = policy_build(&c, NULL)))
		abort();
	return p;
}

/* flags: 0x01 accept bare newlines, 0x02 STARTTLS offered, 0x04 TLS
 * required, 0x08 client already in TLS, 0x10 first commit fails, 0x20
 * recipients go through the policy, 0x40 max-errors 5, 0x80 small limits. */
static void configure(struct fuzz_run *r, uint8_t flags)
{
	bool small = flags & 0x80;
	r->cfg = (struct smtp_config){
		.hostname = HOST,
		.max_line_length = small ? 64 : 1000,
		.max_message_size = small ? 200 : 100000,
		.max_recipients = small ? 3 : 100,
		.max_errors = (flags & 0x40) ? 5 : 0,
		.accept_bare_newlines = flags & 0x01,
		.starttls_offered = flags & 0x02,
		.tls_required = flags & 0x04,
		.policy = (flags & 0x20) ? fuzz_policy() : NULL,
	};
	memset(&r->peer, 0, sizeof r->peer);
	memcpy(r->peer.addr_str, "192.0.2.7", 10);
	r->peer.tls = flags & 0x08;
	r->commit_mode = (flags & 0x10) ? 1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	static struct fuzz_run r;
	configure(&r, data[0]);
	uint8_t cut = data[1];
	const char *in = (const char *)data + 2;
	size_t n = size - 2;

	char *line = malloc(r.cfg.max_line_length);
	if (!line)
		return 0;
	/* cut bit 2 clear (cut 0, a single feed, included): AUTH offered. */
	r.cfg.auth_offered = !(cut & 0x04);
	r.rejects = 0;
	r.commits = 0;
	r.auth_checks = 0;
	r.auth_accepted = 0;
	buf_init(&r.out, 0);
	smtp_session_init(&r.s, &r.cfg, &r.peer, line, (struct smtp_hooks){ &r, count_reject });
	smtp_greeting(&r.s, &r.out);

	/* cut 0: one feed; otherwise pieces of varying length from 1 to cut. */
	uint32_t lcg = cut;
	size_t at = 0;
	bool open = true;
	while (open && at < n) {
		size_t piece = n - at;
		if (cut) {
			lcg = lcg * 1103515245u + 12345u;
			size_t want = 1 + (lcg >> 16) % cut;
			piece = want < piece ? want : piece;
		}
		open = feed_piece(&r, in + at, piece);
		at += piece;
	}
	if (open && (cut & 1))
		smtp_timeout(&r.s, &r.out);
	else if (open && (cut & 2))
		smtp_shutdown(&r.s, &r.out);
	check_replies(&r);
	if (smtp_waiting_for(&r.s) == SMTP_WAIT_CLOSED) {
		/* Closed means closed: nothing taken, nothing said. */
		size_t len = r.out.len, used = 1;
		if (smtp_feed(&r.s, "NOOP\r\n", 6, &used, &r.out) != SMTP_CLOSE || used != 0 ||
		    r.out.len != len)
			abort();
	}
	smtp_session_free(&r.s);
	buf_free(&r.out);
	free(line);
	return 0;
}
