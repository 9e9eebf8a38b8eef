"""SMTP smuggling (CVE-2023-51764 class) against the real mxd, with every
split of the input across TCP segments.

A smuggling attempt hides a second transaction behind an end-of-data that
one server takes for <CRLF>.<CRLF> and another does not ("\\n.\\n",
"\\r.\\r\\n", ...). mxd must never spool the smuggled transaction:

- a dot after a bare CR or LF, or a dot line ended by a bare CR or LF, is
  a smuggling-shaped end: 521 5.5.2 and the session is closed at once, so
  nothing behind it is ever read as a command;
- a bare CR or LF anywhere else in the content: the message is refused at
  its end with 550 5.6.0, and the session goes on;
- BDAT has no end-of-data marker, but a bare CR or LF is still refused,
  also when the CR and the LF (or the dot) sit in different chunks: the
  message is refused at BDAT LAST with 550 5.6.0;
- with `bare-newlines accept`, bare CR and LF are content: only
  <CRLF>.<CRLF> ends DATA, and the would-be smuggled text is spooled,
  byte for byte, as part of the one message.

The scanner must not depend on where the reads fall, so every case is run
once per byte boundary of what follows the 354 (or the BDAT stream): the
two parts go out as separate segments (TCP_NODELAY, a pause between them),
and once more a byte per segment. Connections run in parallel to keep the
wall time short.
"""

import concurrent.futures
import re
import select
import socket
import unittest

from mxharness import (SLOW, MxdTestCase, RawSmtp, Reply, lf_to_crlf_equal, queued_id,
                       spool_export, spool_list_lines, strip_received)
from tlsharness import log_lines, wait_for_log

CRLF = b"\r\n"
PROLOGUE_DATA = (b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n"
                 b"RCPT TO:<b@example.com>\r\nDATA\r\n")
PROLOGUE_BDAT = b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"

# What is smuggled: a whole second transaction from another sender.
SMUGGLED = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")
HEAD = b"Subject: outer\r\n\r\nhello"

# End-of-data look-alikes with a bare CR or LF: each gets 521 5.5.2.
SMUGGLING_ENDS = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r",
                  b"\r.\n", b"\r.\r"]
# A bare CR or LF in content without a dot after it: 550 5.6.0 at the real
# end, and the session continues.
TAINTED_CONTENT = [b"\nsmuggled-looking line\r\n", b"\rline\r\n", b"\r\r\n", b"\n\n",
                   b"\r\n..\n"]

WORKERS = 48
PAUSE = 0.005


def parse_replies(data):
    """Every reply in data, strictly (CRLF, code, continuation lines)."""
    replies, lines = [], []
    while data:
        i = data.find(CRLF)
        if i < 0:
            raise AssertionError("reply line without CRLF: %r" % data)
        line, data = data[:i + 2], data[i + 2:]
        if len(line) < 5 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-"):
            raise AssertionError("malformed reply line %r" % line)
        lines.append(line)
        if line[3:4] == b" ":
            replies.append(Reply(lines))
            lines = []
    if lines:
        raise AssertionError("unfinished multi-line reply %r" % lines)
    return replies


def enhanced_of(reply):
    m = re.match(r"^\d{3}[ -](\d\.\d{1,3}\.\d{1,3})(?: |$)", reply.last)
    return m.group(1) if m else None


def split_session(port, prologue, n_prologue, parts, pause=PAUSE):
    """Greeting, the prologue (pipelined, n_prologue replies), then each of
    parts as its own segment with a pause between. Once mxd has said its
    closing reply (421/521) nothing more is sent. Returns (prologue
    replies, every reply after them up to mxd's close)."""
    with RawSmtp(port, timeout=15) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        g = c.connect_greeting()
        assert g.code == 220, g
        c.send(prologue)
        pro = [c.reply() for _ in range(n_prologue)]
        data = c.buf
        eof = False
        for i, part in enumerate(parts):
            if i:
                ready, _, _ = select.select([c.sock], [], [], pause)
                if ready:
                    try:
                        chunk = c.sock.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    if not chunk:
                        eof = True
                        break
                    data += chunk
                    if CLOSING_RE.search(data):
                        break
            try:
                c.sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        c.sock.settimeout(15 * SLOW)
        while not eof:
            try:
                chunk = c.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return pro, parse_replies(data)


