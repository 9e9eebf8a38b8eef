"""The Prometheus metrics page: `metrics listen on ADDR port N`.

Scraped with curl before and after known traffic; every counter must rise by
exactly what was sent, histograms must be cumulative with +Inf == _count,
every family must carry # HELP and # TYPE, other paths get 404. When
Debian's prometheus package is installed, `promtool check metrics` must also
accept the page (skipped with a note otherwise)."""

import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import unittest

from mxharness import SLOW, MxdTestCase, RawSmtp, free_port, ipv6_loopback_available
from tlsharness import (MAIL_NAME, OPENSSL, TlsRawSmtp, TlsTestCase, client_context,
                        expected_tls_path)

CURL = shutil.which("curl")
PROMTOOL = shutil.which("promtool")

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def curl(port, path="/metrics"):
    r = subprocess.run([CURL, "-s", "-w", "\n%{http_code}", "http://127.0.0.1:%d%s" % (port, path)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30 * SLOW)
    out = r.stdout.decode()
    body, _, code = out.rpartition("\n")
    return int(code), body


def parse(text):
    """{(name, labels): value}, and the families with HELP and TYPE."""
    samples, helps, types = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            helps[name] = h
            continue
        if line.startswith("# TYPE "):
            name, _, t = line[7:].partition(" ")
            types[name] = t
            continue
        m = SAMPLE_RE.match(line)
        assert m, "malformed sample line %r" % line
        samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples, helps, types


def distinct_ports(n, taken=()):
    """n free ports, different from each other and from taken (free_port
    can hand out the same number twice in a row)."""
    out = []
    while len(out) < n:
        p = free_port()
        if p not in out and p not in taken:
            out.append(p)
    return out


def family_of(name, types):
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
            return name[:-len(suffix)]
    return None


@unittest.skipUnless(CURL, "curl not installed")
class MetricsTest(MxdTestCase):

    def start(self):
        port, self.mport = distinct_ports(2)
        return self.mxd(accept_local=False, port=port, extra=[
            "max-connections-per-client 1",
            "metrics listen on 127.0.0.1 port %d" % self.mport])

    def scrape(self):
        code, body = curl(self.mport)
        self.assertEqual(code, 200, body)
        return body

    def settled(self):
        """A scrape once every connection is closed (sessions end
        asynchronously after the client goes)."""
        deadline = time.monotonic() + 10 * SLOW
        while True:
            body = self.scrape()
            s, _, _ = parse(body)
            if s[("mxd_connections_open", "")] == 0 or time.monotonic() > deadline:
                return body
            time.sleep(0.05)

    def check_format(self, body):
        samples, helps, types = parse(body)
        for (name, labels) in samples:
            fam = family_of(name, types)
            self.assertIsNotNone(fam, "no # TYPE for %s" % name)
            self.assertIn(fam, helps, "no # HELP for %s" % fam)
            self.assertTrue(helps[fam].strip(), fam)
            if types[fam] == "counter":
                self.assertTrue(fam.endswith("_total"), fam)
        for fam, t in types.items():
            if t != "histogram":
                continue
            buckets = [(lab, v) for (n, lab), v in samples.items() if n == fam + "_bucket"]
            self.assertTrue(buckets, fam)
            # in page order: cumulative, ending with +Inf == _count
            les = re.findall(r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % re.escape(fam), body, re.M)
            self.assertEqual(les[-1][0], "+Inf")
            bounds = [float(le) for le, _ in les[:-1]]
            self.assertEqual(bounds, sorted(bounds))
            values = [float(v) for _, v in les]
            self.assertEqual(values, sorted(values), "%s buckets not cumulative" % fam)
            self.assertEqual(values[-1], samples[(fam + "_count", "")])
        return samples

    def test_counters_follow_traffic(self):
        d = self.start()
        before = self.check_format(self.settled())

        # N messages on one connection
        n = 5
        bodies = [b"Subject: m%d\r\n\r\n" % i + b"x" * (100 * i) + b"\r\n" for i in range(n)]
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20 * SLOW) as s:
            for b in bodies:
                s.sendmail("a@example.org", ["b@example.com"], b)
        # a relay-denied RCPT, and a second connection from the same address
        # refused while this one is open (max-connections-per-client 1)
        with RawSmtp(d.port) as c:
            self.assertEqual(c.connect_greeting().code, 220)
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEnhanced(c.cmd("RCPT TO:<x@elsewhere.example>"), 554, "5.7.1")
            with RawSmtp(d.port) as r:
                self.assertEqual(r.connect_greeting().code, 421)
                self.assertTrue(r.closed_by_peer())
            self.assertEqual(c.cmd("QUIT").code, 221)
            self.assertTrue(c.closed_by_peer())

        after = self.check_format(self.settled())

        def delta(name, labels=""):
            return after[(name, labels)] - before[(name, labels)]

        self.assertEqual(delta("mxd_connections_total"), 3)
        self.assertEqual(after[("mxd_connections_open", "")], 0)
        self.assertEqual(delta("mxd_connections_refused_total", '{reason="connection_limit"}'), 1)
        self.assertEqual(delta("mxd_connections_refused_total", '{reason="early_talker"}'), 0)
        self.assertEqual(delta("mxd_connections_refused_total", '{reason="bad_proxy_header"}'), 0)
        self.assertEqual(delta("mxd_sessions_closed_total", '{tls_path="none"}'), 3)
        self.assertEqual(delta("mxd_sessions_closed_total", '{tls_path="userspace"}'), 0)
        self.assertEqual(delta("mxd_sessions_closed_total", '{tls_path="ktls"}'), 0)
        self.assertEqual(delta("mxd_messages_accepted_total"), n)
        self.assertEqual(delta("mxd_message_bytes_accepted_total"), sum(len(b) for b in bodies))
        self.assertEqual(delta("mxd_rejects_total", '{reason="relay_denied"}'), 1)
        for reason in ("unknown_user", "size", "smuggling", "timeout", "other"):
            self.assertEqual(delta("mxd_rejects_total", '{reason="%s"}' % reason), 0, reason)
        # smtplib: 220, EHLO, n × (MAIL, RCPT, 250 after data), QUIT;
        # raw: 220, EHLO, MAIL, QUIT; the refused connection: one 421
        self.assertEqual(delta("mxd_replies_total", '{class="2xx"}'), 3 + 3 * n + 4)
        self.assertEqual(delta("mxd_replies_total", '{class="3xx"}'), n)
        self.assertEqual(delta("mxd_replies_total", '{class="4xx"}'), 1)
        self.assertEqual(delta("mxd_replies_total", '{class="5xx"}'), 1)
        # one message at a time: n batches of one
        self.assertEqual(delta("mxd_spool_batch_size_count"), n)
        self.assertEqual(delta("mxd_spool_batch_size_sum"), n)
        self.assertEqual(delta("mxd_spool_batch_size_bucket", '{le="1"}'), n)
        self.assertEqual(delta("mxd_spool_commit_latency_seconds_count"), n)
        self.assertGreater(delta("mxd_spool_commit_latency_seconds_sum"), 0)
        busy = [k for k in after if k[0] == "mxd_core_busy_seconds_total"]
        self.assertEqual(len(busy), 2)  # cores 2
        for k in busy:
            self.assertGreaterEqual(after[k], before[k])
        self.assertGreater(sum(after[k] for k in busy), 0)

        if PROMTOOL:
            with open(self.tmp + "/scrape.txt", "w") as f:
                f.write(self.scrape())
            with open(self.tmp + "/scrape.txt") as f:
                r = subprocess.run([PROMTOOL, "check", "metrics"], stdin=f,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout.decode())
        elif os.environ.get("MXD_PROMTOOL_REQUIRED") == "1":
            self.fail("MXD_PROMTOOL_REQUIRED=1 but promtool is missing (tools/deps installs "
                      "Debian's prometheus)")
        else:
            print("note: promtool not installed, `promtool check metrics` skipped")
        self.stop_ok(d)

    def test_refusals_by_reason(self):
        """An early talker (greeting-delay) and a bad PROXY header."""
        plain, proxied, self.mport = distinct_ports(3)
        d = self.mxd(start=False, port=plain)
        d.write_config(text="\n".join([
            "listen on 127.0.0.1 port %d" % plain,
            "listen on 127.0.0.1 port %d proxy-v1" % proxied,
            "table domains { example.com }",
            "accept from any for domain <domains>",
            'spool "%s"' % d.spool,
            "cores 2",
            "hostname mx.test",
            "greeting-delay 300ms",
            "metrics listen on 127.0.0.1 port %d" % self.mport]) + "\n", ports=[plain])
        d.start()
        before, _, _ = parse(self.settled())
        with RawSmtp(plain) as c:
            c.send(b"EHLO too.early.example\r\n")
            self.assertEnhanced(c.reply(), 554, "5.5.1")
            self.assertTrue(c.closed_by_peer())
        with RawSmtp(proxied) as c:
            c.send(b"NOT A PROXY HEADER\r\n")
            self.assertTrue(c.closed_by_peer())
        after, _, _ = parse(self.settled())

        def delta(name, labels=""):
            return after[(name, labels)] - before[(name, labels)]

        self.assertEqual(delta("mxd_connections_total"), 2)
        self.assertEqual(delta("mxd_connections_refused_total", '{reason="early_talker"}'), 1)
        self.assertEqual(delta("mxd_connections_refused_total", '{reason="bad_proxy_header"}'), 1)
        self.assertEqual(delta("mxd_connections_refused_total", '{reason="connection_limit"}'), 0)
        self.assertEqual(delta("mxd_replies_total", '{class="5xx"}'), 1)
        self.assertEqual(delta("mxd_sessions_closed_total", '{tls_path="none"}'), 2)
        self.stop_ok(d)

    def test_startup_failures_exit_cleanly(self):
        """Start-up that cannot finish (the metrics port in use, a listen
        port in use, a control socket that cannot be made) exits 1 with a
        message naming the config line, and gives back everything it took:
        against the ASan build, LeakSanitizer finds nothing."""
        smtp, busy = distinct_ports(2)
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", busy))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        cases = [
            ("metrics port in use", smtp, ["metrics listen on 127.0.0.1 port %d" % busy],
             r"mxd\.conf:\d+:1: metrics listen on 127\.0\.0\.1 port %d: cannot listen; "
             r"mxd not started" % busy),
            ("listen port in use", busy, [],
             r"mxd\.conf:1:1: listen on 127\.0\.0\.1 port %d: Address already in use" % busy),
            ("control socket", smtp, ['control socket "/nonexistent/mxd.sock"'],
             r"control socket /nonexistent/mxd\.sock: No such file or directory"),
        ]
        for what, port, extra, message in cases:
            with self.subTest(what):
                d = self.mxd(name=what.replace(" ", "-"), start=False, port=port, cores=2,
                             extra=extra)
                d.start(wait=False)
                try:
                    rc = d.proc.wait(30 * SLOW)
                except subprocess.TimeoutExpired:
                    self.fail("mxd still running with %s:\n%s" % (what, d.stderr_text()))
                d.stop()
                log = d.stderr_text()
                self.assertEqual(rc, 1, log)
                self.assertRegex(log, message)
                self.assertNotIn("mxd started", log)
                self.assertIsNone(d.sanitizer_report(), "%s:\n%s" % (what, d.sanitizer_report()))
                if port != busy:
                    with self.assertRaises(ConnectionRefusedError):
                        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    def test_http_details(self):
        self.start()
        r = subprocess.run([CURL, "-s", "-i", "http://127.0.0.1:%d/metrics" % self.mport],
                           stdout=subprocess.PIPE, timeout=30 * SLOW)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"Content-Type: text/plain; version=0.0.4", lines)
        self.assertIn(b"Content-Length: %d" % len(body), lines)
        self.assertIn(b"Connection: close", lines)
        for path in ("/", "/metricsx", "/metrics/x", "/other"):
            self.assertEqual(curl(self.mport, path)[0], 404, path)
        r = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                            "http://127.0.0.1:%d/metrics" % self.mport],
                           stdout=subprocess.PIPE, timeout=30 * SLOW)
        self.assertEqual(r.stdout, b"404")
        # an HTTP/1.0 request over a raw socket: the whole answer, then close
        idle = socket.create_connection(("127.0.0.1", self.mport))
        idle.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = idle.recv(65536)
            if not chunk:
                break
            data += chunk
        idle.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:100])

    def test_ipv6_listener(self):
        if not ipv6_loopback_available():
            self.skipTest("no IPv6 loopback")
        mxd_port, port = distinct_ports(2)
        d = self.mxd(port=mxd_port, extra=["metrics listen on ::1 port %d" % port])
        r = subprocess.run([CURL, "-s", "-g", "http://[::1]:%d/metrics" % port],
                           stdout=subprocess.PIPE, timeout=30 * SLOW)
        self.assertIn(b"# TYPE mxd_connections_total counter", r.stdout)
        self.stop_ok(d)



