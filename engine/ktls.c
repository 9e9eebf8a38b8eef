/* ktls: traffic keys and record sequence numbers from BoringSSL to the
 * kernel's TLS ULP (see ktls.h).
 *
 * TLS 1.3: BoringSSL's C API has no way to read the traffic secrets, but
 * its keylog callback hands them out as text ("SERVER_TRAFFIC_SECRET_0
 * <client random> <secret>"). The callback parses the two application
 * traffic secrets into the SSL's ex_data; ktls_derive expands them into
 * key and IV (RFC 8446 7.3).
 *
 * TLS 1.2: SSL_generate_key_block gives the key block (RFC 5246 6.3). For
 * the AEAD suites BoringSSL's layout is
 *     client_write_MAC_key[0]  server_write_MAC_key[0]
 *     client_write_key[K]      server_write_key[K]
 *     client_write_IV[F]       server_write_IV[F]
 * with K = 16 or 32 and F = 4 (AES-GCM: the implicit salt; RFC 5288) or
 * 12 (ChaCha20-Poly1305: the whole nonce mask; RFC 7905). We check the
 * block's total length against that layout and refuse anything else.
 *
 * The kernel's structs for AES-GCM split the nonce into salt[4] and iv[8].
 * In TLS 1.3 the nonce is the 12-byte IV xor the sequence number, so salt
 * is its first 4 bytes and iv its last 8. In TLS 1.2 AES-GCM, iv is the
 * explicit nonce of the next record, which the kernel increments with each
 * record; BoringSSL uses the record sequence number as explicit nonce, and
 * so do we (iv = rec_seq), which keeps the two sides' nonces unique.
 * ChaCha20-Poly1305 has no salt: iv is all 12 bytes, in both versions. */
#include "ktls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/digest.h>
#include <openssl/hkdf.h>
#include <openssl/mem.h>
#include <openssl/nid.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define KTLS_SECRET_MAX 48 /* SHA-384 */
#define KTLS_IV_LEN 12     /* every AEAD here */

_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_256) <= sizeof(((struct ktls_crypto *)0)->bytes),
	       "struct ktls_crypto too small");
_Static_assert(sizeof(struct tls12_crypto_info_chacha20_poly1305) <=
		       sizeof(((struct ktls_crypto *)0)->bytes),
	       "struct ktls_crypto too small");

/* --------------------------------------------------------- keylog hook */

struct ktls_secrets {
	uint8_t client[KTLS_SECRET_MAX];
	uint8_t server[KTLS_SECRET_MAX];
	size_t client_len, server_len;
};

static int secrets_index = -1;
static pthread_once_t secrets_once = PTHREAD_ONCE_INIT;

static void secrets_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
			 void *argp)
{
	(void)parent;
	(void)ad;
	(void)index;
	(void)argl;
	(void)argp;
	if (!ptr)
		return;
	OPENSSL_cleanse(ptr, sizeof(struct ktls_secrets));
	free(ptr);
}

static void secrets_init(void)
{
	secrets_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, secrets_free);
}

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Hex digits up to a blank or the end into out; byte count or -1. */
static long parse_hex(const char **sp, uint8_t *out, size_t max)
{
	const char *s = *sp;
	size_t n = 0;
	while (*s && *s != ' ') {
		int hi = hexval((unsigned char)s[0]);
		int lo = hi < 0 ? -1 : hexval((unsigned char)s[1]);
		if (hi < 0 || lo < 0 || n == max)
			return -1;
		out[n++] = (uint8_t)(hi << 4 | lo);
		s += 2;
	}
	*sp = s;
	return (long)n;
}

