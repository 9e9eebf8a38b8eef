/* spool: the on-disk format of mxd's spool, and the pure code that reads
 * and writes it. The writer that appends through io_uring with group
 * commit lives in spool_writer.c; mxspool (tools/mxspool.c) is the reference
 * reader. This comment is the format's specification.
 *
 * LAYOUT
 *   DIR/<core as %02u>/<seq as %08llu>.seg   one append-only file per segment
 *   A core writes one segment at a time; a new run starts a new segment at
 *   spool_recover()'s next_seq, old segments are never appended to again.
 *   A segment has exactly one writer, ever: a writer creates its segments
 *   with O_EXCL and skips a number that exists. During a binary upgrade
 *   two processes write to the same core directories, each to its own
 *   segment (see UPGRADE below).
 *
 * All integers are little-endian, fixed width. Strings are a u16 byte count
 * followed by that many bytes: no NUL, no escaping, arbitrary bytes.
 *
 * SEGMENT HEADER (SPOOL_SEGMENT_HEADER_SIZE = 64 bytes, at offset 0)
 *    0   8  magic "MXDSEG01"
 *    8   4  u32 format version (SPOOL_FORMAT_VERSION = 1)
 *   12   4  u32 core
 *   16   8  u64 seq (the number in the file name)
 *   24   8  u64 created_unix_ns
 *   32  28  zero
 *   60   4  u32 CRC32C of bytes 0..59
 *
 * RECORDS follow the header back to back, with no padding or alignment:
 * the first record is at offset 64, each next one right after the last
 * byte of the previous one.
 *
 *    0   4  magic "MXR1"
 *    4   8  u64 L: record length, from the magic through the last message
 *              byte (SPOOL_RECORD_MIN <= L <= SPOOL_RECORD_MAX)
 *   12   4  u32 CRC32C of bytes 16..L-1 (everything after this field)
 *   16  16  id: SPOOL_ID_LEN upper-case hex ASCII, see spool_make_id()
 *   32   8  u64 received_unix_ns
 *   40   2  u16 client port
 *   42   1  u8 flags: 0x01 ESMTP (EHLO, not HELO), 0x02 SMTPUTF8,
 *              0x04 ENVID present, 0x08 TLS, 0x10 authenticated,
 *              0x20 content came through BDAT; other bits must be zero
 *   43   1  u8 BODY type (enum smtp_body_type: 0 7BIT, 1 8BITMIME, 2 BINARYMIME)
 *   44   1  u8 RET (enum smtp_ret: 0 absent, 1 FULL, 2 HDRS)
 *   45   3  zero
 *   48   8  u64 SIZE= parameter (0 when absent)
 *   56      string client address ("192.0.2.1", "2001:db8::1"; no port)
 *           string HELO/EHLO argument
 *           string TLS version ("TLSv1.3"; empty without TLS)
 *           string TLS cipher (empty without TLS)
 *           string AUTH identity (empty unless authenticated)
 *           string MAIL FROM reverse path without <> (empty: null sender)
 *           string ENVID (xtext as received) — only when flag 0x04 is set
 *           u32 N: recipient count
 *           u32 R: byte length of the recipient area that follows
 *           R bytes: N recipients, each
 *                u8 NOTIFY bits (SMTP_NOTIFY_*, 0 = absent; bits above 0x0F
 *                   must be zero)
 *                u8 flags: 0x01 ORCPT present; other bits must be zero
 *                string address without <>
 *                string ORCPT (as received) — only when its flag is set
 *           u64 M: message length
 *           M bytes: the message: mxd's Received: header, then the content
 *                exactly as received after dot-unstuffing, CRLF line ends
 *   The message ends exactly at L (a decoder checks that L equals the
 *   offset of the message plus M, which re-validates the length field that
 *   the CRC does not cover).
 *
 * IDS: "CCSSSSSSOOOOOOOO": core (2 hex digits), segment seq (low 24 bits,
 * 6 hex digits), and the record's byte offset inside its segment (low 32
 * bits, 8 hex digits). The writer MUST build the id from the offset where
 * the record starts: recovery uses "the id matches where the record sits"
 * to tell a real record from record-like bytes inside a message body when
 * it resynchronises after a corrupt region, and mxspool verify reports a
 * mismatch. Segments are therefore kept below 4 GiB.
 *
 * READING A SEGMENT (spool_segment_walk, used by recovery and mxspool)
 *   From offset 64, decode a record; on success, step over it. On failure,
 *   scan forward for the next offset q holding "MXR1" whose id equals
 *   spool_make_id(core, seq, q) and that decodes OK. Found: the bytes in
 *   between are one corrupt region, and reading goes on at q, so an intact
 *   record after a damaged one is never lost. Not found: everything from
 *   the failure to the end is the torn tail.
 *
 * RECOVERY (spool_recover, at start-up)
 *   - a torn tail (a record cut short, or garbage with no intact record
 *     after it) is cut off: ftruncate to the end of the last intact record,
 *     then fsync. Those bytes were never acknowledged: a 250 is sent only
 *     after the fdatasync that covers the whole record.
 *   - a corrupt region in the middle is left in place, counted and logged;
 *     readers skip it the same way.
 *   - a segment of at most 64 bytes whose header is bad (a crash right after
 *     creating it) cannot hold a record: it is removed and the directory
 *     fsynced.
 *   - a longer segment with a bad header is left untouched (it may not be
 *     ours): its intact records are counted, the problem is logged.
 *   - next_seq is one past the highest segment number seen (1 when none).
 *   The writer must never let a record's bytes reach the file before the
 *   bytes of an earlier record of the same segment are complete (write each
 *   batch with one writev at the tail, or keep the writes ordered): then a
 *   tear can only be followed by records that were never acknowledged and
 *   are not on disk, so recovery never keeps an unacknowledged duplicate.
 *
 * UPGRADE (binary upgrade, engine/upgrade.c)
 *   The old process keeps appending to the segment each core has open
 *   while it drains, and the new process starts meanwhile, so recovery
 *   must not cut a tail that is being written. Before the new process is
 *   started, each old core is told to hold its spool: from then on it
 *   never opens another segment (it goes past segment-size in the one it
 *   has if it must), and it answers with that segment's number. The
 *   hand-over message carries, per old core, that number (0: none open).
 *   The new process's recovery skips exactly those segments
 *   (spool_recover_except): they were recovered by the old process at its
 *   own start and have had one writer since. Every other segment is
 *   closed and recovered as usual. Each new core starts at
 *   max(next_seq, in-use + 1), so numbers never collide; ids (core, seq,
 *   offset) stay unique. A second upgrade is refused while the previous
 *   process still runs, so at most two processes write at a time. A torn
 *   tail left in an in-use segment (the old process crashing during its
 *   drain) is cut by the next start or upgrade; readers skip it meanwhile.
 *   If the new process fails, the old one kills and reaps it, then
 *   releases the hold; segment numbers the failed process created are
 *   skipped (O_EXCL, EEXIST).
 */
