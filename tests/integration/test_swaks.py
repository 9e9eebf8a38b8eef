"""swaks, the classic SMTP test client, against a real mxd.

swaks turns LF into CRLF, quotes leading dots and ends the data with
CRLF "." CRLF; when the data does not end with a newline it adds one.
(Observed on the wire; the expectations below follow from it.)
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import unittest

from mxharness import (CRLF, ROOT, MxdTestCase, mxspool, queued_id, spool_ids, split_received,
                       strip_received)

SWAKS = shutil.which("swaks")


def swaks(port, *args, timeout=120):
    r = subprocess.run([SWAKS, "--server", "127.0.0.1:%d" % port, "--helo", "swaks.example.org",
                        "--from", "sender@example.org"] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def swaks_sent_data(transcript):
    """The DATA content swaks sent, rebuilt from its ' -> ' transcript lines
    between DATA's 354 and the lone '.', dot-stuffing undone."""
    lines = transcript.splitlines()
    out = []
    state = 0
    for line in lines:
        if state == 0 and line.startswith("<-  354"):
            state = 1
        elif state == 1 and line.startswith(" -> "):
            text = line[4:]
            if text == ".":
                return ("".join(l + "\r\n" for l in out)).encode()
            if text.startswith("."):
                text = text[1:]
            out.append(text)
    raise AssertionError("no DATA content in swaks transcript:\n" + transcript)


@unittest.skipUnless(SWAKS, "swaks not installed (tools/deps installs it)")
class SwaksTest(MxdTestCase):

    def test_default_message(self):
        """The README's check: swaks --to postmaster@example.com gets 250
        and mxspool list shows the message."""
        d = self.mxd()
        rc, out = swaks(d.port, "--to", "postmaster@example.com")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"<-  250 2\.0\.0 Ok: queued as [0-9A-Fa-f]{16}")
        qid = queued_id(out)
        self.stop_ok(d)
        ids = d.spool_ids()
        self.assertEqual(ids, [qid])
        header, content = split_received(d.spool_cat(qid))
        self.assertReceived(header, qid=qid, helo="swaks.example.org")
        self.assertEqual(content, swaks_sent_data(out))
        self.assertIn(b"This is a test mailing", content)

    def test_dot_stuffing_and_long_body(self):
        d = self.mxd()
        rng = random.Random(7)
        lines = ["Subject: dots and a long body", "X-Test: swaks", ""]
        lines += [".", "..", "...", ".leading dot", "..two leading dots", " . not at start",
                  ".", "middle"]
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?-_=+()<>"
        for i in range(4000):
            n = rng.choice((0, 1, 10, 72, 78, 200, 998))
            text = "".join(rng.choice(alphabet) for _ in range(n))
            if i % 7 == 0:
                text = "." + text[1:] if text else "."
            lines.append(text)
        lines.append("the end, without a final newline")
        data = "\n".join(lines).encode()
        path = os.path.join(self.tmp, "data.txt")
        with open(path, "wb") as f:
            f.write(data)
        rc, out = swaks(d.port, "--to", "user@example.com", "--data", "@" + path,
                        "--hide-all")
        self.assertEqual(rc, 0, out)
        rc, out = swaks(d.port, "--to", "user@example.com", "--data", "@" + path)
        self.assertEqual(rc, 0, out[-2000:])
        qid = queued_id(out)
        self.assertTrue(qid, out[-2000:])
        self.stop_ok(d)
        ids = d.spool_ids()
        self.assertEqual(len(ids), 2)
        self.assertIn(qid, ids)
        expected = data.replace(b"\n", CRLF) + CRLF
        self.assertGreater(len(expected), 200000)
        for i in ids:
            self.assertEqual(strip_received(d.spool_cat(i)), expected)

    def test_pipelining(self):
        d = self.mxd()
        rc, out = swaks(d.port, "--pipeline", "--to", "a@example.com,b@example.org,c@example.com",
                        "--body", "pipelined body\n.dot\n")
        self.assertEqual(rc, 0, out)
        # swaks pipelines MAIL, the RCPTs and DATA, then reads their replies.
        self.assertRegex(out, r" -> MAIL FROM:<sender@example.org>\n -> RCPT TO:<a@example.com>\n"
                              r" -> RCPT TO:<b@example.org>\n -> RCPT TO:<c@example.com>\n -> DATA\n")
        self.assertRegex(out, r"<-  250 2\.0\.0 Ok: queued as [0-9A-Fa-f]{16}")
        qid = queued_id(out)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        line = [l for l in mxspool(d.spool, "list").stdout.decode().splitlines()
                if l.lower().startswith(qid)][0]
        for r in ("a@example.com", "b@example.org", "c@example.com", "sender@example.org"):
            self.assertIn(r, line)
        self.assertEqual(strip_received(d.spool_cat(qid)), swaks_sent_data(out))

    def test_relay_denied(self):
        """Without 'accept from local', a foreign recipient is refused even
        from 127.0.0.1; our domains still are accepted."""
        d = self.mxd(accept_local=False)
        rc, out = swaks(d.port, "--to", "someone@foreign.example")
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"<\*\* +554 5\.7\.1 ")
        self.assertNotIn("queued as", out)
        rc, out = swaks(d.port, "--to", "postmaster@example.org")
        self.assertEqual(rc, 0, out)
        qid = queued_id(out)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])

    @unittest.skipIf(os.environ.get("MXD_SKIP_TOOLS_RUN"), "tools/run is checked in the normal pass")
    def test_readme_tools_run(self):
        """The README's first command, as a user runs it: tools/run in the
        foreground on conf/mxd.conf, swaks to 127.0.0.1:2525, mxspool list."""
        if not os.path.exists(os.path.join(ROOT, "conf", "mxd.conf")):
            self.fail("conf/mxd.conf missing")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 2525))
            except OSError:
                if os.environ.get("CI"):
                    raise
                self.skipTest("port 2525 is in use (is tools/run already running?)")
        spool = os.path.join(ROOT, "var", "spool")
        log = open(os.path.join(self.tmp, "tools-run.log"), "wb")
        proc = subprocess.Popen([os.path.join(ROOT, "tools", "run")], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                self.assertIsNone(proc.poll(), open(log.name, errors="replace").read()[-4000:])
                try:
                    socket.create_connection(("127.0.0.1", 2525), timeout=1).close()
                    break
                except OSError:
                    self.assertLess(time.monotonic(), deadline, "tools/run never listened on 2525")
                    time.sleep(0.2)
            rc, out = swaks(2525, "--to", "postmaster@example.com")
            self.assertEqual(rc, 0, out)
            qid = queued_id(out)
            self.assertTrue(qid, out)
            # STARTTLS works out of the box with the dev certificate
            rc, out = swaks(2525, "--tls", "--to", "postmaster@example.com")
            self.assertEqual(rc, 0, out)
            self.assertIn("TLS started", out)
            tls_qid = queued_id(out)
            self.assertTrue(tls_qid, out)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            log.close()
        self.assertEqual(rc, 0, open(log.name, errors="replace").read()[-4000:])
        self.assertIn(qid, spool_ids(spool))
        self.assertIn(tls_qid, spool_ids(spool))


if __name__ == "__main__":
    unittest.main()
