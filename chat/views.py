"""HTTP endpoints of a session: its ticket, and utterances uploaded instead of frames.

`POST /api/tickets`: a short-lived signed ticket for the WebSocket (chat.access), to whoever
CHAT_ACCESS admits.

`POST /api/sessions/<session_id>/audio`: authenticated by the `session_token` of `init` (header
`Authorization: Bearer <token>`, form field or query parameter `session_token`) or by the
ticket that opened the session while it is valid (`X-Chat-Ticket` header or `ticket` query
parameter); the body is multipart (any file field) or the raw file. Results arrive on the
session's WebSocket as for a binary frame.
"""

from __future__ import annotations

import hmac
import json

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from avatars.models import Avatar
from chat import access, limits
from chat.models import ChatSession
from chat.protocol import MAX_ID_CHARS, Err
from chat.uploads import UploadRefused, accept_upload, check_and_decode

STATUS = {
    Err.TOO_LARGE: 413,
    Err.AUDIO_INVALID: 400,
    Err.STATE: 409,
    Err.AUTH: 401,
    Err.AVATAR_NOT_FOUND: 404,
    Err.RATE_LIMITED: 429,
}


def _refuse(code: Err, message: str, status: int | None = None, **extra: object) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": str(code), "message": message, **extra}},
        status=status or STATUS.get(code, 400),
    )


def _fields(request: HttpRequest) -> dict[str, str]:
    """The request's fields: a JSON object body, a form, or the query string."""
    fields = {k: v for k, v in request.GET.items()}
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        fields.update({k: v for k, v in body.items() if isinstance(v, str)})
    else:
        fields.update({k: v for k, v in request.POST.items()})
    return fields


@csrf_exempt  # it changes nothing; another site's page cannot read the answer (no CORS)
@never_cache
@require_POST
def issue_ticket(request: HttpRequest) -> JsonResponse:
    """A ticket for one session with `avatar` (default: DEFAULT_AVATAR) in `mode` (voice)."""
    try:
        fields = _fields(request)
    except ValueError as exc:
        return _refuse(Err.BAD_MESSAGE, str(exc))
    user_id = request.user.pk if request.user.is_authenticated else None
    if settings.CHAT_ACCESS == access.LOGIN and user_id is None:
        return _refuse(Err.AUTH, "log in to talk")
    if settings.CHAT_ACCESS == access.TOKEN and not access.token_ok(
        _bearer(request) or fields.get("token", "")
    ):
        return _refuse(Err.AUTH, "a valid token is required")
    mode = fields.get("mode") or "voice"
    if mode not in ("voice", "video"):
        return _refuse(Err.MODE_INVALID, "mode must be voice or video")
    slug = fields.get("avatar")
    avatars = Avatar.objects.enabled()
    avatar = avatars.filter(slug=slug).first() if slug else avatars.default()
    if avatar is None:
        return _refuse(Err.AVATAR_NOT_FOUND, "no such avatar")
    value, ticket = access.issue(avatar.slug, mode, user_id)
    return JsonResponse(
        {"ticket": value, "avatar": avatar.slug, "mode": mode, "expires_at": ticket.expires}
    )


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else ""


def _ticket_opened(request: HttpRequest, session: ChatSession) -> bool:
    """The request brings the (still valid) ticket that opened this session."""
    value = request.headers.get("X-Chat-Ticket") or request.GET.get("ticket", "")
    nonce = session.client_info.get("ticket", "")
    if not value or not nonce:
        return False
    try:
        ticket = access.check(value)
    except access.TicketRefused:
        return False
    return hmac.compare_digest(ticket.nonce.encode(), str(nonce).encode())


def _token(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.GET.get("session_token") or request.POST.get("session_token", "")


@csrf_exempt
@require_POST
def upload_audio(request: HttpRequest, session_id: str) -> JsonResponse:
    session = ChatSession.objects.filter(pk=session_id).first()
    if session is None:
        return _refuse(Err.BAD_MESSAGE, "no such session", 404)
    if not (
        hmac.compare_digest(_token(request).encode(), session.token.encode())
        or _ticket_opened(request, session)
    ):
        return _refuse(Err.AUTH, "session_token is missing or wrong")
    if session.is_ended:
        return _refuse(Err.STATE, "the session has ended")
    length = int(request.headers.get("Content-Length") or 0)
    if length > settings.MAX_UPLOAD_BYTES + 64 * 1024:
        return _refuse(Err.TOO_LARGE, f"uploads are limited to {settings.MAX_UPLOAD_BYTES} bytes")
    if request.content_type == "multipart/form-data":
        upload = next(iter(request.FILES.values()), None)
        if upload is None:
            return _refuse(Err.AUDIO_INVALID, "the form has no file")
        data = upload.read(settings.MAX_UPLOAD_BYTES + 1)
    else:
        data = request.body
    ref = request.GET.get("id") or None
    if ref is not None and len(ref) > MAX_ID_CHARS:  # the rule of a text frame's `id`
        return _refuse(Err.BAD_MESSAGE, f"id must be a string of at most {MAX_ID_CHARS} characters")
    try:
        pcm = check_and_decode(data)
        message = accept_upload(session.id, pcm, ref)
    except UploadRefused as exc:
        return _refuse(exc.code, exc.message)
    except limits.Limited as exc:
        response = _refuse(Err.RATE_LIMITED, exc.message, **exc.fields())
        response["Retry-After"] = str(exc.retry_after)
        return response
    return JsonResponse(
        {"message_id": message.id, "task_id": message.turn_task_id, "audio_url": message.audio_url},
        status=202,
    )
