/* test_dsn: the DSN generator's structure, its choices (who gets one,
 * headers or the whole message), and that no input can break its lines.
 *
 * Run with a directory argument, it also writes sample DSNs there as
 * NAME.eml for tests/unit/dsn_email_check.py, which parses them with
 * Python's email package (ctest runs both). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsn.h"
#include "check.h"

#define T_ARRIVAL 1796000000  /* Mon, 30 Nov 2026 00:53:20 +0000 */
#define T_NOW (T_ARRIVAL + 3600)

static const char original[] =
	"Received: from c.test ([192.0.2.1])\r\n\tby mx.test (mxd) with ESMTP id 0000000100000040;\r\n"
	"\tSun, 29 Nov 2026 00:49:31 +0000\r\n"
	"From: Alice <alice@x.test>\r\n"
	"To: bob@y.test\r\n"
	"Subject: lunch?\r\n"
	"Message-ID: <orig-1@x.test>\r\n"
	"\r\n"
	"Shall we have lunch?\r\n"
	"-- \r\nAlice\r\n";

static struct dsn_rcpt rcpt_failed(void)
{
	return (struct dsn_rcpt){
		.addr = "bob@y.test", .addr_len = 10,
		.orcpt = "rfc822;bob+2Bextra+3D1@y.test", .orcpt_len = 29,
		.action = DSN_ACTION_FAILED, .code = 550, .status = "5.1.1",
		.diagnostic = "<bob@y.test>: Recipient address rejected: User unknown",
		.diagnostic_len = 54,
		.remote_mta = "mx2.y.test", .remote_mta_len = 10,
		.last_attempt = T_NOW - 60,
	};
}

static struct dsn_message message_for(const struct dsn_rcpt *rcpts, uint32_t n)
{
	return (struct dsn_message){
		.reporting_mta = "mx.test",
		.mail_from = "alice@x.test", .mail_from_len = 12,
		.envid = "QQ+3D1", .envid_len = 6,
		.arrival = T_ARRIVAL, .now = T_NOW, .id = "0000000100000040.1796003600",
		.original = original, .original_len = sizeof original - 1,
		.rcpts = rcpts, .nrcpt = n,
	};
}

/* Every line ends in CRLF, holds no other CR or LF, and has at most 998
 * octets before its CRLF. */
static bool lines_ok(const char *p, size_t n, size_t *longest)
{
	size_t col = 0;
	*longest = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\r') {
			if (i + 1 >= n || p[i + 1] != '\n')
				return false;
			i++;
			col = 0;
			continue;
		}
		if (p[i] == '\n')
			return false;
		if (++col > *longest)
			*longest = col;
	}
	return n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n' && *longest <= 998;
}

static bool has(const struct buf *b, const char *s)
{
	return check_contains(b->data, b->len, s);
}

static void test_wanted(void)
{
	CHECK(!dsn_wanted(0, 0, DSN_ACTION_FAILED));                 /* null sender */
	CHECK(dsn_wanted(3, 0, DSN_ACTION_FAILED));                  /* absent: failure */
	CHECK(!dsn_wanted(3, 0, DSN_ACTION_DELAYED));                /* absent: no delay notice */
	CHECK(!dsn_wanted(3, SMTP_NOTIFY_NEVER, DSN_ACTION_FAILED));
	CHECK(dsn_wanted(3, SMTP_NOTIFY_FAILURE, DSN_ACTION_FAILED));
	CHECK(!dsn_wanted(3, SMTP_NOTIFY_SUCCESS, DSN_ACTION_FAILED));
	CHECK(!dsn_wanted(3, SMTP_NOTIFY_FAILURE, DSN_ACTION_DELAYED));
	CHECK(dsn_wanted(3, SMTP_NOTIFY_DELAY | SMTP_NOTIFY_FAILURE, DSN_ACTION_DELAYED));
}

static void test_date(void)
{
	char d[40];
	dsn_date(d, sizeof d, 0);
	CHECK_STR_EQ(d, "Thu, 01 Jan 1970 00:00:00 +0000");
	dsn_date(d, sizeof d, 1796003600);
	CHECK_STR_EQ(d, "Mon, 30 Nov 2026 01:53:20 +0000");
}

