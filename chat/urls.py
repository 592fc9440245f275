from __future__ import annotations

from django.urls import path

from chat.views import issue_ticket, upload_audio

urlpatterns = [
    path("sessions/<uuid:session_id>/audio", upload_audio, name="upload-audio"),
    path("tickets", issue_ticket, name="issue-ticket"),
]
