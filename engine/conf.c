/* conf: the configuration language (grammar in conf/README).
 *
 * A hand-written lexer and a recursive-descent parser, one statement per
 * line. The parser never stops at the first mistake: it reports the error
 * with its position, skips to the end of the statement, and keeps going, so
 * one run shows every problem in the file. Any error means no config.
 *
 * Names (pki, tables) must be defined above the line that uses them, as in
 * OpenSMTPD; that keeps every reference check at the position of the
 * reference itself. */
#include "conf.h"
#include "policy.h" /* policy_valid_net: one definition of an address entry */

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONF_TOKEN_MAX 4096            /* longest word or string */
#define CONF_MAX_ERRORS 100            /* then "too many errors" and stop */
#define CONF_FILE_MAX (16u << 20)      /* mxd.conf itself */
#define CONF_TABLE_FILE_MAX (64u << 20) /* one file: table */
#define CONF_MIN_SEGMENT_SIZE (4u << 10)
#define CONF_NAME_MAX 255              /* pki, table and host names */

enum tok_type {
	T_EOF = 0,
	T_NL,
	T_WORD,
	T_STRING,
	T_REF, /* <name>: text holds the name */
	T_LBRACE,
	T_RBRACE,
	T_COMMA,
	T_ERROR, /* the lexer already reported it */
};

struct token {
	enum tok_type type;
	int line, col;
	size_t len;
	char text[CONF_TOKEN_MAX + 1];
};

/* Scalar directives that may appear once; the slot remembers the line. */
enum {
	SEEN_HOSTNAME,
	SEEN_MAX_MESSAGE_SIZE,
	SEEN_MAX_RECIPIENTS,
	SEEN_MAX_CONNECTIONS,
	SEEN_MAX_CONNECTIONS_PER_CLIENT,
	SEEN_MAX_ERRORS,
	SEEN_MAX_LINE_LENGTH,
	SEEN_BARE_NEWLINES,
	SEEN_SPOOL,
	SEEN_CORES,
	SEEN_SEGMENT_SIZE,
	SEEN_KTLS,
	SEEN_GREETING_DELAY,
	SEEN_MIN_DATA_RATE,
	SEEN_TIMEOUT_GREETING,
	SEEN_TIMEOUT_COMMAND,
	SEEN_TIMEOUT_DATA_INIT,
	SEEN_TIMEOUT_DATA_BLOCK,
	SEEN_TIMEOUT_DATA_TERM,
	SEEN_TIMEOUT_DRAIN,
	SEEN_TIMEOUT_UPGRADE,
	SEEN_METRICS,
	SEEN_CONTROL,
	SEEN_RELAY_LIFETIME,
	SEEN_RELAY_RETRY,
	SEEN_RELAY_CONNECTIONS,
	SEEN_RELAY_CHUNK_SIZE,
	SEEN_RELAY_HELO,
	SEEN_RELAY_CA,
	SEEN_RELAY_TIMEOUT_CONNECT,
	SEEN_RELAY_TIMEOUT_GREETING,
	SEEN_RELAY_TIMEOUT_COMMAND,
	SEEN_RELAY_TIMEOUT_DATA_END,
	SEEN_BOUNCE,
	SEEN_COUNT,
};

struct parser {
	const char *name;
	const char *s;
	size_t len;
	size_t pos;
	int line;
	size_t line_start;

	struct buf *errs;
	unsigned nerrors;
	bool oom;
	bool gave_up;

	struct token tok; /* the lookahead */
	struct conf *c;
	size_t cap_listeners, cap_pkis, cap_tables, cap_rules;
	/* A pki whose line had an error: not also "has no key" at the end. */
	bool *pki_bad;
	size_t cap_pki_bad;
	/* Tables whose entries were checked as addresses (from <t>). */
	bool *addr_checked;
	size_t n_addr_checked;
	int seen[SEEN_COUNT];
};

/* ---------------------------------------------------------------- errors */

static void errs_vprintf(struct parser *p, int line, int col, const char *fmt, va_list ap)
{
	if (!p->errs)
		return;
	if (buf_printf(p->errs, "%s:%d:%d: ", p->name, line, col) < 0)
		return;
	if (buf_vprintf(p->errs, fmt, ap) < 0)
		return;
	buf_append(p->errs, "\n", 1);
}

