/* test_tls: the pki loader, SNI, client certificates, and the kTLS key
 * hand-off.
 *
 * The kTLS part does not trust ktls.c's own arithmetic: after ktls_derive,
 * the test plays the kernel. It reads the crypto_info structs the way the
 * kernel does (salt, iv, key, rec_seq), seals records with them and feeds
 * those to the peer's TLS stack, and opens the peer's records with the RX
 * struct. Wrong keys, IVs, nonce layout or sequence numbers make the peer
 * reject the record. The peer is a BoringSSL client in memory and, for the
 * suites a BoringSSL client will not pick in TLS 1.3 (AES-256-GCM,
 * ChaCha20 on AES hardware), the `openssl s_client` command over loopback
 * TCP, an independent implementation. Certificates are made at test time
 * with tools/mkcert. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/tls.h>

#include <openssl/aead.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/hkdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "check.h"
#include "conf.h"
#include "ktls.h"
#include "relay_tls.h"
#include "relay_url.h"
#include "tls.h"

static char dir[64];      /* scratch directory with the certificates */
static char srcdir[4096]; /* where tools/mkcert is */
static struct buf errs;

/* ------------------------------------------------------------ helpers */

static int run(const char *cmd)
{
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "test_tls: command failed (%d): %s\n", rc, cmd);
	return rc;
}

/* tools/mkcert OPTS NAME DIR (quiet). */
static int mkcert(const char *opts, const char *name)
{
	char cmd[8192];
	snprintf(cmd, sizeof cmd, "%s/tools/mkcert %s '%s' '%s' >/dev/null", srcdir, opts, name, dir);
	return run(cmd);
}

static char *path_of(const char *name, const char *ext)
{
	static char bufs[8][512];
	static int next;
	char *b = bufs[next++ % 8];
	snprintf(b, sizeof bufs[0], "%s/%s.%s", dir, name, ext);
	return b;
}

/* Parse a config and build the TLS side; errs holds the messages. */
static struct tls_server *build(const char *conftext, bool keylog)
{
	buf_reset(&errs);
	struct conf *c = conf_parse("t.conf", conftext, strlen(conftext), &errs);
	if (!c) {
		fprintf(stderr, "test_tls: config did not parse:\n%.*s", (int)errs.len, errs.data);
		return NULL;
	}
	struct tls_server *t = tls_server_build(c, keylog, &errs);
	conf_free(c);
	return t;
}

static char conftext[8192];

static const char *pki_line(const char *pki, const char *certname, const char *keyname)
{
	static char line[2048];
	snprintf(line, sizeof line, "pki %s cert \"%s\" key \"%s\"\n", pki, path_of(certname, "crt"),
		 path_of(keyname, "key"));
	return line;
}

static bool errs_equal(const char *want)
{
	bool ok = errs.len == strlen(want) && memcmp(errs.data, want, errs.len) == 0;
	if (!ok)
		fprintf(stderr, "test_tls: want error:\n  %sgot:\n  %.*s\n", want, (int)errs.len,
			errs.data);
	return ok;
}

/* ------------------------------------------- an in-memory client/server */

/* What the client's keylog hook saw (one handshake at a time). */
static uint8_t cli_server_secret[48], cli_client_secret[48];
static size_t cli_server_secret_len, cli_client_secret_len;

static size_t unhex(const char *s, uint8_t *out, size_t max)
{
	size_t n = 0;
	while (s[0] && s[1] && s[0] != ' ' && n < max) {
		unsigned v;
		if (sscanf(s, "%2x", &v) != 1)
			break;
		out[n++] = (uint8_t)v;
		s += 2;
	}
	return n;
}

static void client_keylog(const SSL *ssl, const char *line)
{
	(void)ssl;
	const char *sp = strrchr(line, ' ');
	if (!sp)
		return;
	if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0)
		cli_server_secret_len = unhex(sp + 1, cli_server_secret, sizeof cli_server_secret);
	else if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0)
		cli_client_secret_len = unhex(sp + 1, cli_client_secret, sizeof cli_client_secret);
}

/* The client's newest resumable session (BoringSSL hands TLS 1.3 ones
 * out through the new-session callback once a ticket arrives). */
static SSL_SESSION *cli_session;

static int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl;
	SSL_SESSION_free(cli_session);
	cli_session = sess;
	return 1; /* we keep the reference */
}

struct client_opts {
	uint16_t version;     /* TLS1_2_VERSION / TLS1_3_VERSION */
	const char *ciphers;  /* TLS 1.2 list, or NULL */
	const char *sni;      /* or NULL */
	const char *cert;     /* client certificate name in dir, or NULL */
};

static SSL_CTX *client_ctx(const struct client_opts *o)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	CHECK(ctx != NULL);
	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, o->version);
	SSL_CTX_set_max_proto_version(ctx, o->version);
	if (o->ciphers)
		CHECK(SSL_CTX_set_strict_cipher_list(ctx, o->ciphers) == 1);
	SSL_CTX_set_keylog_callback(ctx, client_keylog);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
	SSL_CTX_sess_set_new_cb(ctx, client_new_session);
	if (o->cert) {
		CHECK(SSL_CTX_use_certificate_chain_file(ctx, path_of(o->cert, "crt")) == 1);
		CHECK(SSL_CTX_use_PrivateKey_file(ctx, path_of(o->cert, "key"), SSL_FILETYPE_PEM) == 1);
	}
	return ctx;
}

struct pair {
	SSL *c, *s;
};

/* Move whatever each side wrote to the other side's input. */
static void pump(struct pair *p)
{
	char tmp[16384];
	for (int dirn = 0; dirn < 2; dirn++) {
		BIO *from = SSL_get_wbio(dirn ? p->s : p->c);
		BIO *to = SSL_get_rbio(dirn ? p->c : p->s);
		int n;
		while ((n = BIO_read(from, tmp, sizeof tmp)) > 0)
			BIO_write(to, tmp, n);
	}
}

static void attach_mem_bios(SSL *ssl)
{
	BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
	CHECK(r && w);
	SSL_set_bio(ssl, r, w);
}

/* A handshake between a fresh client and tls_server_session(pki). */
static bool handshake(struct pair *p, SSL_CTX *cctx, const struct tls_server *t, const char *pki,
		      bool verify, const struct client_opts *o, SSL_SESSION *resume)
{
	cli_server_secret_len = cli_client_secret_len = 0;
	p->c = SSL_new(cctx);
	p->s = tls_server_session(t, pki, verify);
	CHECK(p->c && p->s);
	if (!p->c || !p->s)
		return false;
	attach_mem_bios(p->c);
	attach_mem_bios(p->s);
	SSL_set_connect_state(p->c);
	if (o->sni)
		SSL_set_tlsext_host_name(p->c, o->sni);
	if (resume)
		SSL_set_session(p->c, resume);
	bool cdone = false, sdone = false;
	for (int i = 0; i < 50 && !(cdone && sdone); i++) {
		if (!cdone) {
			int r = SSL_do_handshake(p->c);
			if (r == 1)
				cdone = true;
			else if (SSL_get_error(p->c, r) != SSL_ERROR_WANT_READ)
				break;
		}
		pump(p);
		if (!sdone) {
			int r = SSL_do_handshake(p->s);
			if (r == 1)
				sdone = true;
			else if (SSL_get_error(p->s, r) != SSL_ERROR_WANT_READ)
				break;
		}
		pump(p);
	}
	if (!(cdone && sdone)) {
		char e[256];
		tls_last_error(e, sizeof e);
		fprintf(stderr, "test_tls: handshake failed: %s\n", e);
	}
	return cdone && sdone;
}

static void pair_free(struct pair *p)
{
	SSL_free(p->c);
	SSL_free(p->s);
	p->c = p->s = NULL;
}

