"""TLS security properties of mxd, each checked against the running daemon.

- STARTTLS command injection (CVE-2011-0411 class): commands pipelined
  behind STARTTLS in the same send() are never answered, in plaintext or
  inside TLS, and never change the session.
- AUTH PLAIN / LOGIN (RFC 4954) against a `table NAME file:PATH` of crypt
  hashes (sha512-crypt, yescrypt, bcrypt): only inside TLS (538 5.7.11
  before), 235 / 535 5.7.8, and relaying only when authenticated.
- tls-require: MAIL before STARTTLS gets 530 5.7.0.
- Client certificates (`verify` with a pki `ca`): a certificate from that
  CA may relay, one from another CA or none may not.
- A private key readable by group or others: mxd refuses to start and
  says `chmod 600 FILE`.
- SNI: two pki, each name gets its own certificate; others get the
  listener's.
- A failed handshake is logged, the session closed, and mxd stays up.
"""

import base64
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import unittest

from mxharness import SLOW, mxspool, queued_id, split_received, strip_received
from tlsharness import (HANDSHAKE_FAILED, MAIL_NAME, MX_NAME, OPENSSL, TlsRawSmtp, TlsTestCase,
                        client_context, close_line, ehlo_keywords, log_lines, peer_cn,
                        session_of_port, tls_path_of, wait_for_log, write_passwd)

FOREIGN = "someone@foreign.example"
PASSWORDS = {
    "alice": ("correct horse battery staple", "sha512"),
    "bob": ("s3cret:with:colons and spaces", "yescrypt"),
    "carol": ("p4ssw0rd-bcrypt!", "bcrypt"),
    "dave": ("p\u00e4ssw\u00f6rd in UTF-8", "sha512"),
}


