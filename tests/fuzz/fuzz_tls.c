/* fuzz_tls: the TLS record layer glue of a connection, from the fuzzer's bytes.
 *
 * A server SSL comes from tls_server_session() (engine/tls.h) on contexts
 * built by tls_server_build() from a real config, with the keylog hook kTLS
 * needs. Its input goes through a memory BIO exactly the way
 * engine/conn_tls.c does it: bytes accumulate in a bounded buffer, only
 * whole records (sliced by their 5-byte headers) are written to the BIO, a
 * first "record" longer than any TLS record is handed over whole so that
 * BoringSSL says it is not TLS, and after each feed the handshake or the
 * decryption advances. A fatal error ends the session, as tls_fail() does;
 * whatever BoringSSL wrote (alerts too) is drained as the wire would be.
 *
 * Byte 0 of the input picks the set-up:
 *   bit 0     the listener asks for client certificates (verify)
 *   bit 1     the listener's default pki is the RSA one, not the ECDSA one
 *   bit 2     "real client" mode (below), else "raw flight" mode
 *   bit 3     real client: TLS 1.2 only (else TLS 1.3 allowed)
 *   bits 4-7  how raw bytes are cut into receives (0: all at once)
 *
 * Raw flight: the rest of the input is the client's bytes (a ClientHello
 * and what follows), cut into receives of pseudo-random sizes.
 *
 * Real client: a BoringSSL client completes a handshake with the server
 * through the same glue first, so the post-handshake paths are reached
 * (ktls_cipher_supported, ktls_derive, SSL_read of application data,
 * close_notify, KeyUpdate, garbage after the handshake). The rest of the
 * input is a list of operations: [op][len][len bytes]:
 *   op % 6 == 0  the client sends the bytes as application data
 *   op % 6 == 1  the bytes go raw onto the wire (cut as in raw mode)
 *   op % 6 == 2  the client sends a KeyUpdate (TLS 1.3) or nothing
 *   op % 6 == 3  the client sends close_notify
 *   op % 6 == 4  the server derives the kTLS keys (as before the switch)
 *   op % 6 == 5  the server writes the bytes (a reply) and the client reads
 *
 * Nothing may crash, leak, or read out of bounds. Invariants that abort:
 *   - the handshake never completes in raw mode with a client certificate
 *     verified (there is no way to forge one);
 *   - when ktls_cipher_supported() says yes, ktls_derive() succeeds and
 *     fills both directions;
 *   - the input buffer never holds a whole record once fed.
 *
 * The key and certificates are made at start-up with BoringSSL's API and
 * written to a temporary directory (mxd loads them from files, as from a
 * config), which is removed once the contexts hold them. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "buf.h"
#include "conf.h"
#include "ktls.h"
#include "tls.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* As engine/conn_tls.c. */
#define TLS_RECORD_HEADER 5
#define TLS_RECORD_MAX (TLS_RECORD_HEADER + 16384 + 2048)
/* The session's ciphertext buffer bound (a receive is at most 32 KiB and
 * whole records are consumed at once, so it never holds much more). */
#define TLS_IN_LIMIT (1u << 20)

#define PKI_EC "mail.fuzz.example"
#define PKI_RSA "rsa.fuzz.example"

static struct tls_server *g_server;
static SSL_CTX *g_client13, *g_client12;
static volatile uint32_t sink;

static void die(const char *what)
{
	fprintf(stderr, "fuzz_tls init: %s\n", what);
	ERR_print_errors_fp(stderr);
	abort();
}

/* ---------------------------------------------------------- set-up */

static X509 *self_signed(EVP_PKEY *key, const char *cn, bool ca)
{
	X509 *x = X509_new();
	if (!x || !X509_set_version(x, X509_VERSION_3) ||
	    !ASN1_INTEGER_set(X509_get_serialNumber(x), ca ? 1 : 2) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 24 * 3600))
		die("X509");
	X509_NAME *name = X509_get_subject_name(x);
	if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)cn, -1, -1, 0) ||
	    !X509_set_issuer_name(x, name) || !X509_set_pubkey(x, key))
		die("X509 name");
	char san[300];
	snprintf(san, sizeof san, "DNS:%s", cn);
	X509V3_CTX v3;
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &v3, NID_subject_alt_name, san);
	if (!ext || !X509_add_ext(x, ext, -1))
		die("subjectAltName");
	X509_EXTENSION_free(ext);
	if (ca) {
		ext = X509V3_EXT_nconf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
		if (!ext || !X509_add_ext(x, ext, -1))
			die("basicConstraints");
		X509_EXTENSION_free(ext);
	}
	if (!X509_sign(x, key, EVP_sha256()))
		die("X509_sign");
	return x;
}

