"""Shared harness for mxd's integration tests.

Everything here drives the real binaries: `mxd` is started as a child
process on a free port with a generated config and a private spool, and the
spool is read back with the real `mxspool`. Nothing is mocked.

Environment:
  MXD_BIN           path to mxd        (default build/bin/mxd)
  MXSPOOL_BIN       path to mxspool    (default build/bin/mxspool)
  MXD_TEST_LOGDIR   keep every mxd stderr log here (tools/test greps them
                    for sanitizer reports); default: inside the temp dir
  MXD_TEST_SLOW     a factor for timeouts (the ASan build is slower)
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bin(env, default):
    p = os.environ.get(env, default)
    if not os.path.isabs(p):
        p = os.path.join(ROOT, p)
    return p


MXD_BIN = _bin("MXD_BIN", "build/bin/mxd")
MXSPOOL_BIN = _bin("MXSPOOL_BIN", "build/bin/mxspool")
# mxd built with -DMXD_TEST_HOOKS=ON (tools/build --hooks); tests that need
# it skip when it is missing, unless MXD_HOOKS_REQUIRED=1 (tools/test)
HOOKS_BIN = _bin("MXD_HOOKS_BIN", "build-hooks/bin/mxd")
HOOKS_REQUIRED = os.environ.get("MXD_HOOKS_REQUIRED") == "1"
SLOW = float(os.environ.get("MXD_TEST_SLOW", "1"))
LOGDIR = os.environ.get("MXD_TEST_LOGDIR")

CRLF = b"\r\n"
HOSTNAME = "mx.test.example"

# A sanitizer report anywhere in mxd's stderr fails the test that ran it.
SANITIZER_RE = re.compile(
    rb"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|UndefinedBehaviorSanitizer"
    rb"|runtime error:|SUMMARY: AddressSanitizer|WARNING: AddressSanitizer)")

QUEUED_RE = re.compile(rb"queued as ([0-9A-Fa-f]{16})\b")
ID_RE = re.compile(r"^([0-9A-Fa-f]{16})\b")

# What a load balancer's health check sends first on a proxy-v2 / proxy-v1
# listener (HAProxy's own bytes): "no client, use the connection's address".
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
PROXY_V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A TCP port nobody listens on right now."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def make_config(port, spool, *, listen=None, accept_local=True, rules=None,
                extra=(), cores=2, max_message_size="35M"):
    """The minimal test config of the brief, with room for more lines.

    listen: list of full "listen on ..." lines (default: 127.0.0.1 port)
    rules:  list of "accept ..." lines replacing the default two
    extra:  more directives appended at the end
    """
    lines = list(listen) if listen else ["listen on 127.0.0.1 port %d" % port]
    lines.append("table domains { example.com, example.org }")
    if rules is None:
        rules = ["accept from any for domain <domains>"]
        if accept_local:
            rules.append("accept from local for any")
    lines += rules
    lines += [
        "max-message-size %s" % max_message_size,
        'spool "%s"' % spool,
        "cores %d" % cores,
        "hostname %s" % HOSTNAME,
    ]
    lines += list(extra)
    return "\n".join(lines) + "\n"


class Mxd:
    """One real mxd process with its own config and spool."""

    _serial = 0

    def __init__(self, workdir, name="mxd", port=None, spool=None, **config_kw):
        Mxd._serial += 1
        self.workdir = workdir
        self.name = name
        self.port = port or free_port()
        self.spool = spool or os.path.join(workdir, "spool")
        self.config_path = os.path.join(workdir, "mxd.conf")
        self.ports = [self.port]
        self.config_kw = config_kw
        self.proc = None
        self.stderr_path = None
        self.stderr_file = None
        self.netns = None   # a network namespace name: run inside it (ip netns exec)
        self.write_config(**config_kw)

    # -- config -----------------------------------------------------------
    def write_config(self, text=None, ports=None, **kw):
        if text is None:
            text = make_config(self.port, self.spool, **kw)
        if ports is not None:
            self.ports = list(ports)
        with open(self.config_path, "w") as f:
            f.write(text)
        self.config_text = text

    # -- life cycle -------------------------------------------------------
    def start(self, wait=True, probe=None):
        Mxd._serial += 1
        logdir = LOGDIR or self.workdir
        os.makedirs(logdir, exist_ok=True)
        self.stderr_path = os.path.join(
            logdir, "%s.%d.%d.stderr" % (self.name, os.getpid(), Mxd._serial))
        self.stderr_file = open(self.stderr_path, "wb")
        cmd = [MXD_BIN, "-f", self.config_path]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd  # execs mxd: same pid
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=self.stderr_file, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(probe)
        return self

    def wait_ready(self, probe=None, timeout=15.0):
        """Until every listener accepts and sends a 220 greeting. A probe
        target is (host, port) or (host, port, bytes to send first), e.g.
        PROXY_V2_LOCAL for a proxy-v2 listener."""
        deadline = time.monotonic() + timeout * SLOW
        targets = probe or [("127.0.0.1", p) for p in self.ports]
        for target in targets:
            host, port = target[:2]
            first = target[2] if len(target) > 2 else b""
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError("mxd exited with %r before it was ready:\n%s"
                                         % (self.proc.returncode, self.stderr_text()))
                try:
                    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                    with socket.socket(fam, socket.SOCK_STREAM) as s:
                        s.settimeout(2 * SLOW)
                        s.connect((host, port))
                        if first:
                            s.sendall(first)
                        greeting = _read_line(s)
                        if not greeting.startswith(b"220"):
                            raise AssertionError("greeting was %r" % greeting)
                        s.sendall(b"QUIT\r\n")
                        # Wait for the close, so the probe no longer counts
                        # against connection limits.
                        while s.recv(4096):
                            pass
                    break
                except (ConnectionError, socket.timeout, OSError):
                    if time.monotonic() > deadline:
                        raise AssertionError("mxd not ready on %s:%d after %.0fs:\n%s"
                                             % (host, port, timeout * SLOW, self.stderr_text()))
                    time.sleep(0.05)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=60.0):
        """SIGTERM, wait, and return the exit status (expected 0)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._close_log()
            raise AssertionError("mxd did not exit within %.0fs of SIGTERM:\n%s"
                                 % (timeout * SLOW, self.stderr_text()))
        self._close_log()
        return rc

    def kill(self):
        """SIGKILL: the crash the spool must survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self.stderr_file is not None:
            self.stderr_file.close()
            self.stderr_file = None

    def stderr_text(self):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return ""
        with open(self.stderr_path, "rb") as f:
            data = f.read()
        return data.decode("utf-8", "replace")[-8000:]

    def sanitizer_report(self):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return None
        with open(self.stderr_path, "rb") as f:
            data = f.read()
        m = SANITIZER_RE.search(data)
        if m:
            return data[max(0, m.start() - 200):m.start() + 4000].decode("utf-8", "replace")
        return None

    # -- the spool --------------------------------------------------------
    def spool_ids(self):
        return spool_ids(self.spool)

    def spool_cat(self, qid):
        return spool_cat(self.spool, qid)


# ---- mxspool ---------------------------------------------------------------

def mxspool(spool, *args, check=True, timeout=300):
    r = subprocess.run([MXSPOOL_BIN, "-d", spool] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout * SLOW)
    if check and r.returncode != 0:
        raise AssertionError("mxspool %s exited %d:\n%s" % (
            " ".join(args), r.returncode, r.stderr.decode("utf-8", "replace")[-4000:]))
    return r


def spool_list_lines(spool):
    """The lines of `mxspool list` that describe a message (start with an ID)."""
    out = mxspool(spool, "list").stdout.decode("utf-8", "replace")
    return [line for line in out.splitlines() if ID_RE.match(line)]


def spool_ids(spool):
    return [ID_RE.match(line).group(1).lower() for line in spool_list_lines(spool)]


def spool_cat(spool, qid):
    return mxspool(spool, "cat", qid).stdout


def spool_verify(spool):
    r = mxspool(spool, "verify", check=False)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def spool_export(spool, outdir):
    """Export to Maildir; return {filename: bytes} of OUT/new/."""
    mxspool(spool, "export", "--maildir", outdir)
    new = os.path.join(outdir, "new")
    result = {}
    for name in os.listdir(new):
        with open(os.path.join(new, name), "rb") as f:
            result[name] = f.read()
    return result


def split_received(msg):
    """(Received header with its folded lines, rest) of a spooled message.

    mxd's Received: header is the first header; its continuation lines
    start with a TAB (or a space). Lines end with CRLF as sent on the wire;
    a Maildir export may have turned them into LF, which is accepted too.
    """
    if not msg.startswith(b"Received:"):
        raise AssertionError("message does not start with a Received: header: %r" % msg[:200])
    eol = CRLF if msg.find(b"\n") > 0 and msg[msg.find(b"\n") - 1:msg.find(b"\n")] == b"\r" else b"\n"
    pos = 0
    while True:
        nl = msg.find(eol, pos)
        if nl < 0:
            raise AssertionError("unterminated Received: header: %r" % msg[:400])
        pos = nl + len(eol)
        if pos < len(msg) and msg[pos:pos + 1] in (b"\t", b" "):
            continue
        return msg[:pos], msg[pos:]


def strip_received(msg):
    return split_received(msg)[1]


def lf_to_crlf_equal(expected_crlf, got):
    """got equals expected, or equals it with every CRLF written as LF (Maildir)."""
    return got == expected_crlf or got == expected_crlf.replace(CRLF, b"\n")


def smtplib_expected(msg):
    """The content smtplib's data() puts on the wire for msg, before
    dot-stuffing (Lib/smtplib.py): a str has every CRLF / LF / lone CR made
    CRLF and is encoded as ASCII; bytes are sent as they are. Either way a
    final CRLF is added when missing."""
    if isinstance(msg, str):
        q = re.sub(r"(?:\r\n|\n|\r(?!\n))", "\r\n", msg).encode("ascii")
    else:
        q = msg
    if q[-2:] != CRLF:
        q += CRLF
    return q


def dot_stuff(content):
    """Client-side transparency (RFC 5321 4.5.2) for CRLF content."""
    assert content == b"" or content.endswith(CRLF)
    return re.sub(rb"(?m)^\.", b"..", content)


def smtp_source_body(length):
    """The body Postfix's smtp-source -l LENGTH sends (observed on the wire):
    while more than 80 bytes remain, a 78-char line starting with the line
    number mod 10 and padded with X; then one line of the remaining count
    of X; every line ends with CRLF."""
    lines = []
    n = 1
    while length > 80:
        lines.append(("%d" % (n % 10)) + "X" * 77)
        length -= 80
        n += 1
    lines.append("X" * length)
    return ("\r\n".join(lines) + "\r\n").encode()


# ---- a raw SMTP client -----------------------------------------------------

def _read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        ch = sock.recv(1)
        if not ch:
            break
        data += ch
    return data


class Reply:
    def __init__(self, lines):
        self.lines = lines              # raw lines with CRLF
        self.code = int(lines[-1][:3])
        self.text = b"".join(lines).decode("utf-8", "replace")

    @property
    def last(self):
        return self.lines[-1].rstrip(b"\r\n").decode("utf-8", "replace")

    def __repr__(self):
        return "Reply(%r)" % self.text


class RawSmtp:
    """A byte-exact SMTP client over a plain socket: what it sends is
    exactly what the test says, replies are parsed strictly (CRLF, code,
    continuation)."""

    def __init__(self, port, host="127.0.0.1", timeout=20.0, source=None, family=None):
        family = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout * SLOW)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.greeting = None

    def connect_greeting(self):
        self.greeting = self.reply()
        return self.greeting

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by mxd (partial %r)" % self.buf)
            self.buf += chunk

    def reply(self):
        lines = []
        while True:
            line = self._line()
            if not line.endswith(CRLF):
                raise AssertionError("reply line not ended by CRLF: %r" % line)
            if len(line) < 5 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-"):
                raise AssertionError("malformed reply line %r" % line)
            if lines and line[:3] != lines[0][:3]:
                raise AssertionError("reply code changed inside a multi-line reply: %r" % lines)
            lines.append(line)
            if line[3:4] == b" ":
                return Reply(lines)

    def cmd(self, line):
        self.send(line + ("\r\n" if isinstance(line, str) else b"\r\n"))
        return self.reply()

    def closed_by_peer(self, timeout=5.0):
        """True when the server has closed (EOF or reset) within timeout."""
        self.sock.settimeout(timeout * SLOW)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def ehlo(self, name="client.example.org"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def send_message(self, mail_from, rcpts, content, mail_params=""):
        """One transaction (not pipelined); returns (reply, queue id or None)."""
        r = self.cmd("MAIL FROM:<%s>%s" % (mail_from, mail_params))
        if r.code != 250:
            return r, None
        for rc in rcpts:
            r = self.cmd("RCPT TO:<%s>" % rc)
            if r.code != 250:
                return r, None
        r = self.cmd("DATA")
        if r.code != 354:
            return r, None
        self.send(dot_stuff(content) + b".\r\n")
        r = self.reply()
        m = QUEUED_RE.search(r.lines[-1])
        return r, (m.group(1).decode().lower() if m and r.code == 250 else None)


def queued_id(text):
    if isinstance(text, str):
        text = text.encode()
    m = QUEUED_RE.search(text)
    return m.group(1).decode().lower() if m else None


# ---- the test case base -----------------------------------------------------

class MxdTestCase(unittest.TestCase):
    """Gives each test a temp dir and starts mxd instances that are always
    stopped at the end; a sanitizer report in any mxd's stderr fails the test,
    and so does a non-zero exit on SIGTERM."""

    def setUp(self):
        base = os.environ.get("MXD_TEST_TMP")
        if base:
            os.makedirs(base, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="mxdtest.", dir=base)
        self._daemons = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        problems = []
        for d in self._daemons:
            if d.running():
                try:
                    rc = d.stop()
                    if rc != 0:
                        problems.append("mxd exited %r on SIGTERM at cleanup:\n%s"
                                        % (rc, d.stderr_text()))
                except AssertionError as e:
                    problems.append(str(e))
            rep = d.sanitizer_report()
            if rep:
                problems.append("sanitizer report in %s:\n%s" % (d.stderr_path, rep))
        shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            self.fail("\n\n".join(problems))

    def scratch_dir(self, name, need_bytes=2 << 30):
        """A directory for bulk output that is read once and thrown away
        (Maildir exports): on tmpfs when there is room, since mxspool fsyncs
        every exported file the way Maildir delivery must, and 200,000
        fsyncs on a real disk take minutes."""
        base = self.tmp
        try:
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize > need_bytes:
                base = tempfile.mkdtemp(prefix="mxdtest.", dir="/dev/shm")
                self.addCleanup(shutil.rmtree, base, True)
        except OSError:
            pass
        return os.path.join(base, name)

    def workdir(self, name):
        p = os.path.join(self.tmp, name)
        os.makedirs(p, exist_ok=True)
        return p

    def mxd(self, name="mxd", start=True, **kw):
        d = Mxd(self.workdir(name), name=self.id().split(".")[-1] + "." + name, **kw)
        self._daemons.append(d)
        if start:
            d.start()
        return d

    def stop_ok(self, d):
        rc = d.stop()
        self.assertEqual(rc, 0, "mxd exit status on SIGTERM:\n" + d.stderr_text())
        rep = d.sanitizer_report()
        self.assertIsNone(rep, "sanitizer report:\n%s" % rep)

    def assertEnhanced(self, reply, code, enhanced=None):
        """Exact reply code, and an RFC 3463 enhanced code on the last line
        (the given one when passed, e.g. "5.7.1")."""
        self.assertEqual(reply.code, code, reply)
        m = re.match(r"^\d{3}[ -](\d\.\d{1,3}\.\d{1,3})(?: |$)", reply.last)
        self.assertTrue(m, "no enhanced status code in %r" % reply.last)
        if enhanced is not None:
            self.assertEqual(m.group(1), enhanced, reply)

    def assertReceived(self, header, qid=None, helo=None, proto="ESMTP"):
        """mxd's trace header: RFC 5321 4.4 fields and the RFC 3848 protocol."""
        h = header.decode("utf-8", "replace")
        flat = re.sub(r"\r?\n[ \t]+", " ", h)
        self.assertTrue(flat.startswith("Received: from "), flat)
        self.assertIn("127.0.0.1", flat)
        self.assertIn("by " + HOSTNAME, flat)
        self.assertRegex(flat, r"\bwith %s\b" % proto)
        if helo:
            self.assertIn(helo, flat)
        if qid:
            self.assertRegex(flat.lower(), r"\bid %s\b" % qid.lower())
        self.assertRegex(flat, r";\s*\S.*\d{4} \d\d:\d\d:\d\d [+-]\d{4}")
