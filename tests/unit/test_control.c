/* test_control: the control socket's line protocol (engine/control_proto.c):
 * line framing fed whole, split and a byte at a time, the line bound at
 * and past its edge, command parsing, and the reply lines mxctl reads. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "control_proto.h"
#include "log.h"

/* Feeds `in` in chunks of `step` bytes (0: whole); collects the lines
 * into out, one per line with "\n", and returns the last status. */
static enum control_line_status feed(const char *in, size_t len, size_t step, char *out,
				     size_t out_len)
{
	struct control_line l;
	control_line_init(&l);
	enum control_line_status st = CONTROL_LINE_NEED_MORE;
	size_t off = 0, olen = 0;
	out[0] = '\0';
	while (off < len) {
		size_t n = step && step < len - off ? step : len - off;
		size_t pos = 0;
		while (pos < n) {
			size_t used = 0;
			st = control_line_feed(&l, in + off + pos, n - pos, &used);
			if (st == CONTROL_LINE_TOO_LONG)
				return st;
			pos += used;
			if (st == CONTROL_LINE_READY) {
				olen += (size_t)snprintf(out + olen, out_len - olen, "%s\n", l.text);
				control_line_init(&l);
			}
		}
		off += n;
	}
	return st;
}

static void test_framing(void)
{
	char out[4096];
	static const char in[] = "status\r\nlog-level debug\n\nsess";
	for (size_t step = 0; step < 5; step++) {
		CHECK(feed(in, sizeof in - 1, step, out, sizeof out) == CONTROL_LINE_NEED_MORE);
		CHECK_STR_EQ(out, "status\nlog-level debug\n\n");
	}
	/* a lone CR stays in the line; only CR LF ends it */
	CHECK(feed("a\rb\n", 4, 0, out, sizeof out) == CONTROL_LINE_READY);
	CHECK_STR_EQ(out, "a\rb\n");

	/* the bound: CONTROL_LINE_MAX bytes with the LF fit, one more does not */
	static char big[CONTROL_LINE_MAX + 2];
	memset(big, 'x', sizeof big);
	big[CONTROL_LINE_MAX - 1] = '\n';
	for (size_t step = 0; step < 3; step++) {
		CHECK(feed(big, CONTROL_LINE_MAX, step * 100, out, sizeof out) ==
		      CONTROL_LINE_READY);
		CHECK(strlen(out) == CONTROL_LINE_MAX);
	}
	big[CONTROL_LINE_MAX - 1] = 'x';
	big[CONTROL_LINE_MAX] = '\n';
	for (size_t step = 0; step < 3; step++)
		CHECK(feed(big, CONTROL_LINE_MAX + 1, step * 100, out, sizeof out) ==
		      CONTROL_LINE_TOO_LONG);
	/* no line end at all: refused once the bound is passed, not later */
	memset(big, 'y', sizeof big);
	CHECK(feed(big, CONTROL_LINE_MAX, 1, out, sizeof out) == CONTROL_LINE_NEED_MORE);
	CHECK(feed(big, CONTROL_LINE_MAX + 1, 1, out, sizeof out) == CONTROL_LINE_TOO_LONG);
}

static void parse_ok(const char *line, enum control_verb verb, int level)
{
	struct control_cmd cmd;
	char err[128];
	int rc = control_cmd_parse(line, strlen(line), &cmd, err, sizeof err);
	CHECK(rc == 0);
	if (rc != 0) {
		fprintf(stderr, "  \"%s\": %s\n", line, err);
		return;
	}
	CHECK(cmd.verb == verb);
	CHECK(cmd.level == level);
}

static void parse_err(const char *line, const char *want)
{
	struct control_cmd cmd;
	char err[128];
	CHECK(control_cmd_parse(line, strlen(line), &cmd, err, sizeof err) == -1);
	CHECK_STR_EQ(err, want);
}

