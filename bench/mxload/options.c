/* options: the command line. Every value is checked here, so the workers
 * can assert instead of validating. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mxload.h"

static const char usage_text[] =
	"usage: mxload [options]\n"
	"  --server HOST:PORT      SMTP server (default 127.0.0.1:2525; [::1]:PORT for IPv6)\n"
	"  --cpus LIST             one pinned worker thread per CPU: 0 | 0,1 | 0-3\n"
	"                          (default: one unpinned worker)\n"
	"  --connections N         concurrent connections, over all workers (default 10)\n"
	"  --messages N            total messages (default 10000)\n"
	"  --duration S            run for S seconds instead of a message count\n"
	"  --per-conn N            messages per connection, then QUIT and reconnect\n"
	"                          (default 0: no limit; 1 = connection churn)\n"
	"  --rcpts N               recipients per message (default 1)\n"
	"  --size SPEC             content size: 4k, or a weighted mix 1k:50,4k:30,64k:15,1m:5\n"
	"                          (suffixes k, m, g are powers of 1024)\n"
	"  --pipelining on|off     on (default): RFC 2920 groups (MAIL, RCPTs, DATA in one\n"
	"                          write; message content, next MAIL..DATA in one write)\n"
	"  --bdat                  CHUNKING (RFC 3030) instead of DATA\n"
	"  --bdat-chunk SIZE       largest BDAT chunk (default 1m)\n"
	"  --starttls | --smtps    TLS via STARTTLS, or implicit TLS from the first byte\n"
	"  --tls-version 1.2|1.3   only this TLS version (default: either)\n"
	"  --cipher LIST           TLS 1.2 cipher list (BoringSSL names)\n"
	"  --resume on|off         TLS session resumption (default on)\n"
	"  --sni NAME              server name to send in the ClientHello\n"
	"  --auth USER:PASS        AUTH PLAIN after TLS (or on plaintext, if offered)\n"
	"  --proxy v1|v2           send a PROXY protocol header first\n"
	"  --source A-B | A,B,...  bind client sockets round-robin to these addresses\n"
	"                          (127.0.0.1-127.0.0.8)\n"
	"  --rate R                open loop: R new messages/s on a fixed schedule; latency\n"
	"                          counts from each message's scheduled time\n"
	"  --from ADDR             envelope sender (default mxload@example.org)\n"
	"  --to PATTERN            recipients; %d is the recipient number 1..N\n"
	"                          (default user%d@example.com)\n"
	"  --helo NAME             EHLO name (default mxload.example.org)\n"
	"  --timeout S             longest wait for any reply (default 60)\n"
	"  --max-errors N          stop the run after N errors (default 1000; 0: never)\n"
	"  --json FILE             also write the results as JSON (-: stdout, the table\n"
	"                          then goes to stderr)\n"
	"  --quiet                 no progress lines, only the report\n";

static void usage(void)
{
	fputs(usage_text, stderr);
}

static int bad(const char *opt, const char *val, const char *why)
{
	fprintf(stderr, "mxload: %s %s: %s\n", opt, val ? val : "", why);
	return -1;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static int parse_uint(const char *s, unsigned *out, unsigned max)
{
	uint64_t v;
	if (parse_u64(s, &v) < 0 || v > max)
		return -1;
	*out = (unsigned)v;
	return 0;
}

static int parse_double(const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v > 0))
		return -1;
	*out = v;
	return 0;
}

/* "4096", "4k", "1m", "1g" (powers of 1024) */
int parse_size(const char *s, size_t n, uint64_t *out)
{
	char tmp[32];
	if (n == 0 || n >= sizeof tmp)
		return -1;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	uint64_t mult = 1;
	char last = tmp[n - 1];
	if (last == 'k' || last == 'K')
		mult = 1024;
	else if (last == 'm' || last == 'M')
		mult = 1024 * 1024;
	else if (last == 'g' || last == 'G')
		mult = 1024 * 1024 * 1024;
	if (mult != 1)
		tmp[n - 1] = '\0';
	uint64_t v;
	if (parse_u64(tmp, &v) < 0 || v == 0 || v > (UINT64_C(1) << 40) / mult)
		return -1;
	*out = v * mult;
	return 0;
}

