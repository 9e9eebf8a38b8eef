"""Durability under SIGKILL: "acknowledged means durable", exactly once.

16+ client threads send continuously, each message unique (X-Test-Id) and
recorded when it gets "250 ... queued as ID". mxd is killed with SIGKILL
mid-stream, restarted on the same spool (recovery), and the round repeats.
At the end `mxspool verify` passes and the Maildir export holds every
acknowledged message exactly once and byte for byte; a message that never
got its 250 may be there at most once, and whole; nothing is duplicated.
"""

import os
import random
import re
import socket
import threading
import time
import unittest

from mxharness import (CRLF, SLOW, MxdTestCase, RawSmtp, dot_stuff, spool_export,
                       spool_ids, spool_verify, split_received)

CLIENTS = int(os.environ.get("MXD_CRASH_CLIENTS", "16"))
ROUNDS = 3
RUN_SECONDS = 2.0

TEST_ID_RE = re.compile(rb"^X-Test-Id: (\S+)\r?$", re.M)


class Client(threading.Thread):
    def __init__(self, port, index, round_no, stop, book):
        super().__init__(daemon=True)
        self.port = port
        self.index = index
        self.round = round_no
        self.stop = stop
        self.book = book
        self.rng = random.Random(index * 1000 + round_no)
        self.n = 0

    def message(self):
        self.n += 1
        tid = "r%d-c%d-m%d" % (self.round, self.index, self.n)
        size = self.rng.choice((50, 500, 3000, 20000, 120000))
        payload = []
        total = 0
        while total < size:
            line = "%x" % self.rng.getrandbits(self.rng.choice((8, 64, 300)))
            if self.rng.random() < 0.05:
                line = "." + line  # exercises dot-stuffing
            payload.append(line.encode() + CRLF)
            total += len(line) + 2
        content = (b"Subject: crash test\r\nX-Test-Id: " + tid.encode() + b"\r\n\r\n" +
                   b"".join(payload))
        return tid, content

    def run(self):
        while not self.stop.is_set():
            try:
                c = RawSmtp(self.port, timeout=10)
            except OSError:
                time.sleep(0.02)
                continue
            try:
                c.connect_greeting()
                c.ehlo()
                while not self.stop.is_set():
                    tid, content = self.message()
                    with self.book.lock:
                        self.book.sent[tid] = content
                    r = c.cmd("MAIL FROM:<crash%d@example.org>" % self.index)
                    if r.code != 250:
                        break
                    r = c.cmd("RCPT TO:<box%d@example.com>" % (self.n % 4))
                    if r.code != 250:
                        break
                    r = c.cmd("DATA")
                    if r.code != 354:
                        break
                    c.send(dot_stuff(content) + b".\r\n")
                    r = c.reply()
                    if r.code == 250:
                        m = re.search(r"queued as ([0-9A-Fa-f]{16})", r.last)
                        with self.book.lock:
                            self.book.acked[tid] = m.group(1).lower() if m else None
                    else:
                        with self.book.lock:
                            self.book.other_replies.append((tid, r.last))
            except (OSError, ConnectionError, AssertionError, ValueError):
                pass  # killed mid-stream: this message is unacknowledged
            finally:
                c.close()


class Book:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}     # test id -> exact content (before dot-stuffing)
        self.acked = {}    # test id -> queue id from the 250
        self.other_replies = []


class CrashTest(MxdTestCase):

    def test_sigkill_loses_no_acknowledged_message(self):
        book = Book()
        d = self.mxd(cores=2)
        for round_no in range(ROUNDS):
            stop = threading.Event()
            clients = [Client(d.port, i, round_no, stop, book) for i in range(CLIENTS)]
            for c in clients:
                c.start()
            # Let the load build up, then kill mid-stream, at a moment that
            # differs from round to round.
            deadline = time.monotonic() + (RUN_SECONDS + random.random()) * SLOW
            acked_before = len(book.acked)
            while time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertTrue(d.running(), "mxd died under load:\n" + d.stderr_text())
            d.kill()
            stop.set()
            for c in clients:
                c.join(30)
                self.assertFalse(c.is_alive(), "a client thread hung")
            self.assertGreater(len(book.acked), acked_before,
                               "round %d: no message was acknowledged before the kill" % round_no)
            # Restart on the same spool: recovery truncates any torn tail.
            d.start()
            rc, out = spool_verify(d.spool)
            self.assertEqual(rc, 0, "mxspool verify after recovery (round %d):\n%s"
                             % (round_no, out[-3000:]))
        self.stop_ok(d)

        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, out[-3000:])
        self.assertEqual(book.other_replies, [], "unexpected non-250 replies to data")

        ids = spool_ids(d.spool)
        self.assertEqual(len(ids), len(set(ids)), "duplicate queue ids in mxspool list")
        id_set = set(ids)
        for tid, qid in book.acked.items():
            self.assertIsNotNone(qid, tid)
            self.assertIn(qid, id_set, "acknowledged %s (%s) missing from the spool" % (tid, qid))

        exported = spool_export(d.spool, self.scratch_dir("maildir"))
        self.assertEqual(len(exported), len(ids), "export count != list count")
        seen = {}
        for name, raw in exported.items():
            _, content = split_received(raw)
            if b"\r\n" not in content:
                content = content.replace(b"\n", b"\r\n")  # Maildir with LF
            m = TEST_ID_RE.search(content)
            self.assertTrue(m, "a spooled message without X-Test-Id: %r" % content[:300])
            tid = m.group(1).decode()
            seen[tid] = seen.get(tid, 0) + 1
            self.assertIn(tid, book.sent, "a message nobody sent: %s" % tid)
            self.assertEqual(content, book.sent[tid], "message %s is not byte-identical" % tid)
        dups = {t: n for t, n in seen.items() if n > 1}
        self.assertEqual(dups, {}, "duplicated messages")
        missing = [t for t in book.acked if t not in seen]
        self.assertEqual(missing, [], "acknowledged messages lost")
        unacked_present = len(seen) - len(book.acked)
        print("\n    %d rounds: %d sent, %d acknowledged, %d unacknowledged but kept"
              % (ROUNDS, len(book.sent), len(book.acked), unacked_present), end=" ", flush=True)


if __name__ == "__main__":
    unittest.main()