static void perr_at(struct parser *p, int line, int col, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void perr_at(struct parser *p, int line, int col, const char *fmt, ...)
{
	if (p->gave_up)
		return;
	p->nerrors++;
	va_list ap;
	va_start(ap, fmt);
	if (p->nerrors > CONF_MAX_ERRORS) {
		p->gave_up = true;
		va_end(ap);
		if (p->errs)
			buf_printf(p->errs, "%s:%d:%d: too many errors, giving up\n", p->name, line, col);
		return;
	}
	errs_vprintf(p, line, col, fmt, ap);
	va_end(ap);
}

/* An error in another file (a table file), at its own line. */
static void perr_file(struct parser *p, const char *file, int line, int col, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void perr_file(struct parser *p, const char *file, int line, int col, const char *fmt, ...)
{
	if (p->gave_up)
		return;
	const char *saved = p->name;
	p->name = file;
	p->nerrors++;
	va_list ap;
	va_start(ap, fmt);
	if (p->nerrors > CONF_MAX_ERRORS) {
		p->gave_up = true;
		if (p->errs)
			buf_printf(p->errs, "%s:%d:%d: too many errors, giving up\n", file, line, col);
	} else {
		errs_vprintf(p, line, col, fmt, ap);
	}
	va_end(ap);
	p->name = saved;
}

/* An error about token t. A T_ERROR token was reported by the lexer. */
static void perr(struct parser *p, const struct token *t, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void perr(struct parser *p, const struct token *t, const char *fmt, ...)
{
	if (t->type == T_ERROR || p->gave_up)
		return;
	p->nerrors++;
	va_list ap;
	va_start(ap, fmt);
	if (p->nerrors > CONF_MAX_ERRORS) {
		p->gave_up = true;
		va_end(ap);
		if (p->errs)
			buf_printf(p->errs, "%s:%d:%d: too many errors, giving up\n", p->name,
				   t->line, t->col);
		return;
	}
	errs_vprintf(p, t->line, t->col, fmt, ap);
	va_end(ap);
}

static void oom(struct parser *p)
{
	if (!p->oom)
		perr_at(p, p->line, 1, "out of memory");
	p->oom = true;
	p->gave_up = true;
}

/* Text from the input, quoted for a message: printable ASCII as is, the
 * rest escaped, long text cut, so a message is always one safe line. */
#define QUOTE_MAX 80
struct quoted {
	char s[QUOTE_MAX * 4 + 8];
};

static struct quoted quote(const char *s)
{
	struct quoted q;
	size_t o = 0;
	q.s[o++] = '"';
	size_t i;
	for (i = 0; s[i] && i < QUOTE_MAX; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\') {
			q.s[o++] = '\\';
			q.s[o++] = (char)ch;
		} else if (ch < 0x20 || ch >= 0x7f) {
			o += (size_t)snprintf(q.s + o, sizeof q.s - o, "\\x%02x", ch);
		} else {
			q.s[o++] = (char)ch;
		}
	}
	if (s[i]) {
		memcpy(q.s + o, "...", 3);
		o += 3;
	}
	q.s[o++] = '"';
	q.s[o] = '\0';
	return q;
}

/* How a token reads in "unexpected ..." messages. */
static struct quoted tok_desc(const struct token *t)
{
	struct quoted q;
	switch (t->type) {
	case T_EOF: snprintf(q.s, sizeof q.s, "end of file"); break;
	case T_NL: snprintf(q.s, sizeof q.s, "end of line"); break;
	case T_LBRACE: snprintf(q.s, sizeof q.s, "\"{\""); break;
	case T_RBRACE: snprintf(q.s, sizeof q.s, "\"}\""); break;
	case T_COMMA: snprintf(q.s, sizeof q.s, "\",\""); break;
	case T_REF: {
		struct quoted n = quote(t->text);
		snprintf(q.s, sizeof q.s, "table reference <%.*s>", (int)strlen(n.s) - 2, n.s + 1);
		break;
	}
	default: return quote(t->text);
	}
	return q;
}

/* ---------------------------------------------------------------- memory */

static char *pstrdup(struct parser *p, const char *s)
{
	char *d = strdup(s);
	if (!d)
		oom(p);
	return d;
}

/* Room for one more element in *arr (n used, *cap allocated). */
static int grow(struct parser *p, void **arr, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return 0;
	size_t ncap = *cap ? *cap * 2 : 4;
	void *a = reallocarray(*arr, ncap, size);
	if (!a) {
		oom(p);
		return -1;
	}
	memset((char *)a + *cap * size, 0, (ncap - *cap) * size);
	*arr = a;
	*cap = ncap;
	return 0;
}

/* ----------------------------------------------------------------- lexer */

static int peekc(const struct parser *p, size_t off)
{
	return p->pos + off < p->len ? (unsigned char)p->s[p->pos + off] : -1;
}

static int cur_col(const struct parser *p)
{
	size_t c = p->pos - p->line_start + 1;
	return c > INT32_MAX ? INT32_MAX : (int)c;
}

static void consumed_newline(struct parser *p)
{
	if (p->line < INT32_MAX)
		p->line++;
	p->line_start = p->pos;
}

/* A backslash that ends the line joins the next line to this one. */
static size_t continuation_len(const struct parser *p)
{
	if (peekc(p, 0) != '\\')
		return 0;
	if (peekc(p, 1) == '\n')
		return 2;
	if (peekc(p, 1) == '\r' && peekc(p, 2) == '\n')
		return 3;
	return 0;
}

static void skip_blanks(struct parser *p)
{
	for (;;) {
		int ch = peekc(p, 0);
		size_t cont;
		if (ch == ' ' || ch == '\t' || ch == '\r') {
			p->pos++;
		} else if ((cont = continuation_len(p)) != 0) {
			p->pos += cont;
			consumed_newline(p);
		} else if (ch == '#') {
			while (p->pos < p->len && p->s[p->pos] != '\n')
				p->pos++;
		} else {
			return;
		}
	}
}

static bool is_word_char(int ch)
{
	return ch > 0x20 && ch != 0x7f && !strchr("\"#{},<>", ch);
}

static bool is_name_char(int ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '_' || ch == '-' || ch == '.';
}

static bool valid_name(const char *s)
{
	if (!*s || strlen(s) > CONF_NAME_MAX)
		return false;
	for (; *s; s++)
		if (!is_name_char((unsigned char)*s))
			return false;
	return true;
}

static void tok_put(struct token *t, bool *toolong, int ch)
{
	if (t->len < CONF_TOKEN_MAX)
		t->text[t->len++] = (char)ch;
	else
		*toolong = true;
}

static void lex_word(struct parser *p, struct token *t)
{
	bool toolong = false;
	while (is_word_char(peekc(p, 0)) && !continuation_len(p))
		tok_put(t, &toolong, p->s[p->pos++]);
	t->text[t->len] = '\0';
	t->type = T_WORD;
	if (toolong) {
		perr_at(p, t->line, t->col, "word longer than %d bytes", CONF_TOKEN_MAX);
		t->type = T_ERROR;
	}
}

static void lex_string(struct parser *p, struct token *t)
{
	bool toolong = false, bad = false;
	p->pos++; /* opening quote */
	for (;;) {
		int ch = peekc(p, 0);
		if (ch < 0 || ch == '\n') {
			perr_at(p, t->line, t->col, "unterminated string");
			t->type = T_ERROR;
			return;
		}
		if (ch == '"') {
			p->pos++;
			break;
		}
		if (ch == '\\') {
			int e = peekc(p, 1);
			if (e == '"' || e == '\\') {
				tok_put(t, &toolong, e);
				p->pos += 2;
				continue;
			}
			if (!bad)
				perr_at(p, p->line, cur_col(p),
					"invalid escape in string (only \\\" and \\\\)");
			bad = true;
			p->pos++;
			continue;
		}
		if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
			if (!bad)
				perr_at(p, p->line, cur_col(p), "invalid character 0x%02x in string", ch);
			bad = true;
			p->pos++;
			continue;
		}
		tok_put(t, &toolong, ch);
		p->pos++;
	}
	t->text[t->len] = '\0';
	t->type = T_STRING;
	if (toolong && !bad)
		perr_at(p, t->line, t->col, "string longer than %d bytes", CONF_TOKEN_MAX);
	if (toolong || bad)
		t->type = T_ERROR;
}

static void lex_ref(struct parser *p, struct token *t)
{
	bool toolong = false;
	p->pos++; /* '<' */
	while (is_word_char(peekc(p, 0)) && !continuation_len(p))
		tok_put(t, &toolong, p->s[p->pos++]);
	t->text[t->len] = '\0';
	if (peekc(p, 0) != '>') {
		perr_at(p, t->line, t->col, "unterminated table reference, expected \">\"");
		t->type = T_ERROR;
		return;
	}
	p->pos++;
	t->type = T_REF;
	if (t->len == 0) {
		perr_at(p, t->line, t->col, "empty table reference");
		t->type = T_ERROR;
	} else if (toolong || !valid_name(t->text)) {
		perr_at(p, t->line, t->col, "invalid table name %s", quote(t->text).s);
		t->type = T_ERROR;
	}
}

static void lex(struct parser *p)
{
	struct token *t = &p->tok;
	skip_blanks(p);
	t->line = p->line;
	t->col = cur_col(p);
	t->len = 0;
	t->text[0] = '\0';
	int ch = peekc(p, 0);
	switch (ch) {
	case -1: t->type = T_EOF; return;
	case '\n':
		p->pos++;
		consumed_newline(p);
		t->type = T_NL;
		return;
	case '{': p->pos++; t->type = T_LBRACE; return;
	case '}': p->pos++; t->type = T_RBRACE; return;
	case ',': p->pos++; t->type = T_COMMA; return;
	case '"': lex_string(p, t); return;
	case '<': lex_ref(p, t); return;
	default: break;
	}
	if (!is_word_char(ch) && !continuation_len(p)) {
		p->pos++;
		if (ch > 0x20 && ch < 0x7f)
			perr_at(p, t->line, t->col, "unexpected \"%c\"", ch);
		else
			perr_at(p, t->line, t->col, "invalid character 0x%02x", ch);
		t->type = T_ERROR;
		return;
	}
	if (continuation_len(p)) { /* unreachable: skip_blanks ate it */
		t->type = T_ERROR;
		return;
	}
	lex_word(p, t);
}

/* ------------------------------------------------------- parser helpers */

static bool at_end(const struct parser *p)
{
	return p->tok.type == T_NL || p->tok.type == T_EOF;
}

static bool is_kw(const struct parser *p, const char *kw)
{
	return p->tok.type == T_WORD && strcmp(p->tok.text, kw) == 0;
}

static bool is_value(const struct parser *p)
{
	return p->tok.type == T_WORD || p->tok.type == T_STRING;
}

/* Skip the rest of a statement after an error; a brace block that starts
 * on this line is skipped whole, so a bad table does not spill its items
 * into the following lines as directives. */
static void skip_statement(struct parser *p)
{
	while (!at_end(p) && !p->gave_up) {
		if (p->tok.type == T_LBRACE) {
			while (p->tok.type != T_RBRACE && p->tok.type != T_EOF && !p->gave_up)
				lex(p);
			if (p->tok.type == T_EOF)
				return;
		}
		lex(p);
	}
}

/* A word or string (what), copied. */
static int want_value(struct parser *p, const char *what, char **out)
{
	if (!is_value(p) || p->tok.len == 0) {
		perr(p, &p->tok, "expected %s", what);
		return -1;
	}
	*out = pstrdup(p, p->tok.text);
	if (!*out)
		return -1;
	lex(p);
	return 0;
}

/* Decimal digits only; saturates at UINT64_MAX. false if not a number. */
static bool parse_decimal(const char *s, uint64_t *out)
{
	if (!*s)
		return false;
	uint64_t v = 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		unsigned d = (unsigned)(*s - '0');
		v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
	}
	*out = v;
	return true;
}

static bool valid_hostname(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253)
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
			return false;
	}
	return true;
}

/* A scalar directive set twice is a mistake worth reporting. */
static int once(struct parser *p, int slot, const struct token *dir)
{
	if (p->seen[slot]) {
		perr(p, dir, "duplicate %s (first set on line %d)", quote(dir->text).s, p->seen[slot]);
		return -1;
	}
	p->seen[slot] = dir->line;
	return 0;
}

/* ------------------------------------------------------------ lookups */

const struct conf_table *conf_table_find(const struct conf *c, const char *name)
{
	for (size_t i = 0; i < c->ntables; i++)
		if (strcmp(c->tables[i].name, name) == 0)
			return &c->tables[i];
	return NULL;
}

const struct conf_pki *conf_pki_find(const struct conf *c, const char *name)
{
	for (size_t i = 0; i < c->npkis; i++)
		if (strcmp(c->pkis[i].name, name) == 0)
			return &c->pkis[i];
	return NULL;
}

/* The lookahead is <name>: check it names a table, copy it. */
static int want_table_ref(struct parser *p, const char *what, char **out)
{
	if (p->tok.type != T_REF) {
		perr(p, &p->tok, "expected %s", what);
		return -1;
	}
	if (!conf_table_find(p->c, p->tok.text)) {
		perr(p, &p->tok, "unknown table %s", quote(p->tok.text).s);
		return -1;
	}
	*out = pstrdup(p, p->tok.text);
	if (!*out)
		return -1;
	lex(p);
	return 0;
}

/* ---------------------------------------------------------- directives */

static int set_pki_field(struct parser *p, struct conf_pki *k)
{
	struct token ftok = p->tok;
	const char *field = ftok.text;
	char **slot = strcmp(field, "cert") == 0 ? &k->cert
		      : strcmp(field, "key") == 0 ? &k->key
						  : &k->ca;
	lex(p);
	char *v;
	if (want_value(p, "a file name", &v) < 0)
		return -1;
	if (*slot) {
		perr(p, &ftok, "pki %s: %s already set", quote(k->name).s, field);
		free(v);
		return -1;
	}
	*slot = v;
	return 0;
}

