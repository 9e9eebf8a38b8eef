"""A two-node inbound farm on one machine (docs/farm.md is the real-machine
version of it):

    smtplib clients ──> HAProxy 127.0.0.1:FE (root namespace, mode tcp)
                          │ send-proxy-v2, option smtpchk,
                          │ check inter 200ms fall 2 rise 2, redispatch
                ┌─────────┴──────────┐
          veth 10.213.N.1/30    veth 10.213.N.5/30
                │                    │
   netns mxfarm-PID-a           netns mxfarm-PID-b
   mxd 10.213.N.2:2525          mxd 10.213.N.6:2525
   its own spool                its own spool

Clients send without pause through HAProxy, a few messages per
connection, and retry a message on any 4xx or lost connection (as an MTA
does), each attempt with its own X-Farm-Attempt header. After 3 s node a
gets SIGKILL, stays down 3 s, is restarted on its own spool; sending goes
on for 3 s after HAProxy has it UP again. Then:

- every acknowledged attempt is in exactly one spool, under the queue id
  of its 250, byte for byte after the Received: header, and that header
  names the node that said 250 and the client from the PROXY header;
- nothing is in a spool twice; an unacknowledged attempt (the 250 lost
  with the node) is there at most once;
- mxspool verify is clean on both spools;
- mail kept flowing while node a was down (acknowledgements during the
  outage, the longest gap between two acknowledgements bounded, and few
  failed attempts), and node a took mail again after its restart.

Needs root (ip netns, veth) and haproxy; skipped with the reason otherwise.
Everything it creates (namespaces, veths, processes) is removed at cleanup,
also when the test fails.
"""

import glob
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

from haproxyharness import HAPROXY, HAProxy, haproxy_config
from mxharness import (PROXY_V2_LOCAL, SLOW, MxdTestCase, free_port, lf_to_crlf_equal, mxspool,
                       split_received, spool_verify)

IP = shutil.which("ip") or "/usr/sbin/ip"
MXD_PORT = 2525       # inside each node's namespace
METRICS_PORT = 9125
CLIENTS = 4
PER_CONNECTION = 5    # messages per SMTP connection, so new connections rebalance
BEFORE_KILL = 3.0     # seconds of traffic before node a is killed
DOWN = 3.0            # how long node a stays down
AFTER_UP = 3.0        # traffic after HAProxy has node a UP again

ATTEMPT_RE = re.compile(rb"^X-Farm-Attempt: (\S+)\r?$", re.M)


def ip(*args, check=True):
    r = subprocess.run([IP] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), r.stderr.decode().strip()))
    return r


