"""Relay over SMTP to a real Postfix (issue 7), and the harness proven first.

postfixharness.py runs a private Postfix (root only) whose smtpd takes
mail for example.com and example.org and whose `virtual` agent stores it
in Maildirs: users alice, bob, carol, sender; any other user 550 5.1.1;
chosen addresses refused at RCPT with a given 4xx or 5xx.

- The harness alone, with smtplib: plaintext and STARTTLS verified against
  the test CA, the refusals, byte-identical storage, stop and start on the
  same port.
- mxd relaying to it over plain SMTP and over STARTTLS with the
  certificate verified (`ca "FILE"`): every message delivered once, byte
  for byte; with the wrong CA nothing is delivered and the messages stay
  deferred.
- The next hop down (Postfix stopped): messages deferred with a next try
  in `mxspool list`; up again: all delivered, each exactly once.
- A 5xx from the next hop: a DSN to the sender through `bounce relay via`
  to a second Postfix, parsed with the email package; none for <>.
"""

import re
import smtplib
import ssl
import time
import unittest

from mxharness import free_port, spool_cat, strip_received
from relayharness import (Dsn, RelayTestCase, assert_failed_block, make_message, message_id,
                          send, send_many, spool_show, to_lf, wait_until)
import postfixharness as ph
import tlsharness as th

USERS = ("alice", "bob", "carol", "sender")


class PostfixHarnessTest(RelayTestCase):

    def test_smtplib_plain_starttls_refusals_restart(self):
        cert = th.certs().server("mail.example.com").copy_to(self.workdir("pki"), "pf")
        pf = self.postfix(users=USERS, cert=cert, smtps=True,
                          reject={"rej5@example.com": "550 5.7.1 refused by the test",
                                  "rej4@example.com": "450 4.2.1 try again later"})
        plain = make_message("plain", eightbit=True)
        tls = make_message("tls", size=100000)
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
            s.ehlo("client.test.example")
            self.assertTrue(s.has_extn("starttls"))
            s.mail("sender@example.org")
            replies = [s.rcpt(r) for r in ("alice@example.com", "rej5@example.com",
                                           "rej4@example.com", "nosuch@example.com")]
            self.assertEqual([c for c, _ in replies], [250, 550, 450, 550], replies)
            self.assertIn(b"5.7.1", replies[1][1])
            self.assertIn(b"4.2.1", replies[2][1])
            self.assertIn(b"5.1.1", replies[3][1])
            self.assertEqual(s.data(plain)[0], 250)
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
            s.starttls(context=th.client_context(ca=th.certs().ca()))
            s.ehlo("client.test.example")
            s.sendmail("sender@example.org", ["bob@example.com"], tls)
        with smtplib.SMTP_SSL("127.0.0.1", pf.smtps_port, timeout=30,
                              context=th.client_context(ca=th.certs().ca())) as s:
            s.ehlo("client.test.example")
            s.sendmail("sender@example.org", ["carol@example.com"], plain)
        wait_until(lambda: pf.messages("carol@example.com"), 15, pf.log_text)
        # The wrong CA: the handshake fails.
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
            with self.assertRaises(ssl.SSLError):
                s.starttls(context=th.client_context(ca=th.certs().ca("other")))
        a = wait_until(lambda: pf.messages("alice@example.com"), 15, pf.log_text)
        b = wait_until(lambda: pf.messages("bob@example.com"), 15, pf.log_text)
        fields, rest = ph.split_store_headers(a[0])
        self.assertEqual(rest, to_lf(plain))
        self.assertIn(b"with ESMTP id", fields["Received"])
        fields, rest = ph.split_store_headers(b[0])
        self.assertEqual(rest, to_lf(tls))
        self.assertRegex(fields["Received"], rb"using TLSv1\.[23]")
        with self.assertRaises(AssertionError):
            ph.split_store_headers(b"Return-Path: <>\nFrom: x\n\nbody\n")
        # Down: refused; up again on the same port.
        pf.stop()
        with self.assertRaises(OSError):
            smtplib.SMTP("127.0.0.1", pf.port, timeout=5)
        pf.start()
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
            self.assertEqual(s.noop()[0], 250)


