/* delivery_state: what happened to each recipient of each spooled message,
 * kept in one append-only delivery log per segment, and the pure code that
 * writes, reads and replays it (docs/relay.md). The writer that appends
 * through the core's ring with group commit is the delivery worker's; this
 * file is the format's specification.
 *
 * LAYOUT
 *   DIR/<core as %02u>/<seq as %08llu>.dlv   beside <seq>.seg, same number
 *   Only the core that owns the segment appends to its .dlv (operator
 *   actions come in as request files, delivery_request.h). A finished
 *   segment is reclaimed by unlinking its .seg and .dlv, then fsyncing the
 *   directory. All integers are little-endian (le.h).
 *
 * FILE HEADER (DLV_HEADER_SIZE = 32 bytes)
 *    0   8  magic "MXDDLV01"
 *    8   4  u32 format version (1)
 *   12   4  u32 core
 *   16   8  u64 seq (the segment's number)
 *   24   4  zero
 *   28   4  u32 CRC32C of bytes 0..27
 *
 * RECORDS follow back to back (DLV_RECORD_FIXED + hop + text bytes):
 *    0   4  magic "MXDL"
 *    4   4  u32 L: record length, magic to last byte
 *              (DLV_RECORD_FIXED <= L <= DLV_RECORD_MAX)
 *    8   4  u32 CRC32C of bytes 12..L-1
 *   12   8  u64 the message: its record's offset in the segment (the
 *              offset its id is made of)
 *   20   4  u32 recipient index, in the spool record's order (0-based)
 *   24   1  u8 outcome (enum dlv_outcome, 1..6)
 *   25   1  zero
 *   26   2  u16 attempts so far
 *   28   2  u16 SMTP reply code (0: none, e.g. a connection failure)
 *   30   2  u16 H: next-hop length (<= DLV_HOP_MAX)
 *   32   8  u64 next try, unix seconds (0: none)
 *   40   8  u64 time of this outcome, unix seconds
 *   48   2  u16 T: reply text length (<= DLV_TEXT_MAX)
 *   50   6  zero
 *   56   H  the next hop it went to, canonical URL ("lmtp://127.0.0.1:24")
 *   56+H T  the reply text (or why there was none), as received, cut at
 *           DLV_TEXT_MAX bytes
 *   L = 56 + H + T exactly.
 *
 * REPLAY
 *   The latest record (in file order) for a (message, recipient) wins;
 *   recipients with no record are queued. A record naming a message that
 *   is not an intact record of the segment, or a recipient index past its
 *   count, is an orphan: counted, ignored. The .dlv is read like a
 *   segment: on a record that does not decode, scan forward for the next
 *   offset where one does; found, the bytes between are a corrupt region
 *   (skipped, counted); not found, the rest is a torn tail, cut off at
 *   recovery (ftruncate + fsync). A tail is torn only by a crash before
 *   its fdatasync completed, and the worker acts on an outcome only after
 *   it is durable, so cutting it loses nothing anybody relied on; a lost
 *   "delivered" means one more delivery (at least once), never none.
 *
 * FINISHED
 *   A recipient is finished when it is delivered, bounced (failed and its
 *   DSN safely spooled), dropped by the operator, or failed/expired with
 *   no DSN due (null sender, or NOTIFY without FAILURE, RFC 3461). A
 *   message is finished when all its recipients are. A segment can be
 *   reclaimed when all its messages are finished, it has no corrupt region
 *   (damaged bytes stay for the operator to look at), and it is not the
 *   segment being written. */
#ifndef MXD_DELIVERY_STATE_H
#define MXD_DELIVERY_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "spool.h"

#define DLV_HEADER_SIZE 32
#define DLV_FILE_MAGIC "MXDDLV01"
#define DLV_FORMAT_VERSION 1
#define DLV_RECORD_MAGIC "MXDL"
#define DLV_RECORD_FIXED 56
#define DLV_HOP_MAX 255
#define DLV_TEXT_MAX 1024
#define DLV_RECORD_MAX (DLV_RECORD_FIXED + DLV_HOP_MAX + DLV_TEXT_MAX)

