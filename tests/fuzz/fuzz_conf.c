/* fuzz_conf: any bytes through the config parser, and the policy builder
 * and a few lookups when the config parses. Nothing may crash, leak or
 * read out of bounds; every error must come back as a message.
 *
 * "table NAME file:PATH" opens PATH: the parser only reads regular files,
 * size-bounded, so the worst an input can do here is read a real file. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>

#include "conf.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf errs;
	buf_init(&errs, 1 << 20);
	struct conf *c = conf_parse("fuzz.conf", (const char *)data, size, &errs);
	if (c) {
		/* A config that parses has no message. */
		if (errs.len != 0)
			__builtin_trap();
		struct policy *p = policy_build(c, &errs);
		if (p) {
			struct smtp_peer peer;
			memset(&peer, 0, sizeof peer);
			struct sockaddr_in *in4 = (struct sockaddr_in *)&peer.addr;
			in4->sin_family = AF_INET;
			in4->sin_addr.s_addr = htonl(0xc0000201); /* 192.0.2.1 */
			peer.is_local = true;
			policy_check_rcpt(p, &peer, "user@example.com");
			policy_check_rcpt(p, &peer, "postmaster");
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&peer.addr;
			memset(&peer.addr, 0, sizeof peer.addr);
			in6->sin6_family = AF_INET6;
			in6->sin6_addr.s6_addr[0] = 0x20;
			in6->sin6_addr.s6_addr[1] = 0x01;
			peer.authenticated = true;
			policy_check_rcpt(p, &peer, "a@b@EXAMPLE.org");
			for (size_t i = 0; i < c->ntables; i++)
				policy_addr_in_table(p, c->tables[i].name, &peer.addr);
			policy_free(p);
		}
		conf_free(c);
	} else if (errs.len == 0) {
		__builtin_trap(); /* refused without saying why */
	}
	buf_free(&errs);
	return 0;
}
