/* policy: the accept rules of a config, compiled for lookups.
 *
 * Every table becomes a case-insensitive hash set of its keys (domains,
 * addresses). A table used as "from <t>" also becomes a list of networks;
 * every entry must then be an address or CIDR. Once built, nothing changes:
 * lookups read, never write, never allocate, so all cores share one policy. */
#include "policy.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct net {
	uint8_t v6;        /* 0: IPv4 in bytes[0..3]; 1: IPv6 */
	uint8_t prefix;    /* bits that must match */
	uint8_t bytes[16]; /* host bits already cleared */
};

struct ptable {
	char *name;
	/* Open addressing, linear probing; lowercased keys. */
	char **slots;
	uint64_t *hashes;
	size_t mask;       /* capacity - 1 */
	struct net *nets;
	size_t nnets;
	bool is_addr;      /* every entry is an address or CIDR */
};

struct prule {
	enum conf_from from;
	const struct ptable *from_t;
	enum conf_for for_what;
	const struct ptable *domains;
	const struct ptable *recipients; /* NULL: any user of the domain */
};

struct policy {
	struct ptable *tables;
	size_t ntables;
	struct prule *rules;
	size_t nrules;
};

static unsigned char lower(unsigned char ch)
{
	return ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch + ('a' - 'A')) : ch;
}

/* FNV-1a over the ASCII-lowercased bytes. */
static uint64_t hash_lower(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++) {
		h ^= lower((unsigned char)*s);
		h *= 0x100000001b3ull;
	}
	return h;
}

/* `low` is already lowercase. */
static bool eq_lower(const char *low, const char *s)
{
	for (; *low && *s; low++, s++)
		if ((unsigned char)*low != lower((unsigned char)*s))
			return false;
	return *low == *s;
}

static bool set_has(const struct ptable *t, const char *key)
{
	if (!t->slots)
		return false;
	uint64_t h = hash_lower(key);
	for (size_t i = (size_t)h & t->mask;; i = (i + 1) & t->mask) {
		if (!t->slots[i])
			return false;
		if (t->hashes[i] == h && eq_lower(t->slots[i], key))
			return true;
	}
}

static int set_build(struct ptable *t, const struct conf_table *ct)
{
	size_t cap = 8;
	while (cap < ct->n * 2 + 1) {
		if (cap > SIZE_MAX / 4)
			return -1;
		cap *= 2;
	}
	t->slots = calloc(cap, sizeof *t->slots);
	t->hashes = calloc(cap, sizeof *t->hashes);
	if (!t->slots || !t->hashes)
		return -1;
	t->mask = cap - 1;
	for (size_t k = 0; k < ct->n; k++) {
		const char *key = ct->keys[k];
		if (set_has(t, key))
			continue;
		char *low = strdup(key);
		if (!low)
			return -1;
		for (char *q = low; *q; q++)
			*q = (char)lower((unsigned char)*q);
		uint64_t h = hash_lower(low);
		size_t i = (size_t)h & t->mask;
		while (t->slots[i])
			i = (i + 1) & t->mask;
		t->slots[i] = low;
		t->hashes[i] = h;
	}
	return 0;
}

static void mask_host_bits(struct net *n)
{
	size_t nbytes = n->v6 ? 16 : 4;
	for (size_t i = 0; i < nbytes; i++) {
		unsigned bit = (unsigned)i * 8;
		if (bit >= n->prefix)
			n->bytes[i] = 0;
		else if (bit + 8 > n->prefix)
			n->bytes[i] &= (uint8_t)(0xff00u >> (n->prefix - bit));
	}
}

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* "192.0.2.0/24", "2001:db8::/32", "10.1.2.3", "[::1]": a bare address is
 * a host (/32, /128); host bits past the prefix are ignored. An IPv4-mapped
 * IPv6 network is stored as the IPv4 network it means. */
static bool parse_net(const char *text, struct net *n)
{
	char addr[INET6_ADDRSTRLEN + 3];
	const char *slash = strchr(text, '/');
	size_t alen = slash ? (size_t)(slash - text) : strlen(text);
	if (alen >= 2 && text[0] == '[' && text[alen - 1] == ']') {
		text++;
		alen -= 2;
	}
	if (alen == 0 || alen >= sizeof addr)
		return false;
	memcpy(addr, text, alen);
	addr[alen] = '\0';
	memset(n, 0, sizeof *n);
	unsigned max;
	if (inet_pton(AF_INET, addr, n->bytes) == 1) {
		n->v6 = 0;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, n->bytes) == 1) {
		n->v6 = 1;
		max = 128;
	} else {
		return false;
	}
	unsigned prefix = max;
	if (slash) {
		const char *q = slash + 1;
		if (!*q || strlen(q) > 3)
			return false;
		prefix = 0;
		for (; *q; q++) {
			if (*q < '0' || *q > '9')
				return false;
			prefix = prefix * 10 + (unsigned)(*q - '0');
		}
		if (prefix > max)
			return false;
	}
	n->prefix = (uint8_t)prefix;
	if (n->v6 && prefix >= 96 && memcmp(n->bytes, v4mapped_prefix, 12) == 0) {
		memmove(n->bytes, n->bytes + 12, 4);
		memset(n->bytes + 4, 0, 12);
		n->v6 = 0;
		n->prefix = (uint8_t)(prefix - 96);
	}
	mask_host_bits(n);
	return true;
}

