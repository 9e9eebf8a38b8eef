/* tls_hammer: the load generator of bench/tls-vs-postfix (not part of the
 * CMake build; the script compiles it with cc against BoringSSL). It also
 * builds against the system OpenSSL (`cc tls_hammer.c -lssl -lcrypto
 * -lpthread`, without `speed`), but BoringSSL is the cheaper client: about
 * 4400 full ECDSA handshakes per client CPU-second here, OpenSSL 3.0 about
 * 2800.
 *
 *   tls_hammer hs -p PORT [-c CONNS] [-t SECS] [-w WARMUP] [-s SERVER_CPU] [-C CLIENT_CPU]
 *       Full TLS handshakes on an implicit-TLS (smtps) port: CONNS
 *       non-blocking connections driven by one epoll loop; each one
 *       connects, handshakes (never resumes: no session is ever offered),
 *       reads the whole 220 greeting through TLS, sends close_notify,
 *       closes, and is replaced by a new one. Only handshakes completed in
 *       the SECS after the WARMUP seconds are counted; over that window it
 *       also samples /proc/stat for SERVER_CPU and CLIENT_CPU, its own
 *       getrusage and (-g) the CPU time of the server's cgroup, so the
 *       caller can tell who was the bottleneck and what a handshake costs
 *       each side even when other work shares the CPUs.
 *
 *   tls_hammer bulk -p PORT [-c CONNS] [-m MSGS] [-n BYTES] [-s ..] [-C ..]
 *       CONNS threads, each one SMTP session: 220, EHLO, STARTTLS, TLS
 *       handshake, EHLO, then MSGS messages of exactly BYTES bytes each
 *       (MAIL, RCPT, DATA, content, ".", 250), QUIT. The time of each
 *       message is from sending DATA to reading its 250. Prints the
 *       SHA-256 of the message, for comparing with what was stored.
 *
 *   tls_hammer speed [-t SECS]
 *       BoringSSL's own one-core rates on this CPU, per second of CPU
 *       time: ECDSA P-256 and RSA-2048 (PSS) signatures, X25519 (two key
 *       pairs and one shared secret per op), AES-128-GCM sealing 16 KiB.
 *
 * Client TLS: library defaults (TLS 1.3, BoringSSL's cipher order, which
 * puts AES-128-GCM first on a CPU with AES-NI) and X25519 as the only
 * group, so neither side pays for a HelloRetryRequest. The server's
 * certificate is not verified (no chain building), but its handshake
 * signature is, as TLS requires.
 *
 * Every result is printed as one line of key=value pairs on stdout.
 * Exit: 0 ok, 1 failure, 2 usage. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#ifdef OPENSSL_IS_BORINGSSL
#include <openssl/aead.h>
#include <openssl/bn.h>
#include <openssl/curve25519.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#define LIBNAME "boringssl"
#else
#include <openssl/objects.h>
#define LIBNAME "openssl"
#endif

static int port;
static int conns = 16;
static double secs = 10, warmup = 1;
static int msgs = 2;
static size_t msg_bytes = 100u << 20;
static int server_cpu = 1, client_cpu = 0;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tls_hammer: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* ---- CPU accounting ---- */

struct cpu_sample {
	unsigned long long busy[2], total[2]; /* [0] server CPU, [1] client CPU */
	double self;                          /* this process, user+sys seconds */
	double server;                        /* the server's cgroup, seconds */
};

static const char *cg_usage; /* cpuacct.usage of the server's cgroup, or NULL */

