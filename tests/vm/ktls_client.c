/* ktls_client: a small SMTP-over-TLS client for the kTLS VM test.
 *
 * One source, two builds (tests/vm/ktls-test makes both):
 *   ktls_client      against BoringSSL (Debian's android-libboringssl),
 *                    dynamic, rpath to its private directory;
 *   ktls_client_ossl against the system OpenSSL, static. BoringSSL cannot
 *                    choose a TLS 1.3 cipher suite (it picks AES-GCM or
 *                    ChaCha20 by what the CPU has); OpenSSL can
 *                    (SSL_CTX_set_ciphersuites), so the TLS 1.3 cases of
 *                    the matrix go through this one.
 *
 * It connects, reads the 220, EHLO, STARTTLS (or TLS from the first byte for
 * smtps), handshakes with the version and cipher asked for, EHLO again,
 * MAIL, RCPT, DATA with a generated message of exactly -n bytes
 * (deterministic from -s; dot-stuffed on the wire), QUIT, close_notify.
 * Prints one line "ktls_client: ok ... id=QUEUEID" and exits 0 only when the
 * message got its 250 (and, with -e, the negotiated cipher was the one
 * expected). -o FILE keeps the message exactly as the spool should hold it
 * after mxd's Received: header.
 *
 *   ktls_client -S   filter: copy stdin to stdout without the first header
 *                    field (mxd's Received: and its folded lines), so the
 *                    rest can be compared with cmp against -o's file.
 *
 * Exit: 0 message accepted, 1 failure (TLS, SMTP, I/O), 2 usage. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#ifdef OPENSSL_IS_BORINGSSL
#define LIBNAME "boringssl"
#else
#define LIBNAME "openssl"
#endif

struct opts {
	const char *host;
	int port;
	bool smtps;
	const char *version;   /* "1.2", "1.3" or NULL (library default) */
	const char *cipher;    /* TLS 1.2 cipher list / TLS 1.3 suite */
	const char *expect;    /* standard name the session must end up with */
	const char *label;
	const char *out_path;
	const char *ca_path;
	const char *name;      /* SNI and the name to verify */
	size_t size;
	unsigned seed;
	int timeout_s;
	bool key_update;       /* TLS 1.3: send a KeyUpdate before MAIL */
};

static struct opts o = {
	.host = "127.0.0.1",
	.label = "ktls",
	.size = 4096,
	.seed = 1,
	.timeout_s = 120,
};

struct conn {
	int fd;
	SSL *ssl;
	char in[8192];
	size_t in_len, in_off;
};

static void failf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stdout, "ktls_client: FAIL %s: ", o.label);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	unsigned long e;
	char buf[256];
	while ((e = ERR_get_error()) != 0) {
		ERR_error_string_n(e, buf, sizeof buf);
		fprintf(stdout, "ktls_client:   %s\n", buf);
	}
	fflush(stdout);
	exit(1);
}

/* ---- wire I/O: plaintext socket before TLS, SSL after ---- */

static void put_raw(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		if (c->ssl) {
			int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
			int w = SSL_write(c->ssl, p, chunk);
			if (w <= 0) {
				int e = SSL_get_error(c->ssl, w);
				failf("SSL_write: %s", e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "tls error");
			}
			p += w;
			n -= (size_t)w;
		} else {
			ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				failf("send: %s", strerror(errno));
			}
			p += w;
			n -= (size_t)w;
		}
	}
}

static void put_line(struct conn *c, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2)
		failf("command too long");
	memcpy(line + n, "\r\n", 2);
	put_raw(c, line, (size_t)n + 2);
}

static bool fill(struct conn *c)
{
	if (c->in_off > 0) {
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	if (c->in_len == sizeof c->in)
		failf("reply line too long");
	for (;;) {
		if (c->ssl) {
			int r = SSL_read(c->ssl, c->in + c->in_len, (int)(sizeof c->in - c->in_len));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_ZERO_RETURN)
					return false;
				if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
					failf("SSL_read: %s", r == 0 || errno == 0 ? "connection closed without close_notify"
										 : strerror(errno));
				failf("SSL_read: error %d", e);
			}
			c->in_len += (size_t)r;
			return true;
		}
		ssize_t r = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			failf("recv: %s", strerror(errno));
		if (r == 0)
			return false;
		c->in_len += (size_t)r;
		return true;
	}
}

