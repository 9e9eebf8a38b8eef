/* fuzz_control: the control socket's line protocol (engine/control_proto.c).
 *
 * Byte 0 seeds how the stream is cut into reads (0: one read), byte 1 the
 * size of the error buffer control_cmd_parse writes into. The rest is what
 * a client sends on the socket. The stream is framed three ways — cut as
 * seeded and fed the way engine/control.c feeds it (whatever the line did
 * not take is fed again), byte by byte, and by a reference that splits it
 * at each LF by hand — and each whole line is parsed as a command. Any
 * broken invariant aborts:
 *   - framing: a line never holds more than CONTROL_LINE_MAX (512) bytes
 *     with its LF; NEED_MORE takes every byte, READY takes up to and
 *     including the first LF and nothing after it, TOO_LONG takes none;
 *     the line buffer stays NUL-terminated at its length;
 *   - the three framings give the same lines, then the same ending
 *     (TOO_LONG exactly when a line passes 512 bytes, else the same
 *     unfinished tail); a READY line has no LF and lost at most one CR;
 *   - commands: a line with a control character (tab aside) is refused;
 *     an accepted one names a known verb, a level only for log-level, and
 *     its canonical spelling (and its upper-case spelling) parses the
 *     same; a refusal has a message that fits the buffer, never writes past
 *     it and holds printable ASCII only;
 *   - replies: the refusal as mxd sends it ("error " + message) reads back
 *     as a final error line with that text; each help line as "ok-" reads
 *     back as a continuation; any line the client sent is classified by
 *     control_reply_parse exactly as the prefixes in control_proto.h say,
 *     its text inside the line. */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control_proto.h"

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "fuzz_control: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                           \
		}                                                                          \
	} while (0)

/* The verbs by their spelling in control_proto.h, indexed by enum control_verb. */
static const char *const verb_names[] = {
	[CONTROL_STATUS] = "status",     [CONTROL_STATS] = "stats",
	[CONTROL_PAUSE] = "pause",       [CONTROL_RESUME] = "resume",
	[CONTROL_RELOAD] = "reload",     [CONTROL_LOG_LEVEL] = "log-level",
	[CONTROL_SESSIONS] = "sessions", [CONTROL_UPGRADE] = "upgrade",
	[CONTROL_HELP] = "help",         [CONTROL_QUIT] = "quit",
};
#define NVERBS (sizeof verb_names / sizeof verb_names[0])

static const size_t err_sizes[4] = {1, 12, 48, 160};

/* What framing saw: the lines, then how the stream ended. */
enum ending { END_NEED_MORE, END_TOO_LONG };

struct event {
	size_t off, len; /* READY: the line's bytes in the stream */
};

struct framing {
	struct event *lines;
	size_t nlines;
	enum ending end;
	size_t tail;     /* END_NEED_MORE: bytes of the unfinished line */
};

static bool has_control_char(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
			return true;
	return false;
}

/* The reference: split at each LF by hand. */
static void frame_reference(const uint8_t *data, size_t len, struct framing *f)
{
	size_t pos = 0;
	for (;;) {
		const uint8_t *lf = memchr(data + pos, '\n', len - pos);
		size_t with_lf = lf ? (size_t)(lf - (data + pos)) + 1 : len - pos;
		if (with_lf > CONTROL_LINE_MAX) {
			f->end = END_TOO_LONG;
			return;
		}
		if (!lf) {
			f->end = END_NEED_MORE;
			f->tail = with_lf;
			return;
		}
		size_t n = with_lf - 1;
		if (n > 0 && data[pos + n - 1] == '\r')
			n--;
		f->lines[f->nlines++] = (struct event){.off = pos, .len = n};
		pos += with_lf;
	}
}

static void check_line_state(const struct control_line *l)
{
	CHECK(l->len <= CONTROL_LINE_MAX);
	CHECK(l->text[l->len] == '\0');
}

/* Framing through control_line_feed, reads cut by seed (0: one read; 1:
 * byte by byte), each read left over where a line ended fed again, as
 * engine/control.c does. Compared with the reference as it goes. */
