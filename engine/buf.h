/* buf: a growable byte buffer with an explicit upper bound.
 *
 * Every buffer in mxd has a limit (DESIGN rule 5): appends that would grow
 * past `limit` fail with -1 and leave the buffer unchanged, so callers can
 * turn "too big" into a precise SMTP reply instead of exhausting memory. */
#ifndef MXD_BUF_H
#define MXD_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
	size_t limit; /* 0 means SIZE_MAX */
};

void buf_init(struct buf *b, size_t limit);
/* Make room for `extra` more bytes; -1 if that would pass the limit or
 * allocation fails. */
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Drop the first n bytes (a consumer that has used them). */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* Reset and give the memory back when the buffer grew past `keep` bytes,
 * so one large message does not pin memory on an idle session. */
void buf_shrink(struct buf *b, size_t keep);
void buf_free(struct buf *b);

#endif