/* pki NAME (cert|key|ca) "FILE" [...] ; several lines for one NAME merge. */
static int d_pki(struct parser *p, const struct token *dir)
{
	if (!is_value(p) || !valid_hostname(p->tok.text)) {
		if (is_value(p))
			perr(p, &p->tok, "invalid pki name %s", quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a pki name");
		return -1;
	}
	struct conf *c = p->c;
	struct conf_pki *k = (struct conf_pki *)conf_pki_find(c, p->tok.text);
	if (!k) {
		if (grow(p, (void **)&c->pkis, &p->cap_pkis, c->npkis, sizeof *c->pkis) < 0 ||
		    grow(p, (void **)&p->pki_bad, &p->cap_pki_bad, c->npkis, sizeof *p->pki_bad) < 0)
			return -1;
		k = &c->pkis[c->npkis];
		memset(k, 0, sizeof *k);
		k->name = pstrdup(p, p->tok.text);
		if (!k->name)
			return -1;
		k->line = dir->line;
		k->col = dir->col;
		c->npkis++;
	}
	size_t idx = (size_t)(k - c->pkis);
	lex(p);
	if (!is_kw(p, "cert") && !is_kw(p, "key") && !is_kw(p, "ca")) {
		perr(p, &p->tok, "expected cert, key or ca");
		p->pki_bad[idx] = true;
		return -1;
	}
	while (is_kw(p, "cert") || is_kw(p, "key") || is_kw(p, "ca"))
		if (set_pki_field(p, k) < 0) {
			p->pki_bad[idx] = true;
			return -1;
		}
	if (!at_end(p)) /* "unexpected" follows: the pki is not what was meant */
		p->pki_bad[idx] = true;
	return 0;
}

static int table_add(struct parser *p, struct conf_table *t, size_t *cap, const char *key,
		     const char *value, int line, int col)
{
	if (t->n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 8;
		char **k = reallocarray(t->keys, ncap, sizeof *k);
		if (k)
			t->keys = k;
		char **v = reallocarray(t->values, ncap, sizeof *v);
		if (v)
			t->values = v;
		int *l = reallocarray(t->entry_line, ncap, sizeof *l);
		if (l)
			t->entry_line = l;
		int *cl = reallocarray(t->entry_col, ncap, sizeof *cl);
		if (cl)
			t->entry_col = cl;
		if (!k || !v || !l || !cl) {
			oom(p);
			return -1;
		}
		*cap = ncap;
	}
	char *kd = pstrdup(p, key);
	char *vd = value ? pstrdup(p, value) : NULL;
	if (!kd || (value && !vd)) {
		free(kd);
		free(vd);
		return -1;
	}
	t->keys[t->n] = kd;
	t->values[t->n] = vd;
	t->entry_line[t->n] = line;
	t->entry_col[t->n] = col;
	t->n++;
	return 0;
}

/* { item, item item
 *   item }  — commas and line ends both separate. */
static int table_list(struct parser *p, struct conf_table *t)
{
	struct token open = p->tok;
	size_t cap = 0;
	int rc = 0;
	lex(p); /* '{' */
	for (;;) {
		if (p->gave_up)
			return -1;
		switch (p->tok.type) {
		case T_NL:
		case T_COMMA: lex(p); continue;
		case T_RBRACE: lex(p); return rc;
		case T_EOF: perr(p, &open, "missing \"}\" for this \"{\""); return -1;
		case T_WORD:
		case T_STRING:
			if (p->tok.len == 0) {
				perr(p, &p->tok, "empty table entry");
				rc = -1;
			} else if (table_add(p, t, &cap, p->tok.text, NULL, p->tok.line, p->tok.col) < 0) {
				return -1;
			}
			lex(p);
			continue;
		case T_ERROR: rc = -1; lex(p); continue;
		default:
			perr(p, &p->tok, "unexpected %s in table", tok_desc(&p->tok).s);
			rc = -1;
			lex(p);
			continue;
		}
	}
}

/* One entry a line: "key [value...]"; '#' at the start of a field begins
 * a comment; blank lines are ignored. */
static int table_file_parse(struct parser *p, struct conf_table *t, const char *data, size_t len,
			    const struct token *at)
{
	size_t cap = 0;
	int lineno = 0;
	size_t i = 0;
	while (i < len) {
		size_t start = i;
		while (i < len && data[i] != '\n')
			i++;
		size_t end = i;
		if (i < len)
			i++;
		lineno++;
		if (memchr(data + start, '\0', end - start)) {
			perr(p, at, "table file %s line %d: NUL byte", quote(t->path).s, lineno);
			return -1;
		}
		if (end > start && data[end - 1] == '\r')
			end--;
		/* cut a comment: '#' at the start of a field */
		for (size_t j = start; j < end; j++)
			if (data[j] == '#' && (j == start || data[j - 1] == ' ' || data[j - 1] == '\t')) {
				end = j;
				break;
			}
		size_t k = start;
		while (k < end && (data[k] == ' ' || data[k] == '\t'))
			k++;
		if (k == end)
			continue;
		size_t kend = k;
		while (kend < end && data[kend] != ' ' && data[kend] != '\t')
			kend++;
		size_t v = kend;
		while (v < end && (data[v] == ' ' || data[v] == '\t'))
			v++;
		size_t vend = end;
		while (vend > v && (data[vend - 1] == ' ' || data[vend - 1] == '\t'))
			vend--;
		char *key = strndup(data + k, kend - k);
		char *val = vend > v ? strndup(data + v, vend - v) : NULL;
		if (!key || (vend > v && !val)) {
			free(key);
			free(val);
			oom(p);
			return -1;
		}
		size_t col = k - start + 1;
		int rc = table_add(p, t, &cap, key, val, lineno, col > INT32_MAX ? INT32_MAX : (int)col);
		free(key);
		free(val);
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* Only a regular file is read, and only up to a bound: a config naming
 * /dev/zero or a FIFO must fail, not hang or exhaust memory. */
static int read_regular_file(const char *path, size_t max, char **out, size_t *out_len, int *err,
			     bool *too_large)
{
	*too_large = false;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		*err = errno;
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		*err = errno;
		close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		*err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
		close(fd);
		return -1;
	}
	if ((uint64_t)st.st_size > max) {
		*too_large = true;
		close(fd);
		return -1;
	}
	size_t cap = (size_t)st.st_size + 1;
	char *data = malloc(cap);
	if (!data) {
		*err = ENOMEM;
		close(fd);
		return -1;
	}
	size_t n = 0;
	while (n < cap - 1) {
		ssize_t r = read(fd, data + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*err = errno;
			free(data);
			close(fd);
			return -1;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	data[n] = '\0';
	*out = data;
	*out_len = n;
	return 0;
}

static int table_file(struct parser *p, struct conf_table *t)
{
	struct token at = p->tok;
	const char *path = p->tok.text + strlen("file:");
	if (!*path) {
		perr(p, &at, "expected a path after \"file:\"");
		return -1;
	}
	t->path = pstrdup(p, path);
	if (!t->path)
		return -1;
	lex(p);
	char *data;
	size_t len;
	int err = 0;
	bool too_large;
	if (read_regular_file(t->path, CONF_TABLE_FILE_MAX, &data, &len, &err, &too_large) < 0) {
		if (too_large)
			perr(p, &at, "table file %s is larger than %u bytes", t->path,
			     CONF_TABLE_FILE_MAX);
		else if (err == EINVAL)
			perr(p, &at, "cannot open table file %s: not a regular file", t->path);
		else
			perr(p, &at, "cannot open table file %s: %s", t->path, strerror(err));
		return -1;
	}
	int rc = table_file_parse(p, t, data, len, &at);
	free(data);
	return rc;
}

/* table NAME { a, b } | table NAME file:PATH */
static int d_table(struct parser *p, const struct token *dir)
{
	if (p->tok.type != T_WORD || !valid_name(p->tok.text)) {
		if (is_value(p))
			perr(p, &p->tok, "invalid table name %s", quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a table name");
		return -1;
	}
	struct conf *c = p->c;
	const struct conf_table *old = conf_table_find(c, p->tok.text);
	if (old) {
		perr(p, &p->tok, "duplicate table %s (first defined on line %d)",
		     quote(p->tok.text).s, old->line);
		return -1;
	}
	if (grow(p, (void **)&c->tables, &p->cap_tables, c->ntables, sizeof *c->tables) < 0)
		return -1;
	/* Registered even when its contents fail, so the lines that use it
	 * do not each add an "unknown table" error. */
	struct conf_table *t = &c->tables[c->ntables];
	memset(t, 0, sizeof *t);
	t->name = pstrdup(p, p->tok.text);
	if (!t->name)
		return -1;
	t->line = dir->line;
	t->col = dir->col;
	c->ntables++;
	lex(p);
	if (p->tok.type == T_LBRACE) {
		t->kind = CONF_TABLE_LIST;
		return table_list(p, t);
	}
	if (is_value(p) && strncmp(p->tok.text, "file:", 5) == 0) {
		t->kind = CONF_TABLE_FILE;
		return table_file(p, t);
	}
	perr(p, &p->tok, "expected \"{\" or file:PATH");
	return -1;
}

static bool parse_listen_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	size_t n = strlen(text);
	if (n >= 2 && text[0] == '[' && text[n - 1] == ']') {
		char tmp[INET6_ADDRSTRLEN + 1];
		if (n - 2 >= sizeof tmp)
			return false;
		memcpy(tmp, text + 1, n - 2);
		tmp[n - 2] = '\0';
		if (inet_pton(AF_INET6, tmp, &in6->sin6_addr) != 1)
			return false;
		in6->sin6_family = AF_INET6;
		*len = sizeof *in6;
		return true;
	}
	if (strcmp(text, "localhost") == 0)
		text = "127.0.0.1";
	if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		*len = sizeof *in4;
		return true;
	}
	if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		*len = sizeof *in6;
		return true;
	}
	return false;
}

static void set_port(struct conf_listener *l)
{
	if (l->addr.ss_family == AF_INET)
		((struct sockaddr_in *)&l->addr)->sin_port = htons(l->port);
	else
		((struct sockaddr_in6 *)&l->addr)->sin6_port = htons(l->port);
}

static bool same_endpoint(const struct conf_listener *a, const struct conf_listener *b)
{
	if (a->addr.ss_family != b->addr.ss_family || a->port != b->port)
		return false;
	if (a->addr.ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)&a->addr)->sin_addr,
			      &((const struct sockaddr_in *)&b->addr)->sin_addr,
			      sizeof(struct in_addr)) == 0;
	return memcmp(&((const struct sockaddr_in6 *)&a->addr)->sin6_addr,
		      &((const struct sockaddr_in6 *)&b->addr)->sin6_addr,
		      sizeof(struct in6_addr)) == 0;
}

static void listener_free(struct conf_listener *l)
{
	free(l->addr_text);
	free(l->pki);
	free(l->auth_table);
	free(l->hostname);
	free(l->proxy_from_table);
	memset(l, 0, sizeof *l);
}

struct listen_opts {
	struct token mode_tok;  /* tls / tls-require / smtps, type T_EOF if none */
	struct token auth_tok;
	struct token verify_tok;
	struct token pki_tok;
	struct token proxy_tok;
	struct token proxy_from_tok;
	struct token port_tok;
	struct token hostname_tok;
};

