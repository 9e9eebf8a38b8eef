"""Relay under SIGKILL: at least once, never zero times (issue 7).

Client threads send unique messages (a Message-ID each) to mxd without
pause while mxd delivers them to a real Dovecot over LMTP. mxd is killed
with SIGKILL twice mid-stream and restarted on the same spool each time.
At the end every message mxd acknowledged with 250 must be in the
mailbox at least once, byte for byte as sent (after the store's headers
and mxd's Received:). Duplicates are allowed (a kill between Dovecot's
250 and the durable delivery record delivers again) and counted;
messages that never got their 250 may or may not be there. Nothing else
may be there. The figures are printed.

MXD_RELAY_CRASH_CLIENTS sets the number of client threads (default 6).
"""

import os
import smtplib
import threading
import time
import unittest

from mxharness import SLOW, queued_id, spool_verify, strip_received
from relayharness import RelayTestCase, make_message, message_id, to_lf, wait_until
import dovecotharness as dh

CLIENTS = int(os.environ.get("MXD_RELAY_CRASH_CLIENTS", "6"))
USERS = ("alice", "bob", "carol")
PHASE_SECONDS = 3.0


class Clients:
    """The senders, and what each message got."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = {}       # message-id -> content
        self.acked = {}      # message-id -> queue id
        self.refused = 0     # connection errors and non-250 replies
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def run(self, index):
        n = 0
        user = USERS[index % len(USERS)]
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10 * SLOW) as s:
                    s.ehlo("client%d.test.example" % index)
                    for _ in range(20):
                        if self.stop.is_set():
                            break
                        n += 1
                        tag = "c%d-m%d" % (index, n)
                        content = make_message(tag, size=300 + (n * 37) % 5000,
                                               to="%s@example.com" % user)
                        mid = message_id(content)
                        with self.lock:
                            self.sent[mid] = content
                        s.mail("sender@example.org")
                        code, _ = s.rcpt("%s@example.com" % user)
                        if code != 250:
                            raise smtplib.SMTPException("RCPT %d" % code)
                        code, text = s.data(content)
                        if code != 250:
                            raise smtplib.SMTPException("DATA %d" % code)
                        with self.lock:
                            self.acked[mid] = queued_id(text)
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.refused += 1
                time.sleep(0.05)


class RelayCrashTest(RelayTestCase):

    def test_sigkill_while_delivering(self):
        store = self.dovecot(users=USERS, fsync="never", process_limit=32)
        d = self.relay_mxd("lmtp://127.0.0.1:%d" % store.port, cores=2,
                           extra=["segment-size 256k"])
        clients = Clients(d.port)
        clients.start()
        kills = []
        try:
            for _ in range(2):
                time.sleep(PHASE_SECONDS)
                kills.append((len(clients.acked), store.total()))
                d.kill()
                d.start()
            time.sleep(PHASE_SECONDS)
        finally:
            clients.finish()
        t_end = time.monotonic()
        acked = dict(clients.acked)
        self.assertGreater(len(acked), 50, "too few messages went in to mean anything")
        # Each kill landed while mail was being delivered, not before.
        stored_at_kills = [s for _, s in kills]
        self.assertTrue(stored_at_kills[0] > 0 and stored_at_kills[1] > stored_at_kills[0],
                        "the store did not grow between the kills: %r" % kills)

        def stored_ids():
            ids = {}
            for u in USERS:
                for raw in store.messages(u):
                    mid = message_id(raw)
                    ids[mid] = ids.get(mid, 0) + 1
            return ids

        wait_until(lambda: not (set(acked) - set(stored_ids())), 45,
                   lambda: "%d acknowledged messages not in the store, e.g. %r\n%s" % (
                       len(set(acked) - set(stored_ids())),
                       sorted(set(acked) - set(stored_ids()))[:5], self.describe_spool(d, 10)))
        t_drain = time.monotonic() - t_end
        # Whatever is still on its way (unacknowledged messages mxd did
        # spool) gets a moment, so the count below is final.
        time.sleep(1)
        ids = stored_ids()
        stray = set(ids) - set(clients.sent)
        self.assertFalse(stray, "messages nobody sent: %r" % sorted(stray)[:5])
        for u in USERS:
            for raw in store.messages(u):
                rest = dh.strip_store_headers(raw)
                self.assertEqual(strip_received(rest), to_lf(clients.sent[message_id(rest)]),
                                 "%s not stored byte for byte" % message_id(rest))
        dups = {m: c for m, c in ids.items() if c > 1}
        unacked_delivered = len(set(ids) - set(acked))
        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, out)
        print("\nrelay crash: %d clients, %d messages sent, %d acknowledged, %d refused or cut "
              "by the kills; kills at (acked, stored) %r; all acknowledged in Dovecot %.2fs "
              "after the load; stored %d distinct, duplicates %d (%d extra copies), "
              "unacknowledged but delivered %d, lost 0"
              % (CLIENTS, len(clients.sent), len(acked), clients.refused, kills, t_drain,
                 len(ids), len(dups), sum(c - 1 for c in dups.values()), unacked_delivered))
        self.stop_ok(d)


if __name__ == "__main__":
    unittest.main()
