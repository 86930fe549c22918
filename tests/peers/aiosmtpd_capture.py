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
import sys

import peerlib
from aiosmtpd.smtp import SMTP


async def main(outdir):
    stop = peerlib.stop_signal()

    handler = peerlib.Capture(outdir)
    await peerlib.serve(
        stop,
        lambda: SMTP(handler, hostname="aiosmtpd.test", enable_SMTPUTF8=True),
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: aiosmtpd_capture.py OUTDIR")
    asyncio.run(main(sys.argv[1]))