static void test_none_due(void)
{
	struct dsn_rcpt r = rcpt_failed();
	struct dsn_message m = message_for(&r, 1);
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	m.mail_from = "";
	m.mail_from_len = 0;
	CHECK(dsn_build(&out, &m, &res) == 0 && res.reported == 0 && out.len == 0);
	m = message_for(&r, 1);
	r.notify = SMTP_NOTIFY_NEVER;
	CHECK(dsn_build(&out, &m, &res) == 0 && res.reported == 0 && out.len == 0);
	buf_free(&out);
}

/* The shape: headers, three parts in order, the fields of each. */
static void test_structure(void)
{
	struct dsn_rcpt r[3] = { rcpt_failed(), rcpt_failed(), rcpt_failed() };
	r[1] = (struct dsn_rcpt){ .addr = "carol@y.test", .addr_len = 12,
				  .action = DSN_ACTION_FAILED, .code = 552, .status = "5.3.4",
				  .diagnostic = "message size 2000 exceeds the next hop's limit of 1000",
				  .diagnostic_len = 54 };
	r[2].notify = SMTP_NOTIFY_NEVER; /* left out */
	struct dsn_message m = message_for(r, 3);
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	CHECK(dsn_build(&out, &m, &res) == 0);
	CHECK(res.reported == 2 && !res.eightbit && !res.full);
	size_t longest;
	CHECK(lines_ok(out.data, out.len, &longest));
	CHECK(longest <= 78);
	buf_append(&out, "", 1);
	out.len--;
	const char *want_order[] = {
		"Date: Mon, 30 Nov 2026 01:53:20 +0000\r\n",
		"From: Mail Delivery System <MAILER-DAEMON@mx.test>\r\n",
		"To: <alice@x.test>\r\n",
		"Subject: Undelivered Mail Returned to Sender\r\n",
		"Message-ID: <0000000100000040.1796003600.dsn@mx.test>\r\n",
		"Auto-Submitted: auto-replied\r\n",
		"MIME-Version: 1.0\r\n",
		"Content-Type: multipart/report; report-type=delivery-status;\r\n"
		"\tboundary=\"=_mxd_0000000100000040.1796003600_0\"\r\n",
		"Content-Transfer-Encoding: 7bit\r\n\r\n",
		"--=_mxd_0000000100000040.1796003600_0\r\n",
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
		"<bob@y.test>: failed\r\n    mx2.y.test said: 550 5.1.1 <bob@y.test>: Recipient",
		"<carol@y.test>: failed\r\n    mx.test said: 552 5.3.4 message size 2000",
		"--=_mxd_0000000100000040.1796003600_0\r\n"
		"Content-Description: Delivery report\r\n"
		"Content-Type: message/delivery-status\r\n\r\n"
		"Reporting-MTA: dns; mx.test\r\n"
		"Original-Envelope-Id: QQ=1\r\n"
		"Arrival-Date: Mon, 30 Nov 2026 00:53:20 +0000\r\n"
		"\r\n"
		"Original-Recipient: rfc822;bob+extra=1@y.test\r\n"
		"Final-Recipient: rfc822; bob@y.test\r\n"
		"Action: failed\r\n"
		"Status: 5.1.1\r\n"
		"Remote-MTA: dns; mx2.y.test\r\n"
		"Diagnostic-Code: smtp; 550 5.1.1 <bob@y.test>: Recipient address rejected:\r\n"
		"\tUser unknown\r\n"
		"Last-Attempt-Date: Mon, 30 Nov 2026 01:52:20 +0000\r\n"
		"\r\n"
		"Final-Recipient: rfc822; carol@y.test\r\n"
		"Action: failed\r\n"
		"Status: 5.3.4\r\n"
		"Diagnostic-Code: smtp; 552 5.3.4 message size 2000 exceeds the next hop's\r\n"
		"\tlimit of 1000\r\n"
		"\r\n",
		"--=_mxd_0000000100000040.1796003600_0\r\n"
		"Content-Description: Undelivered Message Headers\r\n"
		"Content-Type: text/rfc822-headers\r\n\r\n"
		"Received: from c.test ([192.0.2.1])\r\n",
		"Message-ID: <orig-1@x.test>\r\n\r\n--=_mxd_0000000100000040.1796003600_0--\r\n",
	};
	const char *at = out.data;
	for (size_t i = 0; i < sizeof want_order / sizeof want_order[0]; i++) {
		const char *hit = strstr(at, want_order[i]);
		if (!hit)
			fprintf(stderr, "test_structure: missing (in order) #%zu: %s\n", i, want_order[i]);
		CHECK(hit != NULL);
		if (hit)
			at = hit + strlen(want_order[i]);
	}
	CHECK(!has(&out, "Shall we have lunch")); /* headers only by default */
	CHECK(memcmp(out.data + out.len - 2, "\r\n", 2) == 0);
	buf_free(&out);
}