def b64(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    return base64.b64encode(s).decode("ascii")


def nothing_pending(c, wait=0.3):
    """True when no byte arrives within `wait` seconds and none is buffered."""
    if c.buf:
        return False
    c.sock.settimeout(wait)
    try:
        data = c.sock.recv(65536)
    except (socket.timeout, TimeoutError):
        return True
    except ssl.SSLWantReadError:
        return True
    finally:
        c.sock.settimeout(20 * SLOW)
    if data:
        c.buf += data
        return False
    return True  # EOF: nothing pending either; later reads will show the close


@unittest.skipUnless(OPENSSL, "openssl not installed")
class TlsSecurityTest(TlsTestCase):

    # -- CVE-2011-0411: plaintext pipelined behind STARTTLS ----------------
    def _injection(self, injected):
        d = self.simple_tls_mxd(rules=["accept from any for domain <domains>"])
        ctx = client_context(self.certs.ca())
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo("plain.example.org")
            port = c.sock.getsockname()[1]
            c.send(b"STARTTLS\r\n" + injected)  # one send(), one segment
            r = c.reply()
            self.assertEqual(r.code, 220, r)
            # No plaintext reply to the injected commands.
            self.assertTrue(nothing_pending(c), "plaintext after the 220: %r" % c.buf)
            c.sock = ctx.wrap_socket(c.sock, server_hostname=MAIL_NAME)
            # Nothing unsolicited inside TLS either (a reply to the injected
            # commands would come now, before we say anything).
            self.assertTrue(nothing_pending(c), "unsolicited bytes inside TLS: %r" % c.buf)
            r = c.cmd("EHLO tls-client.example.org")
            self.assertEqual(r.code, 250, r)
            self.assertIn(b"250-", r.lines[0])
            self.assertEqual(len(r.lines), len(ehlo_keywords(r)) + 1)
            self.assertIn("PIPELINING", ehlo_keywords(r))
            self.assertTrue(nothing_pending(c), "more replies than commands: %r" % c.buf)
            r = c.cmd("MAIL FROM:<good@example.org>")
            self.assertEqual(r.code, 250, "the injected MAIL was executed? %r" % r)
            self.assertEqual(c.cmd("RCPT TO:<user@example.com>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            content = b"Subject: after STARTTLS\r\n\r\nclean\r\n"
            c.send(content + b".\r\n")
            r = c.reply()
            self.assertEqual(r.code, 250, r)
            qid = queued_id(r.text)
            self.assertTrue(nothing_pending(c), "extra replies: %r" % c.buf)
            self.assertEqual(c.cmd("QUIT").code, 221)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        raw = d.spool_cat(qid)
        header, got = split_received(raw)
        self.assertEqual(got, content)
        self.assertIn(b"from tls-client.example.org", header)
        show = mxspool(d.spool, "show", qid).stdout.decode()
        self.assertIn("mail-from: <good@example.org>", show)
        self.assertIn("helo: tls-client.example.org", show)
        self.assertNotIn("evil", show)
        sid = session_of_port(d, port)
        # Not one reject or command of the injected text in this session's log.
        for line in log_lines(d):
            if "session=%s " % sid in line:
                self.assertNotIn("evil", line)
                self.assertNotRegex(line, r"\breject\b", line)
        return d, sid

    def test_injection_rset(self):
        self._injection(b"RSET\r\n")

    def test_injection_mail_from(self):
        self._injection(b"MAIL FROM:<evil@x>\r\n")

    def test_injection_ehlo_mail_rcpt(self):
        """A whole injected transaction start, the classic exploit shape."""
        self._injection(b"EHLO evil.example\r\nMAIL FROM:<evil@x>\r\n"
                        b"RCPT TO:<evil@example.com>\r\n")

    # -- AUTH -----------------------------------------------------------
    def _auth_mxd(self, opts="tls"):
        passwd = write_passwd(os.path.join(self.workdir("auth"), "passwd"), PASSWORDS)
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        return self.tls_mxd(["%s pki %s auth <passwd>" % (opts, MAIL_NAME)], [p], passwd=passwd)

    def test_auth_only_inside_tls(self):
        """No AUTH in the plaintext EHLO; AUTH before STARTTLS → 538 5.7.11;
        inside TLS the EHLO offers AUTH PLAIN LOGIN and no STARTTLS."""
        d = self._auth_mxd()
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            kws = ehlo_keywords(c.ehlo())
            self.assertIn("STARTTLS", kws)
            self.assertNotIn("AUTH", kws)
            self.assertEnhanced(c.cmd("AUTH PLAIN " + b64("\0alice\0" + PASSWORDS["alice"][0])),
                                538, "5.7.11")
            self.assertEnhanced(c.cmd("AUTH LOGIN"), 538, "5.7.11")
            # Not authenticated by any of that: no relay.
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
            self.assertEqual(c.cmd("RSET").code, 250)
            self.assertEqual(c.starttls(client_context(self.certs.ca()),
                                        server_hostname=MAIL_NAME).code, 220)
            kws = ehlo_keywords(c.ehlo())
            self.assertNotIn("STARTTLS", kws)
            self.assertIn("AUTH", kws)
            self.assertIn("PLAIN", [m.upper() for m in kws["AUTH"]])
            self.assertIn("LOGIN", [m.upper() for m in kws["AUTH"]])
            c.cmd("QUIT")
        self.stop_ok(d)

    def test_auth_good_bad_and_relay(self):
        d = self._auth_mxd()
        ctx = client_context(self.certs.ca())
        sent = {}
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            c.starttls(ctx, server_hostname=MAIL_NAME)
            c.ehlo("auth-client.example.org")
            # Unauthenticated inside TLS: our domains yes, others no.
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
            self.assertEqual(c.cmd("RSET").code, 250)
            # Bad passwords, an unknown user, a good password for another user.
            self.assertEnhanced(c.cmd("AUTH PLAIN " + b64("\0alice\0wrong")), 535, "5.7.8")
            self.assertEnhanced(c.cmd("AUTH PLAIN " + b64("\0nobody\0whatever")), 535, "5.7.8")
            self.assertEnhanced(c.cmd("AUTH PLAIN " + b64("\0alice\0" + PASSWORDS["bob"][0])),
                                535, "5.7.8")
            self.assertEnhanced(c.cmd("AUTH PLAIN " + b64("\0alice\0" + PASSWORDS["alice"][0]
                                                            + "x")), 535, "5.7.8")
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
            self.assertEqual(c.cmd("RSET").code, 250)
            # The right one (sha512-crypt), PLAIN with an initial response.
            self.assertEnhanced(c.cmd("AUTH PLAIN " + b64("\0alice\0" + PASSWORDS["alice"][0])),
                                235, "2.7.0")
            # RFC 4954 4: no second AUTH, and EHLO no longer offers it.
            self.assertNotIn("AUTH", ehlo_keywords(c.ehlo("auth-client.example.org")))
            self.assertEqual(c.cmd("AUTH PLAIN " + b64("\0alice\0" + PASSWORDS["alice"][0]))
                             .code, 503)
            content = b"Subject: relayed by alice\r\n\r\nhello foreign\r\n"
            r, qid = c.send_message("alice@example.org", [FOREIGN], content)
            self.assertEnhanced(r, 250, "2.0.0")
            sent[qid] = ("alice", content)
            c.cmd("QUIT")

        # AUTH LOGIN, the two-step exchange, for bob (yescrypt).
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            c.starttls(ctx, server_hostname=MAIL_NAME)
            c.ehlo("login-client.example.org")
            r = c.cmd("AUTH LOGIN")
            self.assertEqual(r.code, 334, r)
            self.assertEqual(base64.b64decode(r.last[4:]).lower().rstrip(b":"), b"username")
            r = c.cmd(b64("bob"))
            self.assertEqual(r.code, 334, r)
            self.assertEqual(base64.b64decode(r.last[4:]).lower().rstrip(b":"), b"password")
            self.assertEnhanced(c.cmd(b64(PASSWORDS["bob"][0])), 235, "2.7.0")
            content = b"Subject: relayed by bob\r\n\r\n.dot\r\n"
            r, qid = c.send_message("bob@example.org", [FOREIGN, "user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            sent[qid] = ("bob", content)
            c.cmd("QUIT")

        # A UTF-8 password (SASL PLAIN carries UTF-8), and the form
        # without an initial response (334 and an empty challenge).
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            c.starttls(ctx, server_hostname=MAIL_NAME)
            c.ehlo()
            r = c.cmd("AUTH PLAIN")
            self.assertEqual(r.code, 334, r)
            self.assertEqual(r.last.rstrip(), "334")
            self.assertEnhanced(c.cmd(b64("\0dave\0" + PASSWORDS["dave"][0])), 235, "2.7.0")
            c.cmd("QUIT")

        # AUTH LOGIN with a wrong password, and a cancelled exchange.
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            c.starttls(ctx, server_hostname=MAIL_NAME)
            c.ehlo()
            self.assertEqual(c.cmd("AUTH LOGIN " + b64("bob")).code, 334)
            self.assertEnhanced(c.cmd(b64("not bob's")), 535, "5.7.8")
            self.assertEqual(c.cmd("AUTH LOGIN").code, 334)
            self.assertEqual(c.cmd("*").code, 501)  # RFC 4954 4: client cancels
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
            c.cmd("QUIT")

        # smtplib's login() (bcrypt user) and sendmail() to a foreign domain.
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30 * SLOW) as s:
            s.starttls(context=ctx)
            s.ehlo("smtplib.example.org")
            self.assertEqual(s.login("carol", PASSWORDS["carol"][0])[0], 235)
            content = b"Subject: relayed by carol\r\n\r\nvia smtplib\r\n"
            self.assertEqual(s.sendmail("carol@example.org", [FOREIGN], content), {})
        self.stop_ok(d)

        ids = d.spool_ids()
        self.assertEqual(len(ids), 3)
        carol = [i for i in ids if i not in sent]
        self.assertEqual(len(carol), 1)
        sent[carol[0]] = ("carol", b"Subject: relayed by carol\r\n\r\nvia smtplib\r\n")
        for qid, (user, content) in sent.items():
            header, got = split_received(d.spool_cat(qid))
            self.assertReceived(header, qid=qid, proto="ESMTPSA")
            self.assertEqual(got, content)
            show = mxspool(d.spool, "show", qid).stdout.decode()
            self.assertRegex(show, r"(?m)^auth: %s$" % user)
            self.assertRegex(show, r"(?m)^tls: TLSv1\.[23] ")
        # No password in mxd's log.
        text = "\n".join(log_lines(d))
        for pw, _ in PASSWORDS.values():
            self.assertNotIn(pw, text)

    # -- tls-require --------------------------------------------------------
    def test_tls_require(self):
        passwd = write_passwd(os.path.join(self.workdir("auth"), "passwd"),
                              {"alice": PASSWORDS["alice"]})
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls-require pki %s auth <passwd>" % MAIL_NAME], [p], passwd=passwd)
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            self.assertIn("STARTTLS", ehlo_keywords(c.ehlo()))
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 530, "5.7.0")
            self.assertEnhanced(c.cmd("MAIL FROM:<>"), 530, "5.7.0")
            self.assertEqual(c.cmd("NOOP").code, 250)
            self.assertEqual(c.starttls(client_context(self.certs.ca())).code, 220)
            c.ehlo()
            content = b"Subject: required TLS\r\n\r\nok\r\n"
            r, qid = c.send_message("a@example.org", ["user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            c.cmd("QUIT")
        # smtplib without starttls(): the sender is refused with 530.
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30 * SLOW) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("a@example.org", ["user@example.com"], b"Subject: no\r\n\r\nno\r\n")
            self.assertEqual(cm.exception.smtp_code, 530)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), content)

    # -- client certificates ------------------------------------------------
    def test_client_certificate_relay(self):
        """`verify` and `pki ... ca`: a client certificate from that CA lets
        the client relay (accept from authenticated); one from another CA,
        or none, does not, but mail for our domains still goes through. A
        listener without `verify` does not look at certificates at all."""
        ca = self.certs.ca()
        good = self.certs.client("trusted-client.example.net", ca_label="ca")
        rogue = self.certs.client("rogue-client.example.net", ca_label="other-ca")
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME), ca=ca)
        d = self.tls_mxd(["tls pki %s verify" % MAIL_NAME, "smtps pki %s verify" % MAIL_NAME,
                          "tls pki %s" % MAIL_NAME], [p])
        delivered = {}

        def session(port, cert, implicit=False):
            c = TlsRawSmtp(port)
            ctx = client_context(ca, cert=cert)
            if implicit:
                c.wrap_now(ctx, server_hostname=MAIL_NAME)
                c.connect_greeting()
            else:
                c.connect_greeting()
                c.ehlo()
                self.assertEqual(c.starttls(ctx, server_hostname=MAIL_NAME).code, 220)
            c.ehlo("cert-client.example.org")
            return c

        for port, implicit in ((d.ports[0], False), (d.ports[1], True)):
            with session(port, good, implicit) as c:
                content = b"Subject: relay by certificate %d\r\n\r\nok\r\n" % port
                r, qid = c.send_message("a@example.net", [FOREIGN], content)
                self.assertEnhanced(r, 250, "2.0.0")
                delivered[qid] = content
                c.cmd("QUIT")
            for cert in (rogue, None):
                with session(port, cert, implicit) as c:
                    self.assertEqual(c.cmd("MAIL FROM:<a@example.net>").code, 250)
                    self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
                    self.assertEqual(c.cmd("RSET").code, 250)
                    content = b"Subject: local delivery %d %s\r\n\r\nok\r\n" % (
                        port, b"rogue" if cert else b"none")
                    r, qid = c.send_message("a@example.net", ["user@example.com"], content)
                    self.assertEnhanced(r, 250, "2.0.0")
                    delivered[qid] = content
                    c.cmd("QUIT")
        # Without `verify`, even the good certificate means nothing.
        with session(d.ports[2], good) as c:
            self.assertEqual(c.cmd("MAIL FROM:<a@example.net>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
            c.cmd("QUIT")
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(delivered))
        for qid, content in delivered.items():
            header, got = split_received(d.spool_cat(qid))
            self.assertEqual(got, content)
            self.assertRegex(header.decode(), r"\bwith ESMTPSA?\b")

    def test_resumed_certificate_session_does_not_authenticate_elsewhere(self):
        """A ticket from a `verify` listener resumed on a listener of the
        same pki without `verify` carries the old client certificate; it
        must not let the client relay there (a fresh handshake does not)."""
        ca = self.certs.ca()
        good = self.certs.client("trusted-client.example.net", ca_label="ca")
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME), ca=ca)
        d = self.tls_mxd(["smtps pki %s verify" % MAIL_NAME, "smtps pki %s" % MAIL_NAME], [p])
        for maximum in (None, ssl.TLSVersion.TLSv1_2):
            ctx = client_context(ca, cert=good, maximum=maximum)
            c = TlsRawSmtp(d.ports[0])
            c.wrap_now(ctx, server_hostname=MAIL_NAME)
            c.connect_greeting()
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@example.net>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<%s>" % FOREIGN).code, 250)
            c.cmd("QUIT")
            ticket = c.sock.session
            c.close()
            c = TlsRawSmtp(d.ports[1])
            c.sock = ctx.wrap_socket(c.sock, server_hostname=MAIL_NAME, session=ticket)
            c.connect_greeting()
            self.assertTrue(c.sock.session_reused)
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@example.net>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<%s>" % FOREIGN), 554, "5.7.1")
            c.cmd("QUIT")
            c.close()
        self.stop_ok(d)

    # -- key permissions ----------------------------------------------------
    def test_key_readable_by_others_refused(self):
        """starttls(8): the key must be private. 0644, 0640 and 0604 are
        refused at start-up with the fix in the message; 0600 and 0400 work."""
        for mode in (0o644, 0o640, 0o604):
            p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME), stem="k%o" % mode)
            os.chmod(p.files.key, mode)
            d = self.tls_mxd(["tls pki %s" % MAIL_NAME], [p], name="perm%o" % mode, start=False)
            d.start(wait=False)
            try:
                rc = d.proc.wait(15 * SLOW)
            except subprocess.TimeoutExpired:
                self.fail("mxd started with a key of mode %o:\n%s" % (mode, d.stderr_text()))
            d._close_log()
            text = d.stderr_text()
            self.assertNotEqual(rc, 0, text)
            self.assertIn("chmod 600 %s" % p.files.key, text)
            # Nothing listens.
            with socket.socket() as s:
                self.assertNotEqual(s.connect_ex(("127.0.0.1", d.port)), 0)
        for mode in (0o600, 0o400):
            p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME), stem="ok%o" % mode)
            os.chmod(p.files.key, mode)
            d = self.tls_mxd(["tls pki %s" % MAIL_NAME], [p], name="perm%o" % mode)
            with TlsRawSmtp(d.port) as c:
                c.connect_greeting()
                c.ehlo()
                self.assertEqual(c.starttls(client_context(self.certs.ca())).code, 220)
                c.ehlo()
                c.cmd("QUIT")
            self.stop_ok(d)

    def test_reload_rotates_certificate_and_checks_key(self):
        """SIGHUP rereads the pki: a new certificate and key in the same
        files are served to new sessions; a key made 0644 meanwhile makes
        the reload refused (logged with chmod 600) and the old one stays."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["smtps pki %s" % MAIL_NAME], [p])

        def served():
            with TlsRawSmtp(d.port) as c:
                c.wrap_now(client_context(verify=False))
                self.assertEqual(c.connect_greeting().code, 220)
                der = c.sock.getpeercert(binary_form=True)
                c.cmd("QUIT")
            return der

        self.assertEqual(served(), p.files.der())
        rotated = self.certs.server("rotated.example.com")
        shutil.copyfile(rotated.cert, p.files.cert)
        shutil.copyfile(rotated.key, p.files.key)
        d.signal(signal.SIGHUP)
        wait_for_log(d, r"reload: config generation 2 published")
        wait_for_log(d, r"config generation 2 in use", count=2)
        self.assertEqual(served(), rotated.der())
        os.chmod(p.files.key, 0o644)
        d.signal(signal.SIGHUP)
        line = wait_for_log(d, r"reload refused")[-1]
        self.assertIn("chmod 600 %s" % p.files.key, line)
        self.assertTrue(d.running())
        self.assertEqual(served(), rotated.der())
        os.chmod(p.files.key, 0o600)
        self.stop_ok(d)

    # -- SNI ------------------------------------------------------------------
    def test_sni_two_pki(self):
        """Two pki on one listener: a client naming mx.example.org gets that
        certificate, one naming mail.example.com (or nothing, or a name we do
        not have) gets the listener's; on STARTTLS and on smtps."""
        ca = self.certs.ca()
        mail = self.certs.server(MAIL_NAME)
        mx = self.certs.server(MX_NAME, "rsa2048")
        pkis = [self.pki(MAIL_NAME, mail), self.pki(MX_NAME, mx)]
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME, "smtps pki %s" % MX_NAME], pkis)
        cases = [
            # port, implicit, SNI, expected files, verify hostname
            (d.ports[0], False, MX_NAME, mx, True),
            (d.ports[0], False, MAIL_NAME, mail, True),
            (d.ports[0], False, None, mail, False),
            (d.ports[0], False, "unknown.example.net", mail, False),
            (d.ports[1], True, MAIL_NAME, mail, True),
            (d.ports[1], True, MX_NAME, mx, True),
            (d.ports[1], True, None, mx, False),
        ]
        for port, implicit, sni, files, verify in cases:
            ctx = client_context(ca) if verify else client_context(verify=False)
            with TlsRawSmtp(port) as c:
                if implicit:
                    c.wrap_now(ctx, server_hostname=sni)
                    c.connect_greeting()
                else:
                    c.connect_greeting()
                    c.ehlo()
                    self.assertEqual(c.starttls(ctx, server_hostname=sni).code, 220)
                der = c.sock.getpeercert(binary_form=True)
                self.assertEqual(peer_cn(der), files.name, (port, sni))
                self.assertEqual(der, files.der(), (port, sni))
                c.ehlo()
                c.cmd("QUIT")
        # openssl s_client -servername, the way an admin would check it.
        for sni, name in ((MX_NAME, MX_NAME), (MAIL_NAME, MAIL_NAME)):
            r = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % d.ports[0],
                                "-starttls", "smtp", "-servername", sni, "-CAfile", ca.cert,
                                "-verify_return_error", "-verify_hostname", sni, "-brief",
                                "-no_ign_eof"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30 * SLOW)
            err = r.stderr.decode("utf-8", "replace")
            self.assertRegex(err, r"Peer certificate: .*CN ?= ?%s\b" % re.escape(name), err)
            self.assertIn("Verification: OK", err)
        self.stop_ok(d)

    # -- failed handshakes ----------------------------------------------------
    def _assert_up(self, d):
        """mxd still delivers through STARTTLS after whatever happened."""
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEqual(c.starttls(client_context(self.certs.ca())).code, 220)
            c.ehlo()
            r, qid = c.send_message("a@example.org", ["user@example.com"],
                                    b"Subject: still up\r\n\r\nyes\r\n")
            self.assertEqual(r.code, 250, r)
            c.cmd("QUIT")
        return qid

    def _assert_handshake_failure_logged(self, d, port):
        sid = session_of_port(d, port)
        line = close_line(d, sid)
        lines = wait_for_log(d, r"session=%s .*%s" % (re.escape(sid), HANDSHAKE_FAILED))
        self.assertTrue(lines, "no handshake failure logged for session %s" % sid)
        self.assertIn(tls_path_of(line), (None, "none"), line)
        return lines

    def test_failed_handshakes(self):
        """Garbage instead of a ClientHello after STARTTLS and on smtps, a
        client that rejects our certificate, a client that vanishes after
        STARTTLS, a truncated ClientHello: each session is closed, the
        failures are logged, and mxd keeps serving."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME, "smtps pki %s" % MAIL_NAME], [p])

        # 1. Plain text where the ClientHello should be.
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            self.assertEqual(c.cmd("STARTTLS").code, 220)
            c.send(b"EHLO this is not TLS\r\nMAIL FROM:<x@y>\r\n" + b"\x00" * 600)
            self.assertTrue(c.closed_by_peer(10), "session not closed after a bad handshake")
            self.assertNotIn(b"250", c.buf)
        self._assert_handshake_failure_logged(d, port)

        # 2. The same on the smtps listener.
        with TlsRawSmtp(d.ports[1]) as c:
            port = c.sock.getsockname()[1]
            c.send(b"EHLO plaintext.example\r\n")
            self.assertTrue(c.closed_by_peer(10))
            self.assertFalse(c.buf.startswith(b"220"), c.buf)
        self._assert_handshake_failure_logged(d, port)

        # 3. A client that does not trust our certificate aborts the handshake.
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            other = client_context(self.certs.ca("other-ca"))
            with self.assertRaises(ssl.SSLCertVerificationError):
                c.starttls(other, server_hostname=MAIL_NAME)
        self._assert_handshake_failure_logged(d, port)

        # 4. A truncated ClientHello, then the client goes away.
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            self.assertEqual(c.cmd("STARTTLS").code, 220)
            c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))
        close_line(d, session_of_port(d, port))

        # 5. Vanishes right after STARTTLS.
        with TlsRawSmtp(d.ports[0]) as c:
            c.connect_greeting()
            c.ehlo()
            port = c.sock.getsockname()[1]
            self.assertEqual(c.cmd("STARTTLS").code, 220)
        close_line(d, session_of_port(d, port))

        qid = self._assert_up(d)
        self.assertTrue(d.running())
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])

    def test_starttls_syntax_and_repeat(self):
        """STARTTLS with a parameter is a syntax error (RFC 3207 4: 501);
        STARTTLS inside TLS is refused and the session goes on."""
        d = self.simple_tls_mxd()
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEqual(c.cmd("STARTTLS now").code, 501)
            self.assertEqual(c.starttls(client_context(self.certs.ca())).code, 220)
            # RFC 3207 4.2: the EHLO from before TLS is forgotten.
            self.assertEnhanced(c.cmd("MAIL FROM:<a@example.org>"), 503, "5.5.1")
            c.ehlo()
            r = c.cmd("STARTTLS")
            self.assertTrue(500 <= r.code <= 504, r)
            r, qid = c.send_message("a@example.org", ["user@example.com"],
                                    b"Subject: x\r\n\r\nx\r\n")
            self.assertEqual(r.code, 250, r)
            c.cmd("QUIT")
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])


if __name__ == "__main__":
    unittest.main()