CLOSING_RE = re.compile(rb"(?:^|\n)(?:421|521) ")


def boundaries(wire):
    """[wire] split in two at every byte boundary, and once a byte per part."""
    cases = [[wire[:k], wire[k:]] for k in range(1, len(wire))]
    cases.append([wire[i:i + 1] for i in range(len(wire))])
    return cases


def run_parallel(fn, jobs):
    """fn(job) for every job on WORKERS threads; a failure names its job."""
    results = [None] * len(jobs)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        futs = {ex.submit(fn, j): i for i, j in enumerate(jobs)}
        for f in concurrent.futures.as_completed(futs):
            i = futs[f]
            try:
                results[i] = f.result()
            except Exception as e:  # noqa: BLE001 — re-raised with context
                raise AssertionError("job %r failed: %s: %s" % (jobs[i], type(e).__name__, e))
    return results


def undot(content):
    """RFC 5321 4.5.2 on <CRLF>-delimited lines: a leading dot is removed."""
    return CRLF.join(l[1:] if l.startswith(b".") else l for l in content.split(CRLF))


class SmugglingTest(MxdTestCase):

    def codes(self, replies):
        return [(r.code, enhanced_of(r)) for r in replies]

    def assert_nothing_spooled_from(self, d, sender):
        for line in spool_list_lines(d.spool):
            self.assertNotIn(sender, line)

    def deliver_clean(self, d):
        """mxd still takes a normal message after the abuse."""
        content = b"Subject: clean\r\n\r\nafter the abuse\r\n"
        with RawSmtp(d.port) as c:
            c.connect_greeting()
            c.ehlo()
            r, qid = c.send_message("good@example.org", ["user@example.com"], content)
            self.assertEnhanced(r, 250, "2.0.0")
            self.assertEnhanced(c.cmd("QUIT"), 221, "2.0.0")
        return qid, content

    # -- DATA ----------------------------------------------------------------
    def test_data_smuggling_every_split(self):
        """Each smuggling-shaped end, split at every byte boundary: 521
        5.5.2 and close; each bare CR/LF inside content: 550 5.6.0, the
        session goes on (QUIT 221). Nothing is ever spooled."""
        d = self.mxd(extra=["max-connections-per-client 200"])
        jobs = []
        for term in SMUGGLING_ENDS:
            wire = HEAD + term + SMUGGLED + b"QUIT\r\n"
            jobs += [("521", term, parts) for parts in boundaries(wire)]
        for bad in TAINTED_CONTENT:
            wire = HEAD + bad + b"more\r\n" + SMUGGLED + b"QUIT\r\n"
            jobs += [("550", bad, parts) for parts in boundaries(wire)]

        def one(job):
            kind, term, parts = job
            pro, replies = split_session(d.port, PROLOGUE_DATA, 4, parts)
            assert [r.code for r in pro] == [250, 250, 250, 354], pro
            got = self.codes(replies)
            if kind == "521":
                assert got == [(521, "5.5.2")], (term, [len(p) for p in parts], replies)
                assert "SMTP smuggling refused" in replies[0].text, replies
            else:
                # The smuggled transaction is content of the refused message.
                assert got == [(550, "5.6.0"), (221, "2.0.0")], (term, [len(p) for p in parts],
                                                                 replies)
            return kind

        kinds = run_parallel(one, jobs)
        n521, n550 = kinds.count("521"), kinds.count("550")
        # Every refusal is logged once, with the session's client.
        wait_for_log(d, r'reject client=127\.0\.0\.1 command=DATA reply="521 5\.5\.2 ', n521)
        wait_for_log(d, r'reject client=127\.0\.0\.1 command=DATA reply="550 5\.6\.0 ', n550)
        self.assertEqual(len([l for l in log_lines(d) if ' reply="521 5.5.2 ' in l]), n521)
        self.assertEqual(len([l for l in log_lines(d) if ' reply="550 5.6.0 ' in l]), n550)
        self.assertFalse([l for l in log_lines(d) if " accepted id=" in l])
        self.assertEqual(d.spool_ids(), [], "a smuggled or tainted message was spooled")
        qid, content = self.deliver_clean(d)
        self.stop_ok(d)
        self.assertEqual(d.spool_ids(), [qid])
        self.assertEqual(strip_received(d.spool_cat(qid)), content)

    def test_data_bare_newlines_accept_every_split(self):
        """`bare-newlines accept`: the look-alike ends are content, only
        <CRLF>.<CRLF> ends DATA; one message per session holding the
        would-be smuggled text (a dot after CRLF is transparency, as RFC
        5321 4.5.2 says), and the sender is never the smuggled one."""
        d = self.mxd(extra=["bare-newlines accept", "max-connections-per-client 200"])
        jobs = []
        for term in SMUGGLING_ENDS:
            body = HEAD + term + SMUGGLED[:-3] + CRLF  # without the smuggled ".\r\n"
            wire = body + b".\r\nQUIT\r\n"
            # Every boundary around the look-alike end (where the scanner
            # decides), and a byte per segment over the whole message.
            lo = len(HEAD) - 2
            hi = len(HEAD) + len(term) + 3
            splits = [[wire[:k], wire[k:]] for k in range(lo, hi)]
            splits.append([wire[i:i + 1] for i in range(len(wire))])
            jobs += [(term, body, parts) for parts in splits]

        def one(job):
            term, body, parts = job
            pro, replies = split_session(d.port, PROLOGUE_DATA, 4, parts)
            assert [r.code for r in pro] == [250, 250, 250, 354], pro
            got = self.codes(replies)
            assert got == [(250, "2.0.0"), (221, "2.0.0")], (term, replies)
            qid = queued_id(replies[0].text)
            assert qid, replies
            return qid, undot(body)

        results = run_parallel(one, jobs)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(q for q, _ in results))
        self.assert_nothing_spooled_from(d, "evil@attacker.example")
        exported = spool_export(d.spool, self.scratch_dir("maildir"))
        by_id = {}
        for name, raw in exported.items():
            for qid, _ in results:
                if qid in name.lower():
                    by_id[qid] = raw
        for qid, expected in results:
            raw = by_id.get(qid) or d.spool_cat(qid)
            got = strip_received(raw)
            self.assertTrue(got == expected or lf_to_crlf_equal(expected, got),
                            "%s: %r != %r" % (qid, got, expected))

    # -- BDAT ----------------------------------------------------------------
    BDAT_CASES = [
        # (name, chunks, expected: "refused" | "kept")
        ("LF ends one chunk, dot starts the next",
         [HEAD + b"\n", b".\r\n" + SMUGGLED], "refused"),
        ("CR ends one chunk, dot starts the next",
         [HEAD + b"\r", b".\r\n" + SMUGGLED], "refused"),
        ("CRLF dot ends one chunk, LF starts the next",
         [HEAD + b"\r\n.", b"\n" + SMUGGLED], "refused"),
        ("CRLF dot CR ends one chunk, smuggled text starts the next",
         [HEAD + b"\r\n.\r", SMUGGLED], "refused"),
        ("CR alone in a middle chunk",
         [HEAD + b"\r\n", b"\r", b".\r\n" + SMUGGLED], "refused"),
        ("message ends on a CR",
         [HEAD + b"\r\n" + SMUGGLED[:-2] + b"\r"], "refused"),
        ("CR in one chunk, then an empty LAST chunk",
         [HEAD + b"\r", b""], "refused"),
        # Controls: CRLF split across chunks, and a CRLF.CRLF inside BDAT
        # content, are legitimate data (BDAT has no dot transparency).
        ("CR and LF in different chunks",
         [HEAD + b"\r", b"\n.\r\n" + SMUGGLED], "kept"),
        ("CRLF.CRLF inside a chunk",
         [HEAD + b"\r\n.\r\n" + SMUGGLED], "kept"),
    ]

    def bdat_wire(self, chunks):
        w = b""
        for i, ch in enumerate(chunks):
            last = i == len(chunks) - 1
            w += b"BDAT %d%s\r\n" % (len(ch), b" LAST" if last else b"") + ch
        return w + b"QUIT\r\n"

    def _bdat_every_split(self, accept):
        extra = ["max-connections-per-client 200"] + (["bare-newlines accept"] if accept else [])
        d = self.mxd(extra=extra)
        jobs = []
        for name, chunks, verdict in self.BDAT_CASES:
            if accept:
                verdict = "kept"
            wire = self.bdat_wire(chunks)
            jobs += [(name, chunks, verdict, parts) for parts in boundaries(wire)]

        def one(job):
            name, chunks, verdict, parts = job
            pro, replies = split_session(d.port, PROLOGUE_BDAT, 3, parts)
            assert [r.code for r in pro] == [250, 250, 250], pro
            got = self.codes(replies)
            n = len(chunks)
            if verdict == "refused":
                want = [(250, "2.0.0")] * (n - 1) + [(550, "5.6.0"), (221, "2.0.0")]
                assert got == want, (name, [len(p) for p in parts], replies)
                return None
            want = [(250, "2.0.0")] * n + [(221, "2.0.0")]
            assert got == want, (name, [len(p) for p in parts], replies)
            for r, ch in zip(replies[:n - 1], chunks):
                assert r.last.endswith("%d octets received" % len(ch)), r
            qid = queued_id(replies[n - 1].text)
            assert qid, replies
            return qid, b"".join(chunks)

        results = run_parallel(one, jobs)
        kept = [r for r in results if r]
        refused = len(results) - len(kept)
        if refused:
            wait_for_log(d, r'command=BDAT reply="550 5\.6\.0 ', refused)
        self.stop_ok(d)
        self.assertEqual(sorted(d.spool_ids()), sorted(q for q, _ in kept))
        if not accept:
            self.assertEqual(len([l for l in log_lines(d) if 'reply="550 5.6.0 ' in l]), refused)
        self.assert_nothing_spooled_from(d, "evil@attacker.example")
        # Kept content is exactly what the chunks held, bare CRs and all.
        exported = spool_export(d.spool, self.scratch_dir("maildir"))
        names = {q: n for n in exported for q, _ in kept if q in n.lower()}
        for qid, expected in kept:
            got = strip_received(exported[names[qid]]) if qid in names else None
            if got != expected:
                got = strip_received(d.spool_cat(qid))
            self.assertEqual(got, expected, qid)
        return refused, len(kept)

    def test_bdat_chunk_boundaries_every_split(self):
        """Bare CR/LF across BDAT chunk boundaries: 550 5.6.0 at BDAT LAST,
        nothing spooled; legitimate CRLF across a boundary is kept. Each
        pipelined stream split at every byte boundary."""
        refused, kept = self._bdat_every_split(accept=False)
        self.assertGreater(refused, 0)
        self.assertGreater(kept, 0)

    def test_bdat_bare_newlines_accept_every_split(self):
        """`bare-newlines accept`: every chunk is kept as is."""
        refused, kept = self._bdat_every_split(accept=True)
        self.assertEqual(refused, 0)


if __name__ == "__main__":
    unittest.main()
