"""TLS helpers for mxd's integration tests, built on mxharness.

Certificates are made here with the `openssl` command: a test CA, server
certificates (ECDSA P-256 or RSA) for one or more names, client
certificates signed by a CA, and the seed's own recipe (a 4096-bit RSA key
from `openssl genrsa` and a self-signed certificate from `openssl req
-x509 -new`). Generated material is cached for the life of the test
process (RSA-4096 key generation takes a while) and copied into each test's
directory, keys with mode 0600 as mxd requires.

TlsTestCase.tls_mxd() writes a config with pki lines, TLS listeners and
optional credentials, starts mxd, and waits until every listener answers:
plaintext and STARTTLS listeners with mxharness's 220 probe, smtps ones
through a TLS handshake first.

mxd's log lines the tests read (engine/main.c, conn.c, conn_tls.c):
  start-up:   "tls: kTLS offload in use: ..." or
              "tls: userspace path (BoringSSL records): <why>"
  per session "session=ID open client=ADDR port=CLIENTPORT ..." and
              "session=ID close client=... tls_path=userspace|ktls|none ..."
  handshake   "session=ID client=ADDR TLS handshake failed: <reason>"
  failure
"""

import atexit
import errno
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from mxharness import (HOSTNAME, SLOW, MxdTestCase, RawSmtp, _read_line, free_port,
                       split_received)

OPENSSL = shutil.which("openssl")

# Names used throughout the TLS tests.
MAIL_NAME = "mail.example.com"
MX_NAME = "mx.example.org"

# ---- mxd's log ---------------------------------------------------------------

CLOSE_RE = re.compile(r"session=(\S+) close client=(\S+)(.*)$")
TLS_PATH_RE = re.compile(r"\btls_path=(\w+)")
OPEN_RE = re.compile(r"session=(\S+) open client=(\S+) port=(\d+)")
# The start-up line that says which path finished handshakes take.
STARTUP_PATH_RE = re.compile(r"\btls: (kTLS offload in use|userspace path)\b")
HANDSHAKE_FAILED = r"TLS handshake failed"


def log_lines(d):
    """Every line mxd has written so far (stdout and stderr are one file)."""
    if not d.stderr_path or not os.path.exists(d.stderr_path):
        return []
    with open(d.stderr_path, "rb") as f:
        return f.read().decode("utf-8", "replace").splitlines()


def wait_for_log(d, pattern, count=1, timeout=10.0):
    """Until at least `count` lines match pattern; returns the matching lines.
    mxd's cores buffer their log lines briefly, so poll."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout * SLOW
    while True:
        found = [l for l in log_lines(d) if rx.search(l)]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("after %.0fs, %d line(s) match %r, wanted %d; log:\n%s"
                                 % (timeout * SLOW, len(found), rx.pattern, count,
                                    "\n".join(log_lines(d)[-60:])))
        time.sleep(0.05)


def session_of_port(d, client_port, timeout=10.0):
    """The session id mxd gave the connection from our local port."""
    lines = wait_for_log(d, r"session=\S+ open client=\S+ port=%d\b" % client_port,
                         timeout=timeout)
    return OPEN_RE.search(lines[-1]).group(1)


def close_line(d, sid, timeout=10.0):
    return wait_for_log(d, r"session=%s close " % re.escape(sid), timeout=timeout)[-1]


def startup_tls_path(d):
    """"ktls" or "userspace", from mxd's start-up line."""
    m = STARTUP_PATH_RE.search(wait_for_log(d, STARTUP_PATH_RE)[0])
    return "ktls" if m.group(1).startswith("kTLS") else "userspace"


def tls_path_of(line):
    m = TLS_PATH_RE.search(line)
    return m.group(1) if m else None


def delivering_close_lines(d):
    """Close lines of sessions that delivered at least one message."""
    out = []
    for l in log_lines(d):
        m = CLOSE_RE.search(l)
        if m:
            mm = re.search(r"\bmessages=(\d+)", l)
            if mm and int(mm.group(1)) > 0:
                out.append(l)
    return out


