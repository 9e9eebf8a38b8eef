/* spool_writer: a core's append-only segment, written through the core's
 * ring with group commit.
 *
 * Messages that finish in one loop turn are appended together (one writev
 * per record, at offsets the writer assigns), linked to a single
 * fdatasync; only when that completes does each session get its 250. One
 * batch is in flight at a time; what finishes meanwhile forms the next
 * batch, so the batch grows with the load and the fsync cost is shared. */
#ifndef MXD_SPOOL_WRITER_H
#define MXD_SPOOL_WRITER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "buf.h"
#include "smtp.h"
#include "spool.h"

struct conn;
struct core;

/* A message with no session behind it: a DSN the delivery worker made.
 * The record holds env, peer (zero: no client) and body as the message
 * bytes (no Received: header is added). done() is called once the batch
 * it went in is durable (ok) or failed; the caller owns the memory. */
struct spool_local {
	struct spool_local *next;
	struct smtp_envelope env;
	struct smtp_peer peer;
	struct buf body;
	uint64_t received_unix_ns;
	char id[SPOOL_ID_LEN + 1];        /* set when it is encoded */
	void (*done)(struct spool_local *m, bool ok);
};

struct spool_batch {
	struct spool_local *locals;       /* after the conns, in the same writev/fsync */
	struct conn **conns;
	uint32_t n, cap;
	struct iovec *iov;            /* 3 per message: head, Received:, body */
	struct buf *heads;            /* per message: record head */
	struct buf *received;         /* per message: Received: header */
	uint32_t heads_cap;
	int fd;                       /* segment the batch went to */
	uint64_t start;               /* its first byte, to cut back on failure */
	uint32_t ops_left;            /* writes + fsync still to complete */
	bool failed;
	bool cancelled;               /* a linked op never ran: not durable */
	bool no_space;
};

struct spool_writer {
	struct core *core;
	unsigned core_index;
	char dir[4096];               /* DIR/<core> */
	int fd;                       /* -1: no segment open (disk full) */
	uint64_t seq;                 /* of the open segment */
	uint64_t next_seq;            /* the next segment's number */
	int open_errno;               /* why the last open_segment failed */
	uint64_t tail;                /* next record offset */
	uint64_t segment_size;
	bool held;                    /* upgrade hand-over: no new segment, ever */

	struct spool_local *local_waiting; /* not yet in a batch */
	struct spool_local **local_tail;
	struct conn **waiting;        /* finished, not yet in a batch */
	uint32_t nwaiting, waiting_cap;
	struct spool_batch batch;     /* the one in flight */
	bool in_flight;
	uint64_t expected_bytes;      /* of the batch's writes */
	uint64_t written_bytes;
	uint64_t committed_messages;
	uint64_t batches;
	uint64_t batch_submitted_ns;  /* CLOCK_MONOTONIC, for the commit latency */
};

int spool_writer_open(struct spool_writer *w, struct core *core, const char *spool_dir,
		      unsigned core_index, uint64_t first_seq, uint64_t segment_size);
void spool_writer_close(struct spool_writer *w);
/* Queue a finished message (its session is in SMTP_S_WAIT_COMMIT). */
int spool_writer_enqueue(struct spool_writer *w, struct conn *c);
/* Queue a session-less message; it goes in the next batch. */
void spool_writer_enqueue_local(struct spool_writer *w, struct spool_local *m);
/* End of a loop turn: start the next batch if none is in flight. */
void spool_writer_flush(struct spool_writer *w);
/* A completion of the batch in flight: one of its writes, or its fsync. */
void spool_writer_complete(struct spool_writer *w, bool is_fsync, int res);
bool spool_writer_idle(const struct spool_writer *w);
/* Binary upgrade: while held, the writer opens no new segment (it goes on
 * past segment-size in the one it has; the hard 4 GiB limit still holds),
 * so the next process can number its segments past this one's. Returns
 * the open segment's number, 0 when none is open. */
uint64_t spool_writer_hold(struct spool_writer *w, bool hold);

#endif
