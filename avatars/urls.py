from __future__ import annotations

from django.urls import path

from avatars.views import avatar_list

urlpatterns = [path("avatars", avatar_list, name="avatar-list")]
