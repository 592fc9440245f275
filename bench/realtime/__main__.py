"""`python -m bench.realtime`: see the package's docstring (`--help`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import bench.realtime as package
from bench.realtime import fake
from bench.realtime.figures import median, summary
from bench.stack import Stack

# The parts that import the service's code (and so its settings) come after `Stack.prepare`
# put this run's settings into the environment: `measure`, `report`.


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.realtime",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--turns", type=int, default=10, help="WebRTC turns (after a warm-up)")
    parser.add_argument("--ws-turns", type=int, default=6, help="websocket-PCM turns")
    parser.add_argument("--sessions", default="10,20,30,40", help="talking sessions, comma list")
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU window per count")
    parser.add_argument("--idle", default="", help="idle session counts, each without/with DTX")
    parser.add_argument("--idle-rounds", type=int, default=2, help="A B rounds per idle count")
    parser.add_argument("--no-dtx", action="store_true", help="clients send every 20 ms")
    parser.add_argument(
        "--web-processes", type=int, default=1, help="WEB_PROCESSES of the web service"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="processes the talking sessions' clients are spread over (1: this one)",
    )
    parser.add_argument(
        "--clients-nice",
        type=int,
        default=0,
        help="nice value of those client processes (the load generator yields to the service, "
        "as if it ran on another machine; its CPU is still measured)",
    )
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    parser.add_argument("--asr-final", type=float, default=150.0, help="ms")
    parser.add_argument("--llm-first-token", type=float, default=200.0, help="ms")
    parser.add_argument("--llm-token", type=float, default=20.0, help="ms")
    parser.add_argument("--tts-first-chunk", type=float, default=100.0, help="ms")
    parser.add_argument("--tts-chunk", type=float, default=20.0, help="ms per 100 ms chunk")
    parser.add_argument(
        "--client-prefetch",
        type=int,
        help="frames the clients' aiortc jitter buffer holds back (default: aiortc's 4)",
    )
    parser.add_argument(
        "--mic-loss",
        type=float,
        default=0.0,
        help="per cent of the clients' microphone packets lost on the way (seeded)",
    )
    parser.add_argument("--serve-fake", help=argparse.SUPPRESS)
    return parser.parse_args()


def counts(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


async def measure(
    args: argparse.Namespace, url: str, web: tuple[list[int], int, int]
) -> dict[str, Any]:
    from bench.realtime import capacity
    from bench.realtime.clients import Loss, load_pcm
    from bench.realtime.turns import MIC_RATE, media_baseline, webrtc_turns, websocket_turns

    client = {
        "dtx": not args.no_dtx,
        "prefetch": args.client_prefetch,
        "lose": Loss(args.mic_loss / 100) if args.mic_loss else None,
    }
    utterance, barge = load_pcm(fake.UTTERANCE, MIC_RATE), load_pcm(fake.BARGE, MIC_RATE)
    out: dict[str, Any] = {}
    out["media"] = await media_baseline(utterance, max(3, args.turns // 2), **client)
    if args.turns:
        out["webrtc"] = await webrtc_turns(url, args.turns, utterance, barge, **client)
    if args.ws_turns:
        out["websocket"] = await websocket_turns(
            url, args.ws_turns, load_pcm(fake.UTTERANCE, 16000), load_pcm(fake.BARGE, 16000)
        )
    pids = web[0]
    base = await capacity.idle_cpu(pids, 5.0)  # the web processes with no session at all
    out["empty_web_cpu_pct"] = round(100 * base, 2)
    idle_rows = []
    for count in counts(args.idle):
        for _ in range(args.idle_rounds):
            for dtx in (False, True):
                pct = await capacity.idle(url, pids, count, 10.0, base, dtx=dtx)
                idle_rows.append({"sessions": count, "dtx": dtx, "cpu_pct_per_session": pct})
                print(json.dumps(idle_rows[-1]), flush=True)
    out["idle"] = idle_rows
    media = out["media"]
    before = (
        fake.provider_ms(args.delays)["first_audio"]
        + (median(media["inbound"]) or 0.0)
        + (median(media["outbound"]) or 0.0)
    )
    rows = []
    for count in counts(args.sessions):
        idle_pct = await capacity.idle(url, pids, count, 10.0, base, **client)
        row = await capacity.talking(
            url,
            web,
            count,
            args.seconds,
            utterance,
            before,
            base,
            client_processes=args.client_processes,
            clients_nice=args.clients_nice,
            **client,
        )
        row = {"sessions": count, "idle_cpu_pct_per_session": idle_pct, **row}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out["capacity"] = rows
    return out


def report(args: argparse.Namespace, hangover: float, measured: dict[str, Any]) -> dict[str, Any]:
    from bench.realtime import capacity

    providers = fake.provider_ms(args.delays)
    result: dict[str, Any] = {
        "clients_dtx": not args.no_dtx,
        "fake_delays_ms": args.delays,
        "provider_ms": providers,
        "vad_hangover_ms": round(hangover, 1),
        "server_timings_ms": measured.get("timings"),
    }
    media = measured["media"]
    inbound, outbound = median(media["inbound"]) or 0.0, median(media["outbound"]) or 0.0
    result["webrtc_media_path_ms"] = {
        "inbound_to_vad_end": summary(media["inbound"]),
        "inbound_transport": round(inbound - hangover, 1),
        "outbound": summary(media["outbound"]),
    }
    for path in ("webrtc", "websocket"):
        if path not in measured:
            continue
        turns, barge = measured[path]
        stages = ("asr_result", "text_delta", "text_response", "tts_start", "first_audio")
        # Over the websocket the hangover is all that precedes the service's own work; over
        # WebRTC the media path measured without the service is (inbound, then outbound).
        before = inbound if path == "webrtc" else hangover
        after = {"first_audio": outbound if path == "webrtc" else 0.0}
        overhead = {
            k: summary([t[k] - providers[k] - before - after.get(k, 0.0) for t in turns])
            for k in ("asr_result", "text_response", "first_audio")
        }
        result[path] = {
            "turns": len(turns),
            "from_end_of_speech_ms": {k: summary([t[k] for t in turns]) for k in stages},
            "service_overhead_ms": overhead,
            "first_audio_before_text_response": sum(
                t["first_audio"] < t["text_response"] for t in turns
            ),
            "barge_in_until_silent_ms": {k: summary(v) for k, v in barge.items()},
        }
    result["empty_web_cpu_pct"] = measured["empty_web_cpu_pct"]
    result["idle"] = measured["idle"]
    result["capacity"] = measured["capacity"]
    if measured["capacity"]:
        result["largest_count_meeting_targets"] = capacity.largest_meeting(measured["capacity"])
    result["load_average"] = os.getloadavg()
    result["cpus"] = capacity.cpu_count()
    return result


def main() -> None:
    args = arguments()
    if args.serve_fake:
        fake.serve(json.loads(args.serve_fake))
        return
    args.delays = {
        "asr_final": args.asr_final,
        "llm_first_token": args.llm_first_token,
        "llm_token": args.llm_token,
        "tts_first_chunk": args.tts_first_chunk,
        "tts_chunk": args.tts_chunk,
    }
    stack = Stack(args.redis_db, prefix="echo-bench-rt-")
    service: fake.Fake | None = None
    try:
        service = fake.Fake(args.delays, stack.env)
        stack.env.update(service.env)
        stack.prepare()
        web, port = stack.start_web(WEB_PROCESSES=str(args.web_processes))
        from bench.realtime.capacity import web_pids

        pids = web_pids(web.pid, args.web_processes)
        url = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"
        from bench.realtime.clients import load_pcm, vad_hangover_ms

        hangover = vad_hangover_ms(load_pcm(fake.UTTERANCE, 16000))
        measured = asyncio.run(
            asyncio.wait_for(measure(args, url, (pids, port, service.proc.pid)), 3600)
        )
        import django

        django.setup()
        measured["timings"] = fake.server_timings()
    finally:
        stack.close()
        if service is not None:
            service.stop()
    print(json.dumps(report(args, hangover, measured), indent=2))


if __name__ == "__main__":
    main()