def kernel_has_ktls():
    """Does this kernel take TCP_ULP "tls" on a connected TCP socket?
    (The same probe mxd's `ktls auto` makes.)"""
    TCP_ULP = 31
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=5) as c:
            a, _ = srv.accept()
            with a:
                try:
                    c.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
                    return True
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENOPROTOOPT,
                                   errno.EINVAL, errno.EPERM):
                        return False
                    raise


def expected_tls_path():
    """What `ktls auto` must choose on this machine."""
    return "ktls" if kernel_has_ktls() else "userspace"


# ---- certificates ------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[alt]
%s
"""


def openssl(*args, cwd=None, input=None, timeout=120):
    r = subprocess.run([OPENSSL] + list(args), cwd=cwd, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("openssl %s exited %d:\n%s" % (
            " ".join(args), r.returncode, r.stderr.decode("utf-8", "replace")[-3000:]))
    return r.stdout


class CertFiles:
    """A certificate and its private key on disk (cert may hold a chain)."""

    def __init__(self, cert, key, name=None, ca=None):
        self.cert = cert
        self.key = key
        self.name = name          # the DNS name it is for, or the client CN
        self.ca = ca              # the CertFiles of the CA that signed it (None: self-signed)

    def der(self):
        with open(self.cert) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def copy_to(self, directory, stem):
        """Copies in directory: the cert 0644, the key 0600 (what mxd wants)."""
        os.makedirs(directory, exist_ok=True)
        cert = os.path.join(directory, stem + ".crt")
        key = os.path.join(directory, stem + ".key")
        shutil.copyfile(self.cert, cert)
        os.chmod(cert, 0o644)
        shutil.copyfile(self.key, key)
        os.chmod(key, 0o600)
        return CertFiles(cert, key, self.name, self.ca)


class CertFactory:
    """Makes keys and certificates with the openssl command, once per process."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mxd-tlscerts.", dir=os.environ.get("MXD_TEST_TMP"))
        atexit.register(shutil.rmtree, self.dir, True)
        self._cache = {}
        self._lock = threading.Lock()
        self._serial = int(time.time()) & 0xffffff

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _key(self, path, kind):
        if kind == "ec":
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", path)
        elif kind.startswith("rsa"):
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:%d" % int(kind[3:] or 2048), "-out", path)
        else:
            raise ValueError(kind)
        os.chmod(path, 0o600)

    def _cnf(self, stem, sans=()):
        alt = "\n".join(sans) if sans else "DNS.1 = unused.invalid"
        p = self._path(stem + ".cnf")
        with open(p, "w") as f:
            f.write(_OPENSSL_CNF % alt)
        return p

    def _next_serial(self):
        self._serial += 1
        return "0x%x" % self._serial

    def ca(self, label="ca", kind="ec"):
        """A CA certificate (CN "mxd test <label>") and its key."""
        k = ("ca", label, kind)
        with self._lock:
            if k not in self._cache:
                stem = "%s-%s" % (label, kind)
                key, cert = self._path(stem + ".key"), self._path(stem + ".crt")
                self._key(key, kind)
                openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "3650",
                        "-subj", "/O=mxd tests/CN=mxd test %s" % label, "-config",
                        self._cnf(stem), "-extensions", "v3_ca", "-set_serial",
                        self._next_serial())
                self._cache[k] = CertFiles(cert, key, label)
            return self._cache[k]

    def _signed(self, stem, subject, ext, sans, kind, ca):
        key, cert, csr = (self._path(stem + ".key"), self._path(stem + ".crt"),
                          self._path(stem + ".csr"))
        self._key(key, kind)
        cnf = self._cnf(stem, sans)
        openssl("req", "-new", "-key", key, "-subj", subject, "-config", cnf, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
                self._next_serial(), "-days", "365", "-extfile", cnf, "-extensions", ext,
                "-out", cert)
        return key, cert

    def server(self, name=MAIL_NAME, kind="ec", ca_label="ca"):
        """A server certificate for name (also localhost and 127.0.0.1, so
        clients that verify can connect by address), signed by ca(ca_label)."""
        k = ("server", name, kind, ca_label)
        ca = self.ca(ca_label)
        with self._lock:
            if k not in self._cache:
                stem = "server-%s-%s-%s" % (name, kind, ca_label)
                sans = ["DNS.1 = %s" % name, "DNS.2 = localhost", "IP.1 = 127.0.0.1"]
                key, cert = self._signed(stem, "/O=mxd tests/CN=%s" % name, "v3_server", sans,
                                         kind, ca)
                self._cache[k] = CertFiles(cert, key, name, ca)
            return self._cache[k]

    def client(self, cn="client.example.net", kind="ec", ca_label="ca"):
        """A client certificate (CN cn), signed by ca(ca_label)."""
        k = ("client", cn, kind, ca_label)
        ca = self.ca(ca_label)
        with self._lock:
            if k not in self._cache:
                stem = "client-%s-%s-%s" % (cn, kind, ca_label)
                key, cert = self._signed(stem, "/O=mxd tests/CN=%s" % cn, "v3_client", [], kind,
                                         ca)
                self._cache[k] = CertFiles(cert, key, cn, ca)
            return self._cache[k]

    def seed_rsa4096(self, name=MAIL_NAME):
        """starttls(8)'s recipe, literally: `openssl genrsa -out KEY 4096`,
        then `openssl req -x509 -new -key KEY -out CRT -days 365` (here with
        -subj instead of the prompts)."""
        k = ("seed", name)
        with self._lock:
            if k not in self._cache:
                stem = "seed-%s" % name
                key, cert = self._path(stem + ".key"), self._path(stem + ".crt")
                openssl("genrsa", "-out", key, "4096")
                os.chmod(key, 0o600)
                openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "365",
                        "-subj", "/CN=%s" % name)
                self._cache[k] = CertFiles(cert, key, name, None)
            return self._cache[k]