/* One reply line without its CRLF into line; false at EOF. */
static bool get_line(struct conn *c, char *line, size_t cap)
{
	for (;;) {
		char *start = c->in + c->in_off;
		char *nl = memchr(start, '\n', c->in_len - c->in_off);
		if (nl) {
			size_t n = (size_t)(nl - start);
			if (n > 0 && start[n - 1] == '\r')
				n--;
			if (n >= cap)
				n = cap - 1;
			memcpy(line, start, n);
			line[n] = '\0';
			c->in_off += (size_t)(nl - start) + 1;
			return true;
		}
		if (!fill(c))
			return false;
	}
}

/* A whole (possibly multi-line) reply; its code, and its text lines joined
 * with '\n' into text. */
static int get_reply(struct conn *c, const char *what, char *text, size_t cap)
{
	char line[1024];
	size_t used = 0;
	if (text && cap)
		text[0] = '\0';
	for (;;) {
		if (!get_line(c, line, sizeof line))
			failf("connection closed waiting for the reply to %s", what);
		size_t n = strlen(line);
		if (n < 3 || line[0] < '2' || line[0] > '5')
			failf("bad reply line to %s: \"%s\"", what, line);
		if (text && used + n + 2 < cap) {
			memcpy(text + used, line, n);
			used += n;
			text[used++] = '\n';
			text[used] = '\0';
		}
		if (n == 3 || line[3] == ' ')
			return atoi(line);
		if (line[3] != '-')
			failf("bad reply line to %s: \"%s\"", what, line);
	}
}

static void expect_code(struct conn *c, const char *what, int want, char *text, size_t cap)
{
	char buf[4096];
	if (!text) {
		text = buf;
		cap = sizeof buf;
	}
	int code = get_reply(c, what, text, cap);
	if (code != want)
		failf("%s: wanted %d, got: %s", what, want, text);
}

/* ---- the message ---- */

static uint32_t rng_state;

static uint32_t rng(void)
{
	uint32_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return rng_state = x;
}

/* Exactly o.size bytes (if the headers fit): headers, blank line, body
 * lines of printable ASCII with some lines that start with '.' and some that
 * are a lone '.', all CRLF-terminated. */
static char *make_message(size_t *len_out)
{
	char hdr[512];
	int h = snprintf(hdr, sizeof hdr,
			 "From: <sender@example.org>\r\n"
			 "To: <rcpt@example.com>\r\n"
			 "Subject: ktls vm test %s\r\n"
			 "Message-ID: <%s.%u@vm.test>\r\n"
			 "\r\n",
			 o.label, o.label, o.seed);
	size_t size = o.size < (size_t)h + 3 ? (size_t)h + 3 : o.size;
	char *m = malloc(size);
	if (!m)
		failf("out of memory");
	memcpy(m, hdr, (size_t)h);
	size_t off = (size_t)h;
	rng_state = 0x9e3779b9u ^ (o.seed * 2654435761u);
	if (rng_state == 0)
		rng_state = 1;
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				       "0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
	while (off < size) {
		size_t left = size - off; /* >= 1 */
		size_t want;
		uint32_t r = rng();
		if (r % 97 == 0)
			want = 900 + r % 90; /* long lines now and then */
		else
			want = r % 120;
		if (left < 2) {
			/* One byte short of a CRLF: make the previous line longer. */
			m[off - 2] = 'x';
			m[off - 1] = '\r';
			m[off] = '\n';
			off++;
			break;
		}
		if (want + 2 > left || left - (want + 2) < 2)
			want = left - 2; /* the last line fills the size exactly */
		char *line = m + off;
		for (size_t i = 0; i < want; i++)
			line[i] = alphabet[rng() % (sizeof alphabet - 1)];
		if (want > 0 && r % 13 == 0)
			line[0] = '.'; /* must be dot-stuffed */
		if (want == 1 && (rng() & 1))
			line[0] = '.'; /* a lone dot: would end DATA unstuffed */
		line[want] = '\r';
		line[want + 1] = '\n';
		off += want + 2;
	}
	*len_out = off;
	return m;
}

/* The message on the wire: a '.' at the start of a line doubled, then the
 * terminator. Sent in pieces so nothing near 2x the message is built. */
