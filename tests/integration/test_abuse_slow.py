"""Early talkers and slow clients against the real mxd.

- `greeting-delay 1s`: a client that sends anything before the 220 gets
  "554 5.5.1 ... client talked before the greeting" at once and is closed,
  with a reject log line naming the early talker; a patient client gets
  its 220 after the delay and delivers. smtps listeners, where the client
  speaks first, are not delayed.
- `timeout command 3s`: a slowloris sending one byte of a command every
  0.5 s is cut off with 421 4.4.2 about 3-4 s after the command began,
  although it never stops sending (the deadline runs from the command's
  start, not from the last byte).
- `min-data-rate 1000`: content trickled at 100 bytes a second (DATA or
  BDAT) gets 421 4.4.2 once the 10-second grace has passed; content at
  3000 bytes a second for longer than that is accepted.
- Meanwhile, on the same core (`cores 1`), normal sessions complete
  promptly: none takes more than about a second.
"""

import select
import socket
import threading
import time
import unittest

from mxharness import CRLF, SLOW, MxdTestCase, RawSmtp, queued_id, strip_received
from tlsharness import (MAIL_NAME, OPENSSL, TlsRawSmtp, TlsTestCase, client_context, close_line,
                        log_lines, session_of_port, wait_for_log)

DELAY = 1.0


def read_reply_until(sock, deadline):
    """Bytes up to the first complete reply line (or EOF / deadline)."""
    data = b""
    while b"\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            break
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


class ThreadResults:
    """Run named functions in threads; collect results or exceptions."""

    def __init__(self):
        self.results = {}
        self.threads = []

    def start(self, name, fn, *args):
        def run():
            try:
                self.results[name] = fn(*args)
            except Exception as e:  # noqa: BLE001 — reported by the test
                self.results[name] = e
        t = threading.Thread(target=run, name=name)
        t.start()
        self.threads.append(t)

    def join(self, timeout):
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))
            if t.is_alive():
                raise AssertionError("client %s still running" % t.name)
        return self.results


