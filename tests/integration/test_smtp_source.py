"""Postfix's smtp-source load generator against a real mxd.

smtp-source -m is the total message count; -d keeps each of the -s sessions
open and sends its share of messages over it. "20 sessions x 10,000
messages" is therefore -d -s 20 -m 200000. MXD_SMTP_SOURCE_MESSAGES
overrides the total (tools/test lowers it for the slower ASan build).
"""

import os
import re
import shutil
import subprocess
import time
import unittest

from mxharness import (SLOW, MxdTestCase, mxspool, smtp_source_body, spool_verify,
                       split_received)

SMTP_SOURCE = shutil.which("smtp-source") or (
    "/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source") else None)

HEADERS_RE = re.compile(
    rb"^From: <sender@example\.org>\r\n"
    rb"To: <rcpt@example\.com>\r\n"
    rb"Date: [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \([A-Za-z0-9+-]+\)\r\n"
    rb"Message-Id: <[0-9a-f]+\.[0-9a-f]{4}\.[0-9a-f]{4,}@[^>\r\n]+>\r\n"
    rb"\r\n")


@unittest.skipUnless(SMTP_SOURCE, "Postfix smtp-source not installed (tools/deps installs postfix)")
class SmtpSourceTest(MxdTestCase):

    def run_source(self, port, args, timeout):
        t0 = time.monotonic()
        r = subprocess.run([SMTP_SOURCE] + args + ["-f", "sender@example.org",
                                                   "-t", "rcpt@example.com",
                                                   "127.0.0.1:%d" % port],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout * SLOW)
        return r.returncode, r.stdout.decode("utf-8", "replace"), time.monotonic() - t0

    def check_spool(self, d, total, length):
        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, out[-3000:])
        listing = mxspool(d.spool, "list").stdout.decode("utf-8", "replace").splitlines()
        ids = [l.split()[0].lower() for l in listing if re.match(r"^[0-9A-Fa-f]{16}\b", l)]
        self.assertEqual(len(ids), total, "messages in mxspool list")
        self.assertEqual(len(set(ids)), total, "duplicate ids in mxspool list")
        # Every message, through the Maildir export: headers as smtp-source
        # writes them, body byte for byte.
        out_dir = self.scratch_dir("maildir")
        mxspool(d.spool, "export", "--maildir", out_dir, timeout=900)
        new = os.path.join(out_dir, "new")
        names = os.listdir(new)
        self.assertEqual(len(names), total, "files in the Maildir export")
        body = smtp_source_body(length)
        bad = []
        for name in names:
            with open(os.path.join(new, name), "rb") as f:
                raw = f.read()
            header, content = split_received(raw)
            if b"\r\n" not in content:
                # A Maildir export that writes LF line ends: compare in CRLF.
                content = content.replace(b"\n", b"\r\n")
            m = HEADERS_RE.match(content)
            if not m or content[m.end():] != body:
                bad.append((name, content[:400]))
        # (smtp-source's Message-Ids are not unique across sessions, so
        # duplicates are caught by the exact count above instead.)
        self.assertEqual(bad[:3], [], "%d messages differ from what smtp-source sent" % len(bad))
        shutil.rmtree(out_dir, ignore_errors=True)

    def test_20_sessions_persistent(self):
        total = int(os.environ.get("MXD_SMTP_SOURCE_MESSAGES", "200000"))
        d = self.mxd()
        rc, out, secs = self.run_source(d.port, ["-d", "-s", "20", "-m", str(total), "-l", "1024"],
                                        timeout=900)
        self.assertEqual(rc, 0, out[-3000:])
        print("\n    smtp-source -d -s 20 -m %d -l 1024: %.1fs, %.0f msg/s"
              % (total, secs, total / secs), end=" ", flush=True)
        self.stop_ok(d)
        self.check_spool(d, total, 1024)

    def test_one_message_per_connection(self):
        total = 2000
        d = self.mxd()
        rc, out, secs = self.run_source(d.port, ["-s", "10", "-m", str(total), "-l", "300"],
                                        timeout=300)
        self.assertEqual(rc, 0, out[-3000:])
        self.stop_ok(d)
        self.check_spool(d, total, 300)


if __name__ == "__main__":
    unittest.main()