static void sample_cpu(struct cpu_sample *s)
{
	memset(s, 0, sizeof *s);
	FILE *f = fopen("/proc/stat", "r");
	char line[512];
	while (f && fgets(line, sizeof line, f)) {
		int cpu;
		unsigned long long v[8] = {0};
		if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1],
			   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 9)
			continue;
		/* user nice system idle iowait irq softirq steal */
		unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
		unsigned long long total = busy + v[3] + v[4];
		for (int i = 0; i < 2; i++)
			if (cpu == (i == 0 ? server_cpu : client_cpu)) {
				s->busy[i] = busy;
				s->total[i] = total;
			}
	}
	if (f)
		fclose(f);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	s->self = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
		  (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	if (cg_usage) {
		FILE *u = fopen(cg_usage, "r");
		unsigned long long ns = 0;
		if (!u || fscanf(u, "%llu", &ns) != 1)
			die("cannot read %s", cg_usage);
		fclose(u);
		s->server = (double)ns / 1e9;
	}
}

static double busy_fraction(const struct cpu_sample *a, const struct cpu_sample *b, int i)
{
	unsigned long long t = b->total[i] - a->total[i];
	return t ? (double)(b->busy[i] - a->busy[i]) / (double)t : 0;
}

static void print_cpu(const struct cpu_sample *a, const struct cpu_sample *b, double wall)
{
	/* *_cpu_busy: the whole CPU, every task on it (other load shows here);
	 * server_cpu_secs: the server's own processes (its cgroup);
	 * client_cpu_secs: this process. */
	printf(" server_cpu_busy=%.3f client_cpu_busy=%.3f server_cpu_secs=%.3f client_cpu_secs=%.3f",
	       busy_fraction(a, b, 0), busy_fraction(a, b, 1), b->server - a->server,
	       b->self - a->self);
	(void)wall;
}

/* ---- TLS client context ---- */

#ifdef OPENSSL_IS_BORINGSSL
static enum ssl_verify_result_t accept_any_chain(SSL *ssl, uint8_t *alert)
{
	(void)ssl;
	(void)alert;
	return ssl_verify_ok;
}

static SSL_CTX *client_ctx(void)
{
	/* TLS_with_buffers_method: the certificate stays a CRYPTO_BUFFER, no
	 * X509 parsing; the custom verifier accepts any chain (the handshake
	 * signature is still checked against the certificate's key). */
	SSL_CTX *ctx = SSL_CTX_new(TLS_with_buffers_method());
	if (!ctx)
		die("SSL_CTX_new failed");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, accept_any_chain);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (!SSL_CTX_set1_curves_list(ctx, "X25519"))
		die("cannot set the X25519 group");
	return ctx;
}

static void describe(const SSL *ssl, char *out, size_t len)
{
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	const char *group = SSL_get_curve_name(SSL_get_curve_id(ssl));
	const char *sigalg = SSL_get_signature_algorithm_name(SSL_get_peer_signature_algorithm(ssl), 0);
	snprintf(out, len, "lib=%s version=%s cipher=%s group=%s sigalg=%s", LIBNAME,
		 SSL_get_version(ssl), c ? SSL_CIPHER_standard_name(c) : "none", group ? group : "none",
		 sigalg ? sigalg : "unknown");
}
#else
static SSL_CTX *client_ctx(void)
{
	/* The same offer as the BoringSSL build: AES-128-GCM first. */
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		die("SSL_CTX_new failed");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (!SSL_CTX_set1_groups_list(ctx, "X25519") ||
	    !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
					   "TLS_CHACHA20_POLY1305_SHA256"))
		die("cannot set the group or suites");
	return ctx;
}

static void describe(const SSL *ssl, char *out, size_t len)
{
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	int type = NID_undef, hash = NID_undef;
	SSL_get_peer_signature_type_nid(ssl, &type);
	SSL_get_peer_signature_nid((SSL *)ssl, &hash);
	snprintf(out, len, "lib=%s version=%s cipher=%s group=%s sigalg=%s+%s", LIBNAME,
		 SSL_get_version(ssl), c ? SSL_CIPHER_standard_name(c) : "none",
		 OBJ_nid2sn(SSL_get_negotiated_group((SSL *)ssl)), OBJ_nid2sn(type), OBJ_nid2sn(hash));
}
#endif