static void keylog_cb(const SSL *cssl, const char *line)
{
	static const char cl[] = "CLIENT_TRAFFIC_SECRET_0 ";
	static const char sl[] = "SERVER_TRAFFIC_SECRET_0 ";
	bool is_client = strncmp(line, cl, sizeof cl - 1) == 0;
	bool is_server = !is_client && strncmp(line, sl, sizeof sl - 1) == 0;
	if (!is_client && !is_server)
		return; /* handshake secrets, TLS 1.2 CLIENT_RANDOM, ...: not needed */
	SSL *ssl = (SSL *)cssl; /* ex_data is ours to change; nothing else is */
	const char *s = line + sizeof cl - 1;

	/* The client random must be this connection's. */
	uint8_t random[32], mine[32];
	if (parse_hex(&s, random, sizeof random) != (long)sizeof random || *s != ' ')
		return;
	if (SSL_get_client_random(ssl, mine, sizeof mine) != sizeof mine ||
	    memcmp(random, mine, sizeof mine) != 0)
		return;
	s++;
	uint8_t secret[KTLS_SECRET_MAX];
	long n = parse_hex(&s, secret, sizeof secret);
	if (n <= 0 || *s != '\0') {
		OPENSSL_cleanse(secret, sizeof secret);
		return;
	}

	struct ktls_secrets *ks = SSL_get_ex_data(ssl, secrets_index);
	if (!ks) {
		ks = calloc(1, sizeof *ks);
		if (!ks || !SSL_set_ex_data(ssl, secrets_index, ks)) {
			free(ks);
			OPENSSL_cleanse(secret, sizeof secret);
			return; /* ktls_derive will say the secret is missing */
		}
	}
	if (is_client) {
		memcpy(ks->client, secret, (size_t)n);
		ks->client_len = (size_t)n;
	} else {
		memcpy(ks->server, secret, (size_t)n);
		ks->server_len = (size_t)n;
	}
	OPENSSL_cleanse(secret, sizeof secret);
}

void ktls_enable_keylog(SSL_CTX *ctx)
{
	pthread_once(&secrets_once, secrets_init);
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
}

/* --------------------------------------------------------- key schedule */

int ktls_hkdf_expand_label(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
			   const char *label, uint8_t *out, size_t out_len)
{
	/* struct { uint16 length; opaque label<7..255>; opaque context<0..255>; } */
	static const char prefix[] = "tls13 ";
	size_t llen = strlen(label);
	size_t full = sizeof prefix - 1 + llen;
	if (!md || !secret || !out || out_len > 0xffff || full > 255 || full < 7)
		return -1;
	uint8_t info[2 + 1 + 255 + 1];
	size_t o = 0;
	info[o++] = (uint8_t)(out_len >> 8);
	info[o++] = (uint8_t)out_len;
	info[o++] = (uint8_t)full;
	memcpy(info + o, prefix, sizeof prefix - 1);
	o += sizeof prefix - 1;
	memcpy(info + o, label, llen);
	o += llen;
	info[o++] = 0; /* empty context */
	return HKDF_expand(out, out_len, md, secret, secret_len, info, o) ? 0 : -1;
}

/* One direction's keys, before they go into the kernel's struct. */
struct dir_keys {
	uint8_t key[32];
	uint8_t iv[KTLS_IV_LEN]; /* AES-GCM 1.2: only the first 4 (salt) */
	uint64_t seq;
};

static void put_be64(uint8_t out[8], uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		out[i] = (uint8_t)v;
		v >>= 8;
	}
}

