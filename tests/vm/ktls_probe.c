/* ktls_probe: does this kernel's kTLS work, for each version and cipher mxd
 * hands to it? Runs inside the VM before mxd starts, so a failure there
 * says "the VM/kernel" and not "mxd".
 *
 * For TLS 1.2 and 1.3 x AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305: a
 * loopback TCP pair, TLS_TX on one end and TLS_RX with the same fixed key
 * on the other, 256 KiB each way, compared byte for byte. Then a negative
 * control: RX with one key byte flipped must refuse the first record
 * (EBADMSG), which shows the kernel really authenticates what it decrypts.
 *
 * Prints one line per case ("probe ok tls1.3 chacha20-poly1305") and exits
 * 0 only when every case behaved. No TLS library: the keys are made up,
 * only the kernel's record layer is exercised. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define XFER (256 * 1024)

struct info {
	unsigned char bytes[64];
	size_t len;
};

struct variant {
	const char *name;
	uint16_t cipher;
};

static const struct variant variants[] = {
	{"aes-128-gcm", TLS_CIPHER_AES_GCM_128},
	{"aes-256-gcm", TLS_CIPHER_AES_GCM_256},
	{"chacha20-poly1305", TLS_CIPHER_CHACHA20_POLY1305},
};

/* A crypto_info with a key/iv/salt that depend on the seed only. */
static void make_info(struct info *out, uint16_t version, uint16_t cipher, unsigned seed,
		      bool corrupt)
{
	unsigned char fill[64];
	for (size_t i = 0; i < sizeof fill; i++)
		fill[i] = (unsigned char)(seed * 131u + i * 29u + 7u);
	memset(out, 0, sizeof *out);
	switch (cipher) {
	case TLS_CIPHER_AES_GCM_128: {
		struct tls12_crypto_info_aes_gcm_128 ci = {0};
		ci.info.version = version;
		ci.info.cipher_type = cipher;
		memcpy(ci.key, fill, sizeof ci.key);
		memcpy(ci.iv, fill + 32, sizeof ci.iv);
		memcpy(ci.salt, fill + 48, sizeof ci.salt);
		if (corrupt)
			ci.key[3] ^= 0x01;
		memcpy(out->bytes, &ci, sizeof ci);
		out->len = sizeof ci;
		break;
	}
	case TLS_CIPHER_AES_GCM_256: {
		struct tls12_crypto_info_aes_gcm_256 ci = {0};
		ci.info.version = version;
		ci.info.cipher_type = cipher;
		memcpy(ci.key, fill, sizeof ci.key);
		memcpy(ci.iv, fill + 32, sizeof ci.iv);
		memcpy(ci.salt, fill + 48, sizeof ci.salt);
		if (corrupt)
			ci.key[3] ^= 0x01;
		memcpy(out->bytes, &ci, sizeof ci);
		out->len = sizeof ci;
		break;
	}
	default: {
		struct tls12_crypto_info_chacha20_poly1305 ci = {0};
		ci.info.version = version;
		ci.info.cipher_type = cipher;
		memcpy(ci.key, fill, sizeof ci.key);
		memcpy(ci.iv, fill + 32, sizeof ci.iv);
		if (corrupt)
			ci.key[3] ^= 0x01;
		memcpy(out->bytes, &ci, sizeof ci);
		out->len = sizeof ci;
		break;
	}
	}
}

/* A connected loopback TCP pair. */
static int tcp_pair(int fds[2])
{
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0)
		return -1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) < 0) {
		close(l);
		return -1;
	}
	fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&a, sizeof a) < 0) {
		close(l);
		return -1;
	}
	fds[1] = accept(l, NULL, NULL);
	close(l);
	return fds[1] < 0 ? -1 : 0;
}

static int install(int fd, int dir, const struct info *ci)
{
	if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0 && errno != EEXIST)
		return -errno;
	if (setsockopt(fd, SOL_TLS, dir, ci->bytes, (socklen_t)ci->len) < 0)
		return -errno;
	return 0;
}

static void pattern(unsigned char *p, size_t n, unsigned seed)
{
	uint32_t x = 2463534242u ^ seed;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (unsigned char)x;
	}
}

