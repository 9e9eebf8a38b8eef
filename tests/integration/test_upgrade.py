"""Binary upgrade (SIGUSR2): the new binary takes the listening sockets
over a Unix socket, the old process drains and exits, and not one
connection is refused or reset meanwhile; every acknowledged message is in
the spool exactly once. A new binary that fails, hangs or is missing
leaves the old process serving.

The upgrade under load prints its figures (connections during the switch,
refused, reset, messages acknowledged, lost) for the issue's closing note.
"""

import os
import re
import shutil
import signal
import socket
import threading
import time

from mxharness import (SLOW, MxdTestCase, RawSmtp, free_port, spool_export, spool_verify,
                       split_received)
from test_reload import EnvMxd, HOOKS_BIN, HOOKS_REQUIRED, greeting
import mxharness

READY_RE = r"upgrade: new process (\d+) is ready; pid %d drains and exits"
EXPORT_ID_RE = re.compile(r"\.M([0-9A-Fa-f]{16})\.")


def log_text(d):
    """The whole log: every process of an upgrade writes to the first one's."""
    with open(d.stderr_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def pid_gone(pid):
    """Exited (a zombie counts: it no longer serves)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Load:
    """Client threads that connect, deliver one message and quit, in a
    loop without pause, counting every outcome."""

    def __init__(self, port, threads):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}            # queue id -> content
        self.attempts = []         # (start time, outcome)
        self.unexpected = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60 * SLOW)

    def count(self, outcome, since=None, until=None):
        with self.lock:
            return sum(1 for t, o in self.attempts
                       if o == outcome and (since is None or t >= since)
                       and (until is None or t < until))

    def total(self, since=None, until=None):
        with self.lock:
            return sum(1 for t, _ in self.attempts
                       if (since is None or t >= since) and (until is None or t < until))

    def run(self, worker):
        n = 0
        while not self.stop.is_set():
            n += 1
            tid = "w%d-%d" % (worker, n)
            content = (b"Subject: upgrade %s\r\nX-Test-Id: %s\r\n\r\n" % (tid.encode(), tid.encode())
                       + b"".join(b"line %d of %s\r\n" % (i, tid.encode()) for i in range(20)))
            t0 = time.monotonic()
            outcome = self.one(content)
            with self.lock:
                self.attempts.append((t0, outcome))

    def one(self, content):
        try:
            c = RawSmtp(self.port, timeout=30)
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            self.note("connect: %r" % e)
            return "connect_error"
        try:
            g = c.connect_greeting()
            if g.code != 220:
                self.note("greeting %r" % g.text)
                return "greeting_%d" % g.code
            r = c.cmd("EHLO load.example")
            if r.code != 250:
                self.note("EHLO %r" % r.text)
                return "ehlo_%d" % r.code
            r, qid = c.send_message("load@example.org", ["box@example.com"], content)
            if r.code != 250 or not qid:
                self.note("message %r" % r.text)
                return "message_%d" % r.code
            with self.lock:
                self.acked[qid] = content
            try:  # after the 250 a drain may say 421 instead of 221
                r = c.cmd("QUIT")
                if r.code not in (221, 421):
                    self.note("QUIT %r" % r.text)
            except (ConnectionError, OSError):
                pass
            return "ok"
        except ConnectionResetError as e:
            self.note("reset: %r" % e)
            return "reset"
        except (ConnectionError, OSError) as e:
            self.note("closed: %r" % e)
            return "closed"
        finally:
            c.close()

    def note(self, text):
        with self.lock:
            if len(self.unexpected) < 20:
                self.unexpected.append(text)


class UpgradeTest(MxdTestCase):

    def env_mxd(self, name="mxd", start=True, **kw):
        d = EnvMxd(self.workdir(name), name=self.id().split(".")[-1] + "." + name, **kw)
        self._daemons.append(d)
        if start:
            d.start()
        return d

    def kill_at_cleanup(self, pid):
        def kill():
            if not pid_gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.addCleanup(kill)

    def wait_log(self, d, pattern, timeout=30.0):
        deadline = time.monotonic() + timeout * SLOW
        while True:
            m = re.search(pattern, log_text(d))
            if m:
                return m
            self.assertLess(time.monotonic(), deadline,
                            "no %r in the log:\n%s" % (pattern, d.stderr_text()))
            time.sleep(0.02)

    def wait_gone(self, pid, timeout=30.0):
        deadline = time.monotonic() + timeout * SLOW
        while not pid_gone(pid):
            self.assertLess(time.monotonic(), deadline, "pid %d did not exit" % pid)
            time.sleep(0.02)
        return time.monotonic()

    def upgrade(self, d, old_pid):
        """SIGUSR2 to old_pid; the new pid once it is ready."""
        os.kill(old_pid, signal.SIGUSR2)
        m = self.wait_log(d, READY_RE % old_pid, timeout=60)
        new_pid = int(m.group(1))
        self.kill_at_cleanup(new_pid)
        return new_pid

    def assert_spool_exactly(self, spool, acked):
        rc, out = spool_verify(spool)
        self.assertEqual(rc, 0, "mxspool verify:\n" + out)
        exported = spool_export(spool, self.scratch_dir("maildir"))
        by_id = {}
        for name, raw in exported.items():
            m = EXPORT_ID_RE.search(name)
            self.assertTrue(m, name)
            qid = m.group(1).lower()
            self.assertNotIn(qid, by_id, "message %s exported twice" % qid)
            by_id[qid] = raw
        lost = [q for q in acked if q not in by_id]
        for qid, content in acked.items():
            if qid not in by_id:
                continue
            _, got = split_received(by_id[qid])
            if b"\r\n" not in got:
                got = got.replace(b"\n", b"\r\n")
            self.assertEqual(got, content, "message %s is not byte-identical" % qid)
        # each content once: no message stored twice under two ids
        contents = [split_received(raw)[1] for raw in by_id.values()]
        self.assertEqual(len(contents), len(set(contents)), "a message is in the spool twice")
        extra = [q for q in by_id if q not in acked]
        return lost, extra

    def test_upgrade_under_continuous_load(self):
        d = self.env_mxd(cores=2, extra=["timeout drain 20s", "segment-size 64k",
                                         "max-connections-per-client 1000"])
        first = d.proc.pid
        load = Load(d.port, threads=6)
        load.start()
        time.sleep(1.0 * SLOW)

        t1 = time.monotonic()
        second = self.upgrade(d, first)
        rc = d.proc.wait(60 * SLOW)
        t1_end = time.monotonic()
        self.assertEqual(rc, 0, "the old process's exit status:\n" + d.stderr_text())
        time.sleep(1.0 * SLOW)

        t2 = time.monotonic()
        third = self.upgrade(d, second)
        t2_end = self.wait_gone(second)
        time.sleep(1.0 * SLOW)
        load.finish()

        os.kill(third, signal.SIGTERM)
        self.wait_gone(third)
        self.assertEqual(log_text(d).count("mxd stopped"), 3, "each process exits cleanly")

        lost, extra = self.assert_spool_exactly(d.spool, load.acked)
        during = load.total(t1, t1_end) + load.total(t2, t2_end)
        refused = load.count("refused")
        reset = load.count("reset") + load.count("closed")
        failed = load.total() - load.count("ok")
        print("\n  upgrade under load: 2 upgrades (pid %d -> %d -> %d), %d client threads"
              % (first, second, third, len(load.threads)))
        print("  connections: %d in all, %d during the switches (SIGUSR2 to the old "
              "process's exit: %.0f ms and %.0f ms)"
              % (load.total(), during, (t1_end - t1) * 1000, (t2_end - t2) * 1000))
        print("  refused %d, reset or closed %d, other failures %d"
              % (refused, reset, failed - refused - reset))
        print("  messages acknowledged %d, in the spool %d, lost %d, unacknowledged "
              "but stored %d" % (len(load.acked), len(load.acked) - len(lost), len(lost),
                                 len(extra)))
        self.assertEqual(load.unexpected, [], "unexpected client outcomes")
        self.assertEqual(refused, 0)
        self.assertEqual(reset, 0)
        self.assertEqual(failed, 0)
        self.assertEqual(lost, [])
        self.assertEqual(extra, [])
        self.assertGreater(during, 0, "no connection was made during a switch")

    def test_queued_connections_go_to_the_new_process(self):
        """Connections waiting in the kernel's queue when the old process
        stops accepting are accepted by the new one."""
        if not os.access(HOOKS_BIN, os.X_OK):
            if HOOKS_REQUIRED:
                self.fail("MXD_HOOKS_REQUIRED=1 but %s is missing" % HOOKS_BIN)
            self.skipTest("no hooks build at %s (tools/build --hooks)" % HOOKS_BIN)
        hold = os.path.join(self.tmp, "hold-accepts")
        d = self.env_mxd(binary=HOOKS_BIN, env={"MXD_ACCEPT_HOLD_FILE": hold})
        first = d.proc.pid
        open(hold, "w").close()
        self.wait_log(d, r"(?s)accepts held.*accepts held")
        socks = [socket.create_connection(("127.0.0.1", d.port), timeout=30 * SLOW)
                 for _ in range(50)]
        second = self.upgrade(d, first)
        self.assertEqual(d.proc.wait(60 * SLOW), 0, d.stderr_text())
        os.unlink(hold)
        lines = []
        for s in socks:
            try:
                lines.append(s.makefile("rb").readline())
            except OSError as e:
                lines.append(repr(e).encode())
            s.close()
        bad = [x for x in lines if not x.startswith(b"220 ")]
        print("\n  queued across the upgrade: %d connections, greeted by the new process %d"
              % (len(socks), len(socks) - len(bad)))
        self.assertEqual(bad, [])
        self.assertFalse(pid_gone(second))
        os.kill(second, signal.SIGTERM)
        self.wait_gone(second)

    def test_broken_new_binary_leaves_the_old_serving(self):
        """The binary at the path mxd was started from is what an upgrade
        runs: one that exits 1, then none at all, then the real one."""
        bindir = self.workdir("bin")
        exe = os.path.join(bindir, "mxd")
        shutil.copy2(mxharness.MXD_BIN, exe)
        real = os.path.join(bindir, "mxd.real")
        shutil.copy2(mxharness.MXD_BIN, real)
        broken = os.path.join(bindir, "mxd.broken")
        with open(broken, "w") as f:
            f.write("#!/bin/sh\necho 'mxd.broken: refusing to start' >&2\nexit 1\n")
        os.chmod(broken, 0o755)
        d = self.env_mxd(binary=exe, cores=2, extra=["segment-size 4k"])
        pid = d.proc.pid

        os.rename(broken, exe)  # as a package upgrade replaces a file
        d.signal(signal.SIGUSR2)
        self.wait_log(d, r"upgrade failed: new process \d+ exited with status 1 before it "
                         r"was ready; this process \(pid %d\) keeps serving" % pid)
        os.unlink(exe)
        d.signal(signal.SIGUSR2)
        self.wait_log(d, r"upgrade failed: cannot start %s: No such file or directory"
                      % re.escape(exe))
        self.assertTrue(d.running())
        # serving, and the spool hold is released: new segments open again
        acked = {}
        for i in range(30):
            with RawSmtp(d.port) as c:
                c.connect_greeting()
                c.ehlo()
                content = b"Subject: after failed upgrades %d\r\n\r\n%s\r\n" % (i, b"x" * 400)
                r, qid = c.send_message("a@example.org", ["b@example.com"], content)
                self.assertEqual(r.code, 250, r)
                acked[qid] = content
        segments = sum(len(os.listdir(os.path.join(d.spool, c))) for c in ("00", "01"))
        self.assertGreater(segments, 2, "no new segment after the hold was released")

        os.rename(real, exe)
        second = self.upgrade(d, pid)
        self.assertEqual(d.proc.wait(60 * SLOW), 0, d.stderr_text())
        self.assertTrue(greeting(d.port).startswith(b"220 "))
        os.kill(second, signal.SIGTERM)
        self.wait_gone(second)
        lost, extra = self.assert_spool_exactly(d.spool, acked)
        self.assertEqual((lost, extra), ([], []))

    def test_new_binary_that_hangs_is_killed(self):
        """MXD_UPGRADE_BINARY names what to run instead; one that never
        says it is ready is killed after `timeout upgrade`."""
        hang = os.path.join(self.workdir("bin"), "hang")
        with open(hang, "w") as f:
            f.write("#!/bin/sh\nexec sleep 60\n")
        os.chmod(hang, 0o755)
        d = self.env_mxd(env={"MXD_UPGRADE_BINARY": hang}, extra=["timeout upgrade 1500ms"])
        t0 = time.monotonic()
        d.signal(signal.SIGUSR2)
        m = self.wait_log(d, r"upgrade failed: new process (\d+) not ready within 1500 ms")
        self.assertGreaterEqual(time.monotonic() - t0, 1.4)
        self.assertTrue(pid_gone(int(m.group(1))), "the hung child is still there")
        self.assertTrue(d.running())
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, _ = c.send_message("a@example.org", ["b@example.com"], b"still here\r\n")
            self.assertEqual(r.code, 250, r)
        self.stop_ok(d)
