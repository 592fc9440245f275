"""ICE servers of a session: the configured STUN/TURN list plus short-lived TURN credentials.

A client behind NAT (or a corporate firewall) reaches the server's aiortc peer only through a
TURN relay, and a TURN server open to anyone is an open relay. coturn's REST-API scheme
(`use-auth-secret`) lets the web processes mint credentials without talking to coturn: the
username is "<unix expiry>:<session id>", the password base64(HMAC-SHA1(secret, username)),
which coturn recomputes from the same `static-auth-secret`. The secret itself never leaves the
servers; a leaked credential expires after TURN_TTL_S and names the session it was given to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from django.conf import settings


def turn_credential(secret: str, username: str) -> str:
    """The password coturn expects for `username` under `static-auth-secret=secret`."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def session_ice_servers(session_id: str, now: float | None = None) -> list[dict[str, Any]]:
    """ICE_SERVERS, plus the TURN_URLS with credentials for this session valid TURN_TTL_S."""
    servers = [dict(server) for server in settings.ICE_SERVERS]
    if settings.TURN_URLS and settings.TURN_SECRET:
        expiry = int(now if now is not None else time.time()) + settings.TURN_TTL_S
        username = f"{expiry}:{session_id}"
        servers.append(
            {
                "urls": list(settings.TURN_URLS),
                "username": username,
                "credential": turn_credential(settings.TURN_SECRET, username),
            }
        )
    return servers
