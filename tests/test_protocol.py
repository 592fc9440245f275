"""Message decoding and the consumer's logic in-process (Channels' WebsocketCommunicator);
hostile frames from hypothesis never break the decoder."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.protocol import Err, ProtocolError, RateLimiter, parse
from echoproject.asgi import application
from tests.fixtures_sessions import run

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["ping", "text_message", "interrupt", "stop_session", "nope"])
        | st.text(max_size=10)
    },
    optional={"text": json_values, "timestamp": json_values, "id": json_values},
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), messages.map(json.dumps)))
def test_any_frame_is_decoded_or_refused_with_a_protocol_code(frame: str) -> None:
    try:
        kind, message, ref = parse(frame)
    except ProtocolError as exc:
        assert exc.code in {Err.BAD_MESSAGE, Err.UNKNOWN_TYPE, Err.TOO_LARGE}
        return
    assert isinstance(kind, str) and isinstance(message, dict)
    assert ref is None or (isinstance(ref, str) and len(ref) <= 64)


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(json.dumps({"type": "ping", "timestamp": True}))
    assert refused.value.code == Err.BAD_MESSAGE


def test_rate_limiter_allows_a_burst_then_refills() -> None:
    limiter = RateLimiter(limit=5, window=0.2)
    assert [limiter.allow() for _ in range(6)] == [True] * 5 + [False]
    assert limiter.should_warn() and not limiter.should_warn()
    import time

    time.sleep(0.05)
    assert limiter.allow()


@pytest.mark.django_db(transaction=True)
def test_consumer_in_process_text_turn_and_stop(live_avatars) -> None:
    async def body() -> list[dict]:
        communicator = WebsocketCommunicator(application, "/ws/chat/?mode=voice&avatar=aria")
        connected, _ = await communicator.connect()
        assert connected
        events = [await communicator.receive_json_from()]
        await communicator.send_json_to({"type": "text_message", "text": "Hello Aria", "id": "m1"})
        while events[-1]["type"] != "tts_complete":
            events.append(await communicator.receive_json_from(timeout=30))
        await communicator.send_json_to({"type": "stop_session"})
        while events[-1]["type"] != "session_ended":
            events.append(await communicator.receive_json_from(timeout=10))
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 1000}
        return events

    events = run(body())
    types = [e["type"] for e in events]
    assert types[0] == "init" and "text_response" in types and types[-1] == "session_ended"
    assert events[-1]["files_deleted"] == 1  # the reply's audio
    assert all(
        e.get("ref") == "m1"
        for e in events
        if e["type"] in {"text_delta", "text_response", "tts_start"}
    )
