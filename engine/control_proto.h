/* control_proto: the control socket's line protocol, pure (no sockets).
 *
 * mxctl (tools/mxctl.c) and mxd (engine/control.c) speak it over the Unix
 * socket named by "control socket" in the config.
 *
 * Request: one command line, at most CONTROL_LINE_MAX bytes with its LF
 * (a CR before the LF is ignored). Words are separated by blanks:
 *
 *   status                 pid, version, uptime, config, cores, paused, ...
 *   stats                  the metrics page's samples as "name value" lines
 *   pause                  new mail gets 421 4.3.2 until resume
 *   resume
 *   reload                 the same as SIGHUP; says the new generation or
 *                          the config's errors (FILE:LINE:COL: message)
 *   log-level [LEVEL]      show or set: debug, info, warn, error
 *   sessions               one line per open session, every core
 *   upgrade                binary upgrade (when this mxd has it)
 *   help                   the commands
 *   quit                   close the connection (no reply)
 *
 * Reply: zero or more lines "ok-TEXT" or "error-TEXT", then exactly one
 * final line "ok", "ok TEXT" or "error TEXT". The final line is the only
 * one whose fifth / sixth byte is not '-', so a reader needs no other
 * framing; its word says whether the command worked. Several commands
 * may be sent on one connection, one after the other.
 *
 * A line longer than CONTROL_LINE_MAX gets "error line too long" and the
 * connection is closed (the framing is lost). */
#ifndef MXD_CONTROL_PROTO_H
#define MXD_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>

/* Longest request line, LF included. Commands are a few words; the bound
 * keeps a client from making the main thread buffer without end. */
#define CONTROL_LINE_MAX 512

/* ---- framing: bytes in, one line out ---- */

struct control_line {
	char text[CONTROL_LINE_MAX + 1]; /* the line, NUL-terminated once ready */
	size_t len;
};

enum control_line_status {
	CONTROL_LINE_NEED_MORE,   /* every byte taken, no line end yet */
	CONTROL_LINE_READY,       /* line->text holds a line without CR LF */
	CONTROL_LINE_TOO_LONG,    /* CONTROL_LINE_MAX bytes without a LF */
};

void control_line_init(struct control_line *l);
/* Takes bytes up to and including the first LF; *used says how many.
 * After READY the caller handles line->text and calls control_line_init
 * before feeding the rest. */
enum control_line_status control_line_feed(struct control_line *l, const char *data,
					   size_t len, size_t *used);

/* ---- commands ---- */

enum control_verb {
	CONTROL_STATUS,
	CONTROL_STATS,
	CONTROL_PAUSE,
	CONTROL_RESUME,
	CONTROL_RELOAD,
	CONTROL_LOG_LEVEL,
	CONTROL_SESSIONS,
	CONTROL_UPGRADE,
	CONTROL_HELP,
	CONTROL_QUIT,
};

struct control_cmd {
	enum control_verb verb;
	int level;                /* log-level: an enum log_level, or -1 to show it */
};

/* Parses a request line of len bytes (without its line end). Returns 0,
 * or -1 with a message for the client in err (always NUL-terminated, never
 * holds a control character of the input). A control character (NUL, ESC,
 * a lone CR...; tab is a blank) makes the whole line invalid. */
int control_cmd_parse(const char *line, size_t len, struct control_cmd *cmd, char *err,
		      size_t err_len);
const char *control_level_name(int level);
/* The help text: one command per line, no line end on the last. */
extern const char control_help[];

/* ---- replies (for readers such as mxctl) ---- */

enum control_reply_kind {
	CONTROL_REPLY_OK_MORE,     /* "ok-TEXT" */
	CONTROL_REPLY_ERROR_MORE,  /* "error-TEXT" */
	CONTROL_REPLY_OK,          /* "ok" or "ok TEXT": the last line */
	CONTROL_REPLY_ERROR,       /* "error TEXT": the last line */
	CONTROL_REPLY_INVALID,     /* none of those: not the control protocol */
};

/* Classifies one reply line (without its LF); *text points past the
 * prefix (at "" for a bare "ok"). */
enum control_reply_kind control_reply_parse(const char *line, const char **text);

#endif
