"""Configuration checks (mxd -n), reload (SIGHUP), drain (SIGTERM) and
listeners (IPv6, several at once), against a real mxd."""

import os
import re
import signal
import socket
import subprocess
import time
import unittest

from mxharness import (MXD_BIN, SLOW, MxdTestCase, RawSmtp, free_port, ipv6_loopback_available,
                       make_config, queued_id, split_received, strip_received)


def check_config(path, cwd=None):
    r = subprocess.run([MXD_BIN, "-n", "-f", path], cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30 * SLOW)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


class ConfigCheckTest(MxdTestCase):

    def write(self, name, text):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def test_good_config(self):
        spool = os.path.join(self.tmp, "spool")
        text = make_config(2525, spool, extra=[
            "max-recipients 100",
            "max-connections 500",
            "max-connections-per-client 20",
            "max-errors 5",
            "max-line-length 1000",
            "bare-newlines reject",
            "timeout command 5m",
            "timeout data-init 2m",
            "timeout data-block 3m",
            "timeout data-term 10m",
            "timeout drain 30s",
            "relay lifetime 5d",
            "relay retry 1m..4h",
            "relay connections 4",
            "relay timeout connect 30s",
            "bounce relay via smtp://127.0.0.1:2526",
            'accept from any for domain relay.example relay via "lmtp://127.0.0.1:24", '
            "lmtp:/run/dovecot/lmtp",
        ])
        text = "# a comment\n\n" + text + "table rcpts { postmaster@example.com, abuse@example.com }\n"
        p = self.write("good.conf", text)
        rc, out = check_config(p)
        self.assertEqual(rc, 0, out)
        # The brief's minimal config, exactly.
        p = self.write("minimal.conf", "listen on 127.0.0.1 port 2525\n"
                       "table domains { example.com, example.org }\n"
                       "accept from any for domain <domains>\n"
                       "accept from local for any\n"
                       "max-message-size 35M\n"
                       'spool "%s"\n' % spool +
                       "cores 2\n")
        rc, out = check_config(p)
        self.assertEqual(rc, 0, out)

    def test_bad_configs_name_file_line_column(self):
        base = ["listen on 127.0.0.1 port 2525",
                "table domains { example.com, example.org }",
                "accept from any for domain <domains>",
                'spool "%s"' % os.path.join(self.tmp, "spool")]
        cases = [
            # (description, extra line appended as line 5, expected line)
            ("unknown directive", "frobnicate yes", 5),
            ("bad size unit", "max-message-size 12Q", 5),
            ("port out of range", "listen on 127.0.0.1 port 99999", 5),
            ("undefined table", "accept from any for domain <nosuch>", 5),
            ("bad duration", "timeout command 5x", 5),
            ("bad bare-newlines value", "bare-newlines maybe", 5),
            ("bad number", "max-recipients many", 5),
            ("bad cores", "cores -1", 5),
            ("bad listen address", "listen on 999.1.1.1 port 25", 5),
            ("bad next hop", "accept from any for any relay via smtp://mx.example.com", 5),
            ("bad relay retry", "relay retry 4h..1m", 5),
        ]
        for desc, line, lineno in cases:
            with self.subTest(desc):
                p = self.write("bad.conf", "\n".join(base + [line]) + "\n")
                rc, out = check_config(p)
                self.assertNotEqual(rc, 0, "%s accepted:\n%s" % (desc, out))
                m = re.search(r"^%s:(\d+):(\d+): \S.*$" % re.escape(p), out, re.M)
                self.assertTrue(m, "%s: no FILE:LINE:COL: message in:\n%s" % (desc, out))
                self.assertEqual(int(m.group(1)), lineno, out)
                self.assertGreaterEqual(int(m.group(2)), 1, out)
        # An unterminated table: the error is at or after its line.
        p = self.write("bad2.conf", "\n".join(base[:1]) + "\ntable t { a, b\n")
        rc, out = check_config(p)
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"%s:[23]:\d+: \S" % re.escape(p))
        # Several errors: each is reported.
        p = self.write("bad3.conf", "\n".join(base) + "\nbogus one\nmax-errors x\n")
        rc, out = check_config(p)
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"%s:5:\d+: \S" % re.escape(p))
        self.assertRegex(out, r"%s:6:\d+: \S" % re.escape(p))
        # A file that does not exist.
        rc, out = check_config(os.path.join(self.tmp, "nope.conf"))
        self.assertNotEqual(rc, 0)
        self.assertIn("nope.conf", out)

    def test_start_with_bad_config_fails(self):
        p = self.write("bad.conf", "listen on 127.0.0.1 port %d\nfrobnicate\n" % free_port())
        r = subprocess.run([MXD_BIN, "-f", p], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30 * SLOW)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stdout.decode("utf-8", "replace"), r"%s:2:\d+: \S" % re.escape(p))


