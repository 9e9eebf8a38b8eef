/* mxload: an SMTP load generator on io_uring, and a correctness load test.
 *
 * One worker thread per CPU it is given, each pinned, each with its own
 * io_uring ring and its own share of the connections, run as non-blocking
 * state machines. Nothing is shared between workers while the load runs
 * except a few relaxed atomics for the progress line; the report merges the
 * workers' counters and histograms at the end.
 *
 * Files: options.c (command line), body.c (message content, made once),
 * hist.c (latency histograms), worker.c (ring, loop, connection life cycle,
 * scheduling), session.c (the SMTP client state machine and its output
 * queue), tls.c (BoringSSL over memory BIOs), report.c (table and JSON). */
#ifndef MXLOAD_H
#define MXLOAD_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "hist.h"

#define MXL_MAX_CPUS 64
#define MXL_MAX_SOURCES 256
#define MXL_MAX_SIZES 16
#define MXL_MAX_EXAMPLES 8
#define MXL_EXAMPLE_LEN 240
#define MXL_ADDR_MAX 256

enum mxl_tls { MXL_TLS_NONE, MXL_TLS_STARTTLS, MXL_TLS_SMTPS };

/* A message size class: content made once at start-up (body.c). The
 * per-message Message-ID line is not part of these buffers; it is written
 * into the connection and sent in front of them. */
struct mxl_body {
	uint64_t size;       /* content bytes per message, Message-ID line included */
	unsigned weight;
	char *data;          /* dot-stuffed content after the Message-ID line, then ".\r\n" */
	size_t data_len;
	char *raw;           /* the same content unstuffed, for BDAT */
	size_t raw_len;      /* == size - MXL_MSGID_LEN */
};

struct mxl_options {
	struct sockaddr_storage server;
	socklen_t server_len;
	char server_str[80];

	unsigned connections;
	uint64_t messages;        /* total; 0 with --duration */
	double duration;          /* seconds; 0 with --messages */
	unsigned per_conn;        /* messages per connection; 0 = no limit */
	unsigned rcpts;
	struct mxl_body sizes[MXL_MAX_SIZES];
	unsigned nsizes;
	unsigned weight_total;

	bool pipelining;
	bool bdat;
	uint64_t bdat_chunk;      /* bytes per BDAT chunk */

	enum mxl_tls tls;
	int tls_version;          /* 0 any, 12, 13 */
	const char *cipher;       /* TLS 1.2 cipher list */
	bool resume;
	const char *sni;

	const char *auth_user;
	char auth_plain[600];     /* base64 of "\0user\0pass" */

	int proxy;                /* 0, 1 or 2 */

	struct sockaddr_storage sources[MXL_MAX_SOURCES];
	unsigned nsources;

	double rate;              /* open loop: new messages per second; 0 = closed loop */

	char from[MXL_ADDR_MAX];
	char to[MXL_ADDR_MAX];    /* may hold one %d: the recipient's number, 1..rcpts */
	char helo[MXL_ADDR_MAX];
	double timeout;           /* seconds to wait for any one reply */
	uint64_t max_errors;      /* stop after this many errors; 0 = never */

	const char *json_path;
	bool quiet;

	int cpus[MXL_MAX_CPUS];
	unsigned ncpus;           /* 0: one unpinned worker */
};

/* Why something failed; each has a counter and gives examples. */
enum mxl_err {
	ERR_CONNECT,     /* connect() failed */
	ERR_REPLY,       /* a reply with a code we did not expect */
	ERR_PROTOCOL,    /* malformed reply, missing extension, reply without a command */
	ERR_CLOSED,      /* the server closed or reset the connection early */
	ERR_TIMEOUT,     /* no reply within --timeout */
	ERR_TLS,         /* handshake or record failure */
	ERR_LOCAL,       /* our own resource failure (socket(), memory) */
	ERR_KINDS
};

/* Counters of one worker; the report adds them up. */
struct mxl_stats {
	uint64_t msgs_ok;            /* 250 after the end of data */
	uint64_t msgs_failed;        /* started and not acknowledged */
	uint64_t bytes_ok;           /* content bytes of acknowledged messages */
	uint64_t conns_opened;       /* connect() succeeded */
	uint64_t conns_closed_clean; /* 221 and the server's close */
	uint64_t handshakes;         /* TLS handshakes completed */
	uint64_t resumed;            /* of which resumed a session */
	uint64_t errors[ERR_KINDS];
	uint64_t replies[600];       /* by reply code; [0] counts codes out of range */
	uint64_t arrivals;           /* open loop: messages scheduled */
	uint64_t first_ns, last_ack_ns;
	struct hist h_connect;       /* connect started -> 220 greeting read */
	struct hist h_handshake;     /* TLS handshake: ClientHello -> done */
	struct hist h_eod;           /* end of data sent -> its reply */
	struct hist h_msg;           /* message start (open loop: its scheduled time) -> its 250 */
	char examples[MXL_MAX_EXAMPLES][MXL_EXAMPLE_LEN];
	unsigned nexamples;
	char tls_version[16];
	char tls_cipher[64];
};

struct worker;

/* The whole run, shared read-only by workers (except the atomics). */
struct mxl_run {
	struct mxl_options *opt;
	struct worker *workers;
	unsigned nworkers;
	uint64_t run_id;             /* makes Message-IDs unique across runs */
	atomic_bool stop;            /* SIGINT */
	uint64_t start_ns;
};

/* options.c */
int options_parse(struct mxl_options *o, int argc, char **argv);

/* body.c */
#define MXL_MSGID_LEN 69 /* "Message-ID: <" 16 hex "." 16 hex "." 4 hex "@mxload.invalid>\r\n" */
int body_build_all(struct mxl_options *o);
void body_free_all(struct mxl_options *o);
/* Write the Message-ID line (exactly MXL_MSGID_LEN bytes) for a message. */
void body_msgid(char *out, uint64_t run_id, unsigned worker, uint64_t counter);
uint64_t body_min_size(const struct mxl_options *o);

/* report.c */
/* wall_s: start to the last acknowledgement (for rates); run_s: start to
 * the end of the run (for CPU use) */
void report_print(const struct mxl_run *run, const struct mxl_stats *total, double wall_s,
		  double run_s, double cpu_user, double cpu_sys);
int report_json(const struct mxl_run *run, const struct mxl_stats *total, double wall_s,
		double run_s, double cpu_user, double cpu_sys, const char *path);
void stats_merge(struct mxl_stats *into, const struct mxl_stats *from);
const char *err_kind_name(enum mxl_err k);

/* worker.c */
int workers_create(struct mxl_run *run);
int workers_start(struct mxl_run *run);
void workers_join(struct mxl_run *run);
void workers_destroy(struct mxl_run *run);
/* For the progress line (relaxed reads of what workers publish). */
void workers_progress(const struct mxl_run *run, uint64_t *msgs, uint64_t *errors,
		      unsigned *done);
const struct mxl_stats *worker_stats(const struct mxl_run *run, unsigned i);
bool worker_saw_no_pipelining(const struct mxl_run *run);
bool worker_failed(const struct mxl_run *run, unsigned i);

uint64_t mono_ns(void);

#endif