#ifndef MXD_SPOOL_H
#define MXD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "smtp.h"

#define SPOOL_ID_LEN 16 /* hex chars: core(2) segment seq(6) offset(8) */

/* Per-core directory DIR/<core as %02u>/, segments "<seq as %08llu>.seg". */
#define SPOOL_SEGMENT_HEADER_SIZE 64
#define SPOOL_FORMAT_VERSION 1
#define SPOOL_SEGMENT_MAGIC "MXDSEG01"
#define SPOOL_RECORD_MAGIC "MXR1"
#define SPOOL_RECORD_PREFIX 16                 /* magic, length, CRC */
#define SPOOL_RECORD_MIN 84                    /* every field empty, no message */
#define SPOOL_RECORD_MAX ((uint64_t)1 << 40)   /* sanity bound on L */
#define SPOOL_STRING_MAX 65535                 /* u16 length prefix */

enum spool_decode {
	SPOOL_OK = 0,
	SPOOL_TRUNCATED,  /* not enough bytes: a torn tail */
	SPOOL_CORRUPT,    /* bad magic, length or CRC */
};

/* CRC32C (Castagnoli, reflected, as in iSCSI/ext4). Chainable: start with
 * crc = 0; crc32c(crc32c(0, a), b) == crc32c(0, a || b).
 * crc32c("123456789") == 0xE3069283. Uses the SSE4.2 crc32 instruction
 * when the CPU has it, else a table. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);
/* The two implementations, for tests and benchmarks. crc32c_hw() may only
 * be called when crc32c_hw_available(). */
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len);
uint32_t crc32c_hw(uint32_t crc, const void *data, size_t len);
bool crc32c_hw_available(void);

