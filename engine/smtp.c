/* smtp: the server side of RFC 5321 as a pure, incremental state machine.
 *
 * Three readers share the input: the command reader (lines, kept across
 * feeds in s->line), the DATA scanner (a byte-level state machine with no
 * line buffer, so a message streams straight into s->body whatever the
 * split of the input) and the BDAT reader (exact byte counts, RFC 3030).
 * Each consumes what belongs to it and hands over to the next by changing
 * s->state; smtp_feed() just loops until the input is used up or the
 * caller has something to act on.
 *
 * Nothing here reads the clock, a socket or a file. */
#include "smtp.h"

#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

/* RFC 5321 4.5.3.1.3: a path, "<" and ">" included. */
#define SMTP_PATH_MAX 256
/* RFC 3461 4.4 and 4.2: ENVID= and ORCPT= lengths. */
#define SMTP_ENVID_MAX 100
#define SMTP_ORCPT_MAX 500
/* After a large message, give memory back rather than keep it per session. */
#define SMTP_BODY_KEEP (64u * 1024u)
/* Longest reply line we format (an address is at most 256 octets). */
#define SMTP_REPLY_MAX 1024
/* The shortest command line that still fits "QUIT\r\n" and friends. */
#define SMTP_MIN_LINE_LENGTH 8
/* RFC 4954 4: the longest line of an AUTH exchange a server must take.
 * The configured line limit applies when it is smaller. */
#define SMTP_AUTH_LINE_MAX 12288
/* RFC 4954 5: AUTH= on MAIL is an xtext-encoded mailbox (or "<>"). */
#define SMTP_AUTH_PARAM_MAX 500
/* Credentials that fit the session's buffers (NUL excluded). */
#define SMTP_AUTH_USER_MAX 255
#define SMTP_AUTH_PASSWORD_MAX 1023
/* The longest PLAIN message that can carry them: authzid (at most as long
 * as the authcid it must equal), NUL, authcid, NUL, password. */
#define SMTP_AUTH_PLAIN_MAX (SMTP_AUTH_USER_MAX + 1 + SMTP_AUTH_USER_MAX + 1 + SMTP_AUTH_PASSWORD_MAX)

_Static_assert(sizeof(((struct smtp_session *)0)->auth_user) == SMTP_AUTH_USER_MAX + 1,
	       "auth_user holds SMTP_AUTH_USER_MAX octets and a NUL");
_Static_assert(sizeof(((struct smtp_session *)0)->auth_password) == SMTP_AUTH_PASSWORD_MAX + 1,
	       "auth_password holds SMTP_AUTH_PASSWORD_MAX octets and a NUL");

/* A slice of the input; nothing in the command reader is NUL-terminated. */
struct span {
	const char *p;
	size_t n;
};

/* ---------------------------------------------------------------- replies */

enum reply_kind {
	REPLY_NORMAL,       /* a 4xx/5xx counts toward max_errors */
	REPLY_SERVER_FAULT, /* our fault (spool): logged, not held against the client */
	REPLY_CLOSING,      /* 221/421/521: the last thing the session ever says */
};

static bool reply_is_negative(const char *text)
{
	return text[0] == '4' || text[0] == '5';
}

/* Reply text may quote what the client sent (an address, a parameter):
 * only printable ASCII reaches the wire and the log, so no control byte
 * and no half of a UTF-8 sequence can be injected into either. */
static void reply_sanitize(char *text)
{
	for (char *c = text; *c; c++)
		if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
			*c = '?';
}

static void reply_append(struct buf *out, const char *text)
{
	/* A full output buffer is the shell's limit to enforce; the session
	 * state stays correct either way. */
	(void)buf_append_str(out, text);
	(void)buf_append(out, "\r\n", 2);
}

/* Where an AUTH exchange is. While it is not AUTH_IDLE, the command
 * reader's lines are responses to a 334 challenge, never commands. */
enum auth_step {
	AUTH_IDLE = 0,
	AUTH_PLAIN_RESPONSE,  /* "334 " sent: the PLAIN message comes next */
	AUTH_LOGIN_USER,      /* "334 VXNlcm5hbWU6" (Username:) sent */
	AUTH_LOGIN_PASSWORD,  /* "334 UGFzc3dvcmQ6" (Password:) sent */
	AUTH_CHECK,           /* credentials complete, waiting for smtp_auth_done */
};

/* A LOGIN username that cannot be right is only refused once the password
 * line has been read: refusing it at once would leave the password to be
 * read, and logged, as a command. */
enum auth_deferred {
	AUTH_DEFER_NONE = 0,
	AUTH_DEFER_MALFORMED, /* NUL inside: 501 */
	AUTH_DEFER_INVALID,   /* too long to be any user's: 535 */
};

/* The exchange is over without a check: nothing secret stays behind. */
static void auth_end(struct smtp_session *s)
{
	s->auth_step = AUTH_IDLE;
	s->auth_deferred = AUTH_DEFER_NONE;
	explicit_bzero(s->auth_password, sizeof s->auth_password);
}

static void session_close(struct smtp_session *s)
{
	s->state = SMTP_S_CLOSED;
	s->line_len = 0;
	s->line_overflow = false;
	/* Credentials handed to the shell stay until smtp_auth_done (it may
	 * be reading them); an exchange still in progress is dropped. */
	if (s->auth_step != AUTH_CHECK)
		auth_end(s);
}

static void vreply(struct smtp_session *s, struct buf *out, const char *verb,
		   enum reply_kind kind, const char *fmt, va_list ap)
{
	assert(s->state != SMTP_S_CLOSED);
	char text[SMTP_REPLY_MAX];
	vsnprintf(text, sizeof text, fmt, ap);
	reply_sanitize(text);
	reply_append(out, text);
	if (reply_is_negative(text) && s->hooks.reject)
		s->hooks.reject(s->hooks.ctx, verb, text);
	if (kind == REPLY_CLOSING) {
		session_close(s);
		return;
	}
	if (kind != REPLY_NORMAL || !reply_is_negative(text))
		return;
	s->errors++;
	if (s->cfg->max_errors && s->errors >= s->cfg->max_errors) {
		snprintf(text, sizeof text, "421 4.7.0 %s Error: too many errors", s->cfg->hostname);
		reply_sanitize(text);
		reply_append(out, text);
		if (s->hooks.reject)
			s->hooks.reject(s->hooks.ctx, verb, text);
		session_close(s);
	}
}

