/* upgrade: replace the running binary without refusing a connection.
 *
 * THE SWITCH
 *   1. SIGUSR2 or `mxctl upgrade` (upgrade_start, main thread). Refused
 *      while a previous process of ours still drains (our parent pid is
 *      the one that handed over to us): at most two processes share the
 *      spool at a time.
 *   2. Hold the spool: every core is asked to open no new segment from
 *      now on and answers with the segment it has open (core_spool_hold,
 *      spool_writer_hold). See UPGRADE in spool.h for why.
 *   3. A SOCK_SEQPACKET socketpair; the hand-over is written into it
 *      before the child exists (the kernel keeps it, descriptors
 *      included, for the child to read):
 *        HELLO  magic "MXDUPG01", version, our pid, our core count, the
 *               number of sockets that follow, and per core the segment
 *               in use (0: none);
 *        SOCKS  up to UPGRADE_FDS_PER_MSG descriptors per message
 *               (SCM_RIGHTS), each with its kind (listener, metrics):
 *               every SMTP listening socket of every core, and the
 *               metrics socket.
 *      The listening sockets are shared, not copied: both processes hold
 *      the same kernel sockets, with the same accept queues.
 *   4. posix_spawn of the binary at the path this process was started
 *      from, as it is on disk now (or $MXD_UPGRADE_BINARY), with the same
 *      argv, an empty signal mask, and MXD_UPGRADE_FD naming its end.
 *   5. The new process reads the hand-over before anything else
 *      (upgrade_inherit), recovers the spool except the in-use segments,
 *      numbers its segments past them, takes the sockets whose address is
 *      still in its config (opening what it lacks, closing what it does
 *      not want), starts its cores, and only when every core has its
 *      accepts submitted (core->ready) writes READY with its pid.
 *   6. On READY the old process stops accepting — it cancels its accepts
 *      and closes its descriptors, which does not close the sockets: the
 *      new process holds them, so connections queued in the kernel are
 *      accepted there — stops its metrics server, and drains (soft drain,
 *      see drain_soft in core.h) up to "timeout drain", then exits.
 *   7. No READY within "timeout upgrade" (default 60 s), or the socket
 *      closes (the child exited), or the exec fails: the old process logs
 *      why, kills and reaps the child, releases the spool hold and keeps
 *      serving as if nothing happened.
 *
 *   The new process is the old one's child until the old one exits, then
 *   init's (or a subreaper's): supervisors should follow the pid mxd logs
 *   ("upgrade: new process PID ready").
 *
 * THE CONTROL SOCKET is not handed over: the new process binds its own
 *   and renames it over the configured path (control.c), so `mxctl` talks
 *   to the new process from the moment it is ready; the old one sees the
 *   name taken and leaves it in place when it exits. */
#include "upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "listeners.h"
#include "log.h"
#include "metrics.h"
#include "snapshot.h"

extern char **environ;

#define UPGRADE_MAGIC "MXDUPG01"
#define UPGRADE_READY_MAGIC "MXDRDY01"
#define UPGRADE_VERSION 1
#define UPGRADE_ENV "MXD_UPGRADE_FD"
#define UPGRADE_BINARY_ENV "MXD_UPGRADE_BINARY"
#define UPGRADE_MAX_CORES 256
/* Below the kernel's SCM_MAX_FD (253) descriptors per message. */
#define UPGRADE_FDS_PER_MSG 200
/* The new process reads a hand-over that is already written: a short
 * wait only guards against a broken one. */
#define UPGRADE_READ_TIMEOUT_S 10

struct hello {
	char magic[8];
	uint32_t version;
	uint32_t ncores;
	int32_t pid;
	uint32_t nsocks;
	uint64_t in_use[UPGRADE_MAX_CORES];
};

struct socks_msg {
	uint32_t n;
	uint8_t kind[UPGRADE_FDS_PER_MSG];
};

struct ready_msg {
	char magic[8];
	int32_t pid;
};