static EVP_PKEY *ec_key(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	EVP_PKEY *k = EVP_PKEY_new();
	if (!ec || !k || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(k, ec))
		die("EC key");
	return k;
}

static EVP_PKEY *rsa_key(void)
{
	RSA *rsa = RSA_new();
	BIGNUM *e = BN_new();
	EVP_PKEY *k = EVP_PKEY_new();
	if (!rsa || !e || !k || !BN_set_word(e, RSA_F4) || !RSA_generate_key_ex(rsa, 2048, e, NULL) ||
	    !EVP_PKEY_assign_RSA(k, rsa))
		die("RSA key");
	BN_free(e);
	return k;
}

static void write_pem(const char *path, EVP_PKEY *key, X509 *cert)
{
	FILE *f = fopen(path, "w");
	if (!f)
		die(path);
	if (key ? !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : !PEM_write_X509(f, cert))
		die("PEM write");
	fclose(f);
	if (chmod(path, 0600) < 0) /* mxd refuses a key readable by others */
		die("chmod");
}

static SSL_CTX *client_ctx(uint16_t max_version, X509 *cert, EVP_PKEY *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx || !SSL_CTX_set_max_proto_version(ctx, max_version) ||
	    !SSL_CTX_use_certificate(ctx, cert) || !SSL_CTX_use_PrivateKey(ctx, key))
		die("client SSL_CTX");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	return ctx;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	char dir[] = "/tmp/mxd-fuzz-tls.XXXXXX";
	if (!mkdtemp(dir))
		die("mkdtemp");
	char ec_crt[64], ec_key_path[64], rsa_crt[64], rsa_key_path[64];
	snprintf(ec_crt, sizeof ec_crt, "%s/ec.crt", dir);
	snprintf(ec_key_path, sizeof ec_key_path, "%s/ec.key", dir);
	snprintf(rsa_crt, sizeof rsa_crt, "%s/rsa.crt", dir);
	snprintf(rsa_key_path, sizeof rsa_key_path, "%s/rsa.key", dir);

	EVP_PKEY *ek = ec_key(), *rk = rsa_key();
	/* The ECDSA certificate is also the CA for client certificates, and
	 * the client presents it: a verified client certificate, reachable
	 * only in real-client mode. */
	X509 *ec = self_signed(ek, PKI_EC, true), *rsa = self_signed(rk, PKI_RSA, false);
	write_pem(ec_crt, NULL, ec);
	write_pem(ec_key_path, ek, NULL);
	write_pem(rsa_crt, NULL, rsa);
	write_pem(rsa_key_path, rk, NULL);

	char text[1024];
	int n = snprintf(text, sizeof text,
			 "pki " PKI_EC " cert \"%s\" key \"%s\" ca \"%s\"\n"
			 "pki " PKI_RSA " cert \"%s\" key \"%s\"\n"
			 "listen on 127.0.0.1 port 2525 tls pki " PKI_EC " verify\n"
			 "listen on 127.0.0.1 port 4650 smtps pki " PKI_RSA "\n"
			 "accept from any for any\n",
			 ec_crt, ec_key_path, ec_crt, rsa_crt, rsa_key_path);
	struct buf errs;
	buf_init(&errs, 1 << 16);
	struct conf *c = conf_parse("fuzz_tls.conf", text, (size_t)n, &errs);
	if (!c) {
		fprintf(stderr, "%.*s", (int)errs.len, errs.data);
		die("conf_parse");
	}
	g_server = tls_server_build(c, true, &errs);
	if (!g_server) {
		fprintf(stderr, "%.*s", (int)errs.len, errs.data);
		die("tls_server_build");
	}
	conf_free(c);
	buf_free(&errs);
	unlink(ec_crt);
	unlink(ec_key_path);
	unlink(rsa_crt);
	unlink(rsa_key_path);
	rmdir(dir);

	g_client13 = client_ctx(TLS1_3_VERSION, ec, ek);
	g_client12 = client_ctx(TLS1_2_VERSION, ec, ek);
	X509_free(ec);
	X509_free(rsa);
	EVP_PKEY_free(ek);
	EVP_PKEY_free(rk);
	return 0;
}

/* ---------------------------------------------------------- the glue */

struct session {
	SSL *ssl;
	struct buf tls_in;   /* ciphertext not yet handed to BoringSSL */
	bool established;
	bool closed;         /* a fatal error or close_notify: no more input */
	bool raw;            /* input never came from a real client */
	bool ktls_ok;
};

