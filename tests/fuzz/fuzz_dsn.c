/* fuzz_dsn: the DSN generator with every outside value chosen by the
 * fuzzer.
 *
 * Input: byte 0 flags (RET, which recipients, small full_max), byte 1 the
 * number of recipients (1-4), then fields separated by 0xFF: sender,
 * ENVID, the original message, and for each recipient its address, ORCPT,
 * reply text and next hop; each recipient also takes a NOTIFY byte and an
 * action from the flags. Invariants (any broken one aborts):
 *   - dsn_build returns 0 and reports exactly the recipients dsn_wanted
 *     says are due, appending nothing when none is;
 *   - every line ends in CRLF, with no other CR or LF, at most 998 octets;
 *   - the boundary opens exactly three parts and closes once, at the very
 *     end, and no other line starts with "--" and the boundary: nothing
 *     from outside can open or close a part;
 *   - the Content-Transfer-Encoding says 8bit exactly when an octet over
 *     127 is inside, as the result says. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsn.h"

#define MAX_RCPTS 4

struct field {
	const char *p;
	size_t n;
};

static struct field next_field(const uint8_t **p, size_t *n)
{
	struct field f = { (const char *)*p, 0 };
	const uint8_t *sep = memchr(*p, 0xFF, *n);
	f.n = sep ? (size_t)(sep - *p) : *n;
	*p += f.n + (sep ? 1 : 0);
	*n -= f.n + (sep ? 1 : 0);
	return f;
}

static void check_lines(const char *p, size_t n, const char *boundary, bool *eightbit)
{
	char open[128], close[128];
	size_t bl = (size_t)snprintf(open, sizeof open, "--%s", boundary);
	snprintf(close, sizeof close, "--%s--", boundary);
	unsigned opens = 0, closes = 0;
	size_t i = 0;
	*eightbit = false;
	while (i < n) {
		const char *cr = memchr(p + i, '\r', n - i);
		if (!cr || (size_t)(cr - p) + 1 >= n || cr[1] != '\n')
			abort(); /* every line ends in CRLF */
		size_t len = (size_t)(cr - (p + i));
		const char *l = p + i;
		if (memchr(l, '\n', len) || len > 998)
			abort();
		for (size_t k = 0; k < len; k++)
			if ((unsigned char)l[k] >= 0x80)
				*eightbit = true;
		if (len >= bl && memcmp(l, open, bl) == 0) {
			if (len == bl) {
				opens++;
			} else if (len == bl + 2 && memcmp(l, close, bl + 2) == 0) {
				closes++;
				if (i + len + 2 != n)
					abort(); /* the close is the very end */
			} else {
				abort(); /* a line that looks like ours and is not */
			}
		}
		i += len + 2;
	}
	if (opens != 3 || closes != 1)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint8_t flags = data[0];
	uint32_t nrcpt = 1 + data[1] % MAX_RCPTS;
	const uint8_t *p = data + 2;
	size_t n = size - 2;
	struct field sender = next_field(&p, &n);
	struct field envid = next_field(&p, &n);
	struct field original = next_field(&p, &n);
	struct dsn_rcpt rcpts[MAX_RCPTS];
	uint32_t due = 0;
	for (uint32_t i = 0; i < nrcpt; i++) {
		struct field addr = next_field(&p, &n), orcpt = next_field(&p, &n);
		struct field diag = next_field(&p, &n), mta = next_field(&p, &n);
		uint8_t notify = n ? *p : 0;
		if (n) {
			p++;
			n--;
		}
		rcpts[i] = (struct dsn_rcpt){
			.addr = addr.p, .addr_len = addr.n,
			.orcpt = orcpt.n ? orcpt.p : NULL, .orcpt_len = orcpt.n,
			.notify = notify & 0x0F,
			.action = (flags >> (i + 2)) & 1 ? DSN_ACTION_DELAYED : DSN_ACTION_FAILED,
			.code = (uint16_t)(200 + notify % 4 * 100 + notify % 7),
			.status = (notify & 0x10) ? "5.1.1" : NULL,
			.diagnostic = diag.n ? diag.p : NULL, .diagnostic_len = diag.n,
			.remote_mta = mta.n ? mta.p : NULL, .remote_mta_len = mta.n,
			.last_attempt = (notify & 0x20) ? 1796000000 : 0,
			.retry_until = (notify & 0x40) ? 1796400000 : 0,
		};
		if (dsn_wanted(sender.n, rcpts[i].notify, rcpts[i].action))
			due++;
	}
	struct dsn_message m = {
		.reporting_mta = "mx.fuzz",
		.mail_from = sender.p, .mail_from_len = sender.n,
		.envid = envid.n ? envid.p : NULL, .envid_len = envid.n,
		.ret = (enum smtp_ret)(flags % 3),
		.arrival = 1796000000, .now = 1796003600,
		.id = "FUZZ",
		.original = original.p, .original_len = original.n,
		.full_max = (flags & 0x80) ? 64 : 0,
		.rcpts = rcpts, .nrcpt = nrcpt,
	};
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	if (dsn_build(&out, &m, &res) != 0 || res.reported != due)
		abort();
	if (due == 0) {
		if (out.len != 0)
			abort();
		buf_free(&out);
		return 0;
	}
	/* The boundary as the Content-Type field declares it (a line that
	 * starts with the field name: folded text from a sender cannot). */
	static const char ct[] =
		"\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"";
	const char *b = memmem(out.data, out.len, ct, sizeof ct - 1);
	if (!b)
		abort();
	b += sizeof ct - 1;
	const char *q = memchr(b, '"', out.len - (size_t)(b - out.data));
	if (!q || q - b >= 100)
		abort();
	char boundary[100];
	memcpy(boundary, b, (size_t)(q - b));
	boundary[q - b] = '\0';
	bool eightbit;
	check_lines(out.data, out.len, boundary, &eightbit);
	if (eightbit != res.eightbit)
		abort();
	/* The top-level header's own field, at the start of a line of the
	 * header block (a sender could carry the same words as text). */
	const char *eoh = memmem(out.data, out.len, "\r\n\r\n", 4);
	if (!eoh)
		abort();
	bool says8 = memmem(out.data, (size_t)(eoh - out.data) + 2,
			    "\r\nContent-Transfer-Encoding: 8bit\r\n", 35) != NULL;
	if (says8 != res.eightbit)
		abort();
	buf_free(&out);
	return 0;
}
