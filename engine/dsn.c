/* dsn: the DSN generator (see the header).
 *
 * The message is written in one pass into the caller's buffer through a
 * small line writer that keeps every line under RFC 5322's 78 octets where
 * a value has spaces to fold at, and always under the 998-octet limit: a
 * word too long for any line (only a hostile reply has one) is cut. What
 * comes from outside (addresses, reply texts, ENVID, ORCPT) is reduced to
 * printable characters first, so no CR, LF or control byte from a next hop
 * can forge a header or a MIME boundary. */
#include "dsn.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define LINE_SOFT 78      /* RFC 5322 2.1.1: SHOULD */
#define LINE_HARD 998     /* RFC 5322 2.1.1: MUST, CRLF excluded */
#define WORD_MAX 900      /* a longer word is cut: it could not be folded */

/* ------------------------------------------------------------- writer */

struct writer {
	struct buf *out;
	size_t col;           /* octets on the current line */
	bool failed;          /* out refused an append */
	bool eightbit;        /* an octet over 127 was written */
};

static void put(struct writer *w, const char *p, size_t n)
{
	if (w->failed)
		return;
	if (buf_append(w->out, p, n) < 0) {
		w->failed = true;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n')
			w->col = 0;
		else
			w->col++;
		if ((unsigned char)p[i] >= 0x80)
			w->eightbit = true;
	}
}

static void puts_(struct writer *w, const char *s)
{
	put(w, s, strlen(s));
}

__attribute__((format(printf, 2, 3)))
static void putf(struct writer *w, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	put(w, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void crlf(struct writer *w)
{
	put(w, "\r\n", 2);
}

/* Printable ASCII and UTF-8 octets stay; controls become '?'. */
static bool printable(unsigned char ch)
{
	return (ch >= 0x20 && ch != 0x7f);
}

/* Write text folded at spaces: a line that would pass LINE_SOFT goes on
 * after CRLF and `indent` (at least one space in a header, where that is
 * what folding is). Runs of spaces and controls become one space. */
static void put_folded(struct writer *w, const char *p, size_t n, const char *indent)
{
	size_t i = 0;
	bool first = true;
	while (i < n) {
		while (i < n && (p[i] == ' ' || !printable((unsigned char)p[i])))
			i++;
		size_t j = i;
		while (j < n && p[j] != ' ' && printable((unsigned char)p[j]))
			j++;
		if (j == i)
			break;
		size_t wl = j - i;
		if (wl > WORD_MAX)
			wl = WORD_MAX;
		size_t sep = first ? 0 : 1;
		/* Between words, fold for the soft limit; before the first
		 * word only when the hard limit forces it. */
		bool fold = w->col + sep + wl > (first ? LINE_HARD : LINE_SOFT) &&
			    w->col > strlen(indent);
		if (fold) {
			crlf(w);
			puts_(w, indent);
		} else if (!first) {
			put(w, " ", 1);
		}
		put(w, p + i, wl);
		assert(w->failed || w->col <= LINE_HARD);
		first = false;
		i = j;
	}
}

/* A header or report field: "Name: value", folded. */
static void field(struct writer *w, const char *name, const char *v, size_t n)
{
	puts_(w, name);
	puts_(w, ": ");
	put_folded(w, v, n, "\t");
	crlf(w);
}

/* ------------------------------------------------------------- values */

void dsn_date(char *out, size_t size, int64_t t)
{
	static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm)) {
		tt = 0;
		gmtime_r(&tt, &tm);
	}
	snprintf(out, size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
		 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec);
}

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* RFC 3461 4: "+XX" is the octet XX. The result is what the sender meant,
 * which is what a report shows; a control octet becomes '?'. Returns the
 * decoded length (at most n). */
