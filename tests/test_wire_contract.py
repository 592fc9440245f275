"""The wire contract in chat/protocol.py, docs/protocol.md and the web client agree.

A server event or error code that one of them lacks is a client that cannot handle it or a
document that does not promise it; these tests fail on the first such gap.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chat import protocol
from chat.protocol import EVENTS, FIELDS, Err

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text()
APP_JS = (ROOT / "static" / "client" / "app.js").read_text()
I18N_JS = (ROOT / "static" / "client" / "i18n.js").read_text()


def _table_types(heading: str) -> set[str]:
    """The `type` column of the table under `heading` in docs/protocol.md."""
    section = DOC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)`", section, flags=re.M))


def test_every_server_event_is_documented_and_nothing_else() -> None:
    assert _table_types("Server → client") == set(EVENTS)


def test_every_client_message_is_documented_and_nothing_else() -> None:
    assert _table_types("Client → server and states") == set(FIELDS)


def test_the_web_client_handles_every_server_event() -> None:
    block = APP_JS.split("const handlers = {", 1)[1].split("};", 1)[0]
    handled = set(re.findall(r"^\s+(\w+):", block, flags=re.M))
    assert set(EVENTS) - handled == set()


def test_every_error_code_is_documented() -> None:
    documented = set(re.findall(r"ERR_[A-Z_]+", DOC))
    assert {code.value for code in Err} - documented == set()
    assert documented - {code.value for code in Err} == set()


def test_the_web_client_words_every_error_code_in_each_language() -> None:
    languages = re.split(r"^  [\w-]+: \{", I18N_JS, flags=re.M)[1:]
    assert len(languages) >= 2
    for words in languages:
        known = set(re.findall(r"^\s+(ERR_[A-Z_]+):", words, flags=re.M))
        assert {code.value for code in Err} - known == set()


def test_ref_is_present_exactly_when_the_frame_had_an_id() -> None:
    assert protocol.text_delta("hi", 7, "a1")["ref"] == "a1"
    assert "ref" not in protocol.text_delta("hi", 7, None)
    assert protocol.asr_result("hi", "upload-7", 7, "")["ref"] == ""
    # error always carries ref, null without one
    assert protocol.error(Err.STATE, "no", ref=None)["ref"] is None


def test_an_unknown_event_or_error_code_fails_on_the_server() -> None:
    with pytest.raises(ValueError):
        protocol.event("video_done", None)
    with pytest.raises(ValueError):
        protocol.error("ERR_NOPE", "no")
    assert protocol.error("ERR_BUSY", "busy")["code"] == "ERR_BUSY"
