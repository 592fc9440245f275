"""Realtime voice turns: from the end of the user's speech to `asr_result`, `text_response` and
the first reply audio at the client, split into the providers' time and the service's own;
barge-in; and how many sessions one web process carries, idle and talking.

Starts the loopback DashScope fake (tests/fakes/dashscope_server.py) in a process of its own
with FIXED delays (`fake`), and a web process (`python -m echoproject.web`) whose three
providers are the DashScope backends pointed at it, on a Redis database of its own with a
throw-away SQLite database and media folder (`bench.stack`). The clients are the tests' own
browser stand-in (`harness.peer.ClientPeer`: an aiortc peer offering Opus DTX as the web client
does; `--no-dtx` for one that sends every 20 ms). Then, in this process:

0. The WebRTC media path alone (`turns.media_baseline`): a client connected to the server's
   `PeerSession` in this process, no session, no providers.
1. WebRTC turns and barge-ins, then 2. the same over the websocket-PCM fallback (`turns`).
3. Capacity (`capacity`): for each count of `--sessions`, that many connected sessions nobody
   talks on (CPU % of a core per session), then talking turn after turn: CPU per session, the
   p99 gap between consecutive reply frames at the clients, speech frames the server sent late
   (its /metrics), how often the web processes' loops ran a due timer over 20 / 50 ms late
   (`echo_event_loop_lag_seconds`), the overhead to first reply audio; the largest count that
   meets the targets
   (gap p99 < 60 ms, no late frames, overhead p99 < 50 ms) is printed last.
   `--idle N` measures N idle sessions without and with DTX, alternately (A B A B).

Provider time of a stage = the fake's configured delays on its path. Overhead = measured -
provider time - what comes before and after the service: over the websocket the VAD's hangover;
over WebRTC the bare peer's median time from the end of speech to its VAD's end and from
queueing reply audio to hearing it at the client.

    .venv/bin/python -m bench.realtime --turns 20 --ws-turns 10 --sessions 10,20,30,40

`--client-prefetch N` sets the client peers' playout (jitter) buffer (aiortc's default holds
4 frames back, ~80 ms); `--mic-loss P` loses P % of the clients' microphone packets on the way
(a lossy network); BENCH_TRACE=1 prints the events and loud frames around every barge-in.
"""
