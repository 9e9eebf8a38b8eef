"""PROXY protocol listeners (`listen on ... proxy-v1|proxy-v2`): the real
client address from the header is what policy, limits, logs and Received:
see; SMTP bytes right behind the header are not swallowed; a missing or
malformed header closes the connection without a word; a peer that
`proxy-from` does not name is closed before its header is read; a
connection reset before mxd took it closes as client=unknown.

test_haproxy.py does the same behind a real HAProxy (send-proxy-v2 and
send-proxy, health checks, STARTTLS); test_farm.py runs two nodes behind it.
"""

import os
import re
import signal
import socket
import struct
import time
import unittest
import urllib.request

from mxharness import SLOW, MxdTestCase, free_port, split_received
from test_reload import HOOKS_BIN, HOOKS_REQUIRED, EnvMxd

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1_header(src, sport, dst="127.0.0.1", dport=25):
    return ("PROXY TCP4 %s %s %d %d\r\n" % (src, dst, sport, dport)).encode()


def v2_header(src, sport, dst="127.0.0.1", dport=25):
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


def exchange(port, data, timeout=10, source="127.0.0.1"):
    """Send data in one write (from the source address), read until the
    server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW,
                                  source_address=(source, 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def refused(metrics_port, reason):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port,
                                timeout=5 * SLOW) as r:
        text = r.read().decode()
    m = re.search(r'^mxd_connections_refused_total\{reason="%s"\} (\d+)$' % reason, text, re.M)
    assert m, "no refusal reason %s on /metrics" % reason
    return int(m.group(1))


class ProxyProtocolTest(MxdTestCase):

    def proxy_mxd(self, extra=(), v1_opts="", v2_opts="", probe_from="127.0.0.1"):
        p1, p2 = free_port(), free_port()
        d = self.mxd(start=False)
        d.write_config(
            text="\n".join([
                "listen on 127.0.0.1 port %d proxy-v1%s" % (p1, v1_opts),
                "listen on 127.0.0.1 port %d proxy-v2%s" % (p2, v2_opts),
                "table domains { example.com }",
                "table relays { 192.0.2.0/24 }",
                "accept from any for domain <domains>",
                "accept from <relays> for any",
                'spool "%s"' % d.spool,
                "cores 1",
                "hostname mx.test",
                "timeout command 2s",
            ] + list(extra)) + "\n",
            ports=[p1, p2])
        d.start(wait=False)
        deadline = time.monotonic() + 15 * SLOW
        for port in (p1, p2):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1,
                                             source_address=(probe_from, 0)).close()
                    break
                except OSError:
                    self.assertLess(time.monotonic(), deadline, d.stderr_text())
                    time.sleep(0.05)
        return d, p1, p2

    def session(self, header, rcpt, body):
        return header + (b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\n"
                         b"RCPT TO:<%s>\r\nDATA\r\n" % rcpt.encode()) + body + b".\r\nQUIT\r\n"

    def test_header_address_drives_policy_and_received(self):
        d, p1, p2 = self.proxy_mxd()
        body = b"Subject: via proxy\r\n\r\nhello\r\n"
        sent = {}
        for port, make, src in ((p1, v1_header, "192.0.2.7"), (p2, v2_header, "192.0.2.9")):
            # from 192.0.2.0/24 (per the header) relaying is allowed ...
            out = exchange(port, self.session(make(src, 40000), "x@foreign.example", body))
            self.assertIn(b"[%s]" % src.encode(), out)          # EHLO reply names it
            self.assertIn(b"250 2.0.0 Ok: queued as ", out, out)
            qid = out.split(b"queued as ")[1].split(b"\r\n")[0].decode()
            sent[qid] = src
            # ... from elsewhere (the header says 198.51.100.1) it is not,
            # though the TCP peer is 127.0.0.1 either way
            out = exchange(port, self.session(make("198.51.100.1", 40001), "x@foreign.example",
                                              body))
            self.assertIn(b"554 5.7.1", out, out)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(sent))
        for qid, src in sent.items():
            header, got = split_received(d.spool_cat(qid))
            self.assertIn(("[%s]" % src).encode(), header)
            self.assertEqual(got, body)
        log = d.stderr_text()
        self.assertIn("open client=192.0.2.7 port=40000", log)
        self.assertIn("via=127.0.0.1", log)

    def test_bad_or_missing_header_closes_silently(self):
        d, p1, p2 = self.proxy_mxd()
        for port, data in ((p1, b"EHLO x\r\n"), (p2, b"EHLO x\r\n"),
                           (p1, v2_header("192.0.2.1", 1)),   # v2 on a v1 listener
                           (p2, v1_header("192.0.2.1", 1)),   # and the reverse
                           (p1, b"PROXY TCP4 192.0.2.300 127.0.0.1 1 25\r\n"),
                           (p1, b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 25\r\n")):
            self.assertEqual(exchange(port, data), b"", data)
        # no header at all: closed by the command timeout, still silently
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", p1), timeout=10 * SLOW) as s:
            self.assertEqual(s.recv(100), b"")
        self.assertLess(time.monotonic() - t0, 6 * SLOW)
        self.stop_ok(d)
        log = d.stderr_text()
        self.assertIn("PROXY header refused: not a PROXY protocol header", log)
        self.assertIn("no PROXY header in time", log)
        self.assertEqual(d.spool_ids(), [])

    def test_header_split_from_smtp_bytes(self):
        """The header arriving byte by byte, then SMTP right behind it."""
        d, p1, _ = self.proxy_mxd()
        hdr = v1_header("192.0.2.50", 1234)
        with socket.create_connection(("127.0.0.1", p1), timeout=10 * SLOW) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in hdr[:-1]:
                s.sendall(bytes([b]))
                time.sleep(0.005)
            s.sendall(hdr[-1:] + b"EHLO y\r\nQUIT\r\n")
            out = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        self.assertTrue(out.startswith(b"220 "), out)
        self.assertIn(b"Hello y [192.0.2.50]", out)
        self.assertTrue(out.endswith(b"221 2.0.0 Bye\r\n"), out)
        self.stop_ok(d)

    def test_proxy_from_names_who_may_send_headers(self):
        """proxy-from: a peer in the list is believed; any other is closed
        before a byte is read, logged with the listener, and counted."""
        mport = free_port()
        d, p1, p2 = self.proxy_mxd(
            extra=["metrics listen on 127.0.0.1 port %d" % mport],
            v1_opts=" proxy-from any", v2_opts=" proxy-from { 127.0.0.2 }",
            probe_from="127.0.0.2")
        log = d.stderr_text()
        self.assertIn("listen on 127.0.0.1 port %d: PROXY headers believed from (127.0.0.2)"
                      % p2, log)
        self.assertRegex(log, r"warn: listen on 127\.0\.0\.1 port %d: PROXY headers believed "
                              r"from any peer" % p1)
        before = refused(mport, "proxy_not_allowed")
        body = b"Subject: proxy-from\r\n\r\nhello\r\n"
        # the allowed balancer: its header's client may relay
        out = exchange(p2, self.session(v2_header("192.0.2.9", 40000), "x@foreign.example",
                                        body), source="127.0.0.2")
        self.assertIn(b"[192.0.2.9]", out)
        self.assertIn(b"250 2.0.0 Ok: queued as ", out, out)
        # any other peer, even on the loopback, gets nothing: not a greeting,
        # not its header believed
        out = exchange(p2, self.session(v2_header("192.0.2.9", 40001), "x@foreign.example",
                                        body), source="127.0.0.3")
        self.assertEqual(out, b"")
        self.assertEqual(refused(mport, "proxy_not_allowed"), before + 1)
        # proxy-from any: the same peer is believed on the other listener
        out = exchange(p1, self.session(v1_header("192.0.2.10", 40002), "x@foreign.example",
                                        body), source="127.0.0.3")
        self.assertIn(b"250 2.0.0 Ok: queued as ", out, out)
        self.assertEqual(refused(mport, "proxy_not_allowed"), before + 1)
        self.stop_ok(d)
        log = d.stderr_text()
        self.assertRegex(log, r"session=\w+ client=127\.0\.0\.3 PROXY header not allowed from "
                              r"this peer on listener 127\.0\.0\.1:%d \(proxy-from\)" % p2)
        self.assertRegex(log, r"close client=127\.0\.0\.3 reason=proxy not allowed")
        self.assertIn("open client=192.0.2.9 port=40000", log)
        self.assertIn("open client=192.0.2.10 port=40002", log)
        self.assertNotIn("port=40001", log)
        self.assertEqual(len(d.spool_ids()), 2)

    def test_proxy_from_defaults_to_the_loopback_and_reloads(self):
        """No proxy-from: loopback peers only (every test above connects
        from 127.0.0.1). A reload to a list applies to new connections."""
        d, p1, p2 = self.proxy_mxd()
        self.assertIn("listen on 127.0.0.1 port %d: PROXY headers believed from the loopback "
                      "only" % p2, d.stderr_text())
        hdr = v2_header("192.0.2.20", 1)
        self.assertIn(b"221 ", exchange(p2, hdr + b"QUIT\r\n", source="127.0.0.3"))
        text = open(d.config_path).read().replace(
            "port %d proxy-v2" % p2, "port %d proxy-v2 proxy-from { 127.0.0.4/32 }" % p2)
        d.write_config(text=text)
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOW
        while "config generation 2 in use" not in d.stderr_text():
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)
        self.assertIn("PROXY headers believed from (127.0.0.4/32)", d.stderr_text())
        self.assertEqual(exchange(p2, hdr + b"QUIT\r\n", source="127.0.0.3"), b"")
        self.assertIn(b"221 ", exchange(p2, hdr + b"QUIT\r\n", source="127.0.0.4"))
        self.stop_ok(d)

    def test_reset_before_accept_names_a_client(self):
        """A health check that connects and resets (SO_LINGER 0) before mxd
        takes the connection: getpeername() has nothing to say by then, and
        the close line must still name a client."""
        hooks = os.access(HOOKS_BIN, os.X_OK)
        if not hooks and HOOKS_REQUIRED:
            self.fail("MXD_HOOKS_REQUIRED=1 but %s is missing" % HOOKS_BIN)
        if not hooks:
            self.skipTest("no hooks build at %s (tools/build --hooks)" % HOOKS_BIN)
        port = free_port()
        hold = os.path.join(self.tmp, "hold-accepts")
        d = EnvMxd(self.workdir("mxd"), name=self.id().split(".")[-1], binary=HOOKS_BIN,
                   env={"MXD_ACCEPT_HOLD_FILE": hold}, port=port)
        self._daemons.append(d)
        d.write_config(text="\n".join([
            "listen on 127.0.0.1 port %d proxy-v2" % port,
            'spool "%s"' % d.spool, "cores 1", "hostname mx.test"]) + "\n")
        d.start(wait=False)
        deadline = time.monotonic() + 15 * SLOW
        while "mxd started" not in d.stderr_text():
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)
        open(hold, "w").close()
        while "test hook: accepts held" not in d.stderr_text():
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)
        n = 5
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST: the connection dies in the kernel's accept queue
        os.unlink(hold)
        while d.stderr_text().count("reason=peer vanished") < n:
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)
        self.stop_ok(d)
        log = d.stderr_text()
        self.assertEqual(log.count("close client=unknown reason=peer vanished"), n, log)
        self.assertNotRegex(log, r"(?m)client=( |$)")


if __name__ == "__main__":
    unittest.main()
