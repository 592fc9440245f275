"""HTTP routes."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LoginView, LogoutView
from django.urls import include, path, re_path

from echoproject.health import healthz
from echoproject.media import serve_media
from echoproject.metrics import metrics_view
from echoproject.views import index

urlpatterns = [
    path("", index, name="index"),
    path(settings.ADMIN_URL, admin.site.urls),
    # the login of CHAT_ACCESS=login for any user of Django's auth (the admin's need is_staff)
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/", include("avatars.urls")),
    path("api/", include("chat.urls")),
]

if settings.SERVE_MEDIA and settings.STORAGES["default"]["BACKEND"].endswith("FileSystemStorage"):
    # The embedded set-up serves its own media; at scale put a CDN or S3 in front instead.
    urlpatterns.append(re_path(r"^media/(?P<path>.*)$", serve_media))