enum dlv_outcome {
	DLV_QUEUED = 0,    /* no record: not tried yet (never written) */
	DLV_DELIVERED = 1, /* the next hop said 2xx */
	DLV_DEFERRED = 2,  /* 4xx or no answer: try again at next_try */
	DLV_FAILED = 3,    /* 5xx: failed for good; a DSN may be due */
	DLV_BOUNCED = 4,   /* failed, and the DSN is in the spool */
	DLV_DROPPED = 5,   /* the operator dropped it: no delivery, no DSN */
	DLV_EXPIRED = 6,   /* relay lifetime exceeded: failed; a DSN may be due */
};
#define DLV_OUTCOME_MAX DLV_EXPIRED

/* "queued", "delivered", "deferred", "failed", "bounced", "dropped", "expired" */
const char *dlv_outcome_name(enum dlv_outcome o);

struct dlv_record {
	uint64_t msg_offset;
	uint32_t rcpt;
	enum dlv_outcome outcome;         /* 1..DLV_OUTCOME_MAX in a record */
	uint16_t attempts;
	uint16_t code;
	uint64_t next_try;
	uint64_t at;
	const char *hop; size_t hop_len;
	const char *text; size_t text_len;
};

/* ---- file header ---- */

void dlv_file_header(uint8_t out[DLV_HEADER_SIZE], unsigned core, uint64_t seq);
/* SPOOL_TRUNCATED when avail < DLV_HEADER_SIZE, SPOOL_CORRUPT (with
 * *why) for a bad magic, version or CRC, else SPOOL_OK. */
enum spool_decode dlv_file_header_check(const uint8_t *p, size_t avail, unsigned *core,
					uint64_t *seq, const char **why);

/* ---- records ---- */

/* Bytes the record takes once hop and text are cut to their bounds. */
size_t dlv_record_size(const struct dlv_record *r);
/* Encode into out (cap bytes), cutting hop and text to DLV_HOP_MAX and
 * DLV_TEXT_MAX. Returns the length, or 0 when cap is too small or the
 * outcome is not one a record may hold. */
size_t dlv_record_encode(uint8_t *out, size_t cap, const struct dlv_record *r);
/* Decode the record at p; views point into p. Every prefix of a valid
 * record is SPOOL_TRUNCATED; bytes that cannot start one SPOOL_CORRUPT. */
enum spool_decode dlv_record_decode(const uint8_t *p, size_t avail, struct dlv_record *r,
				    size_t *len, const char **why);

/* Walk dlv[DLV_HEADER_SIZE..len): SPOOL_WALK_RECORD with r, SPOOL_WALK_CORRUPT
 * and SPOOL_WALK_TORN with the region and why. fn may be NULL; a non-zero
 * return stops the walk. res as for segments (good_end >= DLV_HEADER_SIZE
 * when len is). */
typedef int (*dlv_walk_fn)(void *ctx, enum spool_walk_event ev, uint64_t offset, uint64_t len,
			   const struct dlv_record *r, const char *why);
void dlv_walk(const uint8_t *dlv, size_t len, dlv_walk_fn fn, void *ctx,
	      struct spool_walk_result *res);

/* ---- replay ---- */

struct dlv_rcpt {
	enum dlv_outcome outcome;
	uint8_t notify;                   /* SMTP_NOTIFY_* from the spool record */
	uint16_t attempts;
	uint16_t code;
	uint64_t next_try;
	uint64_t at;
	uint64_t record;                  /* .dlv offset of the latest record; 0: none */
};

