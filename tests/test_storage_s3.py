"""Session files in S3-compatible storage (moto's S3 server on loopback): presigned URLs that
play, and every file of the session deleted when it ends, also one written late."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import websockets
from moto.server import ThreadedMotoServer

from tests.audio import speak
from tests.fixtures_sessions import Client, run, separate_stack
from tests.procs import free_port

pytestmark = pytest.mark.usefixtures("live_avatars")
BUCKET = "echo-sessions"


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, object]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def s3_stack(django_db_setup: None, log_dir: Path, s3: tuple[str, object]) -> Iterator[str]:
    endpoint, _ = s3
    with separate_stack(
        log_dir,
        "s3",
        S3_BUCKET=BUCKET,
        S3_ENDPOINT_URL=endpoint,
        S3_REGION="us-east-1",
        S3_ACCESS_KEY_ID="test",
        S3_SECRET_ACCESS_KEY="test",
        S3_ADDRESSING_STYLE="path",
    ) as url:
        yield url


def keys(client: object, session_id: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"sessions/{session_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_voice_turn_on_s3_and_session_end_deletes_the_files(
    s3_stack: str, s3: tuple[str, object]
) -> None:
    _, client = s3

    async def body() -> tuple[Client, list[str], bytes]:
        async with websockets.connect(s3_stack, max_size=None) as ws:
            session = Client(ws)
            init = await session.recv()
            session.session_id = init["session_id"]
            await ws.send(speak("what is the weather like in london").read_bytes())
            complete = await session.until("tts_complete", timeout=60, fail_on_error=True)
            audio = await asyncio.to_thread(fetch, complete["audio_url"])
            stored = keys(client, init["session_id"])
            await session.send(type="stop_session")
            await session.until("session_ended")
            return session, stored, audio

    session, stored, audio = run(body(), timeout=120)
    complete = session.of("tts_complete")[0]
    assert (
        "X-Amz-Signature=" in complete["audio_url"]
        and "X-Amz-Expires=3600" in complete["audio_url"]
        and "response-content-disposition=inline" in complete["audio_url"]
    )
    assert audio[:4] == b"RIFF"
    assert sorted(k.rsplit("/", 1)[1].split("-")[0] for k in stored) == ["reply", "user"]
    assert session.of("session_ended")[0]["files_deleted"] == 2
    assert keys(client, session.session_id) == []


def test_a_file_written_after_the_session_ended_is_deleted(
    s3_stack: str, s3: tuple[str, object]
) -> None:
    _, client = s3

    async def body() -> str:
        async with websockets.connect(s3_stack, max_size=None) as ws:
            session = Client(ws)
            init = await session.recv()
            await ws.send(speak("tell me about the weather in london today please").read_bytes())
            await session.until("asr_result", timeout=60)
            await session.send(type="stop_session")  # the chain is still running
            await session.until("session_ended")
            return init["session_id"]

    session_id = run(body(), timeout=120)
    time.sleep(6)  # by now any late step has finished (its output deleted) or been revoked
    assert keys(client, session_id) == []