static const char *peer_cn(SSL *c)
{
	static char cn[256];
	cn[0] = '\0';
	X509 *x = SSL_get_peer_certificate(c);
	if (x) {
		X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
		X509_free(x);
	}
	return cn;
}

/* ------------------------------------------------- playing the kernel */

/* One direction's record state, read from a crypto_info the way the
 * kernel reads it. */
struct krec {
	uint16_t version, cipher;
	uint8_t key[32];
	size_t keylen;
	uint8_t mask[12];  /* TLS 1.3 and ChaCha: the nonce mask; 1.2 GCM: salt in [0..4) */
	uint8_t explicit_nonce[8]; /* TLS 1.2 GCM: the iv field, advanced per record */
	uint64_t seq;
};

static uint64_t be64(const uint8_t *b)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

static void put64(uint8_t *b, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		b[i] = (uint8_t)v;
}

static bool krec_from(struct krec *k, const struct ktls_crypto *kc)
{
	memset(k, 0, sizeof *k);
	struct tls_crypto_info info;
	if (kc->len < sizeof info)
		return false;
	memcpy(&info, kc->bytes, sizeof info);
	k->version = info.version;
	k->cipher = info.cipher_type;
	if (k->cipher == TLS_CIPHER_AES_GCM_128 || k->cipher == TLS_CIPHER_AES_GCM_256) {
		struct tls12_crypto_info_aes_gcm_256 c256;
		struct tls12_crypto_info_aes_gcm_128 c128;
		const uint8_t *iv, *key, *salt, *seq;
		if (k->cipher == TLS_CIPHER_AES_GCM_256) {
			if (kc->len != sizeof c256)
				return false;
			memcpy(&c256, kc->bytes, sizeof c256);
			iv = c256.iv, key = c256.key, salt = c256.salt, seq = c256.rec_seq;
			k->keylen = 32;
		} else {
			if (kc->len != sizeof c128)
				return false;
			memcpy(&c128, kc->bytes, sizeof c128);
			iv = c128.iv, key = c128.key, salt = c128.salt, seq = c128.rec_seq;
			k->keylen = 16;
		}
		memcpy(k->key, key, k->keylen);
		memcpy(k->mask, salt, 4);
		memcpy(k->mask + 4, iv, 8);
		memcpy(k->explicit_nonce, iv, 8);
		k->seq = be64(seq);
		return true;
	}
	if (k->cipher == TLS_CIPHER_CHACHA20_POLY1305) {
		struct tls12_crypto_info_chacha20_poly1305 c;
		if (kc->len != sizeof c)
			return false;
		memcpy(&c, kc->bytes, sizeof c);
		memcpy(k->key, c.key, 32);
		k->keylen = 32;
		memcpy(k->mask, c.iv, 12);
		k->seq = be64(c.rec_seq);
		return true;
	}
	return false;
}

static const EVP_AEAD *krec_aead(const struct krec *k)
{
	switch (k->cipher) {
	case TLS_CIPHER_AES_GCM_128: return EVP_aead_aes_128_gcm();
	case TLS_CIPHER_AES_GCM_256: return EVP_aead_aes_256_gcm();
	default: return EVP_aead_chacha20_poly1305();
	}
}

static bool krec_gcm12(const struct krec *k)
{
	return k->version == TLS_1_2_VERSION && k->cipher != TLS_CIPHER_CHACHA20_POLY1305;
}

static void krec_nonce(const struct krec *k, uint8_t nonce[12])
{
	if (krec_gcm12(k)) {
		memcpy(nonce, k->mask, 4);
		memcpy(nonce + 4, k->explicit_nonce, 8);
		return;
	}
	memcpy(nonce, k->mask, 12);
	uint8_t s[8];
	put64(s, k->seq);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] ^= s[i];
}

static void krec_advance(struct krec *k)
{
	k->seq++;
	put64(k->explicit_nonce, be64(k->explicit_nonce) + 1);
}

/* Seal one application-data record; returns its length or 0. */
static size_t krec_seal(struct krec *k, const void *pt, size_t n, uint8_t *out, size_t cap)
{
	EVP_AEAD_CTX ctx;
	if (!EVP_AEAD_CTX_init(&ctx, krec_aead(k), k->key, k->keylen, 16, NULL))
		return 0;
	uint8_t nonce[12], aad[13], inner[2048];
	size_t aad_len, o = 5, out_len = 0;
	const uint8_t *in = pt;
	size_t in_len = n;
	krec_nonce(k, nonce);
	if (n + 1 > sizeof inner || cap < 5 + 8 + n + 1 + 16) {
		EVP_AEAD_CTX_cleanup(&ctx);
		return 0;
	}
	if (k->version == TLS_1_3_VERSION) {
		memcpy(inner, pt, n);
		inner[n] = 23; /* the real content type */
		in = inner;
		in_len = n + 1;
		size_t rl = in_len + 16;
		uint8_t hdr[5] = {23, 3, 3, (uint8_t)(rl >> 8), (uint8_t)rl};
		memcpy(aad, hdr, 5);
		aad_len = 5;
		memcpy(out, hdr, 5);
	} else {
		size_t rl = (krec_gcm12(k) ? 8 : 0) + n + 16;
		uint8_t hdr[5] = {23, 3, 3, (uint8_t)(rl >> 8), (uint8_t)rl};
		memcpy(out, hdr, 5);
		put64(aad, k->seq);
		aad[8] = 23, aad[9] = 3, aad[10] = 3, aad[11] = (uint8_t)(n >> 8), aad[12] = (uint8_t)n;
		aad_len = 13;
		if (krec_gcm12(k)) {
			memcpy(out + 5, k->explicit_nonce, 8);
			o += 8;
		}
	}
	int ok = EVP_AEAD_CTX_seal(&ctx, out + o, &out_len, cap - o, nonce, 12, in, in_len, aad,
				   aad_len);
	EVP_AEAD_CTX_cleanup(&ctx);
	if (!ok)
		return 0;
	krec_advance(k);
	return o + out_len;
}

/* Open one record (rec, len: the whole record); plaintext length or -1. */
static long krec_open(struct krec *k, const uint8_t *rec, size_t len, uint8_t *out, size_t cap)
{
	if (len < 5 + 16 || rec[0] != 23 || (size_t)(rec[3] << 8 | rec[4]) != len - 5)
		return -1;
	EVP_AEAD_CTX ctx;
	if (!EVP_AEAD_CTX_init(&ctx, krec_aead(k), k->key, k->keylen, 16, NULL))
		return -1;
	uint8_t nonce[12], aad[13];
	size_t aad_len, o = 5, out_len = 0;
	if (krec_gcm12(k)) {
		/* The explicit nonce is whatever the sender wrote. */
		memcpy(nonce, k->mask, 4);
		memcpy(nonce + 4, rec + 5, 8);
		o += 8;
	} else {
		krec_nonce(k, nonce);
	}
	if (k->version == TLS_1_3_VERSION) {
		memcpy(aad, rec, 5);
		aad_len = 5;
	} else {
		size_t n = len - o - 16;
		put64(aad, k->seq);
		aad[8] = rec[0], aad[9] = 3, aad[10] = 3, aad[11] = (uint8_t)(n >> 8), aad[12] = (uint8_t)n;
		aad_len = 13;
	}
	int ok = EVP_AEAD_CTX_open(&ctx, out, &out_len, cap, nonce, 12, rec + o, len - o, aad,
				   aad_len);
	EVP_AEAD_CTX_cleanup(&ctx);
	if (!ok)
		return -1;
	if (k->version == TLS_1_3_VERSION) {
		while (out_len > 0 && out[out_len - 1] == 0)
			out_len--; /* padding */
		if (out_len == 0 || out[out_len - 1] != 23)
			return -1;
		out_len--;
	}
	krec_advance(k);
	return (long)out_len;
}

