"""Many sessions on one web process: K connected sessions nobody talks on (CPU per idle
session), then the same K talking turn after turn (CPU per session, the gaps between reply
frames at the clients, the server's late frames, the overhead to first reply audio), and the
largest K that meets the targets."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.realtime.clients import Events, connect, first_loud, gaps_ms, open_session
from bench.realtime.figures import median, p99, summary
from chat.realtime.speaker import SAMPLE_RATE
from harness.peer import ClientPeer
from harness.procs import cpu_s

MIC_RATE = SAMPLE_RATE  # the microphone track's own rate: the utterance is queued unresampled
# The targets (docs/benchmarks.md): p99 gap between consecutive reply frames at the clients,
# speech frames the server sent late, overhead to the first reply audio at p99.
GAP_P99_MS = 60.0
LATE_FRAMES = 0
OVERHEAD_P99_MS = 50.0
STAGES = ("asr_result", "text_delta", "tts_start")
# the web process's own timings (echo_stage_seconds): from the VAD's end of the utterance to
# the final text, from the reply's start to the first LLM token and the first TTS audio
SERVER_STAGES = ("asr", "llm_first_token", "tts_first_audio")


def schedstat(pids: list[int]) -> tuple[float, float]:
    """Seconds the processes' main threads (the web processes' event loops) ran on a CPU and
    waited for one (runnable, but the machine busy with other work), summed."""
    ran = waited = 0
    for pid in pids:
        with open(f"/proc/{pid}/schedstat") as handle:
            fields = handle.read().split()
        ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran / 1e9, waited / 1e9


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def web_pids(pid: int, processes: int, timeout: float = 60.0) -> list[int]:
    """The serving processes of `python -m echoproject.web` (the process itself, or with
    WEB_PROCESSES above 1 its supervisor's children once all have started)."""
    if processes <= 1:
        return [pid]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = [int(c) for c in handle.read().split()]
        if len(children) >= processes:
            return children
        time.sleep(0.2)
    raise RuntimeError("the web processes did not start")


def metric(port: int, name: str, label: str = "") -> float:
    """The sum of a metric's samples on the web process's /metrics (those with `label` in
    their labels, when given)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and label in line
    )


def loop_lag(port: int) -> tuple[float, float, float]:
    """The web processes' loop-lag samples so far: all, those over 20 ms, those over 50 ms."""
    name = "echo_event_loop_lag_seconds"
    count = metric(port, f"{name}_count")
    return (
        count,
        count - metric(port, f"{name}_bucket", 'le="0.02"'),
        count - metric(port, f"{name}_bucket", 'le="0.05"'),
    )


def stage_totals(port: int) -> dict[str, tuple[float, float]]:
    """(seconds, count) of each realtime turn stage the web process timed itself."""
    return {
        stage: (
            metric(port, "echo_stage_seconds_sum", f'stage="{stage}"'),
            metric(port, "echo_stage_seconds_count", f'stage="{stage}"'),
        )
        for stage in SERVER_STAGES
    }


def stage_means(before: dict[str, tuple[float, float]], after: dict[str, Any]) -> dict[str, Any]:
    """Mean ms of each stage between two `stage_totals`."""
    means = {}
    for stage, (total, count) in after.items():
        n = count - before[stage][1]
        means[stage] = round(1000 * (total - before[stage][0]) / n, 1) if n else None
    return means


@dataclass
class Load:
    gaps_ms: list[float] = field(default_factory=list)
    # per measured turn, ms from the end of speech to each event (STAGES) and to the first
    # loud frame ("audio"), to see which stage a queue builds up in
    turns: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def first_audio_ms(self) -> list[float]:
        return [turn["audio"] for turn in self.turns]

    @property
    def stages_ms(self) -> dict[str, list[float]]:
        return {
            kind: values
            for kind in STAGES
            if (values := [turn[kind] for turn in self.turns if kind in turn])
        }


async def open_many(url: str, count: int, **client: Any) -> list[tuple[Events, ClientPeer]]:
    """`count` connected sessions, negotiated five at a time."""
    pairs: list[tuple[Events, ClientPeer]] = []

    async def one() -> None:
        session = await open_session(url)
        peer = ClientPeer(keep_audio=False, **client)
        pairs.append((session, peer))
        await connect(peer, session)

    for start in range(0, count, 5):
        await asyncio.gather(*(one() for _ in range(start, min(count, start + 5))))
    return pairs


async def close_all(pairs: list[tuple[Events, ClientPeer]]) -> None:
    for session, peer in pairs:
        await peer.close()
        await session.close()


async def idle_cpu(pids: list[int], seconds: float) -> float:
    """Cores the web processes used over the next `seconds`."""
    cpu0, t0 = cpu_of(pids), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_of(pids) - cpu0) / (time.monotonic() - t0)