static void reply(struct smtp_session *s, struct buf *out, const char *verb, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void reply(struct smtp_session *s, struct buf *out, const char *verb, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreply(s, out, verb, REPLY_NORMAL, fmt, ap);
	va_end(ap);
}

static void reply_as(struct smtp_session *s, struct buf *out, const char *verb,
		       enum reply_kind kind, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void reply_as(struct smtp_session *s, struct buf *out, const char *verb,
		       enum reply_kind kind, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreply(s, out, verb, kind, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------ transaction */

enum bdat_refusal {
	BDAT_ACCEPTED = 0,
	BDAT_NEED_MAIL,
	BDAT_NO_RCPT,
	BDAT_TRANSACTION_FAILED,
	BDAT_OVERSIZE,
};

/* DATA scanner states. LINE_START is 0 so a reset session starts there:
 * the 354 reply follows a CRLF-terminated DATA line. */
enum data_scan {
	SCAN_LINE_START = 0,  /* after CRLF: a '.' here is stuffing or the end */
	SCAN_TEXT,            /* inside a line */
	SCAN_CR,              /* CR inside a line; the next byte says if it is bare */
	SCAN_DOT,             /* '.' at a line start */
	SCAN_DOT_CR,          /* ".\r" at a line start: LF ends the message */
	SCAN_BARE_LINE_START, /* after a bare CR or LF (only when refusing them) */
	SCAN_BARE_DOT,        /* '.' after a bare CR or LF (only when refusing them) */
};

static void envelope_clear_transaction(struct smtp_envelope *env)
{
	free(env->mail_from);
	free(env->envid);
	for (uint32_t i = 0; i < env->nrcpt; i++) {
		free(env->rcpts[i].addr);
		free(env->rcpts[i].orcpt);
	}
	free(env->rcpts);
	env->mail_from = NULL;
	env->envid = NULL;
	env->rcpts = NULL;
	env->nrcpt = 0;
	env->rcpt_cap = 0;
	env->size_param = 0;
	env->body_type = SMTP_BODY_7BIT;
	env->smtputf8 = false;
	env->ret = SMTP_RET_NONE;
	env->chunking = false;
}

/* Forget the transaction (RSET, EHLO, end of message); the greeting stays. */
static void transaction_reset(struct smtp_session *s)
{
	envelope_clear_transaction(&s->env);
	buf_shrink(&s->body, SMTP_BODY_KEEP);
	s->in_transaction = false;
	s->data_state = SCAN_LINE_START;
	s->data_tainted = false;
	s->data_oversize = false;
	s->data_store_failed = false;
	s->bdat_remaining = 0;
	s->bdat_chunk_size = 0;
	s->bdat_last = false;
	s->bdat_failed = false;
	s->bdat_refusal = BDAT_ACCEPTED;
}

static void greeting_forget(struct smtp_session *s)
{
	free(s->env.helo);
	s->env.helo = NULL;
	s->env.esmtp = false;
	s->greeted = false;
}

/* Append message content, or note why it cannot be kept. Content past the
 * limit is still read (to find the end) but never stored. */
static void content_store(struct smtp_session *s, const char *p, size_t n)
{
	if (s->data_oversize || s->data_store_failed || n == 0)
		return;
	if (n > s->cfg->max_message_size - s->body.len) {
		s->data_oversize = true;
		return;
	}
	if (buf_append(&s->body, p, n) < 0)
		s->data_store_failed = true;
	assert(s->body.len <= s->cfg->max_message_size);
}

/* ------------------------------------------------------------- lexing */

static bool span_ieq(struct span a, const char *lit)
{
	size_t n = strlen(lit);
	return a.n == n && strncasecmp(a.p, lit, n) == 0;
}

static bool span_has_iprefix(struct span a, const char *lit)
{
	size_t n = strlen(lit);
	return a.n >= n && strncasecmp(a.p, lit, n) == 0;
}

static struct span span_skip_spaces(struct span a)
{
	while (a.n && a.p[0] == ' ') {
		a.p++;
		a.n--;
	}
	return a;
}

static struct span span_from(struct span a, size_t at)
{
	assert(at <= a.n);
	return (struct span){ a.p + at, a.n - at };
}

/* Length of the next token: everything up to a space. */
static size_t token_len(struct span a)
{
	const char *sp = memchr(a.p, ' ', a.n);
	return sp ? (size_t)(sp - a.p) : a.n;
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_hex(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 5322 atext, without the UTF-8 extension (handled by the caller). */
static bool is_atext(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* Length of one well-formed UTF-8 sequence of 2..4 bytes at p, 0 if the
 * bytes are not one (overlong forms, surrogates and > U+10FFFF refused). */
static size_t utf8_sequence_len(const unsigned char *p, size_t avail)
{
	unsigned char c = p[0];
	size_t len;
	uint32_t cp;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (avail < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* "digits only, at most 20, no overflow" (SIZE=, BDAT). */
static bool parse_u64(struct span v, uint64_t *out)
{
	if (v.n == 0 || v.n > 20)
		return false;
	uint64_t value = 0;
	for (size_t i = 0; i < v.n; i++) {
		unsigned char c = (unsigned char)v.p[i];
		if (!is_digit(c))
			return false;
		uint64_t d = (uint64_t)(c - '0');
		if (value > (UINT64_MAX - d) / 10)
			return false;
		value = value * 10 + d;
	}
	*out = value;
	return true;
}

/* RFC 3461 4: xtext = *( xchar / hexchar ), xchar = 33..126 but '+' '='. */
static bool is_xtext(struct span v)
{
	for (size_t i = 0; i < v.n; i++) {
		unsigned char c = (unsigned char)v.p[i];
		if (c == '+') {
			if (v.n - i < 3)
				return false;
			if (!is_hex((unsigned char)v.p[i + 1]) || !is_hex((unsigned char)v.p[i + 2]))
				return false;
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

/* ------------------------------------------------------------- addresses */

struct path_cursor {
	const unsigned char *p;
	size_t n;
	size_t i;
	bool non_ascii;
};

static bool cursor_at(const struct path_cursor *c, unsigned char want)
{
	return c->i < c->n && c->p[c->i] == want;
}

/* One non-ASCII UTF-8 character, when the grammar allows it (RFC 6531). */
static bool cursor_take_utf8(struct path_cursor *c)
{
	size_t len = utf8_sequence_len(c->p + c->i, c->n - c->i);
	if (len == 0)
		return false;
	c->i += len;
	c->non_ascii = true;
	return true;
}

/* sub-domain = let-dig [ldh-str], or a U-label. */
static bool cursor_take_label(struct path_cursor *c)
{
	size_t start = c->i;
	while (c->i < c->n) {
		unsigned char ch = c->p[c->i];
		if (is_alpha(ch) || is_digit(ch) || ch == '-')
			c->i++;
		else if (ch >= 0x80 && cursor_take_utf8(c))
			continue;
		else
			break;
	}
	size_t len = c->i - start;
	return len > 0 && len <= 63 && c->p[start] != '-' && c->p[c->i - 1] != '-';
}

static bool cursor_take_domain(struct path_cursor *c)
{
	if (!cursor_take_label(c))
		return false;
	while (cursor_at(c, '.')) {
		c->i++;
		if (!cursor_take_label(c))
			return false;
	}
	return true;
}

static bool address_literal_ok(const unsigned char *p, size_t n)
{
	char text[64];
	if (n >= 5 && strncasecmp((const char *)p, "IPv6:", 5) == 0) {
		struct in6_addr a6;
		if (n - 5 >= sizeof text)
			return false;
		memcpy(text, p + 5, n - 5);
		text[n - 5] = '\0';
		return inet_pton(AF_INET6, text, &a6) == 1;
	}
	const unsigned char *colon = memchr(p, ':', n);
	if (colon) {
		/* General-address-literal: Standardized-tag ":" 1*dcontent. */
		size_t tag = (size_t)(colon - p);
		if (tag == 0 || p[0] == '-' || p[tag - 1] == '-' || tag + 1 == n)
			return false;
		for (size_t i = 0; i < tag; i++)
			if (!is_alpha(p[i]) && !is_digit(p[i]) && p[i] != '-')
				return false;
		for (size_t i = tag + 1; i < n; i++)
			if (p[i] < 33 || p[i] > 126 || p[i] == '[' || p[i] == '\\' || p[i] == ']')
				return false;
		return true;
	}
	struct in_addr a4;
	if (n >= sizeof text)
		return false;
	memcpy(text, p, n);
	text[n] = '\0';
	return inet_pton(AF_INET, text, &a4) == 1;
}

static bool cursor_take_address_literal(struct path_cursor *c)
{
	assert(cursor_at(c, '['));
	size_t start = ++c->i;
	while (c->i < c->n && c->p[c->i] != ']')
		c->i++;
	if (c->i == c->n)
		return false;
	bool ok = address_literal_ok(c->p + start, c->i - start);
	c->i++;
	return ok;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE */
static bool cursor_take_quoted(struct path_cursor *c)
{
	assert(cursor_at(c, '"'));
	c->i++;
	while (c->i < c->n) {
		unsigned char ch = c->p[c->i];
		if (ch == '"') {
			c->i++;
			return true;
		}
		if (ch == '\\') {
			if (c->i + 1 >= c->n || c->p[c->i + 1] < 32 || c->p[c->i + 1] > 126)
				return false;
			c->i += 2;
		} else if (ch >= 32 && ch <= 126) {
			c->i++;
		} else if (ch < 0x80 || !cursor_take_utf8(c)) {
			return false;
		}
	}
	return false;
}

/* Dot-string = Atom *("." Atom) */
static bool cursor_take_dot_string(struct path_cursor *c)
{
	for (;;) {
		size_t start = c->i;
		while (c->i < c->n) {
			unsigned char ch = c->p[c->i];
			if (is_atext(ch))
				c->i++;
			else if (ch >= 0x80 && cursor_take_utf8(c))
				continue;
			else
				break;
		}
		if (c->i == start)
			return false;
		if (!cursor_at(c, '.'))
			return true;
		c->i++;
	}
}

/* A-d-l = At-domain *( "," At-domain ) ":" — parsed only to be dropped
 * (RFC 5321 4.1.1.3: servers ignore source routes). */
static bool cursor_skip_source_route(struct path_cursor *c)
{
	for (;;) {
		if (!cursor_at(c, '@'))
			return false;
		c->i++;
		if (!cursor_take_domain(c))
			return false;
		if (cursor_at(c, ':')) {
			c->i++;
			return true;
		}
		if (!cursor_at(c, ','))
			return false;
		c->i++;
	}
}

enum path_kind { PATH_REVERSE, PATH_FORWARD };

struct path {
	struct span mailbox; /* without <> and source route; empty for <> */
	size_t used;         /* bytes of the input the path took */
	bool non_ascii;
};

static bool is_postmaster(const unsigned char *p, size_t n)
{
	return n == 10 && strncasecmp((const char *)p, "postmaster", 10) == 0;
}

static bool parse_path(struct span in, enum path_kind kind, struct path *out)
{
	struct path_cursor c = { (const unsigned char *)in.p, in.n, 0, false };
	if (!cursor_at(&c, '<'))
		return false;
	c.i++;
	if (cursor_at(&c, '>')) {
		if (kind != PATH_REVERSE)
			return false;
		*out = (struct path){ { in.p + 1, 0 }, 2, false };
		return true;
	}
	if (cursor_at(&c, '@') && !cursor_skip_source_route(&c))
		return false;
	size_t mailbox_start = c.i;
	bool local_ok = cursor_at(&c, '"') ? cursor_take_quoted(&c) : cursor_take_dot_string(&c);
	if (!local_ok)
		return false;
	bool bare_postmaster = kind == PATH_FORWARD && cursor_at(&c, '>') &&
			       is_postmaster(c.p + mailbox_start, c.i - mailbox_start);
	if (!bare_postmaster) {
		if (!cursor_at(&c, '@'))
			return false;
		c.i++;
		bool domain_ok = cursor_at(&c, '[') ? cursor_take_address_literal(&c)
						    : cursor_take_domain(&c);
		if (!domain_ok)
			return false;
	}
	if (!cursor_at(&c, '>'))
		return false;
	size_t mailbox_end = c.i++;
	if (c.i > SMTP_PATH_MAX)
		return false;
	out->mailbox = (struct span){ in.p + mailbox_start, mailbox_end - mailbox_start };
	out->used = c.i;
	out->non_ascii = c.non_ascii;
	return true;
}

/* ------------------------------------------------------------ parameters */

struct param {
	struct span token;   /* whole "KEY=VALUE" */
	struct span keyword;
	struct span value;
	bool has_value;
};

/* Split the next space-separated parameter off `rest`. */
static struct param param_next(struct span *rest)
{
	struct param prm = { 0 };
	size_t n = token_len(*rest);
	prm.token = (struct span){ rest->p, n };
	const char *eq = memchr(rest->p, '=', n);
	size_t klen = eq ? (size_t)(eq - rest->p) : n;
	prm.keyword = (struct span){ rest->p, klen };
	if (eq) {
		prm.has_value = true;
		prm.value = (struct span){ eq + 1, n - klen - 1 };
	}
	*rest = span_skip_spaces(span_from(*rest, n));
	return prm;
}

/* How a parameter went wrong; the reply names it. */
enum param_error {
	PARAM_OK = 0,
	PARAM_UNSUPPORTED, /* 555 5.5.4 Unsupported option */
	PARAM_BAD_VALUE,   /* 501 5.5.4 Bad value for */
	PARAM_DUPLICATE,   /* 501 5.5.4 Duplicate parameter */
};

enum mail_param_bit {
	MAIL_SIZE = 1,
	MAIL_BODY = 2,
	MAIL_SMTPUTF8 = 4,
	MAIL_RET = 8,
	MAIL_ENVID = 16,
	MAIL_AUTH = 32,
};

struct mail_params {
	bool auth_allowed;  /* the AUTH extension is in force (RFC 4954 5) */
	unsigned seen;
	uint64_t size;
	enum smtp_body_type body_type;
	bool smtputf8;
	enum smtp_ret ret;
	struct span envid;
};

static enum param_error mail_param_value(struct mail_params *mp, unsigned bit,
					 const struct param *prm)
{
	struct span v = prm->value;
	switch (bit) {
	case MAIL_SIZE:
		return prm->has_value && parse_u64(v, &mp->size) ? PARAM_OK : PARAM_BAD_VALUE;
	case MAIL_BODY:
		if (span_ieq(v, "7BIT"))
			mp->body_type = SMTP_BODY_7BIT;
		else if (span_ieq(v, "8BITMIME"))
			mp->body_type = SMTP_BODY_8BITMIME;
		else if (span_ieq(v, "BINARYMIME"))
			mp->body_type = SMTP_BODY_BINARYMIME;
		else
			return PARAM_BAD_VALUE;
		return PARAM_OK;
	case MAIL_SMTPUTF8:
		mp->smtputf8 = true;
		return prm->has_value ? PARAM_BAD_VALUE : PARAM_OK;
	case MAIL_RET:
		if (span_ieq(v, "FULL"))
			mp->ret = SMTP_RET_FULL;
		else if (span_ieq(v, "HDRS"))
			mp->ret = SMTP_RET_HDRS;
		else
			return PARAM_BAD_VALUE;
		return PARAM_OK;
	case MAIL_ENVID:
		mp->envid = v;
		return v.n > 0 && v.n <= SMTP_ENVID_MAX && is_xtext(v) ? PARAM_OK : PARAM_BAD_VALUE;
	case MAIL_AUTH:
		/* RFC 4954 5: the mailbox a previous hop authenticated, or
		 * "<>". Checked for syntax, then ignored: mxd is the last hop,
		 * and only this session's own AUTH says who the client is. */
		return prm->has_value && v.n > 0 && v.n <= SMTP_AUTH_PARAM_MAX && is_xtext(v)
			       ? PARAM_OK
			       : PARAM_BAD_VALUE;
	}
	assert(!"unknown MAIL parameter bit");
	return PARAM_UNSUPPORTED;
}

static unsigned mail_param_bit(struct span keyword)
{
	static const struct {
		const char *name;
		unsigned bit;
	} known[] = {
		{ "SIZE", MAIL_SIZE }, { "BODY", MAIL_BODY }, { "SMTPUTF8", MAIL_SMTPUTF8 },
		{ "RET", MAIL_RET },   { "ENVID", MAIL_ENVID }, { "AUTH", MAIL_AUTH },
	};
	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
		if (span_ieq(keyword, known[i].name))
			return known[i].bit;
	return 0;
}

static enum param_error mail_params_parse(struct span rest, struct mail_params *mp,
					  struct param *failed)
{
	while (rest.n) {
		*failed = param_next(&rest);
		unsigned bit = mail_param_bit(failed->keyword);
		if (bit == 0 || (bit == MAIL_AUTH && !mp->auth_allowed))
			return PARAM_UNSUPPORTED;
		if (mp->seen & bit)
			return PARAM_DUPLICATE;
		mp->seen |= bit;
		enum param_error e = mail_param_value(mp, bit, failed);
		if (e != PARAM_OK)
			return e;
	}
	return PARAM_OK;
}

struct rcpt_params {
	bool seen_notify, seen_orcpt;
	uint8_t notify;
	struct span orcpt;
};

/* NOTIFY=NEVER, or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 4.1). */
static bool parse_notify(struct span v, uint8_t *out)
{
	if (span_ieq(v, "NEVER")) {
		*out = SMTP_NOTIFY_NEVER;
		return true;
	}
	uint8_t bits = 0;
	for (;;) {
		const char *comma = memchr(v.p, ',', v.n);
		struct span item = { v.p, comma ? (size_t)(comma - v.p) : v.n };
		uint8_t bit = span_ieq(item, "SUCCESS") ? SMTP_NOTIFY_SUCCESS
			      : span_ieq(item, "FAILURE") ? SMTP_NOTIFY_FAILURE
			      : span_ieq(item, "DELAY")   ? SMTP_NOTIFY_DELAY
							  : 0;
		if (bit == 0 || (bits & bit))
			return false;
		bits |= bit;
		if (!comma)
			break;
		v = span_from(v, item.n + 1);
	}
	*out = bits;
	return true;
}

/* ORCPT=addr-type ";" xtext, with addr-type rfc822 (RFC 3461 4.2). */
static bool orcpt_ok(struct span v)
{
	return v.n <= SMTP_ORCPT_MAX && span_has_iprefix(v, "rfc822;") && v.n > 7 &&
	       is_xtext(span_from(v, 7));
}

static enum param_error rcpt_params_parse(struct span rest, struct rcpt_params *rp,
					  struct param *failed)
{
	while (rest.n) {
		*failed = param_next(&rest);
		if (span_ieq(failed->keyword, "NOTIFY")) {
			if (rp->seen_notify)
				return PARAM_DUPLICATE;
			rp->seen_notify = true;
			if (!failed->has_value || !parse_notify(failed->value, &rp->notify))
				return PARAM_BAD_VALUE;
		} else if (span_ieq(failed->keyword, "ORCPT")) {
			if (rp->seen_orcpt)
				return PARAM_DUPLICATE;
			rp->seen_orcpt = true;
			rp->orcpt = failed->value;
			if (!failed->has_value || !orcpt_ok(failed->value))
				return PARAM_BAD_VALUE;
		} else {
			return PARAM_UNSUPPORTED;
		}
	}
	return PARAM_OK;
}

static void reply_param_error(struct smtp_session *s, struct buf *out, const char *verb,
			      enum param_error e, const struct param *prm)
{
	int klen = (int)(prm->keyword.n > 64 ? 64 : prm->keyword.n);
	switch (e) {
	case PARAM_UNSUPPORTED:
		reply(s, out, verb, "555 5.5.4 Unsupported option: %.*s", klen, prm->keyword.p);
		return;
	case PARAM_BAD_VALUE:
		reply(s, out, verb, "501 5.5.4 Bad value for %.*s", klen, prm->keyword.p);
		return;
	case PARAM_DUPLICATE:
		reply(s, out, verb, "501 5.5.4 Duplicate parameter: %.*s", klen, prm->keyword.p);
		return;
	case PARAM_OK:
		break;
	}
	assert(!"reply_param_error without an error");
}

/* -------------------------------------------------------------- commands */

static char *span_dup(struct span a)
{
	return strndup(a.p, a.n);
}

static void reply_no_memory(struct smtp_session *s, struct buf *out, const char *verb)
{
	reply_as(s, out, verb, REPLY_SERVER_FAULT, "452 4.3.1 Insufficient system storage");
}

/* EHLO/HELO argument: printable ASCII, it ends up in Received:. */
static bool helo_argument_ok(struct span arg)
{
	if (arg.n == 0)
		return false;
	for (size_t i = 0; i < arg.n; i++)
		if ((unsigned char)arg.p[i] < 0x20 || (unsigned char)arg.p[i] > 0x7e)
			return false;
	return true;
}

static void ehlo_capabilities(struct smtp_session *s, struct buf *out)
{
	const struct smtp_config *cfg = s->cfg;
	(void)buf_printf(out, "250-%s Hello %s [%s]\r\n", cfg->hostname, s->env.helo,
			 s->peer->addr_str);
	(void)buf_append_str(out, "250-PIPELINING\r\n");
	(void)buf_printf(out, "250-SIZE %" PRIu64 "\r\n", cfg->max_message_size);
	(void)buf_append_str(out, "250-8BITMIME\r\n"
				  "250-ENHANCEDSTATUSCODES\r\n"
				  "250-DSN\r\n"
				  "250-SMTPUTF8\r\n"
				  "250-CHUNKING\r\n");
	if (cfg->starttls_offered && !s->peer->tls)
		(void)buf_append_str(out, "250-STARTTLS\r\n");
	/* Only inside TLS (a password never crosses the wire in the clear),
	 * and no longer once it succeeded (RFC 4954 4: a second AUTH is 503). */
	if (cfg->auth_offered && s->peer->tls && !s->authenticated)
		(void)buf_append_str(out, "250-AUTH PLAIN LOGIN\r\n");
	(void)buf_append_str(out, "250 HELP\r\n");
}

static void cmd_hello(struct smtp_session *s, const char *verb, struct span arg,
		      struct buf *out, bool esmtp)
{
	if (!helo_argument_ok(arg)) {
		reply(s, out, verb, "501 5.5.4 Syntax: %s hostname", verb);
		return;
	}
	char *helo = span_dup(arg);
	if (!helo) {
		reply_no_memory(s, out, verb);
		return;
	}
	transaction_reset(s);
	greeting_forget(s);
	s->env.helo = helo;
	s->env.esmtp = esmtp;
	s->greeted = true;
	if (esmtp) {
		/* The helo text is printable ASCII (checked), safe to echo. */
		ehlo_capabilities(s, out);
	} else {
		reply(s, out, verb, "250 %s", s->cfg->hostname);
	}
}

static void cmd_ehlo(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	cmd_hello(s, verb, arg, out, true);
}

static void cmd_helo(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	cmd_hello(s, verb, arg, out, false);
}

static bool mail_store(struct smtp_session *s, const struct path *path,
		       const struct mail_params *mp)
{
	char *from = span_dup(path->mailbox);
	char *envid = mp->envid.n ? span_dup(mp->envid) : NULL;
	if (!from || (mp->envid.n && !envid)) {
		free(from);
		free(envid);
		return false;
	}
	transaction_reset(s);
	s->env.mail_from = from;
	s->env.envid = envid;
	s->env.size_param = mp->size;
	s->env.body_type = mp->body_type;
	s->env.smtputf8 = mp->smtputf8;
	s->env.ret = mp->ret;
	s->in_transaction = true;
	return true;
}

static void cmd_mail(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	if (s->hooks.paused && s->hooks.paused(s->hooks.ctx)) {
		reply_as(s, out, verb, REPLY_CLOSING,
			 "421 4.3.2 %s Service paused, try again later", s->cfg->hostname);
		return;
	}
	if (!s->greeted) {
		reply(s, out, verb, "503 5.5.1 Error: send HELO/EHLO first");
		return;
	}
	if (s->cfg->tls_required && !s->peer->tls) {
		reply(s, out, verb, "530 5.7.0 Must issue a STARTTLS command first");
		return;
	}
	/* A failed BDAT transaction ends with RSET or a new MAIL (RFC 3030). */
	if (s->in_transaction && !s->bdat_failed) {
		reply(s, out, verb, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (!span_has_iprefix(arg, "FROM:")) {
		reply(s, out, verb, "501 5.5.4 Syntax: MAIL FROM:<address>");
		return;
	}
	struct span rest = span_skip_spaces(span_from(arg, 5));
	struct path path;
	if (!parse_path(rest, PATH_REVERSE, &path) ||
	    (path.used < rest.n && rest.p[path.used] != ' ')) {
		reply(s, out, verb, "501 5.1.7 Bad sender address syntax");
		return;
	}
	rest = span_skip_spaces(span_from(rest, path.used));
	struct mail_params mp = { .auth_allowed = s->cfg->auth_offered && s->peer->tls };
	struct param failed = { 0 };
	if (rest.n && !s->env.esmtp) {
		failed = param_next(&rest);
		reply_param_error(s, out, verb, PARAM_UNSUPPORTED, &failed);
		return;
	}
	enum param_error e = mail_params_parse(rest, &mp, &failed);
	if (e != PARAM_OK) {
		reply_param_error(s, out, verb, e, &failed);
		return;
	}
	if (mp.size > s->cfg->max_message_size) {
		reply(s, out, verb, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	if (path.non_ascii && !mp.smtputf8) {
		reply(s, out, verb, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
		return;
	}
	if (!mail_store(s, &path, &mp)) {
		reply_no_memory(s, out, verb);
		return;
	}
	reply(s, out, verb, "250 2.1.0 Ok");
}

static bool rcpt_store(struct smtp_session *s, struct span addr, const struct rcpt_params *rp)
{
	struct smtp_envelope *env = &s->env;
	assert(env->nrcpt < s->cfg->max_recipients);
	if (env->nrcpt == env->rcpt_cap) {
		uint32_t cap = env->rcpt_cap ? env->rcpt_cap * 2 : 4;
		if (cap > s->cfg->max_recipients)
			cap = s->cfg->max_recipients;
		struct smtp_rcpt *grown = realloc(env->rcpts, cap * sizeof *grown);
		if (!grown)
			return false;
		env->rcpts = grown;
		env->rcpt_cap = cap;
	}
	char *a = span_dup(addr);
	char *orcpt = rp->seen_orcpt ? span_dup(rp->orcpt) : NULL;
	if (!a || (rp->seen_orcpt && !orcpt)) {
		free(a);
		free(orcpt);
		return false;
	}
	env->rcpts[env->nrcpt++] = (struct smtp_rcpt){ a, orcpt, rp->notify };
	return true;
}

/* The policy wants a C string; the address is at most 256 octets. */
static enum policy_verdict rcpt_policy(struct smtp_session *s, struct span addr)
{
	if (!s->cfg->policy)
		return POLICY_ACCEPT;
	char text[SMTP_PATH_MAX + 1];
	assert(addr.n < sizeof text);
	memcpy(text, addr.p, addr.n);
	text[addr.n] = '\0';
	return policy_check_rcpt(s->cfg->policy, s->peer, text);
}

static void cmd_rcpt(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	if (!s->in_transaction) {
		reply(s, out, verb, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (s->bdat_failed) {
		reply(s, out, verb, "503 5.5.1 Error: transaction failed, send RSET");
		return;
	}
	if (s->env.chunking) {
		reply(s, out, verb, "503 5.5.1 Error: RCPT not allowed after BDAT");
		return;
	}
	if (!span_has_iprefix(arg, "TO:")) {
		reply(s, out, verb, "501 5.5.4 Syntax: RCPT TO:<address>");
		return;
	}
	struct span rest = span_skip_spaces(span_from(arg, 3));
	struct path path;
	if (!parse_path(rest, PATH_FORWARD, &path) ||
	    (path.used < rest.n && rest.p[path.used] != ' ')) {
		reply(s, out, verb, "501 5.1.3 Bad recipient address syntax");
		return;
	}
	rest = span_skip_spaces(span_from(rest, path.used));
	struct rcpt_params rp = { 0 };
	struct param failed = { 0 };
	if (rest.n && !s->env.esmtp) {
		failed = param_next(&rest);
		reply_param_error(s, out, verb, PARAM_UNSUPPORTED, &failed);
		return;
	}
	enum param_error e = rcpt_params_parse(rest, &rp, &failed);
	if (e != PARAM_OK) {
		reply_param_error(s, out, verb, e, &failed);
		return;
	}
	if (path.non_ascii && !s->env.smtputf8) {
		reply(s, out, verb, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
		return;
	}
	if (s->env.nrcpt >= s->cfg->max_recipients) {
		reply(s, out, verb, "452 4.5.3 Error: too many recipients");
		return;
	}
	int alen = (int)path.mailbox.n;
	switch (rcpt_policy(s, path.mailbox)) {
	case POLICY_RELAY_DENIED:
		reply(s, out, verb, "554 5.7.1 <%.*s>: Relay access denied", alen, path.mailbox.p);
		return;
	case POLICY_UNKNOWN_USER:
		reply(s, out, verb, "550 5.1.1 <%.*s>: Recipient address rejected: User unknown",
		      alen, path.mailbox.p);
		return;
	case POLICY_ACCEPT:
		break;
	}
	if (!rcpt_store(s, path.mailbox, &rp)) {
		reply_no_memory(s, out, verb);
		return;
	}
	reply(s, out, verb, "250 2.1.5 Ok");
}

static void content_begin(struct smtp_session *s)
{
	s->data_state = SCAN_LINE_START;
	s->data_tainted = false;
	s->data_oversize = false;
	s->data_store_failed = false;
	buf_reset(&s->body);
}

static void cmd_data(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	if (arg.n) {
		reply(s, out, verb, "501 5.5.4 Syntax: DATA");
		return;
	}
	if (!s->in_transaction) {
		reply(s, out, verb, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (s->env.chunking || s->bdat_failed) {
		reply(s, out, verb, "503 5.5.1 Error: DATA not allowed after BDAT");
		return;
	}
	if (s->env.nrcpt == 0) {
		reply(s, out, verb, "554 5.5.1 Error: no valid recipients");
		return;
	}
	/* RFC 3030 3: a BINARYMIME body cannot be dot-stuffed text. */
	if (s->env.body_type == SMTP_BODY_BINARYMIME) {
		reply(s, out, verb, "503 5.5.1 Error: BINARYMIME requires BDAT");
		return;
	}
	content_begin(s);
	s->state = SMTP_S_DATA;
	reply(s, out, verb, "354 End data with <CR><LF>.<CR><LF>");
}

static enum bdat_refusal bdat_judge(const struct smtp_session *s, uint64_t size)
{
	if (!s->in_transaction)
		return BDAT_NEED_MAIL;
	if (s->bdat_failed)
		return BDAT_TRANSACTION_FAILED;
	if (s->env.nrcpt == 0)
		return BDAT_NO_RCPT;
	if (size > s->cfg->max_message_size - s->body.len)
		return BDAT_OVERSIZE;
	return BDAT_ACCEPTED;
}

static void bdat_chunk_done(struct smtp_session *s, struct buf *out);

/* BDAT <size> [LAST]. A size that does not parse leaves no way to find the
 * chunk's end, so nothing is skipped: 501, and what follows is read as
 * commands. The bytes come from this very client, so no trust boundary is
 * crossed, and junk read as commands soon reaches max_errors. A size that
 * parses is always honoured, even when the command is refused, so framing
 * holds; a client announcing an absurd size is stopped by the data timeout. */
static void cmd_bdat(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	size_t n = token_len(arg);
	struct span size_text = { arg.p, n };
	struct span rest = span_skip_spaces(span_from(arg, n));
	uint64_t size;
	bool last = span_ieq(rest, "LAST");
	if (!parse_u64(size_text, &size) || (rest.n && !last)) {
		reply(s, out, verb, "501 5.5.4 Syntax: BDAT size [LAST]");
		return;
	}
	s->bdat_refusal = (uint8_t)bdat_judge(s, size);
	if (s->bdat_refusal == BDAT_ACCEPTED && !s->env.chunking) {
		content_begin(s);
		s->data_state = SCAN_TEXT;
		s->env.chunking = true;
	}
	s->bdat_chunk_size = size;
	s->bdat_remaining = size;
	s->bdat_last = last;
	s->state = SMTP_S_BDAT;
	if (size == 0)
		bdat_chunk_done(s, out);
}

static void cmd_rset(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	if (arg.n) {
		reply(s, out, verb, "501 5.5.4 Syntax: RSET");
		return;
	}
	transaction_reset(s);
	reply(s, out, verb, "250 2.0.0 Ok");
}

static void cmd_noop(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	(void)arg; /* RFC 5321 4.1.1.9: a parameter is allowed and ignored. */
	reply(s, out, verb, "250 2.0.0 Ok");
}

static void cmd_quit(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	(void)arg; /* leaving is never refused */
	reply_as(s, out, verb, REPLY_CLOSING, "221 2.0.0 Bye");
}

static void cmd_help(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	(void)arg;
	reply(s, out, verb, "214 2.0.0 See RFC 5321");
}

static void cmd_vrfy(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	if (!arg.n) {
		reply(s, out, verb, "501 5.5.4 Syntax: VRFY address");
		return;
	}
	reply(s, out, verb,
	      "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	(void)arg;
	reply(s, out, verb, "502 5.5.1 Error: EXPN not supported");
}

/* ---------------------------------------------------------------- AUTH */

static int base64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

enum base64_result { BASE64_OK, BASE64_INVALID, BASE64_TOO_LONG };

/* Strict base64 (RFC 4648 4): whole quanta, padding only at the end, no
 * whitespace, no bits set past the data. "=" alone is the empty string
 * (RFC 4954 4). The whole input is validated before its length is
 * compared with cap, so junk is always "invalid". */
static enum base64_result base64_decode(struct span in, unsigned char *out, size_t cap,
					size_t *out_len)
{
	if (in.n == 1 && in.p[0] == '=') {
		*out_len = 0;
		return BASE64_OK;
	}
	if (in.n % 4 != 0)
		return BASE64_INVALID;
	size_t pad = 0;
	if (in.n && in.p[in.n - 1] == '=')
		pad = in.p[in.n - 2] == '=' ? 2 : 1;
	size_t data = in.n - pad;
	for (size_t i = 0; i < data; i++)
		if (base64_value((unsigned char)in.p[i]) < 0)
			return BASE64_INVALID;
	/* The bits of the last character that fall past the data. */
	if (pad && (base64_value((unsigned char)in.p[data - 1]) & (pad == 1 ? 0x3 : 0xf)))
		return BASE64_INVALID;
	size_t len = in.n / 4 * 3 - pad;
	if (len > cap)
		return BASE64_TOO_LONG;
	size_t o = 0;
	for (size_t i = 0; i < in.n; i += 4) {
		uint32_t quantum = 0;
		for (size_t k = 0; k < 4; k++) {
			int v = i + k < data ? base64_value((unsigned char)in.p[i + k]) : 0;
			quantum = (quantum << 6) | (uint32_t)v;
		}
		for (size_t k = 0; k < 3 && o < len; k++)
			out[o++] = (unsigned char)(quantum >> (16 - 8 * k));
	}
	assert(o == len);
	*out_len = len;
	return BASE64_OK;
}

/* Refusals end the exchange; like any 5xx they count toward max_errors. */
static void auth_refuse(struct smtp_session *s, struct buf *out, const char *text)
{
	auth_end(s);
	reply(s, out, "AUTH", "%s", text);
}

#define AUTH_CANNOT_DECODE "501 5.5.2 Cannot decode response"
#define AUTH_MALFORMED "501 5.5.2 Malformed authentication response"
#define AUTH_INVALID "535 5.7.8 Authentication credentials invalid"

/* A user name that a password table can hold: table keys are the first
 * whitespace-delimited field of a line, so no blank or control octet can
 * be part of one. Refusing them here also keeps them out of the log and of
 * anything the shell records about the session. */
static bool auth_user_ok(const unsigned char *user, size_t n)
{
	if (n == 0 || n > SMTP_AUTH_USER_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (user[i] <= 0x20 || user[i] == 0x7f)
			return false;
	return true;
}

/* Both halves are known: hand them to the shell. */
static void auth_credentials_ready(struct smtp_session *s, const unsigned char *user,
				   size_t user_len, const unsigned char *password,
				   size_t password_len, struct buf *out)
{
	if (!auth_user_ok(user, user_len) || password_len == 0 ||
	    password_len > SMTP_AUTH_PASSWORD_MAX) {
		auth_refuse(s, out, AUTH_INVALID);
		return;
	}
	assert(!memchr(password, '\0', password_len));
	memmove(s->auth_user, user, user_len);
	s->auth_user[user_len] = '\0';
	memcpy(s->auth_password, password, password_len);
	s->auth_password[password_len] = '\0';
	s->auth_step = AUTH_CHECK;
	s->auth_deferred = AUTH_DEFER_NONE;
}

/* RFC 4616: [authzid] NUL authcid NUL passwd. Acting as someone else is
 * not offered: an authzid must name the authcid itself. */
static void auth_plain_message(struct smtp_session *s, struct span response, struct buf *out)
{
	unsigned char msg[SMTP_AUTH_PLAIN_MAX];
	size_t n = 0;
	switch (base64_decode(response, msg, sizeof msg, &n)) {
	case BASE64_OK:
		break;
	case BASE64_INVALID:
		auth_refuse(s, out, AUTH_CANNOT_DECODE);
		return;
	case BASE64_TOO_LONG:
		auth_refuse(s, out, AUTH_INVALID);
		return;
	}
	const unsigned char *end = msg + n;
	const unsigned char *nul1 = memchr(msg, '\0', n);
	const unsigned char *nul2 = nul1 ? memchr(nul1 + 1, '\0', (size_t)(end - nul1 - 1)) : NULL;
	if (!nul2 || memchr(nul2 + 1, '\0', (size_t)(end - nul2 - 1))) {
		auth_refuse(s, out, AUTH_MALFORMED);
	} else {
		size_t authz_len = (size_t)(nul1 - msg);
		const unsigned char *user = nul1 + 1;
		size_t user_len = (size_t)(nul2 - user);
		if (authz_len && (authz_len != user_len || memcmp(msg, user, user_len) != 0))
			auth_refuse(s, out, AUTH_INVALID);
		else
			auth_credentials_ready(s, user, user_len, nul2 + 1, (size_t)(end - nul2 - 1),
					       out);
	}
	explicit_bzero(msg, sizeof msg);
}

static void auth_login_user(struct smtp_session *s, struct span response, struct buf *out)
{
	unsigned char user[SMTP_AUTH_USER_MAX];
	size_t n = 0;
	s->auth_deferred = AUTH_DEFER_NONE;
	switch (base64_decode(response, user, sizeof user, &n)) {
	case BASE64_OK:
		if (memchr(user, '\0', n))
			s->auth_deferred = AUTH_DEFER_MALFORMED;
		break;
	case BASE64_INVALID:
		auth_refuse(s, out, AUTH_CANNOT_DECODE);
		return;
	case BASE64_TOO_LONG:
		s->auth_deferred = AUTH_DEFER_INVALID;
		break;
	}
	if (s->auth_deferred == AUTH_DEFER_NONE) {
		memcpy(s->auth_user, user, n);
		s->auth_user[n] = '\0';
	}
	s->auth_step = AUTH_LOGIN_PASSWORD;
	reply(s, out, "AUTH", "334 UGFzc3dvcmQ6"); /* "Password:" */
}

static void auth_login_password(struct smtp_session *s, struct span response, struct buf *out)
{
	unsigned char password[SMTP_AUTH_PASSWORD_MAX];
	size_t n = 0;
	enum base64_result r = base64_decode(response, password, sizeof password, &n);
	if (r == BASE64_INVALID)
		auth_refuse(s, out, AUTH_CANNOT_DECODE);
	else if (s->auth_deferred == AUTH_DEFER_MALFORMED ||
		 (r == BASE64_OK && memchr(password, '\0', n)))
		auth_refuse(s, out, AUTH_MALFORMED);
	else if (s->auth_deferred == AUTH_DEFER_INVALID || r == BASE64_TOO_LONG)
		auth_refuse(s, out, AUTH_INVALID);
	else
		auth_credentials_ready(s, (const unsigned char *)s->auth_user,
				       strlen(s->auth_user), password, n, out);
	explicit_bzero(password, sizeof password);
}

/* One line of the exchange, LF included: a response, never a command. */
static void auth_line(struct smtp_session *s, const char *p, size_t n, struct buf *out)
{
	assert(n >= 1 && p[n - 1] == '\n');
	n--;
	if (n && p[n - 1] == '\r')
		n--;
	while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	struct span response = { p, n };
	if (span_ieq(response, "*")) {
		auth_refuse(s, out, "501 5.0.0 Authentication cancelled");
		return;
	}
	switch ((enum auth_step)s->auth_step) {
	case AUTH_PLAIN_RESPONSE:
		auth_plain_message(s, response, out);
		return;
	case AUTH_LOGIN_USER:
		auth_login_user(s, response, out);
		return;
	case AUTH_LOGIN_PASSWORD:
		auth_login_password(s, response, out);
		return;
	case AUTH_IDLE:
	case AUTH_CHECK:
		break;
	}
	assert(!"auth_line outside an exchange");
}

/* RFC 4954 4. AUTH is offered only inside TLS, once per session, and
 * never in the middle of a transaction. */
static void cmd_auth(struct smtp_session *s, const char *verb, struct span arg, struct buf *out)
{
	if (!s->cfg->auth_offered) {
		reply(s, out, verb, "503 5.5.1 Error: authentication not enabled");
		return;
	}
	if (!s->peer->tls) {
		reply(s, out, verb,
		      "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	if (!s->greeted || !s->env.esmtp) {
		reply(s, out, verb, "503 5.5.1 Error: send EHLO first");
		return;
	}
	if (s->authenticated) {
		reply(s, out, verb, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (s->in_transaction) {
		reply(s, out, verb, "503 5.5.1 Error: AUTH not permitted during a mail transaction");
		return;
	}
	size_t n = token_len(arg);
	struct span mechanism = { arg.p, n };
	struct span initial = span_skip_spaces(span_from(arg, n));
	if (n == 0) {
		reply(s, out, verb, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
		return;
	}
	bool plain = span_ieq(mechanism, "PLAIN");
	if (!plain && !span_ieq(mechanism, "LOGIN")) {
		reply(s, out, verb, "504 5.5.4 Unrecognized authentication type");
		return;
	}
	memset(s->auth_user, 0, sizeof s->auth_user);
	auth_end(s);
	if (plain && initial.n) {
		auth_plain_message(s, initial, out);
	} else if (plain) {
		s->auth_step = AUTH_PLAIN_RESPONSE;
		reply(s, out, verb, "334 ");
	} else if (initial.n) {
		auth_login_user(s, initial, out);
	} else {
		s->auth_step = AUTH_LOGIN_USER;
		reply(s, out, verb, "334 VXNlcm5hbWU6"); /* "Username:" */
	}
}

/* RFC 3207. Refused inside a transaction: a handshake there would leave a
 * MAIL FROM given in plaintext attached to an encrypted session. */
static void cmd_starttls(struct smtp_session *s, const char *verb, struct span arg,
			 struct buf *out)
{
	if (s->peer->tls) {
		reply(s, out, verb, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (!s->cfg->starttls_offered) {
		reply(s, out, verb, "502 5.5.1 Error: command not implemented");
		return;
	}
	if (arg.n) {
		reply(s, out, verb, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (s->in_transaction) {
		reply(s, out, verb, "503 5.5.1 Error: STARTTLS not allowed during a mail transaction");
		return;
	}
	reply(s, out, verb, "220 2.0.0 Ready to start TLS");
	s->tls_pending = true;
}

/* A browser or proxy talking to the SMTP port (cross-protocol attacks):
 * nothing it sends after this line can be SMTP. */
static void cmd_not_smtp(struct smtp_session *s, const char *verb, struct span arg,
			 struct buf *out)
{
	(void)arg;
	reply_as(s, out, verb, REPLY_CLOSING, "421 4.7.0 %s Error: not an SMTP client",
		   s->cfg->hostname);
}

typedef void command_fn(struct smtp_session *s, const char *verb, struct span arg,
			struct buf *out);

static const struct command {
	const char *verb;
	command_fn *run;
} commands[] = {
	{ "EHLO", cmd_ehlo },	  { "HELO", cmd_helo }, { "MAIL", cmd_mail },
	{ "RCPT", cmd_rcpt },	  { "DATA", cmd_data }, { "BDAT", cmd_bdat },
	{ "RSET", cmd_rset },	  { "NOOP", cmd_noop }, { "QUIT", cmd_quit },
	{ "HELP", cmd_help },	  { "VRFY", cmd_vrfy }, { "EXPN", cmd_expn },
	{ "AUTH", cmd_auth },	  { "STARTTLS", cmd_starttls }, { "GET", cmd_not_smtp },
	{ "POST", cmd_not_smtp }, { "CONNECT", cmd_not_smtp },
};

static const struct command *command_find(struct span verb)
{
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (span_ieq(verb, commands[i].verb))
			return &commands[i];
	return NULL;
}

/* The verb as the reject hook reports it: letters and digits only. */
static void verb_for_log(struct span verb, char *name, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < verb.n && n + 1 < cap; i++) {
		unsigned char c = (unsigned char)verb.p[i];
		if (is_alpha(c) || is_digit(c))
			name[n++] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
	}
	if (n == 0)
		name[n++] = '?';
	name[n] = '\0';
}

/* One complete line, LF included. */
static void command_line(struct smtp_session *s, const char *p, size_t n, struct buf *out)
{
	assert(n >= 1 && p[n - 1] == '\n');
	n--;
	if (n && p[n - 1] == '\r')
		n--;
	if (memchr(p, '\0', n)) {
		reply(s, out, "?", "500 5.5.2 Error: NUL character in command");
		return;
	}
	if (memchr(p, '\r', n)) {
		reply(s, out, "?", "500 5.5.2 Error: bare CR in command");
		return;
	}
	while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	struct span line = { p, n };
	struct span verb = { p, token_len(line) };
	struct span arg = span_skip_spaces(span_from(line, verb.n));
	const struct command *cmd = command_find(verb);
	if (!cmd) {
		char name[16];
		verb_for_log(verb, name, sizeof name);
		reply(s, out, name, "500 5.5.2 Error: command not recognized");
		return;
	}
	cmd->run(s, cmd->verb, arg, out);
}

/* The longest line the command reader takes now, CRLF included. An AUTH
 * exchange never changes in the middle of a line, so neither does this. */
static size_t line_limit(const struct smtp_session *s)
{
	size_t max = s->cfg->max_line_length;
	if (s->auth_step != AUTH_IDLE && max > SMTP_AUTH_LINE_MAX)
		max = SMTP_AUTH_LINE_MAX;
	return max;
}

/* A line that may carry a password: a response inside an exchange, or an
 * AUTH command with its initial response. */
static bool line_is_secret(const struct smtp_session *s, const char *p, size_t n)
{
	return s->auth_step != AUTH_IDLE || (n >= 5 && strncasecmp(p, "AUTH ", 5) == 0);
}

static void line_done(struct smtp_session *s, const char *p, size_t n, struct buf *out)
{
	if (s->auth_step != AUTH_IDLE)
		auth_line(s, p, n, out);
	else
		command_line(s, p, n, out);
}

static void line_too_long(struct smtp_session *s, struct buf *out)
{
	if (s->auth_step != AUTH_IDLE)
		auth_refuse(s, out, "500 5.5.6 Authentication exchange line is too long");
	else
		reply(s, out, "?", "500 5.5.2 Error: line too long");
}

/* Forget a partial line that is being dropped, wiping it if it may hold
 * a password. */
static void line_discard(struct smtp_session *s)
{
	if (s->line_len && line_is_secret(s, s->line, s->line_len))
		explicit_bzero(s->line, s->line_len);
	s->line_len = 0;
}

/* Read one line (or what there is of it) from the input. */
static void command_step(struct smtp_session *s, const char *data, size_t len, size_t *pos,
			 struct buf *out)
{
	const size_t max = line_limit(s);
	assert(s->line_len <= max);
	const char *start = data + *pos;
	size_t avail = len - *pos;
	const char *lf = memchr(start, '\n', avail);
	if (!lf) {
		if (!s->line_overflow && avail > max - s->line_len) {
			s->line_overflow = true;
			line_discard(s);
		}
		if (!s->line_overflow) {
			memcpy(s->line + s->line_len, start, avail);
			s->line_len += avail;
		}
		*pos = len;
		return;
	}
	size_t n = (size_t)(lf - start) + 1;
	*pos += n;
	if (s->line_overflow || n > max - s->line_len) {
		s->line_overflow = false;
		line_discard(s);
		line_too_long(s, out);
		return;
	}
	if (s->line_len == 0) {
		line_done(s, start, n, out);
		return;
	}
	memcpy(s->line + s->line_len, start, n);
	size_t line_len = s->line_len + n;
	s->line_len = 0;
	bool secret = line_is_secret(s, s->line, line_len);
	line_done(s, s->line, line_len, out);
	if (secret)
		explicit_bzero(s->line, line_len);
}

/* ---------------------------------------------------------------- DATA */

static bool refusing_bare_newlines(const struct smtp_session *s)
{
	return !s->cfg->accept_bare_newlines;
}

/* A bare CR or LF was seen. When refusing them it also counts as a line
 * break, so a '.' right after it is recognised as a smuggling attempt. */
static void data_bare_break(struct smtp_session *s)
{
	s->data_tainted = true;
	s->data_state = refusing_bare_newlines(s) ? SCAN_BARE_LINE_START : SCAN_TEXT;
}

/* Someone sent ".\n", "\n.\r\n", "\r.\r\n"...: a server that ends DATA
 * there and one that does not disagree about where this message ends, and
 * the rest may be a second, smuggled, message. We cannot know which the
 * client meant, so nothing after it is ever read (CVE-2023-51764 class). */
static void data_smuggling(struct smtp_session *s, struct buf *out)
{
	reply_as(s, out, "DATA", REPLY_CLOSING,
		   "521 5.5.2 %s Error: bare CR or LF in message data (SMTP smuggling refused)",
		   s->cfg->hostname);
	transaction_reset(s);
}

static void data_end(struct smtp_session *s, struct buf *out)
{
	s->state = SMTP_S_COMMAND;
	if (s->data_tainted && refusing_bare_newlines(s)) {
		reply(s, out, "DATA", "550 5.6.0 Message refused: bare CR or LF in message data");
		transaction_reset(s);
	} else if (s->data_oversize) {
		reply(s, out, "DATA", "552 5.3.4 Message size exceeds fixed limit");
		transaction_reset(s);
	} else if (s->data_store_failed) {
		reply_no_memory(s, out, "DATA");
		transaction_reset(s);
	} else {
		s->state = SMTP_S_WAIT_COMMIT;
	}
}

/* One byte through the scanner. Some transitions only learn what a byte
 * meant from the next one (a CR, a '.'); those settle the pending byte and
 * run the current one again from the new state. */
static void data_scan_byte(struct smtp_session *s, char c, struct buf *out)
{
	for (;;) {
		switch ((enum data_scan)s->data_state) {
		case SCAN_TEXT:
			if (c == '\r') {
				s->data_state = SCAN_CR;
				return;
			}
			content_store(s, &c, 1);
			if (c == '\n')
				data_bare_break(s);
			return;
		case SCAN_CR:
			if (c == '\n') {
				content_store(s, "\r\n", 2);
				s->data_state = SCAN_LINE_START;
				return;
			}
			content_store(s, "\r", 1);
			data_bare_break(s);
			continue;
		case SCAN_LINE_START:
			s->data_state = c == '.' ? SCAN_DOT : SCAN_TEXT;
			if (c == '.')
				return;
			continue;
		case SCAN_DOT:
			if (c == '\r') {
				s->data_state = SCAN_DOT_CR;
				return;
			}
			if (c == '\n' && refusing_bare_newlines(s)) {
				data_smuggling(s, out);
				return;
			}
			s->data_state = SCAN_TEXT; /* the stuffed dot is dropped */
			continue;
		case SCAN_DOT_CR:
			if (c == '\n') {
				data_end(s, out);
				return;
			}
			if (refusing_bare_newlines(s)) {
				data_smuggling(s, out);
				return;
			}
			s->data_state = SCAN_CR; /* stuffed dot dropped, CR now bare */
			continue;
		case SCAN_BARE_LINE_START:
			assert(refusing_bare_newlines(s));
			s->data_state = c == '.' ? SCAN_BARE_DOT : SCAN_TEXT;
			if (c == '.')
				return;
			continue;
		case SCAN_BARE_DOT:
			assert(refusing_bare_newlines(s));
			if (c == '\r' || c == '\n') {
				data_smuggling(s, out);
				return;
			}
			s->data_state = SCAN_TEXT;
			continue;
		}
		assert(!"bad DATA scanner state");
		return;
	}
}

/* Bytes up to the next CR or LF: the common case, stored in one go. */
static size_t plain_text_run(const char *p, size_t n)
{
	const char *cr = memchr(p, '\r', n);
	size_t limit = cr ? (size_t)(cr - p) : n;
	const char *lf = memchr(p, '\n', limit);
	return lf ? (size_t)(lf - p) : limit;
}

static void data_step(struct smtp_session *s, const char *data, size_t len, size_t *pos,
		      struct buf *out)
{
	while (*pos < len && s->state == SMTP_S_DATA) {
		if (s->data_state == SCAN_TEXT) {
			size_t run = plain_text_run(data + *pos, len - *pos);
			if (run) {
				content_store(s, data + *pos, run);
				*pos += run;
				continue;
			}
		}
		data_scan_byte(s, data[(*pos)++], out);
	}
}

/* ---------------------------------------------------------------- BDAT */

/* BDAT content is stored as is; only a bare CR or LF has to be noticed,
 * across chunk boundaries (a chunk may end between CR and LF). */
static void bdat_scan(struct smtp_session *s, const char *p, size_t n)
{
	if (!refusing_bare_newlines(s) || s->data_tainted)
		return;
	bool after_cr = s->data_state == SCAN_CR;
	for (size_t i = 0; i < n; i++) {
		if ((after_cr && p[i] != '\n') || (!after_cr && p[i] == '\n')) {
			s->data_tainted = true;
			return;
		}
		after_cr = p[i] == '\r';
	}
	s->data_state = after_cr ? SCAN_CR : SCAN_TEXT;
}

static void bdat_message_end(struct smtp_session *s, struct buf *out)
{
	if (refusing_bare_newlines(s) && s->data_state == SCAN_CR)
		s->data_tainted = true; /* the message ended on a CR */
	if (s->data_tainted && refusing_bare_newlines(s)) {
		reply(s, out, "BDAT", "550 5.6.0 Message refused: bare CR or LF in message data");
		transaction_reset(s);
	} else if (s->data_store_failed) {
		reply_no_memory(s, out, "BDAT");
		transaction_reset(s);
	} else {
		s->state = SMTP_S_WAIT_COMMIT;
	}
}

/* A refused chunk inside a transaction fails the transaction (RFC 3030
 * 2: the client must RSET); a refused LAST chunk ends it. */
static void bdat_fail_transaction(struct smtp_session *s, bool last)
{
	if (last)
		transaction_reset(s);
	else
		s->bdat_failed = true;
}

static void bdat_chunk_done(struct smtp_session *s, struct buf *out)
{
	assert(s->state == SMTP_S_BDAT && s->bdat_remaining == 0);
	enum bdat_refusal refusal = (enum bdat_refusal)s->bdat_refusal;
	bool last = s->bdat_last;
	s->state = SMTP_S_COMMAND;
	s->bdat_refusal = BDAT_ACCEPTED;
	switch (refusal) {
	case BDAT_ACCEPTED:
		if (last)
			bdat_message_end(s, out);
		else
			reply(s, out, "BDAT", "250 2.0.0 Ok: %" PRIu64 " octets received",
			      s->bdat_chunk_size);
		return;
	case BDAT_NEED_MAIL:
		reply(s, out, "BDAT", "503 5.5.1 Error: need MAIL command");
		return;
	case BDAT_NO_RCPT:
		bdat_fail_transaction(s, last);
		reply(s, out, "BDAT", "554 5.5.1 Error: no valid recipients");
		return;
	case BDAT_TRANSACTION_FAILED:
		bdat_fail_transaction(s, last);
		reply(s, out, "BDAT", "503 5.5.1 Error: transaction failed, send RSET");
		return;
	case BDAT_OVERSIZE:
		bdat_fail_transaction(s, last);
		reply(s, out, "BDAT", "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	assert(!"bad BDAT refusal");
}

static void bdat_step(struct smtp_session *s, const char *data, size_t len, size_t *pos,
		      struct buf *out)
{
	assert(s->bdat_remaining > 0);
	size_t avail = len - *pos;
	size_t n = s->bdat_remaining < avail ? (size_t)s->bdat_remaining : avail;
	if (s->bdat_refusal == BDAT_ACCEPTED) {
		bdat_scan(s, data + *pos, n);
		content_store(s, data + *pos, n);
		assert(!s->data_oversize); /* bdat_judge checked the whole chunk fits */
	}
	*pos += n;
	s->bdat_remaining -= n;
	if (s->bdat_remaining == 0)
		bdat_chunk_done(s, out);
}

/* ------------------------------------------------------------ interface */

void smtp_session_init(struct smtp_session *s, const struct smtp_config *cfg,
		       const struct smtp_peer *peer, char *line_buf, struct smtp_hooks hooks)
{
	assert(cfg && peer && line_buf && cfg->hostname);
	assert(cfg->max_line_length >= SMTP_MIN_LINE_LENGTH);
	memset(s, 0, sizeof *s);
	s->cfg = cfg;
	s->peer = peer;
	s->hooks = hooks;
	s->line = line_buf;
	s->state = SMTP_S_COMMAND;
	/* The buffer's own limit keeps its growth from overshooting the
	 * message limit; content_store() decides what "too big" means. */
	size_t limit = cfg->max_message_size < SIZE_MAX ? (size_t)cfg->max_message_size : 0;
	buf_init(&s->body, limit);
}

void smtp_session_free(struct smtp_session *s)
{
	transaction_reset(s);
	greeting_forget(s);
	auth_end(s);
	buf_free(&s->body);
}

void smtp_greeting(struct smtp_session *s, struct buf *out)
{
	if (s->state == SMTP_S_CLOSED)
		return;
	reply(s, out, "CONNECT", "220 %s ESMTP mxd", s->cfg->hostname);
}

enum smtp_status smtp_feed(struct smtp_session *s, const char *data, size_t len,
			   size_t *consumed, struct buf *out)
{
	size_t pos = 0;
	enum smtp_status status;
	for (;;) {
		if (s->state == SMTP_S_CLOSED) {
			status = SMTP_CLOSE;
			break;
		}
		if (s->state == SMTP_S_WAIT_COMMIT) {
			status = SMTP_MESSAGE_READY;
			break;
		}
		if (s->tls_pending) {
			status = SMTP_STARTTLS;
			break;
		}
		if (s->auth_step == AUTH_CHECK) {
			status = SMTP_AUTH_CHECK;
			break;
		}
		if (pos == len) {
			status = SMTP_NEED_MORE;
			break;
		}
		switch (s->state) {
		case SMTP_S_COMMAND:
			command_step(s, data, len, &pos, out);
			break;
		case SMTP_S_DATA:
			data_step(s, data, len, &pos, out);
			break;
		case SMTP_S_BDAT:
			bdat_step(s, data, len, &pos, out);
			break;
		case SMTP_S_WAIT_COMMIT:
		case SMTP_S_CLOSED:
			assert(!"handled above");
			break;
		}
		assert(pos <= len);
	}
	assert(s->env.nrcpt <= s->cfg->max_recipients);
	assert(s->body.len <= s->cfg->max_message_size);
	*consumed = pos;
	return status;
}

void smtp_commit_done(struct smtp_session *s, bool ok, bool temp_full, const char *id,
		      struct buf *out)
{
	/* A session closed while its message was in the spool (timeout,
	 * shutdown) has said its last word: the verdict is not sent. */
	if (s->state == SMTP_S_CLOSED) {
		transaction_reset(s);
		return;
	}
	assert(s->state == SMTP_S_WAIT_COMMIT);
	const char *verb = s->env.chunking ? "BDAT" : "DATA";
	s->state = SMTP_S_COMMAND;
	if (ok) {
		assert(id);
		s->messages++;
		reply(s, out, verb, "250 2.0.0 Ok: queued as %s", id);
	} else if (temp_full) {
		reply_as(s, out, verb, REPLY_SERVER_FAULT, "452 4.3.1 Insufficient system storage");
	} else {
		reply_as(s, out, verb, REPLY_SERVER_FAULT, "451 4.3.0 Error: queue file write error");
	}
	transaction_reset(s);
}

void smtp_tls_established(struct smtp_session *s)
{
	assert(s->state != SMTP_S_CLOSED);
	transaction_reset(s);
	greeting_forget(s);
	s->state = SMTP_S_COMMAND;
	s->line_len = 0;
	s->line_overflow = false;
	s->tls_pending = false;
	/* AUTH happens only inside TLS, so there is nothing to forget; reset
	 * anyway so the rule holds by construction. */
	auth_end(s);
	memset(s->auth_user, 0, sizeof s->auth_user);
	s->authenticated = false;
}

void smtp_auth_done(struct smtp_session *s, bool ok, struct buf *out)
{
	/* auth_end() wipes the password on every path. A session closed
	 * while its credentials were checked has said its last word (as
	 * with smtp_commit_done). */
	if (s->state == SMTP_S_CLOSED || s->auth_step != AUTH_CHECK) {
		assert(s->state == SMTP_S_CLOSED);
		auth_end(s);
		return;
	}
	auth_end(s);
	if (ok) {
		s->authenticated = true;
		reply(s, out, "AUTH", "235 2.7.0 Authentication successful");
	} else {
		reply(s, out, "AUTH", AUTH_INVALID);
	}
}

enum smtp_wait smtp_waiting_for(const struct smtp_session *s)
{
	switch (s->state) {
	case SMTP_S_COMMAND:
		return s->auth_step == AUTH_CHECK ? SMTP_WAIT_COMMIT : SMTP_WAIT_COMMAND;
	case SMTP_S_DATA:
	case SMTP_S_BDAT:
		return SMTP_WAIT_DATA_BLOCK;
	case SMTP_S_WAIT_COMMIT:
		return SMTP_WAIT_COMMIT;
	case SMTP_S_CLOSED:
		return SMTP_WAIT_CLOSED;
	}
	assert(!"bad session state");
	return SMTP_WAIT_CLOSED;
}

const char *smtp_state_name(const struct smtp_session *s)
{
	switch (s->state) {
	case SMTP_S_COMMAND:
		if (s->auth_step != AUTH_IDLE)
			return "auth";
		if (s->in_transaction && s->env.chunking)
			return "bdat"; /* between chunks */
		if (s->in_transaction)
			return s->env.nrcpt ? "rcpt" : "mail";
		return s->greeted ? "ehlo" : "greeting";
	case SMTP_S_DATA:
		return "data";
	case SMTP_S_BDAT:
		return "bdat";
	case SMTP_S_WAIT_COMMIT:
		return "commit";
	case SMTP_S_CLOSED:
		return "closed";
	}
	assert(!"bad session state");
	return "?";
}

void smtp_timeout(struct smtp_session *s, struct buf *out)
{
	if (s->state == SMTP_S_CLOSED)
		return;
	reply_as(s, out, "TIMEOUT", REPLY_CLOSING, "421 4.4.2 %s Error: timeout exceeded",
		   s->cfg->hostname);
}

void smtp_shutdown(struct smtp_session *s, struct buf *out)
{
	if (s->state == SMTP_S_CLOSED)
		return;
	reply_as(s, out, "SHUTDOWN", REPLY_CLOSING, "421 4.3.2 %s Service shutting down",
		   s->cfg->hostname);
}
