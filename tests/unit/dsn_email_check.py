#!/usr/bin/env python3
"""dsn_email_check: mxd's DSNs as Python's email package reads them.

    dsn_email_check.py PATH/TO/test_dsn

Runs test_dsn with a temporary directory, which writes sample DSNs there
(tests/unit/test_dsn.c, write_samples), then parses each with the email
package's strict default policy and checks what a bounce processor relies
on: a multipart/report with report-type=delivery-status, its three parts in
order, the per-message and per-recipient fields of the message/delivery-status
part, the returned headers or message, and the wire form (CRLF, lines of at
most 998 octets). Exits non-zero on the first difference."""
import email
import email.policy
import email.utils
import subprocess
import sys
import tempfile
from pathlib import Path

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}", file=sys.stderr)


def wire_ok(name, raw):
    lines = raw.split(b"\r\n")
    check(lines[-1] == b"", f"{name}: ends with CRLF")
    for i, line in enumerate(lines):
        check(b"\r" not in line and b"\n" not in line, f"{name}: line {i + 1} has a bare CR or LF")
        check(len(line) <= 998, f"{name}: line {i + 1} is {len(line)} octets")


def parse(path):
    raw = path.read_bytes()
    wire_ok(path.name, raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    check(not msg.defects, f"{path.name}: defects {msg.defects}")
    return msg


def report_blocks(msg):
    """The message/delivery-status part's blocks: per-message, then one
    per recipient (the email package parses them as header blocks)."""
    parts = list(msg.iter_parts())
    check(len(parts) == 3, f"three parts, got {len(parts)}")
    check(parts[0].get_content_type() == "text/plain", "part 1 is text/plain")
    check(parts[1].get_content_type() == "message/delivery-status", "part 2 is message/delivery-status")
    blocks = parts[1].get_payload()
    check(isinstance(blocks, list) and len(blocks) >= 2, "delivery-status has per-message and per-recipient blocks")
    return parts, blocks


def common(name, msg, subject):
    check(msg.get_content_type() == "multipart/report", f"{name}: multipart/report")
    check(msg.get_param("report-type") == "delivery-status", f"{name}: report-type=delivery-status")
    check(msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.test", f"{name}: From MAILER-DAEMON")
    check(msg["To"].addresses[0].addr_spec == "alice@x.test", f"{name}: To the sender")
    check(str(msg["Subject"]) == subject, f"{name}: Subject {msg['Subject']!r}")
    check(msg["Auto-Submitted"] == "auto-replied", f"{name}: Auto-Submitted")
    check(str(msg["Message-ID"]).endswith(".dsn@mx.test>"), f"{name}: Message-ID")
    check(email.utils.parsedate_to_datetime(str(msg["Date"])).timestamp() == 1796003600, f"{name}: Date")


def per_message(name, block, envid):
    check(block["Reporting-MTA"] == "dns; mx.test", f"{name}: Reporting-MTA")
    check(block["Original-Envelope-Id"] == envid, f"{name}: Original-Envelope-Id {block['Original-Envelope-Id']!r}")
    arrival = email.utils.parsedate_to_datetime(block["Arrival-Date"])
    check(arrival.timestamp() == 1796000000, f"{name}: Arrival-Date")


def unfolded(value):
    return " ".join(str(value).split())


def check_failed(path, full):
    name = path.name
    msg = parse(path)
    common(name, msg, "Undelivered Mail Returned to Sender")
    parts, blocks = report_blocks(msg)
    per_message(name, blocks[0], "QQ=1")
    check(len(blocks) == 3, f"{name}: two recipients")
    bob, carol = blocks[1], blocks[2]
    check(bob["Original-Recipient"] == "rfc822;bob+extra=1@y.test", f"{name}: Original-Recipient")
    check(bob["Final-Recipient"] == "rfc822; bob@y.test", f"{name}: Final-Recipient")
    check(bob["Action"] == "failed", f"{name}: Action")
    check(bob["Status"] == "5.1.1", f"{name}: Status")
    check(bob["Remote-MTA"] == "dns; mx2.y.test", f"{name}: Remote-MTA")
    check(unfolded(bob["Diagnostic-Code"]) ==
          "smtp; 550 5.1.1 <bob@y.test>: Recipient address rejected: User unknown",
          f"{name}: Diagnostic-Code {bob['Diagnostic-Code']!r}")
    check(email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp() == 1796003540,
          f"{name}: Last-Attempt-Date")
    check(carol["Final-Recipient"] == "rfc822; carol@y.test", f"{name}: second Final-Recipient")
    check(carol["Status"] == "5.3.4" and carol["Remote-MTA"] is None, f"{name}: local failure fields")
    check(unfolded(carol["Diagnostic-Code"]) == "smtp; 552 5.3.4 message too big", f"{name}: local Diagnostic-Code")
    human = parts[0].get_content()
    check("<bob@y.test>: failed" in human and "<carol@y.test>: failed" in human, f"{name}: human-readable part")
    if full:
        check(parts[2].get_content_type() == "message/rfc822", f"{name}: message/rfc822")
        inner = parts[2].get_payload()[0]
        check(inner["Subject"] == "lunch?" and inner["Message-ID"] == "<orig-1@x.test>", f"{name}: inner headers")
        check(inner.get_payload().startswith("Shall we have lunch?"), f"{name}: inner body")
    else:
        check(parts[2].get_content_type() == "text/rfc822-headers", f"{name}: text/rfc822-headers")
        headers = parts[2].get_content()
        check("Subject: lunch?" in headers and "Shall we" not in headers, f"{name}: headers only")


def check_delayed(path):
    name = path.name
    msg = parse(path)
    common(name, msg, "Delayed Mail (still being retried)")
    parts, blocks = report_blocks(msg)
    check(blocks[0]["Original-Envelope-Id"] is None, f"{name}: no Original-Envelope-Id without ENVID")
    rcpt = blocks[1]
    check(rcpt["Action"] == "delayed" and rcpt["Status"] == "4.4.1", f"{name}: Action/Status")
    check(email.utils.parsedate_to_datetime(rcpt["Will-Retry-Until"]).timestamp() == 1796000000 + 5 * 86400,
          f"{name}: Will-Retry-Until")
    check(unfolded(rcpt["Diagnostic-Code"]) == "smtp; 451 4.4.1 connection refused", f"{name}: Diagnostic-Code")


def check_long(path):
    name = path.name
    msg = parse(path)
    parts, blocks = report_blocks(msg)
    diag = unfolded(blocks[1]["Diagnostic-Code"])
    want = "".join(chr(ord("a") + i % 7) if i % 7 != 6 else " " for i in range(3000))
    check(diag == "smtp; 550 5.1.1 " + " ".join(want.split()), f"{name}: long Diagnostic-Code survives folding")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.argv[1], d], check=True)
        out = Path(d)
        samples = [
            (check_failed, "failed_headers.eml", {"full": False}),
            (check_failed, "failed_full.eml", {"full": True}),
            (check_delayed, "delayed.eml", {}),
            (check_long, "long_diagnostic.eml", {}),
        ]
        for fn, name, kw in samples:
            try:
                fn(out / name, **kw)
            except Exception as e:  # a part missing or of the wrong kind
                check(False, f"{name}: {type(e).__name__}: {e}")
    print(f"dsn_email_check: {'ok' if failures == 0 else f'{failures} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
