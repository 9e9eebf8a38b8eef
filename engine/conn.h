/* conn: one client connection on a core — the socket, its buffers, and
 * the SMTP session it drives. The only code that moves a session's bytes
 * between io_uring and the state machine. */
#ifndef MXD_CONN_H
#define MXD_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "smtp.h"
#include "spool.h"

struct core;
struct core_view;

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
	uint64_t message_started_ns;  /* wall clock of end-of-data, for the record */
	char message_id[SPOOL_ID_LEN + 1];

	bool admitted;                /* counted by clients_admit */
	bool recv_armed;
	bool recv_paused;             /* too much buffered input; re-arm later */
	bool send_busy;
	bool in_spool;                /* its message is waiting for the spool */
	bool closing;                 /* no more input; close once flushed */
	bool shut;                    /* shutdown(2) done */
	const char *close_reason;

	uint32_t line_cap;            /* size of line[] */
	char line[];                  /* the session's partial command line */
};

/* A new connection from multishot accept on listener `listener`. */
void conn_accept(struct core *core, unsigned listener, int fd);
void conn_on_recv(struct conn *c, int res, unsigned flags);
void conn_on_send(struct conn *c, int res);
/* The spool's verdict for c's message. */
void conn_spool_done(struct conn *c, bool ok, bool no_space);
/* Once a second: deadlines. */
void conn_tick(struct conn *c);
/* Draining: idle sessions are told 421 and closed now; sessions inside a
 * transaction finish it first. `force`: the drain deadline passed. */
void conn_drain(struct conn *c, bool force);
void conn_free_pool(struct core *core);

#endif
