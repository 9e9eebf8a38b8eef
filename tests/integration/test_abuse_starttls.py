"""STARTTLS abuse (the classes of the USENIX Security 2021 "NO STARTTLS"
study) against the real mxd, beyond what test_tls_security.py covers
(injection of RSET / MAIL / EHLO+MAIL+RCPT in the STARTTLS segment,
plain text and NULs for a ClientHello, an untrusted certificate, a
truncated fake ClientHello, STARTTLS with an argument):

- a whole transaction pipelined behind STARTTLS in the same segment is
  discarded, and mxd logs how many bytes it dropped;
- commands sent in a later segment, after the 220 and before the
  ClientHello, are fed to the TLS handshake as garbage: the handshake
  fails, the session is closed, nothing is executed;
- STARTTLS twice (pipelined: the second is dropped; inside TLS: 503 5.5.1)
  and STARTTLS inside a transaction (503 5.5.1, the transaction intact);
- a ClientHello on the plaintext port: 500 5.5.2 per line of it, then
  421 4.7.0 at max-errors; a real TLS client there just fails;
- a handshake that stalls halfway (or trickles a byte at a time, or never
  starts) is closed by the command timeout, without a plaintext reply;
- garbage instead of a ClientHello (HTTP, SSLv2, an oversized or
  malformed record, an alert, random bytes) is refused at once;
- a client that closes or resets mid-handshake;

and after each, mxd still delivers a normal STARTTLS session, stays up,
and exits 0 on SIGTERM.
"""

import os
import socket
import ssl
import struct
import threading
import time
import unittest

from mxharness import SLOW, mxspool, queued_id, split_received, strip_received
from tlsharness import (HANDSHAKE_FAILED, MAIL_NAME, OPENSSL, TlsRawSmtp, TlsTestCase,
                        client_context, close_line, log_lines, session_of_port, wait_for_log)

TIMEOUT_S = 2  # `timeout command` for the stall tests


def client_hello(tls13=True):
    """The bytes of a real ClientHello (Python's ssl through memory BIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=MAIL_NAME)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello, obj, inc, out


def nothing_pending(c, wait=0.3):
    """No byte arrives within wait seconds and none is buffered."""
    if c.buf:
        return False
    c.sock.settimeout(wait)
    try:
        data = c.sock.recv(65536)
    except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
        return True
    finally:
        c.sock.settimeout(20 * SLOW)
    if data:
        c.buf += data
        return False
    return True


def read_until_closed(sock, timeout):
    """Everything the server sends until it closes; (bytes, closed, seconds)."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True, time.monotonic() - t0
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data, True, time.monotonic() - t0
    except (socket.timeout, TimeoutError):
        return data, False, time.monotonic() - t0