static void fill(struct ktls_crypto *out, uint16_t version, int nid, const struct dir_keys *k)
{
	memset(out, 0, sizeof *out);
	uint8_t seq[8];
	put_be64(seq, k->seq);
	if (nid == NID_chacha20_poly1305) {
		struct tls12_crypto_info_chacha20_poly1305 ci;
		memset(&ci, 0, sizeof ci);
		ci.info.version = version;
		ci.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
		memcpy(ci.iv, k->iv, sizeof ci.iv);
		memcpy(ci.key, k->key, sizeof ci.key);
		memcpy(ci.rec_seq, seq, sizeof ci.rec_seq);
		memcpy(out->bytes, &ci, sizeof ci);
		out->len = sizeof ci;
		OPENSSL_cleanse(&ci, sizeof ci);
		return;
	}
	/* AES-GCM: 128 and 256 differ only in the key's size. */
#define FILL_GCM(type, cipher)                                                       \
	do {                                                                         \
		type ci;                                                             \
		memset(&ci, 0, sizeof ci);                                           \
		ci.info.version = version;                                           \
		ci.info.cipher_type = (cipher);                                      \
		/* 1.3: the nonce mask's last 8 bytes; 1.2: next explicit nonce */   \
		memcpy(ci.iv, version == TLS_1_3_VERSION ? k->iv + 4 : seq, 8);      \
		memcpy(ci.key, k->key, sizeof ci.key);                               \
		memcpy(ci.salt, k->iv, sizeof ci.salt);                              \
		memcpy(ci.rec_seq, seq, sizeof ci.rec_seq);                          \
		memcpy(out->bytes, &ci, sizeof ci);                                  \
		out->len = sizeof ci;                                                \
		OPENSSL_cleanse(&ci, sizeof ci);                                     \
	} while (0)
	if (nid == NID_aes_256_gcm)
		FILL_GCM(struct tls12_crypto_info_aes_gcm_256, TLS_CIPHER_AES_GCM_256);
	else
		FILL_GCM(struct tls12_crypto_info_aes_gcm_128, TLS_CIPHER_AES_GCM_128);
#undef FILL_GCM
}

static size_t key_len_for(int nid)
{
	switch (nid) {
	case NID_aes_128_gcm: return 16;
	case NID_aes_256_gcm: return 32;
	case NID_chacha20_poly1305: return 32;
	default: return 0;
	}
}

bool ktls_cipher_supported(const SSL *ssl)
{
	if (!ssl)
		return false;
	int v = SSL_version(ssl);
	if (v != TLS1_2_VERSION && v != TLS1_3_VERSION)
		return false;
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	return c && key_len_for(SSL_CIPHER_get_cipher_nid(c)) != 0;
}

static int derive13(SSL *ssl, const SSL_CIPHER *c, size_t keylen, struct dir_keys *srv,
		    struct dir_keys *cli, char *err, size_t err_len)
{
	const EVP_MD *md = EVP_get_digestbynid(SSL_CIPHER_get_prf_nid(c));
	struct ktls_secrets *ks = secrets_index >= 0 ? SSL_get_ex_data(ssl, secrets_index) : NULL;
	if (!md) {
		snprintf(err, err_len, "no digest for %s", SSL_CIPHER_standard_name(c));
		return -1;
	}
	size_t slen = EVP_MD_size(md);
	if (!ks || ks->client_len != slen || ks->server_len != slen) {
		snprintf(err, err_len,
			 "TLS 1.3 traffic secrets not captured (keylog hook not installed?)");
		return -1;
	}
	if (ktls_hkdf_expand_label(md, ks->server, slen, "key", srv->key, keylen) < 0 ||
	    ktls_hkdf_expand_label(md, ks->server, slen, "iv", srv->iv, KTLS_IV_LEN) < 0 ||
	    ktls_hkdf_expand_label(md, ks->client, slen, "key", cli->key, keylen) < 0 ||
	    ktls_hkdf_expand_label(md, ks->client, slen, "iv", cli->iv, KTLS_IV_LEN) < 0) {
		snprintf(err, err_len, "HKDF-Expand-Label failed");
		return -1;
	}
	return 0;
}

static int derive12(SSL *ssl, int nid, size_t keylen, struct dir_keys *srv, struct dir_keys *cli,
		    char *err, size_t err_len)
{
	size_t fixed = nid == NID_chacha20_poly1305 ? 12 : 4;
	size_t want = 2 * (keylen + fixed);
	size_t len = SSL_get_key_block_len(ssl);
	if (len != want) {
		snprintf(err, err_len, "unexpected TLS 1.2 key block length %zu (want %zu)", len,
			 want);
		return -1;
	}
	uint8_t block[2 * (32 + 12)];
	if (!SSL_generate_key_block(ssl, block, len)) {
		snprintf(err, err_len, "SSL_generate_key_block failed");
		return -1;
	}
	/* client_write_* first, then server_write_* */
	memcpy(cli->key, block, keylen);
	memcpy(srv->key, block + keylen, keylen);
	memcpy(cli->iv, block + 2 * keylen, fixed);
	memcpy(srv->iv, block + 2 * keylen + fixed, fixed);
	OPENSSL_cleanse(block, sizeof block);
	return 0;
}