/* from -> to through kTLS; 0 when every byte came through unchanged. */
static int one_way(int from, int to, unsigned seed)
{
	static unsigned char sent[XFER], got[XFER];
	pattern(sent, sizeof sent, seed);
	size_t off = 0, in = 0;
	while (in < sizeof got) {
		/* Interleave writes and reads so neither socket buffer fills. */
		if (off < sizeof sent) {
			size_t n = sizeof sent - off < 16384 ? sizeof sent - off : 16384;
			ssize_t w = send(from, sent + off, n, 0);
			if (w < 0)
				return fprintf(stderr, "  send: %s\n", strerror(errno)), -1;
			off += (size_t)w;
		}
		ssize_t r = recv(to, got + in, sizeof got - in, off < sizeof sent ? MSG_DONTWAIT : 0);
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (r < 0)
			return fprintf(stderr, "  recv: %s\n", strerror(errno)), -1;
		if (r == 0)
			return fprintf(stderr, "  recv: early EOF at %zu\n", in), -1;
		in += (size_t)r;
	}
	if (memcmp(sent, got, sizeof got) != 0)
		return fprintf(stderr, "  data differs\n"), -1;
	return 0;
}

static bool run_case(uint16_t version, const struct variant *v)
{
	const char *vname = version == TLS_1_2_VERSION ? "tls1.2" : "tls1.3";
	int fds[2];
	if (tcp_pair(fds) < 0) {
		printf("probe FAIL %s %s: loopback pair: %s\n", vname, v->name, strerror(errno));
		return false;
	}
	struct info a, b;
	make_info(&a, version, v->cipher, 1, false); /* fds[0] -> fds[1] */
	make_info(&b, version, v->cipher, 2, false); /* fds[1] -> fds[0] */
	int rc;
	if ((rc = install(fds[0], TLS_TX, &a)) < 0 || (rc = install(fds[1], TLS_RX, &a)) < 0 ||
	    (rc = install(fds[1], TLS_TX, &b)) < 0 || (rc = install(fds[0], TLS_RX, &b)) < 0) {
		printf("probe FAIL %s %s: setsockopt: %s\n", vname, v->name, strerror(-rc));
		close(fds[0]);
		close(fds[1]);
		return false;
	}
	bool ok = one_way(fds[0], fds[1], 11) == 0 && one_way(fds[1], fds[0], 12) == 0;
	close(fds[0]);
	close(fds[1]);
	if (!ok) {
		printf("probe FAIL %s %s: transfer\n", vname, v->name);
		return false;
	}

	/* Negative control: the receiver has a different key. */
	if (tcp_pair(fds) < 0) {
		printf("probe FAIL %s %s: loopback pair: %s\n", vname, v->name, strerror(errno));
		return false;
	}
	struct info bad;
	make_info(&bad, version, v->cipher, 1, true);
	if ((rc = install(fds[0], TLS_TX, &a)) < 0 || (rc = install(fds[1], TLS_RX, &bad)) < 0) {
		printf("probe FAIL %s %s: setsockopt (control): %s\n", vname, v->name, strerror(-rc));
		close(fds[0]);
		close(fds[1]);
		return false;
	}
	char msg[100] = "this record must not decrypt";
	char got[100];
	ssize_t w = send(fds[0], msg, sizeof msg, 0);
	ssize_t r = w == (ssize_t)sizeof msg ? recv(fds[1], got, sizeof got, 0) : -2;
	int err = errno;
	close(fds[0]);
	close(fds[1]);
	if (r >= 0 || r == -2 || err != EBADMSG) {
		printf("probe FAIL %s %s: wrong key was not refused (recv %zd, %s)\n", vname, v->name, r,
		       r < 0 ? strerror(err) : "data");
		return false;
	}
	printf("probe ok %s %s (wrong key refused: %s)\n", vname, v->name, strerror(err));
	return true;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	bool all = true;
	const uint16_t versions[] = {TLS_1_2_VERSION, TLS_1_3_VERSION};
	for (size_t i = 0; i < 2; i++)
		for (size_t j = 0; j < sizeof variants / sizeof variants[0]; j++)
			all &= run_case(versions[i], &variants[j]);
	return all ? 0 : 1;
}
