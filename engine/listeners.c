#include "listeners.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "log.h"

/* Socket ids: main thread only. */
static uint64_t next_socket_id = 1;

bool sockaddr_same(const struct sockaddr_storage *a, socklen_t alen,
		   const struct sockaddr_storage *b, socklen_t blen)
{
	(void)alen;
	(void)blen;
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
	}
	return false;
}

static int open_socket(const struct conf_listener *l)
{
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
	    /* accepted sockets inherit it: replies go out without Nagle delay */
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
		goto fail;
	if (l->addr.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) < 0 ||
	    listen(fd, LISTEN_BACKLOG) < 0)
		goto fail;
	return fd;
fail:;
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

static void entry_close(struct listen_entry *e)
{
	for (unsigned j = 0; j < e->nsocks; j++)
		if (e->socks[j].fd >= 0)
			close(e->socks[j].fd);
	free(e->socks);
	e->socks = NULL;
	e->nsocks = 0;
}

static void set_free(struct listener_set *s, bool close_carried)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->entries[i].carried && !close_carried)
			free(s->entries[i].socks);
		else
			entry_close(&s->entries[i]);
	}
	free(s->entries);
	s->entries = NULL;
	s->n = 0;
}

static int entry_add(struct listen_entry *e, int fd)
{
	struct listen_sock *p = realloc(e->socks, (e->nsocks + 1) * sizeof *p);
	if (!p)
		return -1;
	e->socks = p;
	e->socks[e->nsocks++] = (struct listen_sock){.fd = fd, .id = next_socket_id++};
	return 0;
}

/* The pool's sockets bound to l's address, then new ones up to ncores. */
static int entry_fill(struct listen_entry *e, const struct conf_listener *l, unsigned ncores,
		      int *pool, size_t npool, const char **why)
{
	e->addr = l->addr;
	e->addr_len = l->addr_len;
	for (size_t k = 0; k < npool; k++) {
		if (pool[k] < 0)
			continue;
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		if (getsockname(pool[k], (struct sockaddr *)&ss, &len) < 0 ||
		    !sockaddr_same(&ss, len, &l->addr, l->addr_len))
			continue;
		if (entry_add(e, pool[k]) < 0) {
			*why = "out of memory";
			return -1;
		}
		pool[k] = -1;
	}
	unsigned inherited = e->nsocks;
	while (e->nsocks < ncores) {
		int fd = open_socket(l);
		if (fd < 0) {
			*why = strerror(errno);
			return -1;
		}
		if (entry_add(e, fd) < 0) {
			close(fd);
			*why = "out of memory";
			return -1;
		}
	}
	if (inherited)
		log_info("listen on %s port %u: %u sockets from the previous process, %u new",
			 l->addr_text, l->port, inherited, e->nsocks - inherited);
	return 0;
}

int listener_set_open(struct listener_set *s, const struct conf *c, unsigned ncores, int *pool,
		      size_t npool)
{
	assert(ncores > 0);
	memset(s, 0, sizeof *s);
	s->ncores = ncores;
	s->entries = calloc(c->nlisteners ? c->nlisteners : 1, sizeof *s->entries);
	if (!s->entries) {
		log_error("out of memory for listeners");
		return -1;
	}
	s->n = c->nlisteners;
	for (size_t i = 0; i < c->nlisteners; i++) {
		const struct conf_listener *l = &c->listeners[i];
		const char *why = NULL;
		if (entry_fill(&s->entries[i], l, ncores, pool, npool, &why) < 0) {
			log_error("%s:%d:%d: listen on %s port %u: %s", c->path, l->line, l->col,
				  l->addr_text, l->port, why);
			set_free(s, true); /* start-up fails: inherited ones too */
			return -1;
		}
	}
	return 0;
}

static const struct listen_entry *find_entry(const struct listener_set *s,
					     const struct conf_listener *l)
{
	for (size_t i = 0; i < s->n; i++)
		if (sockaddr_same(&s->entries[i].addr, s->entries[i].addr_len, &l->addr,
				  l->addr_len))
			return &s->entries[i];
	return NULL;
}

int listener_set_reload(const struct listener_set *cur, const struct conf *c,
			struct listener_set *next, struct buf *errs)
{
	memset(next, 0, sizeof *next);
	next->ncores = cur->ncores;
	next->entries = calloc(c->nlisteners ? c->nlisteners : 1, sizeof *next->entries);
	if (!next->entries) {
		buf_printf(errs, "%s: out of memory for listeners\n", c->path);
		return -1;
	}
	next->n = c->nlisteners;
	for (size_t i = 0; i < c->nlisteners; i++) {
		const struct conf_listener *l = &c->listeners[i];
		struct listen_entry *e = &next->entries[i];
		const struct listen_entry *old = find_entry(cur, l);
		const char *why = "out of memory";
		if (old) {
			e->addr = old->addr;
			e->addr_len = old->addr_len;
			e->socks = malloc(old->nsocks * sizeof *e->socks);
			if (e->socks) {
				memcpy(e->socks, old->socks, old->nsocks * sizeof *e->socks);
				e->nsocks = old->nsocks;
				e->carried = true;
				continue;
			}
		} else if (entry_fill(e, l, cur->ncores, NULL, 0, &why) == 0) {
			continue;
		}
		buf_printf(errs, "%s:%d:%d: listen on %s port %u: %s\n", c->path, l->line, l->col,
			   l->addr_text, l->port, why);
		set_free(next, false);
		return -1;
	}
	return 0;
}

static bool carried_by(const struct listener_set *next, uint64_t id)
{
	for (size_t i = 0; i < next->n; i++) {
		const struct listen_entry *e = &next->entries[i];
		for (unsigned j = 0; e->carried && j < e->nsocks; j++)
			if (e->socks[j].id == id)
				return true;
	}
	return false;
}

void listener_set_commit(struct listener_set *cur, struct listener_set *next)
{
	for (size_t i = 0; i < cur->n; i++) {
		struct listen_entry *e = &cur->entries[i];
		bool kept = e->nsocks > 0 && carried_by(next, e->socks[0].id);
		if (!kept)
			entry_close(e);
		else
			free(e->socks);
	}
	free(cur->entries);
	for (size_t i = 0; i < next->n; i++)
		next->entries[i].carried = false;
	*cur = *next;
	memset(next, 0, sizeof *next);
}

void listener_set_abandon(struct listener_set *next)
{
	set_free(next, false);
}

void listener_set_close(struct listener_set *s)
{
	set_free(s, true);
}

struct core_mail *listener_set_mail(const struct listener_set *s, unsigned core,
				    struct snapshot *snap)
{
	unsigned n = 0;
	for (size_t i = 0; i < s->n; i++)
		for (unsigned j = 0; j < s->entries[i].nsocks; j++)
			n += j % s->ncores == core;
	struct core_mail *m = core_mail_new(snap, n);
	if (!m) {
		log_error("out of memory for core %u's listeners", core);
		return NULL;
	}
	unsigned k = 0;
	for (size_t i = 0; i < s->n; i++) {
		const struct listen_entry *e = &s->entries[i];
		for (unsigned j = 0; j < e->nsocks; j++) {
			if (j % s->ncores != core)
				continue;
			int fd = fcntl(e->socks[j].fd, F_DUPFD_CLOEXEC, 0);
			if (fd < 0) {
				log_error("core %u: cannot duplicate a listening socket: %s", core,
					  strerror(errno));
				core_mail_free(m);
				return NULL;
			}
			m->socks[k++] = (struct core_mail_sock){
				.fd = fd, .id = e->socks[j].id, .index = (unsigned)i};
		}
	}
	assert(k == n);
	return m;
}
