/* tls: BoringSSL server contexts built from a config snapshot.
 *
 * One SSL_CTX per pki, shared (read-only, BoringSSL locks what it mutates)
 * by every core's sessions, so session-ticket keys — which BoringSSL keeps
 * and rotates per SSL_CTX — are shared by all cores too. A listener's pki is
 * the default certificate; SNI switches to another pki whose name or
 * certificate names match. The session never sees any of this: conn.c moves
 * ciphertext through memory BIOs until the handshake ends (see ktls.h for
 * what happens after it). */
#ifndef MXD_TLS_H
#define MXD_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "buf.h"
#include "conf.h"

struct tls_server;

/* Load every pki of the config: certificate chain, private key (refused
 * when readable by group or others: "FILE: private key is readable by group
 * or others; run chmod 600 FILE"), optional CA for client certificates.
 * With `keylog` the contexts capture traffic secrets for kTLS (ktls.h).
 * NULL with "FILE:LINE:COL: message" lines in errs. A config with no pki
 * gives an empty, valid server. */
struct tls_server *tls_server_build(const struct conf *c, bool keylog, struct buf *errs);
void tls_server_free(struct tls_server *t);

/* A server-side SSL for a connection on a listener whose pki is pki_name;
 * `verify_client` requests a client certificate (verified against the
 * pki's ca, but an unverified or missing one does not fail the handshake:
 * it only means the client is not authenticated). NULL on error. */
SSL *tls_server_session(const struct tls_server *t, const char *pki_name, bool verify_client);

/* After the handshake: did the client present a certificate that verified
 * against the ca? If so, its subject CN (or first DNS SAN) goes to name. */
bool tls_client_verified(SSL *ssl, char *name, size_t name_len);

/* "TLSv1.3" / "TLS_AES_128_GCM_SHA256" for logs, Received: and metrics. */
const char *tls_version_name(const SSL *ssl);
const char *tls_cipher_name(const SSL *ssl);

/* The last BoringSSL error as text (for a failed handshake's log line),
 * clearing the error queue. */
void tls_last_error(char *out, size_t out_len);

#endif