static void touch(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint32_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += b[i];
	sink += s;
}

/* What the server wrote, as the ring would send it; into `to` when a
 * client listens. */
static void drain_wire(struct session *s, BIO *to)
{
	BIO *wbio = SSL_get_wbio(s->ssl);
	uint8_t tmp[16384];
	for (;;) {
		int n = BIO_read(wbio, tmp, sizeof tmp);
		if (n <= 0)
			break;
		touch(tmp, (size_t)n);
		if (to)
			BIO_write(to, tmp, n);
	}
}

static void fail(struct session *s)
{
	ERR_clear_error();
	s->closed = true; /* conn_close_after_flush: queued alerts still go out */
}

static size_t record_length(const unsigned char *p, size_t len)
{
	if (len < TLS_RECORD_HEADER)
		return 0;
	return TLS_RECORD_HEADER + ((size_t)p[3] << 8 | p[4]);
}

static void feed_whole_records(struct session *s)
{
	const unsigned char *p = (const unsigned char *)s->tls_in.data;
	size_t whole = 0;
	for (;;) {
		size_t n = record_length(p + whole, s->tls_in.len - whole);
		if (n == 0 || n > s->tls_in.len - whole)
			break;
		whole += n;
	}
	if (whole == 0 && s->tls_in.len >= TLS_RECORD_HEADER &&
	    record_length(p, s->tls_in.len) > TLS_RECORD_MAX)
		whole = s->tls_in.len;
	if (whole == 0)
		return;
	BIO_write(SSL_get_rbio(s->ssl), p, (int)whole);
	buf_consume(&s->tls_in, whole);
	/* what is left is less than one record */
	size_t left = record_length((const unsigned char *)s->tls_in.data, s->tls_in.len);
	if (s->tls_in.len >= TLS_RECORD_HEADER && left <= s->tls_in.len)
		abort();
}

static void decrypt_records(struct session *s)
{
	char plaintext[16384];
	while (!s->closed) {
		int n = SSL_read(s->ssl, plaintext, sizeof plaintext);
		if (n > 0) {
			touch(plaintext, (size_t)n);
			continue;
		}
		int err = SSL_get_error(s->ssl, n);
		if (err == SSL_ERROR_WANT_READ)
			return;
		if (err == SSL_ERROR_ZERO_RETURN) {
			s->closed = true; /* close_notify */
			SSL_shutdown(s->ssl);
			return;
		}
		fail(s);
		return;
	}
}

static void handshake_done(struct session *s)
{
	s->established = true;
	touch(tls_version_name(s->ssl), strlen(tls_version_name(s->ssl)));
	touch(tls_cipher_name(s->ssl), strlen(tls_cipher_name(s->ssl)));
	char name[256];
	bool verified = tls_client_verified(s->ssl, name, sizeof name);
	if (verified && s->raw)
		abort(); /* nobody can forge our CA's signature */
	if (verified)
		touch(name, strlen(name));
	SSL_write(s->ssl, "", 0);
	s->ktls_ok = ktls_cipher_supported(s->ssl);
	decrypt_records(s);
}

static void advance(struct session *s)
{
	if (s->closed)
		return;
	if (!s->established) {
		int rc = SSL_do_handshake(s->ssl);
		if (rc != 1) {
			int err = SSL_get_error(s->ssl, rc);
			if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
				fail(s);
			return;
		}
		handshake_done(s);
		return;
	}
	decrypt_records(s);
}

static void server_input(struct session *s, const uint8_t *data, size_t len)
{
	if (s->closed)
		return;
	if (buf_append(&s->tls_in, data, len) < 0) {
		fail(s); /* conn_abort: out of memory */
		return;
	}
	feed_whole_records(s);
	advance(s);
}

/* ktls_install_now() without the socket: only when nothing is pending. */
static void derive_keys(struct session *s)
{
	if (!s->established || s->closed || !s->ktls_ok || s->tls_in.len > 0 ||
	    SSL_pending(s->ssl) > 0 || BIO_pending(SSL_get_wbio(s->ssl)) > 0)
		return;
	struct ktls_crypto tx, rx;
	char why[160];
	if (ktls_derive(s->ssl, &tx, &rx, why, sizeof why) < 0 || tx.len == 0 || rx.len == 0 ||
	    tx.len > sizeof tx.bytes || rx.len > sizeof rx.bytes)
		abort();
	touch(tx.bytes, tx.len);
	touch(rx.bytes, rx.len);
}

