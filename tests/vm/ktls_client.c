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
 * -W SPEC (the wire cases): the client runs its TLS over memory BIOs and
 * decides itself what each send() carries, to put application data in the
 * same TCP segment as the client's Finished, where mxd must decrypt it in
 * userspace before it hands the receive side to the kernel. SPEC is a
 * comma-separated list:
 *   coalesce  the first command inside TLS (EHLO) leaves in the same send()
 *             as the handshake's last flight (the client's Finished);
 *   pipeline  EHLO, MAIL and RCPT (three records) leave with it;
 *   split=N   only the first N bytes of those records go with the Finished,
 *             the rest follows in a second send() WIRE_SPLIT_PAUSE_MS later,
 *             so mxd holds a partial record when the handshake ends (N < 5:
 *             a partial record header);
 *   split=R:N the same with the cut N bytes into the command record after R
 *             whole ones (pipeline,split=1:2: the EHLO record whole and 2
 *             header bytes of MAIL's; split=1:0 cuts on the boundary);
 *   keyupdate TLS 1.3: a KeyUpdate (update_not_requested) goes first, in
 *             its own record: it counts as a command record for split=R:N.
 *             mxd decrypts it in userspace, so the keys it then gives the
 *             kernel must be the updated ones (or it must stay in
 *             userspace, or close the session saying why).
 * For smtps the commands go out before the 220 has been read (mxd must keep
 * them until after its greeting). TLS 1.2 needs False Start for this (the
 * client's Finished is only its last flight when it does not wait for the
 * server's): BoringSSL builds only. Each send() of a -W session up to and
 * including the ones that carry the Finished is logged as "ktls_client:
 * wire send#K ..." with the TLS records it carried (type/length).
 *
 * -m plain: no TLS (the inbound leg of the relay cases, so that every
 * kernel TLS record counted in those runs is an outbound one); -r RCPT:
 * the recipient (default rcpt@example.com).
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
	bool plain;            /* -m plain: no TLS at all (the relay cases' inbound leg) */
	const char *rcpt;      /* -r: the recipient */
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
	bool wire;             /* -W: memory BIOs, we choose what each send() carries */
	bool wire_pipeline;    /* -W pipeline: EHLO, MAIL, RCPT behind the Finished */
	long wire_split;       /* -W split=[R:]N: bytes of them in the Finished's send(); -1 all */
	long wire_split_rec;   /* R: whole command records before those N bytes */
	bool wire_keyupdate;   /* -W keyupdate: a TLS 1.3 KeyUpdate before them */
};

static struct opts o = {
	.host = "127.0.0.1",
	.label = "ktls",
	.rcpt = "rcpt@example.com",
	.size = 4096,
	.seed = 1,
	.timeout_s = 120,
	.wire_split = -1,
};

/* -W split=N: the pause between the two send()s, long enough for mxd to
 * take the first segment alone (finish the handshake, stop its multishot
 * recv, wait for the rest of the record with its one-shot recv). */
#define WIRE_SPLIT_PAUSE_MS 300

struct conn {
	int fd;
	SSL *ssl;
	char in[8192];
	size_t in_len, in_off;
	/* -W: SSL reads rbio and writes wbio (memory BIOs, owned by ssl) */
	BIO *rbio, *wbio;
	bool hold;             /* keep records in wbio: they go out with the Finished */
	unsigned held_writes;  /* SSL_writes while holding: one record each */
	unsigned sends;        /* send() calls on the TLS connection so far */
	bool released;         /* the held bytes are out: stop logging each send() */
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

static void send_all(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
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

/* -W: what BoringSSL/OpenSSL wrote to wbio, taken out (caller frees). */
static char *take_wbio(struct conn *c, size_t *len)
{
	size_t n = BIO_pending(c->wbio);
	char *p = malloc(n ? n : 1);
	if (!p)
		failf("out of memory");
	if (n > 0 && BIO_read(c->wbio, p, (int)n) != (int)n)
		failf("BIO_read of the write BIO");
	*len = n;
	return p;
}

/* The TLS records in p[0..n) as "type/length ..." into out. */
static void describe_records(const unsigned char *p, size_t n, char *out, size_t cap)
{
	size_t used = 0;
	out[0] = '\0';
	while (n > 0 && used + 32 < cap) {
		if (n < 5) {
			used += (size_t)snprintf(out + used, cap - used, "%s(%zu header bytes)", used ? " " : "", n);
			break;
		}
		size_t body = (size_t)p[3] << 8 | p[4];
		if (body + 5 > n) {
			used += (size_t)snprintf(out + used, cap - used, "%s%u/%zu(first %zu bytes)", used ? " " : "",
						 p[0], body, n);
			break;
		}
		used += (size_t)snprintf(out + used, cap - used, "%s%u/%zu", used ? " " : "", p[0], body);
		p += body + 5;
		n -= body + 5;
	}
}

/* -W: one send() of whatever wbio holds (nothing while holding). */
static void wire_flush(struct conn *c)
{
	if (c->hold || BIO_pending(c->wbio) == 0)
		return;
	size_t n;
	char *p = take_wbio(c, &n);
	char recs[512];
	describe_records((const unsigned char *)p, n, recs, sizeof recs);
	c->sends++;
	if (!c->released) /* the handshake's flights */
		printf("ktls_client: wire send#%u bytes=%zu records=[%s]\n", c->sends, n, recs);
	send_all(c, p, n);
	free(p);
}

/* -W: bytes from the socket into rbio; false at EOF. */
static bool wire_recv(struct conn *c)
{
	char buf[16384];
	for (;;) {
		ssize_t r = recv(c->fd, buf, sizeof buf, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			failf("recv: %s", strerror(errno));
		if (r == 0) {
			BIO_set_mem_eof_return(c->rbio, 0); /* SSL_read sees the EOF */
			return false;
		}
		if (BIO_write(c->rbio, buf, (int)r) != (int)r)
			failf("BIO_write of the read BIO");
		return true;
	}
}

static void put_raw(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		if (c->ssl && c->rbio) {
			int chunk = n > 16384 ? 16384 : (int)n;
			int w = SSL_write(c->ssl, p, chunk);
			if (w <= 0)
				failf("SSL_write: error %d", SSL_get_error(c->ssl, w));
			if (c->hold)
				c->held_writes++;
			wire_flush(c);
			p += w;
			n -= (size_t)w;
		} else if (c->ssl) {
			int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
			int w = SSL_write(c->ssl, p, chunk);
			if (w <= 0) {
				int e = SSL_get_error(c->ssl, w);
				failf("SSL_write: %s", e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "tls error");
			}
			p += w;
			n -= (size_t)w;
		} else {
			send_all(c, p, n);
			n = 0;
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
			if (c->rbio)
				wire_flush(c); /* whatever reading made the library write */
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ && c->rbio) {
					wire_recv(c); /* at EOF rbio now says so */
					continue;
				}
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
	if (o.wire && v == TLS1_2_VERSION) {
		/* TLS 1.2 full handshake: the client's Finished is followed by
		 * the server's, so only with False Start is the client's
		 * Finished flight its last word before application data. */
#ifdef OPENSSL_IS_BORINGSSL
		SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_FALSE_START);
		SSL_CTX_set_false_start_allowed_without_alpn(ctx, 1);
#else
		failf("-W with TLS 1.2 needs False Start: use the BoringSSL build");
#endif
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

static void check_negotiated(struct conn *c)
{
	const char *std = SSL_CIPHER_standard_name(SSL_get_current_cipher(c->ssl));
	if (o.expect && (!std || strcmp(std, o.expect) != 0))
		failf("negotiated %s %s, wanted %s", SSL_get_version(c->ssl), std ? std : "?", o.expect);
}

/* -W: the handshake over memory BIOs, each flight one send(). It returns
 * with the client's last flight (its Finished) still in wbio: the commands
 * written next join it (wire_release). */
static void handshake_wire(struct conn *c)
{
	c->rbio = BIO_new(BIO_s_mem());
	c->wbio = BIO_new(BIO_s_mem());
	if (!c->rbio || !c->wbio)
		failf("BIO_new");
	SSL_set_bio(c->ssl, c->rbio, c->wbio); /* the SSL owns them now */
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	for (;;) {
		int r = SSL_connect(c->ssl);
		if (r == 1)
			break;
		int e = SSL_get_error(c->ssl, r);
		if (e != SSL_ERROR_WANT_READ)
			failf("handshake: error %d", e);
		wire_flush(c);
		if (!wire_recv(c))
			failf("handshake: connection closed");
	}
#ifdef OPENSSL_IS_BORINGSSL
	if (SSL_version(c->ssl) == TLS1_2_VERSION && !SSL_in_false_start(c->ssl))
		failf("TLS 1.2 without False Start: the client's Finished is not its last flight");
#endif
	c->hold = true;
	c->held_writes = 0;
}

/* -W: the held bytes (the handshake's last flight, then one record per
 * command written since) leave in one send(), or with split=N in two: the
 * flight and N bytes of the commands' records, then the rest after a pause. */
static void wire_release(struct conn *c)
{
	size_t n;
	char *p = take_wbio(c, &n);
	c->hold = false;
	c->released = true;
	/* Record boundaries: the last held_writes records are the commands. */
	size_t offs[64];
	unsigned count = 0;
	for (size_t off = 0; off < n;) {
		if (n - off < 5 || count == 64)
			failf("wire: the held bytes are not whole TLS records");
		size_t len = 5 + ((size_t)(unsigned char)p[off + 3] << 8 | (unsigned char)p[off + 4]);
		if (len > n - off)
			failf("wire: the held bytes are not whole TLS records");
		offs[count++] = off;
		off += len;
	}
	if (count <= c->held_writes)
		failf("wire: nothing of the handshake was left to send with the commands (%u records, %u "
		      "commands): the Finished already went out alone",
		      count, c->held_writes);
	size_t hs = offs[count - c->held_writes]; /* bytes of the handshake's last flight */
	for (unsigned i = count - c->held_writes; i < count; i++)
		if (p[offs[i]] != 23)
			failf("wire: record %u of the commands has type %u", i, (unsigned char)p[offs[i]]);
	size_t app = n - hs;
	char hs_recs[256], app_recs[256];
	describe_records((const unsigned char *)p, hs, hs_recs, sizeof hs_recs);
	describe_records((const unsigned char *)p + hs, app, app_recs, sizeof app_recs);
	size_t first = n;
	if (o.wire_split >= 0) {
		if (o.wire_split_rec >= (long)c->held_writes)
			failf("wire: split=%ld:%ld, but there are only %u command records", o.wire_split_rec,
			      o.wire_split, c->held_writes);
		first = offs[count - c->held_writes + (unsigned)o.wire_split_rec] + (size_t)o.wire_split;
		if (first <= hs || first >= n)
			failf("wire: split=%ld:%ld is not inside the %zu bytes of the commands' records",
			      o.wire_split_rec, o.wire_split, app);
	}
	char cut[256];
	describe_records((const unsigned char *)p + hs, first - hs, cut, sizeof cut);
	c->sends++;
	printf("ktls_client: wire send#%u bytes=%zu = Finished flight %zu [%s] + %zu of the %zu bytes of "
	       "the records behind it [%s]%s\n",
	       c->sends, first, hs, hs_recs, first - hs, app, cut,
	       first < n ? " (split: the rest follows)" : " (all in one send)");
	send_all(c, p, first);
	if (first < n) {
		usleep(WIRE_SPLIT_PAUSE_MS * 1000);
		c->sends++;
		printf("ktls_client: wire send#%u bytes=%zu = the rest of the records behind the Finished, %d "
		       "ms later (all of them: [%s])\n",
		       c->sends, n - first, WIRE_SPLIT_PAUSE_MS, app_recs);
		send_all(c, p + first, n - first);
	}
	free(p);
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
	c->ssl = ssl;
	if (o.wire) {
		handshake_wire(c);
		return;
	}
	SSL_set_fd(ssl, c->fd);
	int r = SSL_connect(ssl);
	if (r != 1)
		failf("handshake: error %d", SSL_get_error(ssl, r));
	check_negotiated(c);
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
	/* mxd logs "open ... port=N": how a failed session is found there */
	struct sockaddr_in me;
	socklen_t me_len = sizeof me;
	if (getsockname(fd, (struct sockaddr *)&me, &me_len) == 0)
		printf("ktls_client: connected port=%u\n", ntohs(me.sin_port));
	return fd;
}

/* -W: the commands that go out with the client's Finished. */
static void first_commands(struct conn *c, size_t len)
{
	if (o.wire_keyupdate) {
		if (SSL_version(c->ssl) != TLS1_3_VERSION)
			failf("-W keyupdate needs TLS 1.3");
		if (!SSL_key_update(c->ssl, SSL_KEY_UPDATE_NOT_REQUESTED))
			failf("SSL_key_update");
#ifndef OPENSSL_IS_BORINGSSL
		/* OpenSSL only schedules it: the handshake call writes it */
		if (SSL_do_handshake(c->ssl) != 1)
			failf("SSL_do_handshake (KeyUpdate)");
#endif
		c->held_writes++;
	}
	put_line(c, "EHLO client.vm.test");
	if (o.wire_pipeline) {
		put_line(c, "MAIL FROM:<sender@example.org> SIZE=%zu", len);
		put_line(c, "RCPT TO:<%s>", o.rcpt);
	}
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

	/* -W: the first commands inside TLS are written while the client's
	 * Finished is still held, and leave with it. */
	bool piped = o.wire && o.wire_pipeline;
	if (o.plain) {
		expect_code(&c, "greeting", 220, NULL, 0);
		put_line(&c, "EHLO client.vm.test");
		expect_code(&c, "EHLO", 250, text, sizeof text);
	} else if (o.smtps) {
		handshake(&c, ctx);
		if (o.wire) {
			first_commands(&c, len);
			wire_release(&c);
		}
		expect_code(&c, "greeting", 220, NULL, 0);
		if (!o.wire)
			put_line(&c, "EHLO client.vm.test");
		expect_code(&c, "EHLO", 250, text, sizeof text);
	} else {
		expect_code(&c, "greeting", 220, NULL, 0);
		put_line(&c, "EHLO client.vm.test");
		expect_code(&c, "EHLO", 250, text, sizeof text);
		if (!strstr(text, "STARTTLS"))
			failf("EHLO does not offer STARTTLS: %s", text);
		put_line(&c, "STARTTLS");
		expect_code(&c, "STARTTLS", 220, NULL, 0);
		handshake(&c, ctx);
		if (o.wire) {
			first_commands(&c, len);
			wire_release(&c);
		} else {
			put_line(&c, "EHLO client.vm.test");
		}
		expect_code(&c, "EHLO after STARTTLS", 250, text, sizeof text);
		if (strstr(text, "STARTTLS"))
			failf("EHLO inside TLS offers STARTTLS again");
	}
	if (o.wire)
		check_negotiated(&c); /* TLS 1.2 False Start: done only now */
	if (o.key_update) {
		if (SSL_version(c.ssl) != TLS1_3_VERSION)
			failf("-k needs TLS 1.3");
		if (!SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED))
			failf("SSL_key_update");
	}
	if (!piped)
		put_line(&c, "MAIL FROM:<sender@example.org> SIZE=%zu", len);
	expect_code(&c, "MAIL", 250, NULL, 0);
	if (!piped)
		put_line(&c, "RCPT TO:<%s>", o.rcpt);
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
	if (c.ssl)
		SSL_shutdown(c.ssl);
	if (c.rbio)
		wire_flush(&c);

	printf("ktls_client: ok %s lib=%s proto=%s cipher=%s bytes=%zu id=%s\n", o.label, LIBNAME,
	       c.ssl ? SSL_get_version(c.ssl) : "none",
	       c.ssl ? SSL_CIPHER_standard_name(SSL_get_current_cipher(c.ssl)) : "none", len, id);
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
		"usage: ktls_client -p PORT [-H ADDR] [-m starttls|smtps|plain] [-V 1.2|1.3] [-c CIPHER]\n"
		"                   [-e STANDARD_NAME] [-n BYTES] [-s SEED] [-l LABEL] [-o FILE]\n"
		"                   [-C CAFILE] [-N NAME] [-t SECONDS] [-k] [-r RCPT]\n"
		"                   [-W coalesce|pipeline|keyupdate|split=[R:]N,...]\n"
		"       ktls_client -S  < spooled-message > message-without-Received\n");
	exit(2);
}

/* -W coalesce | pipeline | split=N, comma-separated. */
static void parse_wire(const char *spec)
{
	char buf[128];
	snprintf(buf, sizeof buf, "%s", spec);
	o.wire = true;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char *end;
		if (strcmp(t, "coalesce") == 0)
			continue;
		if (strcmp(t, "pipeline") == 0) {
			o.wire_pipeline = true;
		} else if (strcmp(t, "keyupdate") == 0) {
			o.wire_keyupdate = true;
		} else if (strncmp(t, "split=", 6) == 0 && (o.wire_split = strtol(t + 6, &end, 10)) >= 0 &&
			   end != t + 6 && (*end == '\0' || *end == ':')) {
			if (*end == ':') {
				const char *n = end + 1;
				o.wire_split_rec = o.wire_split;
				o.wire_split = strtol(n, &end, 10);
				if (end == n || *end != '\0' || o.wire_split < 0)
					usage();
			}
		} else {
			fprintf(stderr, "ktls_client: -W: unknown \"%s\"\n", t);
			usage();
		}
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* A server that drops the connection must show up as a failed write,
	 * not as death by SIGPIPE inside SSL_write. */
	signal(SIGPIPE, SIG_IGN);
	int ch;
	while ((ch = getopt(argc, argv, "p:H:m:V:c:e:n:s:l:o:C:N:t:kW:Sr:")) != -1) {
		switch (ch) {
		case 'p': o.port = atoi(optarg); break;
		case 'H': o.host = optarg; break;
		case 'm':
			if (strcmp(optarg, "smtps") == 0)
				o.smtps = true;
			else if (strcmp(optarg, "plain") == 0)
				o.plain = true;
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
		case 'W': parse_wire(optarg); break;
		case 'S': return strip_first_header();
		case 'r': o.rcpt = optarg; break;
		default: usage();
		}
	}
	if (o.port <= 0 || o.port > 65535 || optind != argc)
		usage();
	int records = (o.wire_pipeline ? 3 : 1) + o.wire_keyupdate;
	if (o.wire_split_rec >= records) {
		fprintf(stderr, "ktls_client: -W split=%ld:...: there are %d command records\n", o.wire_split_rec,
			records);
		usage();
	}
	return run_session();
}
