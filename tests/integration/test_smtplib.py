"""Python smtplib and hand-written raw SMTP against a real mxd.

Every check compares exact bytes: what the client put on the wire (before
dot-stuffing) must be what the spool holds after mxd's Received: header.
"""

import os
import random
import smtplib
import socket
import unittest

from mxharness import (CRLF, MxdTestCase, RawSmtp, dot_stuff, mxspool, queued_id, smtplib_expected,
                       spool_list_lines, split_received, strip_received)


def smtplib_send(s, mail_from, rcpts, msg, mail_options=()):
    """One transaction through smtplib's own commands; returns the queue id
    from the 250 reply to the end of data."""
    code, resp = s.mail(mail_from, list(mail_options))
    assert code == 250, (code, resp)
    for r in rcpts:
        code, resp = s.rcpt(r)
        assert code == 250, (code, resp)
    code, resp = s.data(msg)
    assert code == 250, (code, resp)
    qid = queued_id(resp)
    assert qid, resp
    return qid


class SmtplibTest(MxdTestCase):

    def test_ehlo_advertises_extensions(self):
        d = self.mxd()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
            code, _ = s.ehlo("client.example.org")
            self.assertEqual(code, 250)
            for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "dsn",
                        "smtputf8", "chunking", "help"):
                self.assertTrue(s.has_extn(ext), "EHLO lacks %s: %r" % (ext, s.esmtp_features))
            self.assertEqual(s.esmtp_features["size"], str(35 * 1024 * 1024))
            self.assertFalse(s.has_extn("starttls"), "no TLS listener, yet STARTTLS offered")
        self.stop_ok(d)

    def test_many_messages_one_connection(self):
        d = self.mxd()
        rng = random.Random(1234)
        eight_bit = bytes(b for b in range(128, 256)) + b"\xc3\xa9t\xc3\xa9\r\n"
        five_mb = b"".join(
            (b"%07d " % i) + bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 ")
                                   for _ in range(rng.randint(0, 990))) + CRLF
            for i in range(10000))
        while len(five_mb) < 5 * 1024 * 1024:
            five_mb += five_mb[:1024 * 1024]
        five_mb = five_mb[:5 * 1024 * 1024]
        five_mb = five_mb[:five_mb.rfind(CRLF) + 2]
        messages = [
            # (description, bytes given to smtplib, MAIL options)
            ("8-bit", b"Subject: 8bit\r\nMIME-Version: 1.0\r\n"
                      b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                      b"Content-Transfer-Encoding: 8bit\r\n\r\n" + eight_bit,
             ["BODY=8BITMIME"]),
            ("dots", b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...three\r\n"
                     b"middle . line\r\n.\r\nend\r\n", []),
            ("empty", b"", []),
            ("5MB", b"Subject: big\r\n\r\n" + five_mb, ["SIZE=%d" % (len(five_mb) + 18)]),
            ("no final newline", b"Subject: x\r\n\r\nlast line without CRLF", []),
            ("str with LF and CR, smtplib makes CRLF",
             "Subject: lf\n\nline one\nline two\r.dot\n\n.\nend\r\n", []),
            ("sendmail()", None, []),
        ]
        sent = {}
        with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as s:
            s.ehlo("client.example.org")
            for desc, msg, opts in messages:
                if msg is None:
                    # sendmail() itself: it hides the reply, so match by content.
                    msg = b"Subject: via sendmail\r\nX-Unique: sendmail-1\r\n\r\nhello\r\n"
                    refused = s.sendmail("a@example.org", ["b@example.com", "c@example.com"], msg)
                    self.assertEqual(refused, {})
                    sent["sendmail"] = (desc, smtplib_expected(msg))
                    continue
                qid = smtplib_send(s, "a@example.org", ["b@example.com"], msg, opts)
                self.assertNotIn(qid, sent)
                sent[qid] = (desc, smtplib_expected(msg))
            # Bytes with a bare LF go out as they are: refused (smuggling
            # defence), and the connection goes on.
            s.mail("a@example.org")
            s.rcpt("b@example.com")
            code, resp = s.data(b"Subject: bare\n\nbare LF\n")
            self.assertEqual((code, resp[:6]), (550, b"5.6.0 "))
            code, _ = s.noop()
            self.assertEqual(code, 250)
        self.stop_ok(d)

        ids = d.spool_ids()
        self.assertEqual(len(ids), len(messages), spool_list_lines(d.spool))
        self.assertEqual(len(set(ids)), len(ids), "duplicate ids in the spool")
        expected_sendmail = sent.pop("sendmail")[1]
        found_sendmail = 0
        for qid in ids:
            raw = d.spool_cat(qid)
            header, content = split_received(raw)
            self.assertReceived(header, qid=qid, helo="client.example.org")
            if qid in sent:
                desc, expected = sent.pop(qid)
                self.assertEqual(len(content), len(expected), desc)
                self.assertEqual(content, expected, desc)
            else:
                self.assertEqual(content, expected_sendmail)
                found_sendmail += 1
        self.assertEqual(sent, {}, "acknowledged but not in the spool")
        self.assertEqual(found_sendmail, 1)

    def test_empty_content_raw(self):
        """DATA followed directly by the terminating dot: zero bytes of content."""
        d = self.mxd()
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = c.send_message("a@example.org", ["b@example.com"], b"")
            self.assertEnhanced(r, 250, "2.0.0")
            c.cmd("QUIT")
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), b"")

    def test_bdat(self):
        d = self.mxd()
        chunks = [b"Subject: bdat\r\n\r\n", b"..not stuffed\r\n.\r\n", b"\xff\xfe 8-bit\r\n",
                  os.urandom(0) + b"x" * 100000 + CRLF]
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com>"), 250)
            for ch in chunks[:-1]:
                c.send(b"BDAT %d\r\n" % len(ch) + ch)
                self.assertEnhanced(c.reply(), 250)
            c.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
            r = c.reply()
            self.assertEnhanced(r, 250, "2.0.0")
            qid1 = queued_id(r.text)
            self.assertTrue(qid1, r)

            # Second transaction: pipelined in one write, ending with BDAT 0 LAST.
            body = b"Subject: bdat2\r\n\r\nchunked\r\n"
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                   b"BDAT 7\r\n" + body[:7] + b"BDAT %d\r\n" % (len(body) - 7) + body[7:] +
                   b"BDAT 0 LAST\r\n")
            replies = [c.reply() for _ in range(5)]
            self.assertEqual([r.code for r in replies], [250] * 5, replies)
            qid2 = queued_id(replies[-1].text)
            self.assertTrue(qid2, replies)
            self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted([qid1, qid2]))
        self.assertEqual(strip_received(d.spool_cat(qid1)), b"".join(chunks))
        self.assertEqual(strip_received(d.spool_cat(qid2)), body)

    def test_relay_denied(self):
        d = self.mxd(accept_local=False)
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<someone@foreign.example>"), 554, "5.7.1")
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com>"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com.evil.example>"), 554, "5.7.1")
            c.cmd("QUIT")
        self.stop_ok(d)

    def test_esmtp_parameters_kept_in_envelope(self):
        """SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY and ORCPT are validated
        and end up in the spooled envelope (mxspool show)."""
        d = self.mxd()
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            for bad in ("RET=MAYBE", "BODY=9BIT", "SIZE=abc", "ENVID=a\x7fb", "RET=FULL RET=HDRS"):
                r = c.cmd("MAIL FROM:<a@example.org> " + bad)
                self.assertEqual(r.code // 100, 5, (bad, r))
                self.assertEnhanced(r, r.code)
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8 "
                                      "RET=HDRS ENVID=abc+2Bx"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com> NOTIFY=FOO"), 501)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS"), 501)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE "
                                      "ORCPT=rfc822;b+40x@example.com"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<c@example.com> NOTIFY=NEVER"), 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: params\r\n\r\n\xc3\xa9\r\n.\r\n")
            r = c.reply()
            self.assertEnhanced(r, 250)
            qid = queued_id(r.text)
            c.cmd("QUIT")
        self.stop_ok(d)
        show = mxspool(d.spool, "show", qid).stdout.decode()
        for line in ("mail-from: <a@example.org>", "size: 100", "body: 8BITMIME", "smtputf8: yes",
                     "ret: HDRS", "envid: abc+2Bx", "recipients: 2",
                     "rcpt: <b@example.com> notify=SUCCESS,FAILURE orcpt=rfc822;b+40x@example.com",
                     "rcpt: <c@example.com> notify=NEVER", "helo: client.example.org (EHLO)",
                     "client: 127.0.0.1"):
            self.assertIn(line, show)

    def test_policy_tables(self):
        """First-match accept rules: a client-address table (CIDR), a domain
        table, a recipient table read from a file; 550 5.1.1 for an unknown
        user of our domain, 554 5.7.1 for a foreign one."""
        users = os.path.join(self.tmp, "users")
        with open(users, "w") as f:
            f.write("# recipients we know\nalice@example.com\n\n@example.org\n")
        d = self.mxd(rules=["table nets { 127.0.0.2, 10.0.0.0/8, 127.0.0.64/26 }",
                            "table users file:%s" % users,
                            "accept from <nets> for any",
                            "accept from any for domain <domains> recipient <users>"])
        with RawSmtp(d.port) as c:  # 127.0.0.1: not in <nets>
            c.connect_greeting()
            c.ehlo()
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<alice@example.com>"), 250, "2.1.5")
            self.assertEnhanced(c.cmd("RCPT TO:<ALICE@Example.COM>"), 250, "2.1.5")
            self.assertEnhanced(c.cmd("RCPT TO:<bob@example.com>"), 550, "5.1.1")
            self.assertEnhanced(c.cmd("RCPT TO:<anyone@example.org>"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<x@foreign.example>"), 554, "5.7.1")
            self.assertEnhanced(c.cmd("RCPT TO:<postmaster>"), 250)
            c.cmd("QUIT")
        for source, relay_ok in (("127.0.0.2", True), ("127.0.0.100", True), ("127.0.0.3", False),
                                 ("127.0.0.128", False)):
            with RawSmtp(d.port, source=source) as c:
                c.connect_greeting()
                c.ehlo()
                c.cmd("MAIL FROM:<a@example.org>")
                r = c.cmd("RCPT TO:<x@foreign.example>")
                if relay_ok:
                    self.assertEnhanced(r, 250)
                else:
                    self.assertEnhanced(r, 554, "5.7.1")
                c.cmd("QUIT")
        self.stop_ok(d)

    def test_size_limits(self):
        d = self.mxd(max_message_size="1M")
        limit = 1024 * 1024
        with RawSmtp(d.port, timeout=60) as c:
            c.connect_greeting()
            r = c.ehlo()
            self.assertIn("250-SIZE %d\r\n" % limit, r.text)
            # Declared too big.
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % (limit + 1)), 552, "5.3.4")
            # Declared at the limit is fine.
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % limit), 250)
            self.assertEnhanced(c.cmd("RSET"), 250)
            # Real bytes too big, no SIZE: refused at the end, session usable.
            big = b"Subject: big\r\n\r\n" + (b"y" * 998 + CRLF) * (limit // 1000 + 10)
            r, qid = c.send_message("a@example.org", ["b@example.com"], big)
            self.assertEnhanced(r, 552, "5.3.4")
            self.assertIsNone(qid)
            small = b"Subject: small\r\n\r\nok\r\n"
            r, qid = c.send_message("a@example.org", ["b@example.com"], small)
            self.assertEnhanced(r, 250, "2.0.0")
            self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), small)

    def test_max_recipients_edge(self):
        n = 5
        d = self.mxd(extra=["max-recipients %d" % n])
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
            for i in range(n):
                self.assertEnhanced(c.cmd("RCPT TO:<r%d@example.com>" % i), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<r%d@example.com>" % n), 452, "4.5.3")
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: rcpts\r\n\r\nhi\r\n.\r\n")
            r = c.reply()
            self.assertEnhanced(r, 250)
            qid = queued_id(r.text)
            c.cmd("QUIT")
        self.stop_ok(d)
        lines = spool_list_lines(d.spool)
        self.assertEqual(len(lines), 1, lines)
        for i in range(n):
            self.assertIn("r%d@example.com" % i, lines[0])
        self.assertNotIn("r%d@example.com" % n, lines[0])
        self.assertTrue(lines[0].lower().startswith(qid))

    def test_max_line_length_edges(self):
        limit = 512  # bytes of a command line, CRLF included (mxd's minimum)
        d = self.mxd(extra=["max-line-length %d" % limit])
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            at_limit = b"NOOP " + b"a" * (limit - 5 - 2) + CRLF
            self.assertEqual(len(at_limit), limit)
            c.send(at_limit)
            self.assertEnhanced(c.reply(), 250)
            over = b"NOOP " + b"a" * (limit - 5 - 2 + 1) + CRLF
            c.send(over)
            r = c.reply()
            self.assertEqual(r.code, 500, r)
            self.assertRegex(r.last, r"^500 5\.5\.[26] ")
            # The session goes on, and nothing of the long line leaks into
            # the next command.
            self.assertEnhanced(c.cmd("NOOP"), 250)
            # A huge line (far past any buffer) the same.
            c.send(b"NOOP " + b"b" * 200000 + CRLF)
            r = c.reply()
            self.assertEqual(r.code, 500, r)
            self.assertEnhanced(c.cmd("NOOP"), 250)
            self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)

    def _smuggle(self, d, terminator):
        """DATA content whose body hides a second transaction behind a
        non-CRLF end-of-data; returns the replies after the content."""
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com>"), 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: outer\r\n\r\nhello" + terminator +
                   b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                   b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")
            replies = []
            try:
                replies.append(c.reply())
                c.send(b"QUIT\r\n")
                while True:
                    replies.append(c.reply())
            except (ConnectionError, OSError):
                pass
            return replies

    def test_smuggling_refused(self):
        d = self.mxd()
        for term in (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"):
            replies = self._smuggle(d, term)
            self.assertTrue(replies, term)
            first = replies[0]
            self.assertGreaterEqual(first.code, 500, (term, replies))
            self.assertLess(first.code, 600, (term, replies))
            self.assertEnhanced(first, first.code)
            if term == b"\n.\n":
                self.assertEnhanced(first, 521, "5.5.2")
            for r in replies:
                self.assertNotIn("queued as", r.text, (term, replies))
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [], "a smuggled or tainted message was spooled")

    def test_bare_newlines_accept_switch(self):
        """With bare-newlines accept, "\\n.\\n" is content, not an end of data:
        one message, holding the would-be smuggled text verbatim."""
        d = self.mxd(extra=["bare-newlines accept"])
        content_sent = (b"Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<evil@example.org>\r\n"
                        b"RCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n")
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com>"), 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(content_sent + b".\r\n")
            r = c.reply()
            self.assertEnhanced(r, 250, "2.0.0")
            qid = queued_id(r.text)
            self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), content_sent)

    def test_pipelined_transactions_one_write(self):
        d = self.mxd()
        bodies = [b"Subject: p%d\r\n\r\n.dot %d\r\nbody %d\r\n" % (i, i, i) for i in range(3)]
        batch = b""
        for i, body in enumerate(bodies):
            batch += (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b%d@example.com>\r\n"
                      b"RCPT TO:<c%d@example.org>\r\nDATA\r\n" % (i, i))
            batch += dot_stuff(body) + b".\r\n"
        batch += b"QUIT\r\n"
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            c.send(batch)
            replies = [c.reply() for _ in range(3 * 5 + 1)]
            self.assertTrue(c.closed_by_peer())
        codes = [r.code for r in replies]
        self.assertEqual(codes, [250, 250, 250, 354, 250] * 3 + [221], replies)
        qids = [queued_id(replies[i * 5 + 4].text) for i in range(3)]
        self.assertTrue(all(qids), replies)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(qids))
        for qid, body in zip(qids, bodies):
            self.assertEqual(strip_received(d.spool_cat(qid)), body)

    def test_other_commands(self):
        d = self.mxd()
        with RawSmtp(d.port) as c:
            g = c.connect_greeting()
            self.assertEqual(g.code, 220)
            self.assertIn(" ESMTP", g.text)
            self.assertEnhanced(c.cmd("NOOP"), 250, "2.0.0")
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 503, "MAIL before EHLO")
            c.ehlo()
            self.assertEnhanced(c.cmd("VRFY postmaster"), 252)
            self.assertEnhanced(c.cmd("EXPN staff"), 502)
            r = c.cmd("HELP")
            self.assertEnhanced(r, 214)
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
            self.assertEnhanced(c.cmd("RSET"), 250, "2.0.0")
            self.assertEnhanced(c.cmd("RCPT TO:<b@example.com>"), 503, "5.5.1")
            self.assertEnhanced(c.cmd("DATA"), 503, "5.5.1")
            r = c.cmd("FROB")
            self.assertEqual(r.code // 100, 5, r)
            self.assertEnhanced(r, r.code)
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> BOGUS=1"), 555, "5.5.4")
            self.assertEnhanced(c.cmd("RSET"), 250)
            self.assertEnhanced(c.cmd("noop"), 250)  # case-insensitive verbs
            self.assertEnhanced(c.cmd("QUIT"), 221, "2.0.0")
            self.assertTrue(c.closed_by_peer())
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [])

    def test_helo_then_smtplib_8bit_without_body_param(self):
        """HELO (not EHLO) sessions work and the Received: header says SMTP."""
        d = self.mxd()
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            self.assertEqual(c.cmd("HELO oldclient.example.org").code, 250)  # RFC 2034: no enhanced code here
            r, qid = c.send_message("a@example.org", ["b@example.com"], b"Subject: helo\r\n\r\nx\r\n")
            self.assertEnhanced(r, 250)
            c.cmd("QUIT")
        self.stop_ok(d)
        header, content = split_received(d.spool_cat(qid))
        self.assertReceived(header, qid=qid, helo="oldclient.example.org", proto="SMTP")
        self.assertEqual(content, b"Subject: helo\r\n\r\nx\r\n")


if __name__ == "__main__":
    unittest.main()