_factory = None
_factory_lock = threading.Lock()


def certs():
    global _factory
    with _factory_lock:
        if _factory is None:
            _factory = CertFactory()
        return _factory


def peer_cn(der):
    """The subject CN of a DER certificate (via openssl x509)."""
    out = openssl("x509", "-inform", "DER", "-noout", "-subject", "-nameopt", "RFC2253",
                  input=der).decode()
    m = re.search(r"CN=([^,\n]+)", out)
    return m.group(1).strip() if m else None


# ---- clients -----------------------------------------------------------------

def client_context(ca=None, cert=None, verify=True, minimum=None, maximum=None):
    """A client SSLContext: verifying against ca (a CertFiles or path) when
    verify, presenting cert (a CertFiles) when given."""
    if verify:
        cafile = ca.cert if isinstance(ca, CertFiles) else ca
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


class TlsRawSmtp(RawSmtp):
    """RawSmtp that can switch its socket to TLS (STARTTLS) or start in it
    (smtps). Bytes stay exact: what the test sends is what goes in the
    records."""

    def starttls(self, ctx, server_hostname=None, check_nothing_pending=True):
        """STARTTLS and the handshake. A verifying ctx without a name checks
        the certificate against 127.0.0.1 (its IP SAN) and sends no SNI."""
        if server_hostname is None and ctx.check_hostname:
            server_hostname = "127.0.0.1"
        r = self.cmd("STARTTLS")
        if r.code != 220:
            return r
        if check_nothing_pending and self.buf:
            raise AssertionError("bytes after the 220 to STARTTLS, in plaintext: %r" % self.buf)
        self.buf = b""
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return r

    def wrap_now(self, ctx, server_hostname=None):
        """Implicit TLS: handshake first (smtps)."""
        if server_hostname is None and ctx.check_hostname:
            server_hostname = "127.0.0.1"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)


def ehlo_keywords(reply):
    """EHLO reply → set of upper-case keyword lines (first word after the code)."""
    kws = {}
    for line in reply.lines[1:]:
        text = line[4:].rstrip(b"\r\n").decode("ascii", "replace")
        if text:
            parts = text.split()
            kws[parts[0].upper()] = parts[1:]
    return kws


# ---- the Received: header --------------------------------------------------

RECEIVED_TLS_RE = re.compile(r"\(using (TLSv1(?:\.[0-3])?) with cipher ([A-Za-z0-9_\-]+)\)")


def received_tls(header):
    """(version, cipher) from mxd's Received: header, or None without TLS."""
    flat = re.sub(r"\r?\n[ \t]+", " ", header.decode("utf-8", "replace"))
    m = RECEIVED_TLS_RE.search(flat)
    return (m.group(1), m.group(2)) if m else None


