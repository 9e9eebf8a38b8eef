/* ceiling: what one core can do of a TLS 1.3 server's public-key work, with
 * the BoringSSL mxd links (bench/run builds it with cc; not part of CMake).
 *
 * A full handshake costs the server one signature (CertificateVerify) and
 * one X25519 key exchange (a key pair for its key share, and the shared
 * secret with the client's share). This loop does exactly that, over and
 * over, and reports the rate per second of its own CPU time, for
 *   ecdsa: ECDSA P-256 sign + X25519 keypair + X25519 shared secret
 *   rsa:   RSA-2048 PSS (SHA-256) sign + X25519 keypair + shared secret
 * The rest of a handshake (hashing, HKDF, AES, record framing, the
 * certificate message, the sockets, SMTP) is not in the ceiling: it is the
 * server's overhead on top of it, so a server reaches a fraction of it.
 *
 *   ceiling [SECONDS]    prints: ecdsa=RATE rsa=RATE (one line)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/curve25519.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>

static double cpu_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int key_exchange(void)
{
	uint8_t peer_pub[32], peer_priv[32], pub[32], priv[32], secret[32];
	/* the client's share is made outside the timed work in a real
	 * handshake; here it is the same every time */
	static int have_peer;
	static uint8_t fixed_peer[32];
	if (!have_peer) {
		X25519_keypair(peer_pub, peer_priv);
		for (int i = 0; i < 32; i++)
			fixed_peer[i] = peer_pub[i];
		have_peer = 1;
	}
	X25519_keypair(pub, priv);
	return X25519(secret, priv, fixed_peer);
}

static double run(double secs, int (*sign)(void *), void *key)
{
	unsigned long n = 0;
	double t0 = cpu_seconds(), t;
	do {
		for (int i = 0; i < 8; i++)
			if (!sign(key) || !key_exchange()) {
				fprintf(stderr, "ceiling: an operation failed\n");
				exit(1);
			}
		n += 8;
		t = cpu_seconds();
	} while (t - t0 < secs);
	return (double)n / (t - t0);
}

static int sign_ecdsa(void *key)
{
	uint8_t digest[32] = {1}, sig[80] /* a DER P-256 signature is at most 72 bytes */;
	unsigned len = sizeof sig;
	return ECDSA_sign(0, digest, sizeof digest, sig, &len, key);
}

static int sign_rsa(void *key)
{
	uint8_t digest[32] = {1}, sig[256];
	size_t len;
	return RSA_sign_pss_mgf1(key, &len, sig, sizeof sig, digest, sizeof digest, EVP_sha256(),
				 EVP_sha256(), -1);
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 1.0;
	if (!(secs > 0)) {
		fprintf(stderr, "usage: ceiling [SECONDS]\n");
		return 2;
	}
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	RSA *rsa = RSA_new();
	BIGNUM *e = BN_new();
	if (!ec || !EC_KEY_generate_key(ec) || !rsa || !e || !BN_set_word(e, RSA_F4) ||
	    !RSA_generate_key_ex(rsa, 2048, e, NULL)) {
		fprintf(stderr, "ceiling: key generation failed\n");
		return 1;
	}
	double r_ec = run(secs, sign_ecdsa, ec);
	double r_rsa = run(secs, sign_rsa, rsa);
	printf("ecdsa=%.1f rsa=%.1f\n", r_ec, r_rsa);
	EC_KEY_free(ec);
	RSA_free(rsa);
	BN_free(e);
	return 0;
}
