/* route: delivery-time routing of spooled recipients (route.h). */
#include "route.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* A counted string into a NUL-terminated buffer; false when it does not
 * fit or holds a NUL. */
static bool copy_str(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= cap || (n && memchr(s, '\0', n)))
		return false;
	if (n)
		memcpy(dst, s, n);
	dst[n] = '\0';
	return true;
}

void route_peer(const struct spool_record_view *v, struct smtp_peer *out)
{
	memset(out, 0, sizeof *out);
	out->port = v->client_port;
	out->authenticated = v->authenticated;
	out->tls = v->tls;
	copy_str(out->auth_user, sizeof out->auth_user, v->auth_user, v->auth_user_len);
	if (!copy_str(out->addr_str, sizeof out->addr_str, v->client_addr, v->client_addr_len))
		out->addr_str[0] = '\0';
	struct sockaddr_in *in4 = (struct sockaddr_in *)&out->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->addr;
	if (inet_pton(AF_INET, out->addr_str, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(out->port);
		out->addr_len = sizeof *in4;
	} else if (inet_pton(AF_INET6, out->addr_str, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(out->port);
		out->addr_len = sizeof *in6;
	} else {
		out->addr.ss_family = AF_UNSPEC;
	}
	out->is_local = policy_is_loopback(&out->addr);
}

bool route_is_dsn(const struct spool_record_view *v)
{
	return v->mail_from_len == 0 && v->client_addr_len == 0;
}

void route_rcpt(const struct conf *c, const struct policy *p, const struct spool_record_view *v,
		const struct smtp_peer *peer, const char *addr, size_t len, struct route *out)
{
	assert(c && p && v && peer && out);
	memset(out, 0, sizeof *out);
	out->rule = -1;
	if (route_is_dsn(v) && c->relay.bounce.nhops) {
		out->kind = ROUTE_RELAY;
		out->via = &c->relay.bounce;
		return;
	}
	char rcpt[ROUTE_ADDR_MAX + 1];
	if (!copy_str(rcpt, sizeof rcpt, addr, len)) {
		out->kind = ROUTE_NONE;
		out->verdict = POLICY_RELAY_DENIED;
		return;
	}
	long rule = -1;
	out->verdict = policy_match_rcpt(p, peer, rcpt, &rule);
	out->rule = rule;
	if (out->verdict != POLICY_ACCEPT) {
		out->kind = ROUTE_NONE;
		return;
	}
	assert(rule >= 0 && (size_t)rule < c->nrules);
	const struct conf_route *via = &c->rules[rule].relay;
	out->kind = via->nhops ? ROUTE_RELAY : ROUTE_KEEP;
	out->via = via->nhops ? via : NULL;
}

long route_message(const struct conf *c, const struct policy *p, const struct spool_record_view *v,
		   struct route *out, size_t cap)
{
	if (v->nrcpt > cap)
		return -1;
	struct smtp_peer peer;
	route_peer(v, &peer);
	size_t cur = 0, i = 0;
	struct spool_rcpt_view r;
	while (i < v->nrcpt && spool_rcpt_next(v, &cur, &r))
		route_rcpt(c, p, v, &peer, r.addr, r.addr_len, &out[i++]);
	assert(i == v->nrcpt);
	return (long)i;
}

bool route_same(const struct route *a, const struct route *b)
{
	return a->kind == b->kind && a->via == b->via;
}