static void send_data(struct conn *c, const char *m, size_t len)
{
	static char out[64 * 1024 + 16];
	size_t n = 0;
	bool bol = true;
	for (size_t i = 0; i < len; i++) {
		if (bol && m[i] == '.')
			out[n++] = '.';
		out[n++] = m[i];
		bol = m[i] == '\n';
		if (n >= 64 * 1024) {
			put_raw(c, out, n);
			n = 0;
		}
	}
	memcpy(out + n, ".\r\n", 3);
	n += 3;
	put_raw(c, out, n);
}

/* ---- TLS ---- */

static int version_number(const char *v)
{
	if (!v)
		return 0;
	if (strcmp(v, "1.2") == 0)
		return TLS1_2_VERSION;
	if (strcmp(v, "1.3") == 0)
		return TLS1_3_VERSION;
	fprintf(stderr, "ktls_client: -V wants 1.2 or 1.3\n");
	exit(2);
}

static SSL_CTX *make_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		failf("SSL_CTX_new");
	int v = version_number(o.version);
	if (v && (!SSL_CTX_set_min_proto_version(ctx, (uint16_t)v) ||
		  !SSL_CTX_set_max_proto_version(ctx, (uint16_t)v)))
		failf("cannot pin the TLS version to %s", o.version);
	if (o.cipher && v == TLS1_2_VERSION) {
#ifdef OPENSSL_IS_BORINGSSL
		if (!SSL_CTX_set_strict_cipher_list(ctx, o.cipher))
			failf("cipher list \"%s\" refused", o.cipher);
#else
		if (!SSL_CTX_set_cipher_list(ctx, o.cipher))
			failf("cipher list \"%s\" refused", o.cipher);
#endif
	} else if (o.cipher && v == TLS1_3_VERSION) {
#ifdef OPENSSL_IS_BORINGSSL
		failf("BoringSSL cannot choose a TLS 1.3 cipher suite; use ktls_client_ossl");
#else
		if (!SSL_CTX_set_ciphersuites(ctx, o.cipher))
			failf("cipher suites \"%s\" refused", o.cipher);
#endif
	} else if (o.cipher) {
		failf("-c needs -V");
	}
	if (o.ca_path) {
		if (!SSL_CTX_load_verify_locations(ctx, o.ca_path, NULL))
			failf("cannot load CA file %s", o.ca_path);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

static void handshake(struct conn *c, SSL_CTX *ctx)
{
	if (c->in_len != c->in_off)
		failf("server sent bytes after its 220 to STARTTLS");
	c->in_len = c->in_off = 0;
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		failf("SSL_new");
	if (o.name) {
		SSL_set_tlsext_host_name(ssl, o.name);
		if (o.ca_path && !X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), o.name, strlen(o.name)))
			failf("X509_VERIFY_PARAM_set1_host");
	}
	SSL_set_fd(ssl, c->fd);
	int r = SSL_connect(ssl);
	if (r != 1)
		failf("handshake: error %d", SSL_get_error(ssl, r));
	c->ssl = ssl;
	const char *std = SSL_CIPHER_standard_name(SSL_get_current_cipher(ssl));
	if (o.expect && (!std || strcmp(std, o.expect) != 0))
		failf("negotiated %s %s, wanted %s", SSL_get_version(ssl), std ? std : "?", o.expect);
}

/* ---- the session ---- */

static int dial(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
	if (inet_pton(AF_INET, o.host, &a.sin_addr) != 1)
		failf("-H wants an IPv4 address");
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		failf("socket: %s", strerror(errno));
	struct timeval tv = {.tv_sec = o.timeout_s};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
		failf("connect %s:%d: %s", o.host, o.port, strerror(errno));
	return fd;
}

