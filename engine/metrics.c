#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "conf.h"
#include "core.h"
#include "listeners.h"
#include "log.h"
#include "upgrade.h"

/* ---- the core side: cheap, no syscalls ---- */

static const uint64_t latency_le_us[METRICS_LATENCY_BUCKETS - 1] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000,
};

static void observe(struct metrics_histogram *h, unsigned bucket, uint64_t v)
{
	METRICS_INC(h->bucket[bucket]);
	METRICS_ADD(h->sum, v);
	METRICS_INC(h->count);
}

void metrics_commit_latency(struct core_metrics *m, uint64_t us)
{
	unsigned i = 0;
	while (i < METRICS_LATENCY_BUCKETS - 1 && us > latency_le_us[i])
		i++;
	observe(&m->commit_latency, i, us);
}

void metrics_batch_size(struct core_metrics *m, uint64_t n)
{
	unsigned i = 0; /* bucket i holds sizes up to 2^i */
	while (i < METRICS_BATCH_BUCKETS && n > (1ull << i))
		i++;
	observe(&m->batch_size, i, n);
}

static bool is_final_reply(const char *p, size_t left)
{
	return left >= 4 && p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' &&
	       p[2] >= '0' && p[2] <= '9' && p[3] == ' ';
}

void metrics_count_replies(struct core_metrics *m, const char *data, size_t len)
{
	const char *p = data, *end = data + len;
	while (p < end) {
		if (is_final_reply(p, (size_t)(end - p)))
			METRICS_INC(m->replies[p[0] - '2']);
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break;
		p = nl + 1;
	}
}

void metrics_count_reject(struct core_metrics *m, const char *reply)
{
	enum metrics_reject r = METRICS_REJECT_OTHER;
	if (strncmp(reply, "554 5.7.1", 9) == 0)
		r = METRICS_REJECT_RELAY_DENIED;
	else if (strncmp(reply, "550 5.1.1", 9) == 0)
		r = METRICS_REJECT_UNKNOWN_USER;
	else if (strncmp(reply, "552", 3) == 0)
		r = METRICS_REJECT_SIZE;
	else if ((strncmp(reply, "521", 3) == 0 || strncmp(reply, "550", 3) == 0) &&
		 strncmp(reply + 3, " 5.6.0", 6) == 0)
		r = METRICS_REJECT_SMUGGLING;
	else if (strncmp(reply, "421 4.4.2", 9) == 0)
		r = METRICS_REJECT_TIMEOUT;
	METRICS_INC(m->rejects[r]);
}

enum metrics_tls_version metrics_tls_version(const char *name)
{
	if (strcmp(name, "TLSv1.3") == 0)
		return METRICS_TLS_1_3;
	if (strcmp(name, "TLSv1.2") == 0)
		return METRICS_TLS_1_2;
	return METRICS_TLS_OTHER;
}

/* ---- the scraper side ---- */

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

uint64_t metrics_sum(const struct core *cores, unsigned n, size_t offset)
{
	uint64_t t = 0;
	for (unsigned i = 0; i < n; i++) {
		const uint64_t *f = (const uint64_t *)((const char *)&cores[i].metrics + offset);
		t += __atomic_load_n(f, __ATOMIC_RELAXED);
	}
	return t;
}

#define SUM(field) metrics_sum(cores, n, offsetof(struct core_metrics, field))