static int check_addr_table(struct parser *p, const char *name);
static int table_list(struct parser *p, struct conf_table *t);

/* A table of the config's own for a list written in place, named after
 * where it was written ("proxy-from:LINE:COL"; ':' cannot be in a table
 * name the user gives). The lookahead is the list ("{") or its only entry;
 * its entries must be addresses or CIDRs. */
static int literal_addr_table(struct parser *p, const char *prefix, char **out)
{
	char name[CONF_NAME_MAX + 32];
	snprintf(name, sizeof name, "%s:%d:%d", prefix, p->tok.line, p->tok.col);
	struct conf *c = p->c;
	if (grow(p, (void **)&c->tables, &p->cap_tables, c->ntables, sizeof *c->tables) < 0)
		return -1;
	struct conf_table *t = &c->tables[c->ntables];
	memset(t, 0, sizeof *t);
	t->name = pstrdup(p, name);
	if (!t->name)
		return -1;
	t->kind = CONF_TABLE_LIST;
	t->line = p->tok.line;
	t->col = p->tok.col;
	c->ntables++;
	int rc;
	if (p->tok.type == T_LBRACE) {
		rc = table_list(p, t);
		if (rc == 0 && t->n == 0) {
			perr_at(p, t->line, t->col, "empty list: no peer could send a PROXY header");
			rc = -1;
		}
	} else {
		size_t cap = 0;
		rc = table_add(p, t, &cap, p->tok.text, NULL, p->tok.line, p->tok.col);
		lex(p);
	}
	if (rc == 0)
		rc = check_addr_table(p, t->name);
	if (rc == 0 && !(*out = pstrdup(p, t->name)))
		rc = -1;
	return rc;
}

/* proxy-from any | local | <table> | { ADDR|CIDR, ... } | ADDR|CIDR */
static int listen_proxy_from(struct parser *p, struct conf_listener *l)
{
	if (is_kw(p, "any") || is_kw(p, "local")) {
		l->proxy_from = p->tok.text[0] == 'a' ? CONF_PROXY_FROM_ANY : CONF_PROXY_FROM_LOCAL;
		lex(p);
		return 0;
	}
	l->proxy_from = CONF_PROXY_FROM_TABLE;
	if (p->tok.type == T_REF) {
		if (want_table_ref(p, "<table>", &l->proxy_from_table) < 0)
			return -1;
		/* a bad entry is an error of the table's line; the listener is fine */
		check_addr_table(p, l->proxy_from_table);
		return 0;
	}
	if (p->tok.type == T_LBRACE || (is_value(p) && policy_valid_net(p->tok.text)))
		return literal_addr_table(p, "proxy-from", &l->proxy_from_table);
	if (is_value(p))
		perr(p, &p->tok, "invalid address or CIDR %s after \"proxy-from\"",
		     quote(p->tok.text).s);
	else
		perr(p, &p->tok, "expected any, local, <table>, an address or { list } after "
				 "\"proxy-from\"");
	return -1;
}

/* A listen option (or one of a group that exclude each other, such as
 * tls / tls-require / smtps) may be given once: the same word again is a
 * duplicate, another word of the group a conflict. */
static int option_once(struct parser *p, struct token *seen, const struct token *opt)
{
	if (seen->type != T_EOF) {
		if (strcmp(seen->text, opt->text) == 0)
			perr(p, opt, "duplicate option %s", quote(opt->text).s);
		else
			perr(p, opt, "%s conflicts with %s", quote(opt->text).s,
			     quote(seen->text).s);
		return -1;
	}
	*seen = *opt;
	return 0;
}

static int listen_option(struct parser *p, struct conf_listener *l, struct listen_opts *o)
{
	struct token opt = p->tok;
	if (opt.type != T_WORD) {
		perr(p, &opt, "unexpected %s", tok_desc(&opt).s);
		return -1;
	}
	const char *w = opt.text;
	if (strcmp(w, "port") == 0) {
		if (option_once(p, &o->port_tok, &opt) < 0)
			return -1;
		lex(p);
		uint64_t v;
		if (p->tok.type != T_WORD || !parse_decimal(p->tok.text, &v)) {
			perr(p, &p->tok, "expected a port number");
			return -1;
		}
		if (v == 0 || v > 65535) {
			perr(p, &p->tok, "port out of range");
			return -1;
		}
		l->port = (uint16_t)v;
		lex(p);
		return 0;
	}
	if (strcmp(w, "tls") == 0 || strcmp(w, "tls-require") == 0 || strcmp(w, "smtps") == 0) {
		if (option_once(p, &o->mode_tok, &opt) < 0)
			return -1;
		l->flags |= w[0] == 's' ? CONF_LISTEN_SMTPS
			    : w[3] == '-' ? CONF_LISTEN_TLS | CONF_LISTEN_TLS_REQUIRE
					  : CONF_LISTEN_TLS;
		lex(p);
		return 0;
	}
	if (strcmp(w, "pki") == 0) {
		if (option_once(p, &o->pki_tok, &opt) < 0)
			return -1;
		lex(p);
		if (!is_value(p)) {
			perr(p, &p->tok, "expected a pki name");
			return -1;
		}
		if (!conf_pki_find(p->c, p->tok.text)) {
			perr(p, &p->tok, "unknown pki %s", quote(p->tok.text).s);
			return -1;
		}
		l->pki = pstrdup(p, p->tok.text);
		if (!l->pki)
			return -1;
		lex(p);
		return 0;
	}
	if (strcmp(w, "auth") == 0) {
		if (option_once(p, &o->auth_tok, &opt) < 0)
			return -1;
		l->flags |= CONF_LISTEN_AUTH;
		lex(p);
		if (p->tok.type == T_REF)
			return want_table_ref(p, "<table>", &l->auth_table);
		return 0;
	}
	if (strcmp(w, "verify") == 0) {
		if (option_once(p, &o->verify_tok, &opt) < 0)
			return -1;
		l->flags |= CONF_LISTEN_VERIFY;
		lex(p);
		return 0;
	}
	if (strcmp(w, "proxy-v1") == 0 || strcmp(w, "proxy-v2") == 0) {
		if (option_once(p, &o->proxy_tok, &opt) < 0)
			return -1;
		l->flags |= w[7] == '1' ? CONF_LISTEN_PROXY_V1 : CONF_LISTEN_PROXY_V2;
		lex(p);
		return 0;
	}
	if (strcmp(w, "proxy-from") == 0) {
		if (option_once(p, &o->proxy_from_tok, &opt) < 0)
			return -1;
		lex(p);
		return listen_proxy_from(p, l);
	}
	if (strcmp(w, "hostname") == 0) {
		if (option_once(p, &o->hostname_tok, &opt) < 0)
			return -1;
		lex(p);
		if (is_value(p) && !valid_hostname(p->tok.text)) {
			perr(p, &p->tok, "invalid hostname %s", quote(p->tok.text).s);
			return -1;
		}
		return want_value(p, "a host name", &l->hostname);
	}
	perr(p, &opt, "unknown listen option %s", quote(w).s);
	return -1;
}

/* listen on ADDR [port N] [tls|tls-require|smtps] [pki NAME] [auth [<t>]]
 *           [verify] [proxy-v1|proxy-v2] [proxy-from FROM] [hostname NAME]
 *           — any order */
static int d_listen(struct parser *p, const struct token *dir)
{
	struct conf_listener l = {0};
	struct listen_opts o;
	memset(&o, 0, sizeof o); /* every token type T_EOF: not given */
	l.line = dir->line;
	l.col = dir->col;
	if (!is_kw(p, "on")) {
		perr(p, &p->tok, "expected \"on\"");
		return -1;
	}
	lex(p);
	struct token addr_tok = p->tok;
	if (!is_value(p)) {
		perr(p, &p->tok, "expected an address");
		return -1;
	}
	if (!parse_listen_addr(p->tok.text, &l.addr, &l.addr_len)) {
		perr(p, &p->tok, "invalid listen address %s (an IPv4 or IPv6 literal)",
		     quote(p->tok.text).s);
		return -1;
	}
	l.addr_text = pstrdup(p, p->tok.text);
	if (!l.addr_text)
		return -1;
	lex(p);
	int rc = 0;
	while (!at_end(p) && rc == 0)
		rc = listen_option(p, &l, &o);
	if (rc == 0) {
		unsigned tls = l.flags & (CONF_LISTEN_TLS | CONF_LISTEN_SMTPS);
		if (tls && !l.pki) {
			perr(p, &o.mode_tok, "%s needs a pki (add \"pki NAME\")",
			     quote(o.mode_tok.text).s);
			rc = -1;
		}
		if (!tls && l.pki) {
			perr(p, &o.pki_tok, "\"pki\" needs tls, tls-require or smtps");
			rc = -1;
		}
		if (!tls && (l.flags & CONF_LISTEN_AUTH)) {
			perr(p, &o.auth_tok, "\"auth\" needs tls, tls-require or smtps");
			rc = -1;
		}
		if (!tls && (l.flags & CONF_LISTEN_VERIFY)) {
			perr(p, &o.verify_tok, "\"verify\" needs tls, tls-require or smtps");
			rc = -1;
		}
		if (o.proxy_from_tok.type != T_EOF && o.proxy_tok.type == T_EOF) {
			perr(p, &o.proxy_from_tok, "\"proxy-from\" needs proxy-v1 or proxy-v2");
			rc = -1;
		}
	}
	if (rc == 0) {
		if (o.port_tok.type == T_EOF)
			l.port = (l.flags & CONF_LISTEN_SMTPS) ? 465 : 25;
		set_port(&l);
		struct conf *c = p->c;
		for (size_t i = 0; i < c->nlisteners; i++)
			if (same_endpoint(&c->listeners[i], &l)) {
				perr(p, &addr_tok, "duplicate listener on %s port %u (first on line %d)",
				     quote(l.addr_text).s, l.port, c->listeners[i].line);
				rc = -1;
				break;
			}
	}
	if (rc == 0 && grow(p, (void **)&p->c->listeners, &p->cap_listeners, p->c->nlisteners,
			    sizeof l) < 0)
		rc = -1;
	if (rc < 0) {
		listener_free(&l);
		return -1;
	}
	p->c->listeners[p->c->nlisteners++] = l;
	return 0;
}