static int run_session(void)
{
	size_t len;
	char *msg = make_message(&len);
	if (o.out_path) {
		FILE *f = fopen(o.out_path, "wb");
		if (!f || fwrite(msg, 1, len, f) != len || fclose(f) != 0)
			failf("cannot write %s: %s", o.out_path, strerror(errno));
	}

	SSL_CTX *ctx = make_ctx();
	struct conn c = {.fd = dial()};
	char text[4096];

	if (o.smtps)
		handshake(&c, ctx);
	expect_code(&c, "greeting", 220, NULL, 0);
	put_line(&c, "EHLO client.vm.test");
	expect_code(&c, "EHLO", 250, text, sizeof text);
	if (!o.smtps) {
		if (!strstr(text, "STARTTLS"))
			failf("EHLO does not offer STARTTLS: %s", text);
		put_line(&c, "STARTTLS");
		expect_code(&c, "STARTTLS", 220, NULL, 0);
		handshake(&c, ctx);
		put_line(&c, "EHLO client.vm.test");
		expect_code(&c, "EHLO after STARTTLS", 250, text, sizeof text);
		if (strstr(text, "STARTTLS"))
			failf("EHLO inside TLS offers STARTTLS again");
	}
	if (o.key_update) {
		if (SSL_version(c.ssl) != TLS1_3_VERSION)
			failf("-k needs TLS 1.3");
		if (!SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED))
			failf("SSL_key_update");
	}
	put_line(&c, "MAIL FROM:<sender@example.org> SIZE=%zu", len);
	expect_code(&c, "MAIL", 250, NULL, 0);
	put_line(&c, "RCPT TO:<rcpt@example.com>");
	expect_code(&c, "RCPT", 250, NULL, 0);
	put_line(&c, "DATA");
	expect_code(&c, "DATA", 354, NULL, 0);
	send_data(&c, msg, len);
	int code = get_reply(&c, "end of data", text, sizeof text);
	if (code != 250)
		failf("message refused: %s", text);
	char id[128] = "?";
	const char *q = strstr(text, "queued as ");
	if (q)
		sscanf(q + 10, "%127[^ \r\n]", id);
	put_line(&c, "QUIT");
	expect_code(&c, "QUIT", 221, NULL, 0);
	/* close_notify: mxd must see a clean close on the kernel path too. */
	SSL_shutdown(c.ssl);

	printf("ktls_client: ok %s lib=%s proto=%s cipher=%s bytes=%zu id=%s\n", o.label, LIBNAME,
	       SSL_get_version(c.ssl), SSL_CIPHER_standard_name(SSL_get_current_cipher(c.ssl)), len,
	       id);
	SSL_free(c.ssl);
	close(c.fd);
	SSL_CTX_free(ctx);
	free(msg);
	return 0;
}

/* -S: stdin to stdout without the first header field. */
static int strip_first_header(void)
{
	static char buf[1 << 16];
	enum { FIRST_LINE, LINE_START, CONT_LINE, REST } st = FIRST_LINE;
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
		size_t i = 0;
		while (st != REST && i < n) {
			char ch = buf[i];
			switch (st) {
			case FIRST_LINE:
			case CONT_LINE:
				if (ch == '\n')
					st = LINE_START;
				i++;
				break;
			case LINE_START:
				if (ch == ' ' || ch == '\t') {
					st = CONT_LINE;
					i++;
				} else {
					st = REST;
				}
				break;
			case REST:
				break;
			}
		}
		if (st == REST && fwrite(buf + i, 1, n - i, stdout) != n - i)
			return 1;
	}
	return st == REST || st == LINE_START ? 0 : 1;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: ktls_client -p PORT [-H ADDR] [-m starttls|smtps] [-V 1.2|1.3] [-c CIPHER]\n"
		"                   [-e STANDARD_NAME] [-n BYTES] [-s SEED] [-l LABEL] [-o FILE]\n"
		"                   [-C CAFILE] [-N NAME] [-t SECONDS] [-k]\n"
		"       ktls_client -S  < spooled-message > message-without-Received\n");
	exit(2);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* A server that drops the connection must show up as a failed write,
	 * not as death by SIGPIPE inside SSL_write. */
	signal(SIGPIPE, SIG_IGN);
	int ch;
	while ((ch = getopt(argc, argv, "p:H:m:V:c:e:n:s:l:o:C:N:t:kS")) != -1) {
		switch (ch) {
		case 'p': o.port = atoi(optarg); break;
		case 'H': o.host = optarg; break;
		case 'm':
			if (strcmp(optarg, "smtps") == 0)
				o.smtps = true;
			else if (strcmp(optarg, "starttls") != 0)
				usage();
			break;
		case 'V': o.version = optarg; break;
		case 'c': o.cipher = optarg; break;
		case 'e': o.expect = optarg; break;
		case 'n': o.size = strtoull(optarg, NULL, 10); break;
		case 's': o.seed = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'l': o.label = optarg; break;
		case 'o': o.out_path = optarg; break;
		case 'C': o.ca_path = optarg; break;
		case 'N': o.name = optarg; break;
		case 't': o.timeout_s = atoi(optarg); break;
		case 'k': o.key_update = true; break;
		case 'S': return strip_first_header();
		default: usage();
		}
	}
	if (o.port <= 0 || o.port > 65535 || optind != argc)
		usage();
	return run_session();
}