void spool_make_id(char out[SPOOL_ID_LEN + 1], unsigned core, uint64_t seq, uint64_t offset);

/* Segment header: magic, version, core, seq, creation time. */
void spool_segment_header(uint8_t out[SPOOL_SEGMENT_HEADER_SIZE], unsigned core,
			  uint64_t seq, uint64_t created_unix_ns);

struct spool_segment_info {
	uint32_t version;
	unsigned core;
	uint64_t seq;
	uint64_t created_unix_ns;
};

/* Check a segment header: SPOOL_TRUNCATED when avail < 64, SPOOL_CORRUPT
 * for a bad magic, version or CRC (reason says which), else SPOOL_OK with
 * *info filled. `reason` may be NULL. */
enum spool_decode spool_segment_header_check(const uint8_t *p, size_t avail, struct spool_segment_info *info,
			       const char **reason);

/* Everything the record holds besides the message bytes. */
struct spool_meta {
	const char *id;                   /* SPOOL_ID_LEN chars */
	uint64_t received_unix_ns;
	const struct smtp_envelope *env;
	const struct smtp_peer *peer;
};

/* The Received: header mxd puts first (RFC 5321 4.4, RFC 3848 protocol
 * names SMTP / ESMTP / ESMTPS / ESMTPA / ESMTPSA, and RFC 6531's UTF8SMTP*
 * with SMTPUTF8; RFC 8314 4.3 TLS facts), with CRLF line ends and folded
 * lines, e.g.
 *   Received: from client.example ([192.0.2.1])\r\n
 *   \t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n   (TLS only)
 *   \tby mx.example (mxd) with ESMTPS id 0000000100000040\r\n
 *   \tfor <a@example.com>; Sat, 28 Nov 2026 21:20:09 +0000\r\n
 * "for <rcpt>" only with exactly one recipient (otherwise "id ID;\r\n\tDATE").
 * IPv6 peers are written "[IPv6:2001:db8::1]". HELO, hostname and TLS
 * strings are reduced to printable ASCII without "()\\" (others become '?')
 * and cut at 255 bytes, so every line stays far below 998 octets.
 * Appends to out; returns 0, or -1 when out's limit is reached. */
int spool_received_header(struct buf *out, const struct spool_meta *m,
			  const char *hostname, time_t now);

/* Encode the record's head: everything before the message bytes, with the
 * record length computed for `message_len` bytes of message (the Received
 * header plus body, which the caller writes right after the head as
 * separate iovecs). The head is appended to out; the CRC field is left zero
 * and spool_record_seal() fills it once the message bytes are known.
 * Returns 0, or -1 when a field is too big for the format (a string over
 * SPOOL_STRING_MAX, L over SPOOL_RECORD_MAX) or out's limit is reached;
 * out is unchanged on failure. */
int spool_record_head(struct buf *out, const struct spool_meta *m, uint64_t message_len);

/* Compute the CRC32C over head (after the CRC field) then each message
 * part in order, and store it into the head. `head` must hold exactly one
 * record head starting at head->data (spool_record_head into an empty
 * buf); the parts must add up to the message_len given there. */
void spool_record_seal(struct buf *head, const void *const *parts, const size_t *part_lens,
		       size_t nparts);
/* The same for a head anywhere in memory (head_len bytes). */
void spool_record_seal_raw(uint8_t *head, size_t head_len, const void *const *parts,
			   const size_t *part_lens, size_t nparts);

/* ---- reading ---- */

struct spool_rcpt_view {
	const char *addr; size_t addr_len;
	const char *orcpt; size_t orcpt_len; /* orcpt NULL when absent */
	uint8_t notify;
};