/* metrics listen on ADDR port N */
static int d_metrics(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_METRICS, dir) < 0)
		return -1;
	struct conf_listener l = {0};
	l.line = dir->line;
	l.col = dir->col;
	if (!is_kw(p, "listen")) {
		perr(p, &p->tok, "expected \"listen\"");
		return -1;
	}
	lex(p);
	if (!is_kw(p, "on")) {
		perr(p, &p->tok, "expected \"on\"");
		return -1;
	}
	lex(p);
	if (!is_value(p)) {
		perr(p, &p->tok, "expected an address");
		return -1;
	}
	if (!parse_listen_addr(p->tok.text, &l.addr, &l.addr_len)) {
		perr(p, &p->tok, "invalid metrics address %s (an IPv4 or IPv6 literal)",
		     quote(p->tok.text).s);
		return -1;
	}
	struct token addr_tok = p->tok;
	lex(p);
	if (!is_kw(p, "port")) {
		perr(p, &p->tok, "expected \"port\"");
		return -1;
	}
	lex(p);
	uint64_t v;
	if (p->tok.type != T_WORD || !parse_decimal(p->tok.text, &v)) {
		perr(p, &p->tok, "expected a port number");
		return -1;
	}
	if (v == 0 || v > 65535) {
		perr(p, &p->tok, "port out of range");
		return -1;
	}
	l.port = (uint16_t)v;
	set_port(&l);
	for (size_t i = 0; i < p->c->nlisteners; i++)
		if (same_endpoint(&p->c->listeners[i], &l)) {
			perr(p, &addr_tok, "metrics on %s port %u clashes with the listener on line %d",
			     quote(addr_tok.text).s, l.port, p->c->listeners[i].line);
			return -1;
		}
	l.addr_text = pstrdup(p, addr_tok.text);
	if (!l.addr_text)
		return -1;
	lex(p);
	listener_free(&p->c->metrics);
	p->c->metrics = l;
	return 0;
}

/* The table that "for domain NAME" stands for: one per literal, shared by
 * the rules that name it. Its name cannot clash with a user's table, as
 * ':' is not allowed in table names. */
static const char *literal_domain_table(struct parser *p, const char *domain, int line, int col)
{
	char name[CONF_NAME_MAX + 16];
	snprintf(name, sizeof name, "domain:%.*s", CONF_NAME_MAX, domain);
	if (conf_table_find(p->c, name))
		return conf_table_find(p->c, name)->name;
	struct conf *c = p->c;
	if (grow(p, (void **)&c->tables, &p->cap_tables, c->ntables, sizeof *c->tables) < 0)
		return NULL;
	struct conf_table *t = &c->tables[c->ntables];
	memset(t, 0, sizeof *t);
	t->name = pstrdup(p, name);
	if (!t->name)
		return NULL;
	t->kind = CONF_TABLE_LIST;
	t->line = line;
	t->col = col;
	c->ntables++;
	size_t cap = 0;
	if (table_add(p, t, &cap, domain, NULL, line, col) < 0)
		return NULL;
	return t->name;
}

/* A table used as "from <t>" holds client addresses: check every entry
 * now (once per table), so a bad one is reported with the other errors,
 * where it was written. policy_build checks again for configs built by
 * other means. */
static int check_addr_table(struct parser *p, const char *name)
{
	const struct conf_table *t = conf_table_find(p->c, name);
	if (!t)
		return -1;
	size_t idx = (size_t)(t - p->c->tables);
	if (idx >= p->n_addr_checked) {
		size_t n = p->c->ntables;
		bool *a = reallocarray(p->addr_checked, n, sizeof *a);
		if (!a) {
			oom(p);
			return -1;
		}
		memset(a + p->n_addr_checked, 0, (n - p->n_addr_checked) * sizeof *a);
		p->addr_checked = a;
		p->n_addr_checked = n;
	}
	if (p->addr_checked[idx])
		return 0;
	p->addr_checked[idx] = true;
	int rc = 0;
	for (size_t i = 0; i < t->n; i++) {
		if (policy_valid_net(t->keys[i]))
			continue;
		const char *file = t->kind == CONF_TABLE_FILE && t->path ? t->path : p->name;
		perr_file(p, file, t->entry_line[i], t->entry_col[i],
			  "table \"%s\": invalid address or CIDR %s", t->name, quote(t->keys[i]).s);
		rc = -1;
	}
	return rc;
}

static void route_free(struct conf_route *r)
{
	free(r->hops);
	free(r->ca);
	memset(r, 0, sizeof *r);
}

static void rule_free(struct conf_rule *r)
{
	free(r->from_table);
	free(r->domain_table);
	free(r->recipient_table);
	route_free(&r->relay);
	memset(r, 0, sizeof *r);
}

/* One next-hop URL (the lookahead), appended to r. An error points at
 * the byte of the URL it is about. */
static int route_hop(struct parser *p, struct conf_route *r, size_t *cap)
{
	if (!is_value(p) || p->tok.len == 0) {
		perr(p, &p->tok, "expected a next-hop URL");
		return -1;
	}
	if (r->nhops == CONF_RELAY_MAX_HOPS) {
		perr(p, &p->tok, "more than %u next hops", CONF_RELAY_MAX_HOPS);
		return -1;
	}
	struct relay_url u;
	const char *why;
	size_t off;
	if (relay_url_parse(p->tok.text, p->tok.len, &u, &why, &off) < 0) {
		size_t col = (size_t)p->tok.col + (p->tok.type == T_STRING ? 1 : 0) + off;
		perr_at(p, p->tok.line, col > INT32_MAX ? INT32_MAX : (int)col,
			"invalid next hop %s: %s", quote(p->tok.text).s, why);
		return -1;
	}
	for (size_t i = 0; i < r->nhops; i++)
		if (strcmp(r->hops[i].text, u.text) == 0) {
			perr(p, &p->tok, "next hop %s given twice", quote(u.text).s);
			return -1;
		}
	if (grow(p, (void **)&r->hops, cap, r->nhops, sizeof u) < 0)
		return -1;
	r->hops[r->nhops++] = u;
	lex(p);
	return 0;
}

static bool route_has_tls(const struct conf_route *r)
{
	for (size_t i = 0; i < r->nhops; i++)
		if (r->hops[i].tls != RELAY_TLS_NONE)
			return true;
	return false;
}

/* [ca "FILE" | noverify]: only for routes with a TLS next hop. */
static int route_options(struct parser *p, struct conf_route *r)
{
	struct token seen;
	memset(&seen, 0, sizeof seen); /* T_EOF: none yet */
	while (is_kw(p, "ca") || is_kw(p, "noverify")) {
		struct token opt = p->tok;
		if (option_once(p, &seen, &opt) < 0)
			return -1;
		if (!route_has_tls(r)) {
			perr(p, &opt, "%s needs an smtp+tls:// or smtps:// next hop", quote(opt.text).s);
			return -1;
		}
		lex(p);
		if (opt.text[0] == 'n')
			r->noverify = true;
		else if (want_value(p, "a CA file name", &r->ca) < 0)
			return -1;
	}
	return 0;
}

/* "via URL[, URL...] [ca FILE | noverify]" after "relay" (at tok). */
static int want_route(struct parser *p, const struct token *relay_tok, struct conf_route *r)
{
	r->line = relay_tok->line;
	r->col = relay_tok->col;
	if (!is_kw(p, "via")) {
		perr(p, &p->tok, "expected \"via\" after \"relay\"");
		return -1;
	}
	lex(p);
	size_t cap = 0;
	for (;;) {
		if (route_hop(p, r, &cap) < 0)
			return -1;
		if (p->tok.type != T_COMMA)
			break;
		lex(p);
	}
	return route_options(p, r);
}

/* accept from any|local|authenticated|<t> for any|domain <t>|domain NAME
 *        [recipient <t>] */
static int d_accept(struct parser *p, const struct token *dir)
{
	struct conf_rule r = {0};
	r.line = dir->line;
	r.col = dir->col;
	int rc = -1;
	if (!is_kw(p, "from")) {
		perr(p, &p->tok, "expected \"from\"");
		goto out;
	}
	lex(p);
	if (is_kw(p, "any")) {
		r.from = CONF_FROM_ANY;
	} else if (is_kw(p, "local")) {
		r.from = CONF_FROM_LOCAL;
	} else if (is_kw(p, "authenticated")) {
		r.from = CONF_FROM_AUTHENTICATED;
	} else if (p->tok.type == T_REF) {
		r.from = CONF_FROM_TABLE;
		if (want_table_ref(p, "<table>", &r.from_table) < 0)
			goto out;
		/* Bad entries are errors of the table's lines; the rule itself
		 * is fine, so parsing goes on. */
		check_addr_table(p, r.from_table);
	} else {
		perr(p, &p->tok, "expected any, local, authenticated or <table> after \"from\"");
		goto out;
	}
	if (r.from != CONF_FROM_TABLE)
		lex(p);
	if (!is_kw(p, "for")) {
		perr(p, &p->tok, "expected \"for\"");
		goto out;
	}
	lex(p);
	if (is_kw(p, "any")) {
		r.for_what = CONF_FOR_ANY;
		lex(p);
	} else if (is_kw(p, "domain")) {
		r.for_what = CONF_FOR_DOMAIN;
		lex(p);
		if (p->tok.type == T_REF) {
			if (want_table_ref(p, "<table>", &r.domain_table) < 0)
				goto out;
		} else if (is_value(p) && valid_hostname(p->tok.text)) {
			const char *name =
				literal_domain_table(p, p->tok.text, p->tok.line, p->tok.col);
			if (!name || !(r.domain_table = pstrdup(p, name)))
				goto out;
			lex(p);
		} else {
			perr(p, &p->tok, "expected <table> or a domain name after \"domain\"");
			goto out;
		}
	} else {
		perr(p, &p->tok, "expected any or domain after \"for\"");
		goto out;
	}
	if (is_kw(p, "recipient")) {
		lex(p);
		if (want_table_ref(p, "<table> after \"recipient\"", &r.recipient_table) < 0)
			goto out;
	}
	if (is_kw(p, "relay")) {
		struct token relay_tok = p->tok;
		lex(p);
		if (want_route(p, &relay_tok, &r.relay) < 0)
			goto out;
	}
	struct conf *c = p->c;
	if (grow(p, (void **)&c->rules, &p->cap_rules, c->nrules, sizeof r) < 0)
		goto out;
	c->rules[c->nrules++] = r;
	return 0;
out:
	rule_free(&r);
	return rc;
}