static size_t xtext_decode(const char *p, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char ch = p[i];
		if (ch == '+' && i + 2 < n && hex_value(p[i + 1]) >= 0 && hex_value(p[i + 2]) >= 0) {
			ch = (char)(hex_value(p[i + 1]) * 16 + hex_value(p[i + 2]));
			i += 2;
		}
		out[o++] = printable((unsigned char)ch) ? ch : '?';
	}
	return o;
}

static bool has_8bit(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] >= 0x80)
			return true;
	return false;
}

/* RFC 6533 3: an address that is not ASCII is of type utf-8. */
static const char *address_type(const char *p, size_t n)
{
	return has_8bit(p, n) ? "utf-8" : "rfc822";
}

/* "D.D{1,3}.D{1,3}" with D 2, 4 or 5. */
static bool status_ok(const char *s)
{
	if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	const char *p = s + 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (p[d] >= '0' && p[d] <= '9')
			d++;
		if (d == 0 || d > 3)
			return false;
		p += d;
		if (part == 0 && *p++ != '.')
			return false;
	}
	return *p == '\0';
}

static const char *status_of(const struct dsn_rcpt *r)
{
	if (status_ok(r->status))
		return r->status;
	if (r->code / 100 == 4)
		return "4.0.0";
	if (r->code / 100 == 5)
		return "5.0.0";
	return r->action == DSN_ACTION_DELAYED ? "4.0.0" : "5.0.0";
}

/* ------------------------------------------------------------ who gets it */

bool dsn_wanted(size_t mail_from_len, uint8_t notify, enum dsn_action action)
{
	if (mail_from_len == 0 || (notify & SMTP_NOTIFY_NEVER))
		return false;
	if (action == DSN_ACTION_DELAYED)
		return notify & SMTP_NOTIFY_DELAY;
	return notify == 0 || (notify & SMTP_NOTIFY_FAILURE);
}

static bool reported(const struct dsn_message *m, const struct dsn_rcpt *r)
{
	return dsn_wanted(m->mail_from_len, r->notify, r->action);
}

/* ------------------------------------------------------ the original */

/* The header block: up to the first empty line (its CRLF excluded), or
 * the whole message when there is none. */
static size_t header_len(const char *p, size_t n)
{
	for (size_t i = 0; i + 1 < n; i++) {
		if (p[i] != '\n')
			continue;
		if (p[i + 1] == '\n')
			return i + 1;
		if (p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n')
			return i + 1;
	}
	return n;
}

/* Can the bytes travel as they are inside message/rfc822 (RFC 2046 5.2.1:
 * 7bit or 8bit, so no NUL and lines within 998 octets)? */
static bool fits_as_message(const char *p, size_t n)
{
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\0')
			return false;
		if (p[i] == '\n' || p[i] == '\r')
			col = 0;
		else if (++col > LINE_HARD)
			return false;
	}
	return true;
}

/* Copy the original: every line ending becomes CRLF, a NUL becomes '?',
 * a line is cut at 998 octets, and the last line is completed. */
static void put_original(struct writer *w, const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t j = i;
		while (j < n && p[j] != '\r' && p[j] != '\n')
			j++;
		size_t len = j - i < LINE_HARD ? j - i : LINE_HARD;
		size_t k = i;
		while (k < i + len) {
			const char *nul = memchr(p + k, '\0', i + len - k);
			size_t run = nul ? (size_t)(nul - (p + k)) : i + len - k;
			put(w, p + k, run);
			k += run;
			if (nul) {
				put(w, "?", 1);
				k++;
			}
		}
		crlf(w);
		if (j < n && p[j] == '\r' && j + 1 < n && p[j + 1] == '\n')
			j++;
		i = j + 1;
	}
}

/* ---------------------------------------------------------- boundary */

static bool contains(const char *hay, size_t n, const char *needle)
{
	return hay && n > 0 && memmem(hay, n, needle, strlen(needle)) != NULL;
}

/* A boundary found in nothing that goes into the DSN. Every part of the
 * DSN we write ourselves is printable text the boundary's "=_" cannot
 * start a line of; what comes from outside is checked. */
