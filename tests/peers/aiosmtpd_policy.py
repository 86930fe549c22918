#!/usr/bin/env python3
"""An aiosmtpd upstream with a submission server's policies, for smtptap's
show/check tests: it refuses what real servers refuse.

Usage: aiosmtpd_policy.py [--user USER:PASSWORD] [--size N]
                          [--require-starttls CERT KEY]

- AUTH PLAIN and LOGIN, allowed without TLS, succeed (`235`) only for
  USER with PASSWORD and fail with `535 5.7.8` otherwise.
- RCPT TO a domain other than `local.test` is refused with Postfix's
  `554 5.7.1 <ADDRESS>: Relay access denied` unless the client logged in.
- --size N advertises `SIZE N` and refuses larger messages with `552`.
- --require-starttls offers STARTTLS with CERT/KEY and refuses other
  commands before it with `530 Must issue a STARTTLS command first`.
- No PIPELINING is offered (aiosmtpd never does).

Listens on 127.0.0.1 on a port the kernel picks and prints `ready PORT` on
stdout once it accepts connections. Runs until stdin reaches end of file or
SIGTERM/SIGINT arrives.
"""

import argparse
import asyncio
import ssl

import peerlib
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

LOCAL_DOMAIN = "local.test"


class Handler:
    def __init__(self, user, password):
        self.user = user
        self.password = password

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = (
            self.user is not None
            and auth_data.login == self.user.encode()
            and auth_data.password == self.password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(auth_data.login, b""))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rpartition("@")[2].lower()
        if domain != LOCAL_DOMAIN and not session.authenticated:
            return f"554 5.7.1 <{address}>: Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: queued"


async def main(args):
    stop = peerlib.stop_signal()

    user, password = (args.user.split(":", 1) if args.user else (None, None))
    handler = Handler(user, password)
    tls_context = None
    if args.require_starttls:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(*args.require_starttls)
    kwargs = {}
    if args.size:
        kwargs["data_size_limit"] = args.size

    await peerlib.serve(
        stop,
        lambda: SMTP(
            handler,
            hostname="policy.test",
            tls_context=tls_context,
            require_starttls=tls_context is not None,
            auth_require_tls=False,
            authenticator=handler.authenticator,
            **kwargs,
        ),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", metavar="USER:PASSWORD")
    parser.add_argument("--size", type=int)
    parser.add_argument("--require-starttls", nargs=2, metavar=("CERT", "KEY"))
    asyncio.run(main(parser.parse_args()))
