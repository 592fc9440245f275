"""`POST /api/sessions/<session_id>/audio`: an utterance uploaded over HTTP instead of a frame.

Authenticated by the `session_token` of `init` (header `Authorization: Bearer <token>`, form
field or query parameter `session_token`); the body is multipart (any file field) or the raw
file. Results arrive on the session's WebSocket as for a binary frame.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from chat.models import ChatSession
from chat.protocol import Err
from chat.uploads import UploadRefused, accept_upload, check_and_decode

STATUS = {Err.TOO_LARGE: 413, Err.AUDIO_INVALID: 400, Err.STATE: 409, Err.AUTH: 401}


def _refuse(code: Err, message: str, status: int | None = None) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": str(code), "message": message}}, status=status or STATUS.get(code, 400)
    )


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
    if not hmac.compare_digest(_token(request).encode(), session.token.encode()):
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
    try:
        pcm = check_and_decode(data)
        message = accept_upload(session.id, pcm, ref)
    except UploadRefused as exc:
        return _refuse(exc.code, exc.message)
    return JsonResponse(
        {"message_id": message.id, "task_id": message.task_id, "audio_url": message.audio_url},
        status=202,
    )
