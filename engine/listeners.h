/* listeners: the daemon's listening sockets as one set that follows the
 * config across reloads and binary upgrades.
 *
 * Each `listen on` line has one SO_REUSEPORT socket per core (the kernel
 * spreads connections over them; each core accepts on its own). The set
 * is the main thread's; a socket is identified by its address and port
 * only: tls, smtps, proxy-v1/v2, auth, pki and hostname are per session
 * and come from the snapshot, so changing them keeps the socket and the
 * connections queued on it.
 *
 * Ownership: the set owns its descriptors. A core gets its own dup() of
 * each socket it accepts on (in a core_mail, see core.h), so the main
 * thread and the cores close their descriptors independently, and the
 * kernel socket (and its accept queue) lives until the last one is
 * closed. Sockets are told apart across mails by a per-process id, never
 * by descriptor number.
 *
 * Reload: listener_set_reload() builds the next set (sockets of lines
 * that stay are carried over; new lines get new sockets), then either
 * listener_set_commit() (close what is gone) or listener_set_abandon()
 * (close what was opened). Opening is all or nothing: one address in use
 * and the reload is refused with FILE:LINE:COL. */
#ifndef MXD_LISTENERS_H
#define MXD_LISTENERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"
#include "conf.h"

struct core_mail;
struct snapshot;

/* Connections the kernel queues on each socket before mxd accepts them. */
#define LISTEN_BACKLOG 4096

struct listen_sock {
	int fd;
	uint64_t id;             /* unique in this process */
};

struct listen_entry {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	struct listen_sock *socks;
	unsigned nsocks;         /* >= ncores; core k accepts on socks[j], j % ncores == k */
	bool carried;            /* reload: the sockets belong to the previous set too */
};

struct listener_set {
	struct listen_entry *entries; /* one per conf listener, in conf order */
	size_t n;
	unsigned ncores;
};

/* Start-up: one socket per core for each listener of c. `pool` holds
 * listening sockets inherited from the previous process (binary upgrade;
 * may be NULL): a listener takes every pool socket bound to its address
 * (pool[i] is set to -1 when taken) and opens only the ones it lacks.
 * Errors are logged with FILE:LINE:COL; returns 0 or -1 (nothing left
 * open). */
int listener_set_open(struct listener_set *s, const struct conf *c, unsigned ncores, int *pool,
		      size_t npool);

/* Reload: the set for c, sharing the sockets of cur whose address stays.
 * On error: -1, one "FILE:LINE:COL: listen on A port P: reason" line in
 * errs, nothing changed. */
int listener_set_reload(const struct listener_set *cur, const struct conf *c,
			struct listener_set *next, struct buf *errs);
/* Adopt next: close cur's sockets that next does not carry. */
void listener_set_commit(struct listener_set *cur, struct listener_set *next);
/* Drop next: close the sockets it opened, keep cur as it was. */
void listener_set_abandon(struct listener_set *next);
/* Close every socket (drain: no new connection reaches this process). */
void listener_set_close(struct listener_set *s);

/* The mail that tells core `core` which sockets to accept on under snap:
 * dup()s of its share of the set, with the listener index of each. NULL
 * when out of memory or descriptors (logged). */
struct core_mail *listener_set_mail(const struct listener_set *s, unsigned core,
				    struct snapshot *snap);

/* Same address family, address and port. */
bool sockaddr_same(const struct sockaddr_storage *a, socklen_t alen,
		   const struct sockaddr_storage *b, socklen_t blen);

#endif
