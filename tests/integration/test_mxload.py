"""mxload, the load generator, against a real mxd: a short correctness run.

Not a timing test. Each run must end with zero errors (mxload checks every
reply: 220 greeting, 250 EHLO, 220 STARTTLS, 250 MAIL/RCPT, 354 DATA, 250
after the data or BDAT LAST, 221 QUIT), and `mxspool list` must show
exactly the messages mxload counted as acknowledged — no more, no fewer.

MXLOAD_BIN overrides the binary (default: next to MXD_BIN, else
build/bin/mxload).
"""

import json
import os
import re
import subprocess
import unittest

from mxharness import (HOSTNAME, MXD_BIN, ROOT, SLOW, MxdTestCase, spool_cat, spool_ids,
                       spool_verify, strip_received)


def _mxload_bin():
    env = os.environ.get("MXLOAD_BIN")
    if env:
        return env if os.path.isabs(env) else os.path.join(ROOT, env)
    beside = os.path.join(os.path.dirname(MXD_BIN), "mxload")
    if os.path.exists(beside):
        return beside
    return os.path.join(ROOT, "build", "bin", "mxload")


MXLOAD = _mxload_bin()
MKCERT = os.path.join(ROOT, "tools", "mkcert")
PKI = "mail.example.com"
MSGID_RE = re.compile(rb"^Message-ID: <[0-9a-f]{16}\.[0-9a-f]{16}\.[0-9a-f]{4}@mxload\.invalid>\r\n")


