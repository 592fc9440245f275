"""TURN for clients behind NAT: each session's `init` carries the TURN servers with its own
short-lived credentials (coturn's use-auth-secret scheme), never the static secret, and a real
coturn accepts them (and refuses a forged one)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from aioice import stun, turn

from tests.fixtures_sessions import Client, daphne_with, run
from tests.procs import Proc, free_port

SECRET = "cluster-turn-secret-0123456789abcdef"
TURN_URLS = "turn:turn.example:3478?transport=udp,turn:turn.example:3478?transport=tcp"


@pytest.fixture(scope="module")
def turn_web(django_db_setup: None, log_dir: Path) -> Iterator[str]:
    proc, port = daphne_with(
        log_dir, "daphne-turn", TURN_URLS=TURN_URLS, TURN_SECRET=SECRET, TURN_TTL_S="600"
    )
    yield f"ws://127.0.0.1:{port}/ws/chat/"
    proc.stop()


def init_frames(url: str, count: int) -> list[tuple[dict, str]]:
    async def one() -> tuple[dict, str]:
        async with websockets.connect(url, max_size=None) as ws:
            raw = await asyncio.wait_for(ws.recv(), 20)
            await Client(ws).send(type="stop_session")
            return json.loads(raw), raw

    async def body() -> list[tuple[dict, str]]:
        return [await one() for _ in range(count)]

    return run(body(), timeout=60)


@pytest.mark.usefixtures("live_avatars")
def test_each_session_gets_its_own_expiring_turn_credentials_and_never_the_secret(
    turn_web: str,
) -> None:
    frames = init_frames(turn_web, 2)
    usernames = []
    for init, raw in frames:
        assert SECRET not in raw
        servers = init["server_info"]["ice_servers"]
        assert len(servers) == 1
        server = servers[0]
        assert server["urls"] == TURN_URLS.split(",")
        expiry, session_id = server["username"].split(":", 1)
        assert session_id == init["session_id"]
        # valid for TURN_TTL_S from now (the minute's slack is for a slow machine, not timing)
        assert time.time() + 540 < int(expiry) <= time.time() + 600
        expected = hmac.new(SECRET.encode(), server["username"].encode(), hashlib.sha1).digest()
        assert server["credential"] == base64.b64encode(expected).decode()
        usernames.append(server["username"])
    assert usernames[0] != usernames[1]


@pytest.fixture
def coturn(log_dir: Path, tmp_path: Path) -> Iterator[int]:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (WITH_CLUSTER=1 bash scripts/setup.sh)")
    port = free_port()
    conf = tmp_path / "turnserver.conf"
    conf.write_text(
        f"listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n"
        "min-port=49160\nmax-port=49999\nrealm=turn.example\nuse-auth-secret\n"
        f"static-auth-secret={SECRET}\nfingerprint\nno-cli\nno-tls\nno-dtls\n"
        f"simple-log\nlog-file={tmp_path}/turnserver.log\npidfile={tmp_path}/turnserver.pid\n"
    )
    proc = Proc("coturn", ["turnserver", "-c", str(conf)], {"PATH": "/usr/bin:/bin"}, log_dir)
    proc.wait_until(lambda: (tmp_path / "turnserver.pid").exists(), what="listening")
    yield port
    proc.stop()


def allocate(port: int, username: str, password: str) -> tuple[str, int]:
    async def body() -> tuple[str, int]:
        transport, _ = await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, ("127.0.0.1", port), username, password
        )
        try:
            return transport.get_extra_info("sockname")
        finally:
            transport.close()

    return run(body(), timeout=20)


@pytest.mark.usefixtures("live_avatars")
def test_coturn_relays_with_the_session_credentials_and_refuses_a_forged_one(
    turn_web: str, coturn: int
) -> None:
    from chat.ice import turn_credential

    init, _ = init_frames(turn_web, 1)[0]
    server = init["server_info"]["ice_servers"][0]
    relayed = allocate(coturn, server["username"], server["credential"])
    assert relayed[0] == "127.0.0.1" and 49160 <= relayed[1] <= 49999
    # another session's name with this credential, or a credential from a guessed secret: refused
    forged = server["username"].split(":")[0] + ":another-session"
    with pytest.raises(stun.TransactionFailed):
        allocate(coturn, forged, server["credential"])
    with pytest.raises(stun.TransactionFailed):
        allocate(coturn, server["username"], turn_credential("guess", server["username"]))
