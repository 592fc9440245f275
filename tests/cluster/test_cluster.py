"""The service spread over hosts (docs/deploy.md): network namespaces as machines, users behind
NAT reaching only the edge (nginx with TLS, coturn), no shared disk. Scenario by scenario as in
docs/deploy.md; each scenario leaves the cluster whole again for the next.

Run with `make cluster-test` (root). The users run in echo-client (tests/cluster/client.py);
these tests look at the hosts as an operator would.
"""

from __future__ import annotations

import re
import time
from collections import Counter

from tests.cluster.conftest import Cluster

INTERNAL = re.compile(r"10\.77\.0\.(?!10\b)\d+|127\.0\.0\.1|localhost")


def test_1_and_6_forty_sessions_through_the_edge_on_both_web_hosts(cluster: Cluster) -> None:
    run = cluster.client("spread", "--sessions", "40")
    opened = run.phase("open", timeout=120)["sessions"]
    assert len(opened) == 40

    hosts = Counter(cluster.web_hosts(opened).values())
    assert set(hosts) == {"echo-web1", "echo-web2"}, hosts  # the edge spreads the sessions
    assert min(hosts.values()) >= 10, hosts

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
    assert len(urls) > 40  # the avatar image, 40 replies' audio, video pieces and videos
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
