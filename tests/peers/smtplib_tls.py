#!/usr/bin/env python3
"""Sends one message with Python's smtplib over TLS, for smtptap's TLS tests.

Usage: smtplib_tls.py starttls|implicit HOST PORT CAFILE FILE

`starttls`: smtplib.SMTP, EHLO, starttls(context=...), EHLO;
`implicit`: smtplib.SMTP_SSL(context=...), EHLO. The context is
ssl.create_default_context(cafile=CAFILE): the server's certificate must
chain to CAFILE and carry HOST (name or IP address). Sends the exact bytes of
FILE from a@x.test to b@y.test, then QUIT. On success prints one JSON object:
{"version", "cipher", "subject", "san", "ehlo_before", "ehlo_after"} (the
EHLO keywords the server offered before and after TLS; ehlo_before is null
for implicit TLS). Any failure raises, so the exit status is non-zero.
"""

import json
import smtplib
import ssl
import sys


def keywords(smtp):
    return sorted(k.upper() for k in smtp.esmtp_features)


def main():
    if len(sys.argv) != 6 or sys.argv[1] not in ("starttls", "implicit"):
        sys.exit("usage: smtplib_tls.py starttls|implicit HOST PORT CAFILE FILE")
    mode, host, port, cafile, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    with open(path, "rb") as f:
        message = f.read()
    ctx = ssl.create_default_context(cafile=cafile)
    before = None
    if mode == "starttls":
        smtp = smtplib.SMTP(host, port, local_hostname="smtplib.test", timeout=30)
        smtp.ehlo()
        before = keywords(smtp)
        smtp.starttls(context=ctx)
    else:
        smtp = smtplib.SMTP_SSL(host, port, local_hostname="smtplib.test", timeout=30, context=ctx)
    with smtp:
        smtp.ehlo()
        after = keywords(smtp)
        cert = smtp.sock.getpeercert()
        refused = smtp.sendmail("a@x.test", ["b@y.test"], message)
        if refused:
            sys.exit(f"recipients refused: {refused}")
        result = {
            "version": smtp.sock.version(),
            "cipher": smtp.sock.cipher()[0],
            "subject": [list(pair) for rdn in cert["subject"] for pair in rdn],
            "san": [list(pair) for pair in cert.get("subjectAltName", ())],
            "ehlo_before": before,
            "ehlo_after": after,
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
