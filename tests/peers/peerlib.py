"""Shared setup for the aiosmtpd peers in this folder (imported by name: each
script runs from here, so this folder is on sys.path)."""

import asyncio
import os
import signal
import socket
import threading


class Capture:
    """Stores the content of every message (envelope.original_content: the
    raw bytes after dot-unstuffing, terminator excluded) as OUTDIR/msg-N.eml,
    N counting from 0, each written under a temporary name and renamed."""

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


def stop_signal():
    """A future that completes on SIGTERM/SIGINT or when stdin reaches end of
    file (the test, our parent, closed it or died)."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def finish():
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)

    # A thread, not add_reader: epoll refuses regular files such as /dev/null.
    def watch_stdin():
        while os.read(0, 4096):
            pass
        loop.call_soon_threadsafe(finish)

    threading.Thread(target=watch_stdin, daemon=True).start()
    return stop


async def serve(stop, factory, **kwargs):
    """Serves `factory` on 127.0.0.1 on a port the kernel picks, prints
    `ready PORT` once it accepts connections, and runs until `stop` completes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.get_running_loop().create_server(factory, sock=sock, **kwargs)
    print(f"ready {sock.getsockname()[1]}", flush=True)
    await stop
    server.close()
    await server.wait_closed()
