/* worker: what one worker thread owns — its ring, its provided receive
 * buffers, its connection slots, its scheduling state and its counters —
 * and the connection slot itself. Shared by worker.c (ring, loop, life
 * cycle of a slot), session.c (the SMTP client) and tls.c. */
#ifndef MXLOAD_WORKER_H
#define MXLOAD_WORKER_H

#include <liburing.h>
#include <pthread.h>
#include <sys/uio.h>

#include <openssl/ssl.h>

#include "mxload.h"

/* user_data: a pointer to the slot with the operation in the low bits. */
enum op_tag { OP_CONNECT = 0, OP_RECV = 1, OP_SEND = 2, OP_IGNORE = 3 };
#define OP_TAG_MASK 3u

enum conn_state {
	CS_WAIT,        /* not connected; starts when the worker gets to it */
	CS_SLEEP,       /* back-off after a failure, until wake_at */
	CS_CONNECTING,
	CS_OPEN,
	CS_QUITTING,    /* 221 read: waiting for the server to close */
	CS_CLOSING,     /* aborted: waiting for its operations to end */
	CS_DONE,        /* no more work for this slot */
};

/* What the next reply answers. */
enum expect_kind {
	EX_GREETING, EX_EHLO, EX_STARTTLS, EX_AUTH, EX_MAIL, EX_RCPT, EX_DATA, EX_EOD,
	EX_BDAT, EX_BDAT_LAST, EX_QUIT
};

struct expect {
	uint8_t kind;
	uint64_t t_start;  /* EX_EOD / EX_BDAT_LAST: when the message started (or was due) */
	uint64_t t_eod;    /* ... and when its last byte left (0: not yet seen) */
	uint64_t size;     /* content bytes of that message */
};

#define OUT_IOV 64
#define LINE_CAP 1024
#define STAMPS 4
#define WIRE_RECORD (16384 + 256)        /* one TLS record of ciphertext, with room */
#define WIRE_CAP (2 * WIRE_RECORD + 4096)

/* Bytes to send, in order: commands are written into `cmd`, message
 * content is referenced where it lives (body.c's buffers, the slot's
 * Message-ID line). [head, n) is not yet sent (plaintext) or not yet given
 * to TLS; `done` and `queued` count bytes since the connection started. */
struct outq {
	struct iovec iov[OUT_IOV];
	unsigned n, head;
	size_t head_off;
	char *cmd;
	size_t cmd_len, cmd_cap;
	uint64_t queued;   /* bytes ever appended */
	uint64_t taken;    /* bytes handed to the kernel (plaintext) or to TLS */
};

/* "When this many bytes have been sent, the message whose end-of-data
 * reply is expectation `seq` has left": the clock for end-of-data → reply. */
struct stamp {
	uint64_t at;       /* plaintext bytes, or ciphertext bytes once `cipher` */
	uint64_t seq;
	bool cipher;
};

struct conn {
	struct worker *w;
	unsigned slot;
	int fd;
	enum conn_state state;
	unsigned inflight;       /* operations the ring holds for this slot */
	bool recv_armed, send_busy, connect_pending, cancel_sent;
	unsigned reserved;       /* messages of the budget held for this connection */
	bool failed;             /* this connection had an error: back off before the next */
	uint64_t deadline;       /* a reply (or the close) is due by then */
	uint64_t wake_at;        /* CS_SLEEP */
	uint64_t t_connect;

	/* from the last EHLO */
	bool cap_pipelining, cap_chunking, cap_starttls, cap_auth_plain;
	bool pipelining;         /* in effect for this connection */
	bool authed;

	/* TLS (tls.c) */
	SSL *ssl;
	bool tls_on;             /* output goes through TLS from now on */
	bool tls_start_pending;  /* start once the plaintext queue has left */
	bool tls_handshaking;
	uint64_t t_tls;
	char *wire;              /* ciphertext to send: [wire_off, wire_len) */
	size_t wire_off, wire_len, wire_sub;
	uint64_t wire_total_out; /* ciphertext bytes the kernel has taken */

	/* the reply being read */
	char line[LINE_CAP];
	unsigned line_len;
	bool line_long;
	bool line_cr;            /* the line so far ends with CR */
	int reply_code;          /* -1: between replies */
	unsigned reply_lines;
	char reply_first[160];

