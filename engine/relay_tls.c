/* relay_tls: TLS to next hops, see relay_tls.h. */
#include "relay_tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "tls.h"

SSL_CTX *relay_tls_ctx_new(const char *ca_file, bool verify, char *why, size_t why_len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx) {
		tls_last_error(why, why_len);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
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

void relay_tls_describe(SSL *ssl, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", tls_version_name(ssl), tls_cipher_name(ssl));
}
