/* conn: one client connection on a core — the socket, its buffers, and
 * the SMTP session it drives. The only code that moves a session's bytes
 * between io_uring and the state machine. */
#ifndef MXD_CONN_H
#define MXD_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/time_types.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "proxy.h"
#include "smtp.h"
#include "spool.h"

struct core;
struct core_view;

/* Where a connection's TLS records are done (conn_tls.c). */
enum conn_tls_mode {
	CONN_TLS_NONE = 0,     /* plaintext */
	CONN_TLS_HANDSHAKE,    /* BoringSSL handshake over memory BIOs */
	CONN_TLS_USERSPACE,    /* BoringSSL does the records */
	CONN_TLS_KTLS_SWITCH,  /* handing the records to the kernel */
	CONN_TLS_KTLS,         /* the kernel does the records: plaintext I/O */
};

struct conn {
	struct core *core;
	struct conn *next, *prev;     /* core->conns */
	int fd;
	unsigned listener;
	struct core_view *view;       /* the config it started on */
	char sid[24];                 /* session id on every log line */

	struct smtp_peer peer;
	struct smtp_session smtp;
	struct buf out;               /* replies not yet handed to the kernel */
	struct buf sending;           /* the send in flight (stable memory) */
	struct buf inbuf;             /* input the session could not take yet */

	uint64_t opened_ms;
	uint64_t deadline_ms;         /* 0: none */
	enum smtp_wait deadline_for;  /* what the deadline was set for */
	uint64_t rx_bytes;            /* from the socket, all told */
	uint64_t data_started_ms;     /* content began (min-data-rate) */
	uint64_t data_started_rx;
	bool greeting_pending;        /* greeting-delay running */
	bool proxy_pending;           /* waiting for the PROXY header */
	struct proxy_parser proxy;
	char proxy_via[64];           /* the load balancer's address, once known */
	bool greet_timer_armed;
	bool greet_timer_cancelled;
	struct __kernel_timespec greet_ts;
	uint64_t message_started_ns;  /* wall clock of end-of-data, for the record */
	char message_id[SPOOL_ID_LEN + 1];

	bool admitted;                /* counted by clients_admit */
	bool recv_armed;
	bool recv_paused;             /* too much buffered input; re-arm later */
	bool recv_cancel_pending;     /* the pause's cancel has not completed */
	bool send_busy;
	bool in_spool;                /* its message is waiting for the spool */
	bool closing;                 /* no more input; close once flushed */
	bool shut;                    /* shutdown(2) done */
	const char *close_reason;

	/* TLS (conn_tls.c) */
	SSL *ssl;
	enum conn_tls_mode tls_mode;
	bool tls_implicit;            /* smtps: TLS from the first byte */
	bool tls_used_ktls;           /* the session reached the kernel path */
	bool tls_close_notify_sent;
	bool tls_key_updated;         /* a TLS 1.3 KeyUpdate went by (conn_tls.c) */
	bool ktls_cancel_sent;        /* multishot recv cancelled for the switch */
	bool ktls_filling;            /* a one-shot recv completes a partial record */
	struct buf tls_in;            /* ciphertext short of a whole record */
	char *ktls_fill;              /* that recv's buffer */
	uint32_t ktls_fill_len;

	uint32_t line_cap;            /* size of line[] */
	char line[];                  /* the session's partial command line */
};

/* A new connection from multishot accept on listener `listener`. */
void conn_accept(struct core *core, unsigned listener, int fd);
void conn_on_recv(struct conn *c, int res, unsigned flags);
void conn_on_send(struct conn *c, int res);
void conn_on_greet_timer(struct conn *c);
/* The spool's verdict for c's message. */
void conn_spool_done(struct conn *c, bool ok, bool no_space);
/* Once a second: deadlines. */
void conn_tick(struct conn *c);
/* Draining: idle sessions are told 421 and closed now; sessions inside a
 * transaction finish it first. `force`: the drain deadline passed. */
void conn_drain(struct conn *c, bool force);
void conn_free_pool(struct core *core);
/* One line for mxctl sessions: core, session id, client, state, TLS, age,
 * bytes in; on the core's own thread. */
void conn_describe(const struct conn *c, struct buf *out);

/* ---- shared by conn.c and conn_tls.c only ---- */
/* Plaintext from the client into the session (buffers what it cannot take). */
void conn_input(struct conn *c, const char *data, size_t len);
void conn_flush(struct conn *c);
void conn_abort(struct conn *c, const char *reason);
void conn_close_after_flush(struct conn *c, const char *reason);
void conn_arm_recv(struct conn *c);
void conn_cancel_recv(struct conn *c);

/* conn_tls.c */
int conn_tls_start(struct conn *c, bool implicit);
void conn_tls_input(struct conn *c, const char *data, size_t len);
/* Ciphertext (or, on the kernel path, plaintext) for the wire into
 * c->sending; called only when no send is in flight and sending is empty. */
void conn_tls_fill_wire(struct conn *c);
/* The switch to kTLS waits on recv and send; either finished. */
void conn_tls_progress(struct conn *c);
/* A one-shot recv that completes a partial record before kTLS RX. */
void conn_tls_fill_done(struct conn *c, int res);
/* On the kernel path a read failed: a non-data record (alert, KeyUpdate). */
void conn_ktls_read_error(struct conn *c, int res);
void conn_tls_free(struct conn *c);
const char *conn_tls_path(const struct conn *c);

#endif