@unittest.skipUnless(CURL and OPENSSL, "curl or openssl not installed")
class MetricsTlsTest(TlsTestCase):
    """TLS handshakes by version, failures, and sessions by TLS path, on the
    userspace path (ktls off) and on what `ktls auto` picks here."""

    def run_tls(self, extra, path):
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        d = self.tls_mxd(["tls pki %s" % MAIL_NAME], [p], extra=extra, start=False)
        (mport,) = distinct_ports(1, taken=d.ports)
        d.write_config(text=d.config_text + "metrics listen on 127.0.0.1 port %d\n" % mport,
                       ports=d.ports)
        self.start_tls_mxd(d)

        def scrape():
            deadline = time.monotonic() + 10 * SLOW
            while True:
                code, body = curl(mport)
                self.assertEqual(code, 200, body)
                s, _, _ = parse(body)
                if s[("mxd_connections_open", "")] == 0 or time.monotonic() > deadline:
                    return s

        before = scrape()
        for maximum in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with TlsRawSmtp(d.port) as c:
                c.connect_greeting()
                c.ehlo()
                ctx = client_context(self.certs.ca(), maximum=maximum)
                self.assertEqual(c.starttls(ctx).code, 220)
                c.ehlo()
                r, _ = c.send_message("a@example.org", ["b@example.com"],
                                      b"Subject: tls\r\n\r\nover tls\r\n")
                self.assertEqual(r.code, 250, r)
                self.assertEqual(c.cmd("QUIT").code, 221)
                c.closed_by_peer()
        # a handshake that fails: garbage after the 220 to STARTTLS
        with TlsRawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            self.assertEqual(c.cmd("STARTTLS").code, 220)
            c.send(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
            self.assertTrue(c.closed_by_peer())
        after = scrape()

        def delta(name, labels=""):
            return after[(name, labels)] - before[(name, labels)]

        self.assertEqual(delta("mxd_tls_handshakes_total", '{version="TLSv1.3"}'), 1)
        self.assertEqual(delta("mxd_tls_handshakes_total", '{version="TLSv1.2"}'), 1)
        self.assertEqual(delta("mxd_tls_handshake_failures_total"), 1)
        # the two delivering sessions took `path`; the failed one never
        # finished a handshake: no TLS
        self.assertEqual(delta("mxd_sessions_closed_total", '{tls_path="%s"}' % path), 2)
        self.assertEqual(delta("mxd_sessions_closed_total", '{tls_path="none"}'), 1)
        self.assertEqual(delta("mxd_messages_accepted_total"), 2)
        # per delivering session: 220, EHLO, 220 STARTTLS, EHLO, MAIL, RCPT,
        # 250 queued, 221; the failed one: 220, EHLO, 220 STARTTLS
        self.assertEqual(delta("mxd_replies_total", '{class="2xx"}'), 2 * 8 + 3)
        self.assertEqual(delta("mxd_replies_total", '{class="3xx"}'), 2)
        self.stop_ok(d)

    def test_userspace_path(self):
        self.run_tls(["ktls off"], "userspace")

    def test_ktls_auto_path(self):
        self.run_tls([], expected_tls_path())


if __name__ == "__main__":
    unittest.main()
