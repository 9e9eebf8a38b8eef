"""A real Dovecot LMTP server (Debian's `dovecot-lmtpd`) as the mail store
mxd delivers to, for the relay tests.

Dovecot runs in the foreground (`dovecot -F -c CONF`) with everything in
the test's directory: a generated dovecot.conf, base_dir (its sockets),
state_dir, its log, a passwd-file userdb and the users' Maildirs. Only the
LMTP protocol is served, on an inet listener on 127.0.0.1 and a free port,
and on a Unix socket.

Users are `NAME@DOMAIN` for any domain (the userdb looks up the local part
only). One or more of them can be given a 1 KiB quota, so a delivery of
anything bigger fails for that recipient alone, after DATA: LMTP's
per-recipient replies (RFC 2033 4.2). With `quota_tempfail` (the default)
the reply is 452 4.2.2 (temporary: mxd must defer), without it 552 5.2.2
(permanent: mxd must bounce). An unknown user gets 550 5.1.1 at RCPT.

As root (CI), Dovecot drops privileges the way it does in production: its
own processes run as the package's `dovecot`/`dovenull` users, mail is
written as `nobody` (the userdb's uid/gid), so the homes are created owned
by it and the directories above them are made traversable. As another user
it runs entirely as that user.

  d = Dovecot(workdir, users=("alice", "bob", "carol"), over_quota=("carol",)).start()
  d.port, d.socket_path          # lmtp://127.0.0.1:PORT, lmtp:/PATH
  d.messages("alice")            # [bytes, ...] of new/ and cur/, oldest first
  strip_store_headers(raw)       # the message as it came over LMTP
  d.stop()

Maildir files are written with LF line ends (Dovecot's default,
mail_save_crlf = no); compare with mxharness.lf_to_crlf_equal.
"""

import os
import pwd
import grp
import re
import shutil
import signal
import socket
import subprocess
import time

from mxharness import SLOW, free_port, _read_line
from relayharness import traversable

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot"
                                       if os.path.exists("/usr/sbin/dovecot") else None)
LMTP_MODULE = "/usr/lib/dovecot/lmtp"


def available():
    """Why Dovecot LMTP cannot run here, or None when it can."""
    if DOVECOT is None:
        return "dovecot is not installed (Debian: dovecot-core)"
    if not os.path.exists(LMTP_MODULE):
        return "dovecot's lmtp is not installed (Debian: dovecot-lmtpd)"
    if os.geteuid() == 0:
        for user in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return "user %s is missing (the dovecot-core package makes it)" % user
    return None


# ---- the headers the store adds ------------------------------------------------

# Dovecot's LMTP prepends, in this order: Return-Path (the envelope sender),
# Delivered-To (the recipient; only when the transaction had one accepted
# recipient: lmtp_hdr_delivery_address = final), and its own Received:
# trace header (lmtp_add_received_header).
STORE_HEADERS = (("Return-Path", True), ("Delivered-To", False), ("Received", True))


def _header_end(msg, pos):
    """The offset just past the header field starting at pos (its folded
    continuation lines included), or -1 when it is not terminated."""
    while True:
        nl = msg.find(b"\n", pos)
        if nl < 0:
            return -1
        pos = nl + 1
        if pos < len(msg) and msg[pos:pos + 1] in (b" ", b"\t"):
            continue
        return pos


def split_store_headers(msg, names=STORE_HEADERS):
    """({name: raw field}, rest): the store's headers, which must open the
    message in the given order, each at most once (the required ones
    exactly once), and the bytes after them: the message as the LMTP client
    sent it. Raises AssertionError when a required header is missing or a
    header is malformed."""
    fields = {}
    pos = 0
    for name, required in names:
        prefix = name.encode() + b":"
        if msg[pos:pos + len(prefix)].lower() != prefix.lower():
            if required:
                raise AssertionError("expected the store's %s: header at offset %d, found %r"
                                     % (name, pos, msg[pos:pos + 120]))
            continue
        end = _header_end(msg, pos)
        if end < 0:
            raise AssertionError("unterminated %s: header: %r" % (name, msg[pos:pos + 400]))
        fields[name] = msg[pos:end]
        pos = end
    return fields, msg[pos:]