static void test_ret_full(void)
{
	struct dsn_rcpt r = rcpt_failed();
	struct dsn_message m = message_for(&r, 1);
	m.ret = SMTP_RET_FULL;
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	CHECK(dsn_build(&out, &m, &res) == 0 && res.full);
	CHECK(has(&out, "Content-Type: message/rfc822\r\n\r\nReceived:"));
	CHECK(has(&out, "Shall we have lunch?\r\n-- \r\nAlice\r\n"));
	CHECK(!has(&out, "(RET=FULL)"));

	/* Over the bound: headers, and the notice says why. */
	buf_reset(&out);
	m.full_max = 100;
	CHECK(dsn_build(&out, &m, &res) == 0 && !res.full);
	CHECK(has(&out, "Content-Type: text/rfc822-headers"));
	CHECK(!has(&out, "Shall we have lunch"));
	CHECK(has(&out, "(RET=FULL)"));

	/* A NUL cannot travel in message/rfc822: headers. */
	char bin[] = "Subject: x\r\n\r\nab\0cd\r\n";
	buf_reset(&out);
	m.full_max = 0;
	m.original = bin;
	m.original_len = sizeof bin - 1;
	CHECK(dsn_build(&out, &m, &res) == 0 && !res.full);
	CHECK(has(&out, "Content-Type: text/rfc822-headers\r\n\r\nSubject: x\r\n\r\n--"));
	buf_free(&out);
}

static void test_delayed(void)
{
	struct dsn_rcpt r = rcpt_failed();
	r.action = DSN_ACTION_DELAYED;
	r.code = 451;
	r.status = NULL;
	r.notify = SMTP_NOTIFY_DELAY;
	r.retry_until = T_ARRIVAL + 5 * 86400;
	struct dsn_message m = message_for(&r, 1);
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	CHECK(dsn_build(&out, &m, &res) == 0 && res.reported == 1);
	CHECK(has(&out, "Subject: Delayed Mail (still being retried)\r\n"));
	CHECK(has(&out, "Action: delayed\r\nStatus: 4.0.0\r\n"));
	CHECK(has(&out, "Will-Retry-Until: Sat, 05 Dec 2026 00:53:20 +0000\r\n"));
	buf_free(&out);
}

/* What a next hop or a sender controls cannot add a line, a header or a
 * boundary, and no line passes 998 octets. */
static void test_hostile(void)
{
	static char long_diag[3000];
	memset(long_diag, 'x', sizeof long_diag);
	for (size_t i = 50; i < sizeof long_diag; i += 97)
		long_diag[i] = ' ';
	memcpy(long_diag + 10, "\r\nX-Forged: yes\r\n", 17);
	static char long_word[1500];
	memset(long_word, 'w', sizeof long_word);
	char orig[200];
	int on = snprintf(orig, sizeof orig,
			  "Subject: x\r\n\r\n--=_mxd_ID_0\r\nbody\r\n");
	struct dsn_rcpt r[2] = { rcpt_failed(), rcpt_failed() };
	r[0].diagnostic = long_diag;
	r[0].diagnostic_len = sizeof long_diag;
	r[1].addr = long_word;
	r[1].addr_len = sizeof long_word;
	r[1].remote_mta = long_word;
	r[1].remote_mta_len = sizeof long_word;
	r[1].diagnostic = long_word;
	r[1].diagnostic_len = sizeof long_word;
	struct dsn_message m = message_for(r, 2);
	m.id = "ID";
	m.original = orig;
	m.original_len = (size_t)on;
	m.ret = SMTP_RET_FULL;
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	CHECK(dsn_build(&out, &m, &res) == 0);
	size_t longest;
	CHECK(lines_ok(out.data, out.len, &longest));
	CHECK(!has(&out, "\r\nX-Forged"));
	CHECK(has(&out, "boundary=\"=_mxd_ID_1\""));
	CHECK(has(&out, "\r\n--=_mxd_ID_1--\r\n"));

	/* The buffer's limit: -1 and nothing left behind. */
	struct buf small;
	buf_init(&small, 500);
	buf_append_str(&small, "keep");
	CHECK(dsn_build(&small, &m, &res) == -1 && small.len == 4);
	buf_free(&small);
	buf_free(&out);
}

