/* smtp: the server side of RFC 5321 as a pure, incremental state machine.
 *
 * Bytes go in (smtp_feed), replies come out (appended to a caller-owned
 * struct buf), and the few things the I/O shell must act on come back as a
 * status. No syscalls, no clock, no sockets: that is what lets the same code
 * be unit-tested at every byte boundary, fuzzed, and driven by io_uring.
 *
 * Flow for one session:
 *   smtp_session_init()            once, with the config snapshot and peer
 *   smtp_greeting(out)             220 banner
 *   loop: smtp_feed(data)          replies appended to out; status says
 *     SMTP_NEED_MORE               all input consumed, wait for more
 *     SMTP_MESSAGE_READY           a message is complete (s->env, s->body);
 *                                  stop feeding, spool it, then call
 *                                  smtp_commit_done() which writes the
 *                                  250/451 reply; then feed the rest
 *     SMTP_STARTTLS                220 sent for STARTTLS: the caller must
 *                                  discard every unconsumed byte (never
 *                                  execute plaintext pipelined behind it),
 *                                  handshake, then smtp_tls_established()
 *     SMTP_AUTH_CHECK              an AUTH exchange (RFC 4954) produced
 *                                  credentials in s->auth_user and
 *                                  s->auth_password: verify them, then call
 *                                  smtp_auth_done() which writes 235/535
 *                                  and wipes the password; then feed the rest
 *     SMTP_CLOSE                   flush out, then close (QUIT, 421, ...)
 *   smtp_session_free()
 */
#ifndef MXD_SMTP_H
#define MXD_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"

struct policy;

/* Immutable per-listener settings, built from the config snapshot. */
struct smtp_config {
	const char *hostname;       /* in the banner, EHLO reply, Received: */
	size_t max_line_length;     /* longest command line, CRLF included */
	uint64_t max_message_size;  /* bytes of message content (SIZE=) */
	uint32_t max_recipients;    /* RCPTs accepted per transaction */
	uint32_t max_errors;        /* 4xx/5xx replies before 421 and close */
	bool accept_bare_newlines;  /* false: bare CR / LF in content is refused */
	bool starttls_offered;      /* listener has "tls" and session not in TLS */
	bool tls_required;          /* "tls-require": 530 5.7.0 for MAIL before TLS */
	bool auth_offered;          /* listener has "auth": AUTH PLAIN LOGIN inside TLS */
	const struct policy *policy;/* NULL accepts every recipient (tests) */
};

/* What the session knows of its client; filled by the I/O shell. */
struct smtp_peer {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char addr_str[64];          /* "192.0.2.1" or "2001:db8::1", no port */
	uint16_t port;
	bool is_local;              /* loopback: matches "from local" */
	bool tls;                   /* the session runs inside TLS */
	char tls_version[16];       /* "TLSv1.3" when tls */
	char tls_cipher[64];        /* "TLS_AES_128_GCM_SHA256" when tls */
	bool authenticated;
	char auth_user[256];
};

enum smtp_body_type { SMTP_BODY_7BIT = 0, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };
enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL, SMTP_RET_HDRS };

/* DSN NOTIFY= bits (RFC 3461); 0 means the parameter was absent. */
enum {
	SMTP_NOTIFY_NEVER = 1,
	SMTP_NOTIFY_SUCCESS = 2,
	SMTP_NOTIFY_FAILURE = 4,
	SMTP_NOTIFY_DELAY = 8,
};

struct smtp_rcpt {
	char *addr;                 /* mailbox without <>, NUL-terminated */
	char *orcpt;                /* ORCPT= value as received (xtext), or NULL */
	uint8_t notify;             /* SMTP_NOTIFY_* bits */
};

/* One transaction's envelope. Strings are owned by the session and live
 * until the next RSET / MAIL / smtp_session_free. */
struct smtp_envelope {
	char *helo;                 /* EHLO/HELO argument (kept across transactions) */
	bool esmtp;                 /* EHLO rather than HELO */
	char *mail_from;            /* reverse path without <>; "" for the null sender */
	uint64_t size_param;        /* SIZE= value, 0 when absent */
	enum smtp_body_type body_type;
	bool smtputf8;
	enum smtp_ret ret;
	char *envid;                /* ENVID= (xtext as received), or NULL */
	struct smtp_rcpt *rcpts;
	uint32_t nrcpt;
	uint32_t rcpt_cap;
	bool chunking;              /* content arrived through BDAT */
};

enum smtp_status {
	SMTP_NEED_MORE = 0,
	SMTP_MESSAGE_READY,
	SMTP_STARTTLS,
	SMTP_CLOSE,
	SMTP_AUTH_CHECK,            /* credentials in s->auth_user / s->auth_password:
	                               verify them, then smtp_auth_done() */
};

/* Which deadline applies now (RFC 5321 4.5.3.2); the shell maps it to the
 * configured timeout. */
enum smtp_wait {
	SMTP_WAIT_COMMAND = 0,      /* waiting for a command */
	SMTP_WAIT_DATA_BLOCK,       /* inside DATA / BDAT content */
	SMTP_WAIT_COMMIT,           /* waiting for the spool or the AUTH
	                               check, not the client */
	SMTP_WAIT_CLOSED,
};

