from __future__ import annotations

from django.urls import path

from chat.views import upload_audio

urlpatterns = [path("sessions/<uuid:session_id>/audio", upload_audio, name="upload-audio")]
