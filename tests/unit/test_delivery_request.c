/* test_delivery_request: operator request files — the format, what a
 * request changes in the delivery state, and writing and taking them. */
#include "check.h"
#include "delivery_request.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse(const char *s, struct dlv_request *q, const char **why)
{
	*why = NULL;
	return dlv_request_parse(s, strlen(s), q, why);
}

static void test_format(void)
{
	struct dlv_request q;
	const char *why;
	CHECK(parse("mxd-request 1\nretry 0a000012000001c0\n", &q, &why) == 0);
	CHECK(q.kind == DLV_REQ_RETRY && q.core == 10 && q.seq24 == 0x12 && q.offset == 0x1c0);
	CHECK_STR_EQ(q.id, "0A000012000001C0");
	char text[DLV_REQUEST_MAX];
	size_t n = dlv_request_format(text, sizeof text, &q);
	CHECK(n == strlen("mxd-request 1\nretry 0A000012000001C0\n"));
	CHECK(memcmp(text, "mxd-request 1\nretry 0A000012000001C0\n", n) == 0);
	CHECK(parse("mxd-request 1\ndrop FFFFFFFFFFFFFFFF\n", &q, &why) == 0);
	CHECK(q.kind == DLV_REQ_DROP && q.core == 255 && q.seq24 == 0xffffff && q.offset == UINT32_MAX);
	n = dlv_request_format(text, sizeof text, &q);
	CHECK(n > 0 && memcmp(text + 14, "drop FFFF", 9) == 0);
	CHECK(dlv_request_format(text, 20, &q) == 0);

	static const struct {
		const char *text, *why;
	} bad[] = {
		{"", "not a request file (expected \"mxd-request 1\")"},
		{"mxd-request 2\nretry 0000000100000040\n", "not a request file (expected \"mxd-request 1\")"},
		{"mxd-request 1\nresend 0000000100000040\n", "unknown request (expected retry or drop)"},
		{"mxd-request 1\nretry\n", "unknown request (expected retry or drop)"},
		{"mxd-request 1\nretry 0000000100000040", "expected a message id and a line end"},
		{"mxd-request 1\nretry 000000010000004\n", "expected a message id and a line end"},
		{"mxd-request 1\nretry 0000000100000040\n\n", "expected a message id and a line end"},
		{"mxd-request 1\nretry 00000001000000G0\n", "bad message id"},
		{"mxd-request 1\ndrop  0000000100000040\n", "expected a message id and a line end"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK(parse(bad[i].text, &q, &why) == -1);
		CHECK_STR_EQ(why, bad[i].why);
	}
	char big[DLV_REQUEST_MAX + 2];
	memset(big, 'x', sizeof big);
	CHECK(dlv_request_parse(big, sizeof big, &q, &why) == -1);
	CHECK_STR_EQ(why, "request file too long");
	CHECK(!dlv_id_parse("0000000100000040", 15, &q));
	CHECK(dlv_id_parse("0000000100000040", 16, &q) && q.offset == 0x40 && q.seq24 == 1);
}

static void test_records(void)
{
	/* one message, five recipients in five states, by hand */
	struct dlv_rcpt rc[5];
	memset(rc, 0, sizeof rc);
	rc[0].outcome = DLV_QUEUED;
	rc[1].outcome = DLV_DEFERRED;
	rc[1].attempts = 4;
	rc[2].outcome = DLV_DELIVERED;
	rc[3].outcome = DLV_FAILED; /* DSN due: not finished */
	rc[4].outcome = DLV_BOUNCED;
	struct dlv_message m = {.offset = 64, .nrcpt = 5, .first = 0};
	struct dlv_replay r = {.msgs = &m, .nmsgs = 1, .rcpts = rc, .nrcpts = 5};
	struct dlv_record out[8];
	struct dlv_request q = {.kind = DLV_REQ_RETRY};
	size_t n = dlv_request_records(&r, &m, &q, 5000, out, 8);
	CHECK(n == 2);
	CHECK(out[0].rcpt == 0 && out[0].outcome == DLV_DEFERRED && out[0].next_try == 5000);
	CHECK(out[1].rcpt == 1 && out[1].attempts == 4 && out[1].msg_offset == 64);
	CHECK(out[1].at == 5000 && out[1].text_len > 0);
	q.kind = DLV_REQ_DROP;
	n = dlv_request_records(&r, &m, &q, 5000, out, 8);
	CHECK(n == 3);
	CHECK(out[0].rcpt == 0 && out[1].rcpt == 1 && out[2].rcpt == 3);
	CHECK(out[2].outcome == DLV_DROPPED && out[2].next_try == 0);
	CHECK(dlv_request_records(&r, &m, &q, 5000, out, 2) == 2); /* bounded by cap */
	/* applied, the message is finished, and a second drop changes nothing */
	for (size_t i = 0; i < n; i++)
		rc[out[i].rcpt].outcome = out[i].outcome;
	CHECK(dlv_message_finished(&r, &m));
	CHECK(dlv_request_records(&r, &m, &q, 5001, out, 8) == 0);
	q.kind = DLV_REQ_RETRY;
	CHECK(dlv_request_records(&r, &m, &q, 5001, out, 8) == 0);
	/* the records encode */
	uint8_t b[DLV_RECORD_MAX];
	rc[0].outcome = DLV_QUEUED;
	n = dlv_request_records(&r, &m, &q, 5002, out, 8);
	CHECK(n == 1 && dlv_record_encode(b, sizeof b, &out[0]) > 0);
}

struct taken {
	int calls;
	int keep; /* return non-zero for this call index */
	char ids[8][SPOOL_ID_LEN + 1];
	enum dlv_request_kind kinds[8];
};

static int take(void *ctx, const struct dlv_request *q)
{
	struct taken *t = ctx;
	int i = t->calls++;
	if (i < 8) {
		memcpy(t->ids[i], q->id, sizeof t->ids[i]);
		t->kinds[i] = q->kind;
	}
	return i == t->keep;
}

static int count_files(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name), s = strlen(suffix);
		n += l > s && strcmp(de->d_name + l - s, suffix) == 0;
	}
	closedir(d);
	return n;
}

