"""Who may open a session: short-lived signed tickets, and the site's access rule.

A ticket is what `POST /api/tickets` hands the page: Django's signing over what it allows (the
avatar, the mode, an expiry and the user when one is logged in), so that any web process with
the same SECRET_KEY checks it without a database or Redis round trip. `CHAT_ACCESS` decides who
gets one: anyone (`anonymous`, the zero-config default), users logged in through Django's auth
(`login`), or holders of one of the static `CHAT_TOKENS` (`token`, what `CHAT_REQUIRE_TOKEN`
meant before, still accepted directly on the WebSocket).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.core import signing

SALT = "echoproject.chat.ticket"
ANONYMOUS, LOGIN, TOKEN = "anonymous", "login", "token"


class TicketRefused(Exception):
    """A ticket (or the request for one) that does not admit: the message says why."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class Ticket:
    avatar: str
    mode: str
    expires: int  # unix seconds
    user_id: int | None = None
    nonce: str = ""  # names the ticket (the session records it; the upload endpoint takes it)


def issue(avatar: str, mode: str, user_id: int | None = None) -> tuple[str, Ticket]:
    """A signed ticket for `avatar` in `mode`, valid CHAT_TICKET_TTL_S from now."""
    ticket = Ticket(
        avatar=avatar,
        mode=mode,
        expires=int(time.time()) + settings.CHAT_TICKET_TTL_S,
        user_id=user_id,
        nonce=secrets.token_urlsafe(9),
    )
    payload = {
        "a": avatar,
        "m": mode,
        "e": ticket.expires,
        "n": ticket.nonce,
        "x": settings.CHAT_ACCESS,  # a ticket of another access rule (the site changed it) fails
    }
    if user_id is not None:
        payload["u"] = user_id
    return signing.dumps(payload, salt=SALT, compress=False), ticket


def check(value: str, *, avatar: str | None = None, mode: str | None = None) -> Ticket:
    """The ticket `value` if it is ours, unexpired and (when given) for this avatar and mode."""
    try:
        payload = signing.loads(value, salt=SALT)
    except signing.BadSignature:
        raise TicketRefused("the ticket is not valid") from None
    try:
        ticket = Ticket(
            avatar=str(payload["a"]),
            mode=str(payload["m"]),
            expires=int(payload["e"]),
            user_id=int(payload["u"]) if payload.get("u") is not None else None,
            nonce=str(payload.get("n", "")),
        )
    except (KeyError, TypeError, ValueError):
        raise TicketRefused("the ticket is not valid") from None
    if payload.get("x") != settings.CHAT_ACCESS:
        raise TicketRefused("the ticket is not valid here, get a new one", retryable=True)
    if ticket.expires <= time.time():
        raise TicketRefused("the ticket has expired, get a new one", retryable=True)
    if avatar is not None and avatar != ticket.avatar:
        raise TicketRefused("the ticket is for another avatar")
    if mode is not None and mode != ticket.mode:
        raise TicketRefused("the ticket is for another mode")
    return ticket


def token_ok(token: str) -> bool:
    """One of the static CHAT_TOKENS (compared in constant time)."""
    return bool(token) and any(
        hmac.compare_digest(token.encode(), t.encode()) for t in settings.CHAT_TOKENS
    )


def ticket_required() -> bool:
    """Whether a WebSocket must bring a ticket (or, with `token`, a static token). Anonymous
    sites keep accepting clients that connect without one, as the protocol always did."""
    return settings.CHAT_ACCESS != ANONYMOUS