/* Views point into the record bytes given to spool_record_decode. */
struct spool_record_view {
	char id[SPOOL_ID_LEN + 1];
	uint64_t received_unix_ns;
	const char *client_addr; size_t client_addr_len;
	uint16_t client_port;
	const char *helo; size_t helo_len;
	bool esmtp;
	bool tls;
	const char *tls_version; size_t tls_version_len;   /* empty without TLS */
	const char *tls_cipher; size_t tls_cipher_len;
	bool authenticated;
	const char *auth_user; size_t auth_user_len;       /* empty unless authenticated */
	const char *mail_from; size_t mail_from_len;
	uint64_t size_param;
	enum smtp_body_type body_type;
	bool smtputf8;
	bool chunking;
	enum smtp_ret ret;
	const char *envid; size_t envid_len;               /* NULL when absent */
	uint32_t nrcpt;
	const uint8_t *rcpt_bytes; size_t rcpt_bytes_len;  /* walk with spool_rcpt_next */
	const char *message; size_t message_len;           /* Received: + body */
};

/* Decode the record at p (avail bytes there). On SPOOL_OK *rec_len is the
 * record's full length. Never reads outside p[0..avail). Every prefix of a
 * valid record is SPOOL_TRUNCATED; bytes that cannot start a valid record
 * are SPOOL_CORRUPT. */
enum spool_decode spool_record_decode(const uint8_t *p, size_t avail,
				      struct spool_record_view *v, size_t *rec_len);
/* The same, with a short static reason ("bad CRC", ...) unless SPOOL_OK.
 * v and reason may be NULL. */
enum spool_decode spool_record_decode_why(const uint8_t *p, size_t avail,
					  struct spool_record_view *v, size_t *rec_len,
					  const char **reason);
/* Iterate recipients: *cursor starts at 0; returns false at the end. */
bool spool_rcpt_next(const struct spool_record_view *v, size_t *cursor,
		     struct spool_rcpt_view *out);

/* ---- walking a segment's bytes (see READING A SEGMENT above) ---- */

enum spool_walk_event {
	SPOOL_WALK_RECORD,   /* an intact record: v is valid */
	SPOOL_WALK_CORRUPT,  /* a damaged region followed by an intact record */
	SPOOL_WALK_TORN,     /* the tail from offset to the end */
};

/* offset/len: where the record or region is in the segment; reason: why
 * the first record of a region did not decode (NULL for records).
 * Return non-zero to stop the walk. */
typedef int (*spool_walk_fn)(void *ctx, enum spool_walk_event ev, uint64_t offset,
			     uint64_t len, const struct spool_record_view *v, const char *reason);

struct spool_walk_result {
	uint64_t records;
	uint64_t corrupt_regions;
	uint64_t corrupt_bytes;
	uint64_t good_end;   /* end of the last intact record (>= 64) */
	uint64_t torn_bytes; /* bytes from good_end to the end, when torn */
	bool stopped;        /* the callback asked to stop */
};

/* Walk seg[64..len) as records of segment (core, seq). fn may be NULL. */
void spool_segment_walk(const uint8_t *seg, size_t len, unsigned core, uint64_t seq,
			spool_walk_fn fn, void *ctx, struct spool_walk_result *res);

/* The segment numbers in a core directory (names of digits + ".seg"),
 * sorted ascending, into a malloc'd array (free it). Returns 0, or -1 with
 * errno set (ENOENT when the directory does not exist). */
int spool_list_segments(const char *core_dir, uint64_t **seqs, size_t *n);

/* ---- recovery (start-up, blocking I/O is fine here) ---- */

struct spool_recovery {
	uint64_t segments;
	uint64_t records;         /* intact records kept */
	uint64_t truncated_bytes; /* torn tail bytes cut off */
	uint64_t corrupt_records; /* corrupt regions skipped in the middle */
	uint64_t next_seq;        /* first unused segment number for this core */
};

/* Scan DIR/<core>/, verify every record, truncate torn tails (and fsync),
 * create the directory when missing. Progress and problems are appended to
 * log as lines. Returns 0, or -1 with a reason in log. */
int spool_recover(const char *spool_dir, unsigned core, struct spool_recovery *r, struct buf *log);

/* fsync(2) a directory, so an entry made or removed in it is durable.
 * 0 or -1 with errno. */
int spool_fsync_dir(const char *path);
/* The same, leaving segment in_use_seq alone (0: none): it is the one the
 * previous process of a binary upgrade still appends to (see UPGRADE).
 * next_seq is past it. */
int spool_recover_except(const char *spool_dir, unsigned core, uint64_t in_use_seq,
			 struct spool_recovery *r, struct buf *log);

#endif