def strip_store_headers(msg, names=STORE_HEADERS):
    """The message without the headers Dovecot added (and only those)."""
    return split_store_headers(msg, names)[1]


def return_path(msg):
    """The envelope sender Dovecot recorded, e.g. "" for <>."""
    fields, _ = split_store_headers(msg)
    m = re.match(rb"Return-Path:\s*<([^>]*)>", fields["Return-Path"], re.I)
    if not m:
        raise AssertionError("bad Return-Path: %r" % fields["Return-Path"])
    return m.group(1).decode("utf-8", "replace")


def delivered_to(msg):
    """The Delivered-To address, or None (a transaction of several)."""
    fields, _ = split_store_headers(msg)
    if "Delivered-To" not in fields:
        return None
    return fields["Delivered-To"].split(b":", 1)[1].strip().decode("utf-8", "replace")


# ---- the server ----------------------------------------------------------------

CONFIG = """\
# Generated by tests/integration/dovecotharness.py: a private LMTP server.
protocols = lmtp
listen = 127.0.0.1
base_dir = {base}
state_dir = {state}
instance_name = mxdtest-{tag}
log_path = {log}
info_log_path = {log}
debug_log_path = {log}
mail_debug = no
ssl = no
{privileges}
first_valid_uid = 1
last_valid_uid = 0
first_valid_gid = 1
mail_location = maildir:~/Maildir
# Maildir files: LF line ends. fsync: Dovecot's default (optimized) unless
# the test says otherwise (bulk tests that never crash Dovecot: never).
mail_fsync = {fsync}
lmtp_save_to_detail_mailbox = no
lmtp_add_received_header = yes
# Quota is checked when the message is saved, so an over-quota recipient
# fails after the data, in its own reply (RFC 2033 4.2), not at RCPT.
lmtp_rcpt_check_quota = no
recipient_delimiter =
hostname = store.test.example
# No limit (storage=0) unless the user's userdb entry sets quota_rule;
# full: 452 4.2.2 with quota_full_tempfail, else 552 5.2.2.
mail_plugins = $mail_plugins quota
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=0
}}
quota_full_tempfail = {tempfail}
# The userdb looks up the local part; homes and uids come from the file.
passdb {{
  driver = passwd-file
  args = username_format=%n {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {users}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener {socket} {{
    mode = 0666
  }}
  process_limit = {process_limit}
}}
{rootless}
"""

# Dovecot's own services that chroot or switch users by default; unprivileged
# they must not.
ROOTLESS = """\
service anvil {
  chroot =
}
service auth-worker {
  user = $default_internal_user
}
"""