/* Pseudo-random receive sizes from a small seed: 1..~4 KiB, sometimes 1. */
static size_t next_cut(uint32_t *state, unsigned mode, size_t left)
{
	if (mode == 0)
		return left;
	*state ^= *state << 13;
	*state ^= *state >> 17;
	*state ^= *state << 5;
	size_t n = mode == 1 ? 1 : 1 + *state % (mode <= 4 ? 7u * mode : 64u * mode);
	return n < left ? n : left;
}

static void raw_bytes(struct session *s, const uint8_t *p, size_t n, unsigned cut_mode,
		      uint32_t *state)
{
	while (n > 0 && !s->closed) {
		size_t k = next_cut(state, cut_mode, n);
		server_input(s, p, k);
		drain_wire(s, NULL);
		p += k;
		n -= k;
	}
}

/* Move what the client wrote to the server (through the glue) and what the
 * server wrote to the client, until neither side has anything to say. */
static void pump(struct session *s, SSL *client, BIO *client_in, BIO *client_out)
{
	for (int round = 0; round < 64; round++) {
		bool moved = false;
		uint8_t tmp[16384];
		int n;
		while ((n = BIO_read(client_out, tmp, sizeof tmp)) > 0) {
			server_input(s, tmp, (size_t)n);
			moved = true;
		}
		if (BIO_pending(SSL_get_wbio(s->ssl)) > 0) {
			drain_wire(s, client_in);
			moved = true;
		}
		if (!SSL_is_init_finished(client)) {
			SSL_do_handshake(client);
		} else {
			char sinkbuf[16384];
			while (SSL_read(client, sinkbuf, sizeof sinkbuf) > 0)
				;
		}
		if (!moved && BIO_pending(client_out) == 0)
			return;
	}
}

static void real_client(struct session *s, const uint8_t *data, size_t size, unsigned flags,
			uint32_t *state)
{
	SSL *client = SSL_new(flags & 8 ? g_client12 : g_client13);
	BIO *client_in = BIO_new(BIO_s_mem()), *client_out = BIO_new(BIO_s_mem());
	if (!client || !client_in || !client_out)
		abort();
	SSL_set_bio(client, client_in, client_out); /* the client owns both */
	SSL_set_connect_state(client);
	SSL_set_tlsext_host_name(client, (flags & 16) ? PKI_RSA : PKI_EC);
	SSL_do_handshake(client);
	pump(s, client, client_in, client_out);

	size_t i = 0;
	while (i + 2 <= size && !s->closed) {
		unsigned op = data[i] % 6;
		size_t len = data[i + 1];
		i += 2;
		if (len > size - i)
			len = size - i;
		const uint8_t *arg = data + i;
		i += len;
		switch (op) {
		case 0:
			if (SSL_is_init_finished(client) && len > 0)
				SSL_write(client, arg, (int)len);
			break;
		case 1:
			raw_bytes(s, arg, len, (flags >> 4) & 15, state);
			break;
		case 2:
			if (SSL_is_init_finished(client) && SSL_version(client) == TLS1_3_VERSION)
				SSL_key_update(client, SSL_KEY_UPDATE_REQUESTED);
			break;
		case 3:
			SSL_shutdown(client);
			break;
		case 4:
			derive_keys(s);
			break;
		case 5:
			if (s->established && len > 0 && SSL_write(s->ssl, arg, (int)len) != (int)len)
				fail(s);
			break;
		}
		pump(s, client, client_in, client_out);
		ERR_clear_error();
	}
	SSL_free(client);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned flags = data[0];
	data++;
	size--;
	struct session s = {0};
	s.ssl = tls_server_session(g_server, flags & 2 ? PKI_RSA : PKI_EC, flags & 1);
	BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
	if (!s.ssl || !rbio || !wbio)
		abort();
	SSL_set_bio(s.ssl, rbio, wbio);
	SSL_set_accept_state(s.ssl);
	buf_init(&s.tls_in, TLS_IN_LIMIT);
	uint32_t state = 0x9e3779b9u ^ (uint32_t)size;

	if (flags & 4) {
		real_client(&s, data, size, flags, &state);
	} else {
		s.raw = true;
		raw_bytes(&s, data, size, (flags >> 4) & 15, &state);
	}
	/* The session ends: a clean close sends close_notify, as
	 * conn_tls_fill_wire() does for a closing userspace session. */
	if (s.established && !s.closed)
		SSL_shutdown(s.ssl);
	drain_wire(&s, NULL);
	SSL_free(s.ssl);
	buf_free(&s.tls_in);
	ERR_clear_error();
	return 0;
}