class RelaySmtpTest(RelayTestCase):

    def send_batch(self, d, n, tag, rcpts_cycle=(("alice@example.com",), ("bob@example.com",),
                                                 ("alice@example.com", "bob@example.com"))):
        """n messages over one connection; {message-id: (qid, content, rcpts)}."""
        items = []
        for i in range(n):
            rcpts = list(rcpts_cycle[i % len(rcpts_cycle)])
            items.append(("sender@example.org", rcpts,
                          make_message("%s%d" % (tag, i), size=500 + 211 * i,
                                       eightbit=(i % 5 == 2))))
        ids = send_many(d.port, items)
        return {message_id(c): (q, c, r) for (_, r, c), q in zip(items, ids)}

    def assert_delivered_once(self, d, pf, sent, timeout=30):
        """Every message of sent is in each of its recipients' Maildirs
        exactly once, as spooled (after Postfix's headers), and nothing
        else is there. Returns the Received: headers Postfix added."""
        want = {}
        for mid, (_, _, rcpts) in sent.items():
            for r in rcpts:
                want[r] = want.get(r, 0) + 1

        def arrived():
            return all(pf.count(r) >= n for r, n in want.items())
        wait_until(arrived, timeout, lambda: "Postfix has %r, wanted %r\n%s\npostfix log:\n%s" % (
            {r: pf.count(r) for r in want}, want, self.describe_spool(d), pf.log_text(2000)))
        received = []
        for r in want:
            seen = {}
            for raw in pf.messages(r):
                fields, rest = ph.split_store_headers(raw)
                received.append(fields["Received"])
                mid = message_id(rest)
                self.assertIn(mid, sent, "a message nobody sent for %s: %r" % (r, rest[:300]))
                qid, content, _ = sent[mid]
                self.assertEqual(rest, to_lf(spool_cat(d.spool, qid)), mid)
                self.assertEqual(strip_received(rest), to_lf(content), mid)
                seen[mid] = seen.get(mid, 0) + 1
            self.assertEqual(sum(seen.values()), want[r], seen)
            dups = {m: c for m, c in seen.items() if c > 1}
            self.assertFalse(dups, "delivered more than once to %s: %r" % (r, dups))
        return received

    def assert_states(self, d, qids, state, timeout=15):
        wait_until(lambda: all(getattr(self.states(d).get(q), "state", None) == state
                               for q in qids),
                   timeout, lambda: "want all %s\n%s" % (state, self.describe_spool(d)))

    def test_plain(self):
        pf = self.postfix(users=USERS)
        d = self.relay_mxd("smtp://127.0.0.1:%d" % pf.port)
        t0 = time.monotonic()
        sent = self.send_batch(d, 30, "plain")
        received = self.assert_delivered_once(d, pf, sent)
        t = time.monotonic() - t0
        for h in received:
            self.assertIn(b"with ESMTP id", h)
        self.assert_states(d, [q for q, _, _ in sent.values()], "delivered")
        print("\nrelay smtp: %d messages delivered to Postfix in %.2fs" % (len(sent), t))
        self.stop_ok(d)
        # Postfix offers CHUNKING: the content went as BDAT (the disconnect
        # lines count the commands; mxd's connections close as it stops).
        log = wait_until(lambda: pf.disconnects(), 10, pf.log_text)
        self.assertTrue(all(re.search(r" bdat=\d", l) for l in log), log)
        # One MAIL per message, several messages per connection.
        mails = sum(int(re.search(r" mail=(\d+)", l).group(1)) for l in log)
        self.assertEqual(mails, len(sent), log)
        self.assertLess(len(log), len(sent), "one connection per message: %r" % log)

    def test_data_path_one_command_at_a_time(self):
        """A next hop without CHUNKING and PIPELINING: DATA with dot-stuffing,
        each command waiting for its reply; still byte for byte."""
        pf = self.postfix(users=USERS, discard_ehlo=("chunking", "pipelining"))
        d = self.relay_mxd("smtp://127.0.0.1:%d" % pf.port)
        sent = self.send_batch(d, 12, "data")
        self.assert_delivered_once(d, pf, sent)
        self.stop_ok(d)
        log = wait_until(lambda: pf.disconnects(), 10, pf.log_text)
        self.assertTrue(all(re.search(r" data=\d", l) and " bdat=" not in l for l in log), log)
        self.assertNotIn("improper command pipelining", pf.log_text(100000))

    def test_starttls_verified_and_wrong_ca(self):
        certdir = self.workdir("pki")
        cert = th.certs().server("mail.example.com").copy_to(certdir, "pf")
        ca = th.certs().ca().copy_to(certdir, "ca").cert
        other_ca = th.certs().ca("other").copy_to(certdir, "other").cert
        pf = self.postfix(users=USERS, cert=cert)
        url = "smtp+tls://127.0.0.1:%d" % pf.port
        d = self.relay_mxd(url, verify=ca)
        sent = self.send_batch(d, 10, "tls")
        received = self.assert_delivered_once(d, pf, sent)
        for h in received:
            self.assertIn(b"with ESMTPS id", h)
            self.assertRegex(h, rb"using TLSv1\.[23] with cipher")
        self.assert_states(d, [q for q, _, _ in sent.values()], "delivered")

        # The same next hop verified against another CA: never delivered
        # (nothing goes in clear), deferred with a next try.
        bad = self.relay_mxd(url, verify=other_ca, name="wrongca")
        wrong = self.send_batch(bad, 3, "wrongca", (("carol@example.com",),))
        qids = [q for q, _, _ in wrong.values()]

        def deferred_twice():
            st = self.states(bad)
            return all(getattr(st.get(q), "state", None) == "deferred" and
                       (st[q].attempts or 0) >= 2 for q in qids)
        wait_until(deferred_twice, 20, lambda: self.describe_spool(bad))
        self.assertEqual(pf.count("carol@example.com"), 0, "delivered despite the wrong CA")
        listed = self.states(bad)[qids[0]]
        self.assertIsNotNone(listed.next_try, listed)
        print("\nwrong CA: %s" % listed)
        self.stop_ok(bad)
        self.stop_ok(d)

    def test_smtps_and_failover(self):
        """smtps:// verified (TLS from the first byte); and a route whose
        first hop refuses connections fails over to the second."""
        certdir = self.workdir("pki")
        cert = th.certs().server("mail.example.com").copy_to(certdir, "pf")
        ca = th.certs().ca().copy_to(certdir, "ca").cert
        pf = self.postfix(users=USERS, cert=cert, smtps=True)
        d = self.relay_mxd("smtps://127.0.0.1:%d" % pf.smtps_port, verify=ca)
        sent = self.send_batch(d, 5, "smtps", (("alice@example.com",),))
        for h in self.assert_delivered_once(d, pf, sent):
            self.assertIn(b"with ESMTPS id", h)
            self.assertRegex(h, rb"using TLSv1\.[23] with cipher")
        dead = self.relay_mxd(["smtp://127.0.0.1:%d" % free_port(),
                               "smtp://127.0.0.1:%d" % pf.port], name="failover")
        sent2 = self.send_batch(dead, 5, "failover", (("bob@example.com",),))
        self.assert_delivered_once(dead, pf, sent2)
        self.assert_states(dead, [q for q, _, _ in sent2.values()], "delivered")
        self.stop_ok(dead)
        self.stop_ok(d)

    def test_starttls_required_but_not_offered(self):
        """smtp+tls:// to a next hop without STARTTLS: nothing goes in clear;
        deferred (4.7.4 by docs/relay.md)."""
        pf = self.postfix(users=USERS)          # no certificate: no STARTTLS
        ca = th.certs().ca().copy_to(self.workdir("pki"), "ca").cert
        d = self.relay_mxd("smtp+tls://127.0.0.1:%d" % pf.port, verify=ca)
        sent = self.send_batch(d, 2, "clear", (("carol@example.com",),))
        qids = [q for q, _, _ in sent.values()]
        wait_until(lambda: all(getattr(self.states(d).get(q), "state", None) == "deferred"
                               and (self.states(d)[q].attempts or 0) >= 2 for q in qids),
                   20, lambda: self.describe_spool(d))
        self.assertEqual(pf.count("carol@example.com"), 0, "delivered in clear")
        # Postfix's disconnect lines count the commands: no MAIL was sent.
        self.assertRegex(pf.log_text(), r"disconnect from .* ehlo=", "mxd never connected?")
        self.assertNotRegex(pf.log_text(), r"disconnect from .* mail=", "a transaction in clear")
        listed = self.states(d)[qids[0]]
        self.assertIn("4.7.4", listed.reply or "", listed)
        print("\nSTARTTLS not offered: %s" % listed)
        self.stop_ok(d)

    def test_next_hop_down_then_up(self):
        pf = self.postfix(users=USERS)
        pf.stop()
        d = self.relay_mxd("smtp://127.0.0.1:%d" % pf.port)
        n = 20
        sent = self.send_batch(d, n, "down")
        qids = [q for q, _, _ in sent.values()]

        def all_deferred():
            st = self.states(d)
            return all(getattr(st.get(q), "state", None) == "deferred" and st[q].next_try
                       for q in qids)
        wait_until(all_deferred, 15, lambda: self.describe_spool(d))
        st = self.states(d)
        example = st[qids[0]]
        self.assertGreaterEqual(example.attempts, 1, example)
        self.assertIn("127.0.0.1:%d" % pf.port, example.hop or "", example)
        self.assertEqual(sum(pf.count(r) for r in ("alice@example.com", "bob@example.com")), 0)
        t_up = time.monotonic()
        pf.start()
        self.assert_delivered_once(d, pf, sent, timeout=30)
        t_drain = time.monotonic() - t_up
        self.assert_states(d, qids, "delivered")
        print("\nnext hop down then up: %d messages deferred (e.g. %s); all delivered once "
              "%.2fs after Postfix came back" % (n, example, t_drain))
        self.stop_ok(d)

    def test_5xx_bounces_to_the_bounce_route(self):
        pf = self.postfix(users=USERS, reject={"rej5@example.com": "550 5.7.1 refused by the test",
                                               "rej4@example.com": "450 4.2.1 try again later"})
        sink = self.postfix(name="bounces", users=USERS, hostname="bounces.test.example")
        d = self.relay_mxd("smtp://127.0.0.1:%d" % pf.port,
                           bounce="smtp://127.0.0.1:%d" % sink.port,
                           extra=["relay retry 5m..1h"])
        content = make_message("bounceme", size=3000)
        rcpts = ["alice@example.com", "rej5@example.com", "rej4@example.com",
                 "nosuch@example.com"]
        qid = send(d.port, "sender@example.org", rcpts, content)
        wait_until(lambda: pf.messages("alice@example.com"), 20, lambda: self.describe_spool(d))
        dsns = wait_until(lambda: sink.messages("sender@example.org"), 20,
                          lambda: self.describe_spool(d) + "\n" + sink.log_text(2000))
        self.assertEqual(len(dsns), 1, "one DSN for the message's failures")
        fields, rest = ph.split_store_headers(dsns[0])
        self.assertIn(b"<>", fields["Return-Path"], "a DSN goes out with the null sender")
        dsn = Dsn(rest)
        self.assertEqual(dsn.final_recipients(), ["nosuch@example.com", "rej5@example.com"])
        assert_failed_block(self, dsn.recipient("rej5@example.com"), code="5.7.1")
        assert_failed_block(self, dsn.recipient("nosuch@example.com"), code="5.1.1")
        self.assertIn("refused by the test", str(dsn.recipient("rej5@example.com")
                                                 .get("Diagnostic-Code")))
        self.assertIn(b"bounceme@test.example", dsn.raw, "the DSN returns the headers")
        self.assertEqual(str(dsn.msg["To"]).strip("<> "), "sender@example.org")
        # The 4xx one waits for its next try.
        _, rc = spool_show(d.spool, qid, d.config_path)
        self.assertEqual(rc["rej4@example.com"][0], "deferred", rc)
        self.assertEqual(rc["alice@example.com"][0], "delivered", rc)
        self.assertEqual(rc["rej5@example.com"][0], "bounced", rc)

        # No DSN for the null sender: the failure is recorded, nothing sent.
        null_qid = send(d.port, "", ["rej5@example.com"], make_message("nullsender"))
        wait_until(lambda: getattr(self.states(d).get(null_qid), "state", None) == "failed", 20,
                   lambda: self.describe_spool(d))
        time.sleep(1)   # a DSN, if one were made, would be spooled and sent by now
        self.assertEqual(len(sink.messages("sender@example.org")), 1)
        dsn_like = [m for m in self.states(d).values() if m.sender == "<>"]
        self.assertEqual(len(dsn_like), 2, "the first DSN and the null-sender message only: %r"
                         % dsn_like)
        print("\nDSN: %s" % ", ".join("%s %s" % (b.get("Final-Recipient"), b.get("Status"))
                                      for b in dsn.recipients))
        self.stop_ok(d)


if __name__ == "__main__":
    unittest.main()