static int want_u32(struct parser *p, const char *what, uint64_t min, uint64_t max, uint32_t *out)
{
	uint64_t v;
	if (p->tok.type != T_WORD || !parse_decimal(p->tok.text, &v)) {
		perr(p, &p->tok, "expected a number");
		return -1;
	}
	if (v < min) {
		perr(p, &p->tok, "%s below %llu", what, (unsigned long long)min);
		return -1;
	}
	if (v > max) {
		perr(p, &p->tok, "%s above %llu", what, (unsigned long long)max);
		return -1;
	}
	*out = (uint32_t)v;
	lex(p);
	return 0;
}

static int want_size(struct parser *p, const char *what, uint64_t min, uint64_t *out)
{
	uint64_t v;
	if (p->tok.type != T_WORD || conf_parse_size(p->tok.text, &v) < 0) {
		if (is_value(p))
			perr(p, &p->tok, "invalid size %s (a number with k, M or G)",
			     quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a size");
		return -1;
	}
	if (v < min) {
		perr(p, &p->tok, "%s below %llu bytes", what, (unsigned long long)min);
		return -1;
	}
	*out = v;
	lex(p);
	return 0;
}

static int d_count(struct parser *p, const struct token *dir, int slot, uint64_t min,
		   uint64_t max, uint32_t *out)
{
	if (once(p, slot, dir) < 0)
		return -1;
	return want_u32(p, dir->text, min, max, out);
}

static int d_max_message_size(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_MAX_MESSAGE_SIZE, dir) < 0)
		return -1;
	return want_size(p, dir->text, 1, &p->c->max_message_size);
}

static int d_segment_size(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_SEGMENT_SIZE, dir) < 0)
		return -1;
	return want_size(p, dir->text, CONF_MIN_SEGMENT_SIZE, &p->c->segment_size);
}

static int d_max_recipients(struct parser *p, const struct token *dir)
{
	return d_count(p, dir, SEEN_MAX_RECIPIENTS, 1, 1000000, &p->c->max_recipients);
}

static int d_max_connections(struct parser *p, const struct token *dir)
{
	return d_count(p, dir, SEEN_MAX_CONNECTIONS, 1, 10000000, &p->c->max_connections);
}

static int d_max_connections_per_client(struct parser *p, const struct token *dir)
{
	return d_count(p, dir, SEEN_MAX_CONNECTIONS_PER_CLIENT, 1, 10000000,
		       &p->c->max_connections_per_client);
}

static int d_min_data_rate(struct parser *p, const struct token *dir)
{
	return d_count(p, dir, SEEN_MIN_DATA_RATE, 0, 1u << 30, &p->c->min_data_rate);
}

static int d_greeting_delay(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_GREETING_DELAY, dir) < 0)
		return -1;
	uint32_t ms;
	if (p->tok.type != T_WORD || conf_parse_duration(p->tok.text, &ms) < 0) {
		if (is_value(p))
			perr(p, &p->tok, "invalid duration %s (a number with ms, s, m, h or d)",
			     quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a duration");
		return -1;
	}
	if (ms > 5 * 60 * 1000) {
		perr(p, &p->tok, "greeting-delay longer than 5m would trip clients' own timeouts");
		return -1;
	}
	p->c->greeting_delay = ms;
	lex(p);
	return 0;
}

static int d_max_errors(struct parser *p, const struct token *dir)
{
	return d_count(p, dir, SEEN_MAX_ERRORS, 1, 1000000, &p->c->max_errors);
}

static int d_max_line_length(struct parser *p, const struct token *dir)
{
	return d_count(p, dir, SEEN_MAX_LINE_LENGTH, CONF_MIN_LINE_LENGTH, CONF_MAX_LINE_LENGTH,
		       &p->c->max_line_length);
}

/* A setting that is one of a few keywords: the index of the one given,
 * or -1 after "expected ..." at the token. */
static int one_of(struct parser *p, const char *const *words, size_t n, const char *expected)
{
	for (size_t i = 0; i < n; i++) {
		if (is_kw(p, words[i])) {
			lex(p);
			return (int)i;
		}
	}
	perr(p, &p->tok, "%s", expected);
	return -1;
}

static int d_bare_newlines(struct parser *p, const struct token *dir)
{
	static const char *const words[] = {"reject", "accept"};
	if (once(p, SEEN_BARE_NEWLINES, dir) < 0)
		return -1;
	int i = one_of(p, words, 2, "expected accept or reject");
	if (i < 0)
		return -1;
	p->c->accept_bare_newlines = i == 1;
	return 0;
}

static int d_timeout(struct parser *p, const struct token *dir)
{
	static const struct {
		const char *name;
		int slot;
		size_t off;
	} kinds[] = {
		{"greeting", SEEN_TIMEOUT_GREETING, offsetof(struct conf_timeouts, greeting)},
		{"command", SEEN_TIMEOUT_COMMAND, offsetof(struct conf_timeouts, command)},
		{"data-init", SEEN_TIMEOUT_DATA_INIT, offsetof(struct conf_timeouts, data_init)},
		{"data-block", SEEN_TIMEOUT_DATA_BLOCK, offsetof(struct conf_timeouts, data_block)},
		{"data-term", SEEN_TIMEOUT_DATA_TERM, offsetof(struct conf_timeouts, data_term)},
		{"drain", SEEN_TIMEOUT_DRAIN, offsetof(struct conf_timeouts, drain)},
		{"upgrade", SEEN_TIMEOUT_UPGRADE, offsetof(struct conf_timeouts, upgrade)},
	};
	(void)dir;
	size_t k;
	for (k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
		if (is_kw(p, kinds[k].name))
			break;
	if (k == sizeof kinds / sizeof kinds[0]) {
		if (p->tok.type == T_WORD)
			perr(p, &p->tok,
			     "unknown timeout %s (command, data-init, data-block, data-term, drain, greeting or upgrade)",
			     quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a timeout name");
		return -1;
	}
	struct token kt = p->tok;
	if (p->seen[kinds[k].slot]) {
		perr(p, &kt, "duplicate \"timeout %s\" (first set on line %d)", kinds[k].name,
		     p->seen[kinds[k].slot]);
		return -1;
	}
	p->seen[kinds[k].slot] = kt.line;
	lex(p);
	uint32_t ms;
	if (p->tok.type != T_WORD || conf_parse_duration(p->tok.text, &ms) < 0) {
		if (is_value(p))
			perr(p, &p->tok, "invalid duration %s (a number with ms, s, m, h or d)",
			     quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a duration");
		return -1;
	}
	if (ms == 0) {
		perr(p, &p->tok, "timeout %s must be longer than 0", kinds[k].name);
		return -1;
	}
	*(uint32_t *)((char *)&p->c->timeouts + kinds[k].off) = ms;
	lex(p);
	return 0;
}

static int d_spool(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_SPOOL, dir) < 0)
		return -1;
	char *v;
	if (want_value(p, "a spool directory", &v) < 0)
		return -1;
	free(p->c->spool_dir);
	p->c->spool_dir = v;
	return 0;
}

static int d_cores(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_CORES, dir) < 0)
		return -1;
	if (is_kw(p, "auto")) {
		p->c->cores = 0;
		lex(p);
		return 0;
	}
	uint64_t v;
	if (p->tok.type != T_WORD || !parse_decimal(p->tok.text, &v)) {
		perr(p, &p->tok, "expected auto or a number of cores");
		return -1;
	}
	return want_u32(p, "cores", 1, CONF_MAX_CORES, &p->c->cores);
}

static int d_ktls(struct parser *p, const struct token *dir)
{
	/* in enum conf_ktls order */
	static const char *const words[] = {"auto", "on", "off"};
	if (once(p, SEEN_KTLS, dir) < 0)
		return -1;
	int i = one_of(p, words, 3, "expected auto, on or off");
	if (i < 0)
		return -1;
	p->c->ktls = (enum conf_ktls)i;
	return 0;
}

static int d_hostname(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_HOSTNAME, dir) < 0)
		return -1;
	if (is_value(p) && !valid_hostname(p->tok.text)) {
		perr(p, &p->tok, "invalid hostname %s", quote(p->tok.text).s);
		return -1;
	}
	char *v;
	if (want_value(p, "a host name", &v) < 0)
		return -1;
	free(p->c->hostname);
	p->c->hostname = v;
	return 0;
}