static void pick_boundary(const struct dsn_message *m, char *b, size_t size)
{
	for (unsigned attempt = 0;; attempt++) {
		snprintf(b, size, "=_mxd_%.64s_%u", m->id, attempt);
		bool used = contains(m->original, m->original_len, b) ||
			    contains(m->mail_from, m->mail_from_len, b) ||
			    contains(m->envid, m->envid_len, b);
		for (uint32_t i = 0; i < m->nrcpt && !used; i++) {
			const struct dsn_rcpt *r = &m->rcpts[i];
			used = contains(r->addr, r->addr_len, b) || contains(r->orcpt, r->orcpt_len, b) ||
			       contains(r->diagnostic, r->diagnostic_len, b) ||
			       contains(r->remote_mta, r->remote_mta_len, b);
		}
		if (!used)
			return;
	}
}

/* --------------------------------------------------------------- parts */

struct plan {
	uint32_t failed, delayed;
	bool full;              /* message/rfc822 rather than text/rfc822-headers */
	bool full_refused;      /* RET=FULL asked for and not possible */
	/* Labels that depend on what the parts hold: the top-level
	 * Content-Transfer-Encoding (8bit), the notice's charset (utf-8), and
	 * message/global-delivery-status for a report with UTF-8 (RFC 6533).
	 * Written before the content they describe, so dsn_build renders once
	 * with none set and again, rarely, with what the first pass saw. */
	bool any8, human8, report8;
	size_t returned_len;    /* bytes of the original returned */
	char boundary[96];
	char date[40];
};

