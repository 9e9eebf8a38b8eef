#include "control_proto.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* ---- framing ---- */

void control_line_init(struct control_line *l)
{
	l->len = 0;
	l->text[0] = '\0';
}

enum control_line_status control_line_feed(struct control_line *l, const char *data,
					   size_t len, size_t *used)
{
	assert(l->len <= CONTROL_LINE_MAX);
	const char *lf = memchr(data, '\n', len);
	size_t take = lf ? (size_t)(lf - data) + 1 : len;
	if (l->len + take > CONTROL_LINE_MAX) {
		*used = 0;
		return CONTROL_LINE_TOO_LONG;
	}
	memcpy(l->text + l->len, data, take);
	l->len += take;
	*used = take;
	if (!lf) {
		l->text[l->len] = '\0';
		return CONTROL_LINE_NEED_MORE;
	}
	size_t end = l->len - 1; /* the LF */
	if (end > 0 && l->text[end - 1] == '\r')
		end--;
	l->text[end] = '\0';
	l->len = end;
	return CONTROL_LINE_READY;
}

/* ---- commands ---- */

const char control_help[] =
	"status               pid, version, uptime, config, cores, paused, sessions, messages\n"
	"stats                the metrics page's samples, one \"name value\" a line\n"
	"pause                refuse new mail with 421 4.3.2 until resume\n"
	"resume               accept mail again\n"
	"reload               reload the config, as SIGHUP does\n"
	"log-level [LEVEL]    show or set the log level: debug, info, warn, error\n"
	"sessions             one line per open session\n"
	"upgrade              start the new binary on the listening sockets\n"
	"help                 this list\n"
	"quit                 close the connection";

static const struct {
	const char *name;
	enum control_verb verb;
	bool takes_level;
} verbs[] = {
	{"status", CONTROL_STATUS, false},     {"stats", CONTROL_STATS, false},
	{"pause", CONTROL_PAUSE, false},       {"resume", CONTROL_RESUME, false},
	{"reload", CONTROL_RELOAD, false},     {"log-level", CONTROL_LOG_LEVEL, true},
	{"sessions", CONTROL_SESSIONS, false}, {"upgrade", CONTROL_UPGRADE, false},
	{"help", CONTROL_HELP, false},         {"quit", CONTROL_QUIT, false},
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *control_level_name(int level)
{
	if (level < 0 || (size_t)level >= sizeof level_names / sizeof level_names[0])
		return "?";
	return level_names[level];
}

static int level_from_name(const char *name)
{
	static_assert(LOG_ERROR == 0 && LOG_WARN == 1 && LOG_INFO == 2 && LOG_DEBUG == 3,
		      "level_names follows enum log_level");
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
		if (strcasecmp(name, level_names[i]) == 0)
			return (int)i;
	if (strcasecmp(name, "warning") == 0)
		return LOG_WARN;
	return -1;
}

static bool is_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* The next blank-separated word of *p, copied into w (cut at w_len - 1);
 * false when there is none. */
static bool next_word(const char **p, char *w, size_t w_len)
{
	const char *s = *p;
	while (is_blank(*s))
		s++;
	if (*s == '\0')
		return false;
	size_t n = 0;
	while (*s && !is_blank(*s)) {
		if (n + 1 < w_len)
			w[n++] = *s;
		s++;
	}
	w[n] = '\0';
	*p = s;
	return true;
}

/* A word as it may be shown back: printable ASCII only, else "?". */
static void printable(const char *in, char *out, size_t out_len)
{
	size_t n = 0;
	for (; *in && n + 1 < out_len; in++)
		out[n++] = (*in >= 0x20 && *in < 0x7f && *in != '"') ? *in : '?';
	out[n] = '\0';
}

static bool has_control_char(const char *line, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)line[i];
		if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
			return true;
	}
	return false;
}

int control_cmd_parse(const char *line, size_t len, struct control_cmd *cmd, char *err,
		      size_t err_len)
{
	assert(err_len > 0);
	err[0] = '\0';
	if (has_control_char(line, len)) {
		snprintf(err, err_len, "the command holds a control character (try help)");
		return -1;
	}
	char word[64], arg[64], shown[40];
	const char *p = line;
	if (!next_word(&p, word, sizeof word)) {
		snprintf(err, err_len, "empty command (try help)");
		return -1;
	}
	size_t i = 0;
	while (i < sizeof verbs / sizeof verbs[0] && strcasecmp(word, verbs[i].name) != 0)
		i++;
	if (i == sizeof verbs / sizeof verbs[0]) {
		printable(word, shown, sizeof shown);
		snprintf(err, err_len, "unknown command \"%s\" (try help)", shown);
		return -1;
	}
	cmd->verb = verbs[i].verb;
	cmd->level = -1;
	bool has_arg = next_word(&p, arg, sizeof arg);
	if (has_arg && verbs[i].takes_level) {
		cmd->level = level_from_name(arg);
		if (cmd->level < 0) {
			printable(arg, shown, sizeof shown);
			snprintf(err, err_len,
				 "unknown log level \"%s\" (debug, info, warn or error)", shown);
			return -1;
		}
		has_arg = next_word(&p, arg, sizeof arg);
	}
	if (has_arg) {
		snprintf(err, err_len, "%s: too many arguments", verbs[i].name);
		return -1;
	}
	return 0;
}

/* ---- replies ---- */

static bool has_prefix(const char *s, const char *prefix, size_t *n)
{
	*n = strlen(prefix);
	return strncmp(s, prefix, *n) == 0;
}

enum control_reply_kind control_reply_parse(const char *line, const char **text)
{
	size_t n;
	*text = "";
	if (has_prefix(line, "ok", &n) || has_prefix(line, "error", &n)) {
		bool ok = line[0] == 'o';
		if (line[n] == '-') {
			*text = line + n + 1;
			return ok ? CONTROL_REPLY_OK_MORE : CONTROL_REPLY_ERROR_MORE;
		}
		if (line[n] == ' ' || (line[n] == '\0' && ok)) {
			*text = line[n] ? line + n + 1 : line + n;
			return ok ? CONTROL_REPLY_OK : CONTROL_REPLY_ERROR;
		}
	}
	return CONTROL_REPLY_INVALID;
}
