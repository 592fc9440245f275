"""What operators see of a turn when it ends: one log line with its session, its turn and each
stage's time, and the turn's metrics (echoproject.metrics).

A turn is named by the id of the user's message it answers, the same in the web process (text
and realtime turns, and the upload it accepts) and in the workers (the upload chain's steps
and the render). Stage times are the milliseconds recorded on the messages' `timings`:

- `queue_ms`: the upload's first step waiting for a speech worker;
- `asr_ms`: recognition (of the uploaded file; of a realtime utterance, from its end to the
  final text);
- `llm_first_ms`: the LLM's first token, from the start of the reply;
- `tts_first_chunk_ms`: the TTS provider's first audio, from the request for the reply's first
  sentence (its own time, so a slow LLM does not make TTS look slow);
- `tts_first_ms`: the reply's first audio, from the start of the reply (what the user waits);
- `llm_ms`, `tts_ms`: all the time spent waiting for each provider;
- `*_step_ms`: a whole step of the upload chain.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from echoproject import metrics

log = logging.getLogger("chat.turns")

INTERRUPTED = "INTERRUPTED"  # the error code an interrupted reply keeps
# timings key -> the stage of echo_stage_seconds
STAGES = {
    "queue_ms": "queue_wait",
    "asr_ms": "asr",
    "llm_first_ms": "llm_first_token",
    "tts_first_chunk_ms": "tts_first_audio",
}


def outcome_of(error_code: str) -> str:
    if error_code == INTERRUPTED:
        return "interrupted"
    return "error" if error_code else "ok"


def record_turn(
    session_id: Any,
    turn_id: Any,
    kind: str,
    timings: dict[str, Any],
    error_code: str = "",
) -> None:
    """The turn is over: count it, observe its stages, log its line."""
    outcome = outcome_of(error_code)
    stages = {
        key: round(float(value), 1)
        for key, value in timings.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    for key, stage in STAGES.items():
        if key in stages:
            metrics.stage(stage, kind, stages[key] / 1000)
    metrics.turn(kind, outcome)
    error = f" error={error_code}" if error_code and outcome == "error" else ""
    log.info(
        "turn %s %s %s%s %s",
        turn_id,
        kind,
        outcome,
        error,
        " ".join(f"{key}={value:g}" for key, value in stages.items()),
        extra={
            "session_id": str(session_id),
            "turn_id": str(turn_id),
            "kind": kind,
            "outcome": outcome,
            "error_code": error_code if outcome == "error" else "",
            "stages": stages,
        },
    )


# The recognition time of a realtime utterance, from the listener to the consumer: both run in
# the task that delivers the final text, so a context variable carries it without widening
# the listener's callback.
_asr_ms: ContextVar[float | None] = ContextVar("realtime_asr_ms", default=None)


def note_asr_ms(ms: float) -> None:
    _asr_ms.set(ms)


def take_asr_ms() -> float | None:
    ms = _asr_ms.get()
    _asr_ms.set(None)
    return ms
