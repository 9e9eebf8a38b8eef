#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

/* Past this many buffered bytes a core flushes early, so a burst of
 * rejects cannot grow the buffer without bound. */
#define LOG_FLUSH_THRESHOLD (64 * 1024)

static _Atomic int log_level = LOG_INFO;
static _Thread_local char log_thread_name[16] = "main";
static _Thread_local int log_buffered;
static _Thread_local struct buf log_pending;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
	atomic_store(&log_level, (int)level);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load(&log_level);
}

void log_thread_init(const char *name, int buffered)
{
	snprintf(log_thread_name, sizeof log_thread_name, "%s", name);
	log_buffered = buffered;
	buf_init(&log_pending, 0);
}

static void write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* nowhere left to report it */
		}
		p += w;
		n -= (size_t)w;
	}
}

void log_flush(void)
{
	if (log_pending.len == 0)
		return;
	write_all(log_pending.data, log_pending.len);
	buf_shrink(&log_pending, 1 << 20);
}

static void append_timestamp(struct buf *b)
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	buf_printf(b, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ", tm.tm_year + 1900, tm.tm_mon + 1,
		   tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if ((int)level > atomic_load(&log_level))
		return;
	struct buf line;
	struct buf *b = &log_pending;
	if (!log_buffered) {
		buf_init(&line, 0);
		b = &line;
	}
	append_timestamp(b);
	buf_printf(b, "mxd[%s] %s: ", log_thread_name, level_names[level]);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(b, fmt, ap);
	va_end(ap);
	buf_append(b, "\n", 1);
	if (!log_buffered) {
		write_all(line.data, line.len);
		buf_free(&line);
	} else if (log_pending.len >= LOG_FLUSH_THRESHOLD) {
		log_flush();
	}
}

void log_thread_exit(void)
{
	log_flush();
	buf_free(&log_pending);
	log_buffered = 0;
}
