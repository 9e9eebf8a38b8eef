/* mxctl: talks to a running mxd over its control socket.
 *
 *   mxctl [-s SOCKET | -f CONFIG] [-t SECONDS] COMMAND [ARG]
 *
 * The socket is -s, else the "control socket" of CONFIG (default
 * conf/mxd.conf; without that directive, mxd.sock in its spool). The
 * protocol is in engine/control_proto.h: the reply's lines are printed
 * without their "ok-" / "error-" prefix, ok lines on stdout and error lines
 * on stderr. Exit status: 0 ok, 1 the command failed (an "error" reply),
 * 2 usage, connection or protocol trouble (the message names the socket). */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "conf.h"
#include "control_proto.h"

#define EXIT_FAILED 1
#define EXIT_TROUBLE 2

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mxctl [-s SOCKET | -f CONFIG] [-t SECONDS] COMMAND [ARG]\n"
		"  -s SOCKET  the control socket\n"
		"  -f CONFIG  read the socket's path from this config (default conf/mxd.conf)\n"
		"  -t SECONDS how long to wait for the reply (default 30)\n"
		"commands:\n%s\n",
		control_help);
}

/* The socket path from the config file; NULL after saying why. */
static char *socket_from_config(const char *config)
{
	struct buf errs;
	buf_init(&errs, 0);
	struct conf *c = conf_load(config, &errs);
	if (!c) {
		fprintf(stderr, "mxctl: cannot take the control socket from %s (use -s SOCKET):\n",
			config);
		fwrite(errs.data, 1, errs.len, stderr);
		buf_free(&errs);
		return NULL;
	}
	buf_free(&errs);
	char *path = strdup(c->control.path);
	conf_free(c);
	if (!path)
		fprintf(stderr, "mxctl: out of memory\n");
	return path;
}

/* The request line from the arguments; checked here so a typo is a usage
 * error before anything is sent. */
static int build_request(int argc, char **argv, char *line, size_t len, struct control_cmd *cmd)
{
	size_t used = 0;
	for (int i = 0; i < argc; i++) {
		int n = snprintf(line + used, len - used, "%s%s", i ? " " : "", argv[i]);
		if (n < 0 || (size_t)n >= len - used || strpbrk(argv[i], "\r\n")) {
			fprintf(stderr, "mxctl: the command is too long or holds a line end\n");
			return -1;
		}
		used += (size_t)n;
	}
	char err[160];
	if (control_cmd_parse(line, strlen(line), cmd, err, sizeof err) < 0) {
		fprintf(stderr, "mxctl: %s\n", err);
		return -1;
	}
	return 0;
}

static int connect_to(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path) {
		fprintf(stderr, "mxctl: %s: path too long for a socket\n", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		fprintf(stderr, "mxctl: cannot connect to %s: %s%s\n", path, strerror(errno),
			errno == ENOENT || errno == ECONNREFUSED ? " (is mxd running?)" : "");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

enum line_verdict { LINE_MORE, LINE_OK, LINE_ERROR, LINE_INVALID };

/* Prints one reply line and says whether more follow. */
static enum line_verdict print_line(const char *line)
{
	const char *text;
	switch (control_reply_parse(line, &text)) {
	case CONTROL_REPLY_OK_MORE:
		printf("%s\n", text);
		return LINE_MORE;
	case CONTROL_REPLY_ERROR_MORE:
		fflush(stdout);
		fprintf(stderr, "%s\n", text);
		return LINE_MORE;
	case CONTROL_REPLY_OK:
		if (*text)
			printf("%s\n", text);
		return LINE_OK;
	case CONTROL_REPLY_ERROR:
		fflush(stdout);
		fprintf(stderr, "mxctl: %s\n", text);
		return LINE_ERROR;
	case CONTROL_REPLY_INVALID:
		break;
	}
	return LINE_INVALID;
}

/* Reads and prints the reply up to its final line. */
static int read_reply(int fd, const char *path, int timeout_s, bool quit)
{
	struct buf in;
	buf_init(&in, 0);
	long long deadline = now_ms() + (long long)timeout_s * 1000;
	int status = -2; /* no final line yet */
	while (status == -2) {
		char *nl = in.len ? memchr(in.data, '\n', in.len) : NULL;
		if (nl) {
			*nl = '\0';
			switch (print_line(in.data)) {
			case LINE_MORE:
				break;
			case LINE_OK:
				status = 0;
				break;
			case LINE_ERROR:
				status = EXIT_FAILED;
				break;
			case LINE_INVALID:
				fprintf(stderr, "mxctl: %s: not an mxd control socket (got \"%.60s\")\n",
					path, in.data);
				status = EXIT_TROUBLE;
				break;
			}
			buf_consume(&in, (size_t)(nl - in.data) + 1);
			continue;
		}
		long long left = deadline - now_ms();
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			fprintf(stderr, "mxctl: %s: no reply within %d s\n", path, timeout_s);
			status = EXIT_TROUBLE;
			break;
		}
		char chunk[16384];
		ssize_t r = pr < 0 ? -1 : recv(fd, chunk, sizeof chunk, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0 && quit && in.len == 0) {
			status = 0; /* "quit" has no reply: the close is the answer */
			break;
		}
		if (r <= 0 || buf_append(&in, chunk, (size_t)r) < 0) {
			fprintf(stderr, "mxctl: %s: %s before the reply ended\n", path,
				r == 0 ? "connection closed" : strerror(errno));
			status = EXIT_TROUBLE;
			break;
		}
	}
	buf_free(&in);
	return status;
}

int main(int argc, char **argv)
{
	const char *sock = NULL, *config = "conf/mxd.conf";
	int timeout_s = 30, ch;
	while ((ch = getopt(argc, argv, "+s:f:t:h")) != -1) {
		switch (ch) {
		case 's':
			sock = optarg;
			break;
		case 'f':
			config = optarg;
			break;
		case 't':
			timeout_s = atoi(optarg);
			if (timeout_s <= 0) {
				fprintf(stderr, "mxctl: -t wants a number of seconds\n");
				return EXIT_TROUBLE;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_TROUBLE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_TROUBLE;
	}
	char line[CONTROL_LINE_MAX];
	struct control_cmd cmd;
	if (build_request(argc - optind, argv + optind, line, sizeof line - 1, &cmd) < 0)
		return EXIT_TROUBLE;
	char *from_config = NULL;
	if (!sock) {
		from_config = socket_from_config(config);
		if (!from_config)
			return EXIT_TROUBLE;
		sock = from_config;
	}
	int status = EXIT_TROUBLE;
	int fd = connect_to(sock);
	if (fd >= 0) {
		strcat(line, "\n");
		if (send_all(fd, line, strlen(line)) < 0)
			fprintf(stderr, "mxctl: %s: cannot send: %s\n", sock, strerror(errno));
		else
			status = read_reply(fd, sock, timeout_s, cmd.verb == CONTROL_QUIT);
		close(fd);
	}
	fflush(stdout);
	free(from_config);
	return status;
}
