#!/usr/bin/env python3
"""An aiosmtpd upstream with TLS, for smtptap's TLS tests.

Usage: aiosmtpd_tls.py MODE OUTDIR [CERT KEY]

MODE is `none` (plaintext; STARTTLS is answered `454 TLS not available`),
`starttls` (STARTTLS offered with CERT/KEY) or `implicit` (TLS from the
first byte with CERT/KEY).

Listens on 127.0.0.1 on a port the kernel picks and prints `ready PORT` on
stdout once it accepts connections. Stores the content of every message it
receives (envelope.original_content: the raw bytes after dot-unstuffing,
terminator excluded) as OUTDIR/msg-N.eml, N counting from 0, each written
under a temporary name and renamed. Appends every command it receives to
OUTDIR/commands.log as one line `tls=0|1 LINE`, where tls=1 means the
command arrived inside TLS, flushed at once. Runs until stdin reaches end of
file or SIGTERM/SIGINT arrives.
"""

import asyncio
import os
import ssl
import sys

import peerlib
from aiosmtpd.smtp import SMTP


class LoggingSMTP(SMTP):
    """Logs each command with whether it came inside TLS, then runs it."""

    def __init__(self, *args, log_path, **kwargs):
        super().__init__(*args, **kwargs)
        self._log_path = log_path
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._logged(name, method)

    def _logged(self, name, method):
        async def run(arg):
            transport = self.transport
            tls = transport is not None and transport.get_extra_info("ssl_object") is not None
            line = name if arg is None else f"{name} {arg}"
            with open(self._log_path, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"tls={int(tls)} {line}\n")
            return await method(arg)

        return run


def server_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main(mode, outdir, cert, key):
    stop = peerlib.stop_signal()

    tls_context = server_context(cert, key) if mode == "starttls" else None
    ssl_context = server_context(cert, key) if mode == "implicit" else None
    log_path = os.path.join(outdir, "commands.log")
    open(log_path, "w").close()

    handler = peerlib.Capture(outdir)
    await peerlib.serve(
        stop,
        lambda: LoggingSMTP(
            handler,
            hostname="aiosmtpd.test",
            enable_SMTPUTF8=True,
            tls_context=tls_context,
            require_starttls=False,
            log_path=log_path,
        ),
        ssl=ssl_context,
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 4) or args[0] not in ("none", "starttls", "implicit"):
        sys.exit("usage: aiosmtpd_tls.py none|starttls|implicit OUTDIR [CERT KEY]")
    if args[0] != "none" and len(args) != 4:
        sys.exit("starttls and implicit need CERT and KEY")
    mode, outdir = args[0], args[1]
    cert, key = (args[2], args[3]) if len(args) == 4 else (None, None)
    asyncio.run(main(mode, outdir, cert, key))
