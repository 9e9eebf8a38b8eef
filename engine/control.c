#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "control_proto.h"
#include "core.h"
#include "log.h"
#include "metrics.h"
#include "snapshot.h"

#ifndef MXD_VERSION
#define MXD_VERSION "unknown"
#endif
#ifndef MXD_BUILD
#define MXD_BUILD "unknown"
#endif

#define CONTROL_BACKLOG 16

struct client {
	int fd;                      /* -1: slot free */
	struct control_line line;    /* the command being read */
	char in[CONTROL_LINE_MAX];   /* bytes read past the last whole line */
	size_t in_len;
	struct buf out;              /* reply not yet written */
	size_t out_off;
	uint64_t deadline_ms;
	bool closing;                /* close once out is written */
	bool eof;                    /* the client sends no more: finish, then close */
};

static struct {
	int fd;                      /* the listening socket; -1: none */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev;                   /* the socket file we made, to remove only ours */
	ino_t ino;
	struct client *clients;
	unsigned max_clients;
	uint32_t timeout_ms;
	struct control_ops ops;
	int done_fd;                 /* the cores' "session list written" */
	uint64_t started_ms;
	/* which client each poll slot after the listener's is for */
	unsigned slot_client[CONTROL_POLLFDS_MAX];
} ctl = {.fd = -1, .done_fd = -1};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the socket file ---- */

static int fill_addr(struct sockaddr_un *sa, const char *path)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof sa->sun_path)
		return -1;
	memcpy(sa->sun_path, path, n + 1);
	return 0;
}

/* What is at path already: nothing, a socket (live or left by a crash;
 * replaced either way, so a new binary takes the name over from the old),
 * or something else, which is never clobbered. */
static int check_existing(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISSOCK(st.st_mode)) {
		log_error("control socket %s: exists and is not a socket; remove it or choose "
			  "another path (control socket \"PATH\")", path);
		return -1;
	}
	struct sockaddr_un sa;
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool live = probe >= 0 && fill_addr(&sa, path) == 0 &&
		    connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
	if (probe >= 0)
		close(probe);
	if (live)
		log_warn("control socket %s: another process answers on it; taking the name over",
			 path);
	else
		log_info("control socket %s: replacing a stale socket file", path);
	return 0;
}

/* Binds under a temporary name with mode 0600 (umask during bind, checked
 * after), then renames it over path: the name always points at a socket
 * someone listens on. */
static int bind_socket(int fd, const char *path)
{
	char tmp[sizeof ctl.path];
	int n = snprintf(tmp, sizeof tmp, "%s.%ld", path, (long)getpid());
	struct sockaddr_un sa;
	if (n < 0 || (size_t)n >= sizeof tmp)
		n = snprintf(tmp, sizeof tmp, "%s", path); /* no room: bind in place */
	if (fill_addr(&sa, tmp) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (strcmp(tmp, path) == 0)
		unlink(path);
	else
		unlink(tmp);
	mode_t old = umask(0177);
	int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	umask(old);
	if (rc < 0)
		return -1;
	struct stat st;
	if (chmod(tmp, 0600) < 0 || stat(tmp, &st) < 0 || (st.st_mode & 0777) != 0600) {
		int saved = errno ? errno : EPERM;
		unlink(tmp);
		errno = saved;
		return -1;
	}
	if (strcmp(tmp, path) != 0 && rename(tmp, path) < 0) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
		return -1;
	}
	ctl.dev = st.st_dev;
	ctl.ino = st.st_ino;
	return 0;
}

