"""Relay over LMTP to a real Dovecot (issue 7), and the harness proven first.

dovecotharness.py runs Debian's Dovecot LMTP server on a loopback port and
a Unix socket with a Maildir store: users alice, bob, sender, user1; carol
has a 1 KiB quota (452 4.2.2 after DATA: temporary), anyone else is
unknown (550 5.1.1 at RCPT).

- The harness alone, with Python's smtplib.LMTP: messages stored byte for
  byte apart from Dovecot's Return-Path/Delivered-To/Received; per
  recipient replies after DATA (RFC 2033 4.2).
- mxd relaying to it: every message in the right mailboxes, once, byte
  for byte (the spooled message, mxd's Received: first, is what Dovecot
  stored after its own headers); over TCP and over the Unix socket.
- One message to a good, an over-quota and an unknown recipient: the good
  one delivered, the unknown one bounced (a DSN to the sender, through
  `bounce relay via`), the over-quota one deferred, with its next try in
  `mxspool -f CONF list` and `show`.
- The spool reclaimed after a drained burst (mxload, a few thousand
  messages, small segments): only the segments being written are left.
"""

import calendar
import json
import os
import subprocess
import time
import unittest

from mxharness import MXD_BIN, ROOT, SLOW, free_port, mxspool, spool_cat, strip_received
from relayharness import (Dsn, RelayTestCase, assert_failed_block, make_message, message_id,
                          send, send_many, spool_bytes, spool_files, spool_show, to_lf,
                          wait_until)
import dovecotharness as dh

USERS = ("alice", "bob", "carol", "sender", "user1")
MXLOAD = os.path.join(os.path.dirname(MXD_BIN), "mxload")
if not os.path.exists(MXLOAD):
    MXLOAD = os.path.join(ROOT, "build", "bin", "mxload")


def lmtp_deliver(lmtp, sender, rcpts, content):
    """One LMTP transaction with smtplib.LMTP: (RCPT replies, replies after
    the data, one per accepted recipient in order). smtplib's data() reads
    only one reply, so the data is sent by hand (dot-stuffed)."""
    code, _ = lmtp.mail(sender)
    assert code == 250, code
    rcpt_replies = [lmtp.rcpt(r) for r in rcpts]
    accepted = [r for r, (c, _) in zip(rcpts, rcpt_replies) if c == 250]
    lmtp.putcmd("data")
    code, text = lmtp.getreply()
    assert code == 354, (code, text)
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    lmtp.send(stuffed + b".\r\n")
    return rcpt_replies, [(r,) + lmtp.getreply() for r in accepted]