class Dovecot:
    """One dovecot master in the foreground; always stopped at cleanup."""

    def __init__(self, workdir, users=("alice", "bob", "carol"), over_quota=(),
                 quota_tempfail=True, name="dovecot", process_limit=16, port=None,
                 fsync="optimized", wrapper=()):
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.workdir = workdir
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.base_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.home_root = os.path.join(self.dir, "home")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.config_path = os.path.join(self.dir, "dovecot.conf")
        self.users_path = os.path.join(self.dir, "users")
        self.socket_name = "lmtp-mxdtest"
        self.socket_path = os.path.join(self.base_dir, self.socket_name)
        self.port = port or free_port()
        self.users = list(users)
        self.over_quota = set(over_quota)
        self.quota_tempfail = quota_tempfail
        self.process_limit = process_limit
        self.fsync = fsync
        self.wrapper = list(wrapper)   # e.g. ["taskset", "-c", "1"] (bench)
        self.proc = None
        self.stdout_file = None
        if os.geteuid() == 0:
            self.uid, self.gid = 65534, grp.getgrnam("nogroup").gr_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        self._write_files()

    # -- files ------------------------------------------------------------------
    def home(self, user):
        return os.path.join(self.home_root, user)

    def maildir(self, user):
        return os.path.join(self.home(user), "Maildir")

    def _write_files(self):
        for d in (self.dir, self.state_dir, self.home_root):
            os.makedirs(d, exist_ok=True)
        if os.geteuid() == 0:
            traversable(self.home_root)   # the mail uid reaches its home
        lines = []
        for u in self.users:
            home = self.home(u)
            os.makedirs(home, exist_ok=True)
            os.chown(home, self.uid, self.gid)
            extra = "userdb_quota_rule=*:storage=1K" if u in self.over_quota else ""
            # user:password:uid:gid:gecos:home:shell:extra
            lines.append("%s::%d:%d::%s::%s" % (u, self.uid, self.gid, home, extra))
        with open(self.users_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.users_path, 0o644)
        if os.geteuid() == 0:
            privileges = ""
            rootless = ""
        else:
            me = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            privileges = ("default_internal_user = %s\ndefault_login_user = %s\n"
                          "default_internal_group = %s" % (me, me, group))
            rootless = ROOTLESS
        text = CONFIG.format(base=self.base_dir, state=self.state_dir, log=self.log_path,
                             tag="%d-%d" % (os.getpid(), self.port), privileges=privileges,
                             tempfail="yes" if self.quota_tempfail else "no",
                             users=self.users_path, port=self.port, socket=self.socket_name,
                             process_limit=self.process_limit, rootless=rootless,
                             fsync=self.fsync)
        with open(self.config_path, "w") as f:
            f.write(text)

    # -- life cycle ---------------------------------------------------------------
    def start(self):
        self.stdout_file = open(os.path.join(self.dir, "dovecot.stdout"), "wb")
        self.proc = subprocess.Popen(self.wrapper + [DOVECOT, "-F", "-c", self.config_path],
                                     cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self.stdout_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20 * SLOW
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("dovecot exited %r at start:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2 * SLOW) as s:
                    greeting = _read_line(s)
                    if not greeting.startswith(b"220"):
                        raise AssertionError("dovecot's LMTP greeting was %r" % greeting)
                    s.sendall(b"QUIT\r\n")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("dovecot LMTP not answering on port %d:\n%s"
                                         % (self.port, self.log_text()))
                time.sleep(0.05)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM to the master (it stops its children), then wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stdout_file is not None:
            self.stdout_file.close()
            self.stdout_file = None
        return self.proc.returncode

    def log_text(self, tail=6000):
        out = []
        for p in (self.log_path, os.path.join(self.dir, "dovecot.stdout")):
            try:
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace")[-tail:])
            except OSError:
                pass
        return "\n".join(out)

    # -- the store ------------------------------------------------------------------
    def message_files(self, user):
        """Paths of the user's INBOX messages, oldest first."""
        return maildir_files(self.maildir(user))

    def messages(self, user):
        """The bytes of every message in the user's INBOX, oldest first."""
        return read_all(self.message_files(user))

    def count(self, user):
        return len(self.message_files(user))

    def total(self):
        return sum(self.count(u) for u in self.users)

    def wait_count(self, user, n, timeout=30.0, what=None):
        """Until the user has at least n messages; returns them."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            got = self.count(user)
            if got >= n:
                return self.messages(user)
            if time.monotonic() > deadline:
                raise AssertionError("%s: %d message(s) in %s's Maildir after %.0fs, wanted %d%s"
                                     "\ndovecot log:\n%s"
                                     % (self.name, got, user, timeout * SLOW, n,
                                        ("\n" + what()) if what else "", self.log_text(3000)))
            time.sleep(0.05)


def maildir_files(maildir):
    """Paths of the messages in a Maildir (new/ and cur/), oldest first
    (Maildir names start with the delivery time)."""
    paths = []
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        paths += [os.path.join(d, n) for n in names if not n.startswith(".")]
    return sorted(paths, key=lambda p: _maildir_order(os.path.basename(p)))


def read_all(paths):
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def _maildir_order(name):
    """Sort key of a Maildir file name "SECONDS.M<usec>P<pid>...": time first."""
    m = re.match(r"(\d+)\.(?:M(\d+))?", name)
    if not m:
        return (0, 0, name)
    return (int(m.group(1)), int(m.group(2) or 0), name)
