"""Real TLS clients against a real mxd: STARTTLS (RFC 3207) and implicit
TLS (RFC 8314).

Python smtplib (starttls() and SMTP_SSL), swaks --tls and --tlsc, curl
--ssl-reqd smtp:// and smtps://, and openssl s_client -starttls smtp with
-tls1_2 and -tls1_3 each deliver a message; every message must be in the
spool byte for byte after mxd's Received: header, and that header must say
ESMTPS and the TLS version (and cipher) the client itself negotiated. mxd's
close line for each delivering session must name the TLS path `ktls auto`
picks on this kernel (userspace here: no kTLS). ECDSA P-256, RSA-2048 and
the seed's 4096-bit RSA key (starttls(8)'s recipe, pki split over two
lines) all serve handshakes.
"""

import os
import random
import re
import select
import shutil
import smtplib
import ssl
import subprocess
import time
import unittest

from mxharness import CRLF, SLOW, dot_stuff, mxspool, queued_id, smtplib_expected
from tlsharness import (MAIL_NAME, OPENSSL, TlsRawSmtp, TlsTestCase, client_context,
                        expected_tls_path, startup_tls_path, wait_for_log)

SWAKS = shutil.which("swaks")
CURL = shutil.which("curl")


def sample_message(tag, body_lines=2000, seed=1):
    """CRLF content with dot lines, 8-bit bytes and long lines, unique per tag."""
    rng = random.Random(seed)
    out = [b"From: sender@example.org", b"To: user@example.com",
           b"Subject: TLS test " + tag.encode(), b"X-Tag: " + tag.encode(), b"MIME-Version: 1.0",
           b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 8bit", b"",
           b".", b"..", b".leading dot", b"\xc3\xa9t\xc3\xa9 \xe2\x9c\x93"]
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 .,;:-_=+"
    for i in range(body_lines):
        n = rng.choice((0, 1, 60, 76, 500, 990))
        line = bytes(rng.choice(alphabet) for _ in range(n))
        if i % 11 == 0:
            line = b"." + line
        out.append(line)
    out.append(b"end of " + tag.encode())
    return CRLF.join(out) + CRLF


def swaks_sent_data(transcript):
    """The DATA content swaks sent, rebuilt from its transcript lines
    between DATA's 354 and the lone '.', dot-stuffing undone. Inside TLS
    swaks marks what it sends with ' ~> ' (plaintext: ' -> ')."""
    out = []
    state = 0
    for line in transcript.splitlines():
        if state == 0 and re.match(r"<[-~]  354", line):
            state = 1
        elif state == 1 and line[:4] in (" -> ", " ~> "):
            text = line[4:]
            if text == ".":
                return ("".join(l + "\r\n" for l in out)).encode()
            if text.startswith("."):
                text = text[1:]
            out.append(text)
    raise AssertionError("no DATA content in swaks transcript:\n" + transcript)


def smtplib_send(s, msg, rcpts=("user@example.com",), mail_from="sender@example.org",
                 options=()):
    code, resp = s.mail(mail_from, list(options))
    assert code == 250, (code, resp)
    for r in rcpts:
        code, resp = s.rcpt(r)
        assert code == 250, (code, resp)
    code, resp = s.data(msg)
    assert code == 250, (code, resp)
    qid = queued_id(resp)
    assert qid, resp
    return qid


# ---- openssl s_client, driven like a person at a terminal --------------------

