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
import signal
import socket
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP


class Capture:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        n = self.count
        self.count += 1
        final = os.path.join(self.outdir, f"msg-{n}.eml")
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            f.write(envelope.original_content)
        os.rename(tmp, final)
        return "250 2.0.0 Ok: stored as msg-%d" % n


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
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def finish():
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)

    # Stop when the test (our parent) closes stdin or dies.
    def watch_stdin():
        while os.read(0, 4096):
            pass
        loop.call_soon_threadsafe(finish)

    threading.Thread(target=watch_stdin, daemon=True).start()

    tls_context = server_context(cert, key) if mode == "starttls" else None
    ssl_context = server_context(cert, key) if mode == "implicit" else None
    log_path = os.path.join(outdir, "commands.log")
    open(log_path, "w").close()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    handler = Capture(outdir)
    server = await loop.create_server(
        lambda: LoggingSMTP(
            handler,
            hostname="aiosmtpd.test",
            enable_SMTPUTF8=True,
            tls_context=tls_context,
            require_starttls=False,
            log_path=log_path,
        ),
        sock=sock,
        ssl=ssl_context,
    )
    port = sock.getsockname()[1]
    print(f"ready {port}", flush=True)
    await stop
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 4) or args[0] not in ("none", "starttls", "implicit"):
        sys.exit("usage: aiosmtpd_tls.py none|starttls|implicit OUTDIR [CERT KEY]")
    if args[0] != "none" and len(args) != 4:
        sys.exit("starttls and implicit need CERT and KEY")
    mode, outdir = args[0], args[1]
    cert, key = (args[2], args[3]) if len(args) == 4 else (None, None)
    asyncio.run(main(mode, outdir, cert, key))
