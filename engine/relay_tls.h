/* relay_tls: the client side of TLS to a next hop (smtp+tls:// after
 * STARTTLS, smtps:// from the first byte), through BoringSSL with memory
 * BIOs: the delivery connection moves ciphertext between the ring and
 * these calls, as conn_tls.c does for the server side.
 *
 * kTLS, transmit side only (docs/relay.md, "Outbound TLS"): once the
 * handshake is done and its last flight is on the wire, the client's
 * write key, IV and sequence number can go to the kernel (TCP_ULP "tls",
 * TLS_TX); the connection then writes plaintext and the kernel seals the
 * records, while the next hop's records are still read by BoringSSL.
 * From then on BoringSSL must never write again: its keys no longer
 * match the stream. A client writes after the handshake only an alert
 * or a KeyUpdate (the answer to a TLS 1.3 KeyUpdate with
 * update_requested); a message callback notices either, and the caller
 * closes the connection (its recipients are deferred) instead of
 * letting the stream go out of step.
 *
 * Verification (docs/relay.md): the certificate chain against `ca` on
 * the rule, else `relay ca`, else the system's trust store
 * (/etc/ssl/certs/ca-certificates.crt); `noverify` turns it off. Next-hop
 * hosts are IP literals once parsed (relay_url.c reads "localhost" as
 * 127.0.0.1), so the identity checked is the address: the certificate
 * must carry it as an iPAddress subjectAltName (RFC 5280 4.2.1.6). No
 * SNI is sent: RFC 6066 3 does not allow an IP literal there. */
#ifndef MXD_RELAY_TLS_H
#define MXD_RELAY_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "buf.h"
#include "relay_url.h"

#define RELAY_TLS_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

/* A client context: verify against ca_file (NULL: the system's store)
 * unless !verify. NULL with why. */
SSL_CTX *relay_tls_ctx_new(const char *ca_file, bool verify, char *why, size_t why_len);

/* A session for next hop u, in connect state, on memory BIOs. */
SSL *relay_tls_new(SSL_CTX *ctx, const struct relay_url *u, bool verify);

/* Ciphertext from the next hop. -1 when out of memory. */
int relay_tls_input(SSL *ssl, const char *data, size_t len);

/* Drive the handshake: 1 done, 0 more bytes needed, -1 failed (why). */
int relay_tls_handshake(SSL *ssl, char *why, size_t why_len);

/* Plaintext the next hop sent, into out (cap bytes): > 0 bytes, 0 when
 * more ciphertext is needed, -1 when the stream ended or failed. */
long relay_tls_read(SSL *ssl, char *out, size_t cap);

/* Encrypt plain (all of it; plain is emptied), then move every byte
 * BoringSSL has for the wire into wire. -1 on failure. */
int relay_tls_write(SSL *ssl, struct buf *plain, struct buf *wire);

/* Hand the transmit direction to the kernel on fd. Call with the
 * handshake done and nothing left in the write BIO. 1: done, the caller
 * writes plaintext from now on; 0: not possible for this session (why),
 * it stays on userspace TLS; -1: the kernel refused part-way (why): the
 * socket can carry neither kind of record, close it. */
int relay_tls_ktls_tx(SSL *ssl, int fd, char *why, size_t why_len);

/* Has BoringSSL written (or queued) anything since the handshake, an
 * alert or a KeyUpdate? After relay_tls_ktls_tx that must close the
 * connection: those bytes cannot be sent. */
bool relay_tls_wrote_after_handshake(SSL *ssl);

/* "TLSv1.3/TLS_AES_256_GCM_SHA384" for the log. */
void relay_tls_describe(SSL *ssl, char *out, size_t len);

#endif