async def idle(
    url: str, pids: list[int], count: int, seconds: float, base: float, **client: Any
) -> float:
    """% of a core per connected session nobody talks on (the empty process's `base` off)."""
    pairs = await open_many(url, count, **client)
    try:
        await asyncio.sleep(2.0)
        used = await idle_cpu(pids, seconds)
    finally:
        await close_all(pairs)
    await asyncio.sleep(2.0)
    return round(100 * (used - base) / count, 2)


async def talker(
    session: Events,
    peer: ClientPeer,
    utterance: np.ndarray,
    stop_at: float,
    load: Load,
) -> None:
    """Turn after turn until stop_at: speak, hear 2 s of the reply, interrupt, pause."""
    try:
        await session.send(type="asr_start", language="en-US")
        await asyncio.sleep(1.0 + 3.0 * random.random())  # the sessions out of step
        turn = 0
        while time.monotonic() < stop_at:
            end = await peer.mic.utter(utterance, MIC_RATE).ended()
            audio_at = await first_loud(peer.levels, end, 20)
            await asyncio.sleep(2.0)
            cut = time.monotonic()
            if turn:  # the first turn warms up
                load.gaps_ms.extend(gaps_ms(peer.levels, audio_at, cut))
                stages = {"audio": (audio_at - end) * 1000}
                for kind in STAGES:
                    if (found := session.find(kind, end)) is not None:
                        stages[kind] = (found[0] - end) * 1000
                load.turns.append(stages)
            await session.send(type="interrupt")
            await asyncio.sleep(1.0)
            turn += 1
    except Exception as exc:  # counted; the others go on
        load.errors.append(f"{type(exc).__name__}: {exc}"[:200])


async def talk(
    url: str, count: int, utterance: np.ndarray, ready: Any, go: Any, **client: Any
) -> tuple[Load, int]:
    """Open `count` sessions, say so (`ready()`), wait for the moment to stop talking
    (`await go()`), talk turn after turn until then; the load seen and the microphones' own
    late frames."""
    pairs = await open_many(url, count, **client)
    load = Load()
    try:
        ready()
        stop_at = await go()
        await asyncio.gather(
            *(talker(session, peer, utterance, stop_at, load) for session, peer in pairs)
        )
        return load, sum(peer.mic.late_frames for _, peer in pairs)
    finally:
        await close_all(pairs)


def _client_process(
    conn: Any, url: str, count: int, utterance: np.ndarray, nice: int, client: Any
) -> None:
    """A process of client peers (`--client-processes`): talks when the parent says go."""
    os.nice(nice)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def go() -> float:
            return await loop.run_in_executor(None, conn.recv)

        load, late = await talk(url, count, utterance, lambda: conn.send("ready"), go, **client)
        conn.send((load.__dict__, late))

    asyncio.run(main())
    conn.close()


