"""Resource faults: what mxd does when the machine under it fails.

Each test drives the real mxd and reads the spool back with the real mxspool:

  disk full           a 2 MiB tmpfs as the spool: a 4xx for what does not fit,
                      never a 250 for a message that is not stored, every
                      acknowledged message intact, and 250 again without a
                      restart once space comes back (a filler file deleted, or
                      the tmpfs remounted bigger). The refusal must be 452
                      4.3.1 (expected failure for now: mxd says 451 4.3.0, see
                      the BUG note). Needs root (mount).
  spool EIO           the hooks build (-DMXD_TEST_HOOKS=ON, MXD_HOOKS_BIN):
                      while MXD_SPOOL_FAULT_FILE exists every spool write and
                      fdatasync fails with EIO: 451 4.3.0, never 250; 250 again
                      once it is gone; after a restart the spool holds exactly
                      the acknowledged messages.
  fds exhausted       RLIMIT_NOFILE 64: accept pauses (no crash, no CPU spin:
                      under 10% of a core while exhausted), the clients over
                      the limit wait in the backlog, and get their 220 once
                      idle sessions close.
  SIGKILL in recovery a spool of many records with torn tails and a headerless
                      segment; mxd is killed at delays spread over its start-up
                      (recovery), then started for real: verify passes and
                      every segment is byte-identical to what was written.
  corrupt record      a record in the middle of a segment damaged three ways
                      (body bytes flipped, tail zeroed as a torn sector, length
                      field garbage): verify names the segment and the offset
                      and exits 1; mxd starts and keeps every intact record.
  valgrind mxspool    list, verify, cat, show, export under valgrind
                      (memcheck, leak-check=full) on a real spool and on a
                      corrupted one: no error.

Environment: MXD_HOOKS_BIN (the hooks build of mxd; default
build-hooks/bin/mxd), MXD_HOOKS_REQUIRED=1 (tools/test: fail instead of
skipping when it is missing), MXD_VALGRIND_MXSPOOL (the mxspool valgrind
runs; default build/bin/mxspool, as a sanitizer build cannot run under
valgrind), MXD_FAULTS_RECOVERY_MESSAGES (records for the recovery test,
default 100000).
"""

import errno
import hashlib
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from mxharness import (CRLF, HOOKS_BIN, HOOKS_REQUIRED, LOGDIR, MXSPOOL_BIN, SLOW, Mxd,
                       MxdTestCase, RawSmtp, mxspool, spool_export, spool_ids, spool_list_lines,
                       spool_verify, split_received)
import mxharness

VALGRIND_MXSPOOL = mxharness._bin("MXD_VALGRIND_MXSPOOL", "build/bin/mxspool")
RECOVERY_MESSAGES = int(os.environ.get("MXD_FAULTS_RECOVERY_MESSAGES", "100000"))
SMTP_SOURCE = shutil.which("smtp-source") or (
    "/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source") else None)
VALGRIND = shutil.which("valgrind")
IS_ROOT = os.geteuid() == 0

TEST_ID_RE = re.compile(rb"^X-Test-Id: (\S+)\r?$", re.M)
EXPORT_ID_RE = re.compile(r"\.M([0-9A-Fa-f]{16})\.")


def message(tid, size, rng):
    """A unique CRLF message of about size bytes (a few dot lines too)."""
    lines = [b"Subject: fault test", b"X-Test-Id: " + tid.encode(), b""]
    total = 60
    while total < size:
        line = b"%x" % rng.getrandbits(300)
        if rng.random() < 0.05:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return CRLF.join(lines) + CRLF


class FaultMxd(Mxd):
    """An Mxd started from another binary, with more environment, or with
    a file-descriptor limit."""

    def __init__(self, workdir, binary=None, env=None, nofile=None, **kw):
        self.binary = binary or mxharness.MXD_BIN
        self.extra_env = dict(env or {})
        self.nofile = nofile
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
        nofile = self.nofile

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [self.binary, "-f", self.config_path], cwd=self.workdir, env=env,
            stdin=subprocess.DEVNULL, stdout=self.stderr_file, stderr=subprocess.STDOUT,
            preexec_fn=limit if nofile else None)
        if wait:
            self.wait_ready(probe)
        return self

    def log_bytes(self):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return b""
        with open(self.stderr_path, "rb") as f:
            return f.read()