/* control socket PATH [max-clients N] [timeout DURATION] */
static int control_option(struct parser *p, struct conf_control *ctl, unsigned *seen)
{
	struct token opt = p->tok;
	unsigned bit = is_kw(p, "max-clients") ? 1u : 2u;
	if (*seen & bit) {
		perr(p, &opt, "duplicate option %s", quote(opt.text).s);
		return -1;
	}
	*seen |= bit;
	lex(p);
	if (bit == 1)
		return want_u32(p, "max-clients", 1, 64, &ctl->max_clients);
	uint32_t ms;
	if (p->tok.type != T_WORD || conf_parse_duration(p->tok.text, &ms) < 0) {
		perr(p, &p->tok, "expected a duration");
		return -1;
	}
	if (ms < 100 || ms > 60 * 60 * 1000) {
		perr(p, &p->tok, "control timeout must be between 100ms and 1h");
		return -1;
	}
	ctl->timeout = ms;
	lex(p);
	return 0;
}

static int d_control(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_CONTROL, dir) < 0)
		return -1;
	struct conf_control *ctl = &p->c->control;
	if (!is_kw(p, "socket")) {
		perr(p, &p->tok, "expected \"socket\"");
		return -1;
	}
	lex(p);
	struct token path_tok = p->tok;
	char *path;
	if (want_value(p, "a socket path", &path) < 0)
		return -1;
	if (strlen(path) > CONF_CONTROL_PATH_MAX) {
		perr(p, &path_tok, "control socket path longer than %u bytes", CONF_CONTROL_PATH_MAX);
		free(path);
		return -1;
	}
	free(ctl->path);
	ctl->path = path;
	ctl->path_default = false;
	ctl->line = dir->line;
	ctl->col = dir->col;
	unsigned seen = 0;
	while (is_kw(p, "max-clients") || is_kw(p, "timeout"))
		if (control_option(p, ctl, &seen) < 0)
			return -1;
	if (!at_end(p) && p->tok.type == T_WORD) {
		perr(p, &p->tok, "unknown control option %s", quote(p->tok.text).s);
		return -1;
	}
	return 0;
}

/* "relay WORD" settings that may be given once: the slot, and a message
 * that names both words. */
static int relay_once(struct parser *p, int slot, const char *what)
{
	if (p->seen[slot]) {
		perr(p, &p->tok, "duplicate \"relay %s\" (first set on line %d)", what, p->seen[slot]);
		return -1;
	}
	p->seen[slot] = p->tok.line;
	lex(p);
	return 0;
}

static int want_duration(struct parser *p, uint32_t *out)
{
	if (p->tok.type != T_WORD || conf_parse_duration(p->tok.text, out) < 0) {
		if (is_value(p))
			perr(p, &p->tok, "invalid duration %s (a number with ms, s, m, h or d)",
			     quote(p->tok.text).s);
		else
			perr(p, &p->tok, "expected a duration");
		return -1;
	}
	if (*out == 0) {
		perr(p, &p->tok, "a duration must be longer than 0");
		return -1;
	}
	lex(p);
	return 0;
}

/* relay retry FIRST..MAX: the first retry's delay and the backoff's cap. */
static int relay_retry(struct parser *p, struct conf_relay *r)
{
	const char *dots = p->tok.type == T_WORD ? strstr(p->tok.text, "..") : NULL;
	if (!dots) {
		perr(p, &p->tok, "expected FIRST..MAX retry delays (e.g. 1m..4h)");
		return -1;
	}
	char first[CONF_TOKEN_MAX + 1];
	snprintf(first, sizeof first, "%.*s", (int)(dots - p->tok.text), p->tok.text);
	uint32_t a, b;
	if (conf_parse_duration(first, &a) < 0 || conf_parse_duration(dots + 2, &b) < 0 ||
	    a == 0 || b == 0) {
		perr(p, &p->tok, "invalid retry delays %s (durations above 0, e.g. 1m..4h)",
		     quote(p->tok.text).s);
		return -1;
	}
	if (a > b) {
		perr(p, &p->tok, "first retry delay longer than the maximum");
		return -1;
	}
	r->retry_first = a;
	r->retry_max = b;
	lex(p);
	return 0;
}

static int relay_timeout(struct parser *p, struct conf_relay *r)
{
	static const struct {
		const char *name;
		int slot;
		size_t off;
	} kinds[] = {
		{"connect", SEEN_RELAY_TIMEOUT_CONNECT, offsetof(struct conf_relay, timeout_connect)},
		{"greeting", SEEN_RELAY_TIMEOUT_GREETING, offsetof(struct conf_relay, timeout_greeting)},
		{"command", SEEN_RELAY_TIMEOUT_COMMAND, offsetof(struct conf_relay, timeout_command)},
		{"data-end", SEEN_RELAY_TIMEOUT_DATA_END, offsetof(struct conf_relay, timeout_data_end)},
	};
	for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
		if (!is_kw(p, kinds[k].name))
			continue;
		char what[32];
		snprintf(what, sizeof what, "timeout %s", kinds[k].name);
		if (relay_once(p, kinds[k].slot, what) < 0)
			return -1;
		return want_duration(p, (uint32_t *)((char *)r + kinds[k].off));
	}
	if (p->tok.type == T_WORD)
		perr(p, &p->tok, "unknown relay timeout %s (connect, greeting, command or data-end)",
		     quote(p->tok.text).s);
	else
		perr(p, &p->tok, "expected a relay timeout name");
	return -1;
}

/* relay lifetime D | retry A..B | connections N | chunk-size SIZE |
 *       helo NAME | ca "FILE" | timeout KIND D */
static int d_relay(struct parser *p, const struct token *dir)
{
	(void)dir;
	struct conf_relay *r = &p->c->relay;
	if (is_kw(p, "lifetime"))
		return relay_once(p, SEEN_RELAY_LIFETIME, "lifetime") < 0 ? -1
		       : want_duration(p, &r->lifetime);
	if (is_kw(p, "retry"))
		return relay_once(p, SEEN_RELAY_RETRY, "retry") < 0 ? -1 : relay_retry(p, r);
	if (is_kw(p, "connections"))
		return relay_once(p, SEEN_RELAY_CONNECTIONS, "connections") < 0
			       ? -1
			       : want_u32(p, "relay connections", 1, 10000, &r->connections);
	if (is_kw(p, "chunk-size")) {
		if (relay_once(p, SEEN_RELAY_CHUNK_SIZE, "chunk-size") < 0 ||
		    want_size(p, "relay chunk-size", 1024, &r->chunk_size) < 0)
			return -1;
		return 0;
	}
	if (is_kw(p, "helo")) {
		if (relay_once(p, SEEN_RELAY_HELO, "helo") < 0)
			return -1;
		if (is_value(p) && !valid_hostname(p->tok.text)) {
			perr(p, &p->tok, "invalid hostname %s", quote(p->tok.text).s);
			return -1;
		}
		free(r->helo);
		r->helo = NULL;
		return want_value(p, "a host name", &r->helo);
	}
	if (is_kw(p, "ca")) {
		if (relay_once(p, SEEN_RELAY_CA, "ca") < 0)
			return -1;
		return want_value(p, "a CA file name", &r->ca);
	}
	if (is_kw(p, "timeout")) {
		lex(p);
		return relay_timeout(p, r);
	}
	if (is_kw(p, "via")) {
		perr(p, &p->tok, "\"relay via\" belongs at the end of an accept rule "
				 "(or \"bounce relay via\" for DSNs)");
		return -1;
	}
	if (p->tok.type == T_WORD)
		perr(p, &p->tok,
		     "unknown relay setting %s (lifetime, retry, connections, chunk-size, helo, ca or timeout)",
		     quote(p->tok.text).s);
	else
		perr(p, &p->tok, "expected a relay setting");
	return -1;
}

/* bounce relay via URL[, URL...] [ca FILE | noverify]: where DSNs go. */
static int d_bounce(struct parser *p, const struct token *dir)
{
	if (once(p, SEEN_BOUNCE, dir) < 0)
		return -1;
	if (!is_kw(p, "relay")) {
		perr(p, &p->tok, "expected \"relay\" after \"bounce\"");
		return -1;
	}
	struct token relay_tok = p->tok;
	lex(p);
	struct conf_route *r = &p->c->relay.bounce;
	if (want_route(p, &relay_tok, r) < 0) {
		route_free(r);
		return -1;
	}
	return 0;
}

static const struct directive {
	const char *name;
	int (*fn)(struct parser *p, const struct token *dir);
} directives[] = {
	{"pki", d_pki},
	{"table", d_table},
	{"listen", d_listen},
	{"accept", d_accept},
	{"max-message-size", d_max_message_size},
	{"max-recipients", d_max_recipients},
	{"max-connections", d_max_connections},
	{"max-connections-per-client", d_max_connections_per_client},
	{"max-errors", d_max_errors},
	{"max-line-length", d_max_line_length},
	{"bare-newlines", d_bare_newlines},
	{"timeout", d_timeout},
	{"spool", d_spool},
	{"cores", d_cores},
	{"hostname", d_hostname},
	{"segment-size", d_segment_size},
	{"ktls", d_ktls},
	{"greeting-delay", d_greeting_delay},
	{"min-data-rate", d_min_data_rate},
	{"metrics", d_metrics},
	{"control", d_control},
	{"relay", d_relay},
	{"bounce", d_bounce},
};

static int statement(struct parser *p)
{
	struct token dir = p->tok;
	if (dir.type != T_WORD) {
		perr(p, &dir, "expected a directive, got %s", tok_desc(&dir).s);
		return -1;
	}
	for (size_t i = 0; i < sizeof directives / sizeof directives[0]; i++) {
		if (strcmp(dir.text, directives[i].name) != 0)
			continue;
		lex(p);
		if (directives[i].fn(p, &dir) < 0)
			return -1;
		if (!at_end(p)) {
			perr(p, &p->tok, "unexpected %s", tok_desc(&p->tok).s);
			return -1;
		}
		return 0;
	}
	perr(p, &dir, "unknown directive %s", quote(dir.text).s);
	return -1;
}

/* Checks that need the whole file: a pki split over lines is complete
 * only at the end. */
