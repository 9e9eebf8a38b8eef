"""A real HAProxy (Debian's `haproxy` package) in front of mxd, for the
PROXY protocol and farm tests.

HAProxy runs in the foreground (`haproxy -db -f CFG`) with its log on
stderr (kept in a file) and an admin socket in the test's directory, which
the tests use to wait until the balancer sees its servers UP or DOWN
(`show stat`), the way an operator would.

  cfg = haproxy_config(admin_socket, frontends=[...], backends=[...])
  h = HAProxy(workdir, cfg_text, admin_socket).start()
  h.wait_servers("b_v2", status="UP")
  h.stop()
"""

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time

from mxharness import SLOW

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)

# Short timeouts: a test never waits on a dead peer for long. `timeout
# client/server` bound an idle SMTP session through the balancer; they are
# longer than any pause a test makes inside one.
GLOBAL_AND_DEFAULTS = """\
global
    log stderr format raw local0 info
    maxconn 2000
    stats socket {admin} mode 600 level admin
    stats timeout 10s

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
"""


def haproxy_config(admin_socket, sections):
    """The global and defaults sections, then the given frontend/backend
    sections (each a string, written as is)."""
    return GLOBAL_AND_DEFAULTS.format(admin=admin_socket) + "\n" + "\n".join(
        s.rstrip("\n") + "\n" for s in sections)


class HAProxy:
    """One haproxy process in the foreground; always stopped at cleanup."""

    def __init__(self, workdir, config_text, admin_socket, name="haproxy"):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, name + ".cfg")
        self.log_path = os.path.join(workdir, name + ".log")
        self.admin_socket = admin_socket
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.proc = None
        self.log_file = None

    def check_config(self):
        r = subprocess.run([HAPROXY, "-c", "-f", self.config_path], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise AssertionError("haproxy -c refused %s:\n%s" % (
                self.config_path, r.stdout.decode("utf-8", "replace")))

    def start(self):
        self.check_config()
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.config_path],
                                     cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15 * SLOW
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("haproxy exited %r at start:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            try:
                self.command("show info")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("haproxy's admin socket never answered:\n"
                                         + self.log_text())
                time.sleep(0.05)

    def stop(self):
        """SIGTERM (hard stop: closes every connection at once), then wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        return self.proc.returncode

    def log_text(self, tail=6000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-tail:]
        except OSError:
            return ""

    # -- the admin socket --------------------------------------------------
    def command(self, line):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5 * SLOW)
            s.connect(self.admin_socket)
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode("utf-8", "replace")

    def servers(self, backend):
        """{server name: row of `show stat`} for the backend's servers."""
        text = self.command("show stat")
        if text.startswith("# "):
            text = text[2:]
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows
                if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}

    def server_status(self, backend, server):
        row = self.servers(backend).get(server)
        return row["status"] if row else None

    def wait_servers(self, backend, names=None, status="UP", timeout=15.0):
        """Until every named server (default: all) of backend has status
        ("UP", "DOWN"; a transition like "UP 1/2" does not count)."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            rows = self.servers(backend)
            want = names or list(rows)
            got = {n: rows[n]["status"] if n in rows else None for n in want}
            if want and all(v == status for v in got.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError("haproxy backend %s: servers %r, wanted all %s; "
                                     "check status %r\n%s"
                                     % (backend, got, status,
                                        {n: (rows[n].get("check_status"), rows[n].get("last_chk"))
                                         for n in want if n in rows},
                                        self.log_text(3000)))
            time.sleep(0.05)
