"""A private Postfix instance as an SMTP next hop that stores what it is
given, for the relay tests.

Its own config_directory, queue_directory and data_directory under the
test's directory (the system instance is never touched), the way
bench/peers/postfix builds the benchmark's peer, but mail is kept: every
recipient domain is a virtual mailbox domain and Postfix's `virtual`
delivery agent writes each message to a Maildir under the instance's
directory (as `nobody`), where the test reads it back.

  smtpd      on 127.0.0.1:PORT, STARTTLS offered (`may`) with a certificate
             from tlsharness.CertFactory (a test CA: mxd verifies it with
             `ca "CA FILE"`); `tls="none"` offers no STARTTLS
  mailboxes  users given at construction; any other user of the domains
             gets 550 5.1.1 at RCPT (virtual_mailbox_maps)
  smtps      `smtps=True`: a second smtpd on smtps_port, TLS from the first
             byte (smtpd_tls_wrappermode)
  extensions `discard_ehlo=("chunking", "pipelining")` hides them from EHLO
             (smtpd_discard_ehlo_keywords): the client's DATA path, one
             command at a time
  refusals   `reject={address: "550 5.7.1 text"}` makes RCPT to that
             address answer exactly that: a 5xx to see bounced, a 4xx to
             see deferred (check_recipient_access)
  headers    none added beyond the store's: local_header_rewrite_clients
             is empty, so cleanup adds no Date/Message-ID/From/To

The master runs in the foreground (`postfix start-fg`), so stop() and
start() again reuse the same port: the next hop goes down and comes back.
Needs root (Postfix's master starts as root and drops to `postfix`).

Maildir files have LF line ends. The headers the store adds, in order:
Return-Path, X-Original-To, Delivered-To (virtual(8)), then smtpd's
Received; split them off with split_store_headers(raw, STORE_HEADERS).
"""

import os
import shutil
import signal
import socket
import subprocess
import time

from mxharness import SLOW, _read_line, free_port
from dovecotharness import maildir_files, read_all, split_store_headers as _split
from relayharness import traversable

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"

STORE_HEADERS = (("Return-Path", True), ("X-Original-To", True), ("Delivered-To", True),
                 ("Received", True))


def available():
    """Why a private Postfix cannot run here, or None."""
    if not os.path.exists(POSTFIX):
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix master needs root"
    return None


def split_store_headers(msg):
    return _split(msg, STORE_HEADERS)


def strip_store_headers(msg):
    return _split(msg, STORE_HEADERS)[1]


