"""The service spread over hosts (docs/deploy.md), measured: what the edge, TLS and the TURN
relay cost a user, and how long a turn waits when its GPU host dies.

Brings up a fresh `make cluster` (scripts/cluster.py; root) and takes it down at the end, then:

1. WebRTC turns, end of the user's speech → first reply audio heard: a client in `echo-client`
   (behind NAT, reaching only the edge; media relayed by coturn, signalling through nginx with
   TLS) against a client on `echo-web1` itself talking to its web process directly (host
   host candidates only, no TURN, no edge), one session each, the same utterance; the edge
   path runs first, then the direct one.
   End of speech = when the played utterance's last speech-like 20 ms ends; first reply audio =
   the first received frame over -35 dBFS after it.
2. Upload turns, POST → `tts_complete`, through the edge (HTTPS) against direct (HTTP to the
   web process), in the same sessions.
3. A GPU host killed mid-render (SIGKILL of all its processes): time from the kill to the
   client's `video_ready`, rendered by the other GPU host.

Same run, same machine: ratios are between paths measured a minute apart.

    sudo .venv/bin/python bench/cluster.py --turns 8 --kills 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from tests.cluster.conftest import SCRIPT, Cluster  # noqa: E402


def median(values: list[float | None]) -> float:
    real = [v for v in values if v is not None]
    return statistics.median(real) if real else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=8, help="turns of each kind per path")
    parser.add_argument("--kills", type=int, default=3, help="GPU hosts killed mid-render")
    args = parser.parse_args()

    result = subprocess.run([*SCRIPT, "up"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"make cluster failed:\n{result.stderr[-3000:]}")
    info = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    cluster = Cluster(info)
    # the near client runs on echo-web1 itself and talks to its web process directly
    near_cluster = Cluster(
        {**info, "client_netns": "echo-web1", "edge_url": "http://avatar.echo.test:8000/"}
    )
    try:
        edge = cluster.client("measure", "--turns", str(args.turns))
        via_edge = edge.phase("measured", timeout=60 + 40 * args.turns)
        edge.close()
        near = near_cluster.client("measure", "--turns", str(args.turns), "--direct", "10.77.0.11")
        direct = near.phase("measured", timeout=60 + 40 * args.turns)
        near.close()

        kills = []
        for _ in range(args.kills):
            run = cluster.client("long-render", "--avatars", "aria")
            rendering = run.phase("rendering", timeout=240)
            victim = cluster.rendering_on(rendering["task_id"])
            host = victim.removeprefix("echo-")
            killed_at = time.monotonic()
            cluster.script("kill", host)
            run.go()
            done = run.phase("done", timeout=300)
            survivor = cluster.rendered_on(rendering["task_id"], timeout=30)
            kills.append(
                (victim, survivor, done["video_ready_at"] - killed_at, done["video_ready"])
            )
            run.phase("ended", timeout=60)
            run.close()
            cluster.restart(host, "render", ready=" ready.")
    finally:
        for run in cluster.runs + near_cluster.runs:
            run.close()
        subprocess.run([*SCRIPT, "down"], cwd=ROOT, capture_output=True)

    t_edge, t_direct = median(via_edge["webrtc_ms"]), median(direct["webrtc_ms"])
    u_edge, u_direct = median(via_edge["upload_ms"]), median(direct["upload_ms"])
    print(f"WebRTC end of speech → first reply audio, {args.turns} turns per path (median ms):")
    print(
        f"  through edge + TURN   {t_edge:7.0f}   pair {via_edge['pair']}   all {via_edge['webrtc_ms']}"
    )
    print(
        f"  direct on web host    {t_direct:7.0f}   pair {direct['pair']}   all {direct['webrtc_ms']}"
    )
    print(f"  ratio edge/direct     {t_edge / t_direct:7.2f}")
    print("Upload turn, POST → tts_complete (median ms):")
    print(f"  through edge (HTTPS)  {u_edge:7.0f}   all {via_edge['upload_ms']}")
    print(f"  direct (HTTP)         {u_direct:7.0f}   all {direct['upload_ms']}")
    print(f"  ratio edge/direct     {u_edge / u_direct:7.2f}")
    print("GPU host killed mid-render → video_ready on the other:")
    for victim, survivor, seconds, count in kills:
        print(f"  {victim} killed, rendered on {survivor}: {seconds:5.1f} s ({count} video_ready)")
    if kills:
        print(f"  median {statistics.median(k[2] for k in kills):.1f} s")


if __name__ == "__main__":
    main()
