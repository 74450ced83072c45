"""Refuse to expose an unauthenticated server: with auth off every request acts as admin (delete, train,
logs), which is fine on a workstation's loopback but not on an address other machines can reach.

`check_exposure` runs in the CLI before anything heavy is loaded, so the refusal is immediate and says how
to fix it: add a user and turn logins on, or say `--insecure-no-auth` explicitly.
"""

from __future__ import annotations

import ipaddress
import socket

from annotation_server.settings import Settings


class InsecureBindError(Exception):
    """The server would listen beyond loopback with logins off; the message says what to do."""


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback one (127.0.0.0/8, ::1, `localhost`).

    A name is resolved; a name that does not resolve counts as not loopback (the safe answer).
    """
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_exposure(settings: Settings) -> None:
    """Raise InsecureBindError when `settings` would serve a non-loopback address without logins."""
    if settings.auth_enabled or settings.insecure_no_auth or is_loopback(settings.host):
        return
    data_dir = settings.data_dir
    raise InsecureBindError(
        f"refusing to listen on {settings.host} with logins off: anyone who can reach this address would act as "
        "admin (read every study, delete labels, train models).\n"
        "  To require logins, add a user and turn auth on:\n"
        f"    annotate-server users add NAME --role admin --data-dir {data_dir}\n"
        "    ANNOTATE_AUTH_ENABLED=true annotate-server --host "
        f"{settings.host} --data-dir {data_dir} ...\n"
        "  To listen only on this machine, leave --host out (127.0.0.1).\n"
        "  To expose it without logins anyway (a closed lab network), add --insecure-no-auth."
    )