static int parse_sizes(struct mxl_options *o, const char *spec)
{
	o->nsizes = 0;
	o->weight_total = 0;
	const char *p = spec;
	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		const char *colon = memchr(p, ':', len);
		if (o->nsizes == MXL_MAX_SIZES)
			return bad("--size", spec, "too many size classes");
		struct mxl_body *b = &o->sizes[o->nsizes];
		memset(b, 0, sizeof *b);
		size_t szlen = colon ? (size_t)(colon - p) : len;
		if (parse_size(p, szlen, &b->size) < 0)
			return bad("--size", spec, "a size is a number with an optional k, m or g");
		b->weight = 1;
		if (colon) {
			char w[16];
			size_t wl = len - szlen - 1;
			if (wl == 0 || wl >= sizeof w)
				return bad("--size", spec, "bad weight");
			memcpy(w, colon + 1, wl);
			w[wl] = '\0';
			if (parse_uint(w, &b->weight, 1000000) < 0 || b->weight == 0)
				return bad("--size", spec, "a weight is a whole number from 1");
		} else if (comma || o->nsizes > 0) {
			return bad("--size", spec, "a mix needs a weight for each size (SIZE:WEIGHT)");
		}
		o->weight_total += b->weight;
		o->nsizes++;
		if (!comma)
			break;
		p = comma + 1;
	}
	if (o->nsizes == 0)
		return bad("--size", spec, "empty");
	return 0;
}

static int parse_server(struct mxl_options *o, const char *s)
{
	char host[64];
	const char *port;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof host)
			return bad("--server", s, "expected [IPV6]:PORT");
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		port = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof host)
			return bad("--server", s, "expected HOST:PORT");
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	unsigned p;
	if (parse_uint(port, &p, 65535) < 0 || p == 0)
		return bad("--server", s, "bad port");
	memset(&o->server, 0, sizeof o->server);
	struct sockaddr_in *v4 = (struct sockaddr_in *)&o->server;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&o->server;
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof host, "127.0.0.1");
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)p);
		o->server_len = sizeof *v4;
	} else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)p);
		o->server_len = sizeof *v6;
	} else {
		return bad("--server", s, "HOST must be an IP address (no DNS lookups)");
	}
	snprintf(o->server_str, sizeof o->server_str, "%s", s);
	return 0;
}

static int add_source(struct mxl_options *o, const struct sockaddr_storage *ss)
{
	if (o->nsources == MXL_MAX_SOURCES)
		return -1;
	o->sources[o->nsources++] = *ss;
	return 0;
}

/* "127.0.0.1-127.0.0.8" (IPv4 range) or "A,B,C" (IPv4 or IPv6) */
static int parse_sources(struct mxl_options *o, const char *s)
{
	char tmp[1024];
	snprintf(tmp, sizeof tmp, "%s", s);
	char *dash = strchr(tmp, '-');
	if (dash && !strchr(tmp, ',')) {
		*dash = '\0';
		struct in_addr a, b;
		if (inet_pton(AF_INET, tmp, &a) != 1 || inet_pton(AF_INET, dash + 1, &b) != 1)
			return bad("--source", s, "a range is two IPv4 addresses A-B");
		uint32_t lo = ntohl(a.s_addr), hi = ntohl(b.s_addr);
		if (hi < lo || hi - lo >= MXL_MAX_SOURCES)
			return bad("--source", s, "range empty or longer than 256 addresses");
		for (uint32_t x = lo; x <= hi; x++) {
			struct sockaddr_storage ss = {0};
			struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
			v4->sin_family = AF_INET;
			v4->sin_addr.s_addr = htonl(x);
			add_source(o, &ss);
		}
		return 0;
	}
	for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		struct sockaddr_storage ss = {0};
		struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
		if (inet_pton(AF_INET, t, &v4->sin_addr) == 1)
			v4->sin_family = AF_INET;
		else if (inet_pton(AF_INET6, t, &v6->sin6_addr) == 1)
			v6->sin6_family = AF_INET6;
		else
			return bad("--source", t, "not an IP address");
		if (add_source(o, &ss) < 0)
			return bad("--source", s, "more than 256 addresses");
	}
	return 0;
}