class ReloadDrainListenTest(MxdTestCase):

    def test_sighup_reload(self):
        """An open session keeps working on the snapshot it started with;
        a changed limit applies to new sessions."""
        d = self.mxd(extra=["max-recipients 3"])
        old = RawSmtp(d.port)
        old.connect_greeting()
        old.ehlo()
        self.assertEqual(old.cmd("MAIL FROM:<a@example.org>").code, 250)

        d.write_config(extra=["max-recipients 5"])
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOW
        while True:
            with RawSmtp(d.port) as c:
                c.connect_greeting()
                c.ehlo()
                c.cmd("MAIL FROM:<a@example.org>")
                codes = [c.cmd("RCPT TO:<n%d@example.com>" % i).code for i in range(6)]
                c.cmd("QUIT")
            if codes == [250] * 5 + [452]:
                break
            self.assertEqual(codes, [250] * 3 + [452] * 3, "neither the old nor the new limit")
            self.assertLess(time.monotonic(), deadline, "reload never took effect")
            time.sleep(0.2)
        self.assertTrue(d.running())

        # The old session: still alive, still on max-recipients 3.
        for i in range(3):
            self.assertEqual(old.cmd("RCPT TO:<o%d@example.com>" % i).code, 250)
        self.assertEqual(old.cmd("RCPT TO:<o3@example.com>").code, 452)
        self.assertEqual(old.cmd("DATA").code, 354)
        old.send(b"Subject: across a reload\r\n\r\nstill here\r\n.\r\n")
        r = old.reply()
        self.assertEqual(r.code, 250, r)
        qid = queued_id(r.text)
        self.assertEqual(old.cmd("QUIT").code, 221)
        old.close()
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), b"Subject: across a reload\r\n\r\nstill here\r\n")

    def test_sighup_with_broken_config_keeps_running(self):
        d = self.mxd()
        good = d.config_text
        d.write_config(text=good + "frobnicate\n")
        d.signal(signal.SIGHUP)
        time.sleep(0.5 * SLOW)
        self.assertTrue(d.running(), "a bad reload must not kill mxd:\n" + d.stderr_text())
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = c.send_message("a@example.org", ["b@example.com"], b"x\r\n")
            self.assertEqual(r.code, 250, r)
        self.stop_ok(d)

    def test_sigterm_drains_transaction_in_progress(self):
        d = self.mxd(extra=["timeout drain 20s"])
        c = RawSmtp(d.port)
        c.connect_greeting()
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<b@example.com>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        first, second = b"Subject: drain\r\n\r\nfirst half\r\n", b"second half\r\n"
        c.send(first)
        time.sleep(0.3)
        d.signal(signal.SIGTERM)
        time.sleep(0.5 * SLOW)
        self.assertTrue(d.running(), "mxd exited without draining the open transaction")
        # No new sessions while draining: refused or told 421.
        try:
            with RawSmtp(d.port, timeout=3) as n:
                g = n.connect_greeting()
                self.assertEqual(g.code, 421, g)
        except (ConnectionError, OSError):
            pass
        c.send(second + b".\r\n")
        r = c.reply()
        self.assertEqual(r.code, 250, r)
        qid = queued_id(r.text)
        try:
            c.send(b"QUIT\r\n")
            r2 = c.reply()
            self.assertIn(r2.code, (221, 421), r2)
        except (ConnectionError, OSError):
            pass
        c.close()
        rc = d.proc.wait(30 * SLOW)
        self.assertEqual(rc, 0, d.stderr_text())
        self.assertIsNone(d.sanitizer_report())
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), first + second)

    def test_sigterm_idle_session_exits_zero(self):
        d = self.mxd(extra=["timeout drain 3s"])
        c = RawSmtp(d.port)
        c.connect_greeting()
        c.ehlo()
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rc = d.proc.wait(30 * SLOW)
        self.assertEqual(rc, 0, d.stderr_text())
        self.assertLess(time.monotonic() - t0, 10 * SLOW)
        # The idle client was told (421) or just closed.
        try:
            r = c.reply()
            self.assertEqual(r.code, 421, r)
        except (ConnectionError, OSError):
            pass
        c.close()

    @unittest.skipUnless(ipv6_loopback_available(), "no IPv6 loopback on this machine")
    def test_ipv6_listener(self):
        port = free_port(socket.AF_INET6, "::1")
        d = self.mxd(start=False, port=port, listen=["listen on ::1 port %d" % port])
        d.start(probe=[("::1", port)])
        with RawSmtp(port, host="::1") as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = c.send_message("a@example.org", ["b@example.com"], b"Subject: v6\r\n\r\nv6\r\n")
            self.assertEqual(r.code, 250, r)
            c.cmd("QUIT")
        self.stop_ok(d)
        header, content = split_received(d.spool_cat(qid))
        self.assertIn(b"::1", header)
        self.assertEqual(content, b"Subject: v6\r\n\r\nv6\r\n")

    def test_two_listeners(self):
        p1, p2 = free_port(), free_port()
        while p2 == p1:
            p2 = free_port()
        d = self.mxd(start=False, port=p1, listen=["listen on 127.0.0.1 port %d" % p1,
                                                   "listen on 127.0.0.1 port %d" % p2])
        d.ports = [p1, p2]
        d.start()
        qids = []
        for p in (p1, p2):
            with RawSmtp(p) as c:
                c.connect_greeting()
                c.ehlo()
                r, qid = c.send_message("a@example.org", ["b@example.com"],
                                        b"Subject: port %d\r\n\r\nx\r\n" % p)
                self.assertEqual(r.code, 250, r)
                qids.append(qid)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(qids))


if __name__ == "__main__":
    unittest.main()