static void test_utf8(void)
{
	struct dsn_rcpt r = rcpt_failed();
	r.addr = "j\xc3\xb6rg@y.test";
	r.addr_len = strlen(r.addr);
	r.orcpt = NULL;
	struct dsn_message m = message_for(&r, 1);
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	CHECK(dsn_build(&out, &m, &res) == 0 && res.eightbit);
	CHECK(has(&out, "Content-Transfer-Encoding: 8bit\r\n"));
	CHECK(has(&out, "Content-Type: message/global-delivery-status\r\n"));
	CHECK(has(&out, "Final-Recipient: utf-8; j\xc3\xb6rg@y.test\r\n"));
	buf_free(&out);
}

/* The 8bit labels follow what is written, not what was given: an ORCPT
 * too long to report (RFC 3461 4.2: 500 octets) takes its octets with it
 * (found by fuzz_dsn). */
static void test_labels_follow_content(void)
{
	static char orcpt[600];
	memcpy(orcpt, "rfc822;", 7);
	memset(orcpt + 7, '\xc3', sizeof orcpt - 7);
	struct dsn_rcpt r = rcpt_failed();
	r.orcpt = orcpt;
	r.orcpt_len = sizeof orcpt;
	struct dsn_message m = message_for(&r, 1);
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	CHECK(dsn_build(&out, &m, &res) == 0 && !res.eightbit);
	CHECK(has(&out, "Content-Transfer-Encoding: 7bit\r\n"));
	CHECK(has(&out, "Content-Type: message/delivery-status\r\n"));
	CHECK(!has(&out, "Original-Recipient"));
	for (size_t i = 0; i < out.len; i++)
		if ((unsigned char)out.data[i] >= 0x80) {
			CHECK(!"an octet over 127 in a 7bit DSN");
			break;
		}
	buf_free(&out);
}

/* ---------------------------------------------------- samples for Python */

static void write_sample(const char *dir, const char *name, const struct dsn_message *m)
{
	struct buf out;
	buf_init(&out, 0);
	struct dsn_result res;
	if (dsn_build(&out, m, &res) != 0 || res.reported == 0) {
		fprintf(stderr, "sample %s: no DSN\n", name);
		exit(1);
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/%s.eml", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(out.data, 1, out.len, f) != out.len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
	buf_free(&out);
}

static int write_samples(const char *dir)
{
	struct dsn_rcpt r[2] = { rcpt_failed(), rcpt_failed() };
	r[1] = (struct dsn_rcpt){ .addr = "carol@y.test", .addr_len = 12,
				  .action = DSN_ACTION_FAILED, .code = 552, .status = "5.3.4",
				  .diagnostic = "message too big", .diagnostic_len = 15 };
	struct dsn_message m = message_for(r, 2);
	write_sample(dir, "failed_headers", &m);

	m.ret = SMTP_RET_FULL;
	write_sample(dir, "failed_full", &m);

	struct dsn_rcpt d = rcpt_failed();
	d.action = DSN_ACTION_DELAYED;
	d.notify = SMTP_NOTIFY_DELAY;
	d.code = 451;
	d.status = "4.4.1";
	d.diagnostic = "connection refused";
	d.diagnostic_len = 18;
	d.retry_until = T_ARRIVAL + 5 * 86400;
	m = message_for(&d, 1);
	m.envid = NULL;
	m.envid_len = 0;
	write_sample(dir, "delayed", &m);

	static char long_diag[3000];
	for (size_t i = 0; i < sizeof long_diag; i++)
		long_diag[i] = (char)('a' + i % 7);
	for (size_t i = 6; i < sizeof long_diag; i += 7)
		long_diag[i] = ' ';
	struct dsn_rcpt l = rcpt_failed();
	l.diagnostic = long_diag;
	l.diagnostic_len = sizeof long_diag;
	m = message_for(&l, 1);
	write_sample(dir, "long_diagnostic", &m);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2)
		return write_samples(argv[1]);
	test_wanted();
	test_date();
	test_none_due();
	test_structure();
	test_ret_full();
	test_delayed();
	test_hostile();
	test_utf8();
	test_labels_follow_content();
	return check_report("test_dsn");
}