struct dlv_message {
	uint64_t offset;                  /* in the segment: the id's offset */
	uint64_t received;                /* unix seconds, for the lifetime */
	uint32_t nrcpt;
	uint32_t first;                   /* its recipients: rcpts[first .. first+nrcpt) */
	bool null_sender;                 /* MAIL FROM:<>: no DSN is ever due */
};

struct dlv_replay {
	struct dlv_message *msgs;         /* in segment order (ascending offset) */
	size_t nmsgs;
	struct dlv_rcpt *rcpts;
	size_t nrcpts;
	struct spool_walk_result seg;     /* the segment's walk */
	struct spool_walk_result dlv;     /* the .dlv's walk (zero when absent) */
	uint64_t orphans;                 /* .dlv records about nothing known */
	bool dlv_header_bad;              /* records were still read, CRC by CRC */
	const char *dlv_header_why;
};

/* Replay segment (core, seq) and its .dlv (dlv may be NULL / 0 bytes: no
 * log yet). 0, or -1 when out of memory. Free with dlv_replay_free. */
int dlv_replay(const uint8_t *seg, size_t seg_len, unsigned core, uint64_t seq,
	       const uint8_t *dlv, size_t dlv_len, struct dlv_replay *out);
void dlv_replay_free(struct dlv_replay *r);

/* The message whose record starts at offset, or NULL (binary search). */
struct dlv_message *dlv_replay_find(const struct dlv_replay *r, uint64_t offset);
/* Apply one record (at .dlv offset rec_off) to the state, as replay does
 * for each record in the file: the delivery worker calls it once a record
 * is durable. 0, or -1 for an orphan (state unchanged). */
int dlv_replay_apply(struct dlv_replay *r, const struct dlv_record *rec, uint64_t rec_off);

/* Is a failure DSN due for this recipient when it fails? (not for the
 * null sender; RFC 3461: NOTIFY absent or with FAILURE) */
bool dlv_dsn_wanted(const struct dlv_message *m, const struct dlv_rcpt *rc);
bool dlv_rcpt_finished(const struct dlv_message *m, const struct dlv_rcpt *rc);
bool dlv_message_finished(const struct dlv_replay *r, const struct dlv_message *m);
/* Everything finished, nothing damaged, and not the segment being written. */
bool dlv_segment_reclaimable(const struct dlv_replay *r, bool being_written);

/* One word for a message, for listings: the state all its recipients
 * share, else "partial" when some are finished and some are not, else
 * the most pressing of the unfinished (deferred, failed, expired, queued). */
const char *dlv_message_summary(const struct dlv_replay *r, const struct dlv_message *m);

/* ---- retry schedule ---- */

/* The delay after `attempts` failed attempts (>= 1): first_ms doubled
 * for each attempt after the first, capped at max_ms, then scaled by a
 * factor in [0.8, 1.2) picked by rnd (uniform over 32 bits) so that
 * recipients deferred together do not all come back at once. */
uint64_t dlv_retry_delay_ms(uint32_t attempts, uint32_t first_ms, uint32_t max_ms, uint32_t rnd);

/* When to try a recipient again (unix seconds), after `attempts` failed
 * attempts, for a message received at `received`. Past the lifetime
 * (now >= received + lifetime) *expired is set and the recipient must
 * fail; otherwise the next try is never later than the end of the
 * lifetime, so the last attempt happens at it. */
uint64_t dlv_next_try(uint64_t received, uint64_t now, uint32_t attempts, uint32_t first_ms,
		      uint32_t max_ms, uint32_t lifetime_ms, uint32_t rnd, bool *expired);

/* ---- recovery (start-up, blocking I/O) ---- */

/* Read DIR/<core>/<seq>.dlv if it exists, replay it with the segment
 * bytes given, and cut a torn tail (ftruncate + fsync). Lines for the log
 * go to log. 0, or -1 with a reason in log. */
int dlv_recover(const char *core_dir, unsigned core, uint64_t seq, const uint8_t *seg,
		size_t seg_len, struct dlv_replay *out, struct buf *log);

#endif
