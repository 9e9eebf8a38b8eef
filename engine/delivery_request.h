/* delivery_request: operator actions on queued mail, without a second
 * writer of the delivery log (docs/relay.md, "Operator requests").
 *
 * `mxspool retry ID` and `mxspool drop ID` do not touch the .dlv: they
 * leave a request file in the owning core's directory,
 *     DIR/<core as %02u>/requests/<name>.req
 * written to a temporary name (starting with "."), fsynced, renamed, and
 * the directory fsynced, so a request is either absent or whole. The core
 * takes them on its 1-second tick (and at start-up, for requests left
 * while mxd was not running): it turns each into .dlv records, and once
 * those are durable deletes the file. A crash in between applies it again,
 * which changes nothing: a request only touches unfinished recipients.
 *
 * FILE: at most DLV_REQUEST_MAX bytes of ASCII, exactly
 *     "mxd-request 1\n" VERB " " ID "\n"
 * VERB: "retry" (queued and deferred recipients: try now) or "drop"
 * (every unfinished recipient: dropped, no delivery, no DSN). ID: the
 * message id, 16 hex digits (either case). */
#ifndef MXD_DELIVERY_REQUEST_H
#define MXD_DELIVERY_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "delivery_state.h"
#include "spool.h"

#define DLV_REQUEST_MAX 256
#define DLV_REQUEST_DIR "requests"

enum dlv_request_kind {
	DLV_REQ_RETRY = 1,
	DLV_REQ_DROP = 2,
};

struct dlv_request {
	enum dlv_request_kind kind;
	char id[SPOOL_ID_LEN + 1];        /* upper-case */
	unsigned core;                    /* from the id */
	uint32_t seq24;                   /* the segment number's low 24 bits */
	uint32_t offset;                  /* the record's offset in its segment */
};

/* "0000000100000040" (either case) → its parts. false if not an id. */
bool dlv_id_parse(const char *s, size_t len, struct dlv_request *out);
/* Parse a request file's bytes. 0, or -1 with *why. */
int dlv_request_parse(const char *text, size_t len, struct dlv_request *out, const char **why);
/* The file's bytes for q into out (cap >= DLV_REQUEST_MAX); the length. */
size_t dlv_request_format(char *out, size_t cap, const struct dlv_request *q);

/* The .dlv records request q makes for message m of replay r, at time
 * now: one per recipient it changes, into out[0..cap). Returns how many
 * (0: nothing to change). Text and hop point to static strings. */
size_t dlv_request_records(const struct dlv_replay *r, const struct dlv_message *m,
			   const struct dlv_request *q, uint64_t now, struct dlv_record *out,
			   size_t cap);

/* ---- files (blocking I/O: mxspool, and the core's tick) ---- */

/* Write q into spool_dir/<core>/requests/ (created when missing) as
 * described above. 0, or -1 with errno and *what (the step that failed). */
int dlv_request_write(const char *spool_dir, const struct dlv_request *q, const char **what);

/* Called for each request found; return 0 once it is done (its records
 * durable) for the file to be removed, non-zero to keep it for later. */
typedef int (*dlv_request_fn)(void *ctx, const struct dlv_request *q);

/* Take core_dir/requests/: every "*.req" file in name order (names begin
 * with the time they were made, so in the order they were made). A file
 * that is not a valid request is renamed to "<name>.bad" with a log line,
 * so it is looked at once. After removing any, the directory is fsynced.
 * Returns how many were done, or -1 (errno) when the directory cannot be
 * read; a missing directory is 0. */
long dlv_requests_take(const char *core_dir, dlv_request_fn fn, void *ctx, struct buf *log);

#endif