def cipher_key(name):
    """A cipher name in OpenSSL ("ECDHE-RSA-AES128-GCM-SHA256") or IANA
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256") spelling, made comparable."""
    n = name.upper()
    if n.startswith("TLS_"):
        n = n[4:]
    n = n.replace("WITH_", "").replace("-", "").replace("_", "")
    if "CHACHA20" in n and n.endswith("POLY1305SHA256"):
        n = n[:-6]
    return n


# ---- mxd with TLS ----------------------------------------------------------

class Pki:
    """One `pki NAME ...` of the config."""

    def __init__(self, name, files, ca=None, split_lines=False):
        self.name = name
        self.files = files        # CertFiles (copied into the test dir)
        self.ca = ca              # path of the CA bundle for client certificates
        self.split_lines = split_lines  # starttls(8)'s form: one line per field

    def lines(self):
        if self.split_lines:
            out = ['pki %s cert "%s"' % (self.name, self.files.cert),
                   'pki %s key "%s"' % (self.name, self.files.key)]
        else:
            out = ['pki %s cert "%s" key "%s"' % (self.name, self.files.cert, self.files.key)]
        if self.ca:
            out.append('pki %s ca "%s"' % (self.name, self.ca))
        return out


def tls_config(spool, listeners, pkis, *, passwd=None, rules=None, extra=(), cores=2):
    """listeners: [(port, "tls pki NAME ...")]; passwd: path of a
    `user hash` file, named <passwd>; rules default to our two domains plus
    `accept from authenticated for any` (and nothing for local clients, so
    relaying needs authentication)."""
    lines = []
    for p in pkis:
        lines += p.lines()
    lines.append("table domains { example.com, example.org }")
    if passwd:
        lines.append('table passwd "file:%s"' % passwd)
    for port, opts in listeners:
        lines.append(("listen on 127.0.0.1 port %d %s" % (port, opts)).rstrip())
    if rules is None:
        rules = ["accept from any for domain <domains>", "accept from authenticated for any"]
    lines += rules
    lines += ["max-message-size 35M", 'spool "%s"' % spool, "cores %d" % cores,
              "hostname %s" % HOSTNAME]
    lines += list(extra)
    return "\n".join(lines) + "\n"


def write_passwd(path, users):
    """users: {name: (password, scheme)} with scheme sha512 | yescrypt |
    bcrypt; writes `name hash` lines (mode 0600) and returns the path."""
    with open(path, "w") as f:
        f.write("# user crypt-hash\n")
        for user, (password, scheme) in users.items():
            f.write("%s %s\n" % (user, crypt_hash(password, scheme)))
    os.chmod(path, 0o600)
    return path


def crypt_hash(password, scheme="sha512"):
    """A crypt(3) hash made by the system's libcrypt (libxcrypt, the library
    mxd checks with) through ctypes: crypt_gensalt() for a fresh setting,
    then crypt(). Without libcrypt, `openssl passwd -6` (sha512 only)."""
    prefix = {"sha512": b"$6$", "yescrypt": b"$y$", "bcrypt": b"$2b$"}[scheme]
    lib = _libcrypt()
    if lib is not None:
        setting = lib.crypt_gensalt(prefix, 0, None, 0)
        h = lib.crypt(password.encode("utf-8"), setting) if setting else None
        if not h or h.startswith(b"*"):
            raise AssertionError("libcrypt cannot make a %s hash here" % scheme)
        return h.decode("ascii")
    if scheme != "sha512":
        import unittest
        raise unittest.SkipTest("no libcrypt for %s hashes" % scheme)
    return openssl("passwd", "-6", "-stdin", input=password.encode()).decode().strip()