/* ---------------------------------------------------------- the tests */

static const uint8_t *hexbytes(const char *hex)
{
	static uint8_t b[4][64];
	static int next;
	uint8_t *o = b[next++ % 4];
	unhex(hex, o, 64);
	return o;
}

/* RFC 8448 section 3 (simple 1-RTT handshake), TLS_AES_128_GCM_SHA256. */
static void test_hkdf_rfc8448(void)
{
	static const struct {
		const char *secret, *key, *iv;
	} v[] = {
		{/* server handshake traffic secret */
		 "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38",
		 "3fce516009c21727d0f2e4e86ee403bc", "5d313eb2671276ee13000b30"},
		{/* client handshake traffic secret */
		 "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21",
		 "dbfaa693d1762c5b666af5d950258d01", "5bd3c71b836e0b76bb73265f"},
		{/* server application traffic secret 0 */
		 "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
		 "9f02283b6c9c07efc26bb9f2ac92e356", "cf782b88dd83549aadf1e984"},
	};
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		uint8_t secret[32], key[16], iv[12];
		memcpy(secret, hexbytes(v[i].secret), 32);
		CHECK(ktls_hkdf_expand_label(EVP_sha256(), secret, 32, "key", key, 16) == 0);
		CHECK(memcmp(key, hexbytes(v[i].key), 16) == 0);
		CHECK(ktls_hkdf_expand_label(EVP_sha256(), secret, 32, "iv", iv, 12) == 0);
		CHECK(memcmp(iv, hexbytes(v[i].iv), 12) == 0);
	}
	/* The label is part of the input: a different label, different key. */
	uint8_t a[16], b[16];
	CHECK(ktls_hkdf_expand_label(EVP_sha256(), hexbytes(v[0].secret), 32, "key", a, 16) == 0);
	CHECK(ktls_hkdf_expand_label(EVP_sha256(), hexbytes(v[0].secret), 32, "kez", b, 16) == 0);
	CHECK(memcmp(a, b, 16) != 0);
	/* "tls13 " + label must fit in 255 bytes. */
	char longlabel[300];
	memset(longlabel, 'x', sizeof longlabel - 1);
	longlabel[sizeof longlabel - 1] = '\0';
	CHECK(ktls_hkdf_expand_label(EVP_sha256(), a, 16, longlabel, b, 16) < 0);
}

static void test_key_files(void)
{
	struct tls_server *t;

	/* The seed's 4096-bit RSA key, mode 0600 from mkcert: accepted. */
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "mail"));
	t = build(conftext, false);
	CHECK(t != NULL);
	CHECK(errs.len == 0);
	tls_server_free(t);

	/* 0644 and 0640: refused with the exact message. */
	char want[2048];
	snprintf(want, sizeof want,
		 "t.conf:1:1: %s: private key is readable by group or others; run chmod 600 %s\n",
		 path_of("mail", "key"), path_of("mail", "key"));
	CHECK(chmod(path_of("mail", "key"), 0644) == 0);
	t = build(conftext, false);
	CHECK(t == NULL);
	CHECK(errs_equal(want));
	CHECK(chmod(path_of("mail", "key"), 0640) == 0);
	t = build(conftext, false);
	CHECK(t == NULL);
	CHECK(errs_equal(want));
	CHECK(chmod(path_of("mail", "key"), 0604) == 0);
	t = build(conftext, false);
	CHECK(t == NULL);
	CHECK(errs_equal(want));
	CHECK(chmod(path_of("mail", "key"), 0400) == 0);
	t = build(conftext, false);
	CHECK(t != NULL);
	tls_server_free(t);
	CHECK(chmod(path_of("mail", "key"), 0600) == 0);

	/* The error is at the pki line that names the key. */
	snprintf(conftext, sizeof conftext, "# a comment\n  pki mail.example.com cert \"%s\"\n"
		 "pki mail.example.com key \"%s\"\n", path_of("mail", "crt"), path_of("ec", "key"));
	CHECK(chmod(path_of("ec", "key"), 0660) == 0);
	t = build(conftext, false);
	CHECK(t == NULL);
	snprintf(want, sizeof want,
		 "t.conf:2:3: %s: private key is readable by group or others; run chmod 600 %s\n",
		 path_of("ec", "key"), path_of("ec", "key"));
	CHECK(errs_equal(want));
	CHECK(chmod(path_of("ec", "key"), 0600) == 0);

	/* A key that belongs to another certificate. */
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "ec"));
	t = build(conftext, false);
	CHECK(t == NULL);
	snprintf(want, sizeof want, "t.conf:1:1: private key %s does not match certificate %s\n",
		 path_of("ec", "key"), path_of("mail", "crt"));
	CHECK(errs_equal(want));

	/* Missing files are named, with the reason. */
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "nosuch", "mail"));
	t = build(conftext, false);
	CHECK(t == NULL);
	snprintf(want, sizeof want,
		 "t.conf:1:1: cannot open certificate file %s: No such file or directory\n",
		 path_of("nosuch", "crt"));
	CHECK(errs_equal(want));
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "nosuch"));
	t = build(conftext, false);
	CHECK(t == NULL);
	snprintf(want, sizeof want,
		 "t.conf:1:1: cannot open private key file %s: No such file or directory\n",
		 path_of("nosuch", "key"));
	CHECK(errs_equal(want));
	snprintf(conftext, sizeof conftext, "%spki mail.example.com ca \"%s\"\n",
		 pki_line("mail.example.com", "mail", "mail"), path_of("nosuch", "crt"));
	t = build(conftext, false);
	CHECK(t == NULL);
	snprintf(want, sizeof want, "t.conf:1:1: cannot open ca file %s: No such file or directory\n",
		 path_of("nosuch", "crt"));
	CHECK(errs_equal(want));

	/* Not PEM at all. */
	FILE *f = fopen(path_of("junk", "key"), "w");
	CHECK(f != NULL);
	if (f) {
		fputs("not a key\n", f);
		fclose(f);
	}
	chmod(path_of("junk", "key"), 0600);
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "junk"));
	t = build(conftext, false);
	CHECK(t == NULL);
	char prefix[1024];
	snprintf(prefix, sizeof prefix, "t.conf:1:1: cannot load private key %s: ",
		 path_of("junk", "key"));
	CHECK(errs.len > strlen(prefix) && memcmp(errs.data, prefix, strlen(prefix)) == 0);
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "junk", "mail"));
	f = fopen(path_of("junk", "crt"), "w");
	if (f) {
		fputs("not a certificate\n", f);
		fclose(f);
	}
	t = build(conftext, false);
	CHECK(t == NULL);
	snprintf(prefix, sizeof prefix, "t.conf:1:1: cannot load certificate %s: ",
		 path_of("junk", "crt"));
	CHECK(errs.len > strlen(prefix) && memcmp(errs.data, prefix, strlen(prefix)) == 0);

	/* Two bad pki: both reported. */
	snprintf(conftext, sizeof conftext, "%s", pki_line("a", "mail", "ec"));
	strcat(conftext, pki_line("b", "nosuch", "ec"));
	t = build(conftext, false);
	CHECK(t == NULL);
	int lines = 0;
	for (size_t i = 0; i < errs.len; i++)
		lines += errs.data[i] == '\n';
	CHECK(lines == 2);

	/* No pki: an empty server, and no session for an unknown pki. */
	t = build("", false);
	CHECK(t != NULL);
	CHECK(tls_server_session(t, "mail.example.com", false) == NULL);
	tls_server_free(t);
	tls_server_free(NULL);

	/* ECDSA P-256 and P-384 keys load. */
	snprintf(conftext, sizeof conftext, "%s", pki_line("ec", "ec", "ec"));
	strcat(conftext, pki_line("ec384", "ec384", "ec384"));
	t = build(conftext, false);
	CHECK(t != NULL);
	CHECK(t && tls_server_session(t, "nosuch", false) == NULL);
	tls_server_free(t);
}