int control_open(const struct conf_control *cfg, const struct control_ops *ops)
{
	if (strlen(cfg->path) >= sizeof ctl.path) {
		/* only a default can be this long: the parser bounds a given path */
		log_warn("control socket: %s is too long for a socket name; no control socket "
			 "(set one with control socket \"PATH\")", cfg->path);
		return 0;
	}
	snprintf(ctl.path, sizeof ctl.path, "%s", cfg->path);
	ctl.ops = *ops;
	ctl.timeout_ms = cfg->timeout;
	ctl.max_clients = cfg->max_clients < CONTROL_POLLFDS_MAX - 1 ? cfg->max_clients
								    : CONTROL_POLLFDS_MAX - 1;
	ctl.started_ms = now_ms();
	ctl.clients = calloc(ctl.max_clients, sizeof *ctl.clients);
	ctl.done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!ctl.clients || ctl.done_fd < 0) {
		log_error("control socket: %s", ctl.clients ? strerror(errno) : "out of memory");
		return -1;
	}
	for (unsigned i = 0; i < ctl.max_clients; i++)
		ctl.clients[i].fd = -1;
	if (check_existing(ctl.path) < 0)
		return -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind_socket(fd, ctl.path) < 0 || listen(fd, CONTROL_BACKLOG) < 0) {
		log_error("control socket %s: %s", ctl.path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	ctl.fd = fd;
	log_info("control socket %s (mode 0600)", ctl.path);
	return 0;
}

/* ---- clients ---- */

static void client_close(struct client *c)
{
	close(c->fd);
	c->fd = -1;
	buf_free(&c->out);
}

static void reply_line(struct client *c, const char *prefix, const char *text)
{
	buf_append_str(&c->out, prefix);
	/* one line per line: a stray line end in a message would break framing */
	for (const char *p = text; *p; p++) {
		char ch = (*p == '\n' || *p == '\r') ? ' ' : *p;
		buf_append(&c->out, &ch, 1);
	}
	buf_append(&c->out, "\n", 1);
}

/* Each line of text (a "\n" after each) as "ok-LINE" / "error-LINE". */
static void reply_lines(struct client *c, const char *prefix, const char *text, size_t len)
{
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		buf_append_str(&c->out, prefix);
		buf_append(&c->out, p, n);
		buf_append(&c->out, "\n", 1);
		p += n + (nl ? 1 : 0);
	}
}

