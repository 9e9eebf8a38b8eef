#include "snapshot.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

static void fill_smtp_config(struct smtp_config *sc, const struct conf *c,
			     const struct conf_listener *l, const struct policy *p)
{
	memset(sc, 0, sizeof *sc);
	sc->hostname = l->hostname ? l->hostname : c->hostname;
	sc->max_line_length = c->max_line_length;
	sc->max_message_size = c->max_message_size;
	sc->max_recipients = c->max_recipients;
	sc->max_errors = c->max_errors;
	sc->accept_bare_newlines = c->accept_bare_newlines;
	sc->starttls_offered = (l->flags & (CONF_LISTEN_TLS | CONF_LISTEN_TLS_REQUIRE)) != 0;
	sc->tls_required = (l->flags & CONF_LISTEN_TLS_REQUIRE) != 0;
	sc->auth_offered = (l->flags & CONF_LISTEN_AUTH) != 0;
	sc->policy = p;
}

static bool wants_ktls(const struct conf *c, bool ktls_kernel, struct buf *errs)
{
	switch (c->ktls) {
	case CONF_KTLS_OFF:
		return false;
	case CONF_KTLS_AUTO:
		return ktls_kernel;
	case CONF_KTLS_ON:
		if (!ktls_kernel)
			buf_printf(errs, "%s: ktls on, but this kernel does not support kTLS "
					 "(TCP_ULP \"tls\"): use ktls auto or load the tls module\n",
				   c->path);
		return ktls_kernel;
	}
	return false;
}

struct snapshot *snapshot_load(const char *path, uint64_t generation, bool ktls_kernel,
			       struct buf *errs)
{
	struct conf *c = conf_load(path, errs);
	if (!c)
		return NULL;
	size_t errs_before = errs->len;
	bool ktls = wants_ktls(c, ktls_kernel, errs);
	struct policy *p = errs->len == errs_before ? policy_build(c, errs) : NULL;
	struct tls_server *tls = p ? tls_server_build(c, ktls, errs) : NULL;
	if (!tls) {
		policy_free(p);
		conf_free(c);
		return NULL;
	}
	struct snapshot *s = calloc(1, sizeof *s);
	struct smtp_config *sc = calloc(c->nlisteners ? c->nlisteners : 1, sizeof *sc);
	if (!s || !sc) {
		free(s);
		free(sc);
		tls_server_free(tls);
		policy_free(p);
		conf_free(c);
		buf_printf(errs, "%s: out of memory\n", path);
		return NULL;
	}
	for (size_t i = 0; i < c->nlisteners; i++)
		fill_smtp_config(&sc[i], c, &c->listeners[i], p);
	s->conf = c;
	s->policy = p;
	s->tls = tls;
	s->ktls = ktls;
	s->smtp = sc;
	s->generation = generation;
	atomic_init(&s->refs, 1);
	return s;
}

void snapshot_hold(struct snapshot *s)
{
	unsigned old = atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	assert(old > 0);
	(void)old;
}

void snapshot_release(struct snapshot *s)
{
	if (!s)
		return;
	if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	free(s->smtp);
	tls_server_free(s->tls);
	policy_free(s->policy);
	conf_free(s->conf);
	free(s);
}