bool policy_valid_net(const char *text)
{
	struct net n;
	return parse_net(text, &n);
}

/* The table's entries as networks. With errs, a bad entry is an error
 * at its position; without, it only means the table is not an address
 * table. */
static int nets_build(struct ptable *t, const struct conf_table *ct, const struct conf *c,
		      struct buf *errs)
{
	t->nets = calloc(ct->n ? ct->n : 1, sizeof *t->nets);
	if (!t->nets)
		return -1;
	int rc = 0;
	for (size_t k = 0; k < ct->n; k++) {
		if (parse_net(ct->keys[k], &t->nets[t->nnets])) {
			t->nnets++;
			continue;
		}
		rc = 1;
		if (!errs)
			break;
		const char *file = ct->kind == CONF_TABLE_FILE && ct->path ? ct->path
				   : c->path                                ? c->path
									    : "(config)";
		int line = ct->entry_line ? ct->entry_line[k] : ct->line;
		int col = ct->entry_col ? ct->entry_col[k] : ct->col;
		/* Quote the entry safely: it came from a file. */
		buf_printf(errs, "%s:%d:%d: table \"%s\": invalid address or CIDR \"", file, line,
			   col, ct->name);
		for (const char *q = ct->keys[k]; *q && q - ct->keys[k] < 80; q++) {
			unsigned char ch = (unsigned char)*q;
			if (ch < 0x20 || ch >= 0x7f)
				buf_printf(errs, "\\x%02x", ch);
			else if (ch == '"' || ch == '\\')
				buf_printf(errs, "\\%c", ch);
			else
				buf_append(errs, q, 1);
		}
		buf_append_str(errs, "\"\n");
	}
	if (rc == 0)
		t->is_addr = true;
	else {
		free(t->nets);
		t->nets = NULL;
		t->nnets = 0;
	}
	return rc;
}

