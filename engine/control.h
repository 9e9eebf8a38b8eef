/* control: the Unix socket mxctl talks to, served on the main thread.
 *
 * The protocol (one command line in, "ok-"/"error-" lines and one final
 * "ok"/"error" line out) is in control_proto.h. The main thread's event
 * loop (main.c) polls the descriptors control_pollfds() gives it and hands
 * their events back to control_service(); a command runs to its end there,
 * so "reload" is the very reload SIGHUP does. Nothing a client does can
 * hold the loop: lines are bounded (CONTROL_LINE_MAX), so are clients at
 * once (max-clients) and their idle time (timeout); a client that does not
 * read its reply is dropped at the timeout. The one wait is "sessions",
 * bounded by CONTROL_SESSIONS_WAIT_MS, while the cores write their lists.
 *
 * The socket file is created with mode 0600 (only mxd's user, and root,
 * may connect), replaces a stale one atomically (bind to a temporary name,
 * then rename), and is removed at exit unless another process has taken
 * the name over since. */
#ifndef MXD_CONTROL_H
#define MXD_CONTROL_H

#include <poll.h>

#include "buf.h"
#include "conf.h"

struct snapshot;

/* What the control socket needs from the daemon (main.c). */
struct control_ops {
	void *ctx;
	/* The same reload as SIGHUP: reply gets "ok generation N", or one
	 * line per error. 0 when the new config is in use. */
	int (*reload)(void *ctx, struct buf *reply);
	/* The config new sessions get now. */
	const struct snapshot *(*current)(void *ctx);
	/* Binary upgrade; NULL when this mxd cannot. 0 when started; reply
	 * gets what to tell the client, one line per fact. */
	int (*upgrade)(void *ctx, struct buf *reply);
};

/* The poll slots the control socket may use: its listener and each client. */
#define CONTROL_POLLFDS_MAX (1 + 64)
/* How long "sessions" waits for the cores' lists. */
#define CONTROL_SESSIONS_WAIT_MS 2000

/* Creates the socket (errors logged; -1). */
int control_open(const struct conf_control *cfg, const struct control_ops *ops);
/* Fills up to max poll slots; how many. */
unsigned control_pollfds(struct pollfd *pfd, unsigned max);
/* Milliseconds until the next client deadline; -1: none. */
int control_timeout_ms(void);
/* After poll: the slots control_pollfds filled, with their revents. */
void control_service(const struct pollfd *pfd, unsigned n);
/* Closes every client and the socket, removes the socket file. */
void control_close(void);

#endif
