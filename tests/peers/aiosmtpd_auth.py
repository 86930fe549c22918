#!/usr/bin/env python3
"""An aiosmtpd upstream that checks passwords, for smtptap's AUTH tests.

Usage: aiosmtpd_auth.py none|starttls OUTDIR CREDENTIALS [CERT KEY]

CREDENTIALS is a file of `user<TAB>password` lines (UTF-8); AUTH succeeds
(`235`) only for a listed user with exactly its password, and fails with
`535 5.7.8` otherwise. Mechanisms offered: PLAIN and LOGIN (aiosmtpd's own,
with an authenticator) and CRAM-MD5 (implemented here with hmac/md5),
advertised as `AUTH CRAM-MD5 LOGIN PLAIN` (aiosmtpd sorts them). AUTH is
allowed without TLS. MODE `starttls` also offers STARTTLS with CERT/KEY.

Listens on 127.0.0.1 on a port the kernel picks and prints `ready PORT` on
stdout once it accepts connections. Appends one line per AUTH attempt to
OUTDIR/auth.log, flushed at once: `tls=0|1 MECHANISM USER ok|fail` (never
the password). Stores the content of each message it receives as
OUTDIR/msg-N.eml (N from 0), written under a temporary name and renamed.
Runs until stdin reaches end of file or SIGTERM/SIGINT arrives.
"""

import asyncio
import hmac
import os
import secrets
import ssl
import sys
import time

import peerlib
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, auth_mechanism


class Handler(peerlib.Capture):
    def __init__(self, outdir, credentials):
        super().__init__(outdir)
        self.credentials = credentials

    def log_auth(self, server, mechanism, user, ok):
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        shown = user.decode("utf-8", "backslashreplace")
        with open(os.path.join(self.outdir, "auth.log"), "a", encoding="utf-8") as f:
            f.write(f"tls={int(tls)} {mechanism} {shown} {'ok' if ok else 'fail'}\n")

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        """PLAIN and LOGIN: aiosmtpd decoded the SASL data into auth_data."""
        expected = self.credentials.get(auth_data.login)
        ok = expected is not None and hmac.compare_digest(expected, auth_data.password)
        self.log_auth(server, mechanism, auth_data.login, ok)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(auth_data.login, b""))

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server, args):
        """RFC 2195: challenge, then `user hex(HMAC-MD5(password, challenge))`."""
        if len(args) != 1:
            await server.push("501 5.5.2 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@aiosmtpd.test>".encode()
        response = await server.challenge_auth(challenge)
        if response is MISSING:  # `*` or bad base64: aiosmtpd has replied already
            return AuthResult(success=False, handled=True)
        user, _, digest = response.rpartition(b" ")
        expected = self.credentials.get(user)
        ok = expected is not None and hmac.compare_digest(
            hmac.new(expected, challenge, "md5").hexdigest().encode(), digest
        )
        self.log_auth(server, "CRAM-MD5", user, ok)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user, b""))


def read_credentials(path):
    credentials = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line:
                user, password = line.split(b"\t", 1)
                credentials[user] = password
    return credentials


async def main(mode, outdir, credentials, cert, key):
    stop = peerlib.stop_signal()

    tls_context = None
    if mode == "starttls":
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(cert, key)
    open(os.path.join(outdir, "auth.log"), "w").close()

    handler = Handler(outdir, credentials)
    await peerlib.serve(
        stop,
        lambda: SMTP(
            handler,
            hostname="aiosmtpd.test",
            enable_SMTPUTF8=True,
            tls_context=tls_context,
            require_starttls=False,
            auth_require_tls=False,
            authenticator=handler.authenticator,
        ),
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (3, 5) or args[0] not in ("none", "starttls"):
        sys.exit("usage: aiosmtpd_auth.py none|starttls OUTDIR CREDENTIALS [CERT KEY]")
    if args[0] == "starttls" and len(args) != 5:
        sys.exit("starttls needs CERT and KEY")
    mode, outdir, creds = args[0], args[1], read_credentials(args[2])
    cert, key = (args[3], args[4]) if len(args) == 5 else (None, None)
    asyncio.run(main(mode, outdir, creds, cert, key))