@unittest.skipUnless(os.path.exists(MXLOAD), "mxload not built (tools/build)")
class MxloadTest(MxdTestCase):

    def start_mxd(self, tls=False):
        d = self.mxd(start=False)
        lines = []
        if tls:
            certdir = self.workdir("pki")
            subprocess.run([MKCERT, "--ecdsa", PKI, certdir], check=True,
                           stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            lines.append('pki %s cert "%s/%s.crt" key "%s/%s.key"'
                         % (PKI, certdir, PKI, certdir, PKI))
            lines.append("listen on 127.0.0.1 port %d tls pki %s" % (d.port, PKI))
        else:
            lines.append("listen on 127.0.0.1 port %d" % d.port)
        lines += [
            "table domains { example.com, example.org }",
            "accept from any for domain <domains>",
            'spool "%s"' % d.spool,
            "cores 2",
            "hostname %s" % HOSTNAME,
        ]
        d.write_config(text="\n".join(lines) + "\n")
        d.start()
        return d

    def mxload(self, port, *args, timeout=300):
        out = os.path.join(self.tmp, "mxload.%d.json" % len(os.listdir(self.tmp)))
        cmd = [MXLOAD, "--server", "127.0.0.1:%d" % port, "--quiet", "--json", out,
               "--timeout", str(30 * SLOW)] + list(args)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout * SLOW)
        text = r.stdout.decode("utf-8", "replace")
        self.assertTrue(os.path.exists(out), "mxload wrote no JSON (exit %d):\n%s"
                        % (r.returncode, text))
        with open(out) as f:
            res = json.load(f)
        self.assertEqual(res["errors"]["total"], 0, text)
        self.assertEqual(res["messages_failed"], 0, text)
        self.assertEqual(r.returncode, 0, text)
        return res, text

    def assert_spool(self, d, acknowledged):
        self.stop_ok(d)
        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, out[-3000:])
        ids = spool_ids(d.spool)
        self.assertEqual(len(ids), acknowledged, "messages in mxspool list")
        self.assertEqual(len(set(ids)), acknowledged, "duplicate ids in mxspool list")
        return ids

    def assert_content(self, d, ids, sizes):
        """A few spooled messages: one of the sizes sent once mxd's
        Received: is taken off, a Message-ID of their own first, and the
        lone-dot line and dot-led lines arrive unstuffed. (mxspool lists
        by core, then segment: a sample may fall on any phase's messages.)"""
        seen = set()
        for qid in ids[:: max(1, len(ids) // 5)][:5]:
            content = strip_received(spool_cat(d.spool, qid))
            self.assertIn(len(content), sizes, qid)
            m = MSGID_RE.match(content)
            self.assertTrue(m, content[:200])
            seen.add(m.group(0))
            lines = content.split(b"\r\n")
            self.assertIn(b".", lines, "the lone dot line")
            self.assertFalse([l for l in lines if l.startswith(b"..")], "a dot left doubled")
            self.assertTrue([l for l in lines if l.startswith(b".") and len(l) > 1])
            self.assertTrue(content.endswith(b"\r\n"))
        self.assertEqual(len(seen), min(5, len(ids[:: max(1, len(ids) // 5)][:5])))

    def test_plaintext_pipelining_on_off_and_bdat(self):
        d = self.start_mxd()
        total = 0
        res, text = self.mxload(d.port, "--connections", "20", "--messages", "3000",
                                "--pipelining", "on", "--rcpts", "2")
        self.assertEqual(res["messages_ok"], 3000, text)
        self.assertEqual(res["replies"].get("354"), 3000, text)
        self.assertEqual(res["replies"].get("250"), 3000 * 4 + res["connections_opened"], text)
        total += res["messages_ok"]
        res, text = self.mxload(d.port, "--connections", "10", "--messages", "1000",
                                "--pipelining", "off", "--per-conn", "7")
        self.assertEqual(res["messages_ok"], 1000, text)
        # each connection holds its 7 messages from the start: exactly ceil(1000 / 7)
        self.assertEqual(res["connections_opened"], 143, text)
        self.assertEqual(res["replies"].get("221"), res["connections_opened"], text)
        total += res["messages_ok"]
        res, text = self.mxload(d.port, "--connections", "10", "--messages", "2000", "--bdat")
        self.assertEqual(res["messages_ok"], 2000, text)
        self.assertNotIn("354", res["replies"], text)
        total += res["messages_ok"]
        # BDAT in several chunks, without pipelining: each chunk waits for its 250
        res, text = self.mxload(d.port, "--connections", "4", "--messages", "200", "--bdat",
                                "--pipelining", "off", "--size", "100k", "--bdat-chunk", "16k")
        self.assertEqual(res["messages_ok"], 200, text)
        self.assertEqual(res["replies"].get("250"), 200 * 9 + res["connections_opened"], text)
        total += res["messages_ok"]
        ids = self.assert_spool(d, total)
        self.assertEqual(total, 6200)
        self.assert_content(d, ids, (4096, 100 * 1024))

    def test_starttls(self):
        d = self.start_mxd(tls=True)
        res, text = self.mxload(d.port, "--connections", "10", "--messages", "2000",
                                "--starttls", "--per-conn", "50")
        self.assertEqual(res["messages_ok"], 2000, text)
        self.assertEqual(res["handshakes"], res["connections_opened"], text)
        self.assertEqual(res["handshakes"], 40, text)
        self.assertGreater(res["resumed"], 0, text)
        ids = self.assert_spool(d, res["messages_ok"])
        self.assert_content(d, ids, (4096,))

    def test_refusals_are_errors(self):
        # a recipient no rule accepts: 554 to every RCPT, counted as errors
        d = self.start_mxd()
        out = os.path.join(self.tmp, "refused.json")
        r = subprocess.run([MXLOAD, "--server", "127.0.0.1:%d" % d.port, "--quiet",
                            "--json", out, "--connections", "2", "--messages", "10",
                            "--to", "user%d@elsewhere.test", "--max-errors", "3"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60 * SLOW)
        text = r.stdout.decode("utf-8", "replace")
        self.assertNotEqual(r.returncode, 0, text)
        with open(out) as f:
            res = json.load(f)
        self.assertGreaterEqual(res["errors"]["reply"], 1, text)
        self.assertEqual(res["messages_ok"], 0, text)
        self.assertTrue(any("RCPT: expected 250, got: 554" in e for e in res["error_examples"]),
                        res["error_examples"])
        self.assert_spool(d, 0)


if __name__ == "__main__":
    unittest.main()