@unittest.skipUnless(OPENSSL, "openssl not installed")
class EarlyTalkerTest(TlsTestCase):

    def test_greeting_delay_and_early_talkers(self):
        """Early talkers on the STARTTLS listener get 554 5.5.1 at once and
        are closed (logged "early talker: N bytes"); a patient client gets
        220 after the delay and delivers; the smtps listener, where the
        client speaks first, is not delayed and has no early talkers."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME, "smtps pki %s" % MAIL_NAME], [p],
                         rules=["accept from any for domain <domains>"],
                         extra=["greeting-delay %dms" % int(DELAY * 1000)])
        # (The readiness probe waited for its 220, so the delay works.)
        content = b"Subject: patient\r\n\r\nwaited for the greeting\r\n"
        ctx = client_context(self.certs.ca())

        def early(payload, after=0.0, close_at_once=False):
            with RawSmtp(d.ports[0], timeout=10) as c:
                port = c.sock.getsockname()[1]
                if after:
                    time.sleep(after)
                c.send(payload)
                t0 = time.monotonic()
                if close_at_once:
                    return port, None, None, None
                data = read_reply_until(c.sock, time.monotonic() + 5 * SLOW)
                answered = time.monotonic() - t0
                closed = c.closed_by_peer(5)
                return port, data + c.buf, answered, closed

        def patient():
            with RawSmtp(d.ports[0], timeout=10) as c:
                t0 = time.monotonic()
                g = c.connect_greeting()
                waited = time.monotonic() - t0
                c.ehlo()
                r, qid = c.send_message("patient@example.org", ["user@example.com"], content)
                c.cmd("QUIT")
                return g, waited, r, qid

        def smtps():
            with TlsRawSmtp(d.ports[1], timeout=10) as c:
                t0 = time.monotonic()
                c.wrap_now(ctx, server_hostname=MAIL_NAME)
                g = c.connect_greeting()
                waited = time.monotonic() - t0
                c.ehlo()
                r, qid = c.send_message("tls@example.org", ["user@example.com"], content)
                c.cmd("QUIT")
                return g, waited, r, qid

        runs = ThreadResults()
        runs.start("ehlo at once", early, b"EHLO early.example\r\n")
        runs.start("whole transaction at once", early,
                   b"EHLO early.example\r\nMAIL FROM:<spam@example.net>\r\nRCPT TO:<user@example.com>"
                   b"\r\nDATA\r\nSubject: spam\r\n\r\nspam\r\n.\r\nQUIT\r\n")
        runs.start("half-way through the delay", early, b"EHLO early.example\r\n", DELAY / 2)
        runs.start("one byte", early, b"E")
        runs.start("talks and vanishes", early, b"EHLO early.example\r\n", 0.0, True)
        runs.start("patient", patient)
        runs.start("smtps", smtps)
        res = runs.join(20 * SLOW)
        for name, r in res.items():
            self.assertNotIsInstance(r, Exception, "%s: %r" % (name, r))

        g, waited, r, qid = res.pop("patient")
        self.assertEqual(g.code, 220, g)
        self.assertGreaterEqual(waited, DELAY - 0.05, "220 came before the greeting-delay")
        self.assertLess(waited, DELAY + 1.5 * SLOW)
        self.assertEnhanced(r, 250, "2.0.0")
        g, waited, r, tls_qid = res.pop("smtps")
        self.assertEqual(g.code, 220, g)
        self.assertLess(waited, DELAY - 0.5, "smtps greeting delayed (%.2fs)" % waited)
        self.assertEnhanced(r, 250, "2.0.0")

        res.pop("talks and vanishes")
        for name, (port, data, answered, closed) in res.items():
            self.assertNotIn(b"220", data[:4], name)
            self.assertRegex(data, rb"^554 5\.5\.1 \S+ Error: SMTP protocol violation: client "
                                   rb"talked before the greeting\r\n$", name)
            self.assertTrue(closed, "%s: not closed" % name)
            # Refused when it talks, not when the delay ends.
            self.assertLess(answered, 0.4 * SLOW, name)
            sid = session_of_port(d, port)
            lines = wait_for_log(d, r'session=%s reject client=127\.0\.0\.1 command=CONNECT '
                                    r'reply="554 5\.5\.1 early talker: (\d+) bytes before the '
                                    r'greeting"' % sid)
            if name == "one byte":
                self.assertIn("early talker: 1 bytes", lines[0])
            self.assertIn("reason=early talker", close_line(d, sid))
        # Every early talker was logged, the vanishing one too, and no
        # one else.
        wait_for_log(d, r'reply="554 5\.5\.1 early talker', count=5)
        self.assertEqual(len([l for l in log_lines(d) if "early talker: " in l]), 5)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted([qid, tls_qid]))
        self.assertEqual(strip_received(d.spool_cat(qid)), content)


class SlowClientsTest(MxdTestCase):

    def test_slowloris_and_trickles_do_not_delay_others(self):
        cmd_timeout, min_rate = 3, 1000
        d = self.mxd(cores=1, extra=["timeout command %ds" % cmd_timeout,
                                     "timeout data-block 5s",
                                     "min-data-rate %d" % min_rate])
        stop = threading.Event()

        def slowloris(prefix_ehlo):
            """A byte of a command every 0.5 s until mxd answers."""
            with RawSmtp(d.port, timeout=30) as c:
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                port = c.sock.getsockname()[1]
                c.connect_greeting()
                if prefix_ehlo:
                    c.ehlo()
                line = (b"MAIL FROM:<" if prefix_ehlo else b"EHLO ") + b"s" * 1000
                t0 = time.monotonic()
                sent = 0
                data = b""
                while time.monotonic() - t0 < 15 * SLOW:
                    try:
                        c.send(line[sent:sent + 1])
                    except OSError:
                        break
                    sent += 1
                    data += read_reply_until(c.sock, time.monotonic() + 0.5)
                    if b"\r\n" in data:
                        break
                cut = time.monotonic() - t0
                return port, data, cut, sent, c.closed_by_peer(5)

        def trickle(bdat, rate, seconds):
            """Content at `rate` bytes/s in 0.1 s steps; ends the message
            after `seconds` unless mxd answers first."""
            with RawSmtp(d.port, timeout=30) as c:
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                port = c.sock.getsockname()[1]
                c.connect_greeting()
                c.ehlo()
                c.send(b"MAIL FROM:<slow@example.org>\r\nRCPT TO:<user@example.com>\r\n")
                assert [c.reply().code for _ in range(2)] == [250, 250]
                step = b"x" * (rate // 10 - 2) + CRLF
                total = len(step) * int(seconds * 10)
                if bdat:
                    c.send(b"BDAT %d LAST\r\n" % total)
                else:
                    r = c.cmd("DATA")
                    assert r.code == 354, r
                t0 = time.monotonic()
                data = b""
                sent = 0
                while sent < total:
                    try:
                        c.send(step)
                    except OSError:
                        break
                    sent += len(step)
                    data += read_reply_until(c.sock, t0 + sent / rate)
                    if b"\r\n" in data:
                        break
                if sent >= total and not data:
                    if not bdat:
                        c.send(b".\r\n")
                    data = read_reply_until(c.sock, time.monotonic() + 10 * SLOW)
                return port, data, time.monotonic() - t0, sent

        def normal_clients():
            """A full session every 0.7 s while the slow ones run."""
            times = []
            while not stop.is_set():
                t0 = time.monotonic()
                with RawSmtp(d.port, timeout=30) as c:
                    assert c.connect_greeting().code == 220
                    c.ehlo()
                    r, qid = c.send_message("fast@example.org", ["user@example.com"],
                                            b"Subject: fast\r\n\r\nquick\r\n")
                    assert r.code == 250, r
                    assert c.cmd("QUIT").code == 221
                times.append((time.monotonic() - t0, qid))
                stop.wait(0.7)
            return times

        runs = ThreadResults()
        runs.start("slowloris MAIL", slowloris, True)
        runs.start("slowloris first command", slowloris, False)
        runs.start("DATA at 100 B/s", trickle, False, 100, 30)
        runs.start("BDAT at 100 B/s", trickle, True, 100, 30)
        runs.start("DATA at 3000 B/s for 12 s", trickle, False, 3000, 12)
        normal = ThreadResults()
        normal.start("normal", normal_clients)
        try:
            res = runs.join(40 * SLOW)
        finally:
            stop.set()
        times = normal.join(30 * SLOW)["normal"]
        for name, r in res.items():
            self.assertNotIsInstance(r, Exception, "%s: %r" % (name, r))
        self.assertNotIsInstance(times, Exception, times)

        for name in ("slowloris MAIL", "slowloris first command"):
            port, data, cut, sent, closed = res[name]
            self.assertRegex(data, rb"^421 4\.4\.2 \S+ Error: timeout exceeded\r\n$", name)
            # Cut off by the command's deadline although a byte came
            # every 0.5 s (so well over the 3 s at ~2 bytes a second).
            self.assertGreaterEqual(cut, cmd_timeout - 0.6, name)
            self.assertLess(cut, (cmd_timeout + 2) * SLOW, "%s: %.1fs" % (name, cut))
            self.assertGreaterEqual(sent, 2 * (cmd_timeout - 1), name)
            self.assertTrue(closed, name)
            sid = session_of_port(d, port)
            wait_for_log(d, r"session=%s timeout client=127\.0\.0\.1 waiting for a command" % sid)
            self.assertIn("reason=timeout", close_line(d, sid))

        for name in ("DATA at 100 B/s", "BDAT at 100 B/s"):
            port, data, elapsed, sent = res[name]
            self.assertRegex(data, rb"^421 4\.4\.2 \S+ Error: timeout exceeded\r\n$", name)
            # Not before the 10 s grace, and soon after it.
            self.assertGreaterEqual(elapsed, 9.5, "%s: %.1fs" % (name, elapsed))
            self.assertLess(elapsed, 12.5 * SLOW, "%s: %.1fs" % (name, elapsed))
            sid = session_of_port(d, port)
            wait_for_log(d, r"session=%s client=127\.0\.0\.1 data rate below min-data-rate %d "
                            r"bytes/s" % (sid, min_rate))
            wait_for_log(d, r"session=%s timeout client=127\.0\.0\.1 waiting for message data" % sid)
            wait_for_log(d, r'session=%s reject client=127\.0\.0\.1 command=TIMEOUT '
                            r'reply="421 4\.4\.2 ' % sid)

        port, data, elapsed, sent = res["DATA at 3000 B/s for 12 s"]
        self.assertRegex(data, rb"^250 2\.0\.0 Ok: queued as ", (elapsed, data))
        self.assertGreater(elapsed, 11.5)
        good_qid = queued_id(data)

        # The normal sessions on the same core were not held up.
        self.assertGreaterEqual(len(times), 8, times)
        worst = max(t for t, _ in times)
        self.assertLess(worst, 1.0 * SLOW, "a normal session took %.2fs: %r" % (worst, times))
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted([q for _, q in times] + [good_qid]))


if __name__ == "__main__":
    unittest.main()