/* Both sides: set up at start-up, main thread only. */
static struct {
	char exe[PATH_MAX];
	char **argv;
	const struct listener_set *listeners;
	struct snapshot *const *current;
	int metrics_fd;
	bool handed_over;
	char result[512];
} self = {.metrics_fd = -1};

/* The new process: what the previous one handed over. */
static struct {
	bool active;
	int fd;                      /* our end, until READY */
	pid_t prev_pid;
	unsigned prev_ncores;
	uint64_t in_use[UPGRADE_MAX_CORES];
	int *fds;
	uint8_t *kinds;
	size_t nfds;
	int *by_kind;                /* scratch for upgrade_sockets() */
} inh = {.fd = -1};

void upgrade_setup(char **argv, const struct listener_set *listeners,
		   struct snapshot *const *current)
{
	self.argv = argv;
	self.listeners = listeners;
	self.current = current;
	ssize_t n = readlink("/proc/self/exe", self.exe, sizeof self.exe - 1);
	self.exe[n > 0 ? n : 0] = '\0';
}

void upgrade_set_socket(enum upgrade_sock_kind kind, int fd)
{
	if (kind == UPGRADE_SOCK_METRICS)
		self.metrics_fd = fd;
}

bool upgrade_handed_over(void)
{
	return self.handed_over;
}

const char *upgrade_result_text(void)
{
	return self.result;
}

/* ---- the new process ---- */

static int recv_msg(int fd, void *data, size_t len, int *fds, size_t maxfds, size_t *nfds)
{
	struct iovec iov = {data, len};
	union {
		char buf[CMSG_SPACE(UPGRADE_FDS_PER_MSG * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			     .msg_controllen = sizeof ctl.buf};
	ssize_t n;
	do
		n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	*nfds = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int got;
			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
			if (*nfds < maxfds)
				fds[(*nfds)++] = got;
			else
				close(got);
		}
	}
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		errno = EMSGSIZE;
		return -1;
	}
	return (int)n;
}

