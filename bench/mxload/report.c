/* report: the merged results as a table for people and as JSON. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mxload.h"

const char *err_kind_name(enum mxl_err k)
{
	static const char *const names[ERR_KINDS] = {
		[ERR_CONNECT] = "connect", [ERR_REPLY] = "reply", [ERR_PROTOCOL] = "protocol",
		[ERR_CLOSED] = "closed", [ERR_TIMEOUT] = "timeout", [ERR_TLS] = "tls",
		[ERR_LOCAL] = "local",
	};
	return names[k];
}

void stats_merge(struct mxl_stats *t, const struct mxl_stats *s)
{
	t->msgs_ok += s->msgs_ok;
	t->msgs_failed += s->msgs_failed;
	t->bytes_ok += s->bytes_ok;
	t->conns_opened += s->conns_opened;
	t->conns_closed_clean += s->conns_closed_clean;
	t->handshakes += s->handshakes;
	t->resumed += s->resumed;
	t->arrivals += s->arrivals;
	for (int k = 0; k < ERR_KINDS; k++)
		t->errors[k] += s->errors[k];
	for (int i = 0; i < 600; i++)
		t->replies[i] += s->replies[i];
	if (s->last_ack_ns > t->last_ack_ns)
		t->last_ack_ns = s->last_ack_ns;
	hist_merge(&t->h_connect, &s->h_connect);
	hist_merge(&t->h_handshake, &s->h_handshake);
	hist_merge(&t->h_eod, &s->h_eod);
	hist_merge(&t->h_msg, &s->h_msg);
	for (unsigned i = 0; i < s->nexamples && t->nexamples < MXL_MAX_EXAMPLES; i++)
		memcpy(t->examples[t->nexamples++], s->examples[i], MXL_EXAMPLE_LEN);
	if (!t->tls_version[0] && s->tls_version[0]) {
		memcpy(t->tls_version, s->tls_version, sizeof t->tls_version);
		memcpy(t->tls_cipher, s->tls_cipher, sizeof t->tls_cipher);
	}
}

static uint64_t total_errors(const struct mxl_stats *t)
{
	uint64_t n = 0;
	for (int k = 0; k < ERR_KINDS; k++)
		n += t->errors[k];
	return n;
}

static void size_text(const struct mxl_options *o, char *out, size_t len)
{
	size_t n = 0;
	out[0] = '\0';
	for (unsigned i = 0; i < o->nsizes && n < len; i++) {
		uint64_t s = o->sizes[i].size;
		char one[48];
		if (s % (1024 * 1024) == 0)
			snprintf(one, sizeof one, "%" PRIu64 "m", s / (1024 * 1024));
		else if (s % 1024 == 0)
			snprintf(one, sizeof one, "%" PRIu64 "k", s / 1024);
		else
			snprintf(one, sizeof one, "%" PRIu64, s);
		if (o->nsizes > 1)
			n += (size_t)snprintf(out + n, len - n, "%s%s:%u", i ? "," : "", one,
					      o->sizes[i].weight);
		else
			n += (size_t)snprintf(out + n, len - n, "%s", one);
	}
}

static const char *tls_text(const struct mxl_options *o)
{
	return o->tls == MXL_TLS_STARTTLS ? "starttls" : o->tls == MXL_TLS_SMTPS ? "smtps" : "none";
}

static void cpus_text(const struct mxl_options *o, char *out, size_t len)
{
	if (o->ncpus == 0) {
		snprintf(out, len, "unpinned");
		return;
	}
	size_t n = 0;
	for (unsigned i = 0; i < o->ncpus && n < len; i++)
		n += (size_t)snprintf(out + n, len - n, "%s%d", i ? "," : "", o->cpus[i]);
}

static double rate(uint64_t n, double s)
{
	return s > 0 ? (double)n / s : 0;
}

static void hist_row(FILE *f, const char *name, const struct hist *h)
{
	if (h->count == 0) {
		fprintf(f, "  %-24s %9s\n", name, "-");
		return;
	}
	fprintf(f, "  %-24s %9" PRIu64 " %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n", name, h->count,
	       (double)hist_quantile(h, 0.50) / 1e6, (double)hist_quantile(h, 0.90) / 1e6,
	       (double)hist_quantile(h, 0.99) / 1e6, (double)hist_quantile(h, 0.999) / 1e6,
	       (double)h->max / 1e6, (double)h->sum / (double)h->count / 1e6);
}

void report_print(const struct mxl_run *run, const struct mxl_stats *t, double wall, double run_s,
		  double user, double sys)
{
	/* with --json - the JSON has stdout to itself */
	FILE *f = run->opt->json_path && strcmp(run->opt->json_path, "-") == 0 ? stderr : stdout;
	const struct mxl_options *o = run->opt;
	char sizes[256], cpus[256];
	size_text(o, sizes, sizeof sizes);
	cpus_text(o, cpus, sizeof cpus);
	fprintf(f, "mxload %s: %u connections, ", o->server_str, o->connections);
	if (o->messages)
		fprintf(f, "%" PRIu64 " messages", o->messages);
	else
		fprintf(f, "%.1f s", o->duration);
	fprintf(f, ", %u per connection, %u rcpt, size %s, %s, pipelining %s, tls %s%s%s, ",
	       o->per_conn, o->rcpts, sizes, o->bdat ? "BDAT" : "DATA", o->pipelining ? "on" : "off",
	       tls_text(o), o->auth_user ? ", auth" : "",
	       o->proxy == 1 ? ", proxy v1" : o->proxy == 2 ? ", proxy v2" : "");
	if (o->rate > 0)
		fprintf(f, "open loop %.0f msg/s", o->rate);
	else
		fprintf(f, "closed loop");
	fprintf(f, ", cpus %s\n", cpus);

	fprintf(f, "  %-20s %.3f s to the last acknowledgement (%.3f s in all)\n", "time", wall, run_s);
	fprintf(f, "  %-20s %" PRIu64 " acknowledged, %" PRIu64 " failed: %.1f msg/s\n", "messages",
	       t->msgs_ok, t->msgs_failed, rate(t->msgs_ok, wall));
	if (o->rate > 0)
		fprintf(f, "  %-20s %" PRIu64 " scheduled at %.0f/s\n", "arrivals", t->arrivals, o->rate);
	fprintf(f, "  %-20s %.2f MB/s (%" PRIu64 " bytes of message content; MB = 10^6 bytes)\n",
	       "throughput", rate(t->bytes_ok, wall) / 1e6, t->bytes_ok);
	fprintf(f, "  %-20s %" PRIu64 " opened (%.1f/s), %" PRIu64 " ended with QUIT/221/close\n",
	       "connections", t->conns_opened, rate(t->conns_opened, wall), t->conns_closed_clean);
	if (o->tls != MXL_TLS_NONE)
		fprintf(f, "  %-20s %" PRIu64 " (%.1f/s), %" PRIu64 " resumed; %s %s\n", "TLS handshakes",
		       t->handshakes, rate(t->handshakes, wall), t->resumed,
		       t->tls_version[0] ? t->tls_version : "-", t->tls_cipher);
	double cpu = user + sys;
	fprintf(f, "  %-20s user %.2f s + sys %.2f s = %.1f%% of one CPU (%u worker%s); "
	       "%.0f msg per CPU-second\n",
	       "client CPU", user, sys, run_s > 0 ? 100.0 * cpu / run_s : 0, run->nworkers,
	       run->nworkers == 1 ? "" : "s", cpu > 0 ? (double)t->msgs_ok / cpu : 0);
	fprintf(f, "latency (ms)                   count       p50       p90       p99     p99.9       max      mean\n");
	hist_row(f, "connect -> greeting", &t->h_connect);
	if (o->tls != MXL_TLS_NONE)
		hist_row(f, "TLS handshake", &t->h_handshake);
	hist_row(f, "end of data -> reply", &t->h_eod);
	hist_row(f, o->rate > 0 ? "scheduled -> 250" : "MAIL -> 250", &t->h_msg);
	fprintf(f, "replies   ");
	for (int i = 0; i < 600; i++)
		if (t->replies[i])
			fprintf(f, " %d:%" PRIu64, i, t->replies[i]);
	fprintf(f, "\n");
	uint64_t errs = total_errors(t);
	fprintf(f, "errors     %" PRIu64, errs);
	for (int k = 0; k < ERR_KINDS; k++)
		if (t->errors[k])
			fprintf(f, "  %s:%" PRIu64, err_kind_name((enum mxl_err)k), t->errors[k]);
	fprintf(f, "\n");
	for (unsigned i = 0; i < t->nexamples; i++)
		fprintf(f, "  e.g. %s\n", t->examples[i]);
	fflush(f);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void json_hist(FILE *f, const char *name, const struct hist *h, bool comma)
{
	fprintf(f, "    \"%s\": {\"count\": %" PRIu64, name, h->count);
	if (h->count)
		fprintf(f,
			", \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, "
			"\"max\": %.1f, \"mean\": %.1f",
			(double)hist_quantile(h, 0.50) / 1e3, (double)hist_quantile(h, 0.90) / 1e3,
			(double)hist_quantile(h, 0.99) / 1e3, (double)hist_quantile(h, 0.999) / 1e3,
			(double)h->max / 1e3, (double)h->sum / (double)h->count / 1e3);
	fprintf(f, "}%s\n", comma ? "," : "");
}