def _libcrypt():
    import ctypes
    import ctypes.util
    for name in (ctypes.util.find_library("crypt"), "libcrypt.so.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            lib.crypt_gensalt.restype = ctypes.c_char_p
            lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                          ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def tls_probe(port, timeout):
    """Until an smtps listener completes a handshake and sends 220."""
    deadline = time.monotonic() + timeout
    ctx = client_context(verify=False)
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2 * SLOW) as raw:
                with ctx.wrap_socket(raw) as s:
                    greeting = _read_line(s)
                    if not greeting.startswith(b"220"):
                        raise AssertionError("smtps greeting was %r" % greeting)
                    s.sendall(b"QUIT\r\n")
                    try:
                        while s.recv(4096):
                            pass
                    except (ssl.SSLError, OSError):
                        pass
            return
        except (ConnectionError, socket.timeout, ssl.SSLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class TlsTestCase(MxdTestCase):
    """MxdTestCase with TLS listeners."""

    def setUp(self):
        if not OPENSSL:
            self.skipTest("openssl command not installed")
        super().setUp()
        self.certs = certs()

    def pki(self, name, files, ca=None, split_lines=False, stem=None):
        """A Pki whose files are private copies in this test's directory."""
        d = self.workdir("pki")
        local = files.copy_to(d, stem or name)
        ca_path = None
        if ca is not None:
            ca_path = os.path.join(d, (stem or name) + ".ca.crt")
            shutil.copyfile(ca.cert if isinstance(ca, CertFiles) else ca, ca_path)
        return Pki(name, local, ca_path, split_lines)

    def tls_mxd(self, listeners, pkis, name="mxd", start=True, passwd=None, rules=None,
                extra=(), cores=2):
        """listeners: option strings ("tls pki mail.example.com auth <passwd>",
        "smtps pki ...", "" for plaintext); each gets a free port, in
        d.ports in the same order; d.smtps says which are implicit TLS."""
        d = self.mxd(name=name, start=False)
        ports = []
        for _ in listeners:
            p = free_port()
            while p in ports:
                p = free_port()
            ports.append(p)
        d.write_config(text=tls_config(d.spool, list(zip(ports, listeners)), pkis, passwd=passwd,
                                       rules=rules, extra=extra, cores=cores), ports=ports)
        d.port = ports[0]
        d.smtps = [("smtps" in opts.split()) for opts in listeners]
        if start:
            self.start_tls_mxd(d)
        return d

    def start_tls_mxd(self, d):
        plain = [("127.0.0.1", p) for p, s in zip(d.ports, d.smtps) if not s]
        implicit = [p for p, s in zip(d.ports, d.smtps) if s]
        if plain:
            d.start(wait=True, probe=plain)
        else:
            d.start(wait=False)
        for p in implicit:
            try:
                tls_probe(p, 15 * SLOW)
            except Exception as e:
                raise AssertionError("smtps listener %d not ready (%s):\n%s"
                                     % (p, e, d.stderr_text()))
            if not d.running():
                raise AssertionError("mxd exited:\n" + d.stderr_text())
        return d

    def simple_tls_mxd(self, kind="ec", opts="tls", **kw):
        """One listener `OPTS pki mail.example.com` with a CA-signed cert."""
        p = self.pki(MAIL_NAME, self.certs.server(MAIL_NAME, kind))
        return self.tls_mxd(["%s pki %s" % (opts, MAIL_NAME)], [p], **kw)

    # -- checks -----------------------------------------------------------
    def assertTlsReceived(self, raw, qid, version, cipher=None, proto="ESMTPS", helo=None):
        """The spooled message's Received: header says TLS, the version (and
        cipher when given) the client saw, and the protocol."""
        header, content = split_received(raw)
        self.assertReceived(header, qid=qid, helo=helo, proto=proto)
        got = received_tls(header)
        self.assertIsNotNone(got, "no (using TLS... with cipher ...) in %r" % header)
        self.assertEqual(got[0], version, header)
        if cipher:
            self.assertEqual(cipher_key(got[1]), cipher_key(cipher), header)
        return content

    def assertSessionPath(self, d, client_port, path=None):
        """The close line of the session from client_port names the TLS path
        (default: what `ktls auto` must pick on this kernel)."""
        sid = session_of_port(d, client_port)
        line = close_line(d, sid)
        self.assertEqual(tls_path_of(line), path or expected_tls_path(), line)
        return line

    def assertDeliveringSessionsPath(self, d, n, path=None):
        """Exactly n sessions delivered mail and each of their close lines
        names the TLS path."""
        wait_for_log(d, r"\bclose\b.*\bmessages=[1-9]", count=n)
        lines = delivering_close_lines(d)
        self.assertEqual(len(lines), n, "\n".join(lines))
        for l in lines:
            self.assertEqual(tls_path_of(l), path or expected_tls_path(), l)