def rst_close(sock):
    """Close with a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@unittest.skipUnless(OPENSSL, "openssl not installed")
class StarttlsAbuseTest(TlsTestCase):

    def abuse_mxd(self, extra=(), smtps=False, plain=False):
        """A STARTTLS listener (d.ports[0]), optionally an smtps one and a
        plaintext one after it."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        listeners = ["tls pki %s" % MAIL_NAME]
        if smtps:
            listeners.append("smtps pki %s" % MAIL_NAME)
        if plain:
            listeners.append("")
        return self.tls_mxd(listeners, [p], rules=["accept from any for domain <domains>"],
                            extra=list(extra))

    def ctx(self):
        return client_context(self.certs.ca())

    def assert_serves(self, d, tag):
        """A complete STARTTLS session delivers; returns (qid, content)."""
        content = b"Subject: still serving after %s\r\n\r\nok\r\n" % tag.encode()
        with TlsRawSmtp(d.ports[0]) as c:
            self.assertEqual(c.connect_greeting().code, 220)
            c.ehlo()
            self.assertEqual(c.starttls(self.ctx(), server_hostname=MAIL_NAME).code, 220)
            c.ehlo("tls-client.example.org")
            r, qid = c.send_message("good@example.org", ["user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            self.assertEnhanced(c.cmd("QUIT"), 221)
        self.assertTrue(d.running(), "mxd died after %s" % tag)
        return qid, content

    def session_lines(self, d, sid):
        return [l for l in log_lines(d) if "session=%s " % sid in l]

    def assert_nothing_executed(self, d, sid):
        """No log line of the session names what the injected commands held."""
        for line in self.session_lines(d, sid):
            self.assertNotIn("evil", line)
            self.assertNotIn("victim", line)

    # -- pipelined behind STARTTLS ------------------------------------------
    def test_pipelined_transaction_same_segment_discarded_and_logged(self):
        """STARTTLS and a whole transaction (MAIL, RCPT, DATA, content,
        QUIT) in one segment: one 220, the rest is dropped and logged as
        "discarded N bytes pipelined after STARTTLS" with the exact N;
        the handshake works and the TLS session starts afresh."""
        d = self.abuse_mxd()
        injected = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\n"
                    b"DATA\r\nSubject: injected\r\n\r\nevil\r\n.\r\nQUIT\r\n")
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            c.send(b"STARTTLS\r\n" + injected)
            self.assertEnhanced(c.reply(), 220, "2.0.0")
            self.assertTrue(nothing_pending(c), "plaintext after the 220: %r" % c.buf)
            c.sock = self.ctx().wrap_socket(c.sock, server_hostname=MAIL_NAME)
            self.assertTrue(nothing_pending(c), "unsolicited bytes inside TLS: %r" % c.buf)
            # RFC 3207 4.2: no EHLO from before survives, no MAIL either.
            self.assertEnhanced(c.cmd("MAIL FROM:<good@example.org>"), 503, "5.5.1")
            c.ehlo("tls-client.example.org")
            content = b"Subject: after STARTTLS\r\n\r\nclean\r\n"
            r, qid = c.send_message("good@example.org", ["user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            self.assertEnhanced(c.cmd("QUIT"), 221)
        sid = session_of_port(d, port)
        wait_for_log(d, r"session=%s discarded %d bytes pipelined after STARTTLS\b"
                     % (sid, len(injected)))
        self.assert_nothing_executed(d, sid)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), content)
        show = mxspool(d.spool, "show", qid).stdout.decode()
        self.assertIn("mail-from: <good@example.org>", show)
        self.assertNotIn("victim", show)

    def test_commands_in_later_segment_before_client_hello(self):
        """After the 220, plaintext commands in their own segment, then a
        real handshake: the commands are the first bytes the TLS layer
        sees, so the handshake fails and the session is closed. No reply
        in plaintext, nothing executed, the failure logged. Also with the
        commands sent right after STARTTLS without waiting for its 220."""
        d = self.abuse_mxd()
        evil = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
        for wait_for_220 in (True, False):
            with TlsRawSmtp(d.ports[0]) as c:
                c.connect_greeting()
                c.ehlo()
                port = c.sock.getsockname()[1]
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.send(b"STARTTLS\r\n")
                if wait_for_220:
                    self.assertEnhanced(c.reply(), 220, "2.0.0")
                else:
                    time.sleep(0.05)  # its own segment, but no reading first
                c.send(evil)
                time.sleep(0.05)
                if not wait_for_220:
                    self.assertEnhanced(c.reply(), 220, "2.0.0")
                # The commands already failed the handshake: at most a TLS
                # alert came back, never a plaintext reply.
                if c.buf:
                    self.assertEqual(c.buf[:3], b"\x15\x03\x01", c.buf)
                    self.assertEqual(len(c.buf), 7, c.buf)
                with self.assertRaises((ssl.SSLError, OSError)):
                    tls = self.ctx().wrap_socket(c.sock, server_hostname=MAIL_NAME)
                    tls.sendall(b"EHLO x\r\n")
                    tls.recv(1024)
            sid = session_of_port(d, port)
            wait_for_log(d, r"session=%s .*%s" % (sid, HANDSHAKE_FAILED))
            line = close_line(d, sid)
            self.assertIn("reason=tls error", line)
            self.assertIn("tls_path=none", line)
            self.assert_nothing_executed(d, sid)
            self.assertEqual(len(d.spool_ids()), 0)
            for l in self.session_lines(d, sid):
                self.assertNotRegex(l, r"command=(MAIL|RCPT|DATA)\b", l)
        qid, _ = self.assert_serves(d, "commands before the ClientHello")
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])

    # -- STARTTLS where it does not belong ----------------------------------
    def test_starttls_twice(self):
        """STARTTLS pipelined twice: one 220, the second is dropped (logged,
        10 bytes) and the handshake works. STARTTLS inside TLS: 503 5.5.1
        "TLS already active", the session goes on and delivers."""
        d = self.abuse_mxd()
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            c.send(b"STARTTLS\r\nSTARTTLS\r\n")
            self.assertEnhanced(c.reply(), 220, "2.0.0")
            self.assertTrue(nothing_pending(c), c.buf)
            c.sock = self.ctx().wrap_socket(c.sock, server_hostname=MAIL_NAME)
            self.assertTrue(nothing_pending(c), c.buf)
            c.ehlo("tls-client.example.org")
            r = c.cmd("STARTTLS")
            self.assertEnhanced(r, 503, "5.5.1")
            self.assertIn("TLS already active", r.text)
            # Twice more, pipelined with a NOOP: each answered, in order.
            c.send(b"STARTTLS\r\nNOOP\r\nSTARTTLS\r\n")
            self.assertEqual([c.reply().code for _ in range(3)], [503, 250, 503])
            content = b"Subject: twice\r\n\r\nok\r\n"
            r, qid = c.send_message("good@example.org", ["user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            self.assertEnhanced(c.cmd("QUIT"), 221)
        sid = session_of_port(d, port)
        wait_for_log(d, r"session=%s discarded 10 bytes pipelined after STARTTLS\b" % sid)
        wait_for_log(d, r'session=%s reject client=127\.0\.0\.1 command=STARTTLS '
                        r'reply="503 5\.5\.1 Error: TLS already active"' % sid, count=3)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        header, got = split_received(d.spool_cat(qid))
        self.assertEqual(got, content)
        self.assertIn(b"ESMTPS", header)

    def test_starttls_inside_transaction(self):
        """STARTTLS after MAIL (and after RCPT, and pipelined behind MAIL):
        503 5.5.1, no handshake, and the transaction goes on intact in
        plaintext. After the transaction STARTTLS works."""
        d = self.abuse_mxd()
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            self.assertEnhanced(c.cmd("MAIL FROM:<plain@example.org>"), 250)
            r = c.cmd("STARTTLS")
            self.assertEnhanced(r, 503, "5.5.1")
            self.assertIn("not allowed during a mail transaction", r.text)
            self.assertEnhanced(c.cmd("RCPT TO:<user@example.com>"), 250)
            self.assertEnhanced(c.cmd("STARTTLS"), 503, "5.5.1")
            self.assertEqual(c.cmd("DATA").code, 354)
            content = b"Subject: plaintext transaction\r\n\r\nstill plain\r\n"
            c.send(content + b".\r\n")
            r = c.reply()
            self.assertEnhanced(r, 250, "2.0.0")
            qid1 = queued_id(r.text)
            # Pipelined: MAIL then STARTTLS in one segment.
            c.send(b"MAIL FROM:<plain2@example.org>\r\nSTARTTLS\r\n")
            self.assertEnhanced(c.reply(), 250)
            self.assertEnhanced(c.reply(), 503, "5.5.1")
            self.assertTrue(nothing_pending(c), c.buf)
            self.assertEnhanced(c.cmd("RSET"), 250)
            # Out of the transaction, STARTTLS is fine.
            self.assertEqual(c.starttls(self.ctx(), server_hostname=MAIL_NAME).code, 220)
            c.ehlo("tls-client.example.org")
            r, qid2 = c.send_message("tls@example.org", ["user@example.com"],
                                     b"Subject: tls\r\n\r\nencrypted\r\n")
            self.assertEnhanced(r, 250, "2.0.0")
            self.assertEnhanced(c.cmd("QUIT"), 221)
        sid = session_of_port(d, port)
        wait_for_log(d, r'session=%s reject client=127\.0\.0\.1 command=STARTTLS reply="503 5\.5\.1 '
                        r'Error: STARTTLS not allowed during a mail transaction"' % sid, count=3)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted([qid1, qid2]))
        h1, got1 = split_received(d.spool_cat(qid1))
        self.assertEqual(got1, content)
        self.assertRegex(h1.decode(), r"\bwith ESMTP\b")
        self.assertNotIn(b"ESMTPS", h1)
        h2, _ = split_received(d.spool_cat(qid2))
        self.assertIn(b"ESMTPS", h2)
        show = mxspool(d.spool, "show", qid1).stdout.decode()
        self.assertIn("mail-from: <plain@example.org>", show)

    def test_client_hello_on_plaintext_port(self):
        """A TLS client on a plaintext port (the STARTTLS one and one
        without TLS): Python's ssl fails on our 220; raw ClientHellos are
        garbage commands, 500 5.5.2 for each line of them, then 421 4.7.0
        when max-errors (3) is reached, and the session is closed."""
        d = self.abuse_mxd(extra=["max-errors 3"], plain=True)
        for port in d.ports:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
            with self.assertRaises(ssl.SSLError):
                self.ctx().wrap_socket(raw, server_hostname=MAIL_NAME)
            raw.close()
            with TlsRawSmtp(port) as c:
                self.assertEqual(c.connect_greeting().code, 220)
                hello = client_hello()[0]
                replies = []
                for _ in range(10):
                    try:
                        c.send(hello + b"\r\n")
                    except OSError:
                        break
                    data, closed, _ = read_until_closed(c.sock, 0.3 * SLOW)
                    c.buf += data
                    if closed:
                        break
                self.assertTrue(c.closed_by_peer(5), "not closed at max-errors")
                while c.buf:
                    replies.append(c.reply())
                codes = [(r.code, r.last[4:9]) for r in replies]
                self.assertEqual(codes, [(500, "5.5.2")] * 3 + [(421, "4.7.0")], replies)
                self.assertIn("too many errors", replies[-1].text)
        for tag in ("STARTTLS port", "plaintext port"):
            self.assert_serves(d, "a ClientHello on the " + tag)
        self.stop_ok(d)

    # -- broken handshakes ---------------------------------------------------
    def test_handshake_stalls(self):
        """`timeout command 2s`: after STARTTLS, half a ClientHello then
        nothing; only a record header; nothing at all; a ClientHello
        trickled a byte every 0.5 s; and half a ClientHello on smtps. Each
        is closed by the command timeout (within about 2-3 s, the last even
        though bytes keep coming), with no plaintext reply, and logged."""
        d = self.abuse_mxd(extra=["timeout command %ds" % TIMEOUT_S], smtps=True)
        hello = client_hello()[0]
        cases = {
            "half ClientHello": (0, [hello[:len(hello) // 2]], 0),
            "record header only": (0, [hello[:5]], 0),
            "nothing after STARTTLS": (0, [], 0),
            "trickled ClientHello": (0, [hello[i:i + 1] for i in range(len(hello))], 0.5),
            "half ClientHello on smtps": (1, [hello[:len(hello) // 2]], 0),
        }
        results = {}

        def run(name):
            which, parts, gap = cases[name]
            c = TlsRawSmtp(d.ports[which], timeout=30)
            try:
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                port = c.sock.getsockname()[1]
                if which == 0:
                    c.connect_greeting()
                    c.ehlo()
                    if c.cmd("STARTTLS").code != 220:
                        raise AssertionError("no 220 to STARTTLS")
                t0 = time.monotonic()
                cut = None
                for p in parts:
                    try:
                        c.send(p)
                    except OSError:
                        cut = time.monotonic() - t0
                        break
                    if gap:
                        time.sleep(gap)
                data, closed, waited = read_until_closed(c.sock, 15 * SLOW)
                results[name] = (port, data + c.buf, closed, cut or (time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001
                results[name] = e
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(n,)) for n in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in cases:
            res = results[name]
            self.assertNotIsInstance(res, Exception, "%s: %r" % (name, res))
            port, data, closed, elapsed = res
            self.assertTrue(closed, "%s: still open" % name)
            self.assertEqual(data, b"", "%s: plaintext inside a handshake: %r" % (name, data))
            self.assertGreater(elapsed, TIMEOUT_S - 0.5, "%s: closed before the timeout" % name)
            self.assertLess(elapsed, (TIMEOUT_S + 2.5) * SLOW, "%s: took %.1fs" % (name, elapsed))
            sid = session_of_port(d, port)
            wait_for_log(d, r"session=%s timeout client=127\.0\.0\.1 waiting for a command" % sid)
            self.assertIn("reason=timeout", close_line(d, sid))
        self.assert_serves(d, "stalled handshakes")
        self.stop_ok(d)

    def test_garbage_instead_of_client_hello(self):
        """Not a ClientHello after STARTTLS (and on smtps): each is refused
        at once (long before the 30 s command timeout), logged as a failed
        handshake, answered with nothing but perhaps a TLS alert."""
        d = self.abuse_mxd(extra=["timeout command 30s"], smtps=True)
        hello = client_hello()[0]
        body = hello[5:]
        garbage = {
            "SMTP commands": b"EHLO x\r\nMAIL FROM:<evil@attacker.example>\r\n",
            "SSLv2 hello": bytes([0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10])
                           + os.urandom(0x15) + os.urandom(16),
            "record longer than TLS allows": b"\x16\x03\x01\xff\xff" + os.urandom(200),
            # random type and body, but a length that ends the message in
            # this record: a longer one would be a legal start of a
            # fragmented message, which a server rightly waits for
            "handshake record of random bytes": b"\x16\x03\x01\x00\x80" + os.urandom(1)
                                                + b"\x00\x00\x7c" + os.urandom(0x7c),
            "ClientHello with a wrong inner length":
                b"\x16\x03\x01" + struct.pack(">H", len(body)) + b"\x01\xff\xff\xff" + body[4:],
            "alert first": b"\x15\x03\x03\x00\x02\x02\x28",
            "ChangeCipherSpec first": b"\x14\x03\x03\x00\x01\x01" + hello,
            "application data first": b"\x17\x03\x03\x00\x20" + os.urandom(32),
            "40 empty handshake records": b"\x16\x03\x01\x00\x00" * 40 + hello,
            "64 KB of random bytes": b"\x16\x03\x01\x40\x00" + os.urandom(65536),
        }
        jobs = [(n, 0) for n in garbage] + [(n, 1) for n in ("SMTP commands", "alert first",
                                                               "64 KB of random bytes")]
        results = {}

        def run(job):
            name, which = job
            c = TlsRawSmtp(d.ports[which], timeout=30)
            try:
                port = c.sock.getsockname()[1]
                if which == 0:
                    c.connect_greeting()
                    c.ehlo()
                    if c.cmd("STARTTLS").code != 220:
                        raise AssertionError("no 220")
                t0 = time.monotonic()
                try:
                    c.send(garbage[name])
                except OSError:
                    pass
                data, closed, _ = read_until_closed(c.sock, 10 * SLOW)
                results[job] = (port, data + c.buf, closed, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001
                results[job] = e
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for job in jobs:
            res = results[job]
            self.assertNotIsInstance(res, Exception, "%s: %r" % (job, res))
            port, data, closed, elapsed = res
            self.assertTrue(closed, "%s: not closed" % (job,))
            self.assertLess(elapsed, 8 * SLOW, "%s: closed only after %.1fs" % (job, elapsed))
            # Nothing in plaintext: at most a TLS alert record.
            if data:
                self.assertEqual(data[:1], b"\x15", "%s: %r" % (job, data[:80]))
                self.assertNotIn(b"250", data)
            sid = session_of_port(d, port)
            wait_for_log(d, r"session=%s client=127\.0\.0\.1 %s" % (sid, HANDSHAKE_FAILED))
            line = close_line(d, sid)
            self.assertIn("reason=tls error", line)
            self.assertIn("tls_path=none", line)
        self.assert_serves(d, "garbage handshakes")
        self.stop_ok(d)

    def test_plaintext_with_plausible_record_length_refused_at_once(self):
        """An HTTP request, or DATA, where the ClientHello should be: the
        handshake fails at once, not when the command timeout fires."""
        d = self.abuse_mxd(extra=["timeout command 30s"], smtps=True)
        cases = [(0, b"GET / HTTP/1.1\r\nHost: mail.example.com\r\n\r\n"),
                 (0, b"DATA\r\nSubject: x\r\n\r\n.\r\n"),
                 (1, b"GET / HTTP/1.1\r\nHost: mail.example.com\r\n\r\n")]
        for which, payload in cases:
            with TlsRawSmtp(d.ports[which], timeout=30) as c:
                port = c.sock.getsockname()[1]
                if which == 0:
                    c.connect_greeting()
                    c.ehlo()
                    self.assertEqual(c.cmd("STARTTLS").code, 220)
                c.send(payload)
                # Refusing it takes no time: 2 s is plenty, even under ASan.
                data, closed, elapsed = read_until_closed(c.sock, 2.0)
                self.assertTrue(closed, "%r after STARTTLS: still open after %.1fs"
                                % (payload[:16], elapsed))
            wait_for_log(d, r"session=%s client=127\.0\.0\.1 %s"
                         % (session_of_port(d, port), HANDSHAKE_FAILED))
        self.stop_ok(d)

    def test_client_closes_mid_handshake(self):
        """A real client that sends its ClientHello, reads (part of) our
        answer and then closes (FIN) or resets (RST); one that resets after
        half a ClientHello; on STARTTLS and smtps, TLS 1.3 and 1.2. Each
        session ends at once (not by a timeout), and mxd serves on."""
        d = self.abuse_mxd(extra=["timeout command 30s"], smtps=True)
        jobs = []
        for which in (0, 1):
            for tls13 in (True, False):
                for how in ("fin after server flight", "rst after server flight",
                            "rst after 10 bytes of it", "rst after half ClientHello"):
                    jobs.append((which, tls13, how))
        ports = {}
        for job in jobs:
            which, tls13, how = job
            hello = client_hello(tls13)[0]
            c = TlsRawSmtp(d.ports[which], timeout=10)
            ports[job] = c.sock.getsockname()[1]
            if which == 0:
                c.connect_greeting()
                c.ehlo()
                self.assertEqual(c.cmd("STARTTLS").code, 220)
            if how == "rst after half ClientHello":
                c.send(hello[:len(hello) // 2])
                time.sleep(0.05)
                rst_close(c.sock)
                continue
            c.send(hello)
            first = c.sock.recv(10 if "10 bytes" in how else 65536)
            self.assertEqual(first[:1], b"\x16", "%s: server did not answer a handshake: %r"
                             % (job, first[:40]))
            if how.startswith("fin"):
                c.sock.close()
            else:
                rst_close(c.sock)
        t0 = time.monotonic()
        for job in jobs:
            sid = session_of_port(d, ports[job])
            line = close_line(d, sid)
            self.assertNotIn("reason=timeout", line, job)
            self.assertIn("tls_path=none", line, job)
            self.assertNotIn(" tls established ", "\n".join(self.session_lines(d, sid)), job)
        self.assertLess(time.monotonic() - t0, 10 * SLOW)
        self.assert_serves(d, "vanishing clients")
        self.stop_ok(d)


if __name__ == "__main__":
    unittest.main()