static void finish(struct parser *p)
{
	struct conf *c = p->c;
	for (size_t i = 0; i < c->npkis; i++) {
		const struct conf_pki *k = &c->pkis[i];
		if (p->pki_bad[i])
			continue;
		if (!k->cert)
			perr_at(p, k->line, k->col, "pki %s has no cert", quote(k->name).s);
		if (!k->key)
			perr_at(p, k->line, k->col, "pki %s has no key", quote(k->name).s);
	}
	if (!c->hostname) {
		char host[256] = "";
		if (gethostname(host, sizeof host - 1) < 0 || !valid_hostname(host))
			snprintf(host, sizeof host, "localhost");
		c->hostname = pstrdup(p, host);
	}
	if (!c->spool_dir)
		c->spool_dir = pstrdup(p, "var/spool");
	if (!c->relay.helo && c->hostname)
		c->relay.helo = pstrdup(p, c->hostname);
	if (!c->control.path && c->spool_dir) {
		/* next to the spool: one socket per instance, in a 0700 directory.
		 * A path too long for sun_path is left to the daemon to report. */
		struct buf b;
		buf_init(&b, 0);
		if (buf_printf(&b, "%s/%s", c->spool_dir, CONF_CONTROL_SOCKET_NAME) == 0 &&
		    buf_append(&b, "", 1) == 0) {
			c->control.path = pstrdup(p, b.data);
			c->control.path_default = true;
		} else {
			oom(p);
		}
		buf_free(&b);
	}
	if (!c->path)
		c->path = pstrdup(p, p->name);
}

static void conf_defaults(struct conf *c)
{
	c->max_message_size = CONF_DEFAULT_MAX_MESSAGE_SIZE;
	c->max_recipients = CONF_DEFAULT_MAX_RECIPIENTS;
	c->max_connections = CONF_DEFAULT_MAX_CONNECTIONS;
	c->max_connections_per_client = CONF_DEFAULT_MAX_CONNECTIONS_PER_CLIENT;
	c->max_errors = CONF_DEFAULT_MAX_ERRORS;
	c->max_line_length = CONF_DEFAULT_MAX_LINE_LENGTH;
	c->min_data_rate = CONF_DEFAULT_MIN_DATA_RATE;
	c->accept_bare_newlines = false;
	c->timeouts.greeting = 5 * 60 * 1000;
	c->timeouts.command = 5 * 60 * 1000;
	c->timeouts.data_init = 2 * 60 * 1000;
	c->timeouts.data_block = 3 * 60 * 1000;
	c->timeouts.data_term = 10 * 60 * 1000;
	c->timeouts.drain = 30 * 1000;
	c->timeouts.upgrade = 60 * 1000;
	c->cores = 0;
	c->control.max_clients = CONF_DEFAULT_CONTROL_MAX_CLIENTS;
	c->control.timeout = CONF_DEFAULT_CONTROL_TIMEOUT;
	c->segment_size = CONF_DEFAULT_SEGMENT_SIZE;
	c->ktls = CONF_KTLS_AUTO;
	c->relay.lifetime = CONF_DEFAULT_RELAY_LIFETIME;
	c->relay.retry_first = CONF_DEFAULT_RELAY_RETRY_FIRST;
	c->relay.retry_max = CONF_DEFAULT_RELAY_RETRY_MAX;
	c->relay.connections = CONF_DEFAULT_RELAY_CONNECTIONS;
	c->relay.chunk_size = CONF_DEFAULT_RELAY_CHUNK_SIZE;
	c->relay.timeout_connect = CONF_DEFAULT_RELAY_TIMEOUT_CONNECT;
	c->relay.timeout_greeting = CONF_DEFAULT_RELAY_TIMEOUT_GREETING;
	c->relay.timeout_command = CONF_DEFAULT_RELAY_TIMEOUT_COMMAND;
	c->relay.timeout_data_end = CONF_DEFAULT_RELAY_TIMEOUT_DATA_END;
}

struct conf *conf_parse(const char *name, const char *text, size_t len, struct buf *errs)
{
	assert(text || len == 0);
	struct parser *p = calloc(1, sizeof *p);
	struct conf *c = calloc(1, sizeof *c);
	if (!p || !c) {
		if (errs)
			buf_printf(errs, "%s:1:1: out of memory\n", name ? name : "(config)");
		free(p);
		free(c);
		return NULL;
	}
	p->name = name ? name : "(config)";
	p->s = text ? text : "";
	p->len = len;
	p->line = 1;
	p->errs = errs;
	p->c = c;
	conf_defaults(c);

	lex(p);
	while (p->tok.type != T_EOF && !p->gave_up) {
		if (p->tok.type == T_NL) {
			lex(p);
			continue;
		}
		if (statement(p) < 0)
			skip_statement(p);
	}
	if (!p->gave_up)
		finish(p);
	bool ok = p->nerrors == 0 && !p->oom;
	free(p->pki_bad);
	free(p->addr_checked);
	free(p);
	if (!ok) {
		conf_free(c);
		return NULL;
	}
	return c;
}

struct conf *conf_load(const char *path, struct buf *errs)
{
	char *data;
	size_t len;
	int err = 0;
	bool too_large;
	if (read_regular_file(path, CONF_FILE_MAX, &data, &len, &err, &too_large) < 0) {
		if (errs) {
			if (too_large)
				buf_printf(errs, "%s: cannot read config: larger than %u bytes\n",
					   path, CONF_FILE_MAX);
			else
				buf_printf(errs, "%s: cannot read config: %s\n", path,
					   err == EINVAL ? "not a regular file" : strerror(err));
		}
		return NULL;
	}
	struct conf *c = conf_parse(path, data, len, errs);
	free(data);
	return c;
}

void conf_free(struct conf *c)
{
	if (!c)
		return;
	free(c->path);
	free(c->hostname);
	for (size_t i = 0; i < c->nlisteners; i++)
		listener_free(&c->listeners[i]);
	free(c->listeners);
	listener_free(&c->metrics);
	free(c->control.path);
	route_free(&c->relay.bounce);
	free(c->relay.helo);
	free(c->relay.ca);
	for (size_t i = 0; i < c->npkis; i++) {
		free(c->pkis[i].name);
		free(c->pkis[i].cert);
		free(c->pkis[i].key);
		free(c->pkis[i].ca);
	}
	free(c->pkis);
	for (size_t i = 0; i < c->ntables; i++) {
		struct conf_table *t = &c->tables[i];
		for (size_t j = 0; j < t->n; j++) {
			free(t->keys[j]);
			free(t->values[j]);
		}
		free(t->keys);
		free(t->values);
		free(t->entry_line);
		free(t->entry_col);
		free(t->name);
		free(t->path);
	}
	free(c->tables);
	for (size_t i = 0; i < c->nrules; i++)
		rule_free(&c->rules[i]);
	free(c->rules);
	free(c->spool_dir);
	free(c);
}

/* ------------------------------------------------------- sizes & times */

int conf_parse_size(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	const char *q = s;
	if (*q < '0' || *q > '9')
		return -1;
	for (; *q >= '0' && *q <= '9'; q++) {
		unsigned d = (unsigned)(*q - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	unsigned shift = 0;
	switch (*q) {
	case '\0': break;
	case 'k': case 'K': shift = 10; q++; break;
	case 'm': case 'M': shift = 20; q++; break;
	case 'g': case 'G': shift = 30; q++; break;
	case 't': case 'T': shift = 40; q++; break;
	default: return -1;
	}
	if (*q)
		return -1;
	if (shift && v > (UINT64_MAX >> shift))
		return -1;
	*out = v << shift;
	return 0;
}

int conf_parse_duration(const char *s, uint32_t *out_ms)
{
	uint64_t v = 0;
	const char *q = s;
	if (*q < '0' || *q > '9')
		return -1;
	for (; *q >= '0' && *q <= '9'; q++) {
		v = v * 10 + (unsigned)(*q - '0');
		if (v > UINT32_MAX)
			return -1;
	}
	uint64_t mult;
	if (strcmp(q, "ms") == 0)
		mult = 1;
	else if (strcmp(q, "s") == 0 || *q == '\0')
		mult = 1000;
	else if (strcmp(q, "m") == 0)
		mult = 60 * 1000;
	else if (strcmp(q, "h") == 0)
		mult = 60 * 60 * 1000;
	else if (strcmp(q, "d") == 0)
		mult = 24 * 60 * 60 * 1000;
	else
		return -1;
	v *= mult; /* both factors fit 32 bits: no 64-bit overflow */
	if (v > UINT32_MAX)
		return -1;
	*out_ms = (uint32_t)v;
	return 0;
}

/* Entries shown by conf_proxy_from_describe before "and N more". */
#define PROXY_FROM_SHOWN 8

void conf_proxy_from_describe(const struct conf *c, const struct conf_listener *l,
			      struct buf *out)
{
	switch (l->proxy_from) {
	case CONF_PROXY_FROM_ANY:
		buf_append_str(out, "any peer (proxy-from any)");
		return;
	case CONF_PROXY_FROM_LOCAL:
		buf_append_str(out, "the loopback only (127.0.0.0/8, ::1)");
		return;
	case CONF_PROXY_FROM_TABLE:
		break;
	}
	const struct conf_table *t = l->proxy_from_table ? conf_table_find(c, l->proxy_from_table)
							 : NULL;
	if (!t) {
		buf_append_str(out, "no peer");
		return;
	}
	if (strncmp(t->name, "proxy-from:", 11) != 0)
		buf_printf(out, "<%s> ", t->name);
	buf_append_str(out, "(");
	for (size_t i = 0; i < t->n && i < PROXY_FROM_SHOWN; i++)
		buf_printf(out, "%s%s", i ? ", " : "", t->keys[i]);
	if (t->n > PROXY_FROM_SHOWN)
		buf_printf(out, " and %zu more", t->n - PROXY_FROM_SHOWN);
	buf_append_str(out, ")");
}