static void tls_error_string(char *out, size_t len)
{
	unsigned long e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, out, len);
	else
		snprintf(out, len, "%s", errno ? strerror(errno) : "unexpected EOF");
	ERR_clear_error();
}

static struct sockaddr_in server_addr(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1 only, ever */
	return sa;
}

/* ---- hs: full handshakes on an smtps port ---- */

enum phase { P_CONNECT, P_HANDSHAKE, P_GREETING };

struct hconn {
	int fd;
	SSL *ssl;
	enum phase phase;
	uint32_t events; /* registered with epoll; 0 = not registered */
	char buf[1024];
	size_t len;
};

static int ep;
static SSL_CTX *hs_ctx;
static unsigned long long hs_done, hs_counted, hs_errors[3], hs_connect_errors;
static char hs_first_error[256], hs_params[256];
static bool counting;

static void watch(struct hconn *h, uint32_t ev)
{
	struct epoll_event e = {.events = ev, .data.ptr = h};
	if (h->events == ev)
		return;
	if (epoll_ctl(ep, h->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, h->fd, &e) < 0)
		die("epoll_ctl: %s", strerror(errno));
	h->events = ev;
}

static void finish(struct hconn *h)
{
	if (h->ssl) {
		SSL_free(h->ssl);
		h->ssl = NULL;
	}
	if (h->fd >= 0)
		close(h->fd); /* also removes it from the epoll set */
	h->fd = -1;
	h->events = 0;
	h->len = 0;
}

static void start(struct hconn *h);

static void fail(struct hconn *h, const char *what)
{
	char why[200];
	tls_error_string(why, sizeof why);
	if (h->phase <= P_GREETING)
		hs_errors[h->phase]++;
	if (!hs_first_error[0])
		snprintf(hs_first_error, sizeof hs_first_error, "%s: %s", what, why);
	finish(h);
}

static bool greeting_complete(const struct hconn *h)
{
	/* a final greeting line "220 ...\r\n" (after any "220-" lines) */
	const char *p = h->buf, *end = h->buf + h->len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			return false;
		if (nl - p >= 4 && memcmp(p, "220 ", 4) == 0)
			return true;
		if (nl - p < 4 || memcmp(p, "220-", 4) != 0)
			return false;
		p = nl + 1;
	}
	return false;
}

static void drive(struct hconn *h)
{
	if (h->phase == P_CONNECT) {
		int err = 0;
		socklen_t len = sizeof err;
		getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			errno = err;
			fail(h, "connect");
			return;
		}
		h->ssl = SSL_new(hs_ctx);
		if (!h->ssl || !SSL_set_fd(h->ssl, h->fd))
			die("SSL_new failed");
		SSL_set_connect_state(h->ssl);
		h->phase = P_HANDSHAKE;
	}
	if (h->phase == P_HANDSHAKE) {
		errno = 0;
		int rc = SSL_do_handshake(h->ssl);
		if (rc != 1) {
			int e = SSL_get_error(h->ssl, rc);
			if (e == SSL_ERROR_WANT_READ)
				watch(h, EPOLLIN);
			else if (e == SSL_ERROR_WANT_WRITE)
				watch(h, EPOLLOUT);
			else
				fail(h, "handshake");
			return;
		}
		if (!hs_params[0])
			describe(h->ssl, hs_params, sizeof hs_params);
		h->phase = P_GREETING;
	}
	for (;;) {
		if (h->len == sizeof h->buf) {
			fail(h, "greeting too long");
			return;
		}
		errno = 0;
		int n = SSL_read(h->ssl, h->buf + h->len, (int)(sizeof h->buf - h->len));
		if (n > 0) {
			h->len += (size_t)n;
			if (greeting_complete(h))
				break;
			continue;
		}
		int e = SSL_get_error(h->ssl, n);
		if (e == SSL_ERROR_WANT_READ) {
			watch(h, EPOLLIN);
			return;
		}
		fail(h, h->len ? "greeting (not 220)" : "greeting");
		return;
	}
	hs_done++;
	if (counting)
		hs_counted++;
	SSL_shutdown(h->ssl); /* close_notify: the server sees a clean end */
	finish(h);
}

