"""Uploads are decoded in a process of their own, so the web process's event loop never waits
on the decoder, and a decoder that dies does not take uploads down with it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from chat import uploads
from chat.audio import TARGET_RATE
from tests.audio import speak
from tests.procs import nice_of

UTTERANCE = "what is the weather like in london today"


def _decoder_pids() -> list[int]:
    pool = uploads._decoder_pool()
    return list(pool._processes or {})  # the pool's own record of its processes


def test_upload_is_decoded_by_another_process() -> None:
    pcm = uploads.check_and_decode(speak(UTTERANCE).read_bytes())
    assert len(pcm) > TARGET_RATE  # over half a second of 16 kHz PCM16
    pids = _decoder_pids()
    assert pids and os.getpid() not in pids


def test_a_killed_decoder_is_replaced_and_the_next_upload_is_decoded() -> None:
    wav = speak(UTTERANCE).read_bytes()
    uploads.check_and_decode(wav)
    for pid in _decoder_pids():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in _decoder_pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uploads.check_and_decode(wav)  # a new decoder took over
    assert len(uploads.check_and_decode(wav)) > TARGET_RATE


def test_undecodable_upload_is_refused_with_the_reason() -> None:
    with pytest.raises(uploads.UploadRefused) as refused:
        uploads.check_and_decode(b"RIFF" + b"\x00" * 100)
    assert refused.value.code == "ERR_AUDIO_INVALID"
    assert "decod" in refused.value.message


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie until the pool reaps it
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_decoder_yields_the_cpu_to_the_web_process() -> None:
    """The decoding process runs at the workers' lower priority (WORKER_NICE), so that a
    decoding never takes a core from the event loop serving the sessions."""
    own = os.nice(0)  # this test process stands for the web process
    uploads.check_and_decode(speak(UTTERANCE).read_bytes())
    pids = _decoder_pids()
    assert pids
    assert all(nice_of(pid) == min(19, own + 10) for pid in pids)
    assert os.nice(0) == own  # the web process keeps its own priority