/* Handshakes with each key type and version; names for logs. */
static void test_handshakes(void)
{
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "mail"));
	strcat(conftext, pki_line("ec", "ec", "ec"));
	strcat(conftext, pki_line("ec384", "ec384", "ec384"));
	struct tls_server *t = build(conftext, true);
	CHECK(t != NULL);
	if (!t)
		return;
	static const struct {
		const char *pki;
		uint16_t version;
		const char *ciphers, *want_version, *want_cipher;
	} cases[] = {
		{"mail.example.com", TLS1_3_VERSION, NULL, "TLSv1.3", "TLS_AES_128_GCM_SHA256"},
		{"ec", TLS1_3_VERSION, NULL, "TLSv1.3", "TLS_AES_128_GCM_SHA256"},
		{"ec384", TLS1_3_VERSION, NULL, "TLSv1.3", "TLS_AES_128_GCM_SHA256"},
		{"mail.example.com", TLS1_2_VERSION, NULL, "TLSv1.2",
		 "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"},
		{"ec", TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", "TLSv1.2",
		 "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"},
		{"ec384", TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", "TLSv1.2",
		 "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct client_opts o = {.version = cases[i].version, .ciphers = cases[i].ciphers};
		SSL_CTX *cctx = client_ctx(&o);
		struct pair p = {0};
		bool ok = handshake(&p, cctx, t, cases[i].pki, false, &o, NULL);
		CHECK(ok);
		if (ok) {
			CHECK_STR_EQ(tls_version_name(p.s), cases[i].want_version);
			if (EVP_has_aes_hardware() || cases[i].version == TLS1_2_VERSION)
				CHECK_STR_EQ(tls_cipher_name(p.s), cases[i].want_cipher);
			CHECK(ktls_cipher_supported(p.s));
			CHECK(!tls_client_verified(p.s, NULL, 0));
		}
		pair_free(&p);
		SSL_CTX_free(cctx);
	}

	/* A client limited to TLS 1.1, or to CBC suites, gets no handshake. */
	struct client_opts o = {.version = TLS1_1_VERSION};
	SSL_CTX *cctx = client_ctx(&o);
	struct pair p = {0};
	CHECK(!handshake(&p, cctx, t, "mail.example.com", false, &o, NULL));
	pair_free(&p);
	SSL_CTX_free(cctx);
	o = (struct client_opts){.version = TLS1_2_VERSION, .ciphers = "ECDHE-RSA-AES128-SHA"};
	cctx = client_ctx(&o);
	CHECK(!handshake(&p, cctx, t, "mail.example.com", false, &o, NULL));
	char e[256];
	tls_last_error(e, sizeof e);
	CHECK_STR_EQ(e, "no TLS error recorded"); /* handshake() already took it */
	pair_free(&p);
	SSL_CTX_free(cctx);
	CHECK_STR_EQ(tls_version_name(NULL), "none");
	CHECK_STR_EQ(tls_cipher_name(NULL), "none");

	/* A session ticket from one handshake resumes the next. */
	o = (struct client_opts){.version = TLS1_3_VERSION};
	cctx = client_ctx(&o);
	CHECK(handshake(&p, cctx, t, "ec", false, &o, NULL));
	SSL_write(p.s, "x", 1);
	pump(&p);
	char ch;
	CHECK(SSL_read(p.c, &ch, 1) == 1); /* also takes in the tickets */
	SSL_SESSION *sess = cli_session;
	cli_session = NULL;
	pair_free(&p);
	CHECK(sess != NULL);
	CHECK(handshake(&p, cctx, t, "ec", false, &o, sess));
	CHECK(SSL_session_reused(p.s) == 1);
	pair_free(&p);
	SSL_SESSION_free(sess);
	SSL_CTX_free(cctx);

	tls_server_free(t);
}

static void test_sni(void)
{
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "mail"));
	strcat(conftext, pki_line("other", "other.example.org", "other.example.org"));
	strcat(conftext, pki_line("wild", "wild", "wild"));
	struct tls_server *t = build(conftext, false);
	CHECK(t != NULL);
	if (!t)
		return;
	static const struct {
		const char *sni, *want_cn;
	} cases[] = {
		{NULL, "mail.example.com"},
		{"mail.example.com", "mail.example.com"},
		{"other.example.org", "other.example.org"},   /* certificate name */
		{"OTHER.Example.ORG.", "other.example.org"},  /* case, trailing dot */
		{"other", "other.example.org"},               /* pki name */
		{"alt.example.org", "other.example.org"},     /* second DNS SAN */
		{"a.wild.example", "*.wild.example"},         /* wildcard */
		{"a.b.wild.example", "mail.example.com"},     /* one label only */
		{"wild.example", "mail.example.com"},
		{"unknown.test", "mail.example.com"},         /* no match: default */
	};
	for (int v = 0; v < 2; v++) {
		for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
			struct client_opts o = {.version = v ? TLS1_3_VERSION : TLS1_2_VERSION,
						.sni = cases[i].sni};
			SSL_CTX *cctx = client_ctx(&o);
			struct pair p = {0};
			CHECK(handshake(&p, cctx, t, "mail.example.com", false, &o, NULL));
			const char *cn = peer_cn(p.c);
			if (strcmp(cn, cases[i].want_cn) != 0)
				fprintf(stderr, "test_tls: SNI %s: got %s\n",
					cases[i].sni ? cases[i].sni : "(none)", cn);
			CHECK_STR_EQ(cn, cases[i].want_cn);
			pair_free(&p);
			SSL_CTX_free(cctx);
		}
	}
	/* The listener's own pki wins when it matches too. */
	struct client_opts o = {.version = TLS1_3_VERSION, .sni = "x.wild.example"};
	SSL_CTX *cctx = client_ctx(&o);
	struct pair p = {0};
	CHECK(handshake(&p, cctx, t, "other", false, &o, NULL));
	CHECK_STR_EQ(peer_cn(p.c), "*.wild.example");
	pair_free(&p);
	o.sni = "alt.example.org";
	CHECK(handshake(&p, cctx, t, "other", false, &o, NULL));
	CHECK_STR_EQ(peer_cn(p.c), "other.example.org");
	pair_free(&p);
	SSL_CTX_free(cctx);
	tls_server_free(t);
}

