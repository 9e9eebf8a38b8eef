/* core_query: a question the main thread asks a core, answered on the
 * core's own thread.
 *
 * The main thread must not walk a core's connections while the core runs
 * (DESIGN rule 1), so the control socket's "sessions" is a request: the
 * main thread fills nothing but the request and wakes the core; the core,
 * between two loop turns, writes one line per open session into the
 * answer buffer and tells the main thread through its eventfd. The state
 * word hands the buffer over: ASKED, the core owns it; IDLE or ANSWERED,
 * the main thread does. A core that does not answer in time keeps its
 * buffer until it does; the main thread reports it busy meanwhile. */
#ifndef MXD_CORE_QUERY_H
#define MXD_CORE_QUERY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

/* A bound on one core's answer: at about 150 bytes a line, some 100,000
 * sessions; lines past it are left out. */
#define CORE_QUERY_ANSWER_MAX (16u << 20)

enum core_query_state { CORE_QUERY_IDLE = 0, CORE_QUERY_ASKED, CORE_QUERY_ANSWERED };

struct core_query {
	atomic_int state;
	int done_fd;          /* the asker's eventfd, written once answered */
	struct buf answer;    /* one line per open session, "\n" after each */
};

struct core;

/* Main thread: asks `core` for its session list. false when the answer to
 * an earlier question is still owed. */
bool core_query_ask(struct core *core, int done_fd);
/* Main thread: the answer once the core gave it, else NULL. */
const struct buf *core_query_answer(struct core *core);
/* The core's thread, when woken: answers a pending question. */
void core_query_serve(struct core *core);
/* The core's thread, as it ends (the main thread asks no more by then:
 * it is joining the cores). */
void core_query_free(struct core_query *q);

#endif
