/* upgrade: replace the running binary without refusing a connection.
 *
 * SIGUSR2 or `mxctl upgrade` call upgrade_start(): the new binary is
 * started with this process's listening sockets and spool facts, and once
 * it accepts on every core this process drains and exits. The protocol
 * and the spool rules are in upgrade.c's header comment. */
#ifndef MXD_UPGRADE_H
#define MXD_UPGRADE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

struct listener_set;
struct snapshot;

/* The kinds of socket the hand-over carries. */
enum upgrade_sock_kind {
	UPGRADE_SOCK_LISTENER = 1, /* an SMTP listening socket */
	UPGRADE_SOCK_METRICS = 2,  /* the metrics HTTP listening socket */
};

/* What upgrade_start() returns. */
enum upgrade_result {
	UPGRADE_OK = 0,            /* the new process is ready: drain and exit */
	UPGRADE_BUSY = -1,         /* an upgrade is in progress, or the previous
	                              process of the last one still drains */
	UPGRADE_FAILED = -2,       /* the new process could not start, failed
	                              or timed out: this one keeps serving */
};

/* ---- both sides: start-up (main thread) ---- */

/* Remember how this process was started (the binary's path as it is now,
 * and argv, for the re-exec), the listener set and the current snapshot
 * (read at each upgrade for "timeout upgrade"). */
void upgrade_setup(char **argv, const struct listener_set *listeners,
		   struct snapshot *const *current);

/* ---- the new process ---- */

/* When started by an upgrade (MXD_UPGRADE_FD in the environment), read
 * the hand-over: the previous process's pid, its in-use segments and its
 * sockets. Returns 0 (also when not started by an upgrade) or -1 with the
 * reason logged. */
int upgrade_inherit(void);
bool upgrade_inherited(void);
/* The segment core `core` of the previous process appends to (0: none or
 * no previous process): recovery leaves it alone. */
uint64_t upgrade_in_use_seq(unsigned core);
/* Inherited sockets of one kind; the caller takes a descriptor by setting
 * its slot to -1. upgrade_ready() closes the ones nobody took. */
int *upgrade_sockets(enum upgrade_sock_kind kind, size_t *n);
/* The first inherited socket of a kind, taken (-1 when none). For the
 * metrics socket: check it is bound where the config says. */
int upgrade_take_socket(enum upgrade_sock_kind kind);
/* Every core accepts: tell the previous process, which then drains. */
void upgrade_ready(void);

/* ---- the old process ---- */

/* Sockets besides the listener set that move to the new process: the
 * metrics listening socket (-1: none), set by its owner when it starts.
 * The control socket does not move: the new process binds a new one and
 * renames it over the path (control.c), which the old one then leaves. */
void upgrade_set_socket(enum upgrade_sock_kind kind, int fd);

/* Start the new binary and hand over; blocks the calling (main) thread
 * until the new process is ready, failed, or "timeout upgrade" passed.
 * On UPGRADE_OK the caller drains this process (g_daemon.drain_soft is
 * set). upgrade_result_text() says what happened, for a log or mxctl. */
int upgrade_start(void);
const char *upgrade_result_text(void);
/* After UPGRADE_OK: this process handed its sockets over; it drains and
 * must not serve what the new process now serves (metrics). */
bool upgrade_handed_over(void);

#endif