int report_json(const struct mxl_run *run, const struct mxl_stats *t, double wall, double run_s,
		double user, double sys, const char *path)
{
	const struct mxl_options *o = run->opt;
	FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
	if (!f) {
		perror(path);
		return -1;
	}
	char sizes[256], cpus[256];
	size_text(o, sizes, sizeof sizes);
	cpus_text(o, cpus, sizeof cpus);
	fprintf(f, "{\n  \"tool\": \"mxload\",\n  \"options\": {\"server\": ");
	json_str(f, o->server_str);
	fprintf(f, ", \"connections\": %u, \"messages\": %" PRIu64 ", \"duration\": %.3f, "
		   "\"per_conn\": %u, \"rcpts\": %u, \"size\": ",
		o->connections, o->messages, o->duration, o->per_conn, o->rcpts);
	json_str(f, sizes);
	fprintf(f, ", \"pipelining\": %s, \"bdat\": %s, \"tls\": \"%s\", \"tls_version\": \"%s\", "
		   "\"resume\": %s, \"auth\": %s, \"proxy\": %d, \"sources\": %u, \"rate\": %.3f, "
		   "\"cpus\": ",
		o->pipelining ? "true" : "false", o->bdat ? "true" : "false", tls_text(o),
		o->tls_version == 12 ? "1.2" : o->tls_version == 13 ? "1.3" : "any",
		o->resume ? "true" : "false", o->auth_user ? "true" : "false", o->proxy, o->nsources,
		o->rate);
	json_str(f, cpus);
	fprintf(f, "},\n");
	fprintf(f, "  \"wall_s\": %.6f,\n  \"run_s\": %.6f,\n", wall, run_s);
	fprintf(f, "  \"messages_ok\": %" PRIu64 ",\n  \"messages_failed\": %" PRIu64 ",\n",
		t->msgs_ok, t->msgs_failed);
	fprintf(f, "  \"messages_per_s\": %.3f,\n", rate(t->msgs_ok, wall));
	fprintf(f, "  \"bytes_ok\": %" PRIu64 ",\n  \"mb_per_s\": %.3f,\n", t->bytes_ok,
		rate(t->bytes_ok, wall) / 1e6);
	fprintf(f, "  \"arrivals\": %" PRIu64 ",\n", t->arrivals);
	fprintf(f, "  \"connections_opened\": %" PRIu64 ",\n  \"connections_per_s\": %.3f,\n",
		t->conns_opened, rate(t->conns_opened, wall));
	fprintf(f, "  \"connections_closed_clean\": %" PRIu64 ",\n", t->conns_closed_clean);
	fprintf(f, "  \"handshakes\": %" PRIu64 ",\n  \"handshakes_per_s\": %.3f,\n  \"resumed\": %" PRIu64 ",\n",
		t->handshakes, rate(t->handshakes, wall), t->resumed);
	fprintf(f, "  \"tls_negotiated\": ");
	json_str(f, t->tls_version);
	fprintf(f, ",\n  \"tls_cipher\": ");
	json_str(f, t->tls_cipher);
	fprintf(f, ",\n  \"cpu\": {\"user_s\": %.3f, \"sys_s\": %.3f, \"percent_of_one_cpu\": %.1f, "
		   "\"workers\": %u, \"messages_per_cpu_s\": %.1f},\n",
		user, sys, run_s > 0 ? 100 * (user + sys) / run_s : 0, run->nworkers,
		user + sys > 0 ? (double)t->msgs_ok / (user + sys) : 0);
	fprintf(f, "  \"latency_us\": {\n");
	json_hist(f, "connect_to_greeting", &t->h_connect, true);
	json_hist(f, "tls_handshake", &t->h_handshake, true);
	json_hist(f, "end_of_data_to_reply", &t->h_eod, true);
	json_hist(f, o->rate > 0 ? "scheduled_to_250" : "mail_to_250", &t->h_msg, false);
	fprintf(f, "  },\n  \"replies\": {");
	bool first = true;
	for (int i = 0; i < 600; i++)
		if (t->replies[i]) {
			fprintf(f, "%s\"%d\": %" PRIu64, first ? "" : ", ", i, t->replies[i]);
			first = false;
		}
	fprintf(f, "},\n  \"errors\": {\"total\": %" PRIu64, total_errors(t));
	for (int k = 0; k < ERR_KINDS; k++)
		fprintf(f, ", \"%s\": %" PRIu64, err_kind_name((enum mxl_err)k), t->errors[k]);
	fprintf(f, "},\n  \"error_examples\": [");
	for (unsigned i = 0; i < t->nexamples; i++) {
		fprintf(f, "%s", i ? ", " : "");
		json_str(f, t->examples[i]);
	}
	fprintf(f, "]\n}\n");
	if (f != stdout && fclose(f) != 0) {
		perror(path);
		return -1;
	}
	return 0;
}
