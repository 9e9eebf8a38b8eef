/* spool: the on-disk format of mxd's spool, and the pure code that reads
 * and writes it. The writer that appends through io_uring with group
 * commit lives in spool_writer.c; mxspool (tools/mxspool.c) is the reference
 * reader.
 *
 * FORMAT — see the comment block in spool_format.c's head, reproduced here:
 * SPOOL_FORMAT_DOC (filled by the format's author; keep both in sync).
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

uint32_t crc32c(uint32_t crc, const void *data, size_t len);

void spool_make_id(char out[SPOOL_ID_LEN + 1], unsigned core, uint64_t seq, uint64_t offset);

/* Segment header: magic, version, core, seq, creation time. */
void spool_segment_header(uint8_t out[SPOOL_SEGMENT_HEADER_SIZE], unsigned core,
			  uint64_t seq, uint64_t created_unix_ns);

/* Everything the record holds besides the message bytes. */
struct spool_meta {
	const char *id;                   /* SPOOL_ID_LEN chars */
	uint64_t received_unix_ns;
	const struct smtp_envelope *env;
	const struct smtp_peer *peer;
};

/* The Received: header mxd puts first (RFC 5321 4.4, RFC 3848 protocol
 * names ESMTP / ESMTPS / ESMTPA / ESMTPSA, RFC 8314 4.3 TLS facts),
 * with CRLF line ends and folded lines. */
int spool_received_header(struct buf *out, const struct spool_meta *m,
			  const char *hostname, time_t now);

/* Encode the record's head: everything before the message bytes, with the
 * record length computed for `message_len` bytes of message (the Received
 * header plus body, which the caller writes right after the head as
 * separate iovecs). The CRC field is left zero; spool_record_seal() fills it
 * once the message bytes are known. Returns 0, or -1 when a field is too big
 * for the format. */
int spool_record_head(struct buf *out, const struct spool_meta *m, uint64_t message_len);

/* Compute the CRC32C over head (after the CRC field) then each message
 * part in order, and store it into the head. */
void spool_record_seal(struct buf *head, const void *const *parts, const size_t *part_lens,
		       size_t nparts);

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
	const char *tls_version; size_t tls_version_len;   /* empty without TLS */
	const char *tls_cipher; size_t tls_cipher_len;
	const char *auth_user; size_t auth_user_len;       /* empty unless authenticated */
	const char *mail_from; size_t mail_from_len;
	uint64_t size_param;
	enum smtp_body_type body_type;
	bool smtputf8;
	enum smtp_ret ret;
	const char *envid; size_t envid_len;               /* NULL when absent */
	uint32_t nrcpt;
	const uint8_t *rcpt_bytes; size_t rcpt_bytes_len;  /* walk with spool_rcpt_next */
	const char *message; size_t message_len;           /* Received: + body */
};

enum spool_decode {
	SPOOL_OK = 0,
	SPOOL_TRUNCATED,  /* not enough bytes: a torn tail */
	SPOOL_CORRUPT,    /* bad magic, length or CRC */
};

/* Decode the record at p (avail bytes there). On SPOOL_OK *rec_len is the
 * record's full length. */
enum spool_decode spool_record_decode(const uint8_t *p, size_t avail,
				      struct spool_record_view *v, size_t *rec_len);
/* Iterate recipients: *cursor starts at 0; returns false at the end. */
bool spool_rcpt_next(const struct spool_record_view *v, size_t *cursor,
		     struct spool_rcpt_view *out);

/* ---- recovery (start-up, blocking I/O is fine here) ---- */

struct spool_recovery {
	uint64_t segments;
	uint64_t records;         /* intact records kept */
	uint64_t truncated_bytes; /* torn tail bytes cut off */
	uint64_t corrupt_records; /* corrupt records skipped in the middle */
	uint64_t next_seq;        /* first unused segment number for this core */
};

/* Scan DIR/<core>/, verify every record, truncate torn tails (and fsync),
 * create the directory when missing. Progress and problems are appended to
 * log as lines. Returns 0, or -1 with a reason in log. */
int spool_recover(const char *spool_dir, unsigned core, struct spool_recovery *r, struct buf *log);

#endif