static void reply_final(struct client *c, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void reply_final(struct client *c, bool ok, const char *fmt, ...)
{
	char text[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	if (ok && text[0] == '\0')
		buf_append_str(&c->out, "ok\n");
	else
		reply_line(c, ok ? "ok " : "error ", text);
}

/* ---- commands ---- */

static void cmd_status(struct client *c)
{
	const struct snapshot *s = ctl.ops.current(ctl.ops.ctx);
	const struct core *cores = g_daemon.cores;
	unsigned n = g_daemon.ncores;
	buf_printf(&c->out, "ok-pid %ld\n", (long)getpid());
	buf_printf(&c->out, "ok-version %s build %s\n", MXD_VERSION, MXD_BUILD);
	buf_printf(&c->out, "ok-uptime %llu\n",
		   (unsigned long long)((now_ms() - ctl.started_ms) / 1000));
	reply_line(c, "ok-config ", g_daemon.config_path);
	buf_printf(&c->out, "ok-generation %llu\n", (unsigned long long)s->generation);
	buf_printf(&c->out, "ok-cores %u\n", n);
	buf_printf(&c->out, "ok-paused %s\n", atomic_load(&g_daemon.paused) ? "yes" : "no");
	buf_printf(&c->out, "ok-log-level %s\n", control_level_name((int)log_get_level()));
	buf_printf(&c->out, "ok-sessions %llu\n",
		   (unsigned long long)METRICS_SUM(cores, n, connections_open));
	buf_printf(&c->out, "ok-messages %llu\n",
		   (unsigned long long)METRICS_SUM(cores, n, messages));
	/* recipients not yet finished (delivery.c); 0 without "relay via" */
	buf_printf(&c->out, "ok-queue %llu\n",
		   (unsigned long long)METRICS_SUM(cores, n, relay_queue));
	reply_final(c, true, "%s", "");
}

/* The metrics page without its comments: "name{labels} value" lines. */
static void cmd_stats(struct client *c)
{
	struct buf page;
	buf_init(&page, 0);
	if (metrics_render(&page, g_daemon.cores, g_daemon.ncores) < 0) {
		buf_free(&page);
		reply_final(c, false, "cannot render the metrics");
		return;
	}
	const char *p = page.data, *end = page.data + page.len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (len > 0 && p[0] != '#') {
			buf_append_str(&c->out, "ok-");
			buf_append(&c->out, p, len);
			buf_append(&c->out, "\n", 1);
		}
		p += len + 1;
	}
	buf_free(&page);
	reply_final(c, true, "%s", "");
}

static void cmd_pause(struct client *c, bool pause)
{
	bool was = atomic_exchange(&g_daemon.paused, pause);
	if (was == pause) {
		reply_final(c, true, "already %s", pause ? "paused" : "running");
		return;
	}
	if (pause)
		log_info("control: paused: new connections and new transactions get 421 4.3.2");
	else
		log_info("control: resumed: accepting mail");
	reply_final(c, true, "%s", pause ? "paused" : "resumed");
}

static void cmd_reload(struct client *c)
{
	log_info("control: reload");
	struct buf r;
	buf_init(&r, 0);
	int rc = ctl.ops.reload(ctl.ops.ctx, &r);
	if (rc == 0) {
		/* "ok generation N\n" */
		if (r.len > 0 && r.data[r.len - 1] == '\n')
			r.len--;
		buf_append(&c->out, r.data, r.len);
		buf_append(&c->out, "\n", 1);
	} else {
		reply_lines(c, "error-", r.data, r.len);
		reply_final(c, false, "reload refused; generation %llu stays in use",
			    (unsigned long long)ctl.ops.current(ctl.ops.ctx)->generation);
	}
	buf_free(&r);
}

static void cmd_log_level(struct client *c, int level)
{
	const char *was = control_level_name((int)log_get_level());
	if (level < 0) {
		reply_final(c, true, "log-level %s", was);
		return;
	}
	log_set_level((enum log_level)level);
	/* at warn, so it is seen at every level but error */
	log_warn("control: log-level %s (was %s)", control_level_name(level), was);
	reply_final(c, true, "log-level %s (was %s)", control_level_name(level), was);
}

/* Every core writes its own list on its own thread; wait for them all,
 * but no longer than CONTROL_SESSIONS_WAIT_MS. */
static void cmd_sessions(struct client *c)
{
	unsigned n = g_daemon.ncores;
	bool asked[CONF_MAX_CORES] = {false};
	uint64_t v;
	while (read(ctl.done_fd, &v, sizeof v) > 0) {
	} /* completions of questions that timed out earlier */
	for (unsigned i = 0; i < n; i++)
		asked[i] = core_query_ask(&g_daemon.cores[i], ctl.done_fd);
	uint64_t deadline = now_ms() + CONTROL_SESSIONS_WAIT_MS;
	for (;;) {
		unsigned waiting = 0;
		for (unsigned i = 0; i < n; i++)
			waiting += asked[i] && !core_query_answer(&g_daemon.cores[i]);
		uint64_t now = now_ms();
		if (waiting == 0 || now >= deadline)
			break;
		struct pollfd p = {.fd = ctl.done_fd, .events = POLLIN};
		if (poll(&p, 1, (int)(deadline - now)) > 0)
			while (read(ctl.done_fd, &v, sizeof v) > 0) {
			}
	}
	unsigned silent = 0, first_silent = 0;
	for (unsigned i = 0; i < n; i++) {
		const struct buf *a = asked[i] ? core_query_answer(&g_daemon.cores[i]) : NULL;
		if (a)
			reply_lines(c, "ok-", a->data, a->len);
		else if (silent++ == 0)
			first_silent = i;
	}
	if (silent)
		reply_final(c, false, "%u of %u cores did not answer within %u ms (core %u first)",
			    silent, n, CONTROL_SESSIONS_WAIT_MS, first_silent);
	else
		reply_final(c, true, "%s", "");
}

static void cmd_upgrade(struct client *c)
{
	if (!ctl.ops.upgrade) {
		reply_final(c, false, "binary upgrade is not available in this mxd");
		return;
	}
	log_info("control: upgrade");
	struct buf r;
	buf_init(&r, 0);
	int rc = ctl.ops.upgrade(ctl.ops.ctx, &r);
	reply_lines(c, rc == 0 ? "ok-" : "error-", r.data, r.len);
	buf_free(&r);
	reply_final(c, rc == 0, "%s", rc == 0 ? "upgrade started" : "upgrade failed");
}

static void execute(struct client *c, const char *line, size_t len)
{
	struct control_cmd cmd;
	char err[160];
	if (control_cmd_parse(line, len, &cmd, err, sizeof err) < 0) {
		log_info("control: refused a command: %s", err);
		reply_final(c, false, "%s", err);
		return;
	}
	log_debug("control: command \"%s\"", line);
	switch (cmd.verb) {
	case CONTROL_STATUS:
		cmd_status(c);
		break;
	case CONTROL_STATS:
		cmd_stats(c);
		break;
	case CONTROL_PAUSE:
	case CONTROL_RESUME:
		cmd_pause(c, cmd.verb == CONTROL_PAUSE);
		break;
	case CONTROL_RELOAD:
		cmd_reload(c);
		break;
	case CONTROL_LOG_LEVEL:
		cmd_log_level(c, cmd.level);
		break;
	case CONTROL_SESSIONS:
		cmd_sessions(c);
		break;
	case CONTROL_UPGRADE:
		cmd_upgrade(c);
		break;
	case CONTROL_HELP:
		reply_lines(c, "ok-", control_help, strlen(control_help));
		reply_final(c, true, "%s", "");
		break;
	case CONTROL_QUIT:
		c->closing = true;
		break;
	}
}

/* ---- moving bytes ---- */

/* Writes what it can; false when the client is gone. */
static bool client_write(struct client *c)
{
	while (c->out_off < c->out.len) {
		ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		if (w <= 0)
			return false;
		c->out_off += (size_t)w;
		c->deadline_ms = now_ms() + ctl.timeout_ms; /* it is reading: not idle */
	}
	buf_reset(&c->out);
	c->out_off = 0;
	return true;
}

/* Runs the whole lines already read, one at a time: the next waits until
 * the reply to the last is written, so pipelined commands cannot pile up
 * replies. false when the client is done with. */
static bool client_run(struct client *c)
{
	for (;;) {
		if (!client_write(c))
			return false;
		if (c->out.len > 0)
			return true; /* POLLOUT next */
		if (c->closing)
			return false;
		if (c->in_len == 0)
			return !c->eof;
		size_t used = 0;
		enum control_line_status st = control_line_feed(&c->line, c->in, c->in_len, &used);
		memmove(c->in, c->in + used, c->in_len - used);
		c->in_len -= used;
		if (st == CONTROL_LINE_TOO_LONG) {
			log_info("control: a command line longer than %d bytes; closing",
				 CONTROL_LINE_MAX);
			reply_final(c, false, "line too long (at most %d bytes)", CONTROL_LINE_MAX);
			c->closing = true;
		} else if (st == CONTROL_LINE_READY) {
			execute(c, c->line.text, c->line.len);
			control_line_init(&c->line);
			c->deadline_ms = now_ms() + ctl.timeout_ms;
		}
	}
}

static bool client_read(struct client *c)
{
	if (c->in_len == sizeof c->in)
		return true; /* cannot happen while client_run drains it; be safe */
	ssize_t r = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, MSG_DONTWAIT);
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return true;
	if (r == 0) {
		c->eof = true; /* half-closed: its last commands still get replies */
		return true;
	}
	if (r < 0)
		return false;
	c->in_len += (size_t)r;
	return true;
}