int ktls_derive(SSL *ssl, struct ktls_crypto *tx, struct ktls_crypto *rx, char *err, size_t err_len)
{
	char dummy[1];
	if (!err || err_len == 0) {
		err = dummy;
		err_len = sizeof dummy;
	}
	err[0] = '\0';
	if (!ssl || !tx || !rx || SSL_in_init(ssl)) {
		snprintf(err, err_len, "no finished handshake");
		return -1;
	}
	if (!ktls_cipher_supported(ssl)) {
		snprintf(err, err_len, "%s with %s cannot go to the kernel", SSL_get_version(ssl),
			 SSL_CIPHER_standard_name(SSL_get_current_cipher(ssl)));
		return -1;
	}
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	int nid = SSL_CIPHER_get_cipher_nid(c);
	size_t keylen = key_len_for(nid);
	uint16_t version = SSL_version(ssl) == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION;
	struct dir_keys ktx, krx;
	memset(&ktx, 0, sizeof ktx);
	memset(&krx, 0, sizeof krx);
	/* derive13/derive12 fill the server's direction first: a server
	 * writes with it, a client (the relay's outbound TLS) reads with it */
	bool server = SSL_is_server(ssl);
	struct dir_keys *srv = server ? &ktx : &krx, *cli = server ? &krx : &ktx;
	int rc = version == TLS_1_3_VERSION ? derive13(ssl, c, keylen, srv, cli, err, err_len)
					    : derive12(ssl, nid, keylen, srv, cli, err, err_len);
	if (rc == 0) {
		ktx.seq = SSL_get_write_sequence(ssl);
		krx.seq = SSL_get_read_sequence(ssl);
		fill(tx, version, nid, &ktx);
		fill(rx, version, nid, &krx);
	}
	OPENSSL_cleanse(&ktx, sizeof ktx);
	OPENSSL_cleanse(&krx, sizeof krx);
	return rc;
}

/* -------------------------------------------------------------- kernel */

int ktls_install_tx(int fd, const struct ktls_crypto *tx)
{
	if (fd < 0 || !tx || tx->len == 0)
		return -EINVAL;
	if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0)
		return -errno;
	if (setsockopt(fd, SOL_TLS, TLS_TX, tx->bytes, (socklen_t)tx->len) < 0)
		return -errno;
	return 0;
}

int ktls_install(int fd, const struct ktls_crypto *tx, const struct ktls_crypto *rx)
{
	if (fd < 0 || !tx || !rx || tx->len == 0 || rx->len == 0)
		return -EINVAL;
	if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0)
		return -errno;
	if (setsockopt(fd, SOL_TLS, TLS_TX, tx->bytes, (socklen_t)tx->len) < 0)
		return -errno;
	if (setsockopt(fd, SOL_TLS, TLS_RX, rx->bytes, (socklen_t)rx->len) < 0)
		return -errno;
	return 0;
}

static bool kernel_ok;
static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;

/* TCP_ULP needs an established socket: make one on the loopback. */
static void kernel_probe(void)
{
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int afd = -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t salen = sizeof sa;
	if (lfd < 0 || cfd < 0)
		goto out;
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0)
		goto out;
	if (connect(cfd, (struct sockaddr *)&sa, sizeof sa) < 0)
		goto out;
	afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (afd < 0)
		goto out;
	kernel_ok = setsockopt(cfd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") == 0;
out:
	if (afd >= 0)
		close(afd);
	if (cfd >= 0)
		close(cfd);
	if (lfd >= 0)
		close(lfd);
}

bool ktls_kernel_supported(void)
{
	pthread_once(&kernel_once, kernel_probe);
	return kernel_ok;
}
