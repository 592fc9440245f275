from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from avatars.models import Avatar


def absolute(request: HttpRequest, url: str) -> str:
    """A URL the client can use as it is (storage URLs may be site-relative)."""
    return request.build_absolute_uri(url) if url.startswith("/") else url


@require_GET
def avatar_list(request: HttpRequest) -> JsonResponse:
    avatars = []
    for avatar in Avatar.objects.enabled():
        data = avatar.as_dict()
        data["image_url"] = absolute(request, data["image_url"])
        avatars.append(data)
    return JsonResponse({"avatars": avatars})
