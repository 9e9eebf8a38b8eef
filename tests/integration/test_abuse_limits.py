"""Limits at their edges, and input that is not SMTP, against the real mxd
(DESIGN rules 5 and 6). test_smtplib.py and test_limits.py check the
limits once each; here every one is checked on both sides of its edge, in
the shapes an attacker uses:

- max-line-length N: N bytes (CRLF included) pass, N+1 get 500 5.5.2 and
  the session continues, wherever the TCP segments split the line; DATA
  content lines are not command lines;
- max-recipients N: N accepted, the rest 452 4.5.3, pipelined, per
  transaction;
- max-message-size S: exactly S bytes of content pass, S+1 get 552 5.3.4
  (DATA, BDAT in one or two chunks, SIZE= at MAIL) and the session stays
  usable;
- max-errors over mixed kinds of error, then 421 4.7.0;
- max-connections and max-connections-per-client under a burst of
  simultaneous connects: exactly N get 220, the rest 421 4.7.0, logged;
- BDAT sizes that do not parse (501 5.5.4, at once), and sizes that parse
  but can never fit (2^63, 2^64-1: the chunk is skipped, not stored, and a
  client that stops sending is timed out);
- a million pipelined RCPTs: 452s, bounded memory, other clients served;
- a client that pipelines commands and never reads the replies;
- a 100 KB EHLO; NUL bytes and invalid UTF-8 in commands, addresses, EHLO
  and content.
"""

import re
import socket
import threading
import time
import unittest

from mxharness import (CRLF, MXD_BIN, SLOW, MxdTestCase, RawSmtp, dot_stuff, mxspool,
                       queued_id, strip_received)
from tlsharness import log_lines, wait_for_log


