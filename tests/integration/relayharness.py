"""What the relay tests share (test_relay_lmtp.py, test_relay_smtp.py,
test_relay_crash.py): mxd configs that relay, messages that can be found
again in a store, the delivery state as `mxspool -f CONFIG` shows it,
polling with deadlines, and DSN parsing.

The configuration is the one in docs/relay.md and conf/README:

  accept from any for domain <domains> relay via "lmtp://127.0.0.1:PORT"
  accept from any for domain <domains> relay via "smtp+tls://127.0.0.1:PORT" ca "FILE"
  bounce relay via "lmtp://127.0.0.1:PORT"
  relay retry 1s..2s

Every recipient domain of the tests is in <domains> (example.com,
example.org), so mxd accepts from the test clients and routes the same
rule's recipients to the next hop at delivery time.
"""

import email
import email.policy
import glob
import os
import re
import smtplib
import time

from mxharness import CRLF, SLOW, MxdTestCase, mxspool, queued_id


def traversable(path):
    """Give "others" search permission on path and every directory above it
    that lacks it (a test's mkdtemp is 0700), so a store running as another
    user (Dovecot's mail uid, Postfix's daemons) can reach its files below.
    Search only: nobody else can list the test's directories."""
    p = os.path.abspath(path)
    while p != "/":
        st = os.stat(p)
        if st.st_mode & 0o011 != 0o011:
            os.chmod(p, (st.st_mode & 0o7777) | 0o011)
        p = os.path.dirname(p)


# ---- polling -------------------------------------------------------------------

def wait_until(predicate, timeout, describe, interval=0.1):
    """Poll predicate() until it returns a true value (returned) or the
    deadline passes (AssertionError with describe(), a string or callable)."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            text = describe() if callable(describe) else describe
            raise AssertionError("after %.0fs: %s" % (timeout * SLOW, text))
        time.sleep(interval)


# ---- messages --------------------------------------------------------------------

MSGID_RE = re.compile(rb"^Message-ID:\s*<([^>]+)>\r?$", re.M | re.I)


def make_message(tag, size=600, sender="sender@example.org", to="rcpt@example.com",
                 eightbit=False):
    """A CRLF message with a unique Message-ID <tag@test.example>, a body of
    about size bytes with lines that start with dots (dot-stuffing both
    ways) and, when eightbit, UTF-8 bytes."""
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: relay test %s\r\n"
            "Message-ID: <%s@test.example>\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\n"
            % (sender, to, tag, tag)).encode()
    if eightbit:
        head += b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" \
                b"Content-Transfer-Encoding: 8bit\r\n"
    lines = [b".leading dot", b"..two dots", b"."]
    if eightbit:
        lines.append("caf\u00e9 \u00fcber \u65e5\u672c".encode())
    n = 0
    while sum(len(l) + 2 for l in lines) < size:
        n += 1
        lines.append(("%s line %d " % (tag, n)).encode() + b"x" * 60)
    return head + CRLF + CRLF.join(lines) + CRLF


def message_id(raw):
    """The Message-ID's inside of a message (CRLF or LF), or None."""
    m = MSGID_RE.search(raw)
    return m.group(1).decode() if m else None


def send(port, sender, rcpts, content, host="127.0.0.1", timeout=30):
    """One message through smtplib; returns mxd's queue id (raises on any
    refusal: the tests send only what mxd accepts)."""
    with smtplib.SMTP(host, port, timeout=timeout * SLOW) as s:
        s.ehlo("client.test.example")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            if code != 250:
                raise AssertionError("RCPT %s: %d %r" % (r, code, text))
        code, text = s.data(content)
        if code != 250:
            raise AssertionError("DATA: %d %r" % (code, text))
        qid = queued_id(text)
        assert qid, text
        return qid


def send_many(port, items, host="127.0.0.1"):
    """Several messages over one connection: items of (sender, rcpts,
    content); returns their queue ids."""
    ids = []
    with smtplib.SMTP(host, port, timeout=30 * SLOW) as s:
        s.ehlo("client.test.example")
        for sender, rcpts, content in items:
            s.mail(sender)
            for r in rcpts:
                code, text = s.rcpt(r)
                if code != 250:
                    raise AssertionError("RCPT %s: %d %r" % (r, code, text))
            code, text = s.data(content)
            if code != 250:
                raise AssertionError("DATA: %d %r" % (code, text))
            ids.append(queued_id(text))
    return ids