static bool net_has(const struct net *n, bool v6, const uint8_t *b)
{
	if (n->v6 != v6)
		return false;
	unsigned full = n->prefix / 8, rest = n->prefix % 8;
	if (memcmp(n->bytes, b, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t m = (uint8_t)(0xff00u >> rest);
	return (b[full] & m) == n->bytes[full];
}

static bool nets_have(const struct ptable *t, const struct sockaddr_storage *ss)
{
	const uint8_t *b;
	bool v6;
	if (ss->ss_family == AF_INET) {
		b = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
		v6 = false;
	} else if (ss->ss_family == AF_INET6) {
		b = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
		v6 = true;
		if (memcmp(b, v4mapped_prefix, 12) == 0) { /* dual-stack socket */
			b += 12;
			v6 = false;
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < t->nnets; i++)
		if (net_has(&t->nets[i], v6, b))
			return true;
	return false;
}

static const struct ptable *ptable_find(const struct policy *p, const char *name)
{
	for (size_t i = 0; i < p->ntables; i++)
		if (strcmp(p->tables[i].name, name) == 0)
			return &p->tables[i];
	return NULL;
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->ntables; i++) {
		struct ptable *t = &p->tables[i];
		if (t->slots)
			for (size_t k = 0; k <= t->mask; k++)
				free(t->slots[k]);
		free(t->slots);
		free(t->hashes);
		free(t->nets);
		free(t->name);
	}
	free(p->tables);
	free(p->rules);
	free(p);
}

/* The table of a listener's "proxy-from <t>", if it has one. */
static bool listener_proxy_table(const struct conf_listener *l)
{
	return (l->flags & (CONF_LISTEN_PROXY_V1 | CONF_LISTEN_PROXY_V2)) &&
	       l->proxy_from == CONF_PROXY_FROM_TABLE && l->proxy_from_table;
}

/* A rule's table, or an error at the rule's position. */
static const struct ptable *rule_table(const struct policy *p, const struct conf *c,
				       const struct conf_rule *r, const char *name, struct buf *errs)
{
	const struct ptable *t = name ? ptable_find(p, name) : NULL;
	if (!t && errs)
		buf_printf(errs, "%s:%d:%d: unknown table \"%s\"\n", c->path ? c->path : "(config)",
			   r->line, r->col, name ? name : "(none)");
	return t;
}

struct policy *policy_build(const struct conf *c, struct buf *errs)
{
	struct policy *p = calloc(1, sizeof *p);
	if (!p)
		goto oom;
	p->tables = calloc(c->ntables ? c->ntables : 1, sizeof *p->tables);
	p->rules = calloc(c->nrules ? c->nrules : 1, sizeof *p->rules);
	if (!p->tables || !p->rules)
		goto oom;

	/* From-tables first: their entries must all be networks. */
	bool *is_from = calloc(c->ntables ? c->ntables : 1, sizeof *is_from);
	if (!is_from)
		goto oom;
	for (size_t i = 0; i < c->nrules; i++)
		for (size_t k = 0; c->rules[i].from == CONF_FROM_TABLE && k < c->ntables; k++)
			if (c->rules[i].from_table &&
			    strcmp(c->rules[i].from_table, c->tables[k].name) == 0)
				is_from[k] = true;
	for (size_t i = 0; i < c->nlisteners; i++)
		for (size_t k = 0; listener_proxy_table(&c->listeners[i]) && k < c->ntables; k++)
			if (strcmp(c->listeners[i].proxy_from_table, c->tables[k].name) == 0)
				is_from[k] = true;

	bool failed = false;
	for (size_t i = 0; i < c->ntables; i++) {
		const struct conf_table *ct = &c->tables[i];
		struct ptable *t = &p->tables[p->ntables++];
		t->name = strdup(ct->name);
		if (!t->name || set_build(t, ct) < 0) {
			free(is_from);
			goto oom;
		}
		int rc = nets_build(t, ct, c, is_from[i] ? errs : NULL);
		if (rc < 0) {
			free(is_from);
			goto oom;
		}
		if (rc > 0 && is_from[i])
			failed = true;
	}
	free(is_from);

	for (size_t i = 0; i < c->nrules; i++) {
		const struct conf_rule *r = &c->rules[i];
		struct prule *pr = &p->rules[p->nrules++];
		pr->from = r->from;
		pr->for_what = r->for_what;
		if (r->from == CONF_FROM_TABLE &&
		    !(pr->from_t = rule_table(p, c, r, r->from_table, errs)))
			failed = true;
		if (r->for_what == CONF_FOR_DOMAIN &&
		    !(pr->domains = rule_table(p, c, r, r->domain_table, errs)))
			failed = true;
		if (r->recipient_table &&
		    !(pr->recipients = rule_table(p, c, r, r->recipient_table, errs)))
			failed = true;
	}
	for (size_t i = 0; i < c->nlisteners; i++) {
		const struct conf_listener *l = &c->listeners[i];
		if (listener_proxy_table(l) && !ptable_find(p, l->proxy_from_table)) {
			if (errs)
				buf_printf(errs, "%s:%d:%d: unknown table \"%s\"\n",
					   c->path ? c->path : "(config)", l->line, l->col,
					   l->proxy_from_table);
			failed = true;
		}
	}
	if (failed) {
		policy_free(p);
		return NULL;
	}
	return p;
oom:
	if (errs)
		buf_printf(errs, "%s:1:1: out of memory building the policy\n",
			   c->path ? c->path : "(config)");
	policy_free(p);
	return NULL;
}

static bool from_matches(const struct prule *r, const struct smtp_peer *peer)
{
	switch (r->from) {
	case CONF_FROM_ANY: return true;
	case CONF_FROM_LOCAL: return peer && peer->is_local;
	case CONF_FROM_AUTHENTICATED: return peer && peer->authenticated;
	case CONF_FROM_TABLE: return peer && nets_have(r->from_t, &peer->addr);
	}
	return false;
}

enum policy_verdict policy_check_rcpt(const struct policy *p, const struct smtp_peer *peer,
				      const char *rcpt)
{
	return policy_match_rcpt(p, peer, rcpt, NULL);
}

enum policy_verdict policy_match_rcpt(const struct policy *p, const struct smtp_peer *peer,
				      const char *rcpt, long *rule)
{
	assert(p && rcpt);
	if (rule)
		*rule = -1;
	const char *at = strrchr(rcpt, '@');
	/* RFC 5321 4.5.1: bare "postmaster" is always one of ours. */
	bool postmaster = !at && eq_lower("postmaster", rcpt);
	for (size_t i = 0; i < p->nrules; i++) {
		const struct prule *r = &p->rules[i];
		if (!from_matches(r, peer))
			continue;
		if (r->for_what == CONF_FOR_DOMAIN && !postmaster &&
		    !(at && set_has(r->domains, at + 1)))
			continue;
		if (rule)
			*rule = (long)i;
		if (!r->recipients || postmaster)
			return POLICY_ACCEPT;
		/* The full address, or "@domain" as the domain's catch-all. */
		if (set_has(r->recipients, rcpt) || (at && set_has(r->recipients, at)))
			return POLICY_ACCEPT;
		return POLICY_UNKNOWN_USER;
	}
	return POLICY_RELAY_DENIED;
}

bool policy_addr_in_table(const struct policy *p, const char *table,
			  const struct sockaddr_storage *addr)
{
	const struct ptable *t = ptable_find(p, table);
	return t && t->is_addr && nets_have(t, addr);
}

bool policy_proxy_peer_allowed(const struct policy *p, const struct conf_listener *l,
			       const struct sockaddr_storage *peer)
{
	assert(p && l && peer);
	switch (l->proxy_from) {
	case CONF_PROXY_FROM_ANY: return true;
	case CONF_PROXY_FROM_LOCAL: return policy_is_loopback(peer);
	case CONF_PROXY_FROM_TABLE:
		return l->proxy_from_table && policy_addr_in_table(p, l->proxy_from_table, peer);
	}
	return false;
}

bool policy_is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss->ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return true;
		return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
	}
	return false;
}
