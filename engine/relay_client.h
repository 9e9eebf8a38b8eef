/* relay_client: the client side of SMTP (RFC 5321) and LMTP (RFC 2033) as
 * a pure, incremental state machine, for delivering spooled mail to a next
 * hop.
 *
 * The caller owns the socket, the TLS layer, the clock and every buffer.
 * It feeds the next hop's reply bytes in (relay_client_feed), hands over
 * messages (relay_client_message) and their bytes in chunks as it reads
 * them from the segment (relay_client_body), and sends whatever the client
 * appended to `out`. Each call returns what the client wants next. No
 * syscalls, no clock, no allocation.
 *
 * Flow for one connection:
 *   relay_client_init()             after connect (smtps: after the handshake)
 *   loop, on the returned status:
 *     RELAY_WANT_REPLY   send out, then feed what the next hop says
 *     RELAY_START_TLS    STARTTLS accepted: send out (nothing), do the TLS
 *                        handshake, then relay_client_tls_done(); a failed
 *                        handshake is relay_client_abort(RELAY_ABORT_TLS)
 *     RELAY_READY        idle: give a message (relay_client_message) or
 *                        end with relay_client_quit()
 *     RELAY_WANT_BODY    give the message's next bytes (relay_client_body);
 *                        replies may be fed meanwhile (BDAT replies, or an
 *                        early 421), and they may change the status
 *     RELAY_CLOSED       send out (a last QUIT, maybe), then close
 *   Lost connection or a deadline passed: relay_client_abort().
 *
 * Outcomes: every recipient of every message given gets exactly one
 * outcome through hooks.outcome (delivered, deferred or failed, with the
 * reply that decided it), before the status returns to RELAY_READY or
 * becomes RELAY_CLOSED. A 421 or a lost connection defers every recipient
 * not yet finished. So when the status is READY or CLOSED, the message in
 * flight (if any) is over and its memory may be reused.
 *
 * A connection that fails before the first message (greeting, EHLO,
 * STARTTLS) ends in RELAY_CLOSED with no outcome; relay_client_error()
 * says why, and the caller decides (next host of the route, or defer).
 *
 * Delivery is at least once: a connection lost after the end of the data
 * and before the reply defers the recipients, and the message may reach
 * the next hop twice. */
#ifndef MXD_RELAY_CLIENT_H
#define MXD_RELAY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "relay_url.h"
#include "smtp.h"

/* Defaults for struct relay_client_config. */
#define RELAY_REPLY_MAX_DEFAULT 4096u     /* bytes of one reply, every line */
#define RELAY_BDAT_CHUNK_DEFAULT (1024u * 1024u) /* bytes per BDAT chunk (conf: relay chunk-size) */
#define RELAY_BDAT_WINDOW_DEFAULT 8u      /* BDAT chunks awaiting replies */
#define RELAY_REPLY_MIN 64u               /* smallest usable reply bound */
#define RELAY_ERROR_MAX 512               /* relay_client_error() text */
#define RELAY_ENHANCED_MAX 16             /* "5.123.456" and a NUL */

enum relay_protocol { RELAY_SMTP = 0, RELAY_LMTP };

/* enum relay_tls (RELAY_TLS_NONE, _STARTTLS, _IMPLICIT) is the next-hop
 * URL's, relay_url.h: one definition, so the worker can use both. */

struct relay_client_config {
	enum relay_protocol protocol;
	enum relay_tls tls;
	const char *helo_name;      /* EHLO/LHLO/HELO argument */
	size_t max_reply;           /* bound on one reply (all its lines, raw
	                               bytes); the reply buffer given to
	                               relay_client_init holds this many bytes */
	uint32_t bdat_chunk;        /* bytes per BDAT chunk (>= 1) */
	uint32_t bdat_window;       /* chunks sent ahead of their replies when
	                               the next hop offers PIPELINING (>= 1) */
	bool no_pipelining;         /* never pipeline, even when offered */
	bool no_chunking;           /* use DATA even when CHUNKING is offered */
};

/* A config with the defaults above (SMTP, no TLS). */
struct relay_client_config relay_client_config_default(const char *helo_name);

/* One recipient of a message. Strings are views (not NUL-terminated), e.g.
 * into the spool record; they must stay valid until the message is over. */
struct relay_rcpt {
	const char *addr; size_t addr_len;   /* without <> */
	const char *orcpt; size_t orcpt_len; /* ORCPT= value as received, or NULL */
	uint8_t notify;                      /* SMTP_NOTIFY_* bits, 0 = absent */
	uint32_t id;                         /* the caller's: e.g. the index in
	                                        the spool record */
	uint8_t state;                       /* private to relay_client */
};