static void test_client_certs(void)
{
	snprintf(conftext, sizeof conftext, "%spki mail.example.com ca \"%s\"\n",
		 pki_line("mail.example.com", "mail", "mail"), path_of("ca", "crt"));
	strcat(conftext, pki_line("noca", "other.example.org", "other.example.org"));
	struct tls_server *t = build(conftext, false);
	CHECK(t != NULL);
	if (!t)
		return;
	static const struct {
		const char *cert;
		bool verify, want;
		const char *want_name;
		const char *pki;
	} cases[] = {
		{"client1", true, true, "client1", "mail.example.com"},
		{"intruder", true, false, "", "mail.example.com"}, /* another CA */
		{"mail", true, false, "", "mail.example.com"},     /* self-signed */
		{NULL, true, false, "", "mail.example.com"},       /* none */
		{"client1", false, false, "", "mail.example.com"}, /* not asked */
		{"client1", true, false, "", "noca"},              /* pki has no ca */
	};
	for (int v = 0; v < 2; v++) {
		for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
			struct client_opts o = {.version = v ? TLS1_3_VERSION : TLS1_2_VERSION,
						.cert = cases[i].cert};
			SSL_CTX *cctx = client_ctx(&o);
			struct pair p = {0};
			bool ok = handshake(&p, cctx, t, cases[i].pki, cases[i].verify, &o, NULL);
			CHECK(ok); /* never a handshake failure */
			char name[64] = "junk";
			bool got = ok && tls_client_verified(p.s, name, sizeof name);
			if (got != cases[i].want)
				fprintf(stderr, "test_tls: client cert case %zu (v%d): got %d\n", i, v,
					got);
			CHECK(got == cases[i].want);
			CHECK_STR_EQ(name, cases[i].want_name);
			/* Application data flows either way. */
			if (ok) {
				CHECK(SSL_write(p.c, "ping", 4) == 4);
				pump(&p);
				char b[8];
				CHECK(SSL_read(p.s, b, sizeof b) == 4);
			}
			pair_free(&p);
			SSL_CTX_free(cctx);
		}
	}
	/* SNI to the pki with the ca from a listener whose pki has none:
	 * the certificate is requested and checked against that ca. */
	struct client_opts o = {.version = TLS1_3_VERSION, .cert = "client1", .sni = "mail.example.com"};
	SSL_CTX *cctx = client_ctx(&o);
	struct pair p = {0};
	CHECK(handshake(&p, cctx, t, "noca", true, &o, NULL));
	char name[64];
	CHECK(tls_client_verified(p.s, name, sizeof name));
	CHECK_STR_EQ(name, "client1");
	pair_free(&p);
	SSL_CTX_free(cctx);
	CHECK(!tls_client_verified(NULL, NULL, 0));
	tls_server_free(t);
}

/* Server keys versus the client's view of the same connection. */
static void compare_with_client(SSL *c, const struct krec *tx, const struct krec *rx)
{
	const SSL_CIPHER *cipher = SSL_get_current_cipher(c);
	size_t keylen = tx->keylen;
	if (SSL_version(c) == TLS1_3_VERSION) {
		const EVP_MD *md = EVP_get_digestbynid(SSL_CIPHER_get_prf_nid(cipher));
		CHECK(md && cli_server_secret_len == EVP_MD_size(md) &&
		      cli_client_secret_len == EVP_MD_size(md));
		uint8_t key[32], iv[12];
		CHECK(ktls_hkdf_expand_label(md, cli_server_secret, cli_server_secret_len, "key", key,
					     keylen) == 0);
		CHECK(ktls_hkdf_expand_label(md, cli_server_secret, cli_server_secret_len, "iv", iv,
					     12) == 0);
		CHECK(memcmp(key, tx->key, keylen) == 0);
		CHECK(memcmp(iv, tx->mask, 12) == 0);
		CHECK(ktls_hkdf_expand_label(md, cli_client_secret, cli_client_secret_len, "key", key,
					     keylen) == 0);
		CHECK(ktls_hkdf_expand_label(md, cli_client_secret, cli_client_secret_len, "iv", iv,
					     12) == 0);
		CHECK(memcmp(key, rx->key, keylen) == 0);
		CHECK(memcmp(iv, rx->mask, 12) == 0);
	} else {
		/* client key, server key, client IV, server IV (no MAC keys) */
		size_t fixed = tx->cipher == TLS_CIPHER_CHACHA20_POLY1305 ? 12 : 4;
		uint8_t block[128];
		size_t n = SSL_get_key_block_len(c);
		CHECK(n == 2 * (keylen + fixed));
		CHECK(n <= sizeof block && SSL_generate_key_block(c, block, n) == 1);
		CHECK(memcmp(block, rx->key, keylen) == 0);
		CHECK(memcmp(block + keylen, tx->key, keylen) == 0);
		CHECK(memcmp(block + 2 * keylen, rx->mask, fixed) == 0);
		CHECK(memcmp(block + 2 * keylen + fixed, tx->mask, fixed) == 0);
		if (fixed == 4) { /* the explicit nonce starts at the sequence number */
			CHECK(be64(tx->explicit_nonce) == tx->seq);
			CHECK(be64(rx->explicit_nonce) == rx->seq);
		}
	}
	/* The sequence numbers are where the client's are. */
	CHECK(tx->seq == SSL_get_read_sequence(c));
	CHECK(rx->seq == SSL_get_write_sequence(c));
}

/* Handshake, some userspace records both ways, then the kernel's job. */
static void ktls_case(const struct tls_server *t, const char *pki, uint16_t version,
		      const char *ciphers, uint16_t want_cipher)
{
	struct client_opts o = {.version = version, .ciphers = ciphers};
	SSL_CTX *cctx = client_ctx(&o);
	struct pair p = {0};
	bool ok = handshake(&p, cctx, t, pki, false, &o, NULL);
	CHECK(ok);
	if (!ok)
		goto out;
	/* Flush the TLS 1.3 tickets, then records in userspace first so the
	 * sequence numbers are not just "after the handshake". */
	SSL_write(p.s, "", 0);
	char buf[256];
	for (int i = 0; i < 3; i++) {
		CHECK(SSL_write(p.s, "userspace", 9) == 9);
		pump(&p);
		CHECK(SSL_read(p.c, buf, sizeof buf) == 9);
	}
	for (int i = 0; i < 2; i++) {
		CHECK(SSL_write(p.c, "hello", 5) == 5);
		pump(&p);
		CHECK(SSL_read(p.s, buf, sizeof buf) == 5);
	}
	struct ktls_crypto tx, rx;
	char err[256];
	int rc = ktls_derive(p.s, &tx, &rx, err, sizeof err);
	if (rc != 0)
		fprintf(stderr, "test_tls: ktls_derive: %s\n", err);
	CHECK(rc == 0);
	if (rc != 0)
		goto out;
	struct krec ktx, krx;
	CHECK(krec_from(&ktx, &tx));
	CHECK(krec_from(&krx, &rx));
	CHECK(ktx.version == (version == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION));
	CHECK(ktx.cipher == want_cipher && krx.cipher == want_cipher);
	CHECK(ktx.seq == SSL_get_write_sequence(p.s) && krx.seq == SSL_get_read_sequence(p.s));
	/* TLS 1.2: the Finished is record 0 of the new keys; TLS 1.3: the
	 * server's tickets are the first application-key records and the
	 * client's Finished used the handshake keys. */
	if (version == TLS1_2_VERSION)
		CHECK(ktx.seq == 1 + 3 && krx.seq == 1 + 2);
	else
		CHECK(ktx.seq > 3 && krx.seq == 2);
	compare_with_client(p.c, &ktx, &krx);

	/* TX: records the "kernel" seals are read by the client. */
	uint8_t rec[4096];
	for (int i = 0; i < 3; i++) {
		char msg[64];
		int n = snprintf(msg, sizeof msg, "250 from the kernel, record %d", i);
		size_t len = krec_seal(&ktx, msg, (size_t)n, rec, sizeof rec);
		CHECK(len > 0);
		BIO_write(SSL_get_rbio(p.c), rec, (int)len);
		int got = SSL_read(p.c, buf, sizeof buf);
		CHECK(got == n && memcmp(buf, msg, (size_t)n) == 0);
	}
	/* RX: the client's records open with the RX keys. */
	for (int i = 0; i < 3; i++) {
		char msg[64];
		int n = snprintf(msg, sizeof msg, "DATA line %d", i);
		CHECK(SSL_write(p.c, msg, n) == n);
		int len = BIO_read(SSL_get_wbio(p.c), rec, sizeof rec);
		CHECK(len > 0);
		uint8_t pt[4096];
		long got = len > 0 ? krec_open(&krx, rec, (size_t)len, pt, sizeof pt) : -1;
		CHECK(got == n && memcmp(pt, msg, (size_t)n) == 0);
	}
	/* And a wrong key is noticed: the test can fail. */
	ktx.key[0] ^= 1;
	size_t len = krec_seal(&ktx, "bad", 3, rec, sizeof rec);
	BIO_write(SSL_get_rbio(p.c), rec, (int)len);
	CHECK(SSL_read(p.c, buf, sizeof buf) <= 0);
	ERR_clear_error();
out:
	pair_free(&p);
	SSL_CTX_free(cctx);
}