static int read_handover(int fd)
{
	struct timeval tv = {.tv_sec = UPGRADE_READ_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	static struct hello h;
	size_t nfds;
	int n = recv_msg(fd, &h, sizeof h, NULL, 0, &nfds);
	if (n != (int)sizeof h || memcmp(h.magic, UPGRADE_MAGIC, 8) != 0 ||
	    h.version != UPGRADE_VERSION || h.ncores == 0 || h.ncores > UPGRADE_MAX_CORES ||
	    h.nsocks > 65536) {
		log_error("upgrade: bad hand-over from the previous process: %s",
			  n < 0 ? strerror(errno) : "not an mxd hand-over of this version");
		return -1;
	}
	inh.prev_pid = h.pid;
	inh.prev_ncores = h.ncores;
	memcpy(inh.in_use, h.in_use, sizeof inh.in_use);
	inh.fds = malloc((h.nsocks + 1) * sizeof *inh.fds);
	inh.kinds = malloc(h.nsocks + 1);
	inh.by_kind = malloc((h.nsocks + 1) * sizeof *inh.by_kind);
	if (!inh.fds || !inh.kinds || !inh.by_kind) {
		log_error("upgrade: out of memory for the hand-over");
		return -1;
	}
	while (inh.nfds < h.nsocks) {
		struct socks_msg m;
		int got[UPGRADE_FDS_PER_MSG];
		n = recv_msg(fd, &m, sizeof m, got, UPGRADE_FDS_PER_MSG, &nfds);
		if (n != (int)sizeof m || m.n != nfds || m.n == 0 || inh.nfds + nfds > h.nsocks) {
			for (size_t i = 0; i < nfds; i++)
				close(got[i]);
			log_error("upgrade: bad socket message in the hand-over: %s",
				  n < 0 ? strerror(errno) : "count mismatch");
			return -1;
		}
		for (size_t i = 0; i < nfds; i++) {
			inh.fds[inh.nfds] = got[i];
			inh.kinds[inh.nfds++] = m.kind[i];
		}
	}
	return 0;
}

int upgrade_inherit(void)
{
	const char *v = getenv(UPGRADE_ENV);
	if (!v)
		return 0;
	char *end;
	long fd = strtol(v, &end, 10);
	unsetenv(UPGRADE_ENV); /* not for a later upgrade's child */
	if (*v == '\0' || *end != '\0' || fd < 0 || fd > INT_MAX ||
	    fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0) {
		log_error("upgrade: %s=%s is not an open descriptor", UPGRADE_ENV, v);
		return -1;
	}
	inh.fd = (int)fd;
	inh.active = true;
	if (read_handover(inh.fd) < 0)
		return -1;
	size_t nlisten = 0;
	for (size_t i = 0; i < inh.nfds; i++)
		nlisten += inh.kinds[i] == UPGRADE_SOCK_LISTENER;
	log_info("upgrade: taking over from pid %d: %zu listening sockets of %u cores, %zu "
		 "other sockets",
		 (int)inh.prev_pid, nlisten, inh.prev_ncores, inh.nfds - nlisten);
	return 0;
}

bool upgrade_inherited(void)
{
	return inh.active;
}

uint64_t upgrade_in_use_seq(unsigned core)
{
	return inh.active && core < inh.prev_ncores ? inh.in_use[core] : 0;
}

/* The slots of one kind are gathered into by_kind; taking one (setting it
 * to -1) is written back by upgrade_ready()/upgrade_take_socket(). */
static size_t gather(enum upgrade_sock_kind kind)
{
	size_t n = 0;
	for (size_t i = 0; i < inh.nfds; i++)
		if (inh.kinds[i] == kind)
			inh.by_kind[n++] = inh.fds[i];
	return n;
}

static void scatter(enum upgrade_sock_kind kind)
{
	size_t n = 0;
	for (size_t i = 0; i < inh.nfds; i++)
		if (inh.kinds[i] == kind)
			inh.fds[i] = inh.by_kind[n++];
}

int *upgrade_sockets(enum upgrade_sock_kind kind, size_t *n)
{
	if (!inh.active) {
		*n = 0;
		return NULL;
	}
	*n = gather(kind);
	return inh.by_kind;
}

/* upgrade_sockets() hands out by_kind; fold what the caller took back in. */
static void settle_sockets(enum upgrade_sock_kind kind)
{
	if (inh.active)
		scatter(kind);
}

int upgrade_take_socket(enum upgrade_sock_kind kind)
{
	if (!inh.active)
		return -1;
	for (size_t i = 0; i < inh.nfds; i++) {
		if (inh.kinds[i] == kind && inh.fds[i] >= 0) {
			int fd = inh.fds[i];
			inh.fds[i] = -1;
			return fd;
		}
	}
	return -1;
}

void upgrade_ready(void)
{
	if (!inh.active)
		return;
	settle_sockets(UPGRADE_SOCK_LISTENER);
	for (size_t i = 0; i < inh.nfds; i++) {
		if (inh.fds[i] < 0)
			continue;
		/* A listener no longer in the config: its queued connections
		 * go with it, as on a reload that removes it. */
		log_info("upgrade: closing an inherited socket (kind %u) this config does not use",
			 inh.kinds[i]);
		close(inh.fds[i]);
		inh.fds[i] = -1;
	}
	struct ready_msg r;
	memcpy(r.magic, UPGRADE_READY_MAGIC, 8);
	r.pid = (int32_t)getpid();
	if (send(inh.fd, &r, sizeof r, MSG_NOSIGNAL) != (ssize_t)sizeof r)
		log_error("upgrade: cannot tell pid %d we are ready: %s", (int)inh.prev_pid,
			  strerror(errno));
	else
		log_info("upgrade: ready; pid %d drains and exits", (int)inh.prev_pid);
	close(inh.fd);
	inh.fd = -1;
}

/* ---- the old process ---- */

static void result(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void result(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(self.result, sizeof self.result, fmt, ap);
	va_end(ap);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void release_spool(unsigned ncores)
{
	for (unsigned i = 0; i < ncores; i++)
		core_spool_hold(&g_daemon.cores[i], false, 0, NULL);
}

static int hold_spool(struct hello *h, unsigned timeout_ms)
{
	for (unsigned i = 0; i < g_daemon.ncores; i++) {
		if (core_spool_hold(&g_daemon.cores[i], true, timeout_ms, &h->in_use[i]) < 0) {
			release_spool(i + 1);
			result("core %u did not answer the spool hold within %u ms", i, timeout_ms);
			return -1;
		}
	}
	return 0;
}

static int send_socks(int fd, const int *fds, const uint8_t *kinds, size_t n)
{
	struct socks_msg m;
	memset(&m, 0, sizeof m);
	m.n = (uint32_t)n;
	memcpy(m.kind, kinds, n);
	struct iovec iov = {&m, sizeof m};
	union {
		char buf[CMSG_SPACE(UPGRADE_FDS_PER_MSG * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof ctl);
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			     .msg_controllen = CMSG_SPACE(n * sizeof(int))};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(n * sizeof(int));
	memcpy(CMSG_DATA(c), fds, n * sizeof(int));
	return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)sizeof m ? 0 : -1;
}

/* Every socket that moves, in batches of UPGRADE_FDS_PER_MSG. */
struct batch {
	int fd;
	int fds[UPGRADE_FDS_PER_MSG];
	uint8_t kinds[UPGRADE_FDS_PER_MSG];
	size_t n;
	int err;
};

static void batch_add(struct batch *b, int fd, enum upgrade_sock_kind kind)
{
	if (b->err)
		return;
	b->fds[b->n] = fd;
	b->kinds[b->n++] = (uint8_t)kind;
	if (b->n == UPGRADE_FDS_PER_MSG) {
		if (send_socks(b->fd, b->fds, b->kinds, b->n) < 0)
			b->err = errno;
		b->n = 0;
	}
}

static size_t count_socks(void)
{
	size_t n = self.metrics_fd >= 0;
	for (size_t i = 0; i < self.listeners->n; i++)
		n += self.listeners->entries[i].nsocks;
	return n;
}

static int write_handover(int fd, struct hello *h)
{
	memcpy(h->magic, UPGRADE_MAGIC, 8);
	h->version = UPGRADE_VERSION;
	h->ncores = g_daemon.ncores;
	h->pid = (int32_t)getpid();
	h->nsocks = (uint32_t)count_socks();
	if (send(fd, h, sizeof *h, MSG_NOSIGNAL) != (ssize_t)sizeof *h)
		return -1;
	struct batch b = {.fd = fd};
	for (size_t i = 0; i < self.listeners->n; i++) {
		const struct listen_entry *e = &self.listeners->entries[i];
		for (unsigned j = 0; j < e->nsocks; j++)
			batch_add(&b, e->socks[j].fd, UPGRADE_SOCK_LISTENER);
	}
	if (self.metrics_fd >= 0)
		batch_add(&b, self.metrics_fd, UPGRADE_SOCK_METRICS);
	if (!b.err && b.n > 0 && send_socks(fd, b.fds, b.kinds, b.n) < 0)
		b.err = errno;
	errno = b.err;
	return b.err ? -1 : 0;
}

/* The environment with MXD_UPGRADE_FD=fd in place of any inherited one. */
static char **child_environ(int fd, char *slot, size_t slot_len)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = calloc(n + 2, sizeof *env);
	if (!env)
		return NULL;
	size_t k = 0, keylen = strlen(UPGRADE_ENV);
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], UPGRADE_ENV, keylen) != 0 || environ[i][keylen] != '=')
			env[k++] = environ[i];
	snprintf(slot, slot_len, "%s=%d", UPGRADE_ENV, fd);
	env[k++] = slot;
	env[k] = NULL;
	return env;
}

