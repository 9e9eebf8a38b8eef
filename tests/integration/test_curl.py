"""curl's SMTP client against a real mxd.

curl sends an uploaded file as is (no line-ending conversion unless
--crlf), dot-stuffs lines that start with ".", and ends with CRLF "." CRLF,
adding a CRLF first when the file does not end with one (observed on the
wire)."""

import os
import shutil
import subprocess
import unittest

from mxharness import CRLF, MxdTestCase, queued_id, split_received

CURL = shutil.which("curl")


def curl_upload(port, path, rcpts, *extra):
    args = [CURL, "-sS", "-v", "smtp://127.0.0.1:%d/curl.example.org" % port,
            "--mail-from", "a@example.org"]
    for r in rcpts:
        args += ["--mail-rcpt", r]
    args += ["--upload-file", path] + list(extra)
    r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    return r.returncode, r.stderr.decode("utf-8", "replace")


@unittest.skipUnless(CURL, "curl not installed")
class CurlTest(MxdTestCase):

    def _file(self, name, data):
        p = os.path.join(self.tmp, name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def test_crlf_file_byte_identical(self):
        d = self.mxd()
        data = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: curl\r\n\r\n"
                b".one dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n" +
                b"".join(b"line %05d " % i + b"z" * (i % 900) + CRLF for i in range(3000)) +
                b"\xe2\x9c\x93 8-bit\r\n")
        rc, log = curl_upload(d.port, self._file("m.eml", data), ["b@example.com"])
        self.assertEqual(rc, 0, log[-3000:])
        self.assertRegex(log, r"< 250 2\.0\.0 Ok: queued as [0-9A-Fa-f]{16}")
        qid = queued_id(log)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        header, content = split_received(d.spool_cat(qid))
        self.assertReceived(header, qid=qid, helo="curl.example.org")
        self.assertEqual(content, data)

    def test_lf_file_with_crlf_option(self):
        d = self.mxd()
        data = b"Subject: lf\n\n.dot\nline\nno final newline"
        rc, log = curl_upload(d.port, self._file("lf.eml", data),
                              ["b@example.com", "c@example.org", "postmaster@example.com"],
                              "--crlf")
        self.assertEqual(rc, 0, log[-3000:])
        qid = queued_id(log)
        self.assertTrue(qid, log[-3000:])
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        content = split_received(d.spool_cat(qid))[1]
        self.assertEqual(content, data.replace(b"\n", CRLF) + CRLF)

    def test_relay_denied(self):
        d = self.mxd(accept_local=False)
        rc, log = curl_upload(d.port, self._file("x.eml", b"Subject: x\r\n\r\nx\r\n"),
                              ["someone@foreign.example"])
        self.assertNotEqual(rc, 0)
        self.assertRegex(log, r"< 554 5\.7\.1 ")
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [])


if __name__ == "__main__":
    unittest.main()