static int parse_cpus(struct mxl_options *o, const char *s)
{
	char tmp[512];
	snprintf(tmp, sizeof tmp, "%s", s);
	o->ncpus = 0;
	for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		unsigned lo, hi;
		char *dash = strchr(t, '-');
		if (dash) {
			*dash = '\0';
			if (parse_uint(t, &lo, 4095) < 0 || parse_uint(dash + 1, &hi, 4095) < 0 || hi < lo)
				return bad("--cpus", s, "expected CPU numbers: 0 | 0,1 | 0-3");
		} else {
			if (parse_uint(t, &lo, 4095) < 0)
				return bad("--cpus", s, "expected CPU numbers: 0 | 0,1 | 0-3");
			hi = lo;
		}
		for (unsigned c = lo; c <= hi; c++) {
			if (o->ncpus == MXL_MAX_CPUS)
				return bad("--cpus", s, "too many CPUs");
			o->cpus[o->ncpus++] = (int)c;
		}
	}
	if (o->ncpus == 0)
		return bad("--cpus", s, "empty");
	return 0;
}

static void base64(const unsigned char *in, size_t n, char *out)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = t[(v >> 18) & 63];
		out[o++] = t[(v >> 12) & 63];
		out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? t[v & 63] : '=';
	}
	out[o] = '\0';
}

static int parse_auth(struct mxl_options *o, const char *s)
{
	const char *colon = strchr(s, ':');
	if (!colon || colon == s)
		return bad("--auth", s, "expected USER:PASS");
	unsigned char raw[400];
	size_t ul = (size_t)(colon - s), pl = strlen(colon + 1);
	if (ul + pl + 2 > sizeof raw)
		return bad("--auth", "", "user and password too long");
	raw[0] = '\0';
	memcpy(raw + 1, s, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, colon + 1, pl);
	base64(raw, ul + pl + 2, o->auth_plain);
	o->auth_user = s;
	return 0;
}

static int on_off(const char *opt, const char *v, bool *out)
{
	if (strcmp(v, "on") == 0)
		*out = true;
	else if (strcmp(v, "off") == 0)
		*out = false;
	else
		return bad(opt, v, "expected on or off");
	return 0;
}

static int copy_addr(char *dst, const char *opt, const char *v)
{
	size_t n = strlen(v);
	if (n == 0 || n >= MXL_ADDR_MAX)
		return bad(opt, v, "empty or too long");
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] <= ' ' || v[i] == '<' || v[i] == '>' || v[i] == 0x7f)
			return bad(opt, v, "no blanks, control characters or angle brackets");
	memcpy(dst, v, n + 1);
	return 0;
}

static int check_to_pattern(const char *to)
{
	/* at most one conversion, and it must be %d; %% is a literal % */
	unsigned conv = 0;
	for (const char *p = to; *p; p++) {
		if (*p != '%')
			continue;
		if (p[1] == '%') {
			p++;
			continue;
		}
		if (p[1] != 'd' || ++conv > 1)
			return bad("--to", to, "only one %d is allowed (use %% for a percent sign)");
		p++;
	}
	return 0;
}

enum {
	O_SERVER = 256, O_CPUS, O_CONNECTIONS, O_MESSAGES, O_DURATION, O_PER_CONN, O_RCPTS,
	O_SIZE, O_PIPELINING, O_BDAT, O_BDAT_CHUNK, O_STARTTLS, O_SMTPS, O_TLS_VERSION,
	O_CIPHER, O_RESUME, O_SNI, O_AUTH, O_PROXY, O_SOURCE, O_RATE, O_FROM, O_TO, O_HELO,
	O_TIMEOUT, O_MAX_ERRORS, O_JSON, O_QUIET, O_HELP
};

