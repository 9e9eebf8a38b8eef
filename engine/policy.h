/* policy: acceptance rules compiled from a config snapshot.
 *
 * Pure and read-only once built, so every core can use the same object
 * without locks. Rules are tried first to last; the first whose "from" and
 * "for" match the recipient decides. */
#ifndef MXD_POLICY_H
#define MXD_POLICY_H

#include <stdbool.h>

#include "buf.h"
#include "conf.h"
#include "smtp.h"

struct policy;

enum policy_verdict {
	POLICY_ACCEPT = 0,
	POLICY_RELAY_DENIED,   /* no rule accepts: 554 5.7.1 */
	POLICY_UNKNOWN_USER,   /* our domain, not in its recipient table: 550 5.1.1 */
};

/* NULL on error (unknown table, bad CIDR), with messages "FILE:LINE:COL: ..."
 * appended to errs. */
struct policy *policy_build(const struct conf *c, struct buf *errs);
void policy_free(struct policy *p);

/* rcpt is the mailbox without <> ("user@example.com" or "postmaster"). */
enum policy_verdict policy_check_rcpt(const struct policy *p, const struct smtp_peer *peer,
				      const char *rcpt);

/* The same, and which rule decided: its index in the config's rules (the
 * policy keeps their order), or -1 when none matched. A rule that matched
 * FROM and FOR but not its recipient table decides too (UNKNOWN_USER). */
enum policy_verdict policy_match_rcpt(const struct policy *p, const struct smtp_peer *peer,
				      const char *rcpt, long *rule);

/* Does "from local" take this client address? (127/8, ::1, ::ffff:127/104) */
bool policy_is_loopback(const struct sockaddr_storage *ss);

/* Is text an address or CIDR network a "from <table>" may hold?
 * ("192.0.2.0/24", "2001:db8::/32", "203.0.113.7", "[::1]"). The parser
 * uses it to report bad entries with its other errors. */
bool policy_valid_net(const char *text);

/* Does addr (a client address) match a table of addresses and CIDRs?
 * False for an unknown table and for a table with any entry that is not an
 * address or CIDR. An IPv4-mapped IPv6 address matches as IPv4. */
bool policy_addr_in_table(const struct policy *p, const char *table,
			  const struct sockaddr_storage *addr);

/* May this peer (the TCP peer, not a client a header names) send the
 * PROXY header on listener l? By its "proxy-from": any, the loopback
 * (the default), or the addresses of a table. */
bool policy_proxy_peer_allowed(const struct policy *p, const struct conf_listener *l,
			       const struct sockaddr_storage *peer);

#endif