class DovecotHarnessTest(RelayTestCase):
    """The harness with a real LMTP client, before mxd is involved."""

    def test_smtplib_lmtp_tcp_and_unix_socket(self):
        import smtplib
        d = self.dovecot(users=USERS, over_quota=("carol",))
        big = make_message("big", size=200000, eightbit=True)
        msgs = [make_message("small"), make_message("eight", eightbit=True), big]
        with smtplib.LMTP("127.0.0.1", d.port) as l:
            l.ehlo("client.test.example")
            for m in msgs:
                rr, after = lmtp_deliver(l, "sender@example.org", ["alice@example.com"], m)
                self.assertEqual([c for c, _ in rr], [250])
                self.assertEqual([a[1] for a in after], [250], after)
            # Three recipients: one delivered, one over quota (452 after the
            # data, for that recipient only), one unknown (550 5.1.1 at RCPT).
            three = make_message("three", size=4000)
            rr, after = lmtp_deliver(l, "sender@example.org",
                                     ["bob@example.com", "carol@example.com",
                                      "nosuch@example.com"], three)
            self.assertEqual([c for c, _ in rr], [250, 250, 550], rr)
            self.assertIn(b"5.1.1", rr[2][1])
            self.assertEqual([(a[0], a[1]) for a in after],
                             [("bob@example.com", 250), ("carol@example.com", 452)], after)
            self.assertIn(b"4.2.2", after[1][2])
        # The same over the Unix socket.
        with smtplib.LMTP(d.socket_path) as l:
            l.ehlo("client.test.example")
            rr, after = lmtp_deliver(l, "<>", ["alice@example.com", "bob@example.com"],
                                     make_message("unix"))
            self.assertEqual([a[1] for a in after], [250, 250])

        stored = d.wait_count("alice", 4)
        self.assertEqual(len(stored), 4)
        for sent, raw in zip(msgs, stored[:3]):
            fields, rest = dh.split_store_headers(raw)
            self.assertEqual(rest, to_lf(sent), "stored message differs after Dovecot's headers")
            self.assertEqual(dh.return_path(raw), "sender@example.org")
            self.assertEqual(dh.delivered_to(raw), "alice@example.com")
            self.assertIn(b"with LMTP", fields["Received"])
        # Two recipients: no Delivered-To, the rest identical.
        self.assertIsNone(dh.delivered_to(stored[3]))
        self.assertEqual(dh.return_path(stored[3]), "")
        self.assertEqual(dh.strip_store_headers(stored[3]), to_lf(make_message("unix")))
        self.assertEqual(dh.strip_store_headers(d.messages("bob")[0]), to_lf(three))
        self.assertEqual(d.count("carol"), 0)
        # The comparison fails on one byte more or less.
        with self.assertRaises(AssertionError):
            dh.split_store_headers(b"From: x\n\nbody\n")
        self.assertNotEqual(dh.strip_store_headers(stored[0]), to_lf(msgs[0]) + b"x")

    def test_over_quota_permanent(self):
        """quota_tempfail off: the over-quota recipient gets 552 5.2.2."""
        import smtplib
        d = self.dovecot(users=USERS, over_quota=("carol",), quota_tempfail=False)
        with smtplib.LMTP("127.0.0.1", d.port) as l:
            l.ehlo("client.test.example")
            _, after = lmtp_deliver(l, "sender@example.org", ["carol@example.com"],
                                    make_message("q", size=4000))
        self.assertEqual(after[0][1], 552, after)
        self.assertIn(b"5.2.2", after[0][2])


