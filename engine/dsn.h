/* dsn: delivery status notifications (RFC 3464 multipart/report with
 * report-type=delivery-status, RFC 6522; RFC 3461 for NOTIFY, RET, ENVID
 * and ORCPT), as a pure generator.
 *
 * The caller says which recipients failed (or are delayed) and why, and
 * gives the original message's bytes; dsn_build appends the complete DSN
 * message (headers and body, CRLF line ends, no line over 998 octets) to a
 * buffer. The caller spools it with the null reverse path (MAIL FROM:<>,
 * so a DSN never causes another) and one recipient, the original sender,
 * and with BODY=8BITMIME when the result says eightbit.
 *
 * Who gets one (dsn_wanted): never the null sender; a recipient with
 * NOTIFY=NEVER never; a failure when NOTIFY had FAILURE or was absent; a
 * delay only when NOTIFY had DELAY (RFC 3461 4.1 lets an MTA choose for
 * an absent NOTIFY; mxd does not send delay notices unasked).
 *
 * Nothing here reads the clock or allocates outside the output buffer. */
#ifndef MXD_DSN_H
#define MXD_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "smtp.h"

/* RET=FULL returns the whole message up to this size (bytes); a larger
 * one is returned as its headers, and the notice says so. */
#define DSN_FULL_MAX_DEFAULT (1024u * 1024u)

enum dsn_action {
	DSN_ACTION_FAILED = 0,      /* Action: failed */
	DSN_ACTION_DELAYED,         /* Action: delayed */
};

/* One recipient to report. Strings are views (not NUL-terminated) except
 * status. */
struct dsn_rcpt {
	const char *addr; size_t addr_len;      /* the RCPT TO address */
	const char *orcpt; size_t orcpt_len;    /* ORCPT= as received
	                                           ("rfc822;" xtext), or NULL */
	uint8_t notify;                         /* SMTP_NOTIFY_* bits, 0 = absent */
	enum dsn_action action;
	uint16_t code;                          /* the reply that decided, 0 if none */
	const char *status;                     /* its enhanced code "5.1.1"; NULL
	                                           or malformed: from the code's class */
	const char *diagnostic; size_t diagnostic_len; /* the reply's text, or NULL */
	const char *remote_mta; size_t remote_mta_len; /* the next hop that said it,
	                                           or NULL when mxd decided (local) */
	int64_t last_attempt;                   /* unix seconds, 0: not given */
	int64_t retry_until;                    /* delayed: unix seconds, 0: not given */
};

struct dsn_message {
	const char *reporting_mta;              /* mxd's host name (as in EHLO) */
	const char *mail_from; size_t mail_from_len; /* the original sender */
	const char *envid; size_t envid_len;    /* ENVID= (xtext), or NULL */
	enum smtp_ret ret;                      /* absent means headers only */
	int64_t arrival;                        /* when mxd accepted the original */
	int64_t now;                            /* the DSN's Date */
	const char *id;                         /* unique per DSN (e.g. spool id and
	                                           time): Message-ID and boundary */
	const char *original; size_t original_len; /* Received: + content */
	uint64_t full_max;                      /* RET=FULL bound, 0: DSN_FULL_MAX_DEFAULT */
	const struct dsn_rcpt *rcpts;
	uint32_t nrcpt;
};

struct dsn_result {
	uint32_t reported;      /* recipients in the DSN; 0: no DSN is due */
	bool eightbit;          /* octets over 127 inside: spool with BODY=8BITMIME */
	bool full;              /* the whole message is returned (message/rfc822) */
};

/* Is a DSN due for this recipient? (see above) */
bool dsn_wanted(size_t mail_from_len, uint8_t notify, enum dsn_action action);

/* Append the DSN to out. Returns 0 (res->reported == 0: none is due, out
 * unchanged), or -1 when out's limit was reached (out unchanged). */
int dsn_build(struct buf *out, const struct dsn_message *m, struct dsn_result *res);

/* RFC 5322 date of unix time t in UTC, "Sun, 29 Nov 2026 00:49:31 +0000";
 * out holds at least 32 bytes. */
void dsn_date(char *out, size_t size, int64_t t);

#endif