static int spawn_child(const char *path, int child_fd, pid_t *pid)
{
	char slot[64];
	char **env = child_environ(child_fd, slot, sizeof slot);
	if (!env)
		return ENOMEM;
	posix_spawnattr_t attr;
	posix_spawnattr_init(&attr);
	sigset_t none, dfl;
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	int rc = posix_spawn(pid, path, NULL, &attr, self.argv, env);
	posix_spawnattr_destroy(&attr);
	free(env);
	return rc;
}

static void describe_exit(int status, char *out, size_t len)
{
	if (WIFEXITED(status))
		snprintf(out, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(out, len, "was killed by signal %d", WTERMSIG(status));
	else
		snprintf(out, len, "stopped");
}

/* READY from the child, or why not. */
static int wait_ready(int fd, pid_t child, unsigned timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		uint64_t now = now_ms();
		if (now >= deadline) {
			result("new process %d not ready within %u ms (timeout upgrade)", (int)child,
			       timeout_ms);
			return -1;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int rc = poll(&p, 1, (int)(deadline - now));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0) {
			result("poll: %s", strerror(errno));
			return -1;
		}
		if (rc == 0)
			continue;
		struct ready_msg r;
		ssize_t n = recv(fd, &r, sizeof r, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n == (ssize_t)sizeof r && memcmp(r.magic, UPGRADE_READY_MAGIC, 8) == 0 &&
		    r.pid == (int32_t)child)
			return 0;
		int status;
		char how[64] = "closed the hand-over socket";
		/* EOF: it exited, or is about to; give it a moment to be reaped */
		for (int i = 0; i < 100; i++) {
			if (waitpid(child, &status, WNOHANG) == child) {
				describe_exit(status, how, sizeof how);
				result("new process %d %s before it was ready", (int)child, how);
				return -2; /* reaped */
			}
			usleep(10000);
		}
		result("new process %d %s before it was ready", (int)child,
		       n < 0 ? strerror(errno) : how);
		return -1;
	}
}