/* The client's side (the relay's outbound TLS, relay_tls.c): ktls_derive
 * on a client session, with ktls.c's own keylog hook as relay_tls.c
 * installs it, must give as TX exactly what the server's derive gives as
 * RX (and the reverse), and records sealed with the client's TX must be
 * read by the server's BoringSSL. */
static void ktls_client_case(const struct tls_server *t, const char *pki, uint16_t version,
			     const char *ciphers, uint16_t want_cipher)
{
	struct client_opts o = {.version = version, .ciphers = ciphers};
	SSL_CTX *cctx = client_ctx(&o);
	ktls_enable_keylog(cctx); /* replaces the test's own hook */
	struct pair p = {0};
	bool ok = handshake(&p, cctx, t, pki, false, &o, NULL);
	CHECK(ok);
	if (!ok)
		goto out;
	SSL_write(p.s, "", 0);
	char buf[256];
	for (int i = 0; i < 2; i++) {
		CHECK(SSL_write(p.s, "220 ready", 9) == 9);
		CHECK(SSL_write(p.c, "EHLO x", 6) == 6);
		pump(&p);
		CHECK(SSL_read(p.c, buf, sizeof buf) == 9);
		CHECK(SSL_read(p.s, buf, sizeof buf) == 6);
	}
	struct ktls_crypto ctx_, crx, stx, srx;
	char err[256];
	int rc = ktls_derive(p.c, &ctx_, &crx, err, sizeof err);
	if (rc != 0)
		fprintf(stderr, "test_tls: ktls_derive (client): %s\n", err);
	CHECK(rc == 0);
	CHECK(ktls_derive(p.s, &stx, &srx, err, sizeof err) == 0);
	if (rc != 0)
		goto out;
	CHECK(ctx_.len == srx.len && memcmp(ctx_.bytes, srx.bytes, ctx_.len) == 0);
	CHECK(crx.len == stx.len && memcmp(crx.bytes, stx.bytes, crx.len) == 0);
	struct krec k;
	CHECK(krec_from(&k, &ctx_));
	CHECK(k.cipher == want_cipher);
	CHECK(k.seq == SSL_get_write_sequence(p.c) && k.seq == 2 + (version == TLS1_2_VERSION));
	uint8_t rec[4096];
	for (int i = 0; i < 3; i++) {
		char msg[64];
		int n = snprintf(msg, sizeof msg, "MAIL FROM:<a@b> sealed by the kernel, record %d", i);
		size_t len = krec_seal(&k, msg, (size_t)n, rec, sizeof rec);
		CHECK(len > 0);
		BIO_write(SSL_get_rbio(p.s), rec, (int)len);
		int got = SSL_read(p.s, buf, sizeof buf);
		CHECK(got == n && memcmp(buf, msg, (size_t)n) == 0);
	}
out:
	pair_free(&p);
	SSL_CTX_free(cctx);
}

static void test_ktls_memory(void)
{
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "mail"));
	strcat(conftext, pki_line("ec", "ec", "ec"));
	strcat(conftext, pki_line("ec384", "ec384", "ec384"));
	struct tls_server *t = build(conftext, true);
	CHECK(t != NULL);
	if (!t)
		return;
	ktls_case(t, "mail.example.com", TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256",
		  TLS_CIPHER_AES_GCM_128);
	ktls_case(t, "mail.example.com", TLS1_2_VERSION, "ECDHE-RSA-AES256-GCM-SHA384",
		  TLS_CIPHER_AES_GCM_256);
	ktls_case(t, "mail.example.com", TLS1_2_VERSION, "ECDHE-RSA-CHACHA20-POLY1305",
		  TLS_CIPHER_CHACHA20_POLY1305);
	ktls_case(t, "ec", TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", TLS_CIPHER_AES_GCM_128);
	ktls_case(t, "ec384", TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384",
		  TLS_CIPHER_AES_GCM_256);
	ktls_case(t, "ec", TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305",
		  TLS_CIPHER_CHACHA20_POLY1305);
	/* TLS 1.3: BoringSSL's client picks the suite (AES-128-GCM with AES
	 * hardware, else ChaCha20); the s_client test covers the others. */
	uint16_t want13 = EVP_has_aes_hardware() ? TLS_CIPHER_AES_GCM_128
						 : TLS_CIPHER_CHACHA20_POLY1305;
	ktls_case(t, "mail.example.com", TLS1_3_VERSION, NULL, want13);
	ktls_case(t, "ec384", TLS1_3_VERSION, NULL, want13);

	ktls_client_case(t, "mail.example.com", TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256",
			 TLS_CIPHER_AES_GCM_128);
	ktls_client_case(t, "ec384", TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384",
			 TLS_CIPHER_AES_GCM_256);
	ktls_client_case(t, "ec", TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305",
			 TLS_CIPHER_CHACHA20_POLY1305);
	ktls_client_case(t, "mail.example.com", TLS1_3_VERSION, NULL, want13);
	ktls_client_case(t, "ec384", TLS1_3_VERSION, NULL, want13);

	/* Without the keylog hook there are no TLS 1.3 secrets: a clear error,
	 * while TLS 1.2 needs none. */
	tls_server_free(t);
	t = build(conftext, false);
	CHECK(t != NULL);
	if (!t)
		return;
	struct client_opts o = {.version = TLS1_3_VERSION};
	SSL_CTX *cctx = client_ctx(&o);
	struct pair p = {0};
	CHECK(handshake(&p, cctx, t, "ec", false, &o, NULL));
	struct ktls_crypto tx, rx;
	char err[256];
	CHECK(ktls_derive(p.s, &tx, &rx, err, sizeof err) < 0);
	CHECK(strstr(err, "traffic secrets not captured") != NULL);
	pair_free(&p);
	SSL_CTX_free(cctx);
	o.version = TLS1_2_VERSION;
	cctx = client_ctx(&o);
	CHECK(handshake(&p, cctx, t, "ec", false, &o, NULL));
	CHECK(ktls_derive(p.s, &tx, &rx, err, sizeof err) == 0);
	pair_free(&p);

	/* Before the handshake: no keys. */
	p.s = tls_server_session(t, "ec", false);
	CHECK(p.s && ktls_derive(p.s, &tx, &rx, err, sizeof err) < 0);
	CHECK(!ktls_cipher_supported(NULL));
	SSL_free(p.s);
	SSL_CTX_free(cctx);
	tls_server_free(t);
}

/* relay_tls's watch: once the kernel holds the client's write keys,
 * BoringSSL must not write again. A KeyUpdate that asks for nothing leaves
 * it silent; one with update_requested, or an alert, makes it want to
 * write, and relay_tls_wrote_after_handshake must say so (the delivery
 * worker then closes the connection), as must relay_tls_ktls_tx (which
 * then keeps the session in userspace). */
static bool relay_pair(struct pair *p, SSL_CTX *cctx, const struct tls_server *t)
{
	struct relay_url u;
	const char *why;
	size_t off;
	static const char url[] = "smtps://127.0.0.1:4650";
	CHECK(relay_url_parse(url, sizeof url - 1, &u, &why, &off) == 0);
	p->c = relay_tls_new(cctx, &u, false);
	p->s = tls_server_session(t, "ec", false);
	CHECK(p->c && p->s);
	if (!p->c || !p->s)
		return false;
	attach_mem_bios(p->s);
	SSL_set_accept_state(p->s);
	char e[256];
	int rc = 0;
	for (int i = 0; i < 20 && rc != 1; i++) {
		rc = relay_tls_handshake(p->c, e, sizeof e);
		pump(p);
		SSL_do_handshake(p->s);
		pump(p);
	}
	CHECK(rc == 1);
	return rc == 1;
}