class SClient:
    """`openssl s_client -starttls smtp` (or plain TLS for smtps) with
    stdin/stdout pipes: commands go in as exact bytes, replies are read back
    line by line with a deadline. -brief prints the negotiated protocol and
    cipher on stderr and (like -quiet) turns off the command letters and
    exit-on-stdin-EOF."""

    def __init__(self, port, ca, extra=(), starttls=True, timeout=20.0):
        args = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-brief",
                "-nocommands", "-CAfile", ca, "-verify_return_error",
                "-servername", MAIL_NAME]
        if starttls:
            args += ["-starttls", "smtp", "-name", "sclient.example.org"]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.timeout = timeout * SLOW

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _line(self):
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("s_client: no reply line within %.0fs (have %r); stderr:\n%s"
                                     % (self.timeout, self.buf, self.stderr_now()))
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError("s_client: EOF (have %r); stderr:\n%s"
                                         % (self.buf, self.stderr_now()))
                self.buf += chunk
        i = self.buf.index(b"\n")
        line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
        return line

    def reply(self):
        lines = []
        while True:
            line = self._line()
            if not line.endswith(CRLF) or not line[:3].isdigit():
                raise AssertionError("s_client: bad reply line %r" % line)
            lines.append(line)
            if line[3:4] == b" ":
                return int(line[:3]), lines

    def cmd(self, line):
        self.send(line + CRLF)
        return self.reply()

    def stderr_now(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode("utf-8", "replace")

    def finish(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(20 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        rest = self.proc.stdout.read()
        err = self.proc.stderr.read().decode("utf-8", "replace")
        return rest, err


def s_client_summary(stderr):
    """(protocol, cipher) from s_client -brief's CONNECTION ESTABLISHED block."""
    p = re.search(r"Protocol version: (\S+)", stderr)
    c = re.search(r"Ciphersuite: (\S+)", stderr)
    return (p.group(1) if p else None, c.group(1) if c else None)


@unittest.skipUnless(OPENSSL, "openssl not installed")
class TlsClientsTest(TlsTestCase):

    def _assert_startup_path(self, d):
        """mxd says at start-up which TLS path it uses, and it is the one
        `ktls auto` must pick on this kernel."""
        self.assertEqual(startup_tls_path(d), expected_tls_path())

    # -- Python smtplib ---------------------------------------------------
    def test_smtplib_starttls(self):
        """starttls() with certificate verification, TLS 1.3 and 1.2 on the
        same listener; EHLO before and after; two messages per connection
        (one of 2 MB, so many TLS records)."""
        d = self.simple_tls_mxd()
        self._assert_startup_path(d)
        ca = self.certs.ca()
        sent = {}
        ports = []
        big = sample_message("big", body_lines=8000, seed=3)
        while len(big) < 2 * 1024 * 1024:
            big += sample_message("more", body_lines=2000, seed=len(big))[120:]
        for maxv, version in ((None, "TLSv1.3"), ("1.2", "TLSv1.2")):
            ctx = client_context(ca, maximum=ssl.TLSVersion.TLSv1_2 if maxv else None)
            with smtplib.SMTP("127.0.0.1", d.port, timeout=30 * SLOW) as s:
                code, _ = s.ehlo("smtplib.example.org")
                self.assertEqual(code, 250)
                self.assertTrue(s.has_extn("starttls"), s.esmtp_features)
                self.assertFalse(s.has_extn("auth"), "AUTH offered without auth")
                code, resp = s.starttls(context=ctx)
                self.assertEqual(code, 220, resp)
                self.assertEqual(s.sock.version(), version)
                cipher = s.sock.cipher()[0]
                ports.append(s.sock.getsockname()[1])
                # RFC 3207 4.2: a fresh EHLO, without STARTTLS this time.
                code, _ = s.ehlo("smtplib.example.org")
                self.assertEqual(code, 250)
                self.assertFalse(s.has_extn("starttls"), "STARTTLS offered inside TLS")
                self.assertTrue(s.has_extn("pipelining") and s.has_extn("size"),
                                s.esmtp_features)
                for tag, msg in (("small-" + version, sample_message(version)),
                                 ("big-" + version, big)):
                    qid = smtplib_send(s, msg, options=["BODY=8BITMIME"])
                    sent[qid] = (smtplib_expected(msg), version, cipher)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(sent))
        for qid, (expected, version, cipher) in sent.items():
            content = self.assertTlsReceived(d.spool_cat(qid), qid, version, cipher,
                                             helo="smtplib.example.org")
            self.assertEqual(len(content), len(expected))
            self.assertEqual(content, expected)
            show = mxspool(d.spool, "show", qid).stdout.decode()
            self.assertRegex(show, r"(?m)^tls: %s \S+" % re.escape(version))
        for p in ports:
            self.assertSessionPath(d, p)

    def test_smtplib_smtps(self):
        """SMTP_SSL on an smtps listener: TLS from the first byte; the EHLO
        reply has no STARTTLS."""
        d = self.simple_tls_mxd(opts="smtps")
        ca = self.certs.ca()
        msg = sample_message("smtps")
        with smtplib.SMTP_SSL("127.0.0.1", d.port, timeout=30 * SLOW,
                              context=client_context(ca)) as s:
            code, _ = s.ehlo("smtps.example.org")
            self.assertEqual(code, 250)
            self.assertFalse(s.has_extn("starttls"), "STARTTLS offered on smtps")
            version, cipher = s.sock.version(), s.sock.cipher()[0]
            port = s.sock.getsockname()[1]
            qid = smtplib_send(s, msg)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        content = self.assertTlsReceived(d.spool_cat(qid), qid, version, cipher,
                                         helo="smtps.example.org")
        self.assertEqual(content, smtplib_expected(msg))
        self.assertSessionPath(d, port)

    def test_ktls_off_is_userspace(self):
        """`ktls off`: every TLS session stays on the userspace path, and
        plaintext sessions say none."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME], [p], extra=["ktls off"])
        self.assertEqual(startup_tls_path(d), "userspace")
        wait_for_log(d, r"tls: userspace path .*ktls off")
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            plain_port = c.sock.getsockname()[1]
            c.cmd("QUIT")
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            tls_port = c.sock.getsockname()[1]
            self.assertEqual(c.starttls(client_context(self.certs.ca())).code, 220)
            c.ehlo()
            r, qid = c.send_message("a@example.org", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
            self.assertEqual(r.code, 250, r)
            c.cmd("QUIT")
        self.stop_ok(d)
        self.assertSessionPath(d, plain_port, "none")
        self.assertSessionPath(d, tls_port, "userspace")

    def test_session_resumption_across_cores(self):
        """Tickets work on every core (keys shared, RFC 8446 / 5077): with
        4 cores, 24 reconnections with the first session's ticket all
        resume, TLS 1.3 on STARTTLS and TLS 1.2 on smtps, land on more than
        one core, and a resumed session delivers like any other."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME, "smtps pki %s" % MAIL_NAME], [p], cores=4)
        ca = self.certs.ca()
        sent = {}
        for port, implicit, maxv in ((d.ports[0], False, None),
                                     (d.ports[1], True, ssl.TLSVersion.TLSv1_2)):
            ctx = client_context(ca, maximum=maxv)
            first = None
            ports = []
            for i in range(25):
                c = TlsRawSmtp(port)
                with c:
                    if implicit:
                        c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1",
                                                      session=first)
                        c.connect_greeting()
                    else:
                        c.connect_greeting()
                        c.ehlo()
                        self.assertEqual(c.cmd("STARTTLS").code, 220)
                        c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1",
                                                      session=first)
                    c.ehlo()
                    if first is None:
                        # TLS 1.3 tickets arrive after the handshake: the
                        # EHLO round trip has read them.
                        first = c.sock.session
                        self.assertFalse(c.sock.session_reused)
                    else:
                        self.assertTrue(c.sock.session_reused, "connection %d not resumed" % i)
                        ports.append(c.sock.getsockname()[1])
                    if i == 24:
                        content = b"Subject: resumed\r\n\r\nresumed session\r\n"
                        r, qid = c.send_message("a@example.org", ["b@example.com"], content)
                        self.assertEqual(r.code, 250, r)
                        sent[qid] = (content, c.sock.version())
                    c.cmd("QUIT")
            cores = set()
            for cp in ports:
                line = wait_for_log(d, r"session=\S+ open client=\S+ port=%d\b" % cp)[-1]
                cores.add(re.search(r"mxd\[(core\d+)\]", line).group(1))
            self.assertGreater(len(cores), 1, "all resumed sessions on one core: %r" % cores)
        resumed = wait_for_log(d, r"tls established .* resumed", count=48)
        self.assertEqual(len(resumed), 48)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(sent))
        for qid, (content, version) in sent.items():
            self.assertEqual(self.assertTlsReceived(d.spool_cat(qid), qid, version), content)

    # -- swaks --------------------------------------------------------------
    def _swaks(self, port, *args):
        r = subprocess.run([SWAKS, "--server", "127.0.0.1:%d" % port, "--helo",
                            "swaks.example.org", "--from", "sender@example.org"] + list(args),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=120 * SLOW)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def _swaks_case(self, opts, flag):
        d = self.simple_tls_mxd(opts=opts)
        path = os.path.join(self.tmp, "body.txt")
        # swaks makes LF CRLF and ends the data with CRLF "." CRLF, adding
        # one CRLF of its own (test_swaks.py): so no final newline here.
        data = b"Subject: swaks " + flag.encode() + b"\n\n.dot\n..two\nline\n" + b"x" * 5000
        with open(path, "wb") as f:
            f.write(data)
        rc, out = self._swaks(d.port, flag, "--tls-verify", "--tls-ca-path", self.certs.ca().cert,
                              "--to", "user@example.com", "--data", "@" + path)
        self.assertEqual(rc, 0, out)
        m = re.search(r"=== TLS started with cipher (TLSv1(?:\.\d)?):([A-Za-z0-9_\-]+)", out)
        self.assertTrue(m, out)
        if flag == "--tls":
            self.assertRegex(out, r" -> STARTTLS\n<-  220 ")
            self.assertRegex(out, r" ~> EHLO swaks.example.org\n")
        else:
            self.assertNotIn("STARTTLS", out.split("=== TLS started")[0].split("Connected")[-1])
        qid = queued_id(out)
        self.assertTrue(qid, out)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        content = self.assertTlsReceived(d.spool_cat(qid), qid, m.group(1), m.group(2),
                                         helo="swaks.example.org")
        self.assertEqual(content, swaks_sent_data(out))
        self.assertEqual(content, data.replace(b"\n", CRLF) + CRLF)
        self.assertDeliveringSessionsPath(d, 1)

    @unittest.skipUnless(SWAKS, "swaks not installed")
    def test_swaks_starttls(self):
        self._swaks_case("tls", "--tls")

    @unittest.skipUnless(SWAKS, "swaks not installed")
    def test_swaks_tls_on_connect(self):
        self._swaks_case("smtps", "--tlsc")

    # -- curl -----------------------------------------------------------------
    def _curl_case(self, opts, scheme, verify):
        d = self.simple_tls_mxd(opts=opts)
        data = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: curl " + scheme.encode() +
                b"\r\n\r\n.one dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n" +
                b"".join(b"line %05d " % i + b"q" * (i % 700) + CRLF for i in range(1500)) +
                b"\xe2\x9c\x93 8-bit\r\n")
        path = os.path.join(self.tmp, "m.eml")
        with open(path, "wb") as f:
            f.write(data)
        args = [CURL, "-sS", "-v", "%s://127.0.0.1:%d/curl.example.org" % (scheme, d.port),
                "--mail-from", "a@example.org", "--mail-rcpt", "b@example.com",
                "--upload-file", path]
        if scheme == "smtp":
            args.append("--ssl-reqd")
        args += ["--cacert", self.certs.ca().cert] if verify else ["-k"]
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120 * SLOW)
        log = r.stderr.decode("utf-8", "replace")
        self.assertEqual(r.returncode, 0, log[-3000:])
        m = re.search(r"SSL connection using (TLSv1(?:\.\d)?) / ([A-Za-z0-9_\-]+)", log)
        self.assertTrue(m, log[-3000:])
        if scheme == "smtp":
            self.assertRegex(log, r"> STARTTLS\r?\n< 220 ")
        else:
            self.assertNotIn("STARTTLS", log)
        qid = queued_id(log)
        self.assertTrue(qid, log[-3000:])
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        content = self.assertTlsReceived(d.spool_cat(qid), qid, m.group(1), m.group(2),
                                         helo="curl.example.org")
        self.assertEqual(content, data)
        self.assertDeliveringSessionsPath(d, 1)

    @unittest.skipUnless(CURL, "curl not installed")
    def test_curl_starttls(self):
        self._curl_case("tls", "smtp", verify=True)

    @unittest.skipUnless(CURL, "curl not installed")
    def test_curl_smtps(self):
        self._curl_case("smtps", "smtps", verify=False)

    # -- openssl s_client -----------------------------------------------------
    def _s_client_case(self, version_flag, version):
        d = self.simple_tls_mxd()
        content = sample_message("s_client " + version, body_lines=600, seed=9)
        c = SClient(d.port, self.certs.ca().cert, extra=[version_flag])
        try:
            code, lines = c.cmd(b"EHLO sclient.example.org")
            self.assertEqual(code, 250, lines)
            kws = {l[4:].split()[0].upper() for l in lines[1:] if l[4:].split()}
            self.assertNotIn(b"STARTTLS", kws, lines)
            self.assertEqual(c.cmd(b"MAIL FROM:<sender@example.org> BODY=8BITMIME")[0], 250)
            self.assertEqual(c.cmd(b"RCPT TO:<user@example.com>")[0], 250)
            self.assertEqual(c.cmd(b"DATA")[0], 354)
            c.send(dot_stuff(content) + b".\r\n")
            code, lines = c.reply()
            self.assertEqual(code, 250, lines)
            qid = queued_id(lines[-1])
            self.assertTrue(qid, lines)
            self.assertEqual(c.cmd(b"QUIT")[0], 221)
        finally:
            rest, err = c.finish()
        got_version, got_cipher = s_client_summary(err)
        self.assertEqual(got_version, version, err)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        spooled = self.assertTlsReceived(d.spool_cat(qid), qid, version, got_cipher,
                                         helo="sclient.example.org")
        self.assertEqual(spooled, content)
        self.assertDeliveringSessionsPath(d, 1)

    def test_openssl_s_client_tls12(self):
        self._s_client_case("-tls1_2", "TLSv1.2")

    def test_openssl_s_client_tls13(self):
        self._s_client_case("-tls1_3", "TLSv1.3")

    # -- key types --------------------------------------------------------------
    def test_ecdsa_rsa2048_and_seed_rsa4096(self):
        """Three pki on three listeners: ECDSA P-256, RSA-2048 (CA-signed)
        and the seed's own recipe (genrsa 4096, req -x509 -new, pki fields
        on two lines). Each listener serves its own certificate (compared
        byte for byte), a TLS 1.2 handshake picks a suite of the key's type,
        and a message goes through each, STARTTLS and smtps alike."""
        ec = self.certs.server("ec.example.com", "ec")
        rsa = self.certs.server("rsa.example.com", "rsa2048")
        seed = self.certs.seed_rsa4096(MAIL_NAME)
        pkis = [self.pki("ec.example.com", ec), self.pki("rsa.example.com", rsa),
                self.pki(MAIL_NAME, seed, split_lines=True)]
        d = self.tls_mxd(["tls pki ec.example.com", "tls pki rsa.example.com",
                          "tls pki %s" % MAIL_NAME, "smtps pki %s" % MAIL_NAME], pkis)
        cases = [(d.ports[0], ec, "ECDSA", False), (d.ports[1], rsa, "RSA", False),
                 (d.ports[2], seed, "RSA", False), (d.ports[3], seed, "RSA", True)]
        sent = {}
        for port, files, kx, implicit in cases:
            for maxv in (ssl.TLSVersion.TLSv1_2, None):
                ctx = client_context(verify=False, maximum=maxv)
                with TlsRawSmtp(port, timeout=30) as c:
                    if implicit:
                        c.wrap_now(ctx)
                        self.assertEqual(c.connect_greeting().code, 220)
                    else:
                        c.connect_greeting()
                        c.ehlo()
                        self.assertEqual(c.starttls(ctx).code, 220)
                    self.assertEqual(c.sock.getpeercert(binary_form=True), files.der(),
                                     "listener %d served the wrong certificate" % port)
                    version, cipher = c.sock.version(), c.sock.cipher()[0]
                    if maxv is not None:
                        self.assertEqual(version, "TLSv1.2")
                        self.assertIn("-%s-" % kx, cipher)
                    else:
                        self.assertEqual(version, "TLSv1.3")
                    c.ehlo()
                    content = sample_message("%d-%s" % (port, version), body_lines=200)
                    r, qid = c.send_message("a@example.org", ["b@example.com"], content)
                    self.assertEqual(r.code, 250, r)
                    sent[qid] = (content, version, cipher)
                    c.cmd("QUIT")
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(sent))
        for qid, (content, version, cipher) in sent.items():
            self.assertEqual(self.assertTlsReceived(d.spool_cat(qid), qid, version, cipher),
                             content)
        self.assertDeliveringSessionsPath(d, len(sent))


if __name__ == "__main__":
    unittest.main()
