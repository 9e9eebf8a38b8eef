#include "core_query.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "core.h"
#include "log.h"

bool core_query_ask(struct core *core, int done_fd)
{
	struct core_query *q = &core->query;
	int state = atomic_load_explicit(&q->state, memory_order_acquire);
	if (state == CORE_QUERY_ASKED)
		return false;
	if (state == CORE_QUERY_IDLE) /* the first question: the core was zeroed */
		buf_init(&q->answer, CORE_QUERY_ANSWER_MAX);
	else
		buf_reset(&q->answer);
	q->done_fd = done_fd;
	atomic_store_explicit(&q->state, CORE_QUERY_ASKED, memory_order_release);
	core_wake(core);
	return true;
}

const struct buf *core_query_answer(struct core *core)
{
	struct core_query *q = &core->query;
	if (atomic_load_explicit(&q->state, memory_order_acquire) != CORE_QUERY_ANSWERED)
		return NULL;
	return &q->answer;
}

void core_query_serve(struct core *core)
{
	struct core_query *q = &core->query;
	if (atomic_load_explicit(&q->state, memory_order_acquire) != CORE_QUERY_ASKED)
		return;
	for (const struct conn *c = core->conns; c; c = c->next)
		conn_describe(c, &q->answer);
	int fd = q->done_fd;
	/* after this store the buffer is the main thread's: touch it no more */
	atomic_store_explicit(&q->state, CORE_QUERY_ANSWERED, memory_order_release);
	uint64_t one = 1;
	if (write(fd, &one, sizeof one) < 0)
		log_warn("control: cannot signal the session list: %s", strerror(errno));
}

void core_query_free(struct core_query *q)
{
	buf_free(&q->answer);
}
