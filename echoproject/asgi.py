"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")

from echoproject.env import exit_on_settings_error  # noqa: E402

exit_on_settings_error()

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from echoproject.routing import websocket_urlpatterns  # noqa: E402


class BrowserOriginValidator(OriginValidator):
    """Refuses browsers on other sites (an Origin outside ALLOWED_HOSTS); clients that are not
    browsers (apps, devices, scripts) send no Origin and are let through to authentication."""

    def valid_origin(self, parsed_origin: object) -> bool:
        return parsed_origin is None or self.validate_origin(parsed_origin)


allowed_origins = ["*"] if settings.DEBUG and not settings.ALLOWED_HOSTS else settings.ALLOWED_HOSTS

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(URLRouter(websocket_urlpatterns), allowed_origins),
    }
)