static void header(struct buf *out, const char *name, const char *type, const char *help)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(struct buf *out, const struct core *cores, unsigned n, const char *name,
		      const char *help, size_t offset, unsigned nbuckets, const char *const *le,
		      double sum_scale)
{
	header(out, name, "histogram", help);
	uint64_t cum = 0;
	for (unsigned b = 0; b < nbuckets; b++) {
		cum += metrics_sum(cores, n, offset + offsetof(struct metrics_histogram, bucket) +
						   b * sizeof(uint64_t));
		buf_printf(out, "%s_bucket{le=\"%s\"} %llu\n", name, le[b], (unsigned long long)cum);
	}
	uint64_t sum = metrics_sum(cores, n, offset + offsetof(struct metrics_histogram, sum));
	uint64_t count = metrics_sum(cores, n, offset + offsetof(struct metrics_histogram, count));
	/* Counters of one core are read one by one while it runs: the +Inf
	 * bucket may lag _count by an increment. Report the larger so the
	 * exposition stays consistent (+Inf == _count). */
	if (count < cum)
		count = cum;
	buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)count);
	if (sum_scale == 1.0)
		buf_printf(out, "%s_sum %llu\n", name, (unsigned long long)sum);
	else
		buf_printf(out, "%s_sum %.6f\n", name, (double)sum * sum_scale);
	buf_printf(out, "%s_count %llu\n", name, (unsigned long long)count);
}