static void frame_fed(const uint8_t *data, size_t len, uint8_t seed, bool bytewise,
		      const struct framing *ref)
{
	struct control_line *l = malloc(sizeof *l);
	CHECK(l);
	control_line_init(l);
	check_line_state(l);
	uint32_t x = seed * 2654435761u + 1;
	size_t off = 0, nlines = 0;
	enum ending end = END_NEED_MORE;
	bool over = false;
	while (off < len && !over) {
		size_t n = len - off;
		if (bytewise) {
			n = 1;
		} else if (seed) {
			x = x * 1103515245u + 12345u;
			size_t want = 1 + (x >> 16) % 700; /* reads longer than a line too */
			if (want < n)
				n = want;
		}
		/* a read of its exact size, so ASan sees any overrun */
		uint8_t *chunk = malloc(n);
		CHECK(chunk);
		memcpy(chunk, data + off, n);
		size_t at = 0;
		while (at < n) {
			size_t used = 777;
			enum control_line_status st =
				control_line_feed(l, (const char *)chunk + at, n - at, &used);
			check_line_state(l);
			CHECK(used <= n - at);
			if (st == CONTROL_LINE_TOO_LONG) {
				CHECK(used == 0);
				end = END_TOO_LONG;
				over = true;
				break;
			}
			if (st == CONTROL_LINE_NEED_MORE) {
				CHECK(used == n - at);
				CHECK(!memchr(chunk + at, '\n', used));
				at += used;
				continue;
			}
			CHECK(st == CONTROL_LINE_READY);
			CHECK(used > 0 && chunk[at + used - 1] == '\n');
			CHECK(!memchr(chunk + at, '\n', used - 1));
			CHECK(nlines < ref->nlines);
			const struct event *e = &ref->lines[nlines++];
			CHECK(l->len == e->len);
			CHECK(memcmp(l->text, data + e->off, e->len) == 0);
			CHECK(!memchr(l->text, '\n', l->len));
			control_line_init(l);
			check_line_state(l);
			at += used;
		}
		free(chunk);
		off += n;
	}
	CHECK(nlines == ref->nlines);
	CHECK(end == ref->end);
	if (end == END_NEED_MORE) {
		CHECK(l->len == ref->tail);
		CHECK(memcmp(l->text, data + len - ref->tail, ref->tail) == 0);
	}
	free(l);
}

/* How control_proto.h says a reply line reads. */
static enum control_reply_kind expected_kind(const char *s, size_t *skip)
{
	if (strncmp(s, "ok-", 3) == 0)
		return *skip = 3, CONTROL_REPLY_OK_MORE;
	if (strncmp(s, "error-", 6) == 0)
		return *skip = 6, CONTROL_REPLY_ERROR_MORE;
	if (strcmp(s, "ok") == 0)
		return *skip = 2, CONTROL_REPLY_OK;
	if (strncmp(s, "ok ", 3) == 0)
		return *skip = 3, CONTROL_REPLY_OK;
	if (strncmp(s, "error ", 6) == 0)
		return *skip = 6, CONTROL_REPLY_ERROR;
	return *skip = 0, CONTROL_REPLY_INVALID;
}

static void check_reply_line(const char *s)
{
	const char *text = NULL;
	size_t skip;
	enum control_reply_kind want = expected_kind(s, &skip);
	enum control_reply_kind got = control_reply_parse(s, &text);
	CHECK(got == want);
	CHECK(text);
	if (want != CONTROL_REPLY_INVALID)
		CHECK(text == s + skip);
	else
		CHECK(*text == '\0');
}

/* The refusal as engine/control.c's reply_final sends it, read back. */
static void check_refusal_reply(const char *err)
{
	char line[CONTROL_LINE_MAX];
	int n = snprintf(line, sizeof line, "error %s", err);
	CHECK(n > 6 && (size_t)n < sizeof line);
	const char *text;
	CHECK(control_reply_parse(line, &text) == CONTROL_REPLY_ERROR);
	CHECK(strcmp(text, err) == 0);
}

static void check_help_replies(void)
{
	const char *p = control_help;
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		char line[200];
		CHECK(n + 4 < sizeof line);
		snprintf(line, sizeof line, "ok-%.*s", (int)n, p);
		const char *text;
		CHECK(control_reply_parse(line, &text) == CONTROL_REPLY_OK_MORE);
		CHECK(strncmp(text, p, n) == 0 && text[n] == '\0');
		p += n + (nl ? 1 : 0);
	}
}