/* Called for every 4xx/5xx reply so the shell can log each reject once,
 * with its session id and client address. `reply` is the reply text
 * without CRLF (e.g. "554 5.7.1 <a@b>: Relay access denied"). */
struct smtp_hooks {
	void *ctx;
	void (*reject)(void *ctx, const char *command, const char *reply);
	/* Asked at each MAIL FROM (NULL: never paused): true answers
	 * "421 4.3.2 Service paused" and closes the session. A transaction
	 * already under way finishes. */
	bool (*paused)(void *ctx);
};

enum smtp_state {
	SMTP_S_COMMAND = 0,
	SMTP_S_DATA,                /* reading DATA content */
	SMTP_S_BDAT,                /* reading a BDAT chunk's bytes */
	SMTP_S_WAIT_COMMIT,
	SMTP_S_CLOSED,
};

struct smtp_session {
	const struct smtp_config *cfg;
	const struct smtp_peer *peer;
	struct smtp_hooks hooks;
	enum smtp_state state;

	/* Partial command line carried between feeds (cfg->max_line_length). */
	char *line;
	size_t line_len;
	bool line_overflow;         /* discarding the rest of an over-long line */

	bool greeted;               /* EHLO/HELO seen (reset by STARTTLS) */
	bool in_transaction;        /* MAIL accepted */
	uint32_t errors;
	struct smtp_envelope env;
	struct buf body;            /* unstuffed message content (no Received:) */

	/* DATA content scanner state (see smtp.c) */
	uint32_t data_state;
	bool data_tainted;          /* bare CR / LF seen in this message */
	bool data_oversize;
	/* BDAT */
	uint64_t bdat_remaining;
	bool bdat_last;
	bool bdat_failed;           /* transaction failed; chunks are discarded */

	uint32_t messages;          /* messages completed in this session */

	/* Private to smtp.c (appended so existing users stay compatible). */
	uint64_t bdat_chunk_size;   /* size of the chunk being read, for its 250 */
	uint8_t bdat_refusal;       /* why the chunk being read is discarded */
	bool data_store_failed;     /* out of memory while storing content */
	bool tls_pending;           /* 220 for STARTTLS sent, handshake not done */

	/* AUTH (RFC 4954): filled for SMTP_AUTH_CHECK, wiped by smtp_auth_done. */
	char auth_user[256];
	char auth_password[1024];
	bool authenticated;

	/* Private to smtp.c: where an AUTH exchange is (see smtp.c). */
	uint8_t auth_step;
	uint8_t auth_deferred;      /* LOGIN: what was wrong with the username */
};

/* `line_buf` must hold cfg->max_line_length bytes and outlive the session. */
void smtp_session_init(struct smtp_session *s, const struct smtp_config *cfg,
		       const struct smtp_peer *peer, char *line_buf,
		       struct smtp_hooks hooks);
void smtp_session_free(struct smtp_session *s);

void smtp_greeting(struct smtp_session *s, struct buf *out);

/* Consume up to len bytes. *consumed is how far it got; on SMTP_NEED_MORE
 * that is all of it. Replies are appended to out. Fed again before
 * smtp_commit_done / smtp_tls_established / smtp_auth_done, or after the
 * session closed, it takes nothing and returns the same status. */
enum smtp_status smtp_feed(struct smtp_session *s, const char *data, size_t len,
			   size_t *consumed, struct buf *out);

/* The spool's verdict on the message of the last SMTP_MESSAGE_READY:
 * ok → "250 2.0.0 Ok: queued as ID", else "451 4.3.0 ..." (or with
 * `temp_full` "452 4.3.1 Insufficient system storage"). Resets the
 * transaction and returns to command state. If the session was closed
 * meanwhile (timeout, shutdown), nothing is written: no reply follows 421. */
void smtp_commit_done(struct smtp_session *s, bool ok, bool temp_full,
		      const char *id, struct buf *out);

/* The TLS handshake after SMTP_STARTTLS succeeded: forget everything the
 * client said before (RFC 3207 4.2), no new greeting. */
void smtp_tls_established(struct smtp_session *s);

/* The verdict on the credentials of the last SMTP_AUTH_CHECK: ok →
 * "235 2.7.0 Authentication successful" and s->authenticated (the shell
 * marks the peer authenticated and copies s->auth_user), else
 * "535 5.7.8 Authentication credentials invalid" (an error like any other:
 * reject hook, max_errors). The password is wiped either way; auth_user is
 * kept (for the log) until the next AUTH or STARTTLS. If the session closed
 * meanwhile (timeout, shutdown), nothing is written. */
void smtp_auth_done(struct smtp_session *s, bool ok, struct buf *out);

enum smtp_wait smtp_waiting_for(const struct smtp_session *s);
/* Where the session is, for people (mxctl sessions): "greeting" (no
 * EHLO/HELO yet), "ehlo", "auth", "mail", "rcpt", "data", "bdat",
 * "commit", "closed". */
const char *smtp_state_name(const struct smtp_session *s);
/* Deadline passed: 421 4.4.2, session closed. */
void smtp_timeout(struct smtp_session *s, struct buf *out);
/* Server draining or refusing: 421 4.3.2, session closed. */
void smtp_shutdown(struct smtp_session *s, struct buf *out);

#endif