/* One message for the connection. The recipients array is written by the
 * client (their state) until the message is over. */
struct relay_message {
	const char *mail_from; size_t mail_from_len; /* "" for the null sender */
	uint64_t size;                 /* exact length of the message bytes
	                                  relay_client_body will be given */
	enum smtp_body_type body_type;
	bool smtputf8;
	enum smtp_ret ret;
	const char *envid; size_t envid_len; /* ENVID= (xtext) or NULL */
	struct relay_rcpt *rcpts;
	uint32_t nrcpt;
};

enum relay_verdict {
	RELAY_DELIVERED = 0,  /* 2xx at the end of the data */
	RELAY_DEFERRED,       /* 4xx, 421, lost connection, timeout: retry later */
	RELAY_FAILED,         /* 5xx or a local permanent failure: no retry */
};

/* A reply from the next hop, or one the client made up (local = true:
 * lost connection, protocol error, SIZE over the next hop's limit...). */
struct relay_reply {
	uint16_t code;                      /* 250, 451, 550, ... */
	char enhanced[RELAY_ENHANCED_MAX];  /* "5.1.1", or "" when none was sent */
	const char *text; size_t text_len;  /* the reply's text: every line's
	                                       text after the code (and the
	                                       enhanced code), joined with one
	                                       space, printable ASCII only */
	bool local;
};

struct relay_outcome {
	const struct relay_rcpt *rcpt;      /* which recipient (rcpt->id is yours) */
	uint32_t index;                     /* its index in message->rcpts */
	enum relay_verdict verdict;
	struct relay_reply reply;           /* valid during the callback only */
};

struct relay_hooks {
	void *ctx;
	void (*outcome)(void *ctx, const struct relay_outcome *o);
};

enum relay_status {
	RELAY_WANT_REPLY = 0,
	RELAY_WANT_BODY,
	RELAY_READY,
	RELAY_START_TLS,
	RELAY_CLOSED,
};

/* Which deadline applies (RFC 5321 4.5.3.2); the caller maps it to its
 * configured timeouts. */
enum relay_wait {
	RELAY_WAIT_GREETING = 0,   /* 220 banner */
	RELAY_WAIT_COMMAND,        /* reply to EHLO, MAIL, RCPT, DATA, BDAT, RSET... */
	RELAY_WAIT_DATA_END,       /* reply after the end of the data / BDAT LAST */
	RELAY_WAIT_BODY,           /* the caller is to give message bytes */
	RELAY_WAIT_TLS,            /* the caller's TLS handshake */
	RELAY_WAIT_IDLE,           /* ready, nothing in flight */
	RELAY_WAIT_NONE,           /* closed */
};

enum relay_abort {
	RELAY_ABORT_LOST = 0,      /* connection reset or closed by the next hop */
	RELAY_ABORT_TIMEOUT,       /* the deadline of relay_client_waiting_for() passed */
	RELAY_ABORT_TLS,           /* the TLS handshake failed */
	RELAY_ABORT_SHUTDOWN,      /* mxd is stopping */
};

/* What the next hop offered in its EHLO/LHLO reply. */
enum {
	RELAY_EXT_PIPELINING = 1u << 0,
	RELAY_EXT_CHUNKING = 1u << 1,
	RELAY_EXT_SIZE = 1u << 2,
	RELAY_EXT_8BITMIME = 1u << 3,
	RELAY_EXT_BINARYMIME = 1u << 4,
	RELAY_EXT_SMTPUTF8 = 1u << 5,
	RELAY_EXT_DSN = 1u << 6,
	RELAY_EXT_STARTTLS = 1u << 7,
	RELAY_EXT_ENHANCEDSTATUSCODES = 1u << 8,
};

struct relay_client {
	const struct relay_client_config *cfg;
	struct relay_hooks hooks;
	uint8_t state;             /* enum in relay_client.c */
	bool tls;                  /* the connection runs inside TLS */
	bool esmtp;                /* EHLO (or LHLO) accepted, not HELO */
	uint32_t ext;              /* RELAY_EXT_* of the last EHLO/LHLO reply */
	uint64_t size_limit;       /* SIZE n offered, 0 = none declared */
	uint32_t transactions;     /* messages completed on this connection */