def netns_unavailable():
    """Why this machine cannot run the farm, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns add, veth pairs)"
    if not os.path.exists(IP):
        return "no ip command (iproute2)"
    if not HAPROXY:
        return "haproxy not installed (Debian package haproxy; tools/deps)"
    name = "mxfarm-probe-%d" % os.getpid()
    r = ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return "ip netns add failed: %s" % r.stderr.decode().strip()
    ip("netns", "del", name, check=False)
    return None


class Node:
    """One farm node: a namespace, a veth pair to the root namespace, an mxd."""

    def __init__(self, label, tag, host_ip, node_ip):
        self.label = label
        self.netns = "mxfarm-%s-%s" % (tag, label)
        self.veth = "mxf%s%s" % (tag, label)          # root side, <= 15 chars
        self.veth_peer = self.veth + "n"              # node side
        self.host_ip, self.ip = host_ip, node_ip
        self.hostname = "node-%s.farm.test" % label
        self.mxd = None

    def create(self):
        self.destroy()  # leftovers of an earlier run that died
        ip("netns", "add", self.netns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", self.veth_peer,
           "netns", self.netns)
        ip("addr", "add", self.host_ip + "/30", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("-n", self.netns, "addr", "add", self.ip + "/30", "dev", self.veth_peer)
        ip("-n", self.netns, "link", "set", self.veth_peer, "up")
        ip("-n", self.netns, "link", "set", "lo", "up")

    def destroy(self):
        ip("link", "del", self.veth, check=False)       # takes its peer with it
        ip("netns", "del", self.netns, check=False)

    def config(self, spool):
        return "\n".join([
            # HAProxy reaches the node from the root namespace's end of the
            # veth: the only peer whose PROXY header the node believes
            "listen on %s port %d proxy-v2 proxy-from %s" % (self.ip, MXD_PORT, self.host_ip),
            "table domains { example.com }",
            "accept from any for domain <domains>",
            'spool "%s"' % spool,
            "cores 1",
            "hostname %s" % self.hostname,
            "metrics listen on %s port %d" % (self.ip, METRICS_PORT),
        ]) + "\n"

    def probe(self):
        return [(self.ip, MXD_PORT, PROXY_V2_LOCAL)]

    def metric(self, name):
        url = "http://%s:%d/metrics" % (self.ip, METRICS_PORT)
        with urllib.request.urlopen(url, timeout=5 * SLOW) as r:
            m = re.search(r"^%s (\S+)$" % re.escape(name), r.read().decode(), re.M)
        return float(m.group(1))


def haproxy_farm_config(admin, frontend_port, nodes):
    """The balancer of docs/farm.md, on test addresses."""
    servers = "".join("    server %s %s:%d\n" % (n.hostname.split(".")[0], n.ip, MXD_PORT)
                      for n in nodes)
    return haproxy_config(admin, [
        "frontend smtp_in\n"
        "    bind 127.0.0.1:%d\n"
        "    maxconn 1000\n"
        "    default_backend mxd_nodes\n" % frontend_port,
        "backend mxd_nodes\n"
        "    balance roundrobin\n"
        "    option smtpchk EHLO haproxy.farm.test\n"
        "    option redispatch 1\n"
        "    retries 3\n"
        "    timeout connect 1s\n"
        "    default-server send-proxy-v2 check inter 200ms fall 2 rise 2 maxconn 500\n"
        + servers,
    ])


class Ledger:
    """What the clients did, shared by their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}        # attempt id -> (qid, time, content)
        self.attempts = {}     # attempt id -> content (every attempt sent, acked or not)
        self.failures = []     # times of failed attempts or connections
        self.reasons = {}      # why they failed -> how often
        self.messages = 0      # distinct messages started

    def ack(self, attempt, qid, content):
        with self.lock:
            self.acked[attempt] = (qid, time.monotonic(), content)

    def fail(self, why):
        with self.lock:
            self.failures.append(time.monotonic())
            self.reasons[why] = self.reasons.get(why, 0) + 1


def message(thread, seq, attempt, rnd):
    lines = [b"From: <farm-%d@example.net>" % thread,
             b"To: <u%d@example.com>" % (seq % 7),
             b"Subject: farm message %d-%d" % (thread, seq),
             b"X-Farm-Message: %d-%d" % (thread, seq),
             b"X-Farm-Attempt: %d-%d-%d" % (thread, seq, attempt),
             b""]
    for i in range(rnd.randint(3, 40)):
        line = bytes(rnd.randint(33, 126) for _ in range(rnd.randint(0, 76)))
        lines.append(b"." + line if i % 9 == 4 else line)   # dot-stuffing at work
    return b"\r\n".join(lines) + b"\r\n"


def client(thread, port, ledger, stop):
    """Send until told to stop; a failed attempt is retried (new attempt id)
    on a new connection after a short pause."""
    rnd = random.Random(thread)
    seq, attempt = 0, 0
    pending = None  # (seq, attempt) still owed a 250
    while not stop.is_set():
        s = None
        try:
            s = smtplib.SMTP("127.0.0.1", port, local_hostname="client%d.example.net" % thread,
                             timeout=10 * SLOW)
            s.ehlo()
            for _ in range(PER_CONNECTION):
                if stop.is_set():
                    break
                if pending is None:
                    seq += 1
                    attempt = 0
                    with ledger.lock:
                        ledger.messages += 1
                    pending = seq
                attempt += 1
                aid = "%d-%d-%d" % (thread, seq, attempt)
                content = message(thread, seq, attempt, rnd)
                with ledger.lock:
                    ledger.attempts[aid] = content
                code, resp = s.mail("farm-%d@example.net" % thread)
                if code == 250:
                    code, resp = s.rcpt("u%d@example.com" % (seq % 7))
                if code == 250:
                    code, resp = s.data(content)
                if code != 250:
                    ledger.fail("%d %s" % (code, resp[:40].decode("utf-8", "replace")))
                    s.rset()
                    continue
                ledger.ack(aid, resp.split(b"queued as ")[1].decode().lower(), content)
                pending = None
            s.quit()
        except (smtplib.SMTPException, OSError) as e:
            ledger.fail(type(e).__name__)
            time.sleep(0.05)
        finally:
            if s is not None:
                s.close()