class RelayLmtpTest(RelayTestCase):

    def assert_stored_as_spooled(self, d, store, user, qid_of, expect_count=None):
        """Each message in user's Maildir is the spooled message (mxd's
        Received: first) byte for byte after Dovecot's headers, and the
        message the client sent after mxd's Received:. Returns the
        Message-IDs found, with their counts."""
        seen = {}
        for raw in store.messages(user):
            rest = dh.strip_store_headers(raw)
            mid = message_id(rest)
            self.assertIn(mid, qid_of, "a message nobody sent in %s's Maildir: %r"
                          % (user, rest[:300]))
            qid, sent = qid_of[mid]
            spooled = spool_cat(d.spool, qid)
            self.assertEqual(rest, to_lf(spooled),
                             "%s in %s's Maildir differs from the spooled message" % (mid, user))
            self.assertEqual(strip_received(rest), to_lf(sent))
            seen[mid] = seen.get(mid, 0) + 1
        return seen

    def test_messages_delivered_byte_identical(self):
        store = self.dovecot(users=USERS, fsync="never")
        d = self.relay_mxd("lmtp://127.0.0.1:%d" % store.port)
        t0 = time.monotonic()
        plan = []   # (rcpts, content)
        for i in range(40):
            rcpts = [["alice@example.com"], ["bob@example.com"],
                     ["alice@example.com", "bob@example.com"]][i % 3]
            size = 300000 if i == 7 else 400 + 97 * i
            plan.append((rcpts, make_message("m%d" % i, size=size, eightbit=(i % 4 == 1))))
        qid_of = {}
        batch = [("sender@example.org", r, c) for r, c in plan]
        ids = send_many(d.port, batch[:20]) + [send(d.port, s, r, c) for s, r, c in batch[20:]]
        for (rcpts, content), qid in zip(plan, ids):
            qid_of[message_id(content)] = (qid, content)
        t_in = time.monotonic() - t0
        want = {"alice": sum(1 for r, _ in plan if "alice@example.com" in r),
                "bob": sum(1 for r, _ in plan if "bob@example.com" in r)}

        def drained():
            return all(store.count(u) >= n for u, n in want.items())
        wait_until(drained, 30, lambda: "Dovecot has alice=%d bob=%d, wanted %r\n%s" % (
            store.count("alice"), store.count("bob"), want, self.describe_spool(d)))
        t_drain = time.monotonic() - t0
        for user, n in want.items():
            seen = self.assert_stored_as_spooled(d, store, user, qid_of)
            self.assertEqual(sum(seen.values()), n, "%s: %r" % (user, seen))
            self.assertTrue(all(v == 1 for v in seen.values()), "duplicates: %r" % seen)
            for raw in store.messages(user):
                self.assertEqual(dh.return_path(raw), "sender@example.org")
        # A lone recipient's copy names it in Delivered-To.
        for raw in store.messages("bob"):
            mid = message_id(raw)
            rcpts = [r for r, c in plan if message_id(c) == mid][0]
            if len(rcpts) == 1:
                self.assertEqual(dh.delivered_to(raw), "bob@example.com")
        # mxspool shows every message delivered.
        wait_until(lambda: all(self.states(d).get(q) is not None and
                               self.states(d)[q].state == "delivered" for q in ids),
                   15, lambda: self.describe_spool(d))
        print("\nrelay lmtp: %d messages (%d deliveries) in %.2fs, drained to Dovecot in %.2fs"
              % (len(plan), sum(want.values()), t_in, t_drain))
        self.stop_ok(d)

    def test_unix_socket(self):
        store = self.dovecot(users=USERS)
        d = self.relay_mxd("lmtp:" + store.socket_path)
        items = [("sender@example.org", ["alice@example.com"], make_message("u%d" % i))
                 for i in range(5)]
        ids = send_many(d.port, items)
        qid_of = {message_id(c): (q, c) for (_, _, c), q in zip(items, ids)}
        store.wait_count("alice", 5, what=lambda: self.describe_spool(d))
        seen = self.assert_stored_as_spooled(d, store, "alice", qid_of)
        self.assertEqual(sorted(seen.values()), [1] * 5)

    def test_per_recipient_outcomes(self):
        """Good, over quota (452 after DATA), unknown (550 at RCPT) in one
        message: delivered, deferred with a next try, bounced with a DSN."""
        store = self.dovecot(users=USERS, over_quota=("carol",))
        url = "lmtp://127.0.0.1:%d" % store.port
        # A long first retry, so the deferral is still there to be read.
        d = self.relay_mxd(url, bounce=url, extra=["relay retry 5m..1h"])
        content = make_message("three", size=4000)
        t_send = time.time()
        qid = send(d.port, "sender@example.org",
                   ["alice@example.com", "carol@example.com", "nosuch@example.com"], content)
        store.wait_count("alice", 1, what=lambda: self.describe_spool(d))
        dsns = store.wait_count("sender", 1, what=lambda: self.describe_spool(d))
        self.assertEqual(strip_received(dh.strip_store_headers(store.messages("alice")[0])),
                         to_lf(content))
        self.assertEqual(store.count("carol"), 0)

        # The DSN: to the sender, from the null sender, for nosuch only.
        raw = dsns[0]
        self.assertEqual(dh.return_path(raw), "")
        dsn = Dsn(dh.strip_store_headers(raw))
        self.assertEqual(dsn.final_recipients(), ["nosuch@example.com"])
        block = dsn.recipient("nosuch@example.com")
        assert_failed_block(self, block, code="5.1.1")
        self.assertIn("550", str(block.get("Diagnostic-Code")))
        self.assertIn(b"three@test.example", dsn.raw, "the DSN names the original message")

        # carol: deferred, with its next try and the 452, in show and list.
        def carol_deferred():
            text, rc = spool_show(d.spool, qid, d.config_path)
            return rc if rc.get("carol@example.com", ("",))[0] == "deferred" else None
        rc = wait_until(carol_deferred, 15, lambda: spool_show(d.spool, qid, d.config_path)[0])
        state, attempts, rest = rc["carol@example.com"]
        self.assertGreaterEqual(attempts, 1)
        self.assertRegex(rest, r"next-try=\d{4}-\d\d-\d\dT")
        self.assertIn("452", rest)
        self.assertEqual(rc["alice@example.com"][0], "delivered", rc)
        self.assertEqual(rc["nosuch@example.com"][0], "bounced", rc)
        listed = self.states(d)[qid]
        self.assertIsNotNone(listed.next_try, listed)
        self.assertIn("452", listed.reply)
        next_try = calendar.timegm(time.strptime(listed.next_try, "%Y-%m-%dT%H:%M:%SZ"))
        self.assertGreater(next_try, t_send + 60, "next try %s is not ~5m away" % listed.next_try)
        print("\nper-recipient: alice delivered, nosuch bounced (DSN %s), carol deferred: %s"
              % (block.get("Status"), listed))

    def test_permanent_failure_after_data(self):
        """LMTP's per-recipient 552 5.2.2 after the data (quota, permanent):
        that recipient bounced, the other of the same transaction delivered."""
        store = self.dovecot(users=USERS, over_quota=("carol",), quota_tempfail=False)
        url = "lmtp://127.0.0.1:%d" % store.port
        d = self.relay_mxd(url, bounce=url)
        qid = send(d.port, "sender@example.org", ["bob@example.com", "carol@example.com"],
                   make_message("full", size=4000))
        store.wait_count("bob", 1, what=lambda: self.describe_spool(d))
        dsns = store.wait_count("sender", 1, what=lambda: self.describe_spool(d))
        dsn = Dsn(dh.strip_store_headers(dsns[0]))
        self.assertEqual(dsn.final_recipients(), ["carol@example.com"])
        assert_failed_block(self, dsn.recipient("carol@example.com"), code="5.2.2")
        self.assertEqual(store.count("carol"), 0)
        wait_until(lambda: spool_show(d.spool, qid, d.config_path)[1].get(
            "carol@example.com", ("",))[0] == "bounced", 10,
            lambda: spool_show(d.spool, qid, d.config_path)[0])

    def test_lifetime_expires_and_bounces(self):
        """A next hop that never answers: after `relay lifetime` the
        recipient expires and its sender gets a DSN (Action: failed, 4.4.7
        or the last reply's status) through `bounce relay via`."""
        store = self.dovecot(users=USERS)
        dead = "lmtp://127.0.0.1:%d" % free_port()
        d = self.relay_mxd(dead, bounce="lmtp://127.0.0.1:%d" % store.port,
                           extra=["relay lifetime 3s", "relay retry 1s..1s"])
        t0 = time.monotonic()
        qid = send(d.port, "sender@example.org", ["alice@example.com"],
                   make_message("expires"))
        dsns = store.wait_count("sender", 1, timeout=20, what=lambda: self.describe_spool(d))
        t_dsn = time.monotonic() - t0
        self.assertGreaterEqual(t_dsn, 2.5, "bounced before the lifetime was over")
        dsn = Dsn(dh.strip_store_headers(dsns[0]))
        self.assertEqual(dsn.final_recipients(), ["alice@example.com"])
        block = dsn.recipient("alice@example.com")
        assert_failed_block(self, block, status_class="4", diagnostic=False)
        self.assertEqual(store.count("alice"), 0)
        _, rc = spool_show(d.spool, qid, d.config_path)
        self.assertIn(rc["alice@example.com"][0], ("bounced", "expired"), rc)
        print("\nlifetime 3s: DSN after %.1fs, %s %s" % (t_dsn, block.get("Action"),
                                                        block.get("Status")))

    def test_operator_retry_and_drop(self):
        """`mxspool retry` sends a deferred message now, long before its next
        try; `mxspool drop` gives one up: never delivered, no DSN."""
        store = self.dovecot(users=USERS, start=False)   # down for now
        d = self.relay_mxd("lmtp://127.0.0.1:%d" % store.port, extra=["relay retry 10m..1h"],
                           bounce="lmtp://127.0.0.1:%d" % store.port)
        q1 = send(d.port, "sender@example.org", ["alice@example.com"], make_message("retryme"))
        q2 = send(d.port, "sender@example.org", ["bob@example.com"], make_message("dropme"))
        wait_until(lambda: all(getattr(self.states(d).get(q), "state", None) == "deferred"
                               for q in (q1, q2)), 15, lambda: self.describe_spool(d))
        store.start()
        time.sleep(1.5)   # the next tries are 10 minutes away: nothing moves by itself
        self.assertEqual(store.count("alice") + store.count("bob"), 0)
        r = mxspool(d.spool, "retry", q1)
        self.assertEqual(r.returncode, 0)
        t0 = time.monotonic()
        store.wait_count("alice", 1, timeout=10, what=lambda: self.describe_spool(d))
        t_retry = time.monotonic() - t0
        mxspool(d.spool, "drop", q2)
        wait_until(lambda: getattr(self.states(d).get(q2), "state", None) == "dropped", 10,
                   lambda: self.describe_spool(d))
        wait_until(lambda: getattr(self.states(d).get(q1), "state", None) == "delivered", 10,
                   lambda: self.describe_spool(d))
        time.sleep(1)
        self.assertEqual((store.count("bob"), store.count("sender")), (0, 0),
                         "a dropped message is neither delivered nor bounced")
        print("\nretry: delivered %.2fs after mxspool retry; drop: dropped, nothing sent"
              % t_retry)
        self.stop_ok(d)

    def test_spool_reclaimed_after_burst(self):
        """A few thousand messages through small segments; once Dovecot has
        them all, only the segment each core writes is left."""
        if not os.path.exists(MXLOAD):
            self.skipTest("mxload not built")
        store = self.dovecot(users=USERS, fsync="never", process_limit=32)
        cores = 2
        d = self.relay_mxd("lmtp://127.0.0.1:%d" % store.port, cores=cores,
                           extra=["segment-size 64k"])
        n = int(os.environ.get("MXD_RELAY_BURST", "3000"))
        out = os.path.join(self.tmp, "mxload.json")
        t0 = time.monotonic()
        r = subprocess.run([MXLOAD, "--server", "127.0.0.1:%d" % d.port, "--quiet", "--json", out,
                            "--messages", str(n), "--connections", "8", "--size", "1k",
                            "--to", "user%d@example.com", "--timeout", str(30 * SLOW)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=120 * SLOW)
        t_in = time.monotonic() - t0
        with open(out) as f:
            res = json.load(f)
        self.assertEqual((r.returncode, res["errors"]["total"], res["messages_ok"]), (0, 0, n),
                         r.stdout.decode("utf-8", "replace"))
        peak_segs, peak_bytes = len(spool_files(d.spool, "seg")), spool_bytes(d.spool)
        store.wait_count("user1", n, timeout=60, what=lambda: self.describe_spool(d, 5))
        t_drain = time.monotonic() - t0
        wait_until(lambda: len(spool_files(d.spool, "seg")) <= cores, 20,
                   lambda: "segments left: %r\n%s" % (spool_files(d.spool, "seg")[:10],
                                                      self.describe_spool(d, 5)))
        segs, left = spool_files(d.spool, "seg"), spool_bytes(d.spool)
        dlvs = spool_files(d.spool, "dlv")
        self.assertLessEqual(len(dlvs), cores, dlvs)
        # Decimal sequence numbers: the ones left say how many segments the
        # burst went through, every one before them deleted.
        made = sum(int(os.path.basename(p)[:-4]) for p in segs)
        self.assertGreater(made, 4 * cores, "the burst never filled a segment: %r" % segs)
        self.assertEqual(store.count("user1"), n, "duplicates in the store")
        print("\nreclaim: %d messages in %.2fs (%.0f/s inbound), drained to Dovecot in %.2fs "
              "(%.0f/s end to end); %d segments made, %d (%d bytes) on disk as the burst ended, "
              "%d (%d bytes) after draining, .dlv %d"
              % (n, t_in, n / t_in, t_drain, n / t_drain, made, peak_segs, peak_bytes,
                 len(segs), left, len(dlvs)))
        self.stop_ok(d)


if __name__ == "__main__":
    unittest.main()
