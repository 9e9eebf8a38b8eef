/* log: one line per event, to stderr.
 *
 * Each core thread buffers its lines and writes them with one write(2) per
 * loop turn (log_flush), so logging costs no syscall per message. Lines from
 * other threads (main, start-up) go out at once. */
#ifndef MXD_LOG_H
#define MXD_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Name shown in each line of this thread ("main", "core0", ...); with
 * `buffered` the thread's lines wait for log_flush(). */
void log_thread_init(const char *name, int buffered);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_flush(void);
/* Flush and free this thread's buffer (a core thread that ends). */
void log_thread_exit(void);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
