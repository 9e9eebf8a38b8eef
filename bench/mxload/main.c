/* mxload: see mxload.h for the design and --help for the options. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "mxload.h"

static struct mxl_run *g_run;

static void on_sigint(int sig)
{
	(void)sig;
	if (g_run)
		atomic_store(&g_run->stop, true);
}

static double tv_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void pin_main(const struct mxl_options *o)
{
	/* the main thread only prints progress; keep it on the workers' CPUs
	 * so that the CPU mxload is given is all it uses */
	if (o->ncpus == 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	for (unsigned i = 0; i < o->ncpus; i++)
		CPU_SET(o->cpus[i], &set);
	pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

int main(int argc, char **argv)
{
	static struct mxl_options opt;
	if (options_parse(&opt, argc, argv) < 0)
		return 2;
	if (body_build_all(&opt) < 0) {
		fprintf(stderr, "mxload: out of memory for message bodies\n");
		return 1;
	}
	static struct mxl_run run;
	run.opt = &opt;
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	run.run_id = ((uint64_t)rt.tv_sec << 32) ^ (uint64_t)rt.tv_nsec ^ ((uint64_t)getpid() << 16);
	atomic_init(&run.stop, false);
	g_run = &run;
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigint;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	pin_main(&opt);

	if (workers_create(&run) < 0) {
		fprintf(stderr, "mxload: out of memory\n");
		return 1;
	}
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	workers_start(&run);

	uint64_t last_msgs = 0, last_t = run.start_ns;
	for (;;) {
		struct timespec nap = {0, 100 * 1000 * 1000};
		uint64_t msgs, errors;
		unsigned done;
		for (int i = 0; i < 10; i++) {
			nanosleep(&nap, NULL);
			workers_progress(&run, &msgs, &errors, &done);
			if (done == run.nworkers)
				break;
		}
		if (done == run.nworkers)
			break;
		uint64_t now = mono_ns();
		if (!opt.quiet)
			fprintf(stderr, "mxload: %6.1fs %10llu messages %9.0f msg/s %llu errors\n",
				(double)(now - run.start_ns) / 1e9, (unsigned long long)msgs,
				(double)(msgs - last_msgs) * 1e9 / (double)(now - last_t),
				(unsigned long long)errors);
		last_msgs = msgs;
		last_t = now;
	}
	workers_join(&run);
	uint64_t end_ns = mono_ns();
	getrusage(RUSAGE_SELF, &ru1);

	static struct mxl_stats total;
	memset(&total, 0, sizeof total);
	hist_init(&total.h_connect);
	hist_init(&total.h_handshake);
	hist_init(&total.h_eod);
	hist_init(&total.h_msg);
	int status = 0;
	for (unsigned i = 0; i < run.nworkers; i++) {
		stats_merge(&total, worker_stats(&run, i));
		if (worker_failed(&run, i))
			status = 1;
	}
	/* rates count up to the last acknowledgement (the QUITs after it are
	 * not load); CPU use counts the whole run */
	uint64_t load_end = total.last_ack_ns > run.start_ns ? total.last_ack_ns : end_ns;
	double wall = (double)(load_end - run.start_ns) / 1e9;
	double run_wall = (double)(end_ns - run.start_ns) / 1e9;
	double user = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
	double sys = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
	if (worker_saw_no_pipelining(&run))
		fprintf(stderr, "mxload: note: the server does not offer PIPELINING; "
				"commands were sent one at a time\n");
	report_print(&run, &total, wall, run_wall, user, sys);
	if (opt.json_path && report_json(&run, &total, wall, run_wall, user, sys, opt.json_path) < 0)
		status = 1;
	uint64_t errors = 0;
	for (int k = 0; k < ERR_KINDS; k++)
		errors += total.errors[k];
	if (errors || total.msgs_failed || total.msgs_ok == 0)
		status = 1;
	workers_destroy(&run);
	body_free_all(&opt);
	return status;
}
