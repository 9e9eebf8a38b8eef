/* ktls: hand a finished TLS session's record layer to the kernel.
 *
 * After the BoringSSL handshake, the traffic keys and record sequence
 * numbers go to the socket (TCP_ULP "tls", TLS_TX, TLS_RX) and the ring then
 * reads and writes plaintext. TLS 1.3 keys come from the traffic secrets
 * captured by the keylog callback, expanded with HKDF-Expand-Label (RFC 8446
 * 7.3); TLS 1.2 keys from SSL_generate_key_block. Ciphers: AES-128-GCM,
 * AES-256-GCM, ChaCha20-Poly1305. */
#ifndef MXD_KTLS_H
#define MXD_KTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

/* One direction's crypto_info, exactly as setsockopt(SOL_TLS, TLS_TX/RX)
 * takes it (struct tls12_crypto_info_* from <linux/tls.h>). */
struct ktls_crypto {
	uint8_t bytes[128];
	size_t len;
};

/* Does this kernel accept TCP_ULP "tls"? Probed once on a loopback
 * connection at start-up. */
bool ktls_kernel_supported(void);

/* Install the keylog hook on ctx that keeps TLS 1.3 traffic secrets in the
 * SSL's ex_data for ktls_derive(). */
void ktls_enable_keylog(SSL_CTX *ctx);

/* Can this session's cipher and version go to the kernel? */
bool ktls_cipher_supported(const SSL *ssl);

/* Build TX and RX crypto_info for ssl, using the current read/write
 * sequence numbers: the keys this end writes with (TX) and reads with
 * (RX), for a server session (inbound) or a client one (relay_tls.c).
 * Call only when no userspace record is pending in the direction(s)
 * installed. Returns 0 or -1 (why in err). */
int ktls_derive(SSL *ssl, struct ktls_crypto *tx, struct ktls_crypto *rx, char *err, size_t err_len);

/* setsockopt TCP_ULP "tls", then TLS_TX and TLS_RX. -errno on failure. */
int ktls_install(int fd, const struct ktls_crypto *tx, const struct ktls_crypto *rx);

/* setsockopt TCP_ULP "tls", then TLS_TX alone: the kernel seals what is
 * written, received records stay with BoringSSL. -errno on failure. */
int ktls_install_tx(int fd, const struct ktls_crypto *tx);

/* Pure helpers, exposed for unit tests against RFC 8448 vectors. */
int ktls_hkdf_expand_label(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
			   const char *label, uint8_t *out, size_t out_len);

#endif
