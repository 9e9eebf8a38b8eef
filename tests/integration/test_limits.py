"""Connection, error and time limits (DESIGN rule 5) against a real mxd.

Loopback has a whole /8: connections from 127.0.0.2, 127.0.0.3, ... are
different clients, which is how per-client and total limits are told apart.
"""

import time
import unittest

from mxharness import SLOW, MxdTestCase, RawSmtp


def greet(port, source="127.0.0.1"):
    c = RawSmtp(port, source=source, timeout=10)
    return c, c.connect_greeting()


class LimitsTest(MxdTestCase):

    def assert_refused(self, port, source="127.0.0.1"):
        c, g = greet(port, source)
        try:
            self.assertEnhanced(g, 421, "4.7.0")
            self.assertTrue(c.closed_by_peer(), "421 but the connection stayed open")
        finally:
            c.close()

    def eventually_greeted(self, port, source="127.0.0.1"):
        """A slot freed by a close is free again soon (the server sees the
        close asynchronously)."""
        deadline = time.monotonic() + 5 * SLOW
        while True:
            c, g = greet(port, source)
            if g.code == 220:
                return c
            c.close()
            self.assertLess(time.monotonic(), deadline, "slot never freed: %r" % g)
            time.sleep(0.1)

    def test_max_connections_per_client(self):
        n = 3
        d = self.mxd(extra=["max-connections-per-client %d" % n])
        held = []
        try:
            for _ in range(n):
                c, g = greet(d.port)
                held.append(c)
                self.assertEqual(g.code, 220, g)
            self.assert_refused(d.port)
            # Another client address is not affected.
            c, g = greet(d.port, "127.0.0.2")
            self.assertEqual(g.code, 220, g)
            c.close()
            # The held sessions still work.
            self.assertEnhanced(held[0].cmd("NOOP"), 250)
            # Closing one frees a slot.
            held.pop().close()
            held.append(self.eventually_greeted(d.port))
            self.assert_refused(d.port)
        finally:
            for c in held:
                c.close()
        self.stop_ok(d)

    def test_max_connections_total(self):
        n = 4
        d = self.mxd(extra=["max-connections %d" % n, "max-connections-per-client 100"])
        held = []
        try:
            for i in range(n):
                c, g = greet(d.port, "127.0.0.%d" % (i + 2))
                held.append(c)
                self.assertEqual(g.code, 220, g)
            self.assert_refused(d.port, "127.0.0.%d" % (n + 2))
            self.assert_refused(d.port, "127.0.0.1")
            held.pop().close()
            held.append(self.eventually_greeted(d.port, "127.0.0.9"))
        finally:
            for c in held:
                c.close()
        self.stop_ok(d)

    def test_max_errors(self):
        n = 3
        d = self.mxd(extra=["max-errors %d" % n])
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            errors = 0
            replies = []
            for i in range(n + 2):
                try:
                    c.send(b"BOGUS%d\r\n" % i)
                    r = c.reply()
                except (ConnectionError, OSError):
                    break
                replies.append(r)
                if r.code == 421:
                    break
                self.assertEqual(r.code // 100, 5, r)
                errors += 1
            # The reply that ends the session may follow the Nth error
            # reply directly (same write) or answer the next command.
            while replies[-1].code != 421:
                try:
                    replies.append(c.reply())
                except (ConnectionError, OSError):
                    break
            self.assertEnhanced(replies[-1], 421)
            self.assertEqual(errors, n, replies)
            self.assertTrue(c.closed_by_peer())
        # Errors are per session: a new one starts from zero.
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEqual(c.cmd("BOGUS").code // 100, 5)
            self.assertEnhanced(c.cmd("NOOP"), 250)
        self.stop_ok(d)

    def test_command_timeout(self):
        d = self.mxd(extra=["timeout command 2s"])
        with RawSmtp(d.port, timeout=30) as c:
            c.connect_greeting()
            t0 = time.monotonic()
            r = c.reply()
            waited = time.monotonic() - t0
            self.assertEnhanced(r, 421, "4.4.2")
            self.assertGreater(waited, 1.5, "timed out before the configured 2s")
            self.assertLess(waited, 8 * SLOW, "took far longer than the configured 2s")
            self.assertTrue(c.closed_by_peer())
        # Activity resets it: a client that keeps talking is not cut off.
        with RawSmtp(d.port, timeout=30) as c:
            c.connect_greeting()
            for _ in range(4):
                time.sleep(1)
                self.assertEnhanced(c.cmd("NOOP"), 250)
        self.stop_ok(d)

    def test_data_block_timeout(self):
        d = self.mxd(extra=["timeout data-block 2s", "timeout command 60s"])
        with RawSmtp(d.port, timeout=30) as c:
            c.connect_greeting()
            c.ehlo()
            c.cmd("MAIL FROM:<a@example.org>")
            c.cmd("RCPT TO:<b@example.com>")
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: stalled\r\n\r\npart")
            t0 = time.monotonic()
            r = c.reply()
            self.assertEnhanced(r, 421, "4.4.2")
            self.assertLess(time.monotonic() - t0, 10 * SLOW)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [])


if __name__ == "__main__":
    unittest.main()