static void test_relay_tls_watch(void)
{
	snprintf(conftext, sizeof conftext, "%s", pki_line("ec", "ec", "ec"));
	struct tls_server *t = build(conftext, true);
	char why[256];
	SSL_CTX *cctx = relay_tls_ctx_new(NULL, false, why, sizeof why);
	CHECK(t && cctx);
	if (!t || !cctx)
		goto out;
	struct pair p = {0};
	char buf[64];
	if (relay_pair(&p, cctx, t)) {
		CHECK(SSL_version(p.c) == TLS1_3_VERSION);
		CHECK(!relay_tls_wrote_after_handshake(p.c));
		CHECK(SSL_write(p.s, "220 a", 5) == 5);
		pump(&p);
		CHECK(relay_tls_read(p.c, buf, sizeof buf) == 5); /* the tickets, then data */
		CHECK(!relay_tls_wrote_after_handshake(p.c));
		CHECK(SSL_key_update(p.s, SSL_KEY_UPDATE_NOT_REQUESTED) == 1);
		CHECK(SSL_write(p.s, "250 b", 5) == 5);
		pump(&p);
		CHECK(relay_tls_read(p.c, buf, sizeof buf) == 5);
		CHECK(!relay_tls_wrote_after_handshake(p.c)); /* nothing owed */
		CHECK(SSL_key_update(p.s, SSL_KEY_UPDATE_REQUESTED) == 1);
		CHECK(SSL_write(p.s, "250 c", 5) == 5);
		pump(&p);
		CHECK(relay_tls_read(p.c, buf, sizeof buf) == 5);
		CHECK(relay_tls_wrote_after_handshake(p.c)); /* a KeyUpdate is owed */
		CHECK(relay_tls_ktls_tx(p.c, -1, why, sizeof why) == 0);
		CHECK(strstr(why, "after the handshake") != NULL);
	}
	pair_free(&p);
	if (relay_pair(&p, cctx, t)) {
		/* a damaged record: BoringSSL fails the read and writes an alert */
		CHECK(SSL_write(p.s, "250 d", 5) == 5);
		uint8_t rec[8192]; /* the tickets and the record, all of it */
		int n = BIO_read(SSL_get_wbio(p.s), rec, sizeof rec);
		CHECK(n > 0 && BIO_pending(SSL_get_wbio(p.s)) == 0);
		rec[n - 1] ^= 1; /* in the last record's tag */
		BIO_write(SSL_get_rbio(p.c), rec, n);
		CHECK(relay_tls_read(p.c, buf, sizeof buf) < 0);
		CHECK(relay_tls_wrote_after_handshake(p.c));
		ERR_clear_error();
	}
	pair_free(&p);
out:
	SSL_CTX_free(cctx);
	tls_server_free(t);
}

/* ------------------------------------------- against openssl s_client */

static long ms_left(const struct timespec *deadline)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

static bool wait_fd(int fd, short ev, const struct timespec *deadline)
{
	long left = ms_left(deadline);
	if (left <= 0)
		return false;
	struct pollfd pfd = {.fd = fd, .events = ev};
	return poll(&pfd, 1, (int)left) == 1;
}