	/* The reply being read: its text so far, then the raw line in progress
	 * right behind it (see relay_client.c). */
	char *reply;               /* cfg->max_reply bytes, the caller's */
	size_t reply_text_len;     /* joined text of the complete lines */
	size_t reply_line_len;     /* raw bytes of the line in progress */
	size_t reply_raw;          /* raw bytes of this reply, every line */
	uint32_t reply_lines;      /* complete lines of this reply */
	uint16_t reply_code;
	char reply_enhanced[RELAY_ENHANCED_MAX];

	/* The message in flight (see relay_client.c for the phases). */
	struct relay_message *msg;
	uint32_t rcpt_send;        /* next recipient whose RCPT is to be sent */
	uint32_t rcpt_reply;       /* next recipient whose RCPT reply is due */
	uint32_t rcpt_outstanding; /* RCPTs sent, replies not yet read */
	uint32_t rcpt_accepted;    /* 2xx to RCPT */
	uint32_t rcpt_open;        /* recipients without an outcome */
	uint32_t final_cursor;     /* LMTP: next accepted recipient to get a reply */
	uint32_t final_due;        /* replies still due after the data */
	bool mail_sent, mail_replied, mail_ok;
	bool data_sent, data_replied;
	bool pipelining;           /* this message's commands go in one write */
	bool chunking;             /* this message goes as BDAT */
	bool utf8;                 /* SMTPUTF8 on this message's MAIL */
	bool body_phase;           /* 354 seen, or BDAT may start */
	bool out_failed;           /* out refused an append: the connection ends */
	bool txn_failed;           /* failed after MAIL was accepted: RSET */
	uint64_t body_given;       /* message bytes taken from the caller */
	uint64_t chunk_left;       /* bytes still owed to the open BDAT chunk */
	uint32_t chunks_sent, chunks_replied;
	bool last_sent;            /* BDAT LAST or the final dot is out */
	bool at_line_start;        /* DATA dot-stuffing across chunks */
	bool cr_pending;

	char error[RELAY_ERROR_MAX]; /* why the connection ended, "" when clean */
	uint16_t error_code;       /* its reply code (451 for the client's own
	                              reasons), 0 when clean */
};

/* `reply_buf` holds cfg->max_reply bytes and outlives the client. */
void relay_client_init(struct relay_client *c, const struct relay_client_config *cfg,
		       char *reply_buf, struct relay_hooks hooks);

/* The next hop's bytes. *consumed is how far it got: all of it unless the
 * status is RELAY_START_TLS (bytes after the 220 would be a plaintext
 * injection: that ends the connection instead) or RELAY_CLOSED, where the
 * rest is to be dropped. Commands are appended to out. */
enum relay_status relay_client_feed(struct relay_client *c, const char *data, size_t len,
				    size_t *consumed, struct buf *out);

/* In RELAY_READY: start a transaction for msg (at least one recipient).
 * A message the next hop cannot take (over its SIZE, BINARYMIME without
 * CHUNKING, non-ASCII addresses without SMTPUTF8) gets its outcomes here,
 * without a byte sent. */
enum relay_status relay_client_message(struct relay_client *c, struct relay_message *msg,
				       struct buf *out);

/* In RELAY_WANT_BODY: the message's next bytes, in order, in chunks of any
 * size (the total is msg->size). *consumed may be less than len when the
 * client must wait for replies first (BDAT window full, or a chunk refused). */
enum relay_status relay_client_body(struct relay_client *c, const char *data, size_t len,
				    size_t *consumed, struct buf *out);

/* After RELAY_START_TLS and a successful handshake: EHLO again. */
enum relay_status relay_client_tls_done(struct relay_client *c, struct buf *out);

/* In RELAY_READY: QUIT. The caller may close once out is sent, or read the
 * 221 first (the status is RELAY_WANT_REPLY until it comes). */
enum relay_status relay_client_quit(struct relay_client *c, struct buf *out);

/* The connection is gone or must go: every unfinished recipient is
 * deferred (4.4.2 for lost and timeout, 4.7.0 for TLS, 4.3.2 for shutdown),
 * and the status is RELAY_CLOSED. */
void relay_client_abort(struct relay_client *c, enum relay_abort why);

enum relay_status relay_client_status(const struct relay_client *c);
enum relay_wait relay_client_waiting_for(const struct relay_client *c);

/* Why the connection ended ("" while open or after a clean QUIT), e.g.
 * "554 5.7.1 greeting: no service for you" or "lost connection while
 * waiting for the reply to RCPT". */
const char *relay_client_error(const struct relay_client *c);

/* The reply class as a verdict: 2 delivered, 4 deferred, 5 failed. */
enum relay_verdict relay_verdict_of(uint16_t code);

#endif