static int refuse_busy(void)
{
	if (inh.active && getppid() == inh.prev_pid) {
		result("refused: the previous process (pid %d) is still draining", (int)inh.prev_pid);
		return -1;
	}
	if (atomic_load(&g_daemon.draining)) {
		result("refused: this process is draining");
		return -1;
	}
	return 0;
}

int upgrade_start(void)
{
	if (refuse_busy() < 0) {
		log_warn("upgrade %s", self.result);
		return UPGRADE_BUSY;
	}
	const char *path = getenv(UPGRADE_BINARY_ENV);
	if (!path || !*path)
		path = self.exe;
	unsigned timeout_ms = (*self.current)->conf->timeouts.upgrade;
	log_info("upgrade: starting %s (timeout %u ms)", path, timeout_ms);
	static struct hello h;
	memset(&h, 0, sizeof h);
	int sp[2] = {-1, -1};
	pid_t child = -1;
	int rc = UPGRADE_FAILED;
	if (hold_spool(&h, timeout_ms) < 0)
		goto out;
	/* the parent's end is close-on-exec, the child's is not: it is the
	 * one descriptor the new binary inherits on purpose */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) < 0 ||
	    fcntl(sp[0], F_SETFD, FD_CLOEXEC) < 0) {
		result("socketpair: %s", strerror(errno));
		goto release;
	}
	if (write_handover(sp[0], &h) < 0) {
		result("writing the hand-over: %s", strerror(errno));
		goto release;
	}
	int err = spawn_child(path, sp[1], &child);
	close(sp[1]);
	sp[1] = -1;
	if (err != 0) {
		child = -1;
		result("cannot start %s: %s", path, strerror(err));
		goto release;
	}
	int w = wait_ready(sp[0], child, timeout_ms);
	if (w == 0) {
		self.handed_over = true;
		atomic_store(&g_daemon.drain_soft, true);
		result("new process %d is ready; pid %d drains and exits", (int)child,
		       (int)getpid());
		log_info("upgrade: %s", self.result);
		rc = UPGRADE_OK;
		goto out;
	}
	if (w == -1) {
		kill(child, SIGKILL);
		while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
			;
	}
release:
	release_spool(g_daemon.ncores);
	log_error("upgrade failed: %s; this process (pid %d) keeps serving", self.result,
		  (int)getpid());
out:
	if (sp[0] >= 0)
		close(sp[0]);
	if (sp[1] >= 0)
		close(sp[1]);
	return rc;
}