def to_lf(b):
    return b.replace(CRLF, b"\n")


# ---- mxd's delivery state (mxspool -f CONFIG) ------------------------------------------

LIST_RE = re.compile(r"^([0-9A-Fa-f]{16}) (\S+) (\d+) (\S+) (\S+) (\S+)$")
DEFERRAL_RE = re.compile(r"^  deferred: next try (\S+), (\d+) attempts(?:, (\S+))?: (.*)$")
SHOW_RCPT_RE = re.compile(r"^delivery: <([^>]*)> (\S+) attempts=(\d+)(.*)$")


class Listed:
    """One message of `mxspool list`: id, sender, recipients, state, and for
    a deferred one the second line's next try, attempts, hop and reply."""

    def __init__(self, m):
        self.id = m.group(1).lower()
        self.time = m.group(2)
        self.size = int(m.group(3))
        self.sender = m.group(4)
        self.rcpts = m.group(5).split(",")
        self.state = m.group(6)
        self.next_try = self.attempts = self.hop = self.reply = None

    def __repr__(self):
        extra = ""
        if self.next_try:
            extra = " next=%s attempts=%s hop=%s reply=%r" % (self.next_try, self.attempts,
                                                               self.hop, self.reply)
        return "<%s %s %s -> %s%s>" % (self.id, self.state, self.sender, ",".join(self.rcpts),
                                       extra)


def spool_list(spool, config=None):
    """{id: Listed} from `mxspool -d SPOOL [-f CONFIG] list`."""
    args = (["-f", config] if config else []) + ["list"]
    out = mxspool(spool, *args).stdout.decode("utf-8", "replace")
    result = {}
    last = None
    for line in out.splitlines():
        m = LIST_RE.match(line)
        if m:
            last = Listed(m)
            result[last.id] = last
            continue
        d = DEFERRAL_RE.match(line)
        if d and last is not None:
            last.next_try, last.attempts = d.group(1), int(d.group(2))
            last.hop, last.reply = d.group(3), d.group(4)
    return result


def spool_show(spool, qid, config=None):
    """(text, {recipient: (state, attempts, rest of the line)}) of `mxspool show`."""
    args = (["-f", config] if config else []) + ["show", qid]
    text = mxspool(spool, *args).stdout.decode("utf-8", "replace")
    rcpts = {}
    for line in text.splitlines():
        m = SHOW_RCPT_RE.match(line)
        if m:
            rcpts[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4))
    return text, rcpts


def spool_files(spool, ext):
    """Paths of SPOOL/<core>/*.<ext> (seg, dlv)."""
    return sorted(glob.glob(os.path.join(spool, "*", "*." + ext)))


def spool_bytes(spool, ext="seg"):
    return sum(os.path.getsize(p) for p in spool_files(spool, ext))


# ---- DSNs ---------------------------------------------------------------------

class Dsn:
    """A delivery status notification parsed with Python's email package
    (strict default policy) and checked for RFC 3464's shape: multipart/report;
    report-type=delivery-status, a human part first, a message/delivery-status
    part with the per-message fields and one block per recipient."""

    def __init__(self, raw):
        self.raw = raw
        self.msg = email.message_from_bytes(raw, policy=email.policy.default)
        if self.msg.get_content_type() != "multipart/report":
            raise AssertionError("DSN is %s, not multipart/report:\n%r"
                                 % (self.msg.get_content_type(), raw[:2000]))
        if (self.msg.get_param("report-type") or "").lower() != "delivery-status":
            raise AssertionError("report-type is %r" % self.msg.get_param("report-type"))
        self.parts = list(self.msg.iter_parts())
        if len(self.parts) < 2:
            raise AssertionError("DSN with %d part(s)" % len(self.parts))
        if self.parts[0].get_content_maintype() != "text":
            raise AssertionError("first part is %s" % self.parts[0].get_content_type())
        status = [p for p in self.parts if p.get_content_type() in (
            "message/delivery-status", "message/global-delivery-status")]
        if len(status) != 1:
            raise AssertionError("DSN has %d delivery-status parts" % len(status))
        blocks = status[0].get_payload()
        if not isinstance(blocks, list) or len(blocks) < 2:
            raise AssertionError("delivery-status part has no recipient block: %r"
                                 % status[0].as_bytes()[:2000])
        self.per_message = blocks[0]
        self.recipients = blocks[1:]
        if not self.per_message.get("Reporting-MTA"):
            raise AssertionError("no Reporting-MTA in %r" % self.per_message.items())

    def recipient(self, address):
        """The per-recipient block whose Final-Recipient is address."""
        for b in self.recipients:
            fr = str(b.get("Final-Recipient", ""))
            if fr.split(";", 1)[-1].strip().lower() == address.lower():
                return b
        raise AssertionError("no Final-Recipient %s in %r"
                             % (address, [str(b.get("Final-Recipient")) for b in self.recipients]))

    def final_recipients(self):
        return sorted(str(b.get("Final-Recipient")).split(";", 1)[-1].strip().lower()
                      for b in self.recipients)