class ClientProcesses:
    """`count` sessions' clients spread over `processes` processes of their own."""

    def __init__(
        self,
        url: str,
        count: int,
        processes: int,
        utterance: np.ndarray,
        client: Any,
        nice: int = 0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for n in range(processes):
            share = count // processes + (n < count % processes)
            parent, child = context.Pipe()
            proc = context.Process(
                target=_client_process,
                args=(child, url, share, utterance, nice, client),
                daemon=True,
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    async def ready(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            assert await loop.run_in_executor(None, conn.recv) == "ready"

    def go(self, stop_at: float) -> None:
        for conn in self.conns:
            conn.send(stop_at)

    async def results(self) -> tuple[Load, int]:
        loop = asyncio.get_running_loop()
        load, late = Load(), 0
        for conn in self.conns:
            fields, lateness = await loop.run_in_executor(None, conn.recv)
            part = Load(**fields)
            load.gaps_ms += part.gaps_ms
            load.errors += part.errors
            load.turns += part.turns
            late += lateness
        for proc in self.procs:
            proc.join(10)
        return load, late

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs if proc.pid is not None]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()


async def talking(
    url: str,
    web: tuple[list[int], int, int],
    count: int,
    seconds: float,
    utterance: np.ndarray,
    before_ms: float,
    base: float,
    client_processes: int = 1,
    clients_nice: int = 0,
    **client: Any,
) -> dict[str, Any]:
    """`count` sessions talking; `before_ms`: what precedes the service's own overhead in the
    time to first audio (the providers' time and the bare media path's). The clients run in
    this process, or spread over `client_processes` processes of their own."""
    pids, port, fake_pid = web
    loop = asyncio.get_running_loop()
    processes: ClientProcesses | None = None
    if client_processes > 1:
        processes = ClientProcesses(
            url, count, client_processes, utterance, client, nice=clients_nice
        )
        client_pids = processes.pids()
        await processes.ready()
    else:
        client_pids = [os.getpid()]
        opened, stop = loop.create_future(), loop.create_future()
        local = asyncio.create_task(
            talk(url, count, utterance, lambda: opened.set_result(True), lambda: stop, **client)
        )
        await asyncio.wait({opened, local}, return_when=asyncio.FIRST_COMPLETED)
        if local.done():
            local.result()  # opening failed: its error
    try:
        await asyncio.sleep(2.0)
        late0 = metric(port, "echo_audio_late_frames_total")
        lag0 = loop_lag(port)
        under0 = metric(port, "echo_audio_underruns_total")
        stages0 = stage_totals(port)
        stop_at = time.monotonic() + seconds + 8.0
        if processes is not None:
            processes.go(stop_at)
        else:
            stop.set_result(stop_at)
        await asyncio.sleep(6.0)  # into the steady state
        cpu0, own0, t0 = cpu_of(pids), cpu_of(client_pids), time.monotonic()
        fake0, (ran0, waited0) = cpu_s(fake_pid), schedstat(pids)
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        busy = (cpu_of(pids) - cpu0) / elapsed
        own = (cpu_of(client_pids) - own0) / elapsed
        fake = (cpu_s(fake_pid) - fake0) / elapsed
        ran, waited = schedstat(pids)
        loop_ran = (ran - ran0) / elapsed / len(pids)
        loop_waited = (waited - waited0) / elapsed / len(pids)
        if processes is not None:
            load, client_late = await asyncio.wait_for(processes.results(), 180)
        else:
            load, client_late = await asyncio.wait_for(local, 180)
        late = metric(port, "echo_audio_late_frames_total") - late0
        lag = [now - then for now, then in zip(loop_lag(port), lag0, strict=True)]
        underruns = metric(port, "echo_audio_underruns_total") - under0
        server_stages = stage_means(stages0, stage_totals(port))
    finally:
        if processes is not None:
            processes.stop()
    overhead = [ms - before_ms for ms in load.first_audio_ms]
    row = {
        "sessions": count,
        "web_processes": len(pids),
        "client_processes": max(1, client_processes),
        "clients_nice": clients_nice if client_processes > 1 else 0,
        "cpu_pct_per_session": round(100 * (busy - base) / count, 2),
        "web_cpu_pct": round(100 * busy, 1),  # all web processes together
        "clients_cpu_pct": round(100 * own, 1),  # every client peer's process
        "fake_cpu_pct": round(100 * fake, 1),  # the DashScope fake's process
        # of the wall time, a web process's loop thread ran / was runnable but not running
        # (the mean over the web processes)
        "loop_ran_pct": round(100 * loop_ran, 1),
        "loop_waited_for_cpu_pct": round(100 * loop_waited, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        # of the web processes' loop-lag samples (echo_event_loop_lag_seconds, two a second
        # each), the share that ran over 20 ms and over 50 ms late
        "loop_lag_over_20ms_pct": round(100 * lag[1] / lag[0], 1) if lag[0] else None,
        "loop_lag_over_50ms_pct": round(100 * lag[2] / lag[0], 1) if lag[0] else None,
        "gap_ms": summary(load.gaps_ms),
        "gaps_over_60ms": sum(g > GAP_P99_MS for g in load.gaps_ms),
        "late_frames": int(late),
        "underruns": int(underruns),
        "stages_ms": {kind: summary(values) for kind, values in load.stages_ms.items()},
        "server_stage_mean_ms": server_stages,
        # speech frames the clients' microphones sent late (the clients' own lateness)
        "client_late_frames": client_late,
        "first_audio_ms": summary(load.first_audio_ms),
        "overhead_ms": summary(overhead),
        "slowest_turns": slowest_turns(load.turns),
        "errors": load.errors[:3],
        "error_count": len(load.errors),
    }
    row["meets_targets"] = meets(row, load.gaps_ms, overhead)
    await asyncio.sleep(3.0)
    return row


def slowest_turns(turns: list[dict[str, float]], count: int = 3) -> list[str]:
    """Where the slowest turns (by first audio) lost their time: each stage's ms beyond that
    stage's median over all turns, in the order of the chain."""
    order = (*STAGES, "audio")
    medians = {
        kind: median([turn[kind] for turn in turns if kind in turn])
        for kind in order
        if any(kind in turn for turn in turns)
    }
    slowest = sorted(turns, key=lambda turn: turn["audio"], reverse=True)[:count]
    return [
        ", ".join(f"{kind} {turn[kind] - medians[kind]:+.0f}" for kind in order if kind in turn)
        for turn in slowest
    ]


def meets(row: dict[str, Any], gaps: list[float], overhead: list[float]) -> bool:
    gap, over = p99(gaps), p99(overhead)
    return (
        not row["error_count"]
        and gap is not None
        and gap < GAP_P99_MS
        and row["late_frames"] <= LATE_FRAMES
        and over is not None
        and over < OVERHEAD_P99_MS
    )


def largest_meeting(rows: list[dict[str, Any]]) -> int:
    """The largest session count that meets the targets, and every smaller count did too."""
    best = 0
    for row in sorted(rows, key=lambda r: r["sessions"]):
        if not row["meets_targets"]:
            break
        best = row["sessions"]
    return best


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