int metrics_render(struct buf *out, const struct core *cores, unsigned n)
{
	header(out, "mxd_connections_total", "counter", "Connections accepted.");
	buf_printf(out, "mxd_connections_total %llu\n", (unsigned long long)SUM(connections));

	header(out, "mxd_connections_open", "gauge", "Connections open now.");
	buf_printf(out, "mxd_connections_open %llu\n", (unsigned long long)SUM(connections_open));

	static const char *const refusal[METRICS_REFUSED_COUNT] = {
		"connection_limit", "early_talker", "bad_proxy_header", "paused",
		"proxy_not_allowed"};
	header(out, "mxd_connections_refused_total", "counter",
	       "Connections refused before the SMTP session, by reason.");
	for (unsigned r = 0; r < METRICS_REFUSED_COUNT; r++)
		buf_printf(out, "mxd_connections_refused_total{reason=\"%s\"} %llu\n", refusal[r],
			   (unsigned long long)SUM(refused[r]));

	static const char *const path[3] = {"none", "userspace", "ktls"};
	header(out, "mxd_sessions_closed_total", "counter", "Sessions closed, by TLS path.");
	for (unsigned i = 0; i < 3; i++)
		buf_printf(out, "mxd_sessions_closed_total{tls_path=\"%s\"} %llu\n", path[i],
			   (unsigned long long)SUM(sessions_closed[i]));

	static const char *const version[METRICS_TLS_VERSION_COUNT] = {"TLSv1.2", "TLSv1.3",
								      "other"};
	header(out, "mxd_tls_handshakes_total", "counter",
	       "TLS handshakes completed, by protocol version.");
	for (unsigned i = 0; i < METRICS_TLS_VERSION_COUNT; i++)
		buf_printf(out, "mxd_tls_handshakes_total{version=\"%s\"} %llu\n", version[i],
			   (unsigned long long)SUM(tls_ok[i]));
	header(out, "mxd_tls_handshake_failures_total", "counter", "TLS handshakes that failed.");
	buf_printf(out, "mxd_tls_handshake_failures_total %llu\n",
		   (unsigned long long)SUM(tls_failed));

	header(out, "mxd_messages_accepted_total", "counter",
	       "Messages committed to the spool and acknowledged.");
	buf_printf(out, "mxd_messages_accepted_total %llu\n", (unsigned long long)SUM(messages));
	header(out, "mxd_message_bytes_accepted_total", "counter",
	       "Message content bytes of accepted messages.");
	buf_printf(out, "mxd_message_bytes_accepted_total %llu\n",
		   (unsigned long long)SUM(message_bytes));

	static const char *const cls[4] = {"2xx", "3xx", "4xx", "5xx"};
	header(out, "mxd_replies_total", "counter", "SMTP replies sent, by code class.");
	for (unsigned i = 0; i < 4; i++)
		buf_printf(out, "mxd_replies_total{class=\"%s\"} %llu\n", cls[i],
			   (unsigned long long)SUM(replies[i]));

	static const char *const rej[METRICS_REJECT_COUNT] = {
		"relay_denied", "unknown_user", "size", "smuggling", "timeout", "other"};
	header(out, "mxd_rejects_total", "counter",
	       "SMTP commands rejected with 4xx/5xx by the session, by reason.");
	for (unsigned i = 0; i < METRICS_REJECT_COUNT; i++)
		buf_printf(out, "mxd_rejects_total{reason=\"%s\"} %llu\n", rej[i],
			   (unsigned long long)SUM(rejects[i]));

	static const char *const lat_le[METRICS_LATENCY_BUCKETS - 1] = {
		"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
		"0.025",  "0.05",    "0.1",    "0.25",  "0.5",   "1"};
	histogram(out, cores, n, "mxd_spool_commit_latency_seconds",
		  "Time from a spool batch's submission to its fdatasync completion.",
		  offsetof(struct core_metrics, commit_latency), METRICS_LATENCY_BUCKETS - 1, lat_le,
		  1e-6);
	static const char *const batch_le[METRICS_BATCH_BUCKETS] = {
		"1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "1024"};
	histogram(out, cores, n, "mxd_spool_batch_size",
		  "Messages committed by one group-commit fdatasync.",
		  offsetof(struct core_metrics, batch_size), METRICS_BATCH_BUCKETS, batch_le, 1.0);

	static const char *const outcome[4] = {"delivered", "deferred", "failed", "expired"};
	header(out, "mxd_deliveries_total", "counter",
	       "Recipient delivery attempts to next hops, by outcome.");
	for (unsigned i = 0; i < 4; i++)
		buf_printf(out, "mxd_deliveries_total{outcome=\"%s\"} %llu\n", outcome[i],
			   (unsigned long long)SUM(relay_outcomes[i]));
	header(out, "mxd_relay_connections_total", "counter",
	       "Outbound connections to next hops established.");
	buf_printf(out, "mxd_relay_connections_total %llu\n",
		   (unsigned long long)SUM(relay_connections));
	header(out, "mxd_relay_tls_connections_total", "counter",
	       "Outbound TLS connections, by the path their records took (ktls: TX in the kernel).");
	for (unsigned i = 0; i < 2; i++)
		buf_printf(out, "mxd_relay_tls_connections_total{tls_path=\"%s\"} %llu\n",
			   path[i + 1], (unsigned long long)SUM(relay_tls_path[i]));
	header(out, "mxd_relay_queue_recipients", "gauge",
	       "Recipients in the spool not yet finished (queued, deferred, held).");
	buf_printf(out, "mxd_relay_queue_recipients %llu\n", (unsigned long long)SUM(relay_queue));
	header(out, "mxd_dsns_total", "counter", "Delivery status notifications spooled.");
	buf_printf(out, "mxd_dsns_total %llu\n", (unsigned long long)SUM(relay_dsns));
	header(out, "mxd_spool_segments_reclaimed_total", "counter",
	       "Spool segments removed because every message in them was finished.");
	buf_printf(out, "mxd_spool_segments_reclaimed_total %llu\n",
		   (unsigned long long)SUM(relay_reclaimed));

	header(out, "mxd_core_busy_seconds_total", "counter",
	       "Seconds each core spent working rather than waiting in io_uring_submit_and_wait.");
	for (unsigned i = 0; i < n; i++)
		buf_printf(out, "mxd_core_busy_seconds_total{core=\"%u\"} %.6f\n", cores[i].index,
			   (double)LOAD(cores[i].metrics.busy_ns) / 1e9);
	return 0;
}

/* ---- the HTTP side: one thread, one request at a time ---- */

static struct {
	int fd;
	int stop_fd;      /* eventfd: stop without touching the socket */
	pthread_t thread;
	bool running;
	const struct core *cores;
	unsigned ncores;
} server = {.fd = -1, .stop_fd = -1};

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void serve(int fd)
{
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	/* Read up to the end of the headers (or 8 KiB); only the request line
	 * matters. */
	char req[8192];
	size_t len = 0;
	while (len < sizeof req - 1) {
		ssize_t r = recv(fd, req + len, sizeof req - 1 - len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		req[len] = '\0';
		if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
			break;
	}
	req[len] = '\0';
	bool metrics = strncmp(req, "GET /metrics ", 13) == 0 ||
		       strncmp(req, "GET /metrics\r", 13) == 0 || strcmp(req, "GET /metrics") == 0;
	struct buf body, head;
	buf_init(&body, 0);
	buf_init(&head, 0);
	if (metrics) {
		metrics_render(&body, server.cores, server.ncores);
		buf_printf(&head,
			   "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
			   "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			   body.len);
	} else {
		buf_append_str(&body, "not found\n");
		buf_printf(&head,
			   "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
			   "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			   body.len);
	}
	write_all(fd, head.data, head.len);
	if (strncmp(req, "HEAD ", 5) != 0)
		write_all(fd, body.data, body.len);
	buf_free(&head);
	buf_free(&body);
	shutdown(fd, SHUT_WR);
}

/* The listening socket is non-blocking and waited on with poll: during a
 * binary upgrade it is shared with the new process, which may take the
 * connection first, and stopping must not shutdown() a socket the other
 * process still serves. */
static void *server_main(void *arg)
{
	(void)arg;
	log_thread_init("metrics", 0);
	for (;;) {
		struct pollfd p[2] = {{.fd = server.fd, .events = POLLIN},
				      {.fd = server.stop_fd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		int fd = accept4(server.fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				usleep(100000);
			continue; /* EAGAIN: the other process of an upgrade took it */
		}
		serve(fd);
		close(fd);
		log_flush();
	}
	log_thread_exit();
	return NULL;
}

/* A listening socket for l: the one the previous process handed over
 * when it is bound there, else a new one. */
static int listen_socket(const struct conf_listener *l)
{
	int fd = upgrade_take_socket(UPGRADE_SOCK_METRICS);
	if (fd >= 0) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof ss;
		if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
		    sockaddr_same(&ss, len, &l->addr, l->addr_len))
			return fd;
		close(fd); /* the metrics address changed */
	}
	fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_error("metrics: socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) < 0 || listen(fd, 16) < 0) {
		log_error("metrics: cannot listen on %s port %u: %s", l->addr_text, l->port,
			  strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int metrics_server_start(const struct conf_listener *l, const struct core *cores,
			 unsigned ncores)
{
	int fd = listen_socket(l);
	if (fd < 0)
		return -1;
	server.stop_fd = eventfd(0, EFD_CLOEXEC);
	if (server.stop_fd < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		log_error("metrics: %s", strerror(errno));
		close(fd);
		if (server.stop_fd >= 0)
			close(server.stop_fd);
		server.stop_fd = -1;
		return -1;
	}
	server.fd = fd;
	server.cores = cores;
	server.ncores = ncores;
	int rc = pthread_create(&server.thread, NULL, server_main, NULL);
	if (rc != 0) {
		log_error("metrics: pthread_create: %s", strerror(rc));
		close(fd);
		close(server.stop_fd);
		server.fd = server.stop_fd = -1;
		return -1;
	}
	server.running = true;
	upgrade_set_socket(UPGRADE_SOCK_METRICS, fd);
	log_info("metrics on http://%s:%u/metrics", l->addr_text, l->port);
	return 0;
}

void metrics_server_stop(void)
{
	if (!server.running)
		return;
	uint64_t one = 1;
	if (write(server.stop_fd, &one, sizeof one) < 0)
		log_error("metrics: cannot stop: %s", strerror(errno));
	pthread_join(server.thread, NULL);
	upgrade_set_socket(UPGRADE_SOCK_METRICS, -1);
	close(server.fd);
	close(server.stop_fd);
	server.fd = server.stop_fd = -1;
	server.running = false;
}