static bool write_all(int fd, const void *b, size_t n)
{
	const char *q = b;
	while (n > 0) {
		ssize_t w = write(fd, q, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		q += w;
		n -= (size_t)w;
	}
	return true;
}

static bool flush_wbio(SSL *s, int fd)
{
	char b[16384];
	int n;
	while ((n = BIO_read(SSL_get_wbio(s), b, sizeof b)) > 0)
		if (!write_all(fd, b, (size_t)n))
			return false;
	return true;
}

/* Read exactly one TLS record from fd. */
static long read_record(int fd, uint8_t *out, size_t cap, const struct timespec *deadline)
{
	size_t have = 0, need = 5;
	while (have < need) {
		if (!wait_fd(fd, POLLIN, deadline))
			return -1;
		ssize_t r = read(fd, out + have, need - have);
		if (r <= 0)
			return -1;
		have += (size_t)r;
		if (have == 5 && need == 5) {
			need = 5 + (size_t)(out[3] << 8 | out[4]);
			if (need > cap)
				return -1;
		}
	}
	return (long)have;
}

static bool keylog_secret_once(const char *file, const char *label, uint8_t *out, size_t *len)
{
	FILE *f = fopen(file, "r");
	if (!f)
		return false;
	char line[512];
	bool found = false;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (strncmp(line, label, strlen(label)) == 0 && line[strlen(label)] == ' ') {
			const char *sp = strrchr(line, ' ');
			*len = unhex(sp + 1, out, 48);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* s_client writes its keylog lines on its own schedule, possibly after our
 * side of the handshake is done: give it a moment before calling a line
 * missing. */
static bool keylog_secret(const char *file, const char *label, uint8_t *out, size_t *len)
{
	for (int tries = 0; tries < 200; tries++) {
		if (keylog_secret_once(file, label, out, len))
			return true;
		usleep(10000);
	}
	return false;
}

static void sclient_case(const struct tls_server *t, bool tls13, const char *suite,
			 uint16_t want_cipher)
{
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += 20;

	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t salen = sizeof sa;
	CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 1) == 0 &&
	      getsockname(lfd, (struct sockaddr *)&sa, &salen) == 0);
	char connect_to[64], keylog[600];
	snprintf(connect_to, sizeof connect_to, "127.0.0.1:%u", ntohs(sa.sin_port));
	snprintf(keylog, sizeof keylog, "%s/keylog.%s", dir, suite);
	unlink(keylog);

	int in[2], out[2];
	CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		int devnull = open("/dev/null", O_WRONLY);
		dup2(devnull, 2);
		execlp("openssl", "openssl", "s_client", "-quiet", "-connect", connect_to,
		       "-servername", "mail.example.com", tls13 ? "-tls1_3" : "-tls1_2",
		       tls13 ? "-ciphersuites" : "-cipher", suite, "-keylogfile", keylog,
		       (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	CHECK(pid > 0);

	int fd = -1;
	SSL *s = NULL;
	if (wait_fd(lfd, POLLIN, &deadline))
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	CHECK(fd >= 0);
	if (fd < 0)
		goto out;
	s = tls_server_session(t, "mail.example.com", false);
	CHECK(s != NULL);
	if (!s)
		goto out;
	attach_mem_bios(s);

	/* The handshake, the way conn.c does it: ciphertext through BIOs. */
	int r;
	while ((r = SSL_do_handshake(s)) != 1) {
		if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ || !flush_wbio(s, fd))
			break;
		if (!wait_fd(fd, POLLIN, &deadline))
			break;
		char b[16384];
		ssize_t n = read(fd, b, sizeof b);
		if (n <= 0)
			break;
		BIO_write(SSL_get_rbio(s), b, (int)n);
	}
	CHECK(r == 1);
	if (r != 1) {
		char e[256];
		tls_last_error(e, sizeof e);
		fprintf(stderr, "test_tls: s_client %s handshake failed: %s\n", suite, e);
		goto out;
	}
	SSL_write(s, "", 0); /* TLS 1.3 tickets go out in userspace */
	CHECK(flush_wbio(s, fd));
	CHECK(BIO_pending(SSL_get_rbio(s)) == 0);

	struct ktls_crypto tx, rx;
	char err[256];
	CHECK(ktls_derive(s, &tx, &rx, err, sizeof err) == 0);
	struct krec ktx, krx;
	CHECK(krec_from(&ktx, &tx) && krec_from(&krx, &rx));
	CHECK(ktx.cipher == want_cipher);

	/* The client's own secrets (OpenSSL's keylog) give the same keys. */
	if (tls13) {
		uint8_t sec[48];
		size_t slen = 0;
		const EVP_MD *md =
			EVP_get_digestbynid(SSL_CIPHER_get_prf_nid(SSL_get_current_cipher(s)));
		uint8_t key[32], iv[12];
		CHECK(keylog_secret(keylog, "SERVER_TRAFFIC_SECRET_0", sec, &slen));
		CHECK(ktls_hkdf_expand_label(md, sec, slen, "key", key, ktx.keylen) == 0);
		CHECK(ktls_hkdf_expand_label(md, sec, slen, "iv", iv, 12) == 0);
		CHECK(memcmp(key, ktx.key, ktx.keylen) == 0 && memcmp(iv, ktx.mask, 12) == 0);
		CHECK(keylog_secret(keylog, "CLIENT_TRAFFIC_SECRET_0", sec, &slen));
		CHECK(ktls_hkdf_expand_label(md, sec, slen, "key", key, krx.keylen) == 0);
		CHECK(memcmp(key, krx.key, krx.keylen) == 0);
	}

	/* TX: s_client prints what our "kernel" sealed. */
	static const char msg[] = "220 sealed by the test kernel\n";
	uint8_t rec[20000];
	size_t len = krec_seal(&ktx, msg, sizeof msg - 1, rec, sizeof rec);
	CHECK(len > 0 && write_all(fd, rec, len));
	char got[256];
	size_t have = 0;
	while (have < sizeof msg - 1 && wait_fd(out[0], POLLIN, &deadline)) {
		ssize_t n = read(out[0], got + have, sizeof got - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	got[have] = '\0';
	CHECK_STR_EQ(got, msg);

	/* RX: what s_client sends opens with our RX keys. */
	static const char line[] = "mail from:<a@example.com>\n";
	CHECK(write_all(in[1], line, sizeof line - 1));
	long rl = read_record(fd, rec, sizeof rec, &deadline);
	CHECK(rl > 0);
	uint8_t pt[20000];
	long n = rl > 0 ? krec_open(&krx, rec, (size_t)rl, pt, sizeof pt) : -1;
	CHECK(n == (long)sizeof line - 1 && memcmp(pt, line, sizeof line - 1) == 0);
	if (n != (long)sizeof line - 1)
		fprintf(stderr, "test_tls: s_client %s: RX record did not open\n", suite);
out:
	SSL_free(s);
	if (fd >= 0)
		close(fd);
	close(lfd);
	close(in[1]);
	close(out[0]);
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
}

static void test_ktls_sclient(void)
{
	if (run("openssl version >/dev/null 2>&1") != 0) {
		fprintf(stderr, "test_tls: no openssl command; s_client cases not run\n");
		CHECK(!"openssl command present");
		return;
	}
	snprintf(conftext, sizeof conftext, "%s", pki_line("mail.example.com", "mail", "mail"));
	struct tls_server *t = build(conftext, true);
	CHECK(t != NULL);
	if (!t)
		return;
	sclient_case(t, true, "TLS_AES_128_GCM_SHA256", TLS_CIPHER_AES_GCM_128);
	sclient_case(t, true, "TLS_AES_256_GCM_SHA384", TLS_CIPHER_AES_GCM_256);
	sclient_case(t, true, "TLS_CHACHA20_POLY1305_SHA256", TLS_CIPHER_CHACHA20_POLY1305);
	sclient_case(t, false, "ECDHE-RSA-AES128-GCM-SHA256", TLS_CIPHER_AES_GCM_128);
	sclient_case(t, false, "ECDHE-RSA-AES256-GCM-SHA384", TLS_CIPHER_AES_GCM_256);
	sclient_case(t, false, "ECDHE-RSA-CHACHA20-POLY1305", TLS_CIPHER_CHACHA20_POLY1305);
	tls_server_free(t);
}

static void test_kernel(void)
{
	bool a = ktls_kernel_supported();
	CHECK(ktls_kernel_supported() == a); /* cached, same answer */
	printf("test_tls: kernel kTLS %s\n", a ? "available" : "not available");
	/* Installing on a socket that is not TCP fails cleanly either way. */
	struct ktls_crypto k = {.len = 1};
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(ktls_install(sv[0], &k, &k) < 0);
	close(sv[0]);
	close(sv[1]);
	CHECK(ktls_install(-1, &k, &k) == -EINVAL);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	buf_init(&errs, 1 << 20);
	CHECK(getcwd(srcdir, sizeof srcdir) != NULL);
	snprintf(dir, sizeof dir, "/tmp/test_tls.XXXXXX");
	CHECK(mkdtemp(dir) != NULL);

	/* The certificates: the seed's RSA-4096, ECDSA P-256 and P-384, a
	 * second name for SNI, a wildcard, and two CAs with a client each. */
	char opts[2048];
	bool made = mkcert("", "mail.example.com") == 0 &&
		    mkcert("--ecdsa", "ec.example.com") == 0 &&
		    mkcert("--ecdsa-p384", "ec384.example.com") == 0 &&
		    mkcert("--ecdsa", "ca") == 0 && mkcert("--ecdsa", "ca2") == 0;
	/* shorter names for the tests */
	static const char *renames[][2] = {{"mail.example.com", "mail"}, {"ec.example.com", "ec"},
					   {"ec384.example.com", "ec384"}};
	for (size_t i = 0; made && i < 3; i++) {
		for (int e = 0; e < 2; e++) {
			const char *ext = e ? "key" : "crt";
			char from[512];
			snprintf(from, sizeof from, "%s", path_of(renames[i][0], ext));
			made = made && rename(from, path_of(renames[i][1], ext)) == 0;
		}
	}
	snprintf(opts, sizeof opts, "--rsa 2048 --out-cert '%s' --out-key '%s'",
		 path_of("other.example.org", "crt"), path_of("other.example.org", "key"));
	made = made && mkcert(opts, "other.example.org") == 0;
	snprintf(opts, sizeof opts, "--ecdsa --out-cert '%s' --out-key '%s'", path_of("wild", "crt"),
		 path_of("wild", "key"));
	made = made && mkcert(opts, "*.wild.example") == 0;
	snprintf(opts, sizeof opts, "--ecdsa --ca-cert '%s' --ca-key '%s'", path_of("ca", "crt"),
		 path_of("ca", "key"));
	made = made && mkcert(opts, "client1") == 0;
	snprintf(opts, sizeof opts, "--ecdsa --ca-cert '%s' --ca-key '%s'", path_of("ca2", "crt"),
		 path_of("ca2", "key"));
	made = made && mkcert(opts, "intruder") == 0;
	/* other.example.org also answers to alt.example.org */
	char cmd[4096];
	snprintf(cmd, sizeof cmd,
		 "openssl req -x509 -new -key '%s' -out '%s' -days 30 -subj /CN=other.example.org "
		 "-addext subjectAltName=DNS:other.example.org,DNS:alt.example.org 2>/dev/null",
		 path_of("other.example.org", "key"), path_of("other.example.org", "crt"));
	made = made && run(cmd) == 0;
	CHECK(made);
	if (made) {
		struct stat st;
		CHECK(stat(path_of("mail", "key"), &st) == 0 && (st.st_mode & 0777) == 0600);
		test_hkdf_rfc8448();
		test_key_files();
		test_handshakes();
		test_sni();
		test_client_certs();
		test_ktls_memory();
		test_relay_tls_watch();
		test_ktls_sclient();
		test_kernel();
	}

	SSL_SESSION_free(cli_session);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	run(cmd);
	buf_free(&errs);
	return check_report("test_tls");
}
