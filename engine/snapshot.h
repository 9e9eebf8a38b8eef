/* snapshot: one immutable, reference-counted view of the configuration —
 * the parsed conf, the compiled policy and each listener's smtp_config.
 *
 * Reload builds a new snapshot and hands each core a reference through its
 * mailbox; sessions keep the snapshot they started with, so a reload never
 * changes the rules under a transaction in progress. */
#ifndef MXD_SNAPSHOT_H
#define MXD_SNAPSHOT_H

#include <stdatomic.h>
#include <stdint.h>

#include "buf.h"
#include "conf.h"
#include "policy.h"
#include "smtp.h"
#include "tls.h"

struct snapshot {
	struct conf *conf;
	struct policy *policy;
	struct smtp_config *smtp; /* one per listener, same order as conf->listeners */
	struct tls_server *tls;   /* every pki's BoringSSL context */
	bool ktls;                /* hand finished handshakes to the kernel */
	uint64_t generation;
	atomic_uint refs;
};

/* Load and compile path; NULL with FILE:LINE:COL messages in errs.
 * `ktls_kernel`: the kernel takes TCP_ULP "tls" (probed once at start-up). */
struct snapshot *snapshot_load(const char *path, uint64_t generation, bool ktls_kernel,
			       struct buf *errs);
void snapshot_hold(struct snapshot *s);
void snapshot_release(struct snapshot *s);

#endif
