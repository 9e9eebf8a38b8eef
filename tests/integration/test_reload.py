"""Listener changes on reload (SIGHUP): a new listener accepts, a removed
one refuses, a listener that stays keeps its socket (and the connections
queued on it), and a listener that cannot be opened refuses the whole
reload with FILE:LINE:COL, the old listeners still serving.

The queued-connections test needs the hooks build (MXD_HOOKS_BIN, as in
test_faults.py): while MXD_ACCEPT_HOLD_FILE exists the cores accept
nothing, so connections wait in the kernel's queue while the reload
happens, for certain rather than by luck of timing.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

from mxharness import (HOOKS_BIN, HOOKS_REQUIRED, LOGDIR, SLOW, Mxd, MxdTestCase, RawSmtp,
                       _read_line, free_port, make_config)
import mxharness


class EnvMxd(Mxd):
    """An Mxd from another binary and with more environment."""

    def __init__(self, workdir, binary=None, env=None, **kw):
        self.binary = binary or mxharness.MXD_BIN
        self.extra_env = dict(env or {})
        super().__init__(workdir, **kw)

    def start(self, wait=True, probe=None):
        Mxd._serial += 1
        logdir = LOGDIR or self.workdir
        os.makedirs(logdir, exist_ok=True)
        self.stderr_path = os.path.join(
            logdir, "%s.%d.%d.stderr" % (self.name, os.getpid(), Mxd._serial))
        self.stderr_file = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [self.binary, "-f", self.config_path], cwd=self.workdir, env=env,
            stdin=subprocess.DEVNULL, stdout=self.stderr_file, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(probe)
        return self


def greeting(port, timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW) as s:
        line = _read_line(s)
        s.sendall(b"QUIT\r\n")
        return line


def deliver(port, tag):
    with RawSmtp(port) as c:
        c.connect_greeting()
        c.ehlo()
        r, qid = c.send_message("a@example.org", ["b@example.com"],
                                b"Subject: %s\r\n\r\nbody\r\n" % tag.encode())
        c.cmd("QUIT")
        return r, qid


def listen_lines(ports, names=None):
    names = names or {}
    return ["listen on 127.0.0.1 port %d%s" % (p, (" hostname %s" % names[p]) if p in names else "")
            for p in ports]


class ReloadListenersTest(MxdTestCase):

    def env_mxd(self, name="mxd", **kw):
        d = EnvMxd(self.workdir(name), name=self.id().split(".")[-1] + "." + name, **kw)
        self._daemons.append(d)
        return d

    def reconfigure(self, d, ports, names=None, generation=2):
        """Write a config with these listeners, SIGHUP, wait for the cores."""
        d.write_config(listen=listen_lines(ports, names), ports=ports)
        d.signal(signal.SIGHUP)
        want = "config generation %d in use" % generation
        deadline = time.monotonic() + 10 * SLOW
        while d.stderr_text().count(want) < 2:  # cores 2
            self.assertLess(time.monotonic(), deadline, "reload not taken:\n" + d.stderr_text())
            time.sleep(0.05)

    def test_add_and_remove_listeners(self):
        a, b, c = free_port(), free_port(), free_port()
        d = self.mxd(port=a, listen=listen_lines([a, b]))
        self.reconfigure(d, [a, c])
        # added: accepts and delivers
        r, qid_c = deliver(c, "on the new listener")
        self.assertEqual(r.code, 250, r)
        # stayed: still serving
        r, qid_a = deliver(a, "on the kept listener")
        self.assertEqual(r.code, 250, r)
        # removed: refuses new connections
        with self.assertRaises(ConnectionRefusedError):
            greeting(b)
        self.assertRegex(d.stderr_text(), r"listener socket \d+ closed: no longer in the config")
        # and back again on a second reload
        self.reconfigure(d, [a, b], generation=3)
        self.assertTrue(greeting(b).startswith(b"220 "))
        with self.assertRaises(ConnectionRefusedError):
            greeting(c)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted([qid_a, qid_c]))

    def test_port_in_use_refuses_the_whole_reload(self):
        a, busy, b = free_port(), free_port(), free_port()
        d = self.mxd(port=a, listen=listen_lines([a], {a: "before.example"}))
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", busy))
        blocker.listen(1)
        d.write_config(listen=listen_lines([a, b, busy], {a: "after.example"}))
        d.signal(signal.SIGHUP)
        line_re = (r"reload refused: %s:3:1: listen on 127\.0\.0\.1 port %d: Address already in use"
                   % (re.escape(d.config_path), busy))
        deadline = time.monotonic() + 10 * SLOW
        while not re.search(line_re, d.stderr_text()):
            self.assertLess(time.monotonic(), deadline, "no refusal logged:\n" + d.stderr_text())
            time.sleep(0.05)
        # the old config and listeners stay: old banner, b never opened
        self.assertIn(b"before.example", greeting(a))
        with self.assertRaises(ConnectionRefusedError):
            greeting(b)
        r, _ = deliver(a, "after a refused reload")
        self.assertEqual(r.code, 250, r)
        # once the port is free, the same file reloads
        blocker.close()
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOW
        while b"after.example" not in greeting(a):
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)
        self.assertTrue(greeting(b).startswith(b"220 "))
        self.assertTrue(greeting(busy).startswith(b"220 "))
        self.stop_ok(d)

    def test_reload_without_listeners_is_refused(self):
        """A config with no listen line serves nothing: refused, as at
        start-up, and the old listener keeps serving."""
        a = free_port()
        d = self.mxd(port=a, listen=listen_lines([a]))
        with open(d.config_path) as f:
            kept = [line for line in f if not line.startswith("listen on")]
        with open(d.config_path, "w") as f:
            f.writelines(kept)
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOW
        while "no listen directive: nothing to serve" not in d.stderr_text():
            self.assertLess(time.monotonic(), deadline, "no refusal logged:\n" + d.stderr_text())
            time.sleep(0.05)
        self.assertIn("reload refused", d.stderr_text())
        r, _ = deliver(a, "after a refused reload")
        self.assertEqual(r.code, 250, r)
        self.stop_ok(d)

    def test_queued_connections_survive_the_reload(self):
        """Connections the kernel has completed but mxd has not accepted
        yet, on a listener that stays (with new options), all get their
        220 after the reload: none is reset."""
        if not os.access(HOOKS_BIN, os.X_OK):
            if HOOKS_REQUIRED:
                self.fail("MXD_HOOKS_REQUIRED=1 but %s is missing" % HOOKS_BIN)
            self.skipTest("no hooks build at %s (tools/build --hooks)" % HOOKS_BIN)
        a, b = free_port(), free_port()
        hold = os.path.join(self.tmp, "hold-accepts")
        d = self.env_mxd(binary=HOOKS_BIN, env={"MXD_ACCEPT_HOLD_FILE": hold}, port=a,
                         listen=listen_lines([a], {a: "before.example"}))
        d.start()
        open(hold, "w").close()
        deadline = time.monotonic() + 10 * SLOW
        while d.stderr_text().count("test hook: accepts held") < 2:
            self.assertLess(time.monotonic(), deadline, d.stderr_text())
            time.sleep(0.05)
        n = 90  # under max-connections-per-client (100)
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", a), timeout=30 * SLOW)
            socks.append(s)
        time.sleep(0.2)
        self.assertNotIn("session=", d.stderr_text().split("accepts held")[-1],
                         "a connection was accepted while accepts were held")
        self.reconfigure(d, [a, b], {a: "after.example"})
        os.unlink(hold)
        banners = {"before": 0, "after": 0}
        bad = []
        for s in socks:
            try:
                line = _read_line(s)
            except OSError as e:
                line = repr(e).encode()
            if line.startswith(b"220 after.example"):
                banners["after"] += 1
            elif line.startswith(b"220 before.example"):
                banners["before"] += 1
            else:
                bad.append(line)
            s.close()
        print("\n  queued across the reload: %d connections, greeted %d (new banner), "
              "reset or closed %d" % (n, banners["after"], len(bad)))
        self.assertEqual(bad, [], "queued connections lost in the reload")
        # they were accepted after the reload, on its snapshot
        self.assertEqual(banners["after"], n)
        self.assertTrue(greeting(b).startswith(b"220 "))
        self.stop_ok(d)
