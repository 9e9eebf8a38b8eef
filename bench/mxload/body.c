/* body: message content, made once per size class at start-up.
 *
 * Every message of a size class carries the same content except its first
 * line, a Message-ID unique to the run, worker and message (fixed width,
 * written into the connection's own small buffer and sent in front of the
 * shared content with one sendmsg). So the hot path neither allocates nor
 * copies message bodies, and every spooled message is still distinct.
 *
 * The content is deterministic (the same options give the same bytes):
 * RFC 5322 headers, a blank line, then 78-character lines of letters and
 * digits ending in CRLF. Some lines start with a dot and one line is a lone
 * dot, so DATA transparency (RFC 5321 4.5.2) is exercised: the DATA copy is
 * dot-stuffed ahead of time and ends with ".\r\n"; the BDAT copy is the raw
 * content. A message is exactly its size class's bytes once unstuffed. */
#include <assert.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxload.h"

#define LINE_TEXT 78 /* characters before CRLF */
#define DOT_EVERY 40 /* every 40th body line starts with a dot */

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

static size_t header_block(const struct mxl_options *o, uint64_t size, char *out, size_t cap)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
	char to[MXL_ADDR_MAX + 16];
	snprintf(to, sizeof to, o->to, 1);
	int n = snprintf(out, cap,
			 "From: <%s>\r\n"
			 "To: <%s>\r\n"
			 "Subject: mxload %" PRIu64 " bytes\r\n"
			 "Date: %s\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n"
			 "\r\n",
			 o->from, to, size, date);
	assert(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

uint64_t body_min_size(const struct mxl_options *o)
{
	char tmp[2048];
	/* the header block with a 20-digit size, plus one short line */
	return MXL_MSGID_LEN + header_block(o, UINT64_MAX, tmp, sizeof tmp) + 2;
}

/* One body line of `text` characters (CRLF added), number `n`. */
static size_t put_line(char *p, size_t text, uint64_t n, bool lone_dot_ok)
{
	for (size_t i = 0; i < text; i++)
		p[i] = alphabet[(n * 7 + i) % (sizeof alphabet - 1)];
	if (text > 0 && n % DOT_EVERY == 3)
		p[0] = '.';
	if (n == 5 && lone_dot_ok)
		text = 1, p[0] = '.'; /* a lone dot: the end marker unless stuffed */
	p[text] = '\r';
	p[text + 1] = '\n';
	return text + 2;
}

static int build_one(const struct mxl_options *o, struct mxl_body *b)
{
	size_t raw_len = b->size - MXL_MSGID_LEN;
	char *raw = malloc(raw_len ? raw_len : 1);
	if (!raw)
		return -1;
	char hdr[2048];
	size_t h = header_block(o, b->size, hdr, sizeof hdr);
	assert(h + 2 <= raw_len);
	memcpy(raw, hdr, h);
	size_t pos = h;
	uint64_t n = 0;
	while (pos < raw_len) {
		size_t left = raw_len - pos;
		size_t text;
		if (left >= LINE_TEXT + 2 + LINE_TEXT / 2)
			text = LINE_TEXT;
		else if (left > LINE_TEXT + 2)
			text = left / 2 - 2; /* two shorter lines rather than a tiny last one */
		else
			text = left - 2;
		/* the lone-dot line is shorter: only where plenty follows it */
		pos += put_line(raw + pos, text, n++, left > 4 * (LINE_TEXT + 2));
	}
	assert(pos == raw_len);

	/* the DATA copy: a dot at a line start is doubled; then ".\r\n" */
	size_t dots = 0;
	for (size_t i = 0; i < raw_len; i++)
		if (raw[i] == '.' && (i == 0 || raw[i - 1] == '\n'))
			dots++;
	size_t data_len = raw_len + dots + 3;
	char *data = malloc(data_len);
	if (!data) {
		free(raw);
		return -1;
	}
	size_t d = 0;
	for (size_t i = 0; i < raw_len; i++) {
		if (raw[i] == '.' && (i == 0 || raw[i - 1] == '\n'))
			data[d++] = '.';
		data[d++] = raw[i];
	}
	memcpy(data + d, ".\r\n", 3);
	d += 3;
	assert(d == data_len);
	b->raw = raw;
	b->raw_len = raw_len;
	b->data = data;
	b->data_len = data_len;
	return 0;
}

int body_build_all(struct mxl_options *o)
{
	char probe[MXL_MSGID_LEN + 1];
	body_msgid(probe, UINT64_MAX, 0xffff, UINT64_MAX);
	assert(strlen(probe) == MXL_MSGID_LEN);
	for (unsigned i = 0; i < o->nsizes; i++)
		if (build_one(o, &o->sizes[i]) < 0)
			return -1;
	return 0;
}

void body_free_all(struct mxl_options *o)
{
	for (unsigned i = 0; i < o->nsizes; i++) {
		free(o->sizes[i].raw);
		free(o->sizes[i].data);
		o->sizes[i].raw = o->sizes[i].data = NULL;
	}
}

static void hex(char *out, uint64_t v, unsigned digits)
{
	static const char x[] = "0123456789abcdef";
	for (unsigned i = digits; i-- > 0; v >>= 4)
		out[i] = x[v & 15];
}

void body_msgid(char *out, uint64_t run_id, unsigned worker, uint64_t counter)
{
	/* No snprintf on the hot path: fixed fields, patched in place. */
	static const char head[] = "Message-ID: <";
	static const char tail[] = "@mxload.invalid>\r\n";
	char *p = out;
	memcpy(p, head, sizeof head - 1);
	p += sizeof head - 1;
	hex(p, counter, 16);
	p += 16;
	*p++ = '.';
	hex(p, run_id, 16);
	p += 16;
	*p++ = '.';
	hex(p, worker, 4);
	p += 4;
	memcpy(p, tail, sizeof tail - 1);
	p += sizeof tail - 1;
	*p = '\0';
	assert(p - out == MXL_MSGID_LEN);
}