static void accept_client(void)
{
	int fd = accept4(ctl.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			log_warn("control socket: accept: %s", strerror(errno));
		return;
	}
	for (unsigned i = 0; i < ctl.max_clients; i++) {
		struct client *c = &ctl.clients[i];
		if (c->fd >= 0)
			continue;
		memset(c, 0, sizeof *c);
		c->fd = fd;
		control_line_init(&c->line);
		buf_init(&c->out, 0);
		c->deadline_ms = now_ms() + ctl.timeout_ms;
		return;
	}
	char busy[128];
	int n = snprintf(busy, sizeof busy, "error busy: %u control clients already (max-clients)\n",
			 ctl.max_clients);
	log_warn("control socket: refused a client: %u already connected", ctl.max_clients);
	if (send(fd, busy, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		/* it learns from the close */
	}
	close(fd);
}

/* ---- the event loop's side ---- */

unsigned control_pollfds(struct pollfd *pfd, unsigned max)
{
	if (ctl.fd < 0 || max == 0)
		return 0;
	unsigned n = 0;
	pfd[n++] = (struct pollfd){.fd = ctl.fd, .events = POLLIN};
	for (unsigned i = 0; i < ctl.max_clients && n < max; i++) {
		const struct client *c = &ctl.clients[i];
		if (c->fd < 0)
			continue;
		ctl.slot_client[n] = i;
		short events = c->out.len ? POLLOUT : c->eof ? 0 : POLLIN;
		pfd[n++] = (struct pollfd){.fd = c->fd, .events = events};
	}
	return n;
}

int control_timeout_ms(void)
{
	if (ctl.fd < 0)
		return -1;
	uint64_t now = now_ms(), first = UINT64_MAX;
	for (unsigned i = 0; i < ctl.max_clients; i++)
		if (ctl.clients[i].fd >= 0 && ctl.clients[i].deadline_ms < first)
			first = ctl.clients[i].deadline_ms;
	if (first == UINT64_MAX)
		return -1;
	return first <= now ? 0 : (int)(first - now);
}

static void expire_idle(void)
{
	uint64_t now = now_ms();
	for (unsigned i = 0; i < ctl.max_clients; i++) {
		struct client *c = &ctl.clients[i];
		if (c->fd >= 0 && now >= c->deadline_ms) {
			log_info("control: a client idle for %u ms; closing", ctl.timeout_ms);
			client_close(c);
		}
	}
}

void control_service(const struct pollfd *pfd, unsigned n)
{
	if (ctl.fd < 0 || n == 0)
		return;
	for (unsigned s = 1; s < n; s++) {
		if (!pfd[s].revents)
			continue;
		struct client *c = &ctl.clients[ctl.slot_client[s]];
		if (c->fd != pfd[s].fd)
			continue;
		bool alive = true;
		if (!c->eof && (pfd[s].revents & (POLLIN | POLLHUP | POLLERR)))
			alive = client_read(c);
		if (alive)
			alive = client_run(c);
		if (!alive)
			client_close(c);
	}
	if (pfd[0].revents & POLLIN)
		accept_client();
	expire_idle();
}

void control_close(void)
{
	for (unsigned i = 0; ctl.clients && i < ctl.max_clients; i++)
		if (ctl.clients[i].fd >= 0)
			client_close(&ctl.clients[i]);
	free(ctl.clients);
	ctl.clients = NULL;
	if (ctl.done_fd >= 0)
		close(ctl.done_fd);
	ctl.done_fd = -1;
	if (ctl.fd < 0)
		return;
	close(ctl.fd);
	ctl.fd = -1;
	/* a newer process may own the name by now (binary upgrade) */
	struct stat st;
	if (lstat(ctl.path, &st) == 0 && st.st_dev == ctl.dev && st.st_ino == ctl.ino)
		unlink(ctl.path);
}