def _asan_build():
    try:
        with open(MXD_BIN, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


ASAN = _asan_build()
MB = 1024 * 1024
# ASan keeps freed memory in its quarantine (256 MB by default): resident
# but not leaked. Allow for it on top of the real bound.
ASAN_ALLOWANCE = 256 * MB if ASAN else 0


def proc_status(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def greet(port, source="127.0.0.1", timeout=10):
    c = RawSmtp(port, source=source, timeout=timeout)
    return c, c.connect_greeting()


class LimitsAbuseTest(MxdTestCase):

    def session(self, d, helo=True, timeout=20):
        c = RawSmtp(d.port, timeout=timeout)
        self.addCleanup(c.close)
        self.assertEqual(c.connect_greeting().code, 220)
        if helo:
            c.ehlo()
        return c

    def nodelay(self, c):
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_split(self, c, data, splits, pause=0.02):
        """data as separate segments, cut at the given offsets."""
        last = 0
        for k in list(splits) + [len(data)]:
            if k > last:
                c.send(data[last:k])
                time.sleep(pause)
                last = k

    def assert_noop_exact(self, c):
        """The next command is read on its own: nothing of an overlong line
        leaked into it."""
        r = c.cmd("NOOP")
        self.assertEqual(r.lines, [b"250 2.0.0 Ok\r\n"], r)

    def deliver(self, d, content=b"Subject: ok\r\n\r\nstill serving\r\n"):
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = c.send_message("good@example.org", ["user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            c.cmd("QUIT")
        return qid

    # -- max-line-length ------------------------------------------------------
    def test_max_line_length_plus_minus_one_any_split(self):
        n = 1000
        d = self.mxd(extra=["max-line-length %d" % n, "max-errors 100"])
        at = b"NOOP " + b"a" * (n - 7) + CRLF
        over = b"NOOP " + b"a" * (n - 6) + CRLF
        at_lf = b"NOOP " + b"a" * (n - 6) + b"\n"      # LF-only line of exactly n
        over_lf = b"NOOP " + b"a" * (n - 5) + b"\n"
        self.assertEqual((len(at), len(over), len(at_lf), len(over_lf)), (n, n + 1, n, n + 1))
        c = self.session(d)
        self.nodelay(c)
        for line, good in ((at, True), (at_lf, True), (over, False), (over_lf, False)):
            for splits in ([], [1], [n // 2], [len(line) - 2], [len(line) - 1],
                           [5, n // 3, len(line) - 1]):
                self.send_split(c, line, splits)
                r = c.reply()
                if good:
                    self.assertEqual(r.lines, [b"250 2.0.0 Ok\r\n"], (len(line), splits, r))
                else:
                    self.assertEnhanced(r, 500, "5.5.2")
                    self.assertIn("line too long", r.text, (len(line), splits))
                self.assert_noop_exact(c)
        # Past the limit before the line ends: the overflow is noticed in
        # the middle, the rest of the line is skipped, not read as commands.
        long_line = b"NOOP " + b"QUIT\r" * 400 + CRLF
        self.send_split(c, long_line, [n + 10, n + 500])
        self.assertEnhanced(c.reply(), 500, "5.5.2")
        self.assert_noop_exact(c)
        # Message content is not made of command lines: a 5000-byte line
        # in DATA is kept whole.
        content = b"Subject: long line\r\n\r\n" + b"x" * 5000 + CRLF
        r, qid = c.send_message("a@example.org", ["b@example.com"], content)
        self.assertEnhanced(r, 250, "2.0.0")
        self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), content)

    # -- max-recipients -------------------------------------------------------
    def test_max_recipients_plus_minus_one_pipelined(self):
        n = 5
        d = self.mxd(extra=["max-recipients %d" % n])
        c = self.session(d)
        qids = []
        for tx in range(2):
            batch = b"MAIL FROM:<a@example.org>\r\n"
            batch += b"".join(b"RCPT TO:<t%d-r%d@example.com>\r\n" % (tx, i) for i in range(n + 2))
            batch += b"DATA\r\n"
            c.send(batch)
            replies = [c.reply() for _ in range(n + 4)]
            got = [(r.code, r.last[4:9]) for r in replies]
            self.assertEqual(got, [(250, "2.1.0")] + [(250, "2.1.5")] * n
                             + [(452, "4.5.3")] * 2 + [(354, "End d")], replies)
            c.send(b"Subject: rcpt %d\r\n\r\nhi\r\n.\r\n" % tx)
            r = c.reply()
            self.assertEnhanced(r, 250, "2.0.0")
            qids.append(queued_id(r.text))
        # RSET forgets the count too.
        self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
        for i in range(n):
            self.assertEnhanced(c.cmd("RCPT TO:<x%d@example.com>" % i), 250)
        self.assertEnhanced(c.cmd("RSET"), 250)
        self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertEnhanced(c.cmd("RCPT TO:<y@example.com>"), 250, "2.1.5")
        self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(qids))
        for tx, qid in enumerate(qids):
            show = mxspool(d.spool, "show", qid).stdout.decode()
            self.assertIn("recipients: %d\n" % n, show)
            for i in range(n):
                self.assertIn("rcpt: <t%d-r%d@example.com>" % (tx, i), show)
            self.assertNotIn("t%d-r%d@" % (tx, n), show)

    # -- max-message-size -----------------------------------------------------
    def test_max_message_size_plus_minus_one(self):
        size = 65536
        d = self.mxd(max_message_size="64k")
        c = self.session(d, helo=False)
        self.assertIn("250-SIZE %d\r\n" % size, c.ehlo().text)

        def content_of(n):
            """n bytes of CRLF content with dot lines (stuffing is not counted)."""
            head = b"Subject: size\r\n\r\n.leading dot\r\n..two dots\r\n"
            line = b"y" * 98 + CRLF
            body = head + line * ((n - len(head)) // len(line))
            pad = n - len(body)
            if pad:
                body += b"z" * (pad - 2) + CRLF if pad >= 2 else b""
            assert len(body) == n, (len(body), n)
            return body

        exact, over = content_of(size), content_of(size + 2)[:-3] + CRLF
        self.assertEqual(len(over), size + 1)
        kept = []
        # SIZE= at MAIL.
        self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % (size + 1)), 552, "5.3.4")
        self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % size), 250)
        self.assertEnhanced(c.cmd("RSET"), 250)
        # DATA: exactly S, then S+1, then S again on the same session.
        for body, code in ((exact, 250), (over, 552), (exact, 250)):
            r, qid = c.send_message("a@example.org", ["b@example.com"], body)
            if code == 250:
                self.assertEnhanced(r, 250, "2.0.0")
                kept.append((qid, body))
            else:
                self.assertEnhanced(r, 552, "5.3.4")
        # DATA with SIZE= at the limit but S+1 bytes sent: 552 at the end.
        r, qid = c.send_message("a@example.org", ["b@example.com"], over,
                                mail_params=" SIZE=%d" % size)
        self.assertEnhanced(r, 552, "5.3.4")

        def bdat_tx(chunks, last_code, enh):
            c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
            self.assertEqual([c.reply().code for _ in range(2)], [250, 250])
            for i, ch in enumerate(chunks):
                last = i == len(chunks) - 1
                c.send(b"BDAT %d%s\r\n" % (len(ch), b" LAST" if last else b"") + ch)
                r = c.reply()
                if last:
                    self.assertEnhanced(r, last_code, enh)
                    return r
                self.assertEnhanced(r, 250, "2.0.0")

        r = bdat_tx([exact], 250, "2.0.0")
        kept.append((queued_id(r.text), exact))
        bdat_tx([over], 552, "5.3.4")
        bdat_tx([over[:size // 2], over[size // 2:]], 552, "5.3.4")
        r = bdat_tx([exact[:size // 2], exact[size // 2:], b""], 250, "2.0.0")
        kept.append((queued_id(r.text), exact))
        # A refused middle chunk fails the transaction until RSET (RFC 3030).
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
        self.assertEqual([c.reply().code for _ in range(2)], [250, 250])
        c.send(b"BDAT %d\r\n" % (size // 2) + over[:size // 2])
        self.assertEnhanced(c.reply(), 250)
        c.send(b"BDAT %d\r\n" % (len(over) - size // 2) + over[size // 2:])
        self.assertEnhanced(c.reply(), 552, "5.3.4")
        c.send(b"BDAT 5 LAST\r\nhello")
        self.assertEnhanced(c.reply(), 503, "5.5.1")
        self.assertEnhanced(c.cmd("RSET"), 250)
        r, qid = c.send_message("a@example.org", ["b@example.com"], exact)
        self.assertEnhanced(r, 250, "2.0.0")
        kept.append((qid, exact))
        self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(q for q, _ in kept))
        for qid, body in kept:
            self.assertEqual(strip_received(d.spool_cat(qid)), body)

    # -- max-errors -------------------------------------------------------------
    def test_max_errors_mixed_kinds(self):
        """Errors of every kind count: a long line, a NUL, an unknown verb,
        bad syntax, a refused recipient; the Nth is followed by 421 4.7.0
        and the close. Good commands in between do not reset the count."""
        n = 5
        d = self.mxd(accept_local=False, extra=["max-errors %d" % n, "max-line-length 512"])
        c = self.session(d)
        port = c.sock.getsockname()[1]
        bad = [b"NOOP " + b"x" * 600, b"NO\x00OP", b"FROBNICATE", b"MAIL FROM:bad-syntax"]
        for i, line in enumerate(bad):
            r = c.cmd(line)
            self.assertEqual(r.code // 100, 5, r)
            self.assertEnhanced(r, r.code)
            self.assertEnhanced(c.cmd("NOOP"), 250)
        self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
        c.send(b"RCPT TO:<someone@foreign.example>\r\n")
        self.assertEnhanced(c.reply(), 554, "5.7.1")
        r = c.reply()
        self.assertEnhanced(r, 421, "4.7.0")
        self.assertIn("too many errors", r.text)
        self.assertTrue(c.closed_by_peer())
        lines = wait_for_log(d, r'reject client=127\.0\.0\.1 command=\S+ reply="421 4\.7\.0 ')
        sid = re.search(r"session=(\S+)", lines[0]).group(1)
        rejects = [l for l in log_lines(d) if "session=%s reject" % sid in l]
        self.assertEqual(len(rejects), n + 1, rejects)
        self.assertIn("reason=closed by server", wait_for_log(d, r"session=%s close" % sid)[0])
        self.stop_ok(d)

    # -- max-connections ------------------------------------------------------
    def burst(self, port, source, count):
        """count simultaneous connections from source; returns (greeted
        clients, refused replies)."""
        results = [None] * count

        def one(i):
            try:
                c = RawSmtp(port, source=source, timeout=10 * SLOW)
                results[i] = (c, c.connect_greeting())
            except Exception as e:  # noqa: BLE001
                results[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        greeted, refused = [], []
        for res in results:
            self.assertNotIsInstance(res, Exception, res)
            c, g = res
            self.addCleanup(c.close)
            if g.code == 220:
                greeted.append(c)
            else:
                self.assertEnhanced(g, 421, "4.7.0")
                self.assertTrue(c.closed_by_peer(), "421 but still open")
                c.close()
                refused.append(g)
        return greeted, refused

    def test_connection_limits_under_a_burst(self):
        per, total = 5, 8
        d = self.mxd(extra=["max-connections-per-client %d" % per, "max-connections %d" % total])
        time.sleep(0.2)  # the readiness probe's slot is released
        held, refused = self.burst(d.port, "127.0.0.1", 20)
        self.assertEqual(len(held), per)
        self.assertEqual(len(refused), 15)
        for g in refused:
            self.assertIn("too many connections from 127.0.0.1", g.text)
        more, refused2 = self.burst(d.port, "127.0.0.2", 6)
        self.assertEqual(len(more), total - per)
        self.assertEqual(len(refused2), 6 - (total - per))
        for g in refused2:
            self.assertIn("too many connections", g.text)
        c, g = greet(d.port, "127.0.0.3")
        self.assertEnhanced(g, 421, "4.7.0")
        self.assertNotIn(" from ", g.text)  # the total limit, not the per-client one
        c.close()
        # Every held session works.
        for c in held + more:
            self.assertEnhanced(c.cmd("NOOP"), 250)
        wait_for_log(d, r'command=CONNECT reply="421 4\.7\.0 \S+ Error: too many connections '
                        r'from 127\.0\.0\.1"', count=15)
        # All slots come back: the counts did not leak.
        for c in held + more:
            c.cmd("QUIT")
            c.close()
        deadline = time.monotonic() + 5 * SLOW
        while True:
            again, refused3 = self.burst(d.port, "127.0.0.1", 7)
            if len(again) == per or time.monotonic() > deadline:
                break
            for c in again:
                c.close()
            time.sleep(0.2)
        self.assertEqual((len(again), len(refused3)), (per, 7 - per))
        for c in again:
            c.close()
        self.stop_ok(d)

    # -- BDAT sizes ------------------------------------------------------------
    def test_bdat_sizes_that_do_not_parse(self):
        """501 5.5.4 at once (nothing to skip: what follows is read as
        commands), and the session goes on."""
        d = self.mxd(extra=["max-errors 100"])
        c = self.session(d)
        self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertEnhanced(c.cmd("RCPT TO:<b@example.com>"), 250)
        for arg in (b"", b" ", b"-1", b"abc", b"18446744073709551616",  # 2^64
                    b"18446744073709551617", b"99999999999999999999", b"1" * 30, b"1e3",
                    b"0x10", b"+5", b"5.0", b"5 LAST extra", b"5 NOTLAST", b"\xff", b"5\x00"):
            t0 = time.monotonic()
            r = c.cmd(b"BDAT " + arg if arg else b"BDAT")
            self.assertLess(time.monotonic() - t0, 2 * SLOW)
            if b"\x00" in arg:
                self.assertEnhanced(r, 500, "5.5.2")
            else:
                self.assertEnhanced(r, 501, "5.5.4")
            self.assertEnhanced(c.cmd("NOOP"), 250)
        # The transaction is still there.
        c.send(b"BDAT 13 LAST\r\nhello world\r\n")
        r = c.reply()
        self.assertEnhanced(r, 250, "2.0.0")
        qid = queued_id(r.text)
        self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])

    def test_bdat_sizes_that_can_never_fit(self):
        """BDAT 2^63 and 2^64-1 parse, so mxd keeps the framing: the chunk's
        bytes are skipped, not stored (memory stays flat while 32 MB of
        them arrive on each), and a client that stops sending gets 421 4.4.2 from
        the data-block timeout. Nothing is spooled; mxd serves on."""
        d = self.mxd(extra=["timeout data-block 1s", "min-data-rate 0"], cores=1)
        base = proc_status(d.proc.pid, "VmRSS")
        results = {}

        def run(size):
            try:
                with RawSmtp(d.port, timeout=30) as c:
                    c.connect_greeting()
                    c.ehlo()
                    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
                    assert [c.reply().code for _ in range(2)] == [250, 250]
                    c.send(b"BDAT %d LAST\r\n" % size)
                    junk = b"j" * 65536
                    for _ in range(512):
                        c.send(junk)
                    t0 = time.monotonic()
                    r = c.reply()
                    results[size] = (r, time.monotonic() - t0, c.closed_by_peer())
            except Exception as e:  # noqa: BLE001
                results[size] = e

        threads = [threading.Thread(target=run, args=(s,)) for s in (2 ** 63, 2 ** 64 - 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for size, res in results.items():
            self.assertNotIsInstance(res, Exception, (size, res))
            r, waited, closed = res
            self.assertEnhanced(r, 421, "4.4.2")
            self.assertLess(waited, 4 * SLOW, size)
            self.assertTrue(closed)
        # 64 MB went in; the core's receive buffer pool (512 x 32 KB, touched
        # as it is used) is the only memory they may take.
        grown = proc_status(d.proc.pid, "VmHWM") - base
        self.assertLess(grown, 40 * MB + ASAN_ALLOWANCE, "refused BDAT bytes were kept")
        wait_for_log(d, r"timeout client=127\.0\.0\.1 waiting for message data", count=2)
        qid = self.deliver(d)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])

    # -- a million RCPTs ---------------------------------------------------------
    def test_million_rcpt_pipelined(self):
        """1,000,000 RCPTs in 1 MB writes, replies read as they come: 1000
        accepted, 999,000 452 4.5.3, then DATA delivers to the 1000.
        mxd's peak resident memory grows by less than 200 MB, and another
        client on the same core is served meanwhile."""
        total, limit = 1000000, 1000
        d = self.mxd(extra=["max-recipients %d" % limit, "max-errors 1000000"], cores=1)
        base = proc_status(d.proc.pid, "VmRSS")
        c = RawSmtp(d.port, timeout=60)
        self.addCleanup(c.close)
        c.connect_greeting()
        c.send(b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n")
        counts = {}
        failure = []

        def reader():
            buf, n = b"", 0
            try:
                while True:
                    chunk = c.sock.recv(1 << 20)
                    if not chunk:
                        break
                    buf += chunk
                    parts = buf.split(CRLF)
                    buf = parts.pop()
                    for line in parts:
                        if line[3:4] == b" ":
                            n += 1
                            key = line[:9]
                            counts[key] = counts.get(key, 0) + 1
                            if key.startswith(b"250 2.0.0"):
                                counts["qid"] = queued_id(line)
            except Exception as e:  # noqa: BLE001
                failure.append(e)

        t = threading.Thread(target=reader)
        t.start()
        batch_n = 40000
        other = []
        t0 = time.monotonic()
        for k in range(total // batch_n):
            c.send(b"".join(b"RCPT TO:<r%07d@example.com>\r\n" % (k * batch_n + i)
                            for i in range(batch_n)))
            if k == 5:
                # Another client in the middle of the flood.
                s0 = time.monotonic()
                other.append((self.deliver(d), time.monotonic() - s0))
        c.send(b"DATA\r\nSubject: many\r\n\r\nthousand recipients\r\n.\r\nQUIT\r\n")
        t.join(120 * SLOW)
        self.assertFalse(t.is_alive(), "replies stopped coming")
        self.assertFalse(failure, failure)
        flood_s = time.monotonic() - t0
        self.assertEqual(counts.get(b"250 2.1.5"), limit, counts)
        self.assertEqual(counts.get(b"452 4.5.3"), total - limit, counts)
        self.assertEqual(counts.get(b"354 End d"), 1, counts)
        self.assertEqual(counts.get(b"221 2.0.0"), 1, counts)
        grown = proc_status(d.proc.pid, "VmHWM") - base
        self.assertLess(grown, 200 * MB + ASAN_ALLOWANCE,
                        "peak RSS grew by %d MB" % (grown // MB))
        qid_other, other_s = other[0]
        self.assertLess(other_s, max(2.0, flood_s / 2) * SLOW)
        self.stop_ok(d)
        qid = counts["qid"]
        self.assertEqual(sorted(d.spool_ids()), sorted([qid, qid_other]))
        show = mxspool(d.spool, "show", qid).stdout.decode()
        self.assertIn("recipients: %d\n" % limit, show)

    def test_pipelining_without_reading_replies_is_bounded(self):
        d = self.mxd(extra=["max-errors 1000000"], cores=1)
        base = proc_status(d.proc.pid, "VmRSS")
        c = RawSmtp(d.port, timeout=10)
        self.addCleanup(c.close)
        c.connect_greeting()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = b"EHLO x\r\n" * 16384
        sent = 0
        c.sock.settimeout(3 * SLOW)  # a bounded mxd stops reading: sends block
        try:
            while sent < 12 * MB:
                c.sock.sendall(chunk)
                sent += len(chunk)
        except (socket.timeout, TimeoutError):
            pass
        time.sleep(1)
        grown = proc_status(d.proc.pid, "VmHWM") - base
        c.close()
        self.assertLess(grown, 64 * MB + ASAN_ALLOWANCE,
                        "sent %d MB of EHLO, never read: mxd grew by %d MB"
                        % (sent // MB, grown // MB))
        self.deliver(d)
        self.stop_ok(d)

    # -- oversized and malformed commands ----------------------------------
    def test_ehlo_of_100kb(self):
        d = self.mxd(extra=["max-errors 2"])
        c = self.session(d, helo=False)
        c.send(b"EHLO " + b"h" * 100000 + CRLF)
        r = c.reply()
        self.assertEnhanced(r, 500, "5.5.2")
        self.assertIn("line too long", r.text)
        self.assertEqual(c.ehlo().code, 250)  # continues, and EHLO works
        # In 1-byte-short-of-limit pieces, without a line end for a while.
        self.nodelay(c)
        self.send_split(c, b"EHLO " + b"h" * 100000 + CRLF, range(1000, 100000, 20000))
        r = c.reply()
        self.assertEnhanced(r, 500, "5.5.2")
        r = c.reply()  # max-errors 2: the second error ends the session
        self.assertEnhanced(r, 421, "4.7.0")
        self.assertTrue(c.closed_by_peer())
        self.deliver(d)
        self.stop_ok(d)

    def test_nul_and_invalid_utf8_everywhere(self):
        """Precise 5xx replies for NULs and invalid UTF-8 in verbs, EHLO,
        addresses and parameters; 8-bit content (NULs and invalid UTF-8
        included) is fine in DATA and BDAT and spooled byte for byte; no
        raw client byte of them reaches a reply or the log."""
        d = self.mxd(accept_local=False, extra=["max-errors 1000"])
        c = self.session(d, helo=False)
        cases = [
            (b"\x00", 500, "5.5.2"),
            (b"NO\x00OP", 500, "5.5.2"),
            (b"\xff\xfe\xfd", 500, "5.5.2"),
            (b"N\xc3OOP", 500, "5.5.2"),
            (b"EHLO a\x00b.example", 500, "5.5.2"),
            (b"EHLO \xff\xfe.example", 501, "5.5.4"),
            (b"EHLO \xc3\x28.example", 501, "5.5.4"),
            (b"HELO \xed\xa0\x80.example", 501, "5.5.4"),  # an encoded surrogate
        ]
        for line, code, enh in cases:
            r = c.cmd(line)
            self.assertEnhanced(r, code, enh)
        c.ehlo()
        tx = [
            (b"MAIL FROM:<a\x00b@example.org>", 500, "5.5.2"),
            (b"MAIL FROM:<\xff@example.org>", 501, "5.1.7"),
            (b"MAIL FROM:<\xc3\x28@example.org> SMTPUTF8", 501, "5.1.7"),
            (b"MAIL FROM:<\xc0\xaf@example.org> SMTPUTF8", 501, "5.1.7"),  # overlong
            (b"MAIL FROM:<caf\xc3\xa9@example.org>", 553, "5.6.7"),  # valid, no SMTPUTF8
            (b"MAIL FROM:<a@example.org> ENVID=\xc3\xa9", 501, "5.5.4"),
            (b"MAIL FROM:<a@example.org> SIZE=\xff", 501, "5.5.4"),
            (b"MAIL FROM:<a@example.org> \xff=1", 555, "5.5.4"),
            (b"MAIL FROM:<caf\xc3\xa9@example.org> SMTPUTF8", 250, "2.1.0"),
            (b"RCPT TO:<a\x00b@example.com>", 500, "5.5.2"),
            (b"RCPT TO:<\xff@example.com>", 501, "5.1.3"),
            (b"RCPT TO:<\xf8\x88\x80\x80\x80@example.com>", 501, "5.1.3"),  # 5-byte form
            (b"RCPT TO:<ok@example.com> NOTIFY=\xff", 501, "5.5.4"),
            (b"RCPT TO:<ok@example.com> ORCPT=rfc822;\xff", 501, "5.5.4"),
            (b"RCPT TO:<caf\xc3\xa9@foreign.example>", 554, "5.7.1"),
            (b"RCPT TO:<j\xc3\xbcrgen@example.com>", 250, "2.1.5"),
        ]
        for line, code, enh in tx:
            r = c.cmd(line)
            self.assertEnhanced(r, code, enh)
            if code == 554:
                # The address is quoted with its non-ASCII bytes made "?".
                self.assertIn("<caf??@foreign.example>", r.text)
        # 8-bit content: every byte value, NULs and broken UTF-8 included
        # (only CR and LF come as CRLF pairs).
        octets = bytes(b for b in range(256) if b not in (10, 13))
        content = (b"Subject: 8bit \xff\xfe\r\n\r\n" + octets + CRLF + b"\x00\x00\x00" + CRLF
                   + b"\xc3\x28 \xed\xa0\x80 \xf8\x88\x80\x80\x80 \xc0\xaf" + CRLF + b".\x00dot\r\n")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(dot_stuff(content) + b".\r\n")
        r = c.reply()
        self.assertEnhanced(r, 250, "2.0.0")
        qid1 = queued_id(r.text)
        c.send(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n"
               b"BDAT %d LAST\r\n" % len(content) + content)
        self.assertEqual([c.reply().code for _ in range(2)], [250, 250])
        r = c.reply()
        self.assertEnhanced(r, 250, "2.0.0")
        qid2 = queued_id(r.text)
        self.assertEnhanced(c.cmd("QUIT"), 221)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted([qid1, qid2]))
        for qid in (qid1, qid2):
            self.assertEqual(strip_received(d.spool_cat(qid)), content)
        show = mxspool(d.spool, "show", qid1).stdout
        self.assertIn("caf\xc3\xa9@example.org".encode("latin-1"), show)
        # The log never got a raw NUL or an invalid UTF-8 byte of the
        # refused commands.
        with open(d.stderr_path, "rb") as f:
            log = f.read()
        for raw in (b"\x00", b"\xff", b"\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0", b"\xf8"):
            self.assertNotIn(raw, log, "raw client bytes %r in the log" % raw)


if __name__ == "__main__":
    unittest.main()