static int parse_text(const char *line, struct control_cmd *cmd)
{
	char err[160];
	return control_cmd_parse(line, strlen(line), cmd, err, sizeof err);
}

static void check_accepted(const uint8_t *line, size_t len, const struct control_cmd *cmd)
{
	CHECK(!has_control_char(line, len));
	CHECK((size_t)cmd->verb < NVERBS);
	if (cmd->verb == CONTROL_LOG_LEVEL) {
		CHECK(cmd->level >= -1 && cmd->level <= 3);
	} else {
		CHECK(cmd->level == -1);
	}
	/* Its canonical spelling means the same. */
	char canon[64];
	if (cmd->level >= 0) {
		const char *name = control_level_name(cmd->level);
		CHECK(strcmp(name, "?") != 0);
		snprintf(canon, sizeof canon, "%s %s", verb_names[cmd->verb], name);
	} else {
		snprintf(canon, sizeof canon, "%s", verb_names[cmd->verb]);
	}
	struct control_cmd again;
	CHECK(parse_text(canon, &again) == 0);
	CHECK(again.verb == cmd->verb && again.level == cmd->level);
	/* Words are case-insensitive. */
	char *upper = malloc(len + 1);
	CHECK(upper);
	for (size_t i = 0; i < len; i++)
		upper[i] = (char)toupper(line[i]);
	upper[len] = '\0';
	CHECK(control_cmd_parse(upper, len, &again, canon, sizeof canon) == 0);
	CHECK(again.verb == cmd->verb && again.level == cmd->level);
	free(upper);
}

static void check_refused(const char *err, size_t err_len)
{
	size_t n = strlen(err);
	CHECK(n < err_len);
	CHECK(err_len == 1 || n > 0);
	for (size_t i = 0; i < n; i++)
		CHECK(err[i] >= 0x20 && err[i] < 0x7f);
	if (n > 0)
		check_refusal_reply(err);
}

/* One whole line as mxd's control socket gets it. */
static void check_command(const uint8_t *data, size_t len, size_t err_len)
{
	/* the line as control_line_feed leaves it: NUL-terminated */
	char *line = malloc(len + 1);
	CHECK(line);
	memcpy(line, data, len);
	line[len] = '\0';
	/* room for a guard after the error buffer: nothing may be written there */
	char *err = malloc(err_len + 16);
	CHECK(err);
	memset(err, 0x5a, err_len + 16);
	struct control_cmd cmd;
	memset(&cmd, 0xa5, sizeof cmd);
	int rc = control_cmd_parse(line, len, &cmd, err, err_len);
	for (size_t i = err_len; i < err_len + 16; i++)
		CHECK(err[i] == 0x5a);
	if (rc == 0) {
		CHECK(err[0] == '\0');
		check_accepted(data, len, &cmd);
	} else {
		CHECK(rc == -1);
		check_refused(err, err_len);
		/* with the buffer mxd uses, the message is a whole sentence */
		char full[160];
		CHECK(control_cmd_parse(line, len, &cmd, full, sizeof full) == -1);
		CHECK(full[0] != '\0');
		check_refused(full, sizeof full);
	}
	if (has_control_char(data, len))
		CHECK(rc == -1);
	/* what a confused peer might send back as a reply line */
	check_reply_line(line);
	free(err);
	free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool help_checked;
	if (!help_checked) {
		check_help_replies();
		help_checked = true;
	}
	if (size < 2)
		return 0;
	uint8_t seed = data[0];
	size_t err_len = err_sizes[data[1] & 3];
	data += 2;
	size_t len = size - 2;

	struct framing ref = {0};
	ref.lines = malloc((len + 1) * sizeof *ref.lines);
	CHECK(ref.lines);
	frame_reference(data, len, &ref);
	for (size_t i = 0; i < ref.nlines; i++) {
		CHECK(ref.lines[i].len < CONTROL_LINE_MAX);
		check_command(data + ref.lines[i].off, ref.lines[i].len, err_len);
	}
	frame_fed(data, len, seed, false, &ref);
	frame_fed(data, len, 0, true, &ref);
	if (seed)
		frame_fed(data, len, 0, false, &ref);
	free(ref.lines);
	return 0;
}
