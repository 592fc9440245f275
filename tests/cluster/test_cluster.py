"""The service spread over hosts (docs/deploy.md): network namespaces as machines, users behind
NAT reaching only the edge (nginx with TLS, coturn), no shared disk. Scenario by scenario as in
docs/deploy.md; each scenario leaves the cluster whole again for the next.

Run with `make cluster-test` (root). The users run in echo-client (tests/cluster/client.py);
these tests look at the hosts as an operator would.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

from tests.cluster.conftest import Cluster

NAT_ADDRESS = "10.77.0.1"  # the client's router, as the edge sees it
INTERNAL = re.compile(r"10\.77\.0\.(?!10\b)\d+|127\.0\.0\.1|localhost")


def test_1_and_6_forty_sessions_through_the_edge_on_both_web_hosts(cluster: Cluster) -> None:
    run = cluster.client("spread", "--sessions", "40")
    opened = run.phase("open", timeout=120)["sessions"]
    assert len(opened) == 40

    hosts = Counter(cluster.web_hosts(opened).values())
    assert set(hosts) == {"echo-web1", "echo-web2"}, hosts  # the edge spreads the sessions
    assert min(hosts.values()) >= 10, hosts
    # the web hosts see each client's own address (here: the NAT router's), taken from the
    # edge's X-Forwarded-For, never the edge's: limits count per client, not all in one bucket
    ids = ",".join(f"'{s}'" for s in opened)
    seen = cluster.sql(
        f"select distinct client_info->>'ip' from chat_chatsession where id in ({ids})"
    )
    assert seen == [[NAT_ADDRESS]], seen
    counted = json.loads(cluster.manage("echo-data", "limits", "--json"))
    sessions = {r["subject"]: r["used"] for r in counted if r["limit"] == "sessions"}
    assert sessions == {f"ip:{NAT_ADDRESS}": 40}, counted

    report = run.phase("turns", timeout=480)
    turns = report["turns"]
    failed = [t for t in turns if t["kind"] == "failed"]
    assert not failed, failed
    assert not report["errors"], report["errors"]
    kinds = Counter(t["kind"] for t in turns)
    assert kinds == {"text": 32, "upload-voice": 4, "upload-video": 2, "webrtc": 2}, kinds
    for turn in turns:
        if turn["kind"] in ("upload-voice", "webrtc"):
            assert "weather" in turn["heard"].split(), turn
        if turn["kind"] == "upload-video":
            assert turn["video_ready"] == 1 and turn["segments"] >= 1, turn
        if turn["kind"] == "webrtc":
            # the client reaches nothing but the edge: media went through the TURN relay
            assert turn["pair"] is not None and "relay" in turn["pair"], turn
            assert turn["reply_rms"] > 300, turn  # the spoken reply was heard

    # 6: every media URL a client got works from echo-client, under the public origin only
    urls = report["urls"]
    assert len(urls) > 40  # the avatar image, 40 replies' audio, video segments and videos
    for url in urls:
        assert url["edge"] and url["url"].startswith("https://"), url["url"]
        assert not INTERNAL.search(url["url"]), url["url"]
        assert url["status"] == 200 and url["bytes"] > 0, url
    # ... and the sessions' files are in the bucket, none on any host's disk
    stored = cluster.s3_keys()
    assert {k.split("/")[1] for k in stored} >= set(opened[:2]), "video sessions' files"
    assert cluster.media_files() == []

    run.go()
    ended = run.phase("ended", timeout=120)["files_deleted"]
    assert all(isinstance(n, int) for n in ended), ended
    assert sum(ended) >= len(stored)  # every file of theirs (a late write is deleted on arrival)
    deadline = time.monotonic() + 20
    while any(k.split("/")[1] in opened for k in cluster.s3_keys()):
        assert time.monotonic() < deadline, "files of ended sessions left in the bucket"
        time.sleep(1)
    assert cluster.media_files() == []


def test_2_video_turns_render_on_both_gpu_hosts_and_follow_a_warm_avatar(
    cluster: Cluster,
) -> None:
    # Two video turns at once (the speech worker runs two chains at a time): while one GPU host
    # renders the first, the second must go to the other host. Whether the two renders really
    # overlap depends on the machine's speed, so an attempt where they did not does not count.
    lin_hosts = set()
    for _ in range(3):
        run = cluster.client("video", "--avatars", "aria", "lin")
        done = run.phase("done", timeout=300)
        assert not done["errors"], done["errors"]
        assert [t["video_ready"] for t in done["turns"]] == [1, 1]
        run.phase("ended", timeout=60)
        tasks = {t["avatar"]: t["task_id"] for t in done["turns"]}
        hosts = {a: cluster.rendered_on(task) for a, task in tasks.items()}
        lin_hosts.add(hosts["lin"])
        spans = [cluster.render_span(task) for task in tasks.values()]
        if spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]:  # rendering at once
            assert set(hosts.values()) == {"echo-gpu1", "echo-gpu2"}, hosts
            break
    else:
        raise AssertionError("two video turns sent at once never rendered at the same time")

    # both idle now: lin's next turn goes to a host holding lin warm (the hosts that rendered
    # it, and those that prepared it when it was saved or when they started)
    warm = cluster.warm_on("lin")
    assert lin_hosts <= warm, (lin_hosts, warm)
    again = cluster.client("video", "--avatars", "lin")
    turn = again.phase("done", timeout=240)["turns"][0]
    assert turn["video_ready"] == 1
    assert cluster.rendered_on(turn["task_id"]) in warm
    again.phase("ended", timeout=60)


def test_3_a_gpu_host_killed_mid_render_the_turn_finishes_on_the_other(
    cluster: Cluster,
) -> None:
    run = cluster.client("long-render", "--avatars", "aria")
    rendering = run.phase("rendering", timeout=240)
    victim = cluster.rendering_on(rendering["task_id"])
    host = victim.removeprefix("echo-")
    killed_at = time.monotonic()
    cluster.script("kill", host)
    deadline = time.monotonic() + 10
    while cluster.pids(host):  # SIGKILLed processes leave as the kernel reaps them
        assert time.monotonic() < deadline, f"processes of {victim} survived SIGKILL"
        time.sleep(0.2)
    run.go()
    done = run.phase("done", timeout=300)
    assert done["video_ready"] == 1, done  # exactly one, though two workers started it
    assert not done["errors"], done["errors"]
    survivor = cluster.rendered_on(rendering["task_id"], timeout=30)
    assert survivor != victim
    print(f"kill of {victim} → video_ready: {done['video_ready_at'] - killed_at:.1f} s")
    ended = run.phase("ended", timeout=60)
    assert ended["files_deleted"] >= 3  # the upload, the reply's audio, the video (+ segments)
    session = rendering["session"]
    deadline = time.monotonic() + 20
    while [k for k in cluster.s3_keys(f"sessions/{session}/")]:
        assert time.monotonic() < deadline, "objects of the ended session left in the bucket"
        time.sleep(1)
    cluster.restart(host, "render", ready=" ready.")


def test_4_a_web_host_killed_its_clients_reconnect_and_its_sessions_are_cleaned_up(
    cluster: Cluster,
) -> None:
    run = cluster.client("web-fail", "--sessions", "8")
    opened = run.phase("open", timeout=240)["sessions"]
    hosts = cluster.web_hosts(opened)
    on_web1 = {s for s, h in hosts.items() if h == "echo-web1"}
    assert on_web1 and len(on_web1) < len(opened), hosts
    stored = {k.split("/")[1] for k in cluster.s3_keys()}
    assert on_web1 <= stored  # their files exist before the kill

    cluster.script("kill", "web1")
    run.go()
    after = run.phase("after", timeout=240)
    assert {lost["session"] for lost in after["lost"]} == on_web1
    assert all(lost["code"] is not None for lost in after["lost"]), after["lost"]
    assert set(after["outcomes"]) == {"ok"}, after["outcomes"]  # everyone carried on
    assert set(cluster.web_hosts(after["reconnected"]).values()) == {"echo-web2"}
    run.phase("ended", timeout=120)

    # cleanup on echo-data ends the dead host's sessions (server_lost) and deletes their files:
    # within WEB_PRESENCE_TTL_S (6) and two CLEANUP_INTERVAL_S (5) of the kill, plus slack
    ids = ",".join(f"'{s}'" for s in on_web1)
    query = (
        f"select count(*) from chat_chatsession where id in ({ids}) and end_reason = 'server_lost'"
    )
    deadline = time.monotonic() + 6 + 2 * 5 + 15
    while cluster.sql(query)[0][0] < len(on_web1):
        assert time.monotonic() < deadline, cluster.sql(
            f"select id, end_reason, ended_at from chat_chatsession where id in ({ids})"
        )
        time.sleep(1)
    assert not on_web1 & {k.split("/")[1] for k in cluster.s3_keys()}
    cluster.restart("web1", "web", port=8000)


def test_5_redis_restarted_under_open_sessions_the_service_recovers(cluster: Cluster) -> None:
    others = {h: cluster.main_pids(h) for h in ("web1", "web2", "speech", "gpu1", "gpu2", "edge")}
    run = cluster.client("redis-restart", "--sessions", "6")
    run.phase("open", timeout=240)
    redis = [
        pid
        for pid in cluster.pids("data")
        if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
    ]
    assert len(redis) == 1
    os.kill(redis[0], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while cluster.tcp_open("data", 6379):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cluster.restart("data", "redis", port=6379)
    run.go()
    after = run.phase("after", timeout=400)
    # each open session either kept working or ended with a documented code; none hung
    for outcome in after["outcomes"]:
        assert outcome == "ok" or re.fullmatch(
            r"failed:(error:ERR_[A-Z_]+|closed \(\d+\))", outcome
        ), after
    assert after["fresh"] == ["ok", "ok"], after  # a new session: a text and an upload turn
    run.phase("ended", timeout=120)
    # no other host's processes were restarted (a Celery pool child replaced after a revoked
    # task of an ended session is the worker's own business, not a restart)
    assert {h: cluster.main_pids(h) for h in others} == others


def test_7_operators_endpoints_answer_only_inside_and_only_with_their_login(
    cluster: Cluster,
) -> None:
    edge = cluster.info["edge_url"].rstrip("/")
    client = cluster.info["client_netns"]
    # a user reaches neither the metrics (the edge does not pass them) nor any inner machine
    assert cluster.status_from(client, f"{edge}/metrics") == 404
    for inner in ("10.77.0.11:8000/metrics", "10.77.0.16:5555/", "10.77.0.13:9808/metrics"):
        assert cluster.status_from(client, f"http://{inner}") == 0, inner
    # inside: the web processes' /metrics wants Prometheus's token, the workers serve theirs on
    # their private address, Flower on echo-data wants its login
    token = {"Authorization": f"Bearer {cluster.secret('METRICS_TOKEN')}"}
    for web in ("10.77.0.11", "10.77.0.12"):
        assert cluster.status_from("echo-data", f"http://{web}:8000/metrics") == 401
        assert cluster.status_from("echo-data", f"http://{web}:8000/metrics", token) == 200
    for worker in ("10.77.0.13", "10.77.0.14", "10.77.0.15"):
        assert cluster.status_from("echo-data", f"http://{worker}:9808/metrics") == 200, worker
    flower = "http://10.77.0.16:5555/"
    login = base64.b64encode(f"operator:{cluster.secret('FLOWER_PASSWORD')}".encode()).decode()
    assert cluster.status_from("echo-edge", flower) == 401
    assert cluster.status_from("echo-edge", flower, {"Authorization": f"Basic {login}"}) == 200