static void start(struct hconn *h)
{
	h->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (h->fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in sa = server_addr();
	h->phase = P_CONNECT;
	h->events = 0;
	h->len = 0;
	if (connect(h->fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
		drive(h);
		return;
	}
	if (errno == EINPROGRESS) {
		watch(h, EPOLLOUT);
		return;
	}
	hs_connect_errors++;
	if (!hs_first_error[0])
		snprintf(hs_first_error, sizeof hs_first_error, "connect: %s", strerror(errno));
	close(h->fd);
	h->fd = -1;
}

static int cmd_hs(void)
{
	hs_ctx = client_ctx();
	ep = epoll_create1(EPOLL_CLOEXEC);
	struct hconn *hc = calloc((size_t)conns, sizeof *hc);
	if (ep < 0 || !hc)
		die("epoll or memory");
	for (int i = 0; i < conns; i++) {
		hc[i].fd = -1;
		start(&hc[i]);
	}
	double t0 = now(), t_count = t0 + warmup, t_end = t_count + secs, t_real_end = 0;
	struct cpu_sample a = {0}, b = {0};
	struct epoll_event evs[256];
	for (;;) {
		double t = now();
		if (!counting && t >= t_count) {
			counting = true;
			sample_cpu(&a);
			t_count = now();
			t_end = t_count + secs;
		}
		if (counting && t >= t_end) {
			sample_cpu(&b);
			t_real_end = now();
			break;
		}
		int n = epoll_wait(ep, evs, 256, 50);
		if (n < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++)
			drive(evs[i].data.ptr);
		unsigned long long errors = hs_connect_errors + hs_errors[0] + hs_errors[1] + hs_errors[2];
		if (errors > 1000 && errors > hs_done)
			die("mostly errors (%llu errors, %llu handshakes); first: %s", errors, hs_done,
			    hs_first_error);
		for (int i = 0; i < conns; i++)
			if (hc[i].fd < 0)
				start(&hc[i]);
	}
	double wall = t_real_end - t_count;
	printf("mode=hs port=%d conns=%d secs=%.3f handshakes=%llu rate=%.1f", port, conns, wall,
	       hs_counted, (double)hs_counted / wall);
	print_cpu(&a, &b, wall);
	printf(" err_connect=%llu err_tcp=%llu err_handshake=%llu err_greeting=%llu %s",
	       hs_connect_errors, hs_errors[P_CONNECT], hs_errors[P_HANDSHAKE], hs_errors[P_GREETING],
	       hs_params[0] ? hs_params : "version=none");
	printf(" first_error=\"%s\"\n", hs_first_error);
	for (int i = 0; i < conns; i++)
		finish(&hc[i]);
	free(hc);
	return hs_counted > 0 ? 0 : 1;
}

/* ---- bulk: STARTTLS sessions sending big messages ---- */

static char *message;      /* exactly msg_bytes, CRLF lines, no leading dots */
static SSL_CTX *bulk_ctx;

struct session {
	int id;
	int fd;
	SSL *ssl;
	char in[4096];
	size_t in_len;
	double *t_data, *t_250; /* per message */
	char params[256];
	char error[256];
	int ok;
};

static int sess_read(struct session *s, char *p, size_t len)
{
	if (s->ssl) {
		int n = SSL_read(s->ssl, p, (int)len);
		return n > 0 ? n : -1;
	}
	ssize_t n = recv(s->fd, p, len, 0);
	return n > 0 ? (int)n : -1;
}

static int sess_write(struct session *s, const char *p, size_t len)
{
	while (len > 0) {
		size_t chunk = len > (1u << 20) ? (1u << 20) : len;
		if (s->ssl) {
			int n = SSL_write(s->ssl, p, (int)chunk);
			if (n <= 0)
				return -1;
			p += n;
			len -= (size_t)n;
		} else {
			ssize_t n = send(s->fd, p, chunk, MSG_NOSIGNAL);
			if (n <= 0)
				return -1;
			p += n;
			len -= (size_t)n;
		}
	}
	return 0;
}

/* Read one reply (all its lines); returns the code or -1. */
static int sess_reply(struct session *s)
{
	for (;;) {
		char *p = s->in, *end = s->in + s->in_len;
		while (p < end) {
			char *nl = memchr(p, '\n', (size_t)(end - p));
			if (!nl)
				break;
			if (nl - p >= 4 && p[3] == ' ') {
				int code = atoi(p);
				size_t used = (size_t)(nl + 1 - s->in);
				memmove(s->in, nl + 1, s->in_len - used);
				s->in_len -= used;
				return code;
			}
			p = nl + 1;
		}
		if (s->in_len == sizeof s->in)
			return -1;
		int n = sess_read(s, s->in + s->in_len, sizeof s->in - s->in_len);
		if (n <= 0)
			return -1;
		s->in_len += (size_t)n;
	}
}

static int sess_cmd(struct session *s, const char *cmd, int want)
{
	if (sess_write(s, cmd, strlen(cmd)) < 0)
		return -1;
	int code = sess_reply(s);
	if (code != want) {
		snprintf(s->error, sizeof s->error, "%.*s -> %d (wanted %d)", (int)strcspn(cmd, "\r"),
			 cmd, code, want);
		return -1;
	}
	return 0;
}

static void *bulk_session(void *arg)
{
	struct session *s = arg;
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = server_addr();
	if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		snprintf(s->error, sizeof s->error, "connect: %s", strerror(errno));
		return NULL;
	}
	if (sess_reply(s) != 220) {
		snprintf(s->error, sizeof s->error, "no 220 greeting");
		return NULL;
	}
	if (sess_cmd(s, "EHLO bench.example\r\n", 250) < 0 || sess_cmd(s, "STARTTLS\r\n", 220) < 0)
		return NULL;
	if (s->in_len != 0) {
		snprintf(s->error, sizeof s->error, "server sent bytes after its STARTTLS 220");
		return NULL;
	}
	s->ssl = SSL_new(bulk_ctx);
	SSL_set_fd(s->ssl, s->fd);
	if (SSL_connect(s->ssl) != 1) {
		char why[200];
		tls_error_string(why, sizeof why);
		snprintf(s->error, sizeof s->error, "TLS handshake: %s", why);
		return NULL;
	}
	describe(s->ssl, s->params, sizeof s->params);
	if (sess_cmd(s, "EHLO bench.example\r\n", 250) < 0)
		return NULL;
	for (int m = 0; m < msgs; m++) {
		if (sess_cmd(s, "MAIL FROM:<sender@example.org>\r\n", 250) < 0 ||
		    sess_cmd(s, "RCPT TO:<rcpt@example.com>\r\n", 250) < 0)
			return NULL;
		s->t_data[m] = now();
		if (sess_cmd(s, "DATA\r\n", 354) < 0)
			return NULL;
		if (sess_write(s, message, msg_bytes) < 0 || sess_write(s, ".\r\n", 3) < 0) {
			snprintf(s->error, sizeof s->error, "write failed in message %d", m + 1);
			return NULL;
		}
		int code = sess_reply(s);
		s->t_250[m] = now();
		if (code != 250) {
			snprintf(s->error, sizeof s->error, "message %d: end of data -> %d", m + 1, code);
			return NULL;
		}
	}
	sess_cmd(s, "QUIT\r\n", 221);
	SSL_shutdown(s->ssl);
	s->ok = 1;
	return NULL;
}

static void make_message(void)
{
	message = malloc(msg_bytes);
	if (!message)
		die("no memory for a %zu-byte message", msg_bytes);
	int hl = snprintf(message, msg_bytes,
			  "From: <sender@example.org>\r\nTo: <rcpt@example.com>\r\n"
			  "Subject: tls bulk bench\r\nMessage-ID: <bulk@bench.example>\r\n\r\n");
	if (hl < 0 || (size_t)hl + 4 > msg_bytes)
		die("message size too small");
	size_t pos = (size_t)hl;
	unsigned line = 0;
	while (pos < msg_bytes) {
		size_t left = msg_bytes - pos;
		size_t len = left >= 80 + 3 ? 80 : left; /* never leave a 1- or 2-byte tail */
		for (size_t i = 0; i + 2 < len; i++)
			message[pos + i] = (char)((i % 7 == 6) ? ' ' : 'a' + (line + i) % 26);
		message[pos + len - 2] = '\r';
		message[pos + len - 1] = '\n';
		pos += len;
		line++;
	}
}

static int cmd_bulk(void)
{
	if (msg_bytes < 256)
		die("-n must be at least 256");
	make_message();
	bulk_ctx = client_ctx();
	struct session *ss = calloc((size_t)conns, sizeof *ss);
	pthread_t *th = calloc((size_t)conns, sizeof *th);
	if (!ss || !th)
		die("no memory");
	for (int i = 0; i < conns; i++) {
		ss[i].id = i;
		ss[i].t_data = calloc((size_t)msgs, sizeof(double));
		ss[i].t_250 = calloc((size_t)msgs, sizeof(double));
	}
	struct cpu_sample a, b;
	sample_cpu(&a);
	double t0 = now();
	for (int i = 0; i < conns; i++)
		if (pthread_create(&th[i], NULL, bulk_session, &ss[i]) != 0)
			die("pthread_create");
	for (int i = 0; i < conns; i++)
		pthread_join(th[i], NULL);
	free(th);
	double t1 = now();
	sample_cpu(&b);
	int ok = 1;
	double first = 1e300, last = 0, sum_msg = 0, best = 0, worst = 1e300;
	for (int i = 0; i < conns; i++) {
		if (!ss[i].ok) {
			fprintf(stderr, "tls_hammer: bulk session %d failed: %s\n", i, ss[i].error);
			ok = 0;
			continue;
		}
		for (int m = 0; m < msgs; m++) {
			double d = ss[i].t_250[m] - ss[i].t_data[m];
			double r = (double)msg_bytes / d / 1e6;
			sum_msg += d;
			if (ss[i].t_data[m] < first)
				first = ss[i].t_data[m];
			if (ss[i].t_250[m] > last)
				last = ss[i].t_250[m];
			if (r > best)
				best = r;
			if (r < worst)
				worst = r;
		}
	}
	if (!ok)
		return 1;
	double total = (double)msg_bytes * conns * msgs;
	unsigned char md[SHA256_DIGEST_LENGTH];
	char hex[2 * SHA256_DIGEST_LENGTH + 1];
	SHA256((const unsigned char *)message, msg_bytes, md);
	for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	double span = last - first;
	printf("mode=bulk port=%d conns=%d msgs_per_conn=%d msg_bytes=%zu total_bytes=%.0f secs=%.3f "
	       "data_span=%.3f mb_per_s=%.1f per_msg_mb_per_s_min=%.1f per_msg_mb_per_s_max=%.1f "
	       "mean_msg_secs=%.3f",
	       port, conns, msgs, msg_bytes, total, t1 - t0, span, total / span / 1e6, worst, best,
	       sum_msg / (conns * msgs));
	print_cpu(&a, &b, t1 - t0);
	printf(" msg_sha256=%s %s\n", hex, ss[0].params);
	return 0;
}

/* ---- speed: BoringSSL's one-core ceilings ---- */
#ifdef OPENSSL_IS_BORINGSSL

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Rates per second of this thread's CPU time, so that other work sharing
 * the CPU does not lower them. */
static void speed_loop(const char *name, const char *unit, double scale, int (*op)(void *),
		       void *arg)
{
	unsigned long n = 0;
	double t0 = cpu_now(), t;
	do {
		for (int i = 0; i < 16; i++)
			if (!op(arg))
				die("%s failed", name);
		n += 16;
		t = cpu_now();
	} while (t - t0 < secs);
	printf("speed=%s rate=%.1f unit=%s\n", name, (double)n * scale / (t - t0), unit);
}

static int op_ecdsa(void *arg)
{
	uint8_t digest[32] = {1}, sig[160];
	unsigned len = sizeof sig;
	return ECDSA_sign(0, digest, sizeof digest, sig, &len, arg);
}

static int op_rsa(void *arg)
{
	uint8_t digest[32] = {1}, sig[512];
	size_t len;
	return RSA_sign_pss_mgf1(arg, &len, sig, sizeof sig, digest, sizeof digest, EVP_sha256(),
				 EVP_sha256(), -1);
}

static int op_x25519(void *arg)
{
	(void)arg;
	uint8_t pub[32], priv[32], peer[32], out[32];
	X25519_keypair(peer, priv);
	X25519_keypair(pub, priv);
	return X25519(out, priv, peer);
}

static int op_gcm(void *arg)
{
	static uint8_t in[16384], out[16384 + 16], nonce[12];
	size_t len;
	nonce[0]++;
	return EVP_AEAD_CTX_seal(arg, out, &len, sizeof out, nonce, sizeof nonce, in, sizeof in,
				 NULL, 0);
}

static int cmd_speed(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	if (!ec || !EC_KEY_generate_key(ec))
		die("EC key");
	speed_loop("ecdsa-p256-sign", "sign/s", 1, op_ecdsa, ec);
	RSA *rsa = RSA_new();
	BIGNUM *e = BN_new();
	if (!rsa || !e || !BN_set_word(e, RSA_F4) || !RSA_generate_key_ex(rsa, 2048, e, NULL))
		die("RSA key");
	speed_loop("rsa2048-pss-sign", "sign/s", 1, op_rsa, rsa);
	speed_loop("x25519-keygen+shared", "op/s", 1, op_x25519, NULL);
	uint8_t key[16] = {0};
	EVP_AEAD_CTX *gcm = EVP_AEAD_CTX_new(EVP_aead_aes_128_gcm(), key, sizeof key, 16);
	if (!gcm)
		die("AES-GCM");
	speed_loop("aes-128-gcm-seal-16k", "MB/s", 16384 / 1e6, op_gcm, gcm);
	return 0;
}
#else
static int cmd_speed(void)
{
	die("speed is for the BoringSSL build");
}
#endif

static void usage(void)
{
	fputs("usage: tls_hammer hs|bulk|speed -p PORT [-c CONNS] [-t SECS] [-w WARMUP]\n"
	      "                  [-m MSGS] [-n BYTES] [-s SERVER_CPU] [-C CLIENT_CPU]\n"
	      "                  [-g SERVER_CGROUP/cpuacct.usage]\n",
	      stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *mode = argv[1];
	int opt;
	optind = 2;
	while ((opt = getopt(argc, argv, "p:c:t:w:m:n:s:C:g:")) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'c': conns = atoi(optarg); break;
		case 't': secs = atof(optarg); break;
		case 'w': warmup = atof(optarg); break;
		case 'm': msgs = atoi(optarg); break;
		case 'n': msg_bytes = strtoull(optarg, NULL, 10); break;
		case 's': server_cpu = atoi(optarg); break;
		case 'C': client_cpu = atoi(optarg); break;
		case 'g': cg_usage = optarg; break;
		default: usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (conns < 1 || msgs < 1 || secs <= 0 || warmup < 0)
		usage();
	if (strcmp(mode, "speed") == 0)
		return cmd_speed();
	if (port < 1 || port > 65535)
		usage();
	if (strcmp(mode, "hs") == 0)
		return cmd_hs();
	if (strcmp(mode, "bulk") == 0)
		return cmd_bulk();
	usage();
	return 2;
}
