"""The control socket and mxctl against a real mxd: every command, pause
and resume seen by SMTP clients, reload over the socket (a new limit for new
sessions only; a broken file kept out, its error printed as FILE:LINE:COL),
log-level, the session list with a plaintext and a STARTTLS session, the
socket's mode, and a control socket that cannot be hung: idle clients,
garbage, an over-long line, too many clients."""

import os
import re
import signal
import smtplib
import socket
import stat
import subprocess
import time

from mxharness import ROOT, SLOW, MxdTestCase, RawSmtp, make_config, queued_id
from tlsharness import (MAIL_NAME, TlsRawSmtp, TlsTestCase, cipher_key, client_context,
                        expected_tls_path)

MXCTL_BIN = os.environ.get("MXCTL_BIN", os.path.join(ROOT, "build/bin/mxctl"))


def sock_path(d):
    return os.path.join(d.spool, "mxd.sock")


def mxctl(*args, timeout=30):
    """(exit status, stdout, stderr) of a real mxctl."""
    r = subprocess.run([MXCTL_BIN] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout * SLOW)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def fields(text):
    """"name value..." lines → {name: "value..."}."""
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        out[name] = value
    return out


class Ctl:
    """A raw control-socket client: bytes exactly as the test writes them."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10 * SLOW)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """The lines up to and including the final one ("ok..." / "error ...")."""
        lines = []
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed after %r" % (lines, ))
                self.buf += chunk
                continue
            line, self.buf = self.buf[:i].decode("utf-8", "replace"), self.buf[i + 1:]
            lines.append(line)
            if not (line.startswith("ok-") or line.startswith("error-")):
                return lines

    def closed(self, timeout=5.0):
        self.sock.settimeout(timeout * SLOW)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


class MxctlTest(MxdTestCase):

    def test_status_stats_help_and_socket_file(self):
        d = self.mxd()
        path = sock_path(d)
        st = os.lstat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, oct(st.st_mode))

        # the harness's readiness probe may still be closing: wait it out
        deadline = time.monotonic() + 5 * SLOW
        while True:
            rc, out, err = mxctl("-s", path, "status")
            self.assertEqual(rc, 0, err)
            f = fields(out)
            if f["sessions"] == "0" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(int(f["pid"]), d.proc.pid)
        self.assertRegex(f["version"], r"^\d+\.\d+\.\d+ build \S+$")
        self.assertEqual(f["config"], d.config_path)
        self.assertEqual(f["generation"], "1")
        self.assertEqual(f["cores"], "2")
        self.assertEqual(f["paused"], "no")
        self.assertEqual(f["log-level"], "info")
        self.assertEqual(f["sessions"], "0")
        self.assertEqual(f["messages"], "0")
        self.assertGreaterEqual(int(f["uptime"]), 0)
        # -f: the path from the config (here the default, in the spool)
        rc, out2, err = mxctl("-f", d.config_path, "status")
        self.assertEqual(rc, 0, err)
        self.assertEqual(fields(out2)["pid"], f["pid"])

        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = c.send_message("a@example.org", ["b@example.com"], b"Subject: x\r\n\r\ny\r\n")
            self.assertEqual(r.code, 250, r)
            rc, out, err = mxctl("-s", path, "status")
            self.assertEqual(fields(out)["sessions"], "1")
            self.assertEqual(fields(out)["messages"], "1")
            c.cmd("QUIT")

        rc, out, err = mxctl("-s", path, "stats")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        for line in lines:
            self.assertRegex(line, r'^mxd_[a-z_]+(\{[a-z_]+="[^"]*"\})? [0-9.]+$')
        s = dict(line.rsplit(" ", 1) for line in lines)
        self.assertEqual(s["mxd_messages_accepted_total"], "1")
        self.assertEqual(s['mxd_connections_refused_total{reason="paused"}'], "0")
        self.assertIn('mxd_spool_batch_size_bucket{le="+Inf"}', s)

        rc, out, err = mxctl("-s", path, "help")
        self.assertEqual(rc, 0, err)
        for cmd in ("status", "stats", "pause", "resume", "reload", "log-level", "sessions"):
            self.assertRegex(out, r"(?m)^%s\b" % cmd)

        # usage and connection trouble: exit 2, the socket named
        rc, out, err = mxctl("-s", path, "frobnicate")
        self.assertEqual(rc, 2)
        self.assertIn('unknown command "frobnicate"', err)
        missing = os.path.join(self.tmp, "nothing.sock")
        rc, out, err = mxctl("-s", missing, "status")
        self.assertEqual(rc, 2)
        self.assertIn(missing, err)

        self.stop_ok(d)
        self.assertFalse(os.path.exists(path), "the socket file outlived mxd")

    def test_pause_and_resume(self):
        d = self.mxd()
        path = sock_path(d)
        # a session with a transaction under way, one idle after EHLO
        busy = RawSmtp(d.port)
        busy.connect_greeting()
        busy.ehlo()
        self.assertEqual(busy.cmd("MAIL FROM:<a@example.org>").code, 250)
        self.assertEqual(busy.cmd("RCPT TO:<b@example.com>").code, 250)
        idle = smtplib.SMTP("127.0.0.1", d.port, timeout=10 * SLOW)
        idle.ehlo("idle.example.org")

        rc, out, err = mxctl("-s", path, "pause")
        self.assertEqual((rc, out), (0, "paused\n"), err)
        self.assertEqual(fields(mxctl("-s", path, "status")[1])["paused"], "yes")
        self.assertEqual(mxctl("-s", path, "pause")[1], "already paused\n")

        # a new connection: 421 4.3.2 as its greeting, then closed
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            smtplib.SMTP("127.0.0.1", d.port, timeout=10 * SLOW)
        self.assertEqual(cm.exception.smtp_code, 421)
        self.assertRegex(cm.exception.smtp_error.decode(), r"^4\.3\.2 .*paused")
        with RawSmtp(d.port) as c:
            self.assertEnhanced(c.connect_greeting(), 421, "4.3.2")
            self.assertTrue(c.closed_by_peer())

        # the open session: 421 4.3.2 at its next MAIL FROM, then closed
        code, msg = idle.mail("a@example.org")
        self.assertEqual(code, 421)
        self.assertTrue(msg.startswith(b"4.3.2 "), msg)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            idle.noop()

        # the transaction under way finishes; the next one is refused
        self.assertEqual(busy.cmd("DATA").code, 354)
        busy.send(b"Subject: under way\r\n\r\nfinishes\r\n.\r\n")
        r = busy.reply()
        self.assertEqual(r.code, 250, r)
        qid = queued_id(r.text)
        self.assertEnhanced(busy.cmd("MAIL FROM:<a@example.org>"), 421, "4.3.2")
        self.assertTrue(busy.closed_by_peer())
        busy.close()

        s = dict(l.rsplit(" ", 1) for l in mxctl("-s", path, "stats")[1].splitlines())
        self.assertEqual(s['mxd_connections_refused_total{reason="paused"}'], "4")
        log = d.stderr_text()
        self.assertEqual(len(re.findall(r"reject client=127\.0\.0\.1 command=CONNECT "
                                        r"reply=\"421 4\.3\.2 ", log)), 2, log)
        self.assertEqual(len(re.findall(r"reject client=127\.0\.0\.1 command=MAIL "
                                        r"reply=\"421 4\.3\.2 ", log)), 2, log)

        rc, out, err = mxctl("-s", path, "resume")
        self.assertEqual((rc, out), (0, "resumed\n"), err)
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10 * SLOW) as c:
            c.ehlo("again.example.org")
            self.assertEqual(c.mail("a@example.org")[0], 250)
            self.assertEqual(c.rcpt("b@example.com")[0], 250)
            code, msg = c.data(b"Subject: after resume\r\n\r\nhello\r\n")
            self.assertEqual(code, 250, msg)
        self.stop_ok(d)
        self.assertEqual(len(d.spool_ids()), 2)
        self.assertIn(qid, d.spool_ids())

    def test_reload_over_the_socket(self):
        d = self.mxd()
        path = sock_path(d)
        old = RawSmtp(d.port)
        old.connect_greeting()
        self.assertIn("250-SIZE 36700160", old.ehlo().text)

        d.write_config(max_message_size="1M")
        rc, out, err = mxctl("-s", path, "reload")
        self.assertEqual((rc, out), (0, "generation 2\n"), err)
        self.assertEqual(fields(mxctl("-s", path, "status")[1])["generation"], "2")
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            self.assertIn("250-SIZE 1048576", c.ehlo().text)
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org> SIZE=2000000"), 552, "5.3.4")
        # the session opened before keeps the old limit
        self.assertEqual(old.cmd("MAIL FROM:<a@example.org> SIZE=2000000").code, 250)
        old.cmd("QUIT")
        old.close()

        # a broken file: refused, the errors printed, generation 2 kept
        good = d.config_text
        lines = good.count("\n")
        d.write_config(text=good + "frobnicate now\n")
        rc, out, err = mxctl("-s", path, "reload")
        self.assertEqual(rc, 1, out + err)
        self.assertIn('%s:%d:1: unknown directive "frobnicate"' % (d.config_path, lines + 1), err)
        self.assertIn("reload refused; generation 2 stays in use", err)
        self.assertTrue(d.running())
        self.assertEqual(fields(mxctl("-s", path, "status")[1])["generation"], "2")
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            self.assertIn("250-SIZE 1048576", c.ehlo().text)
        self.assertIn("reload refused", d.stderr_text())
        self.stop_ok(d)

    def test_log_level(self):
        d = self.mxd()
        path = sock_path(d)
        self.assertEqual(mxctl("-s", path, "log-level")[1], "log-level info\n")
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo("quiet.example.org")
        self.assertNotIn(" debug: ", d.stderr_text())

        rc, out, err = mxctl("-s", path, "log-level", "debug")
        self.assertEqual((rc, out), (0, "log-level debug (was info)\n"), err)
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo("loud.example.org")
            c.cmd("QUIT")
        deadline = time.monotonic() + 5 * SLOW
        while not re.search(r'debug: session=\S+ reply "250-%s Hello loud' % re.escape("mx.test.example"),
                            d.stderr_text()):
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)

        rc, out, err = mxctl("-s", path, "log-level", "warn")
        self.assertEqual(out, "log-level warn (was debug)\n")
        self.assertEqual(fields(mxctl("-s", path, "status")[1])["log-level"], "warn")
        rc, out, err = mxctl("-s", path, "log-level", "loud")
        self.assertEqual(rc, 2)
        self.assertIn("unknown log level", err)
        c = Ctl(path)
        c.send(b"log-level loud\n")
        self.assertEqual(c.reply(), ['error unknown log level "loud" (debug, info, warn or error)'])
        c.close()
        self.stop_ok(d)

    def test_the_socket_cannot_be_hung(self):
        d = self.mxd(start=False)
        ctl_path = os.path.join(d.workdir, "ctl.sock")
        d.write_config(text=d.config_text + 'control socket "%s" max-clients 2 timeout 2s\n'
                       % ctl_path)
        d.start()
        self.assertEqual(stat.S_IMODE(os.lstat(ctl_path).st_mode), 0o600)

        # one client connected and silent: another still gets answers
        quiet = Ctl(ctl_path)
        rc, out, err = mxctl("-s", ctl_path, "status")
        self.assertEqual(rc, 0, err)

        # garbage, then a command on the same connection; pipelined lines
        talk = Ctl(ctl_path)
        talk.send(b"\xff\xfe\x80 junk\r\n")
        self.assertEqual(talk.reply(), ['error unknown command "???" (try help)'])
        talk.send(b"status\x00\x1b[2J\n")
        self.assertEqual(talk.reply(), ["error the command holds a control character (try help)"])
        talk.send(b"log-level\nlog-level\n")
        self.assertEqual(talk.reply(), ["ok log-level info"])
        self.assertEqual(talk.reply(), ["ok log-level info"])
        talk.send(b"\n")
        self.assertEqual(talk.reply(), ["error empty command (try help)"])

        # max-clients 2: a third is told so and closed
        third = Ctl(ctl_path)
        self.assertEqual(third.reply(), ["error busy: 2 control clients already (max-clients)"])
        self.assertTrue(third.closed())
        third.close()

        # an over-long line: an error, then the close
        talk.send(b"x" * 600)
        self.assertEqual(talk.reply(), ["error line too long (at most 512 bytes)"])
        self.assertTrue(talk.closed())
        talk.close()

        # the silent client is dropped at the idle timeout (2 s)
        t0 = time.monotonic()
        self.assertTrue(quiet.closed(timeout=6))
        self.assertLess(time.monotonic() - t0, 5 * SLOW)
        quiet.close()

        # a client that half-closes still gets its replies
        half = Ctl(ctl_path)
        half.send(b"log-level\nhelp\n")
        half.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(half.reply(), ["ok log-level info"])
        self.assertEqual(half.reply()[-1], "ok")
        self.assertTrue(half.closed())
        half.close()

        # "quit" closes without a reply
        q = Ctl(ctl_path)
        q.send(b"quit\n")
        self.assertTrue(q.closed())
        self.assertEqual(q.buf, b"")
        q.close()
        self.assertEqual(mxctl("-s", ctl_path, "quit")[0], 0)

        rc, out, err = mxctl("-s", ctl_path, "status")
        self.assertEqual(rc, 0, err)
        self.assertTrue(d.running())
        self.stop_ok(d)
        self.assertFalse(os.path.exists(ctl_path))

    def test_stale_socket_replaced_other_files_not(self):
        d = self.mxd()
        path = sock_path(d)
        d.kill()                      # a crash leaves the socket file behind
        self.assertTrue(os.path.exists(path))
        d.start()
        rc, out, err = mxctl("-s", path, "status")
        self.assertEqual(rc, 0, err)
        self.assertEqual(int(fields(out)["pid"]), d.proc.pid)
        self.stop_ok(d)

        with open(path, "w") as f:   # not a socket: never clobbered
            f.write("keep me\n")
        d.start(wait=False)
        self.assertEqual(d.proc.wait(30 * SLOW), 1)
        d._close_log()
        self.assertIn("%s: exists and is not a socket" % path, d.stderr_text())
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")
        os.unlink(path)


class MxctlSessionsTest(TlsTestCase):

    def test_sessions_plaintext_and_starttls(self):
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME], [p],
                         rules=["accept from any for domain <domains>",
                                "accept from local for any"])
        path = sock_path(d)
        fresh = RawSmtp(d.port)
        fresh.connect_greeting()
        plain = RawSmtp(d.port)
        plain.connect_greeting()
        plain.ehlo()
        tls = TlsRawSmtp(d.port)
        tls.connect_greeting()
        tls.ehlo()
        self.assertEqual(tls.starttls(client_context(self.certs.ca())).code, 220)
        tls.ehlo()
        self.assertEqual(tls.cmd("MAIL FROM:<a@example.org>").code, 250)
        self.assertEqual(tls.cmd("RCPT TO:<b@example.com>").code, 250)
        data = RawSmtp(d.port)
        data.connect_greeting()
        data.ehlo()
        data.cmd("MAIL FROM:<a@example.org>")
        data.cmd("RCPT TO:<b@example.com>")
        self.assertEqual(data.cmd("DATA").code, 354)
        data.send(b"Subject: half\r\n")

        rc, out, err = mxctl("-s", path, "sessions")
        self.assertEqual(rc, 0, err)
        line_re = re.compile(r"^core=(\d+) session=([0-9A-F]{12}) client=127\.0\.0\.1:(\d+) "
                             r"state=(\S+) tls=(\S+) age=(\d+) bytes_in=(\d+)$")
        by_port = {}
        for line in out.splitlines():
            m = line_re.match(line)
            self.assertTrue(m, line)
            by_port[int(m.group(3))] = m.groups()
        port = lambda c: c.sock.getsockname()[1]
        ours = {port(fresh), port(plain), port(tls), port(data)}
        self.assertLessEqual(ours, set(by_port), out)
        for p_, line in by_port.items():  # the harness's readiness probe, at most
            self.assertTrue(p_ in ours or line[3] == "closing", out)
        self.assertEqual(by_port[port(fresh)][3:5], ("greeting", "none"))
        self.assertEqual(by_port[port(fresh)][6], "0")
        self.assertEqual(by_port[port(plain)][3:5], ("ehlo", "none"))
        self.assertEqual(by_port[port(data)][3:5], ("data", "none"))
        state, tls_field = by_port[port(tls)][3:5]
        self.assertEqual(state, "rcpt")
        version, cipher, where = tls_field.split("/")
        self.assertEqual(version, tls.sock.version())
        self.assertEqual(cipher_key(cipher), cipher_key(tls.sock.cipher()[0]))
        self.assertEqual(where, expected_tls_path())
        for c in (fresh, plain, tls, data):
            c.close()
        self.stop_ok(d)
