"""`python -m echoproject.flower`: Flower, the Celery dashboard, never open to the network.

Flower shows every task and worker and can revoke tasks and shut workers down, so it must not
listen beyond the machine without a login. This starts it on HOST:FLOWER_PORT with Flower's own
basic auth (FLOWER_BASIC_AUTH, `user:password[,user:password…]`) or OAuth (FLOWER_AUTH and
Flower's FLOWER_AUTH_PROVIDER / FLOWER_OAUTH2_* variables, which Flower reads itself), and
refuses, with one line, to listen on anything but a loopback address with neither, or to take
the address, port or login from its command line instead.
"""

from __future__ import annotations

import ipaddress
import os
import sys


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


# Flower options that would listen elsewhere or change the login than the settings this
# checks (the command line's last --address wins over ours): only through the settings.
SETTLED = {
    "address": "HOST",
    "port": "FLOWER_PORT",
    "unix_socket": "HOST",
    "basic_auth": "FLOWER_BASIC_AUTH",
    "auth": "FLOWER_AUTH",
    "conf": "the environment",  # a configuration file may set any of them
}


def settled_option(argv: list[str]) -> tuple[str, str] | None:
    """The first option of `argv` that only the settings may give, and the setting to use."""
    for arg in argv:
        name = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
        if arg.startswith("--") and name in SETTLED:
            return arg.split("=", 1)[0], SETTLED[name]
    return None


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
    from echoproject.env import exit_on_settings_error, fail

    exit_on_settings_error()
    from django.conf import settings

    settled = settled_option(argv)
    if settled is not None:
        fail(
            f"configuration error: Flower's {settled[0]} is set by {settled[1]}, not on the command line"
        )

    host, port = settings.FLOWER_HOST, settings.FLOWER_PORT
    if not (loopback(host) or settings.FLOWER_BASIC_AUTH or settings.FLOWER_AUTH):
        fail(
            f"configuration error: Flower would listen on {host} without a login: set"
            " FLOWER_BASIC_AUTH (user:password) or FLOWER_AUTH (OAuth), or HOST=127.0.0.1"
        )
    if settings.FLOWER_BASIC_AUTH:  # from the environment, not argv: `ps` shows argv to all
        os.environ["FLOWER_BASIC_AUTH"] = settings.FLOWER_BASIC_AUTH
    if settings.FLOWER_AUTH:
        os.environ["FLOWER_AUTH"] = settings.FLOWER_AUTH
    from celery_app import app

    app.start(["flower", f"--address={host}", f"--port={port}", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