def cpu_seconds(pid):
    """utime + stime of the whole process (every thread), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


class FaultTestCase(MxdTestCase):

    def fault_mxd(self, name="mxd", start=True, **kw):
        d = FaultMxd(self.workdir(name), name=self.id().split(".")[-1] + "." + name, **kw)
        self._daemons.append(d)
        if start:
            d.start()
        return d

    def stop_all(self):
        for d in self._daemons:
            if d.running():
                self.stop_ok(d)

    def send(self, c, tid, content):
        """One transaction on an open session; (reply, queue id)."""
        return c.send_message("fault@example.org", ["box@example.com"], content)

    def assert_spool_holds(self, spool, acked, exact=False):
        """Every acknowledged message (queue id -> content) is in the spool,
        byte for byte after the Received: header; with exact, nothing else."""
        exported = spool_export(spool, self.scratch_dir("maildir.%d" % random.getrandbits(32)))
        by_id = {}
        for name, raw in exported.items():
            m = EXPORT_ID_RE.search(name)
            self.assertTrue(m, "export file name without an id: %s" % name)
            by_id[m.group(1).lower()] = raw
        for qid, content in acked.items():
            self.assertIn(qid, by_id, "acknowledged message %s is not in the spool" % qid)
            _, got = split_received(by_id[qid])
            if b"\r\n" not in got:
                got = got.replace(b"\n", b"\r\n")
            self.assertEqual(got, content, "message %s is not byte-identical" % qid)
        if exact:
            extra = sorted(set(by_id) - set(acked))
            self.assertEqual(extra, [], "messages in the spool that never got a 250")
        return by_id


# ---- disk full ---------------------------------------------------------------

@unittest.skipUnless(IS_ROOT, "needs root to mount a small tmpfs as the spool")
class DiskFullTest(FaultTestCase):
    """The spool on a 2 MiB tmpfs."""

    def setUp(self):
        super().setUp()
        self.mnt = tempfile.mkdtemp(prefix="mxd-full.", dir=self.tmp)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", self.mnt],
                       check=True)
        self.addCleanup(self.unmount)

    def unmount(self):
        # mxd must be gone before the file system it writes to
        for d in self._daemons:
            if d.running():
                d.stop()
        r = subprocess.run(["umount", self.mnt], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)

    def fill(self, c, rng, acked, tag, strict, size=24000, need_full=4, limit=400):
        """Send messages until need_full of them in a row were refused.
        Every reply is a 250 (recorded) or a refusal: 452 4.3.1 with strict,
        else any 4xx (a full disk must not look permanent); never a 250 for
        a message that was not stored (the spool check afterwards proves
        that). Returns the reply codes."""
        refused_in_a_row = 0
        replies = []
        for i in range(limit):
            tid = "%s-%d" % (tag, i)
            content = message(tid, size, rng)
            r, qid = self.send(c, tid, content)
            replies.append(r.code)
            if r.code == 250:
                self.assertIsNotNone(qid, r)
                acked[qid] = content
                refused_in_a_row = 0
                continue
            if strict:
                self.assertEnhanced(r, 452, "4.3.1")
            else:
                self.assertIn(r.code, (451, 452), r)
                self.assertEnhanced(r, r.code)
            refused_in_a_row += 1
            if refused_in_a_row >= need_full:
                return replies
        self.fail("the spool never filled up after %d messages: %r" % (limit, replies[-20:]))

    def start_full(self):
        """mxd on the tmpfs, 1 MiB of it taken by a filler file."""
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
        spool = os.path.join(self.mnt, "spool")
        d = self.fault_mxd(spool=spool, cores=1)
        c = RawSmtp(d.port)
        c.connect_greeting()
        c.ehlo()
        return d, c, filler, spool

    def test_disk_full_answers_452_4_3_1(self):
        d, c, filler, spool = self.start_full()
        rng = random.Random(4032)
        acked = {}
        self.fill(c, rng, acked, "a", strict=True)
        # each refused batch is cut back in place: no new segment per
        # refusal (a trail of empty segments where a header still fits)
        segments = [n for n in os.listdir(os.path.join(spool, "00")) if n.endswith(".seg")]
        self.assertEqual(len(segments), 1, segments)
        self.assertNotIn(b"cannot initialise", d.log_bytes())
        with RawSmtp(d.port) as c2:
            self.assertEqual(c2.connect_greeting().code, 220)
            c2.ehlo()
            r, _ = self.send(c2, "a-new", message("a-new", 24000, rng))
            self.assertEnhanced(r, 452, "4.3.1")
        self.assertIn(b"spool full", d.log_bytes())
        c.close()
        self.assert_spool_holds(spool, acked, exact=True)

    def test_full_at_start_up_serves_452_and_recovers(self):
        """A spool with no room for even a segment header: mxd starts
        anyway, refuses with 452 4.3.1, and takes mail once space returns,
        without leaving empty segments behind."""
        spool = os.path.join(self.mnt, "spool")
        d = self.fault_mxd(spool=spool, cores=1)
        self.stop_ok(d)
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
        segments_before = sorted(os.listdir(os.path.join(spool, "00")))
        d.start()
        rng = random.Random(4033)
        with RawSmtp(d.port) as c:
            self.assertEqual(c.connect_greeting().code, 220)
            c.ehlo()
            for i in range(3):
                r, _ = self.send(c, "full-%d" % i, message("full-%d" % i, 2000, rng))
                self.assertEnhanced(r, 452, "4.3.1")
            self.assertIn(b"full at start-up", d.log_bytes())
            self.assertEqual(sorted(os.listdir(os.path.join(spool, "00"))), segments_before,
                             "failed attempts left segment files behind")
            os.unlink(filler)
            content = message("after", 2000, rng)
            r, qid = self.send(c, "after", content)
            self.assertEqual(r.code, 250, r)
        self.stop_ok(d)
        rc, out = spool_verify(spool)
        self.assertEqual(rc, 0, out[-3000:])
        self.assert_spool_holds(spool, {qid: content}, exact=True)

    def test_disk_full_loses_nothing_and_recovers_by_itself(self):
        d, c, filler, spool = self.start_full()
        rng = random.Random(4031)
        acked = {}

        # 1. Fill the disk: 4xx to what does not fit.
        replies = self.fill(c, rng, acked, "a", strict=False)
        n_first = len(acked)
        self.assertGreaterEqual(n_first, 5, "too few messages fit before the disk was full")
        # A new session is served and refused the same way.
        with RawSmtp(d.port) as c2:
            self.assertEqual(c2.connect_greeting().code, 220)
            c2.ehlo()
            r, _ = self.send(c2, "a-new", message("a-new", 24000, rng))
            self.assertIn(r.code, (451, 452), r)

        # 2. Space comes back (the filler goes): 250 again, no restart.
        os.unlink(filler)
        for i in range(8):
            tid = "b-%d" % i
            content = message(tid, 24000, rng)
            r, qid = self.send(c, tid, content)
            self.assertEqual(r.code, 250, "message %d after space came back: %r" % (i, r))
            acked[qid] = content

        # 3. Full again; then the file system grows (remount): 250 again.
        replies += self.fill(c, rng, acked, "c", strict=False)
        subprocess.run(["mount", "-o", "remount,size=8m", self.mnt], check=True)
        for i in range(8):
            tid = "d-%d" % i
            content = message(tid, 24000, rng)
            r, qid = self.send(c, tid, content)
            self.assertEqual(r.code, 250, "message %d after the remount: %r" % (i, r))
            acked[qid] = content
        c.cmd("QUIT")
        c.close()
        self.assertTrue(d.running())

        # Nothing acknowledged is lost, nothing refused is there.
        rc, out = spool_verify(spool)
        self.assertEqual(rc, 0, "verify while running:\n" + out[-3000:])
        self.assert_spool_holds(spool, acked, exact=True)
        # ... and it stays so across a restart.
        self.stop_ok(d)
        d.start()
        self.stop_ok(d)
        rc, out = spool_verify(spool)
        self.assertEqual(rc, 0, "verify after restart:\n" + out[-3000:])
        self.assert_spool_holds(spool, acked, exact=True)
        print("\n    %d acknowledged before the disk was full, %d in all; refusals: "
              "%d x 451, %d x 452" % (n_first, len(acked), replies.count(451),
                                     replies.count(452)), end=" ", flush=True)


# ---- spool write / fsync errors (hooks build) --------------------------------

class SpoolEioTest(FaultTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(HOOKS_BIN, os.X_OK):
            if HOOKS_REQUIRED:
                self.fail("MXD_HOOKS_REQUIRED=1 but the hooks build %s is missing "
                          "(tools/build --hooks)" % HOOKS_BIN)
            self.skipTest("no hooks build at %s (tools/build --hooks makes it; "
                          "MXD_HOOKS_BIN names another)" % HOOKS_BIN)

    def test_eio_gets_451_never_250_and_only_acked_survive(self):
        trigger = os.path.join(self.tmp, "spool-fault")
        d = self.fault_mxd(binary=HOOKS_BIN, env={"MXD_SPOOL_FAULT_FILE": trigger}, cores=2)
        rng = random.Random(451)
        acked, refused = {}, {}

        def one(tag, expect_ok):
            with RawSmtp(d.port) as c:
                c.connect_greeting()
                c.ehlo()
                for i in range(3):
                    tid = "%s-%d" % (tag, i)
                    content = message(tid, rng.choice((300, 5000, 70000)), rng)
                    r, qid = self.send(c, tid, content)
                    if expect_ok:
                        self.assertEqual(r.code, 250, r)
                        acked[qid] = content
                    else:
                        self.assertEnhanced(r, 451, "4.3.0")
                        refused[tid] = content
                c.cmd("QUIT")

        def concurrently(tag, expect_ok, n=6):
            errors = []

            def run(k):
                try:
                    one("%s%d" % (tag, k), expect_ok)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)
            ts = [threading.Thread(target=run, args=(k,)) for k in range(n)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120 * SLOW)
            self.assertEqual(errors, [])

        concurrently("ok1-", True)
        open(trigger, "w").close()
        concurrently("eio-", False)     # several sessions: whole batches fail
        self.assertIn(b"spool write failed", d.log_bytes())
        self.assertIn(b"Input/output error", d.log_bytes())
        os.unlink(trigger)
        concurrently("ok2-", True)
        self.assertTrue(d.running())
        # Again, with the fault coming and going between messages of one session.
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            for i in range(6):
                fault = i % 2 == 1
                if fault:
                    open(trigger, "w").close()
                tid = "mix-%d" % i
                content = message(tid, 2000, rng)
                r, qid = self.send(c, tid, content)
                if fault:
                    self.assertEnhanced(r, 451, "4.3.0")
                    refused[tid] = content
                    os.unlink(trigger)
                else:
                    self.assertEqual(r.code, 250, r)
                    acked[qid] = content

        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, "verify while running:\n" + out[-3000:])
        self.assert_spool_holds(d.spool, acked, exact=True)
        self.stop_ok(d)
        # Restart (recovery): exactly the acknowledged ones, no 451'd one back.
        d.start()
        self.stop_ok(d)
        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, "verify after restart:\n" + out[-3000:])
        by_id = self.assert_spool_holds(d.spool, acked, exact=True)
        for raw in by_id.values():
            m = TEST_ID_RE.search(raw)
            self.assertNotIn(m.group(1).decode(), refused, "a message that got 451 is spooled")
        self.assertEqual(len(by_id), len(acked))
        print("\n    %d acknowledged, %d refused with 451 4.3.0" % (len(acked), len(refused)),
              end=" ", flush=True)


# ---- file descriptors exhausted ------------------------------------------------

class FdExhaustionTest(FaultTestCase):
    NOFILE = 64
    CLIENTS = 100

    def greeting(self, s, timeout):
        s.settimeout(timeout)
        data = b""
        try:
            while not data.endswith(b"\n"):
                d = s.recv(512)
                if not d:
                    return b"EOF"
                data += d
        except socket.timeout:
            return None
        except OSError:
            return b"EOF"
        return data

    def greetings(self, socks, settle):
        """{socket: first line} for the sockets that said something within
        `settle` seconds of the last one that did."""
        got, bufs = {}, {s: b"" for s in socks}
        deadline = time.monotonic() + settle
        while len(got) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([s for s in socks if s not in got], [], [], left)
            for s in ready:
                try:
                    d = s.recv(512)
                except OSError:
                    d = b""
                bufs[s] += d
                if not d or bufs[s].endswith(b"\n"):
                    got[s] = bufs[s] or b"EOF"
                    deadline = time.monotonic() + settle
        return got

    def test_accept_pauses_without_spinning_and_resumes(self):
        d = self.fault_mxd(nofile=self.NOFILE, cores=1,
                           extra=["max-connections-per-client 100000",
                                  "max-connections 100000"])
        pid = d.proc.pid
        socks, greeted, waiting = [], [], []
        try:
            for i in range(self.CLIENTS):
                s = socket.socket()
                s.settimeout(5 * SLOW)
                s.connect(("127.0.0.1", d.port))  # the kernel's backlog takes it
                socks.append(s)
            # Who got a greeting: at most what the limit leaves room for.
            got = self.greetings(socks, 2 * SLOW)
            for s in socks:
                g = got.get(s)
                if g is None:
                    waiting.append(s)
                else:
                    self.assertTrue(g.startswith(b"220"), "a client got %r" % g)
                    greeted.append(s)
            self.assertLess(len(greeted), self.NOFILE, "more sessions than descriptors?")
            self.assertGreater(len(greeted), self.NOFILE // 2, "too few sessions got a 220")
            self.assertGreater(len(waiting), 0, "the descriptor limit was never reached")
            self.assertTrue(d.running(), "mxd died:\n" + d.stderr_text())

            # Exhausted: no spin. Let a few re-arm ticks happen, then measure.
            time.sleep(1.5)
            t0, c0 = time.monotonic(), cpu_seconds(pid)
            time.sleep(3)
            t1, c1 = time.monotonic(), cpu_seconds(pid)
            share = (c1 - c0) / (t1 - t0)
            self.assertLess(share, 0.10, "mxd used %.0f%% of a core while out of "
                            "descriptors" % (share * 100))
            self.assertTrue(d.running(), "mxd died:\n" + d.stderr_text())
            self.assertIn(b"Too many open files", d.log_bytes())
            # The greeted sessions still work.
            greeted[0].sendall(b"NOOP\r\n")
            self.assertTrue(self.greeting(greeted[0], 5 * SLOW).startswith(b"250"))

            # Idle sessions close: the waiting clients get their 220, and so
            # does a new one.
            for s in greeted:
                s.close()
            # (the first ones in the backlog: there is room for about as
            # many as were greeted)
            first = waiting[:len(greeted) // 2]
            got = self.greetings(first, 5 * SLOW)
            self.assertEqual(len(got), len(first), "waiting clients still not greeted "
                             "once descriptors were free")
            for g in got.values():
                self.assertTrue(g.startswith(b"220"), "a waiting client got %r" % g)
            for s in waiting:
                s.close()
            time.sleep(0.5)
            with RawSmtp(d.port) as c:
                self.assertEqual(c.connect_greeting().code, 220)
                c.ehlo()
                r, qid = self.send(c, "after", message("after", 500, random.Random(1)))
                self.assertEqual(r.code, 250, r)
            print("\n    limit %d: %d sessions, %d waited; CPU while exhausted %.1f%%"
                  % (self.NOFILE, len(greeted), len(waiting), share * 100), end=" ", flush=True)
        finally:
            for s in socks:
                s.close()
        self.stop_ok(d)


# ---- SIGKILL during recovery -------------------------------------------------

def record_offsets(spool):
    """[(segment path, offset, id)] of every listed message, from the ids."""
    out = []
    for line in spool_list_lines(spool):
        qid = line.split()[0].upper()
        core, seq, off = int(qid[0:2], 16), int(qid[2:8], 16), int(qid[8:16], 16)
        out.append((os.path.join(spool, "%02d" % core, "%08d.seg" % seq), off, qid.lower()))
    return out


def segment_files(spool):
    res = []
    for core in sorted(os.listdir(spool)):
        cd = os.path.join(spool, core)
        if core.isdigit() and os.path.isdir(cd):
            res += [os.path.join(cd, n) for n in sorted(os.listdir(cd)) if n.endswith(".seg")]
    return res


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@unittest.skipUnless(SMTP_SOURCE, "Postfix smtp-source not installed (tools/deps installs postfix)")
class KillDuringRecoveryTest(FaultTestCase):

    def test_sigkill_during_recovery_loses_nothing(self):
        d = self.fault_mxd(cores=1, extra=["segment-size 4M"])
        n = RECOVERY_MESSAGES
        t0 = time.monotonic()
        r = subprocess.run([SMTP_SOURCE, "-d", "-s", "20", "-m", str(n), "-l", "100",
                            "-f", "s@example.org", "-t", "r@example.com",
                            "127.0.0.1:%d" % d.port], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=600 * SLOW)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        fill_s = time.monotonic() - t0
        self.stop_ok(d)
        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, out[-2000:])
        ids = spool_ids(d.spool)
        self.assertEqual(len(ids), n)
        segs = segment_files(d.spool)
        self.assertGreater(len(segs), 3)
        original = {p: sha(p) for p in segs}
        sizes = {p: os.path.getsize(p) for p in segs}
        # What recovery has to write: a torn tail on several segments (a
        # record's first bytes, as a crash mid-write leaves them) and a
        # segment created but never given its header. Recovery goes through
        # the segments in order, so how many tails are cut when it dies
        # tells where it was.
        with open(segs[0], "rb") as f:
            f.seek(64)
            head = f.read(400)
        damaged = segs[::2]
        last = int(os.path.basename(segs[-1])[:-4])
        stub = os.path.join(os.path.dirname(segs[-1]), "%08d.seg" % (last + 1))
        rng = random.Random(9)

        def damage():
            for p in damaged:
                if os.path.getsize(p) == sizes[p]:
                    with open(p, "ab") as f:
                        f.write(head[:rng.randrange(20, 399)])
            if not os.path.exists(stub):
                with open(stub, "wb") as f:
                    f.write(b"MXDSEG01")

        def tails_cut():
            return sum(1 for p in damaged if os.path.getsize(p) == sizes[p])

        # How long until mxd says it started, on this damaged spool.
        damage()
        t0 = time.monotonic()
        d.start(wait=False)
        while b"mxd started" not in d.log_bytes():
            self.assertTrue(d.running(), d.stderr_text())
            self.assertLess(time.monotonic() - t0, 60 * SLOW)
            time.sleep(0.0005)
        t_started = time.monotonic() - t0
        d.kill()
        self.assertEqual(tails_cut(), len(damaged))
        self.assertFalse(os.path.exists(stub))

        kills, mid = 0, 0
        outcomes = []
        while kills < 40 and mid < 3:
            damage()
            d.start(wait=False)
            time.sleep(rng.uniform(0, t_started))
            d.kill()
            kills += 1
            cut = tails_cut()
            outcomes.append(cut)
            if 0 < cut < len(damaged):
                mid += 1  # killed with recovery half done
        self.assertGreater(mid, 0, "no kill landed in the middle of recovery (tails cut "
                           "per kill: %r of %d)" % (outcomes, len(damaged)))

        # Start for real.
        d.start()
        self.assertTrue(d.running())
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = self.send(c, "after", message("after", 500, random.Random(2)))
            self.assertEqual(r.code, 250, r)
        self.stop_ok(d)
        rc, out = spool_verify(d.spool)
        self.assertEqual(rc, 0, "verify after the killed recoveries:\n" + out[-3000:])
        after = spool_ids(d.spool)
        self.assertEqual(len(after), n + 1)
        self.assertEqual(set(after), set(ids) | {qid})
        # Every segment that was there is byte for byte what mxd wrote: the
        # torn tails were cut exactly at the last intact record.
        for p in segs:
            self.assertEqual(os.path.getsize(p), sizes[p], p)
            self.assertEqual(sha(p), original[p], "%s changed" % p)
        self.assertFalse(os.path.exists(stub), "the headerless segment was kept")
        print("\n    %d records in %d segments (written in %.1fs), start-up %.0f ms, %d kills, "
              "%d in mid-recovery" % (n, len(segs), fill_s, t_started * 1000, kills, mid),
              end=" ", flush=True)


# ---- a damaged record in the middle -------------------------------------------

class CorruptRecordTest(FaultTestCase):
    N = 21

    def make_spool(self, name):
        d = self.fault_mxd(name=name, cores=1)
        rng = random.Random(name)
        acked = {}
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            for i in range(self.N):
                tid = "%s-%d" % (name, i)
                content = message(tid, rng.choice((400, 3000, 9000)), rng)
                r, qid = self.send(c, tid, content)
                self.assertEqual(r.code, 250, r)
                acked[qid] = content
        self.stop_ok(d)
        return d, acked

    def damage(self, how, seg, off, rec_len):
        with open(seg, "r+b") as f:
            if how == "body":        # bytes flipped inside the message
                f.seek(off + rec_len - 200)
                b = bytearray(f.read(16))
                f.seek(off + rec_len - 200)
                f.write(bytes(x ^ 0xA5 for x in b))
            elif how == "torn":      # the record's last sector never written
                start = max(off + 16, off + rec_len - 512)
                f.seek(start)
                f.write(b"\0" * (off + rec_len - start))
            elif how == "length":    # the length field is garbage
                f.seek(off + 4)
                f.write(b"\xff\xff\xff\x7f\x00\x00\x00\x00")

    def check(self, how):
        d, acked = self.make_spool(how)
        offs = record_offsets(d.spool)
        self.assertEqual(len(offs), self.N)
        offs.sort(key=lambda t: (t[0], t[1]))
        victim = offs[self.N // 2]
        seg, off, vid = victim
        nxt = offs[self.N // 2 + 1]
        self.assertEqual(nxt[0], seg)
        rec_len = nxt[1] - off
        before = set(spool_ids(d.spool))
        self.damage(how, seg, off, rec_len)

        r = mxspool(d.spool, "verify", check=False)
        out = r.stdout.decode("utf-8", "replace")
        self.assertEqual(r.returncode, 1, "verify must fail on a damaged record:\n" + out)
        self.assertRegex(out, r"(?m)^%s: offset %d: " % (re.escape(seg), off),
                         "verify does not name the segment and offset")
        listed = set(spool_ids(d.spool))
        self.assertEqual(listed, before - {vid}, "list lost an intact record")

        # mxd starts on it and keeps every intact record.
        d.start()
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = self.send(c, "after", message("after", 700, random.Random(3)))
            self.assertEqual(r.code, 250, r)
        self.stop_ok(d)
        self.assertIn(b"corrupt", d.log_bytes().lower())
        after = set(spool_ids(d.spool))
        self.assertEqual(after, listed | {qid})
        keep = {q: c for q, c in acked.items() if q != vid}
        self.assert_spool_holds(d.spool, keep)
        # The damage is left in place (it is not a torn tail) and still named.
        r = mxspool(d.spool, "verify", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s: offset %d: " % (seg, off), r.stdout.decode())
        return d

    def test_body_bytes_flipped(self):
        self.check("body")

    def test_torn_sector_in_the_middle(self):
        self.check("torn")

    def test_length_field_garbage(self):
        self.check("length")


# ---- valgrind on mxspool -------------------------------------------------------

@unittest.skipUnless(VALGRIND, "valgrind not installed (tools/deps installs it)")
class ValgrindMxspoolTest(FaultTestCase):

    def valgrind(self, spool, *args, expect=0):
        log = os.path.join(self.tmp, "valgrind.%d.log" % random.getrandbits(32))
        cmd = ["valgrind", "--error-exitcode=99", "--leak-check=full",
               "--errors-for-leak-kinds=definite,indirect,possible", "--log-file=" + log,
               VALGRIND_MXSPOOL, "-d", spool] + list(args)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=600 * SLOW)
        with open(log) as f:
            vlog = f.read()
        self.assertNotEqual(r.returncode, 99, "valgrind found errors in mxspool %s:\n%s"
                            % (" ".join(args), vlog[-6000:]))
        self.assertIn("ERROR SUMMARY: 0 errors", vlog, vlog[-3000:])
        self.assertEqual(r.returncode, expect, "mxspool %s: %s" % (" ".join(args),
                                                                 r.stderr[-2000:]))
        return r

    def test_mxspool_under_valgrind(self):
        if not os.access(VALGRIND_MXSPOOL, os.X_OK):
            self.skipTest("no %s" % VALGRIND_MXSPOOL)
        d = self.fault_mxd(cores=2)
        rng = random.Random(99)
        ids = []
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            for i in range(12):
                r, qid = self.send(c, "v%d" % i, message("v%d" % i, rng.choice((100, 5000)), rng))
                self.assertEqual(r.code, 250, r)
                ids.append(qid)
            # one with ESMTP parameters and several recipients, for show
            r = c.cmd("MAIL FROM:<p@example.org> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=x+2By")
            self.assertEqual(r.code, 250, r)
            for rc in ("a@example.com", "b@example.com"):
                self.assertEqual(c.cmd("RCPT TO:<%s> NOTIFY=SUCCESS,FAILURE "
                                       "ORCPT=rfc822;%s" % (rc, rc)).code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: p\r\n\r\nbody\r\n.\r\n")
            ids.append(re.search(r"queued as ([0-9A-F]{16})", c.reply().last).group(1).lower())
        self.stop_ok(d)

        def all_commands(spool, expect_verify):
            self.valgrind(spool, "list")
            self.valgrind(spool, "verify", expect=expect_verify)
            self.valgrind(spool, "cat", ids[0])
            self.valgrind(spool, "cat", "--envelope", ids[-1])
            self.valgrind(spool, "show", ids[-1])
            self.valgrind(spool, "cat", "00000000000000FF", expect=1)
            self.valgrind(spool, "export", "--maildir",
                          self.scratch_dir("vg.%d" % random.getrandbits(32)))

        all_commands(d.spool, 0)
        # The same on a damaged copy: a flipped body, a torn tail.
        bad = os.path.join(self.tmp, "bad-spool")
        shutil.copytree(d.spool, bad)
        offs = sorted(o for o in record_offsets(bad) if o[2] not in (ids[0], ids[-1]))
        seg, off, _ = offs[len(offs) // 2]
        with open(seg, "r+b") as f:
            f.seek(off + 120)
            b = f.read(8)
            f.seek(off + 120)
            f.write(bytes(x ^ 0xFF for x in b))
        with open(offs[-1][0], "ab") as f:
            f.write(b"MXR1\x00\x01")
        all_commands(bad, 1)


if __name__ == "__main__":
    unittest.main()