static const struct option longopts[] = {
	{"server", required_argument, NULL, O_SERVER},
	{"cpus", required_argument, NULL, O_CPUS},
	{"connections", required_argument, NULL, O_CONNECTIONS},
	{"messages", required_argument, NULL, O_MESSAGES},
	{"duration", required_argument, NULL, O_DURATION},
	{"per-conn", required_argument, NULL, O_PER_CONN},
	{"rcpts", required_argument, NULL, O_RCPTS},
	{"size", required_argument, NULL, O_SIZE},
	{"pipelining", required_argument, NULL, O_PIPELINING},
	{"bdat", no_argument, NULL, O_BDAT},
	{"bdat-chunk", required_argument, NULL, O_BDAT_CHUNK},
	{"starttls", no_argument, NULL, O_STARTTLS},
	{"smtps", no_argument, NULL, O_SMTPS},
	{"tls-version", required_argument, NULL, O_TLS_VERSION},
	{"cipher", required_argument, NULL, O_CIPHER},
	{"resume", required_argument, NULL, O_RESUME},
	{"sni", required_argument, NULL, O_SNI},
	{"auth", required_argument, NULL, O_AUTH},
	{"proxy", required_argument, NULL, O_PROXY},
	{"source", required_argument, NULL, O_SOURCE},
	{"rate", required_argument, NULL, O_RATE},
	{"from", required_argument, NULL, O_FROM},
	{"to", required_argument, NULL, O_TO},
	{"helo", required_argument, NULL, O_HELO},
	{"timeout", required_argument, NULL, O_TIMEOUT},
	{"max-errors", required_argument, NULL, O_MAX_ERRORS},
	{"json", required_argument, NULL, O_JSON},
	{"quiet", no_argument, NULL, O_QUIET},
	{"help", no_argument, NULL, O_HELP},
	{NULL, 0, NULL, 0},
};

static void defaults(struct mxl_options *o)
{
	memset(o, 0, sizeof *o);
	parse_server(o, "127.0.0.1:2525");
	o->connections = 10;
	o->messages = 10000;
	o->rcpts = 1;
	parse_sizes(o, "4k");
	o->pipelining = true;
	o->bdat_chunk = 1024 * 1024;
	o->resume = true;
	snprintf(o->from, sizeof o->from, "mxload@example.org");
	snprintf(o->to, sizeof o->to, "user%%d@example.com");
	snprintf(o->helo, sizeof o->helo, "mxload.example.org");
	o->timeout = 60;
	o->max_errors = 1000;
}

