#!/usr/bin/env python3
"""Authenticates with Python's smtplib `login()`, for smtptap's AUTH tests.

Usage: smtplib_auth.py HOST PORT MECH USER PASSWORD

Connects, says EHLO smtplib.test and calls login(USER, PASSWORD), then QUIT.
MECH is PLAIN, LOGIN or CRAM-MD5: only that mechanism is left in the
server's offer, so login() uses it (PLAIN and LOGIN with smtplib's initial
response); or `auto`: login() chooses as it always does, trying CRAM-MD5,
PLAIN and LOGIN in turn (those the server offers) until one succeeds.

smtplib encodes SASL data as ASCII, so PASSWORD must be ASCII.

Prints one JSON object {"code", "text"}: the server's final reply to the
(last) AUTH. Exits 0 when it was accepted, 3 when login() raised
SMTPAuthenticationError; anything else raises (another non-zero status).
"""

import json
import smtplib
import sys


def main():
    if len(sys.argv) != 6 or sys.argv[3] not in ("PLAIN", "LOGIN", "CRAM-MD5", "auto"):
        sys.exit("usage: smtplib_auth.py HOST PORT PLAIN|LOGIN|CRAM-MD5|auto USER PASSWORD")
    host, port, mech, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    with smtplib.SMTP(host, port, local_hostname="smtplib.test", timeout=30) as smtp:
        smtp.ehlo()
        if mech != "auto":
            if mech not in smtp.esmtp_features.get("auth", "").split():
                sys.exit(f"the server does not offer AUTH {mech}")
            smtp.esmtp_features["auth"] = mech
        try:
            code, text = smtp.login(user, password)
            status = 0
        except smtplib.SMTPAuthenticationError as e:
            code, text = e.smtp_code, e.smtp_error
            status = 3
        print(json.dumps({"code": code, "text": text.decode("utf-8", "replace")}), flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
