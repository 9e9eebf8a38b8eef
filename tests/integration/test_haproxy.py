"""mxd behind a real HAProxy (Debian's haproxy, mode tcp): one backend with
`send-proxy-v2` and a plain TCP health check (HAProxy sends a PROXY v2
LOCAL header, then resets), one with `send-proxy` (v1) and `option
smtpchk`. Clients connect to HAProxy from 127.0.0.2 and 127.0.0.3; HAProxy
itself talks to mxd from 127.0.0.1. The address mxd must use is the one in
the header:

- Received: names it (checked byte for byte in `mxspool export`), and the
  open/reject/accepted log lines name it with the client's own port and
  via=HAProxy's address;
- accept rules: `accept from <relays> for any` with only 127.0.0.2 in
  <relays> lets 127.0.0.2 relay and refuses 127.0.0.3 (554 5.7.1);
- max-connections-per-client 2: 127.0.0.2's third connection gets 421
  4.7.0 while 127.0.0.3 still gets in;
- STARTTLS through HAProxy (smtplib starttls, TLS 1.3 and 1.2);
- health checks: accepted (LOCAL = the connection's own address), logged
  as an ordinary session (its open and close lines, nothing at warn or
  error level), every check session closed, none left open.
"""

import glob
import os
import re
import smtplib
import socket
import ssl
import time
import unittest
import urllib.request

from haproxyharness import HAPROXY, HAProxy, haproxy_config
from mxharness import (HOSTNAME, PROXY_V1_UNKNOWN, PROXY_V2_LOCAL, SLOW, RawSmtp, free_port,
                       ipv6_loopback_available, lf_to_crlf_equal, mxspool, split_received)
from tlsharness import (MAIL_NAME, TlsTestCase, client_context, close_line, expected_tls_path,
                        log_lines, received_tls, session_of_port, tls_path_of, wait_for_log)

RELAY = "127.0.0.2"      # in <relays>: may relay
OTHER = "127.0.0.3"      # not in <relays>: local domains only
BALANCER = "127.0.0.1"   # HAProxy's side of its connections to mxd

OPEN_LINE = re.compile(r"session=(\S+) open client=(\S+) port=(\d+) listener=(\S+)(?: via=(\S+))?")
CLOSE_LINE = re.compile(r"session=(\S+) close client=(\S*) reason=")