int options_parse(struct mxl_options *o, int argc, char **argv)
{
	defaults(o);
	bool have_messages = false, have_duration = false;
	int ch;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		const char *v = optarg;
		uint64_t u;
		switch (ch) {
		case O_SERVER:
			if (parse_server(o, v) < 0)
				return -1;
			break;
		case O_CPUS:
			if (parse_cpus(o, v) < 0)
				return -1;
			break;
		case O_CONNECTIONS:
			if (parse_uint(v, &o->connections, 1000000) < 0 || o->connections == 0)
				return bad("--connections", v, "expected 1..1000000");
			break;
		case O_MESSAGES:
			if (parse_u64(v, &o->messages) < 0 || o->messages == 0)
				return bad("--messages", v, "expected a positive number");
			have_messages = true;
			break;
		case O_DURATION:
			if (parse_double(v, &o->duration) < 0)
				return bad("--duration", v, "expected seconds > 0");
			have_duration = true;
			break;
		case O_PER_CONN:
			if (parse_uint(v, &o->per_conn, 1u << 30) < 0)
				return bad("--per-conn", v, "expected a number (0: no limit)");
			break;
		case O_RCPTS:
			if (parse_uint(v, &o->rcpts, 10000) < 0 || o->rcpts == 0)
				return bad("--rcpts", v, "expected 1..10000");
			break;
		case O_SIZE:
			if (parse_sizes(o, v) < 0)
				return -1;
			break;
		case O_PIPELINING:
			if (on_off("--pipelining", v, &o->pipelining) < 0)
				return -1;
			break;
		case O_BDAT:
			o->bdat = true;
			break;
		case O_BDAT_CHUNK:
			if (parse_size(v, strlen(v), &o->bdat_chunk) < 0)
				return bad("--bdat-chunk", v, "expected a size");
			break;
		case O_STARTTLS:
			o->tls = MXL_TLS_STARTTLS;
			break;
		case O_SMTPS:
			o->tls = MXL_TLS_SMTPS;
			break;
		case O_TLS_VERSION:
			if (strcmp(v, "1.2") == 0)
				o->tls_version = 12;
			else if (strcmp(v, "1.3") == 0)
				o->tls_version = 13;
			else
				return bad("--tls-version", v, "expected 1.2 or 1.3");
			break;
		case O_CIPHER:
			o->cipher = v;
			break;
		case O_RESUME:
			if (on_off("--resume", v, &o->resume) < 0)
				return -1;
			break;
		case O_SNI:
			o->sni = v;
			break;
		case O_AUTH:
			if (parse_auth(o, v) < 0)
				return -1;
			break;
		case O_PROXY:
			if (strcmp(v, "v1") == 0)
				o->proxy = 1;
			else if (strcmp(v, "v2") == 0)
				o->proxy = 2;
			else
				return bad("--proxy", v, "expected v1 or v2");
			break;
		case O_SOURCE:
			if (parse_sources(o, v) < 0)
				return -1;
			break;
		case O_RATE:
			if (parse_double(v, &o->rate) < 0)
				return bad("--rate", v, "expected messages per second > 0");
			break;
		case O_FROM:
			if (copy_addr(o->from, "--from", v) < 0)
				return -1;
			break;
		case O_TO:
			if (copy_addr(o->to, "--to", v) < 0 || check_to_pattern(v) < 0)
				return -1;
			break;
		case O_HELO:
			if (copy_addr(o->helo, "--helo", v) < 0)
				return -1;
			break;
		case O_TIMEOUT:
			if (parse_double(v, &o->timeout) < 0)
				return bad("--timeout", v, "expected seconds > 0");
			break;
		case O_MAX_ERRORS:
			if (parse_u64(v, &u) < 0)
				return bad("--max-errors", v, "expected a number");
			o->max_errors = u;
			break;
		case O_JSON:
			o->json_path = v;
			break;
		case O_QUIET:
			o->quiet = true;
			break;
		case O_HELP:
		case 'h':
			usage();
			exit(0);
		default:
			usage();
			return -1;
		}
	}
	if (optind < argc)
		return bad("unexpected argument", argv[optind], "see --help");
	if (have_messages && have_duration)
		return bad("--messages", "", "give --messages or --duration, not both");
	if (have_duration)
		o->messages = 0;
	if (o->cipher && o->tls_version == 13)
		return bad("--cipher", o->cipher,
			   "BoringSSL's TLS 1.3 suites are fixed; --cipher applies to TLS 1.2");
	if ((o->cipher || o->tls_version || o->sni) && o->tls == MXL_TLS_NONE)
		return bad("--cipher/--tls-version/--sni", "", "need --starttls or --smtps");
	uint64_t min = body_min_size(o);
	for (unsigned i = 0; i < o->nsizes; i++)
		if (o->sizes[i].size < min) {
			fprintf(stderr, "mxload: --size: %" PRIu64 " bytes is below the smallest "
					"message mxload makes (%" PRIu64 " bytes: its headers); using that\n",
				o->sizes[i].size, min);
			o->sizes[i].size = min;
		}
	if (o->bdat_chunk < 64)
		return bad("--bdat-chunk", "", "at least 64 bytes");
	unsigned nworkers = o->ncpus ? o->ncpus : 1;
	if (o->connections < nworkers)
		return bad("--connections", "", "at least one connection per worker CPU");
	return 0;
}
