#!/usr/bin/env python3
"""An aiosmtpd upstream for smtptap's interop tests.

Usage: aiosmtpd_capture.py OUTDIR

Listens on 127.0.0.1 on a port the kernel picks, prints `ready PORT` on
stdout once it accepts connections, and stores the content of every message
it receives (envelope.original_content: the raw bytes after dot-unstuffing,
terminator excluded) as OUTDIR/msg-N.eml, N counting from 0. Each file is
written under a temporary name and renamed, so a file that exists is complete.
Runs until stdin reaches end of file or SIGTERM/SIGINT arrives.
"""

import asyncio
import os
import signal
import socket
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


async def main(outdir):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def finish():
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)

    # Stop when the test (our parent) closes stdin or dies. A thread, not
    # add_reader: epoll refuses regular files such as /dev/null.
    def watch_stdin():
        while os.read(0, 4096):
            pass
        loop.call_soon_threadsafe(finish)

    threading.Thread(target=watch_stdin, daemon=True).start()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    handler = Capture(outdir)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.test", enable_SMTPUTF8=True),
        sock=sock,
    )
    port = sock.getsockname()[1]
    print(f"ready {port}", flush=True)
    await stop
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: aiosmtpd_capture.py OUTDIR")
    asyncio.run(main(sys.argv[1]))