SKIP_REASON = netns_unavailable()


@unittest.skipIf(SKIP_REASON, SKIP_REASON)
class FarmTest(MxdTestCase):

    def setUp(self):
        tag = "%d" % (os.getpid() % 100000)
        used = ip("-o", "addr").stdout.decode()
        net = os.getpid() % 250
        while "10.213.%d." % net in used:
            net = (net + 1) % 250
        self.nodes = [Node("a", tag, "10.213.%d.1" % net, "10.213.%d.2" % net),
                      Node("b", tag, "10.213.%d.5" % net, "10.213.%d.6" % net)]
        # Registered before the harness's own cleanup so it runs after it:
        # the mxd processes are stopped before their namespaces go.
        for n in self.nodes:
            self.addCleanup(n.destroy)
        super().setUp()
        self.haproxy = None
        self.addCleanup(self._stop_haproxy)

    def _stop_haproxy(self):
        if self.haproxy:
            self.haproxy.stop()

    def start_node(self, n):
        n.mxd.start(probe=n.probe())
        exe = os.readlink("/proc/%d/exe" % n.mxd.proc.pid)
        self.assertTrue(exe.endswith("mxd"), exe)   # ip netns exec ran mxd in place

    def test_node_killed_and_restarted_under_load(self):
        for n in self.nodes:
            n.create()
            d = self.mxd(name="node-" + n.label, start=False)
            d.write_config(text=n.config(d.spool))
            d.netns = n.netns
            n.mxd = d
            self.start_node(n)
        a, b = self.nodes
        fe = free_port()
        admin = os.path.join(self.tmp, "haproxy.sock")
        self.haproxy = h = HAProxy(self.tmp, haproxy_farm_config(admin, fe, self.nodes), admin)
        h.start()
        h.wait_servers("mxd_nodes", status="UP")

        ledger, stop = Ledger(), threading.Event()
        threads = [threading.Thread(target=client, args=(i, fe, ledger, stop), daemon=True)
                   for i in range(CLIENTS)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        try:
            time.sleep(BEFORE_KILL)
            t_kill = time.monotonic()
            a.mxd.kill()                                     # SIGKILL
            h.wait_servers("mxd_nodes", ["node-a"], status="DOWN")
            t_marked_down = time.monotonic()
            time.sleep(max(0.0, t_kill + DOWN - time.monotonic()))
            self.start_node(a)                               # same spool
            t_restarted = time.monotonic()
            h.wait_servers("mxd_nodes", ["node-a"], status="UP")
            t_up = time.monotonic()
            time.sleep(AFTER_UP)
        finally:
            stop.set()
            for t in threads:
                t.join(30 * SLOW)
        t_end = time.monotonic()
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread hung")
        h.stop()
        b_counter = b.metric("mxd_messages_accepted_total")
        for n in self.nodes:
            self.stop_ok(n.mxd)

        # -- the spools ---------------------------------------------------
        stored = {}   # attempt id -> [(node label, qid, bytes)]
        per_node = {}
        for n in self.nodes:
            rc, out = spool_verify(n.mxd.spool)
            self.assertEqual(rc, 0, "mxspool verify on node %s:\n%s" % (n.label, out))
            exp = self.scratch_dir("export-" + n.label)
            mxspool(n.mxd.spool, "export", "--maildir", exp)
            files = glob.glob(os.path.join(exp, "new", "*"))
            per_node[n.label] = len(files)
            for path in files:
                qid = re.search(r"\.M([0-9A-Fa-f]{16})\.mxd$", path).group(1).lower()
                with open(path, "rb") as f:
                    raw = f.read()
                m = ATTEMPT_RE.search(raw)
                self.assertTrue(m, "a message we did not send on node %s: %r" % (n.label, raw[:300]))
                stored.setdefault(m.group(1).decode(), []).append((n, qid, raw))
        self.assertEqual(b_counter, per_node["b"], "node b's counter against its spool")

        lost, wrong, dups, unacked_stored = [], [], [], 0
        acked_on = {"a": 0, "b": 0}
        for aid, copies in stored.items():
            if len(copies) > 1:
                dups.append((aid, [(n.label, q) for n, q, _ in copies]))
            self.assertIn(aid, ledger.attempts, "an attempt id we never sent: %s" % aid)
            if aid not in ledger.acked:
                unacked_stored += 1
        during_outage = a_after_restart = 0
        for aid, (qid, t, content) in ledger.acked.items():
            copies = stored.get(aid, [])
            if not copies:
                lost.append((aid, qid))
                continue
            n, got_qid, raw = copies[0]
            header, body = split_received(raw)
            if (got_qid != qid or not lf_to_crlf_equal(content, body)
                    or b"by %s (mxd)" % n.hostname.encode() not in header
                    or b"[127.0.0.1]" not in header):
                wrong.append((aid, qid, n.label, got_qid, header))
                continue
            acked_on[n.label] += 1
            if t_kill < t < t_up:
                during_outage += 1
            if n is a and t > t_up:
                a_after_restart += 1
        acks = sorted(t for _, t, _ in ledger.acked.values())
        gaps = [y - x for x, y in zip(acks, acks[1:]) if t_kill - 0.5 < y < t_up + 0.5]
        max_gap = max(gaps) if gaps else float("inf")
        fails_outage = sum(1 for t in ledger.failures if t_kill <= t <= t_up)
        unacked = len(ledger.attempts) - len(ledger.acked)
        print("\nfarm: %.1f s of traffic from %d clients through HAProxy"
              % (t_end - t_start, CLIENTS))
        print("  messages %d, attempts %d, acknowledged %d (node a %d, node b %d)"
              % (ledger.messages, len(ledger.attempts), len(ledger.acked), acked_on["a"],
                 acked_on["b"]))
        print("  failures %d (while node a was down %d): %r; attempts retried %d, of which "
              "stored though unacknowledged %d"
              % (len(ledger.failures), fails_outage, ledger.reasons, unacked, unacked_stored))
        print("  lost %d, duplicates %d, stored but never sent 0; spools: a %d, b %d, both verify"
              % (len(lost), len(dups), per_node["a"], per_node["b"]))
        print("  node a: down %.2f s (HAProxy marked it DOWN %.2f s after the kill, UP %.2f s "
              "after mxd was ready again); acknowledged during the outage %d, longest gap "
              "between acknowledgements %.0f ms; node a after its restart %d"
              % (t_up - t_kill, t_marked_down - t_kill, t_up - t_restarted, during_outage,
                 max_gap * 1000, a_after_restart))
        # (the first few of each, not thousands of lines)
        self.assertEqual(len(lost), 0, "acknowledged but in no spool: %r" % lost[:5])
        self.assertEqual(len(dups), 0, "in the spools more than once: %r" % dups[:5])
        self.assertEqual(len(wrong), 0, "stored differently from what was acknowledged: %r"
                         % [w[:4] + (w[4][:300],) for w in wrong[:3]])
        self.assertGreater(during_outage, 0, "no mail acknowledged while node a was down")
        self.assertLess(max_gap, 2.0, "mail stopped flowing for %.2f s" % max_gap)
        # At most the sessions on node a when it died, and a few more while
        # HAProxy had not yet seen it fail, per client.
        self.assertLessEqual(fails_outage, 3 * CLIENTS, "failed attempts during the outage")
        self.assertGreater(acked_on["b"], 0)
        self.assertGreater(a_after_restart, 0, "node a took no mail after its restart")


if __name__ == "__main__":
    unittest.main()