static void top_headers(struct writer *w, const struct dsn_message *m, const struct plan *pl)
{
	char date[40];
	dsn_date(date, sizeof date, m->now);
	field(w, "Date", date, strlen(date));
	putf(w, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", m->reporting_mta);
	puts_(w, "To: <");
	put_folded(w, m->mail_from, m->mail_from_len, "\t");
	puts_(w, ">\r\n");
	const char *subject = pl->failed ? "Undelivered Mail Returned to Sender"
					 : "Delayed Mail (still being retried)";
	field(w, "Subject", subject, strlen(subject));
	puts_(w, "Message-ID: <");
	put_folded(w, m->id, strlen(m->id), "\t");
	putf(w, ".dsn@%s>\r\n", m->reporting_mta);
	puts_(w, "Auto-Submitted: auto-replied\r\n");
	puts_(w, "MIME-Version: 1.0\r\n");
	puts_(w, "Content-Type: multipart/report; report-type=delivery-status;\r\n");
	putf(w, "\tboundary=\"%s\"\r\n", pl->boundary);
	putf(w, "Content-Transfer-Encoding: %s\r\n", pl->any8 ? "8bit" : "7bit");
	crlf(w);
	puts_(w, "This is a MIME-encapsulated message.\r\n");
	crlf(w);
}

static void paragraph(struct writer *w, const char *text)
{
	put_folded(w, text, strlen(text), "");
	crlf(w);
	crlf(w);
}

static void human_part(struct writer *w, const struct dsn_message *m, const struct plan *pl)
{
	putf(w, "--%s\r\n", pl->boundary);
	puts_(w, "Content-Description: Notification\r\n");
	putf(w, "Content-Type: text/plain; charset=%s\r\n", pl->human8 ? "utf-8" : "us-ascii");
	crlf(w);
	char text[600];
	snprintf(text, sizeof text, "This is the mail system at %s.", m->reporting_mta);
	paragraph(w, text);
	if (pl->failed)
		paragraph(w, "Your message could not be delivered to one or more of its recipients, "
			     "and no further attempts will be made for them. The reasons are "
			     "below.");
	if (pl->delayed)
		paragraph(w, "Your message has not yet been delivered to one or more of its "
			     "recipients. Delivery will go on being tried; you do not need to send "
			     "it again.");
	for (uint32_t i = 0; i < m->nrcpt; i++) {
		const struct dsn_rcpt *r = &m->rcpts[i];
		if (!reported(m, r))
			continue;
		puts_(w, "<");
		put_folded(w, r->addr, r->addr_len, "    ");
		puts_(w, r->action == DSN_ACTION_FAILED ? ">: failed" : ">: delayed");
		if (r->action == DSN_ACTION_DELAYED && r->retry_until) {
			char date[40];
			dsn_date(date, sizeof date, r->retry_until);
			putf(w, " (will be retried until %s)", date);
		}
		crlf(w);
		puts_(w, "    ");
		if (r->remote_mta) {
			put_folded(w, r->remote_mta, r->remote_mta_len, "    ");
			puts_(w, " said: ");
		} else {
			putf(w, "%s said: ", m->reporting_mta);
		}
		if (r->code)
			putf(w, "%03u %s ", r->code, status_of(r));
		if (r->diagnostic)
			put_folded(w, r->diagnostic, r->diagnostic_len, "    ");
		crlf(w);
		crlf(w);
	}
	if (pl->full_refused)
		paragraph(w, "The whole message was asked for (RET=FULL) but only its headers are "
			     "attached: it is too large or cannot be carried unchanged in a report.");
	crlf(w);
}

static void per_recipient(struct writer *w, const struct dsn_rcpt *r)
{
	char tmp[512];
	crlf(w); /* a blank line opens each recipient's group (RFC 3464 2.1) */
	if (r->orcpt && r->orcpt_len <= 500) {
		const char *semi = memchr(r->orcpt, ';', r->orcpt_len);
		if (semi && semi > r->orcpt) {
			size_t tl = (size_t)(semi - r->orcpt);
			size_t vl = xtext_decode(semi + 1, r->orcpt_len - tl - 1, tmp);
			puts_(w, "Original-Recipient: ");
			put_folded(w, r->orcpt, tl, "\t");
			puts_(w, ";");
			put_folded(w, tmp, vl, "\t");
			crlf(w);
		}
	}
	putf(w, "Final-Recipient: %s; ", address_type(r->addr, r->addr_len));
	put_folded(w, r->addr, r->addr_len, "\t");
	crlf(w);
	putf(w, "Action: %s\r\n", r->action == DSN_ACTION_FAILED ? "failed" : "delayed");
	putf(w, "Status: %s\r\n", status_of(r));
	if (r->remote_mta) {
		puts_(w, "Remote-MTA: dns; ");
		put_folded(w, r->remote_mta, r->remote_mta_len, "\t");
		crlf(w);
	}
	if (r->code || r->diagnostic) {
		puts_(w, "Diagnostic-Code: smtp; ");
		if (r->code)
			putf(w, "%03u %s ", r->code, status_of(r));
		if (r->diagnostic)
			put_folded(w, r->diagnostic, r->diagnostic_len, "\t");
		crlf(w);
	}
	if (r->last_attempt) {
		dsn_date(tmp, sizeof tmp, r->last_attempt);
		putf(w, "Last-Attempt-Date: %s\r\n", tmp);
	}
	if (r->action == DSN_ACTION_DELAYED && r->retry_until) {
		dsn_date(tmp, sizeof tmp, r->retry_until);
		putf(w, "Will-Retry-Until: %s\r\n", tmp);
	}
}

static void status_part(struct writer *w, const struct dsn_message *m, const struct plan *pl)
{
	putf(w, "--%s\r\n", pl->boundary);
	puts_(w, "Content-Description: Delivery report\r\n");
	/* RFC 6533 6.2: a report with a UTF-8 address is a global one. */
	putf(w, "Content-Type: message/%sdelivery-status\r\n", pl->report8 ? "global-" : "");
	crlf(w);
	putf(w, "Reporting-MTA: dns; %s\r\n", m->reporting_mta);
	if (m->envid && m->envid_len <= 100) {
		char tmp[128];
		size_t n = xtext_decode(m->envid, m->envid_len, tmp);
		puts_(w, "Original-Envelope-Id: ");
		put_folded(w, tmp, n, "\t");
		crlf(w);
	}
	if (m->arrival) {
		char date[40];
		dsn_date(date, sizeof date, m->arrival);
		putf(w, "Arrival-Date: %s\r\n", date);
	}
	for (uint32_t i = 0; i < m->nrcpt; i++)
		if (reported(m, &m->rcpts[i]))
			per_recipient(w, &m->rcpts[i]);
	crlf(w);
}

static void original_part(struct writer *w, const struct dsn_message *m, const struct plan *pl)
{
	putf(w, "--%s\r\n", pl->boundary);
	if (pl->full) {
		puts_(w, "Content-Description: Undelivered Message\r\n");
		puts_(w, "Content-Type: message/rfc822\r\n");
	} else {
		puts_(w, "Content-Description: Undelivered Message Headers\r\n");
		puts_(w, "Content-Type: text/rfc822-headers\r\n");
	}
	crlf(w);
	put_original(w, m->original, pl->returned_len);
	crlf(w);
	putf(w, "--%s--\r\n", pl->boundary);
}

static void make_plan(const struct dsn_message *m, struct plan *pl)
{
	memset(pl, 0, sizeof *pl);
	for (uint32_t i = 0; i < m->nrcpt; i++) {
		if (!reported(m, &m->rcpts[i]))
			continue;
		if (m->rcpts[i].action == DSN_ACTION_FAILED)
			pl->failed++;
		else
			pl->delayed++;
	}
	uint64_t full_max = m->full_max ? m->full_max : DSN_FULL_MAX_DEFAULT;
	pl->full = m->ret == SMTP_RET_FULL && m->original_len <= full_max &&
		   fits_as_message(m->original, m->original_len);
	pl->full_refused = m->ret == SMTP_RET_FULL && !pl->full;
	pl->returned_len = pl->full ? m->original_len : header_len(m->original, m->original_len);
	pick_boundary(m, pl->boundary, sizeof pl->boundary);
}

/* Write the whole DSN; *seen says which parts held octets over 127. */
static void render(struct writer *w, const struct dsn_message *m, const struct plan *pl,
		   struct plan *seen)
{
	w->eightbit = false;
	top_headers(w, m, pl);
	bool head8 = w->eightbit;
	w->eightbit = false;
	human_part(w, m, pl);
	seen->human8 = w->eightbit;
	w->eightbit = false;
	status_part(w, m, pl);
	seen->report8 = w->eightbit;
	w->eightbit = false;
	original_part(w, m, pl);
	seen->any8 = head8 || seen->human8 || seen->report8 || w->eightbit;
}

int dsn_build(struct buf *out, const struct dsn_message *m, struct dsn_result *res)
{
	assert(m->reporting_mta && m->id && (m->original || m->original_len == 0));
	memset(res, 0, sizeof *res);
	struct plan pl;
	make_plan(m, &pl);
	if (pl.failed + pl.delayed == 0)
		return 0;
	size_t start = out->len;
	struct writer w = { .out = out };
	struct plan seen = pl;
	render(&w, m, &pl, &seen);
	if (!w.failed && (seen.any8 != pl.any8 || seen.human8 != pl.human8 || seen.report8 != pl.report8)) {
		/* The labels are ASCII: the second pass holds the same octets. */
		out->len = start;
		pl.any8 = seen.any8;
		pl.human8 = seen.human8;
		pl.report8 = seen.report8;
		render(&w, m, &pl, &seen);
		assert(w.failed || (seen.any8 == pl.any8 && seen.human8 == pl.human8 &&
				    seen.report8 == pl.report8));
	}
	if (w.failed) {
		out->len = start;
		return -1;
	}
	res->reported = pl.failed + pl.delayed;
	res->eightbit = pl.any8;
	res->full = pl.full;
	return 0;
}
