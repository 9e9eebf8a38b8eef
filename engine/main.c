/* mxd: start-up, the main thread's event loop, and shutdown. The main
 * thread owns the config and the signals; the cores do all the work. */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control.h"
#include "core.h"
#include "ktls.h"
#include "listeners.h"
#include "log.h"
#include "metrics.h"
#include "spool.h"
#include "upgrade.h"

#define MAX_CORES 256
/* How long start-up waits for every core to accept. */
#define CORES_READY_TIMEOUT_MS 10000

/* The listening sockets (main thread): reload changes them, an upgrade
 * hands them over, a drain closes them. */
static struct listener_set g_listeners;

struct options {
	const char *config_path;
	bool check_only;
	bool verbose;
};

static void usage(FILE *out)
{
	fprintf(out, "usage: mxd [-n] [-v] [-f FILE]\n"
		     "  -f FILE  configuration file (default conf/mxd.conf)\n"
		     "  -n       check the configuration and exit\n"
		     "  -v       debug logging\n");
}

static int parse_options(int argc, char **argv, struct options *o)
{
	o->config_path = "conf/mxd.conf";
	int ch;
	while ((ch = getopt(argc, argv, "f:nvh")) != -1) {
		switch (ch) {
		case 'f':
			o->config_path = optarg;
			break;
		case 'n':
			o->check_only = true;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return -1;
	}
	return 0;
}

static struct snapshot *load_config(const char *path, uint64_t generation)
{
	struct buf errs;
	buf_init(&errs, 0);
	struct snapshot *s = snapshot_load(path, generation, ktls_kernel_supported(), &errs);
	if (!s && errs.len == 0)
		buf_printf(&errs, "%s: cannot load configuration\n", path);
	if (errs.len > 0)
		fwrite(errs.data, 1, errs.len, stderr);
	buf_free(&errs);
	return s;
}

/* CPUs this process may run on, in order; one core thread per CPU. */
static unsigned available_cpus(int *cpus, unsigned max)
{
	cpu_set_t set;
	unsigned n = 0;
	if (sched_getaffinity(0, sizeof set, &set) == 0) {
		for (int i = 0; i < CPU_SETSIZE && n < max; i++)
			if (CPU_ISSET(i, &set))
				cpus[n++] = i;
	}
	if (n == 0) {
		long online = sysconf(_SC_NPROCESSORS_ONLN);
		for (long i = 0; i < online && n < max; i++)
			cpus[n++] = (int)i;
	}
	return n ? n : 1;
}

static int mkdir_p(const char *path)
{
	char tmp[4096];
	int n = snprintf(tmp, sizeof tmp, "%s", path);
	if (n < 0 || (size_t)n >= sizeof tmp)
		return -1;
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(tmp, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

static int recover_core(const char *dir, unsigned core, uint64_t *next_seq)
{
	struct spool_recovery r;
	struct buf log;
	buf_init(&log, 0);
	memset(&r, 0, sizeof r);
	int rc = spool_recover_except(dir, core, upgrade_in_use_seq(core), &r, &log);
	if (log.len > 0) {
		buf_append(&log, "", 1);
		char *save = NULL;
		for (char *line = strtok_r(log.data, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save))
			log_msg(rc < 0 ? LOG_ERROR : LOG_INFO, "%s", line);
	}
	buf_free(&log);
	if (rc == 0) {
		log_info("spool: core %u recovered %llu records in %llu segments (%llu corrupt, %llu "
			 "torn bytes cut)",
			 core, (unsigned long long)r.records, (unsigned long long)r.segments,
			 (unsigned long long)r.corrupt_records, (unsigned long long)r.truncated_bytes);
		if (next_seq)
			*next_seq = r.next_seq;
	}
	return rc;
}

/* Every core directory is recovered, including those of cores a previous
 * run had and this one does not, so no torn tail is left anywhere. */
static int recover_spool(const char *dir, unsigned ncores, uint64_t *next_seq)
{
	if (mkdir_p(dir) < 0) {
		log_error("spool: cannot create %s: %s", dir, strerror(errno));
		return -1;
	}
	for (unsigned i = 0; i < ncores; i++)
		if (recover_core(dir, i, &next_seq[i]) < 0)
			return -1;
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		char *end;
		unsigned long core = strtoul(e->d_name, &end, 10);
		if (end == e->d_name || *end != '\0' || core < ncores || core >= 100)
			continue;
		if (recover_core(dir, (unsigned)core, NULL) < 0)
			rc = -1;
	}
	closedir(d);
	return rc;
}

static void log_tls_path(const struct snapshot *s)
{
	if (s->conf->npkis == 0)
		return;
	if (s->ktls)
		log_info("tls: kTLS offload in use: after each handshake the kernel does the records "
			 "(AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305)");
	else if (s->conf->ktls == CONF_KTLS_OFF)
		log_info("tls: userspace path (BoringSSL records): ktls off in the config");
	else
		log_info("tls: userspace path (BoringSSL records): this kernel has no kTLS "
			 "(TCP_ULP \"tls\")");
}

/* Who may send each proxy listener's headers: said at start-up and after
 * a reload; a warning when any peer may. */
static void log_proxy_peers(const struct conf *c)
{
	struct buf who;
	buf_init(&who, 0);
	for (size_t i = 0; i < c->nlisteners; i++) {
		const struct conf_listener *l = &c->listeners[i];
		if (!(l->flags & (CONF_LISTEN_PROXY_V1 | CONF_LISTEN_PROXY_V2)))
			continue;
		buf_reset(&who);
		conf_proxy_from_describe(c, l, &who);
		if (buf_append(&who, "", 1) < 0)
			continue; /* out of memory: the line is not worth a failure */
		if (l->proxy_from == CONF_PROXY_FROM_ANY)
			log_warn("listen on %s port %u: PROXY headers believed from %s: whoever "
				 "reaches this port can claim any client address; firewall it",
				 l->addr_text, l->port, who.data);
		else
			log_info("listen on %s port %u: PROXY headers believed from %s; other "
				 "peers are closed at once",
				 l->addr_text, l->port, who.data);
	}
	buf_free(&who);
}

/* The next listener set (sockets that stay are kept, with the connections
 * queued on them; new ones opened) and a mail per core with it and the
 * snapshot; all or nothing. */
static bool same_text(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* What a reload cannot change in a running process: said, not ignored. */
static void warn_restart_only_changes(const struct conf *cur, const struct conf *next)
{
	if (strcmp(cur->spool_dir, next->spool_dir) != 0)
		log_warn("reload: spool directory changes need a restart or upgrade; keeping %s",
			 cur->spool_dir);
	if (!same_text(cur->metrics.addr_text, next->metrics.addr_text) ||
	    cur->metrics.port != next->metrics.port)
		log_warn("reload: metrics listener changes need a restart or upgrade; keeping %s "
			 "port %u",
			 cur->metrics.addr_text ? cur->metrics.addr_text : "(none)",
			 (unsigned)cur->metrics.port);
	if (!same_text(cur->control.path, next->control.path))
		log_warn("reload: control socket changes need a restart or upgrade; keeping %s",
			 cur->control.path ? cur->control.path : "(none)");
	if (cur->cores != next->cores)
		log_warn("reload: cores changes need a restart or upgrade; keeping %u",
			 g_daemon.ncores);
}

static int publish(const struct snapshot *cur, struct snapshot *next, struct buf *reply)
{
	struct buf errs;
	buf_init(&errs, 0);
	struct listener_set set;
	if (listener_set_reload(&g_listeners, next->conf, &set, &errs) < 0) {
		buf_append(&errs, "", 1);
		log_error("reload refused: %.*s", (int)strcspn(errs.data, "\n"), errs.data);
		if (reply)
			buf_append_str(reply, errs.data);
		buf_free(&errs);
		return -1;
	}
	buf_free(&errs);
	struct core_mail **mails = calloc(g_daemon.ncores, sizeof *mails);
	for (unsigned i = 0; mails && i < g_daemon.ncores; i++) {
		mails[i] = listener_set_mail(&set, i, next);
		if (!mails[i]) {
			while (i-- > 0)
				core_mail_free(mails[i]);
			free(mails);
			mails = NULL;
		}
	}
	if (!mails) {
		log_error("reload refused: out of memory or descriptors for the cores' listeners");
		if (reply)
			buf_printf(reply, "out of memory or descriptors for the cores' listeners\n");
		listener_set_abandon(&set);
		return -1;
	}
	warn_restart_only_changes(cur->conf, next->conf);
	for (unsigned i = 0; i < g_daemon.ncores; i++)
		core_post_mail(&g_daemon.cores[i], mails[i]);
	free(mails);
	listener_set_commit(&g_listeners, &set);
	return 0;
}

/* Reloads the config: new sessions get it, sessions in progress finish on
 * theirs. The same code serves SIGHUP and the control socket's "reload";
 * `reply` (may be NULL) gets "ok generation N" or one line per error.
 * Returns 0 when the new config is published. */
static int reload(struct snapshot **current, struct buf *reply)
{
	uint64_t generation = (*current)->generation + 1;
	log_info("reloading %s", g_daemon.config_path);
	struct buf errs;
	buf_init(&errs, 0);
	struct snapshot *next =
		snapshot_load(g_daemon.config_path, generation, ktls_kernel_supported(), &errs);
	if (!next) {
		if (errs.len == 0)
			buf_printf(&errs, "%s: cannot load configuration\n", g_daemon.config_path);
		buf_append(&errs, "", 1);
		char *save = NULL;
		for (char *line = strtok_r(errs.data, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			log_error("reload refused: %s", line);
			if (reply)
				buf_printf(reply, "%s\n", line);
		}
		buf_free(&errs);
		return -1;
	}
	buf_free(&errs);
	if (next->conf->nlisteners == 0) {
		/* as at start-up: a config that serves nothing is a mistake */
		log_error("reload refused: %s: no listen directive: nothing to serve",
			  g_daemon.config_path);
		if (reply)
			buf_printf(reply, "%s: no listen directive: nothing to serve\n",
				   g_daemon.config_path);
		snapshot_release(next);
		return -1;
	}
	if (publish(*current, next, reply) < 0) {
		snapshot_release(next);
		return -1;
	}
	snapshot_release(*current);
	*current = next;
	log_info("reload: config generation %llu published", (unsigned long long)generation);
	log_proxy_peers((*current)->conf);
	if (reply)
		buf_printf(reply, "ok generation %llu\n", (unsigned long long)generation);
	return 0;
}

/* ---- the main thread's event loop ----
 *
 * The main thread owns the signals and the control socket. Signals
 * are blocked in every thread and read from a signalfd, so a signal is
 * handled here, in the loop, like any other event: poll(2) waits on the
 * signalfd and any other descriptor the loop serves. */

/* Every signal the loop handles: blocked at start-up (the core threads
 * inherit the mask) and read from the signalfd. Add a signal here and a
 * case in on_signal(). */
static const int handled_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR2};
#define NHANDLED_SIGNALS (sizeof handled_signals / sizeof handled_signals[0])

/* poll(2) slots: the signalfd, then the control socket's. */
#define MAIN_POLL_MAX (1 + CONTROL_POLLFDS_MAX)

enum loop_next { LOOP_CONTINUE, LOOP_DRAIN };

static void handled_signal_set(sigset_t *set)
{
	sigemptyset(set);
	for (size_t i = 0; i < NHANDLED_SIGNALS; i++)
		sigaddset(set, handled_signals[i]);
}

/* What each signal does. SIGTERM and SIGINT end the loop; the drain
 * follows in main_loop(). */
static enum loop_next on_signal(int sig, struct snapshot **current)
{
	switch (sig) {
	case SIGHUP:
		reload(current, NULL);
		return LOOP_CONTINUE;
	case SIGUSR2:
		log_info("SIGUSR2: binary upgrade");
		return upgrade_start() == UPGRADE_OK ? LOOP_DRAIN : LOOP_CONTINUE;
	case SIGTERM:
	case SIGINT:
		log_info("%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		return LOOP_DRAIN;
	default:
		log_warn("signal %d: not handled", sig);
		return LOOP_CONTINUE;
	}
}

/* Reads every pending signal; LOOP_DRAIN if one of them asks for it. */
static enum loop_next read_signals(int sfd, struct snapshot **current)
{
	enum loop_next next = LOOP_CONTINUE;
	for (;;) {
		struct signalfd_siginfo si;
		ssize_t n = read(sfd, &si, sizeof si);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return next;
		if (n != (ssize_t)sizeof si) {
			log_error("signalfd read: %s", n < 0 ? strerror(errno) : "short read");
			return LOOP_DRAIN; /* cannot hear SIGTERM any more: stop cleanly */
		}
		if (on_signal((int)si.ssi_signo, current) == LOOP_DRAIN)
			next = LOOP_DRAIN;
	}
}

/* Tells the first n cores (those whose threads run) to drain and waits
 * for them; their exit status. */
static int drain_cores(unsigned n)
{
	assert(n <= g_daemon.ncores);
	atomic_store(&g_daemon.draining, true);
	for (unsigned i = 0; i < n; i++)
		core_wake(&g_daemon.cores[i]);
	/* the cores close their own descriptors: with these gone the
	 * sockets close (or, after an upgrade, live on in the new process) */
	listener_set_close(&g_listeners);
	if (upgrade_handed_over())
		metrics_server_stop(); /* scrapes go to the new process */
	int status = 0;
	for (unsigned i = 0; i < n; i++) {
		pthread_join(g_daemon.cores[i].thread, NULL);
		status |= g_daemon.cores[i].exit_status;
	}
	return status;
}

static int main_loop(struct snapshot **current)
{
	sigset_t set;
	handled_signal_set(&set);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		log_error("signalfd: %s", strerror(errno));
		return drain_cores(g_daemon.ncores) | 1;
	}
	enum loop_next next = LOOP_CONTINUE;
	while (next == LOOP_CONTINUE) {
		struct pollfd pfd[MAIN_POLL_MAX];
		unsigned n = 0;
		pfd[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		unsigned nctl = control_pollfds(&pfd[n], MAIN_POLL_MAX - n);
		n += nctl;
		int rc = poll(pfd, n, control_timeout_ms());
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			log_error("poll: %s", strerror(errno));
			next = LOOP_DRAIN;
			break;
		}
		if (pfd[0].revents)
			next = read_signals(sfd, current);
		if (next == LOOP_CONTINUE)
			control_service(&pfd[1], nctl);
		if (upgrade_handed_over()) /* "mxctl upgrade": the reply is sent */
			next = LOOP_DRAIN;
	}
	close(sfd);
	control_close(); /* nobody serves it while the cores drain */
	return drain_cores(g_daemon.ncores);
}

/* ---- what the control socket asks of the daemon ---- */

static int control_reload(void *ctx, struct buf *reply)
{
	return reload(ctx, reply);
}

static int control_upgrade(void *ctx, struct buf *reply)
{
	(void)ctx;
	int rc = upgrade_start();
	buf_printf(reply, "%s\n", upgrade_result_text());
	return rc == UPGRADE_OK ? 0 : -1;
}

static const struct snapshot *control_current(void *ctx)
{
	return *(struct snapshot **)ctx;
}

static void block_signals(void)
{
	sigset_t set;
	handled_signal_set(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by the core threads */
	signal(SIGPIPE, SIG_IGN);
}

/* What start-up has taken so far, so that every way out of main() gives
 * it back through one path, start_undo(). */
struct start {
	struct snapshot *snap;    /* the config; a reload replaces it */
	uint64_t *next_seq;       /* per core: the spool segment to open */
	unsigned prepared;        /* cores through core_prepare, even a failed one */
	unsigned started;         /* of those, cores whose thread runs */
	bool metrics, control;
};

static void start_undo(struct start *st)
{
	if (st->control)
		control_close();
	if (st->started)
		drain_cores(st->started); /* they free their own parts */
	else
		listener_set_close(&g_listeners);
	for (unsigned i = st->started; i < st->prepared; i++)
		core_discard(&g_daemon.cores[i]);
	if (st->metrics)
		metrics_server_stop();
	free(g_daemon.cores);
	g_daemon.cores = NULL;
	g_daemon.ncores = 0;
	free(st->next_seq);
	snapshot_release(st->snap);
	memset(st, 0, sizeof *st);
}

/* Everything between the config and the main loop; -1 (after logging
 * why) leaves what it took in st for start_undo(). */
static int start(struct start *st, const struct options *opt, char **argv)
{
	const struct conf *c = st->snap->conf;
	block_signals();
	upgrade_setup(argv, &g_listeners, &st->snap);
	if (upgrade_inherit() < 0)
		return -1;

	static int cpus[MAX_CORES];
	unsigned ncpus = available_cpus(cpus, MAX_CORES);
	unsigned ncores = c->cores ? c->cores : ncpus;
	if (ncores > MAX_CORES)
		ncores = MAX_CORES;
	g_daemon.config_path = opt->config_path;
	atomic_init(&g_daemon.draining, false);
	atomic_init(&g_daemon.paused, false);

	st->next_seq = calloc(ncores, sizeof *st->next_seq);
	g_daemon.cores = calloc(ncores, sizeof *g_daemon.cores);
	if (!st->next_seq || !g_daemon.cores) {
		log_error("out of memory");
		return -1;
	}
	g_daemon.ncores = ncores;
	if (recover_spool(c->spool_dir, ncores, st->next_seq) < 0)
		return -1;
	size_t ninherited;
	int *inherited = upgrade_sockets(UPGRADE_SOCK_LISTENER, &ninherited);
	if (listener_set_open(&g_listeners, c, ncores, inherited, ninherited) < 0)
		return -1;
	for (unsigned i = 0; i < ncores; i++) {
		int cpu = ncores <= ncpus ? cpus[i] : -1;
		struct core_mail *mail = listener_set_mail(&g_listeners, i, st->snap);
		if (!mail)
			return -1;
		st->prepared++; /* from here the core holds parts, even if it fails */
		if (core_prepare(&g_daemon.cores[i], i, cpu, mail, st->next_seq[i]) < 0)
			return -1;
	}
	/* before the cores run, so a metrics port in use stops start-up
	 * with nothing accepted yet */
	if (c->metrics.addr_text) {
		if (metrics_server_start(&c->metrics, g_daemon.cores, ncores) < 0) {
			log_error("%s:%d:%d: metrics listen on %s port %u: cannot listen; mxd not "
				  "started",
				  c->path, c->metrics.line, c->metrics.col, c->metrics.addr_text,
				  c->metrics.port);
			return -1;
		}
		st->metrics = true;
	}
	struct control_ops ops = { /* control_open keeps a copy */
		.ctx = &st->snap,
		.reload = control_reload,
		.current = control_current,
		.upgrade = control_upgrade,
	};
	st->control = true; /* control_close also frees what a failed open took */
	if (control_open(&c->control, &ops) < 0)
		return -1;
	for (unsigned i = 0; i < ncores; i++) {
		if (core_start(&g_daemon.cores[i]) < 0)
			return -1;
		st->started++;
	}
	if (!core_wait_ready(g_daemon.cores, ncores, CORES_READY_TIMEOUT_MS)) {
		log_error("the cores did not start accepting within %u ms", CORES_READY_TIMEOUT_MS);
		return -1;
	}
	upgrade_ready(); /* after an upgrade: the previous process may drain now */
	for (size_t i = 0; i < c->nlisteners; i++)
		log_info("listening on %s port %u", c->listeners[i].addr_text, c->listeners[i].port);
	log_proxy_peers(c);
	log_info("mxd started: %u cores, spool %s, max message size %llu", ncores, c->spool_dir,
		 (unsigned long long)c->max_message_size);
	log_tls_path(st->snap);
	return 0;
}

int main(int argc, char **argv)
{
	struct options opt = {0};
	if (parse_options(argc, argv, &opt) < 0)
		return 2;
	log_thread_init("main", 0);
	if (opt.verbose)
		log_set_level(LOG_DEBUG);
	struct start st = {0};
	st.snap = load_config(opt.config_path, 1);
	if (!st.snap)
		return 1;
	int status = 1;
	if (opt.check_only) {
		printf("%s: configuration OK\n", opt.config_path);
		status = 0;
	} else if (st.snap->conf->nlisteners == 0) {
		fprintf(stderr, "%s: no listen directive: nothing to serve\n", opt.config_path);
	} else if (start(&st, &opt, argv) == 0) {
		status = main_loop(&st.snap); /* drains and joins every core */
		st.started = st.prepared = 0;
		st.control = false;       /* main_loop closed it */
		log_info("mxd stopped");
	}
	start_undo(&st);
	log_flush();
	return status;
}