def scrape(port, name):
    """The value of an unlabelled metric on mxd's /metrics page."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5 * SLOW) as r:
        text = r.read().decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    assert m, "no %s in /metrics" % name
    return float(m.group(1))


def scrape_labelled(port, name, label):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5 * SLOW) as r:
        text = r.read().decode()
    m = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), re.escape(label)), text, re.M)
    assert m, "no %s{%s} in /metrics" % (name, label)
    return float(m.group(1))


@unittest.skipUnless(HAPROXY, "haproxy not installed (Debian package haproxy; tools/deps)")
class HAProxyTest(TlsTestCase):

    def setUp(self):
        super().setUp()
        self.haproxies = []
        self.addCleanup(self._stop_haproxies)

    def _stop_haproxies(self):
        for h in self.haproxies:
            h.stop()

    # -- the set-up: mxd with two PROXY listeners, HAProxy in front ---------
    def stack(self, check_inter="200ms", per_client=100):
        pki = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME))
        self.ca = self.certs.ca()
        d = self.mxd(start=False)
        v2, v1, metrics = free_port(), free_port(), free_port()
        while len({v2, v1, metrics}) < 3:
            v1, metrics = free_port(), free_port()
        d.write_config(text="\n".join(pki.lines() + [
            "table domains { example.com }",
            "table relays { %s }" % RELAY,
            "listen on 127.0.0.1 port %d proxy-v2 tls pki %s" % (v2, MAIL_NAME),
            "listen on 127.0.0.1 port %d proxy-v1" % v1,
            "accept from <relays> for any",
            "accept from any for domain <domains>",
            "max-connections-per-client %d" % per_client,
            'spool "%s"' % d.spool,
            "cores 2",
            "hostname %s" % HOSTNAME,
            "metrics listen on 127.0.0.1 port %d" % metrics,
        ]) + "\n", ports=[v2, v1])
        d.start(probe=[("127.0.0.1", v2, PROXY_V2_LOCAL), ("127.0.0.1", v1, PROXY_V1_UNKNOWN)])
        self.v2_listener, self.v1_listener, self.metrics = v2, v1, metrics

        fe2, fe1 = free_port(), free_port()
        while fe1 in (fe2, v2, v1, metrics):
            fe1 = free_port()
        sections = [
            "frontend fe_v2\n    bind 127.0.0.1:%d\n    default_backend be_v2\n" % fe2,
            "backend be_v2\n    server mxd 127.0.0.1:%d send-proxy-v2 check inter %s\n"
            % (v2, check_inter),
            "frontend fe_v1\n    bind 127.0.0.1:%d\n    default_backend be_v1\n" % fe1,
            "backend be_v1\n    option smtpchk EHLO haproxy.test\n"
            "    server mxd 127.0.0.1:%d send-proxy check inter %s\n" % (v1, check_inter),
        ]
        self.fe6 = None
        if ipv6_loopback_available():
            self.fe6 = free_port(socket.AF_INET6, "::1")
            sections.append("frontend fe_v2_6\n    bind [::1]:%d\n    default_backend be_v2\n"
                            % self.fe6)
        admin = os.path.join(self.tmp, "haproxy.sock")
        h = HAProxy(self.tmp, haproxy_config(admin, sections), admin)
        self.haproxies.append(h)
        h.start()
        h.wait_servers("be_v2")
        h.wait_servers("be_v1")
        self.fe_v2, self.fe_v1 = fe2, fe1
        return d, h

    def smtp(self, frontend, source, helo, host="127.0.0.1"):
        s = smtplib.SMTP(host, frontend, local_hostname=helo, timeout=20 * SLOW,
                         source_address=(source, 0))
        self.addCleanup(s.close)
        return s

    def exported(self, d):
        """{queue id (lower case): message bytes} from `mxspool export`."""
        out = self.scratch_dir("export")
        mxspool(d.spool, "export", "--maildir", out)
        got = {}
        for path in glob.glob(os.path.join(out, "new", "*")):
            m = re.search(r"\.M([0-9A-Fa-f]{16})\.mxd$", path)
            self.assertTrue(m, path)
            with open(path, "rb") as f:
                got[m.group(1).lower()] = f.read()
        return got

    def assertReceivedExactly(self, header, helo, literal, qid, rcpt, tls=None):
        """mxd's Received: header, byte for byte except the date."""
        lines = [b"Received: from %s (%s)\r\n" % (helo.encode(), literal.encode())]
        if tls:
            lines.append(b"\t(using %s with cipher %s)\r\n" % (tls[0].encode(), tls[1].encode()))
        lines.append(b"\tby %s (mxd) with %s id %s\r\n"
                     % (HOSTNAME.encode(), b"ESMTPS" if tls else b"ESMTP", qid.upper().encode()))
        lines.append(b"\tfor <%s>; " % rcpt.encode())
        rx = re.escape(b"".join(lines)) + rb"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r?\n$"
        h = header if header.endswith(b"\r\n") else header.replace(b"\n", b"\r\n")
        self.assertRegex(h, re.compile(rx, re.I), header)
        self.assertNotIn(BALANCER.encode(), header)

    # -- the tests ------------------------------------------------------------
    def test_header_address_in_received_logs_and_policy(self):
        d, h = self.stack()
        sent = {}   # qid -> (helo, literal, rcpt, content)
        opens = []  # (client address, client port, mxd listener port)
        cases = [(self.fe_v2, self.v2_listener, src) for src in (RELAY, OTHER)]
        cases += [(self.fe_v1, self.v1_listener, src) for src in (RELAY, OTHER)]
        for frontend, listener, src in cases:
            helo = "c%s-%d.example.net" % (src.split(".")[-1], frontend)
            s = self.smtp(frontend, src, helo)
            opens.append((src, s.sock.getsockname()[1], listener))
            code, resp = s.ehlo()
            self.assertEqual(code, 250)
            self.assertIn(("Hello %s [%s]" % (helo, src)).encode(), resp)
            # relaying: only the address in <relays> may
            content = ("Subject: relay from %s via %d\r\n\r\nbody %s\r\n"
                       % (src, frontend, src)).encode()
            s.mail("a@example.net")
            code, resp = s.rcpt("x@foreign.example")
            if src == RELAY:
                self.assertEqual(code, 250, resp)
                code, resp = s.data(content)
                self.assertEqual(code, 250, resp)
                qid = resp.split(b"queued as ")[1].decode().lower()
                sent[qid] = (helo, "[%s]" % src, "x@foreign.example", content)
            else:
                self.assertEqual((code, resp[:5]), (554, b"5.7.1"), resp)
                s.rset()
            # a local domain: everyone may
            content = ("Subject: local from %s via %d\r\n\r\n.dot\r\nend\r\n"
                       % (src, frontend)).encode()
            self.assertEqual(s.sendmail("b@example.net", ["u@example.com"], content), {})
            s.quit()
        # The qids of the local deliveries come from the log: sendmail() does
        # not return the DATA reply. Match them by content below.
        self.stop_ok(d)
        log = d.stderr_text()
        for src, port, listener in opens:
            self.assertRegex(log, r"session=\S+ open client=%s port=%d listener=127\.0\.0\.1:%d "
                                  r"via=%s\n" % (re.escape(src), port, listener,
                                                 re.escape(BALANCER)))
        self.assertRegex(log, r"reject client=%s command=RCPT reply=\"554 5\.7\.1"
                         % re.escape(OTHER))
        self.assertNotRegex(log, r"reject client=%s command=RCPT" % re.escape(RELAY))
        accepted = re.findall(r"accepted id=(\w+) client=(\S+) ", log)
        self.assertEqual(sorted(c for _, c in accepted),
                         sorted([RELAY] * 4 + [OTHER] * 2), log)

        got = self.exported(d)
        self.assertEqual(len(got), 6, sorted(got))
        self.assertEqual(mxspool(d.spool, "verify").returncode, 0)
        for qid, (helo, literal, rcpt, content) in sent.items():
            self.assertIn(qid, got)
            header, body = split_received(got[qid])
            self.assertReceivedExactly(header, helo, literal, qid, rcpt)
            self.assertTrue(lf_to_crlf_equal(content, body), body)
        by_client = dict((qid.lower(), c) for qid, c in accepted)
        local = [q for q in got if q not in sent]
        self.assertEqual(len(local), 4)
        for qid in local:
            src = by_client[qid]
            header, body = split_received(got[qid])
            m = re.match(rb"Received: from (\S+) ", header)
            self.assertTrue(m, header)
            self.assertReceivedExactly(header, m.group(1).decode(), "[%s]" % src, qid,
                                       "u@example.com")
            self.assertIn(("c%s-" % src.split(".")[-1]).encode(), m.group(1))
            self.assertRegex(body, rb"^Subject: local from %s via \d+\r?\n\r?\n\.dot\r?\nend\r?\n$"
                             % re.escape(src.encode()))

    def test_ipv6_client_through_v2(self):
        """A client on ::1: HAProxy's v2 header carries an IPv6 address."""
        d, h = self.stack()
        if not self.fe6:
            self.skipTest("no IPv6 loopback")
        s = self.smtp(self.fe6, "::1", "six.example.net", host="::1")
        port = s.sock.getsockname()[1]
        content = b"Subject: six\r\n\r\nv6\r\n"
        s.ehlo()
        s.mail("a@example.net")
        self.assertEqual(s.rcpt("u@example.com")[0], 250)
        code, resp = s.data(content)
        self.assertEqual(code, 250, resp)
        qid = resp.split(b"queued as ")[1].decode().lower()
        s.quit()
        self.stop_ok(d)
        self.assertRegex(d.stderr_text(), r"open client=::1 port=%d listener=127\.0\.0\.1:%d "
                                          r"via=127\.0\.0\.1\n" % (port, self.v2_listener))
        header, body = split_received(self.exported(d)[qid])
        self.assertReceivedExactly(header, "six.example.net", "[IPv6:::1]", qid, "u@example.com")
        self.assertTrue(lf_to_crlf_equal(content, body))

    def test_per_client_limit_uses_header_address(self):
        d, h = self.stack(per_client=2)
        held = []
        for _ in range(2):
            c = RawSmtp(self.fe_v2, source=RELAY)
            self.addCleanup(c.close)
            self.assertEqual(c.connect_greeting().code, 220)
            held.append(c)
        # the third from 127.0.0.2: refused, though HAProxy's own address
        # (127.0.0.1) has only these connections' worth of sessions
        c = RawSmtp(self.fe_v2, source=RELAY)
        self.addCleanup(c.close)
        r = c.connect_greeting()
        self.assertEnhanced(r, 421, "4.7.0")
        self.assertIn("too many connections from %s" % RELAY, r.last)
        self.assertTrue(c.closed_by_peer())
        # the same frontend, another client: in, and it delivers
        for frontend in (self.fe_v2, self.fe_v1):
            o = RawSmtp(frontend, source=OTHER)
            self.addCleanup(o.close)
            self.assertEqual(o.connect_greeting().code, 220)
            o.ehlo()
            r, qid = o.send_message("a@example.net", ["u@example.com"], b"Subject: x\r\n\r\nx\r\n")
            self.assertEqual(r.code, 250, r)
            o.cmd("QUIT")
        # a slot freed by 127.0.0.2 is its own again
        held.pop().cmd("QUIT")
        deadline = time.monotonic() + 5 * SLOW
        while True:
            c = RawSmtp(self.fe_v2, source=RELAY)
            self.addCleanup(c.close)
            r = c.connect_greeting()
            if r.code == 220 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(r.code, 220, r)
        self.stop_ok(d)
        log = d.stderr_text()
        self.assertRegex(log, r"reject client=%s command=CONNECT reply=\"421 4\.7\.0 "
                         % re.escape(RELAY))
        self.assertNotRegex(log, r"reject client=(%s|%s) command=CONNECT"
                            % (re.escape(OTHER), re.escape(BALANCER)))

    def test_starttls_through_haproxy_v2(self):
        d, h = self.stack()
        cases = [("tls13", None), ("tls12", ssl.TLSVersion.TLSv1_2)]
        sent = {}
        for helo, maxv in cases:
            s = self.smtp(self.fe_v2, RELAY, helo + ".example.net")
            port = s.sock.getsockname()[1]
            s.ehlo()
            self.assertTrue(s.has_extn("starttls"))
            code, resp = s.starttls(context=client_context(self.ca, maximum=maxv))
            self.assertEqual(code, 220, resp)
            version, cipher = s.sock.version(), s.sock.cipher()[0]
            code, resp = s.ehlo()
            self.assertFalse(s.has_extn("starttls"))
            self.assertIn(("[%s]" % RELAY).encode(), resp)
            content = ("Subject: %s through haproxy\r\n\r\n%s\r\n" % (helo, "x" * 3000)).encode()
            s.mail("a@example.net")
            self.assertEqual(s.rcpt("x@foreign.example")[0], 250)   # relay: from <relays>
            code, resp = s.data(content)
            self.assertEqual(code, 250, resp)
            sent[resp.split(b"queued as ")[1].decode().lower()] = (helo, version, cipher, content)
            s.quit()
            sid = session_of_port(d, port)
            line = close_line(d, sid)
            self.assertEqual(tls_path_of(line), expected_tls_path(), line)
            self.assertIn("client=%s" % RELAY, line)
        self.assertEqual(sorted(v for _, v, _, _ in sent.values()), ["TLSv1.2", "TLSv1.3"])
        self.stop_ok(d)
        got = self.exported(d)
        self.assertEqual(sorted(got), sorted(sent))
        for qid, (helo, version, cipher, content) in sent.items():
            header, body = split_received(got[qid])
            tls = received_tls(header)
            self.assertIsNotNone(tls, header)
            self.assertEqual(tls[0], version)
            self.assertReceivedExactly(header, helo + ".example.net", "[%s]" % RELAY, qid,
                                       "x@foreign.example", tls=tls)
            self.assertTrue(lf_to_crlf_equal(content, body))

    def test_health_checks_accepted_quiet_and_closed(self):
        """Checks every 100 ms on both backends for 2 s: HAProxy sees mxd
        UP (L4OK for the v2 TCP check, L7OK for smtpchk), no header is
        refused (the v2 check's LOCAL command means "this connection's own
        address"), each check is one session that logs at most its open and
        close lines at info level, and none stays open."""
        d, h = self.stack(check_inter="100ms")
        t0 = time.monotonic()
        time.sleep(2.0)
        self.assertLessEqual(scrape(self.metrics, "mxd_connections_open"), 2)
        rows = {"be_v2": h.servers("be_v2")["mxd"], "be_v1": h.servers("be_v1")["mxd"]}
        self.assertEqual(rows["be_v2"]["status"], "UP")
        self.assertEqual(rows["be_v1"]["status"], "UP")
        # HAProxy marks a check under way with a leading "* "
        self.assertEqual(rows["be_v2"]["check_status"].lstrip("* "), "L4OK", rows["be_v2"])
        self.assertEqual(rows["be_v1"]["check_status"].lstrip("* "), "L7OK", rows["be_v1"])
        h.stop()
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 5 * SLOW
        while scrape(self.metrics, "mxd_connections_open") != 0:
            self.assertLess(time.monotonic(), deadline, "sessions left open after the checks")
            time.sleep(0.05)
        self.assertEqual(scrape_labelled(self.metrics, "mxd_connections_refused_total",
                                         'reason="bad_proxy_header"'), 0)
        total = scrape(self.metrics, "mxd_connections_total")
        time.sleep(0.3)  # the cores flush their log lines
        self.stop_ok(d)
        self.assertEqual([l for l in log_lines(d) if re.search(r"\] (warn|error): ", l)], [])
        lines = [l for l in log_lines(d) if "session=" in l]
        self.assertEqual([l for l in lines if "PROXY header" in l], [])
        sessions = {}
        for l in lines:
            m = re.search(r"session=(\S+) (\w+)", l)
            self.assertTrue(m, l)
            sessions.setdefault(m.group(1), []).append(m.group(2))
        # the two readiness probes of the harness are sessions too
        checks = len(sessions) - 2
        self.assertEqual(len(sessions), total)
        # 2 backends, a check each per 100 ms; half of that is plenty to
        # show they ran (HAProxy spreads them, the machine may be busy)
        self.assertGreaterEqual(checks, int(2 * elapsed / 0.1 * 0.5), sessions)
        for sid, kinds in sessions.items():
            self.assertIn(kinds, (["open", "close"], ["close"]), (sid, kinds))
        for l in lines:
            m = OPEN_LINE.search(l)
            if m:
                self.assertEqual(m.group(2), BALANCER, l)   # LOCAL / HAProxy's own address
                self.assertEqual(m.group(5), BALANCER, l)
        print("\nhealth checks: %d sessions in %.1f s, %d log lines (%.2f per check), "
              "0 warn/error, 0 left open" % (checks, elapsed, len(lines),
                                             len(lines) / max(1, len(sessions))))


if __name__ == "__main__":
    unittest.main()
