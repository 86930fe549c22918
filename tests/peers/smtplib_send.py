#!/usr/bin/env python3
"""Sends messages with Python's smtplib, for smtptap's interop tests.

Usage: smtplib_send.py HOST PORT FROM TO FILE...

Sends the exact bytes of each FILE as one message, all in one session
(EHLO, then MAIL/RCPT/DATA per file, then QUIT). smtplib dot-stuffs the
content itself. A message holding 8-bit bytes is sent with BODY=8BITMIME
when the server offers it; non-ASCII addresses are sent with SMTPUTF8. Prints `sent N` when done; any failure raises,
so the exit status is non-zero.
"""

import smtplib
import sys


def main():
    if len(sys.argv) < 6:
        sys.exit("usage: smtplib_send.py HOST PORT FROM TO FILE...")
    host, port, sender, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    messages = []
    for path in sys.argv[5:]:
        with open(path, "rb") as f:
            messages.append(f.read())
    with smtplib.SMTP(host, port, local_hostname="smtplib.test", timeout=30) as smtp:
        smtp.ehlo("smtplib.test")
        for msg in messages:
            options = []
            if not (sender.isascii() and rcpt.isascii()):
                options.append("SMTPUTF8")
            if not msg.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            refused = smtp.sendmail(sender, [rcpt], msg, mail_options=options)
            if refused:
                sys.exit(f"recipients refused: {refused}")
    print(f"sent {len(messages)}", flush=True)


if __name__ == "__main__":
    main()
