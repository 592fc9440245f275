"""Export or erase what the service keeps about one person, for privacy requests: the chat
sessions of a user (by id), of a client address, or one session (by id), with their messages,
files still stored, and the counters of the limits."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet

from chat import limits, sessions
from chat.models import ChatSession, EndReason, Message
from chat.storage import list_session_files


class Command(BaseCommand):
    help = (
        "Export (JSON on stdout) or erase the chat history, files and limit counters of a user,"
        " a client address or a session."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["export", "erase"])
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", type=int, help="a user id (Django auth)")
        who.add_argument("--client", help="a client address, e.g. 203.0.113.7")
        who.add_argument("--session", help="a session id (UUID)")
        parser.add_argument(
            "--delete-account", action="store_true", help="with erase --user: the account too"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        found, subject = self._select(options)
        if options["action"] == "export":
            self.stdout.write(json.dumps(export(found, subject), ensure_ascii=False, indent=1))
            return
        erased = erase(found, subject)
        if options["delete_account"] and options["user"] is not None:
            from django.contrib.auth import get_user_model

            get_user_model().objects.filter(pk=options["user"]).delete()
        self.stdout.write(
            f"erased {erased['sessions']} session(s), {erased['messages']} message(s),"
            f" {erased['files']} file(s) and {erased['counters']} limit counter(s)"
        )

    def _select(self, options: dict[str, Any]) -> tuple[QuerySet[ChatSession], str | None]:
        everything = ChatSession.objects.all()
        if options["user"] is not None:
            return everything.filter(user_id=options["user"]), limits.subject(options["user"], None)
        if options["client"]:
            address = options["client"]
            return everything.filter(client_info__ip=address), limits.subject(None, address)
        try:
            session_id = uuid.UUID(options["session"])
        except ValueError:
            raise CommandError(
                f"--session must be a session id (UUID), got {options['session']!r}"
            ) from None
        return everything.filter(pk=session_id), None


def export(found: QuerySet[ChatSession], subject: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"subject": subject, "sessions": []}
    for session in found.select_related("avatar").prefetch_related("messages"):
        result["sessions"].append(
            {
                "id": str(session.id),
                "user_id": session.user_id,
                "avatar": session.avatar.slug if session.avatar else None,
                "mode": session.mode,
                "language": session.language,
                "client_info": session.client_info,
                "started_at": session.started_at.isoformat(),
                "ended_at": session.ended_at.isoformat() if session.ended_at else None,
                "end_reason": session.end_reason,
                "files": list_session_files(session.id),
                "messages": [
                    {
                        "id": m.id,
                        "role": m.role,
                        "text": m.text,
                        "ref": m.ref,
                        "created_at": m.created_at.isoformat(),
                        "audio": m.audio,
                        "video": m.video,
                        "duration_ms": m.duration_ms,
                        "error_code": m.error_code,
                    }
                    for m in session.messages.all()
                ],
            }
        )
    result["limits"] = limits.usage(subject) if subject else []
    return result


def erase(found: QuerySet[ChatSession], subject: str | None) -> dict[str, int]:
    """End the open sessions (their tasks stopped), delete every file and row, forget the
    counters. An open session's client loses its session (its next turn fails)."""
    files = 0
    ids = list(found.values_list("id", flat=True))
    messages = Message.objects.filter(session_id__in=ids).count()
    for session_id in ids:
        files += len(list_session_files(session_id))
        if ChatSession.objects.filter(pk=session_id, ended_at__isnull=True).exists():
            sessions.end_session(session_id, EndReason.STOPPED)
        sessions.delete_session_files(session_id)
    ChatSession.objects.filter(pk__in=ids).delete()
    counters = limits.reset(subject) if subject else 0
    return {"sessions": len(ids), "messages": messages, "files": files, "counters": counters}