	/* expectations: a ring of exp_cap (a power of two) */
	struct expect *exp;
	unsigned exp_cap;
	uint64_t exp_pushed, exp_popped;

	/* transactions */
	unsigned rcpt_next;      /* without pipelining: next RCPT to send (1-based) */
	unsigned msgs_started;   /* on this connection */
	unsigned msgs_unacked;
	bool quit_sent;
	bool parked;             /* open loop: on the worker's idle queue */
	const struct mxl_body *body;   /* the message being sent */
	uint64_t msg_start;
	uint64_t bdat_off;       /* content bytes already put in BDAT chunks */
	char hdr[2][MXL_MSGID_LEN + 1];
	unsigned hdr_next;

	struct outq out;
	struct msghdr msg;
	struct iovec sub_iov[OUT_IOV];
	struct stamp stamps[STAMPS];
	unsigned nstamps;
};

struct worker {
	struct mxl_run *run;
	const struct mxl_options *o;
	unsigned id;
	int cpu;                 /* -1: unpinned */
	pthread_t thread;
	struct io_uring ring;
	struct io_uring_buf_ring *rx_ring;
	char *rx_mem;

	struct conn *conns;
	unsigned nconns;
	unsigned active;         /* slots not CS_DONE */

	SSL_CTX *ssl_ctx;
	SSL_SESSION *session;    /* the latest session to resume */

	uint64_t now;            /* CLOCK_MONOTONIC ns, read once per loop turn */
	uint64_t start;
	uint64_t end_at;         /* --duration: stop starting messages then; 0 none */
	bool stopping;

	/* closed loop */
	uint64_t budget;         /* messages not yet started; with --duration unused */

	/* open loop: message k is due at start + k * period */
	bool open_loop;
	double period_ns;
	uint64_t arrivals_total; /* 0 with --duration: until the end */
	uint64_t arrivals_taken; /* started (or handed to a connection) */
	struct conn **idle;      /* a FIFO ring of nconns slots (worker.c) */
	unsigned idle_head, nidle;

	uint64_t rng;
	uint64_t msgid_counter;
	unsigned src_next;
	uint64_t next_tick;
	uint64_t errors_total;
	bool no_pipelining_seen; /* --pipelining on, server did not offer it */

	struct mxl_stats st;
	_Atomic uint64_t pub_msgs, pub_errors;
	atomic_bool done;
	int exit_status;
};

/* worker.c, for session.c and tls.c */
struct io_uring_sqe *worker_sqe(struct worker *w);
void conn_error(struct conn *c, enum mxl_err kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void conn_abort(struct conn *c);
/* Is there a message for this connection to start now? Closed loop: the
 * one it reserved when it connected, else one from the budget, now. Open
 * loop: the longest-waiting due arrival, with the time it was due. */
bool worker_take_message(struct worker *w, struct conn *c, uint64_t *t_start);
/* Could more messages come later (open loop: arrivals still to be due)? */
bool worker_more_later(struct worker *w);
void worker_park(struct worker *w, struct conn *c);

/* session.c */
void session_reset(struct conn *c);
void session_connected(struct conn *c);
void session_input(struct conn *c, const char *data, size_t len);
void session_sent(struct conn *c, int res);
void session_pump(struct conn *c);
void session_ready(struct conn *c);   /* start a message, park, or QUIT */
void session_start(struct conn *c, uint64_t t_start); /* a parked connection's next message */
void session_tls_up(struct conn *c);
/* TLS: take up to max bytes of queued plaintext (for one record) */
size_t session_take_plain(struct conn *c, char *dst, size_t max);
/* TLS: plaintext end-of-data marks up to `plain` now end at ciphertext byte `cipher` */
void session_stamps_to_cipher(struct conn *c, uint64_t plain, uint64_t cipher);
const char *expect_name(enum expect_kind k);

/* tls.c */
SSL_CTX *tls_client_ctx(const struct mxl_options *o, struct worker *w, char *err, size_t errlen);
int tls_begin(struct conn *c);
void tls_input(struct conn *c, const char *data, size_t len);
/* Encrypt queued plaintext and move ciphertext into the wire buffer. */
void tls_fill_wire(struct conn *c);
void tls_reset(struct conn *c);

#endif
