/* relay_tls: TLS to next hops, see relay_tls.h. */
#include "relay_tls.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "ktls.h"
#include "tls.h"

#define TLS_CONTENT_ALERT 21
#define TLS_CONTENT_HANDSHAKE 22
#define TLS_HANDSHAKE_KEY_UPDATE 24

/* ex_data slot: non-NULL once BoringSSL wrote an alert or a KeyUpdate */
static int wrote_index = -1;
static pthread_once_t wrote_once = PTHREAD_ONCE_INIT;

static void wrote_init(void)
{
	wrote_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* A client's writes after its Finished can only be these two; during
 * the handshake it writes neither unless the handshake fails. */
static void watch_writes(int write_p, int version, int content_type, const void *buf, size_t len,
			 SSL *ssl, void *arg)
{
	(void)version;
	(void)arg;
	if (!write_p)
		return;
	bool key_update = content_type == TLS_CONTENT_HANDSHAKE && len > 0 &&
			  ((const unsigned char *)buf)[0] == TLS_HANDSHAKE_KEY_UPDATE;
	if (content_type == TLS_CONTENT_ALERT || key_update)
		SSL_set_ex_data(ssl, wrote_index, (void *)(uintptr_t)1);
}

SSL_CTX *relay_tls_ctx_new(const char *ca_file, bool verify, char *why, size_t why_len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx) {
		tls_last_error(why, why_len);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	ktls_enable_keylog(ctx); /* TLS 1.3 traffic secrets for relay_tls_ktls_tx */
	if (verify) {
		const char *file = ca_file ? ca_file : RELAY_TLS_SYSTEM_CA;
		if (!SSL_CTX_load_verify_locations(ctx, file, NULL)) {
			char e[200];
			tls_last_error(e, sizeof e);
			snprintf(why, why_len, "CA file %s: %s", file, e);
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

#ifdef MXD_TEST_HOOKS
/* The kTLS VM test's TLS 1.2 relay cases (tests/vm/README): with
 * MXD_RELAY_TLS12="PORT=CIPHER,..." a next hop on PORT is spoken to in
 * TLS 1.2 with that cipher only. */
static void maybe_pin_tls12(SSL *ssl, const struct relay_url *u)
{
	const char *spec = getenv("MXD_RELAY_TLS12");
	char item[128];
	while (spec && *spec) {
		size_t n = strcspn(spec, ",");
		snprintf(item, sizeof item, "%.*s", (int)n, spec);
		spec += n + (spec[n] == ',');
		char *eq = strchr(item, '=');
		if (!eq || strtoul(item, NULL, 10) != u->port)
			continue;
		SSL_set_min_proto_version(ssl, TLS1_2_VERSION);
		SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
		SSL_set_strict_cipher_list(ssl, eq + 1);
	}
}
#endif

SSL *relay_tls_new(SSL_CTX *ctx, const struct relay_url *u, bool verify)
{
	SSL *ssl = SSL_new(ctx);
	BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
	if (!ssl || !rbio || !wbio) {
		SSL_free(ssl);
		BIO_free(rbio);
		BIO_free(wbio);
		return NULL;
	}
	SSL_set_bio(ssl, rbio, wbio);
	SSL_set_connect_state(ssl);
	pthread_once(&wrote_once, wrote_init);
	SSL_set_msg_callback(ssl, watch_writes);
#ifdef MXD_TEST_HOOKS
	maybe_pin_tls12(ssl, u);
#endif
	if (verify && !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u->host)) {
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

int relay_tls_input(SSL *ssl, const char *data, size_t len)
{
	return BIO_write(SSL_get_rbio(ssl), data, (int)len) == (int)len ? 0 : -1;
}

int relay_tls_handshake(SSL *ssl, char *why, size_t why_len)
{
	int rc = SSL_do_handshake(ssl);
	if (rc == 1)
		return 1;
	int err = SSL_get_error(ssl, rc);
	if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
		return 0;
	long v = SSL_get_verify_result(ssl);
	if (v != X509_V_OK) {
		snprintf(why, why_len, "certificate verification failed: %s",
			 X509_verify_cert_error_string(v));
	} else {
		char e[200];
		tls_last_error(e, sizeof e);
		snprintf(why, why_len, "TLS handshake failed: %s", e);
	}
	return -1;
}

long relay_tls_read(SSL *ssl, char *out, size_t cap)
{
	int n = SSL_read(ssl, out, (int)cap);
	if (n > 0)
		return n;
	int err = SSL_get_error(ssl, n);
	return err == SSL_ERROR_WANT_READ ? 0 : -1;
}

int relay_tls_write(SSL *ssl, struct buf *plain, struct buf *wire)
{
	size_t off = 0;
	while (off < plain->len) {
		size_t n = plain->len - off < 16384 ? plain->len - off : 16384;
		int w = SSL_write(ssl, plain->data + off, (int)n);
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	buf_reset(plain);
	BIO *wbio = SSL_get_wbio(ssl);
	size_t pending = BIO_ctrl_pending(wbio);
	if (pending == 0)
		return 0;
	if (buf_reserve(wire, pending) < 0)
		return -1;
	int r = BIO_read(wbio, wire->data + wire->len, (int)pending);
	if (r > 0)
		wire->len += (size_t)r;
	return 0;
}

bool relay_tls_wrote_after_handshake(SSL *ssl)
{
	return SSL_get_ex_data(ssl, wrote_index) != NULL ||
	       BIO_ctrl_pending(SSL_get_wbio(ssl)) > 0;
}

#ifdef MXD_TEST_HOOKS
/* The kTLS VM test's negative control (tests/vm/README): with a wrong
 * key the next hop must not be able to read a byte. */
static void maybe_corrupt_key(struct ktls_crypto *tx)
{
	if (getenv("MXD_KTLS_CORRUPT_KEYS"))
		tx->bytes[12] ^= 0x5a; /* the key follows the 4-byte header and the 8-byte iv */
}
#endif

int relay_tls_ktls_tx(SSL *ssl, int fd, char *why, size_t why_len)
{
	if (SSL_in_init(ssl)) {
		snprintf(why, why_len, "the handshake is not done");
		return 0;
	}
	if (relay_tls_wrote_after_handshake(ssl)) {
		snprintf(why, why_len, "BoringSSL wrote after the handshake (alert or KeyUpdate)");
		return 0;
	}
	if (!ktls_cipher_supported(ssl)) {
		snprintf(why, why_len, "%s with %s cannot go to the kernel", SSL_get_version(ssl),
			 SSL_CIPHER_standard_name(SSL_get_current_cipher(ssl)));
		return 0;
	}
	struct ktls_crypto tx, rx;
	if (ktls_derive(ssl, &tx, &rx, why, why_len) < 0)
		return 0;
	explicit_bzero(&rx, sizeof rx); /* the next hop's records stay with BoringSSL */
#ifdef MXD_TEST_HOOKS
	maybe_corrupt_key(&tx);
#endif
	int rc = ktls_install_tx(fd, &tx);
	explicit_bzero(&tx, sizeof tx);
	if (rc < 0) {
		snprintf(why, why_len, "kTLS install failed: %s", strerror(-rc));
		return -1;
	}
	return 1;
}

void relay_tls_describe(SSL *ssl, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", tls_version_name(ssl), tls_cipher_name(ssl));
}