MAIN_CF = """\
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {dir}
myhostname = {hostname}
mydomain = test.example
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_host_lookup = native
disable_dns_lookups = yes
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
# Keep every message as it came: no header added or rewritten by cleanup.
local_header_rewrite_clients =
remote_header_rewrite_domain =
always_add_missing_headers = no
# Every domain is a virtual mailbox domain; mail goes to Maildirs.
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = inline:{{ {mailboxes} }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
virtual_mailbox_limit = 0
message_size_limit = 104857600
alias_maps =
alias_database =
local_recipient_maps =
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = {recipient_restrictions}
smtpd_delay_reject = yes
smtputf8_enable = no
biff = no
# Retry its own deliveries soon (a test never waits on Postfix's queue).
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = {tls_level}
smtpd_tls_loglevel = 1
smtpd_tls_session_cache_database =
smtpd_tls_received_header = yes
smtpd_discard_ehlo_keywords = {discard}
"""

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - 50 smtpd
{smtps}pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """One private Postfix whose master runs in the foreground."""

    def __init__(self, workdir, cert=None, users=("alice", "bob", "carol"),
                 domains=("example.com", "example.org"), reject=None, name="postfix",
                 hostname="nexthop.test.example", port=None, smtps=False, discard_ehlo=()):
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.workdir = workdir
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.mail = os.path.join(self.dir, "mail")
        self.log_path = os.path.join(self.dir, "postfix.log")
        self.port = port or free_port()
        # smtps: a second smtpd with TLS from the first byte (RFC 8314)
        self.smtps_port = free_port() if smtps else None
        self.users = list(users)
        self.domains = list(domains)
        self.reject = dict(reject or {})
        self.cert = cert
        self.hostname = hostname
        self.discard_ehlo = list(discard_ehlo)
        self.uid, self.gid = 65534, 65534
        self.proc = None
        self.out_file = None
        self._write_files()

    # -- files ----------------------------------------------------------------
    def _write_files(self):
        for d in (self.etc, self.queue, self.data, self.mail):
            os.makedirs(d, exist_ok=True)
        traversable(self.dir)   # the daemons run as postfix / nobody
        os.chmod(self.dir, 0o755)
        shutil.chown(self.data, "postfix")
        os.chown(self.mail, self.uid, self.gid)
        if os.path.exists("/etc/postfix/dynamicmaps.cf"):
            shutil.copy("/etc/postfix/dynamicmaps.cf", self.etc)
        mailboxes = ", ".join("%s@%s=%s/%s/" % (u, d, d, u)
                              for d in self.domains for u in self.users)
        restrictions = ""
        if self.reject:
            items = ", ".join("{%s=%s}" % (a, r) for a, r in self.reject.items())
            restrictions = "check_recipient_access inline:{ %s }" % items
        if self.cert is not None:
            cert, key, level = self.cert.cert, self.cert.key, "may"
        else:
            cert, key, level = "", "", "none"
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(etc=self.etc, queue=self.queue, data=self.data,
                                   dir=self.dir, log=self.log_path, hostname=self.hostname,
                                   domains=", ".join(self.domains), mail=self.mail,
                                   mailboxes=mailboxes, uid=self.uid, gid=self.gid,
                                   recipient_restrictions=restrictions, cert=cert, key=key,
                                   tls_level=level, discard=", ".join(self.discard_ehlo)))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            smtps = ""
            if self.smtps_port:
                assert self.cert is not None, "smtps needs a certificate"
                smtps = ("127.0.0.1:%d inet n - n - 50 smtpd -o smtpd_tls_wrappermode=yes "
                         "-o smtpd_tls_security_level=encrypt\n" % self.smtps_port)
            f.write(MASTER_CF.format(port=self.port, smtps=smtps))
        self._postfix("check")

    def _postfix(self, *args):
        """postfix(1) ACTION; it tells why it failed only to syslog or a
        terminal, so on failure it runs again under script(1) to show it."""
        cmd = [POSTFIX, "-c", self.etc] + list(args)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            why = subprocess.run(["script", "-qc", " ".join(cmd), "/dev/null"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=60).stdout
            raise AssertionError("postfix %s failed:\n%s\n%s" % (
                " ".join(args), why.decode("utf-8", "replace"), self.log_text()))

    # -- life cycle --------------------------------------------------------------
    def start(self):
        """Start the master in the foreground and wait for smtpd's 220."""
        self.out_file = open(os.path.join(self.dir, "start-fg.out"), "ab")
        self.proc = subprocess.Popen([POSTFIX, "-c", self.etc, "start-fg"], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=self.out_file,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30 * SLOW
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("postfix start-fg exited %r:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2 * SLOW) as s:
                    greeting = _read_line(s)
                    if greeting.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("postfix smtpd not answering on port %d:\n%s"
                                     % (self.port, self.log_text()))
            time.sleep(0.05)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stop the whole instance and wait until nothing listens on the port
        (the next hop is down: connections are refused)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            subprocess.run([POSTFIX, "-c", self.etc, "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            try:
                self.proc.wait(20 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        if self.out_file is not None:
            self.out_file.close()
            self.out_file = None
        deadline = time.monotonic() + 20 * SLOW
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                break
            if time.monotonic() > deadline:
                raise AssertionError("port %d still answers after postfix stop" % self.port)
            time.sleep(0.05)
        return self.proc.returncode

    def log_text(self, tail=6000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-tail:]
        except OSError:
            return ""

    def disconnects(self):
        """smtpd's "disconnect from" lines of sessions that sent mail (each
        counts the commands: "ehlo=1 mail=3 rcpt=3 bdat=3 quit=1")."""
        return [l for l in self.log_text(1 << 20).splitlines()
                if "disconnect from" in l and " mail=" in l]

    # -- the store -----------------------------------------------------------------
    def maildir(self, address):
        user, _, domain = address.partition("@")
        return os.path.join(self.mail, domain, user)

    def message_files(self, address):
        return maildir_files(self.maildir(address))

    def messages(self, address):
        """Bytes of every message delivered to address, oldest first."""
        return read_all(self.message_files(address))

    def count(self, address):
        return len(self.message_files(address))

    def queue_count(self):
        """Messages still in Postfix's own queue (not yet in a Maildir)."""
        n = 0
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n