def assert_failed_block(test, block, status_class="5", code=None, diagnostic=True):
    """A per-recipient block of a failure: Action failed, a Status of the
    class (or the exact code), and a Diagnostic-Code with the SMTP reply
    (when the next hop gave one: diagnostic)."""
    test.assertEqual(str(block.get("Action", "")).strip().lower(), "failed", block.items())
    status = str(block.get("Status", "")).strip()
    test.assertRegex(status, r"^%s\.\d{1,3}\.\d{1,3}$" % re.escape(status_class), block.items())
    if code:
        test.assertEqual(status, code, block.items())
    if diagnostic:
        diag = str(block.get("Diagnostic-Code", ""))
        test.assertRegex(diag, r"(?i)^smtp;\s*%s\d\d\b" % re.escape(status_class),
                         block.items())


# ---- the test case ---------------------------------------------------------------

class RelayTestCase(MxdTestCase):
    """MxdTestCase with next hops (Dovecot, Postfix) stopped at cleanup, and
    an mxd that relays."""

    def setUp(self):
        super().setUp()
        self._hops = []
        # Run after MxdTestCase's cleanup (cleanups run last-in first-out):
        # mxd stops first, then the next hops it was talking to.
        self.addCleanup(self._stop_hops)

    def _stop_hops(self):
        for h in reversed(self._hops):
            try:
                h.stop()
            except Exception as e:  # a cleanup must try every hop
                print("stopping %s: %s" % (getattr(h, "name", h), e))

    def hop(self, h):
        """Register a next hop for cleanup and start it."""
        self._hops.append(h)
        return h.start()

    def dovecot(self, name="dovecot", start=True, **kw):
        """A Dovecot LMTP store, started unless start=False (then its port
        refuses connections until h.start(): a next hop that is down)."""
        from dovecotharness import Dovecot, available
        why = available()
        if why:
            self.skipTest(why)
        h = Dovecot(self.workdir(name), name=name, **kw)
        self._hops.append(h)
        return h.start() if start else h

    def postfix(self, name="postfix", **kw):
        from postfixharness import Postfix, available
        why = available()
        if why:
            self.skipTest(why)
        return self.hop(Postfix(self.workdir(name), name=name, **kw))

    def relay_mxd(self, via, extra=(), cores=2, name="mxd", start=True, verify=None,
                  bounce=None, **kw):
        """An mxd whose <domains> rule relays via the given next hop(s) (a
        URL string or a list), with `ca "FILE"` or `noverify` when verify is
        given, `bounce relay via BOUNCE`, and short retries by default."""
        hops = [via] if isinstance(via, str) else list(via)
        rule = "accept from any for domain <domains> relay via " + ", ".join(
            '"%s"' % h for h in hops)
        if verify == "noverify":
            rule += " noverify"
        elif verify:
            rule += ' ca "%s"' % verify
        lines = []
        if bounce:
            lines.append('bounce relay via "%s"' % bounce)
        lines += list(extra)
        if not any(l.startswith("relay retry") for l in lines):
            lines.append("relay retry 1s..2s")
        if not any(l.startswith("relay timeout") for l in lines):
            lines += ["relay timeout connect 5s", "relay timeout command 10s"]
        return self.mxd(name, start=start, rules=[rule], extra=lines, cores=cores, **kw)

    def states(self, d):
        return spool_list(d.spool, d.config_path)

    def describe_spool(self, d, limit=20):
        """What mxspool says about the spool, and mxd's log tail: the failure
        message of a wait that timed out."""
        try:
            listed = list(self.states(d).values())
        except AssertionError as e:
            listed = ["mxspool list failed: %s" % e]
        return "mxspool list (%d): %s\nmxd log tail:\n%s" % (
            len(listed), "\n  ".join(repr(x) for x in listed[:limit]),
            d.stderr_text()[-3000:])