static void test_files(void)
{
	char spool[] = "/tmp/test_dlvreq.XXXXXX";
	CHECK(mkdtemp(spool) != NULL);
	char core_dir[256], req_dir[300];
	snprintf(core_dir, sizeof core_dir, "%s/03", spool);
	snprintf(req_dir, sizeof req_dir, "%s/requests", core_dir);
	struct buf log;
	buf_init(&log, 0);
	struct dlv_request q;
	const char *what = NULL;

	/* no core directory: refused, nothing created */
	CHECK(dlv_id_parse("0300000100000040", 16, &q));
	q.kind = DLV_REQ_RETRY;
	CHECK(dlv_request_write(spool, &q, &what) == -1 && what != NULL);
	/* nothing to take yet */
	struct taken t = {.keep = -1};
	CHECK(dlv_requests_take(core_dir, take, &t, &log) == 0 && t.calls == 0);

	CHECK(mkdir(core_dir, 0700) == 0);
	CHECK(dlv_request_write(spool, &q, &what) == 0);
	q.kind = DLV_REQ_DROP;
	CHECK(dlv_id_parse("0300000100000099", 16, &q));
	CHECK(dlv_request_write(spool, &q, &what) == 0);
	CHECK(count_files(req_dir, ".req") == 2 && count_files(req_dir, ".tmp") == 0);
	/* a temporary file (a writer that died before its rename), and junk */
	char path[400];
	snprintf(path, sizeof path, "%s/.00000000000000000001.1.0.tmp", req_dir);
	FILE *f = fopen(path, "w");
	fputs("mxd-request 1\nretry 0300000100000040\n", f);
	fclose(f);
	snprintf(path, sizeof path, "%s/00000000000000000002.1.0.req", req_dir);
	f = fopen(path, "w");
	fputs("hello\n", f);
	fclose(f);

	/* taken in order; the junk renamed aside; the one kept stays */
	t = (struct taken){.keep = 1};
	CHECK(dlv_requests_take(core_dir, take, &t, &log) == 1);
	CHECK(t.calls == 2);
	CHECK_STR_EQ(t.ids[0], "0300000100000040");
	CHECK(t.kinds[0] == DLV_REQ_RETRY && t.kinds[1] == DLV_REQ_DROP);
	CHECK(count_files(req_dir, ".req") == 1 && count_files(req_dir, ".bad") == 1);
	CHECK(count_files(req_dir, ".tmp") == 1);
	CHECK(check_contains(log.data, log.len, "not a request file"));
	t = (struct taken){.keep = -1};
	CHECK(dlv_requests_take(core_dir, take, &t, &log) == 1 && t.calls == 1);
	CHECK_STR_EQ(t.ids[0], "0300000100000099");
	CHECK(count_files(req_dir, ".req") == 0);

	buf_free(&log);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", spool);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	test_format();
	test_records();
	test_files();
	return check_report("test_delivery_request");
}