static void test_commands(void)
{
	parse_ok("status", CONTROL_STATUS, -1);
	parse_ok("  STATUS \t", CONTROL_STATUS, -1);
	parse_ok("stats", CONTROL_STATS, -1);
	parse_ok("pause", CONTROL_PAUSE, -1);
	parse_ok("resume", CONTROL_RESUME, -1);
	parse_ok("reload", CONTROL_RELOAD, -1);
	parse_ok("sessions", CONTROL_SESSIONS, -1);
	parse_ok("upgrade", CONTROL_UPGRADE, -1);
	parse_ok("help", CONTROL_HELP, -1);
	parse_ok("quit", CONTROL_QUIT, -1);
	parse_ok("log-level", CONTROL_LOG_LEVEL, -1);
	parse_ok("log-level debug", CONTROL_LOG_LEVEL, LOG_DEBUG);
	parse_ok("log-level Info", CONTROL_LOG_LEVEL, LOG_INFO);
	parse_ok("log-level warn", CONTROL_LOG_LEVEL, LOG_WARN);
	parse_ok("log-level warning", CONTROL_LOG_LEVEL, LOG_WARN);
	parse_ok("log-level error", CONTROL_LOG_LEVEL, LOG_ERROR);

	parse_err("", "empty command (try help)");
	parse_err(" \t ", "empty command (try help)");
	parse_err("stat", "unknown command \"stat\" (try help)");
	parse_err("st\xff\xfe\"x", "unknown command \"st???x\" (try help)");
	parse_err("st\x01x", "the command holds a control character (try help)");
	parse_err("status\x7f", "the command holds a control character (try help)");
	parse_err("status\r", "the command holds a control character (try help)");
	parse_ok("status\t", CONTROL_STATUS, -1);
	/* a NUL inside the line: the bytes after it are not ignored */
	struct control_cmd nul_cmd;
	char nul_err[128];
	CHECK(control_cmd_parse("status\0junk", 11, &nul_cmd, nul_err, sizeof nul_err) == -1);
	CHECK_STR_EQ(nul_err, "the command holds a control character (try help)");
	parse_err("status now", "status: too many arguments");
	parse_err("log-level loud", "unknown log level \"loud\" (debug, info, warn or error)");
	parse_err("log-level debug info", "log-level: too many arguments");
	/* a long word is cut, not overflowed */
	char line[CONTROL_LINE_MAX];
	memset(line, 'z', sizeof line - 1);
	line[sizeof line - 1] = '\0';
	struct control_cmd cmd;
	char err[128];
	CHECK(control_cmd_parse(line, strlen(line), &cmd, err, sizeof err) == -1);
	CHECK(strncmp(err, "unknown command \"zzz", 20) == 0 && strlen(err) < sizeof err);

	CHECK_STR_EQ(control_level_name(LOG_DEBUG), "debug");
	CHECK_STR_EQ(control_level_name(LOG_ERROR), "error");
	CHECK_STR_EQ(control_level_name(7), "?");
}

static void reply(const char *line, enum control_reply_kind want, const char *want_text)
{
	const char *text;
	CHECK(control_reply_parse(line, &text) == want);
	CHECK_STR_EQ(text, want_text);
}

static void test_replies(void)
{
	reply("ok", CONTROL_REPLY_OK, "");
	reply("ok generation 2", CONTROL_REPLY_OK, "generation 2");
	reply("ok-pid 12", CONTROL_REPLY_OK_MORE, "pid 12");
	reply("ok-", CONTROL_REPLY_OK_MORE, "");
	reply("error-x.conf:1:1: unknown directive", CONTROL_REPLY_ERROR_MORE,
	      "x.conf:1:1: unknown directive");
	reply("error reload refused", CONTROL_REPLY_ERROR, "reload refused");
	reply("error", CONTROL_REPLY_INVALID, "");
	reply("okay", CONTROL_REPLY_INVALID, "");
	reply("errors x", CONTROL_REPLY_INVALID, "");
	reply("", CONTROL_REPLY_INVALID, "");
	reply("220 mail.example.com ESMTP", CONTROL_REPLY_INVALID, "");
}

int main(void)
{
	test_framing();
	test_commands();
	test_replies();
	return check_report("test_control");
}
