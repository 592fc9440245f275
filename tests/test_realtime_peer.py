"""RealtimeHandler over a real WebRTC connection: an aiortc client peer on loopback sends
espeak-ng speech and records the server's speaker track."""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import time
from typing import Any

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

from chat import protocol
from chat.realtime.handler import RealtimeHandler
from chat.realtime.peer import PeerSession, ice_servers_from_settings, offers_dtx
from harness.peer import with_dtx
from tests.audio import read_wav, rms, speak
from tests.fixtures_realtime import (
    ClientPeer,
    EchoASR,
    FakeContext,
    negotiate,
    run,
    wait_until,
)

LONG_REPLY = (
    "Thank you for asking. The weather today is sunny and warm, with a light breeze from the "
    "west, and it should stay that way until the evening."
)


def speech_ms(pcm: np.ndarray, rate: int = 16000, threshold: float = 300.0) -> float:
    """Milliseconds from the first to the last loud 20 ms frame."""
    step = rate // 50
    loud = [i for i in range(0, len(pcm) - step + 1, step) if rms(pcm[i : i + step]) > threshold]
    return (loud[-1] - loud[0] + step) / rate * 1000 if loud else 0.0


async def open_session(
    asr: Any = None, *, dtx: bool = True
) -> tuple[RealtimeHandler, FakeContext, ClientPeer]:
    ctx = FakeContext()
    handler = RealtimeHandler(ctx, asr=asr or EchoASR())
    client = ClientPeer(dtx=dtx)
    await negotiate(handler, ctx, client)
    return handler, ctx, client


async def close_session(handler: RealtimeHandler, client: ClientPeer) -> None:
    await handler.close()
    await client.close()


def test_negotiation_answers_connects_and_gets_ready() -> None:
    async def body() -> None:
        handler, ctx, client = await open_session()
        answer = ctx.of_type("answer")[0]
        assert answer["sdp_type"] == "answer" and answer["ref"] == "o1"
        assert "a=candidate:" in answer["sdp"]  # our candidates travel in the SDP
        assert ctx.of_type("ready") == [{"type": "ready", "direction": "both", "ref": "r1"}]
        assert handler.state == "Ready" and handler.speaker() is not None
        assert client.pc.connectionState == "connected"
        assert not ctx.errors
        await handler.handle("offer", {"sdp": await client.offer()}, "o2")
        assert ctx.errors[-1]["code"] == "ERR_STATE" and ctx.errors[-1]["ref"] == "o2"
        await close_session(handler, client)
        assert handler.speaker() is None
        await handler.close()  # idempotent

    run(body())


def test_a_video_section_is_declined_and_audio_still_flows() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        client = ClientPeer()
        client.pc.addTransceiver("video", direction="sendrecv")
        await negotiate(handler, ctx, client)
        answer = ctx.of_type("answer")[0]["sdp"]
        video = answer[answer.index("m=video") :]
        assert "a=inactive" in video
        speaker = handler.speaker()
        assert speaker is not None
        pcm, rate = read_wav(speak("Good morning"))
        started = time.monotonic()
        await speaker.write(pcm.tobytes(), rate)
        await asyncio.wait_for(speaker.drained(), 10)
        await asyncio.sleep(0.3)
        assert rms(client.audio_since(started)) > 300
        await close_session(handler, client)

    run(body())


def test_ice_servers_from_settings_keep_their_credentials() -> None:
    servers = ice_servers_from_settings(
        [
            {"urls": "stun:stun.example:3478"},
            {"urls": ["turn:turn.example:3478"], "username": "u", "credential": "p"},
        ]
    )
    assert servers[0].urls == "stun:stun.example:3478" and servers[0].username is None
    assert (servers[1].urls, servers[1].username, servers[1].credential) == (
        ["turn:turn.example:3478"],
        "u",
        "p",
    )


def test_a_client_that_only_sends_gets_no_speaker_track() -> None:
    async def body() -> None:
        handler, ctx, client = await open_session()
        await handler.handle("ready", {"direction": "send"}, "r2")
        assert ctx.of_type("ready")[-1]["direction"] == "send"
        assert handler.speaker() is None  # the consumer sends reply audio another way
        await close_session(handler, client)

    run(body())


@pytest.mark.parametrize("in_offer", [False, True], ids=["ice_candidate", "offer.candidates"])
def test_client_candidates_sent_apart_from_the_sdp_are_used(in_offer: bool) -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        client = ClientPeer()
        sdp = await client.offer()
        lines = sdp.splitlines()
        candidates = [
            {"candidate": line[2:], "sdpMid": "0", "sdpMLineIndex": 0}
            for line in lines
            if line.startswith("a=candidate:")
        ]
        stripped = "\r\n".join(
            line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))
        )
        offer = {"sdp": stripped + "\r\n", "sdp_type": "offer"}
        if in_offer:
            offer["candidates"] = candidates
        await handler.handle("offer", offer, None)
        if not in_offer:
            for candidate in candidates:
                await handler.handle("ice_candidate", candidate, None)
        await handler.handle("ice_candidate", {"candidate": "", "sdpMid": "0"}, None)
        await handler.wait_idle()
        await client.accept(ctx.of_type("answer")[0]["sdp"])
        await wait_until(lambda: ctx.of_type("connected"), 15, "connected")
        await handler.handle("ice_candidate", {"candidate": "garbage", "sdpMid": "0"}, "c9")
        assert ctx.error_codes() == ["ERR_BAD_MESSAGE"]
        await close_session(handler, client)

    run(body())


def test_speech_on_the_client_track_gives_interims_and_a_final() -> None:
    async def body() -> None:
        asr = EchoASR()
        handler, ctx, client = await open_session(asr)
        await handler.handle("asr_start", {"language": "en-US"}, "a1")
        assert not handler.ws_audio_span
        duration = client.mic.play_wav(speak("Hello there. What is the weather like today?"))
        await wait_until(lambda: ctx.utterances, duration + 10, "a final")
        text, utterance_id = ctx.utterances[0]
        heard_ms = int(text.split()[-2])
        assert duration * 1000 - 300 < heard_ms < duration * 1000 + 1200
        interims = ctx.of_type("asr_interim")
        assert interims and all(e["utterance_id"] == utterance_id for e in interims)
        assert interims[0]["ref"] == "a1"
        assert ctx.barge_ins == 1
        await handler.handle("asr_stop", {}, "a2")
        await handler.wait_idle()
        assert len(ctx.utterances) == 1 and not ctx.errors
        await close_session(handler, client)

    run(body())


def test_a_client_sending_pcmu_instead_of_opus_is_heard_and_answered() -> None:
    """The microphone is decoded as packets arrive whatever the codec: a client that offers
    only G.711 (PCMU, 8 kHz) is recognised like an Opus one and hears the reply."""

    async def body() -> None:
        ctx = FakeContext()
        asr = EchoASR()
        handler = RealtimeHandler(ctx, asr=asr)
        client = ClientPeer(dtx=False)
        (transceiver,) = client.pc.getTransceivers()
        capabilities = RTCRtpSender.getCapabilities("audio")
        transceiver.setCodecPreferences(
            [c for c in capabilities.codecs if c.mimeType.lower() == "audio/pcmu"]
        )
        await negotiate(handler, ctx, client)
        answer = ctx.of_type("answer")[-1]["sdp"]
        assert "PCMU/8000" in answer and "opus" not in answer.lower()
        await handler.handle("asr_start", {"language": "en-US"}, "a1")
        duration = client.mic.play_wav(speak("Hello there. What is the weather like today?"))
        await wait_until(lambda: ctx.utterances, duration + 10, "a final")
        heard_ms = int(ctx.utterances[0][0].split()[-2])
        assert duration * 1000 - 300 < heard_ms < duration * 1000 + 1200
        since = time.monotonic()
        await handler.speaker().write(  # type: ignore[union-attr]
            (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16).tobytes(),
            16000,
        )
        await asyncio.sleep(1.5)
        assert speech_ms(client.audio_since(since)) > 800
        await close_session(handler, client)

    run(body())


def test_reply_audio_plays_on_the_client_track() -> None:
    async def body() -> None:
        handler, ctx, client = await open_session()
        speaker = handler.speaker()
        assert speaker is not None
        pcm, rate = read_wav(speak("The weather is sunny and warm today."))
        started = time.monotonic()
        for i in range(0, len(pcm), rate // 5):  # TTS-like chunks of 200 ms
            await speaker.write(pcm[i : i + rate // 5].tobytes(), rate)
        await asyncio.wait_for(speaker.drained(), 20)
        await asyncio.sleep(0.5)  # the last packets in flight
        received = client.audio_since(started)
        sent_ms = speech_ms(pcm, rate)
        got_ms = speech_ms(received)
        assert rms(received) > 300
        assert sent_ms - 200 < got_ms < sent_ms + 200, (sent_ms, got_ms)
        # and silence afterwards
        after = time.monotonic()
        await asyncio.sleep(0.3)
        assert rms(client.audio_since(after)) < 50
        await close_session(handler, client)

    run(body())


def test_the_servers_rtcp_sender_reports_count_what_the_client_received() -> None:
    """The speaker's packets are counted for RTCP as aiortc counts its own: the client's
    view of the server's sender reports (packets, bytes, the wall clock) matches what it got."""

    async def body() -> None:
        handler, ctx, client = await open_session()
        speaker = handler.speaker()
        assert speaker is not None
        pcm, rate = read_wav(speak("The weather is sunny and warm today, and tomorrow too."))
        await speaker.write(pcm.tobytes(), rate)
        await asyncio.wait_for(speaker.drained(), 20)
        deadline = time.monotonic() + 6
        reported: Any = None
        while time.monotonic() < deadline:
            stats = await client.pc.getReceivers()[0].getStats()
            by_type = {stat.type: stat for stat in stats.values()}
            reported = by_type.get("remote-outbound-rtp")
            if reported is not None and reported.packetsSent >= speaker.speech_frames_sent:
                break
            await asyncio.sleep(0.2)
        assert reported is not None, "no sender report reached the client"
        received = by_type["inbound-rtp"].packetsReceived
        assert speaker.speech_frames_sent <= reported.packetsSent <= received
        assert reported.bytesSent > 40 * speaker.speech_frames_sent  # Opus speech, not silence
        age = datetime.datetime.now(datetime.UTC) - reported.remoteTimestamp
        assert abs(age.total_seconds()) < 3, reported.remoteTimestamp
        await close_session(handler, client)

    run(body())


def test_barge_in_stops_the_reply_speech() -> None:
    async def body() -> None:
        handler, ctx, client = await open_session()
        speaker = handler.speaker()
        assert speaker is not None
        barged: list[float] = []

        async def on_barge_in() -> None:  # what the consumer does
            speaker.clear()
            barged.append(time.monotonic())

        ctx.on_barge_in = on_barge_in
        await handler.handle("asr_start", {}, "a1")
        pcm, rate = read_wav(speak(LONG_REPLY))
        await speaker.write(pcm.tobytes(), rate)
        await asyncio.sleep(1.0)
        assert speaker.queued_ms > 2000
        client.mic.play_wav(speak("Stop please"))
        await wait_until(lambda: barged, 10, "barge-in")
        assert speaker.queued_ms == 0
        await asyncio.sleep(0.6)
        # Speech was arriving before; after the barge-in (+ network margin) only silence.
        assert rms(client.audio_since(barged[0] - 1.0)) > 300
        assert rms(client.audio_since(barged[0] + 0.2)) < 50
        await close_session(handler, client)

    run(body())


def test_websocket_fallback_streams_pcm_at_the_announced_rate() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        pcm, rate = read_wav(speak("Hello there. What is the weather like today?"))
        assert not await handler.feed_pcm(pcm.tobytes())  # outside a span: an upload
        span_at_final: list[bool] = []

        async def user_utterance(text: str, utterance_id: str) -> None:
            span_at_final.append(handler.ws_audio_span)  # the reply's audio goes back as frames
            ctx.utterances.append((text, utterance_id))

        ctx.user_utterance = user_utterance  # type: ignore[method-assign]
        await handler.handle("asr_start", {"format": "pcm16", "sample_rate": rate}, "a1")
        assert handler.ws_audio_span and not ctx.errors
        data = pcm.tobytes()  # no silence after it: asr_stop ends the utterance
        for i in range(0, len(data), 4095):  # odd-sized frames
            assert await handler.feed_pcm(data[i : i + 4095])
        await handler.handle("asr_stop", {}, "a2")
        assert not await handler.feed_pcm(b"\0\0")  # after asr_stop: an upload again
        await handler.wait_idle()
        assert span_at_final == [True] and not handler.ws_audio_span
        assert len(ctx.utterances) == 1
        heard_ms = int(ctx.utterances[0][0].split()[-2])
        assert abs(heard_ms - len(pcm) / rate * 1000) < 1200
        assert ctx.of_type("asr_interim") and not ctx.errors
        await handler.close()

    run(body())


@pytest.mark.parametrize(
    ("msg_type", "msg", "code"),
    [
        ("ready", {"direction": "both"}, "ERR_STATE"),
        ("asr_start", {"transport": "webrtc"}, "ERR_STATE"),
        ("asr_stop", {}, "ERR_STATE"),
        ("ice_candidate", {"candidate": "", "sdpMid": "0"}, "ERR_STATE"),
        ("asr_start", {"format": "opus"}, "ERR_BAD_MESSAGE"),
        ("asr_start", {"sample_rate": "16000"}, "ERR_BAD_MESSAGE"),
        ("asr_start", {"sample_rate": 4000}, "ERR_BAD_MESSAGE"),
        ("asr_start", {"sample_rate": True}, "ERR_BAD_MESSAGE"),
        ("asr_start", {"language": 5}, "ERR_BAD_MESSAGE"),
        ("asr_start", {"transport": "carrier-pigeon"}, "ERR_BAD_MESSAGE"),
        ("offer", {"sdp": 5}, "ERR_BAD_MESSAGE"),
        ("offer", {"sdp": "v=0", "sdp_type": "answer"}, "ERR_BAD_MESSAGE"),
        ("ice_candidate", {"candidate": 1}, "ERR_BAD_MESSAGE"),
        ("ready", {"direction": "sideways"}, "ERR_BAD_MESSAGE"),
    ],
)
def test_messages_refused_in_the_initial_state(msg_type: str, msg: dict, code: str) -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        # as the consumer receives a frame: its fields checked by the protocol, then the handler
        try:
            kind, message, ref = protocol.parse(json.dumps({"type": msg_type, "id": "x1", **msg}))
        except protocol.ProtocolError as exc:
            await ctx.send_error(exc.code, exc.message, ref=exc.ref)
        else:
            await handler.handle(kind, message, ref)
        assert ctx.errors == [
            {"code": code, "message": ctx.errors[0]["message"], "retryable": False, "ref": "x1"}
        ]
        assert handler.state == "Initialized" and not ctx.events
        await handler.close()

    run(body())


def test_a_second_asr_start_inside_a_span_is_refused() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        await handler.handle("asr_start", {}, "a1")
        await handler.handle("asr_start", {}, "a2")
        assert ctx.error_codes() == ["ERR_STATE"]
        await handler.handle("asr_stop", {}, "a3")
        await handler.handle("asr_start", {"language": "zh-CN"}, "a4")
        assert ctx.error_codes() == ["ERR_STATE"]
        await handler.close()

    run(body())


def test_bad_sdp_fails_cleanly_and_a_new_offer_works() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        for sdp in ("not an sdp", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=garbage\r\n"):
            await handler.handle("offer", {"sdp": sdp, "sdp_type": "offer"}, "o1")
            await handler.wait_idle()
            assert ctx.errors[-1]["code"] == "ERR_WEBRTC_FAILED"
            assert ctx.errors[-1]["ref"] == "o1"
            assert handler.state == "Initialized" and handler.peer is None
        client = ClientPeer()
        await negotiate(handler, ctx, client, ref="o2")
        assert handler.state == "Ready"
        await close_session(handler, client)

    run(body())


def test_unreachable_peer_times_out_with_webrtc_failed(settings: Any) -> None:
    settings.WEBRTC_TIMEOUT_S = 1.5

    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        client = ClientPeer()
        sdp = await client.offer()
        await client.close()  # nobody answers the connectivity checks
        await handler.handle("offer", {"sdp": sdp, "sdp_type": "offer"}, "o1")
        await handler.wait_idle()
        assert ctx.of_type("answer")
        await wait_until(lambda: ctx.errors, 10, "an error")
        assert ctx.errors == [
            {
                "code": "ERR_WEBRTC_FAILED",
                "message": ctx.errors[0]["message"],
                "retryable": True,
                "ref": None,
            }
        ]
        assert handler.state == "Initialized" and not ctx.of_type("connected")
        await handler.close()

    run(body())


def test_a_connection_lost_later_gives_webrtc_failed() -> None:
    async def body() -> None:
        handler, ctx, client = await open_session()
        await handler.handle("asr_start", {}, "a1")
        await client.close()
        await wait_until(lambda: ctx.errors, 30, "an error")
        assert ctx.error_codes() == ["ERR_WEBRTC_FAILED"] and ctx.errors[0]["retryable"]
        assert handler.state == "Initialized" and handler.speaker() is None
        assert not handler.ws_audio_span
        await handler.handle("asr_stop", {}, "a2")  # the span ended with the connection
        assert ctx.error_codes()[-1] == "ERR_STATE"
        await handler.close()

    run(body())


def test_many_sessions_leak_no_tasks_or_peer_connections() -> None:
    def live_peer_connections() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))

    async def body() -> None:
        async def cycle() -> None:
            handler, ctx, client = await open_session()
            await handler.handle("asr_start", {}, "a1")
            await handler.speaker().write(b"\1\0" * 1600, 16000)  # type: ignore[union-attr]
            await close_session(handler, client)

        for _ in range(3):  # warm-up: first-use imports and caches
            await cycle()
        await asyncio.sleep(0.5)
        tasks_before = len(asyncio.all_tasks())
        pcs_before = live_peer_connections()
        for _ in range(50):
            await cycle()
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, 10, "tasks to end")
        assert live_peer_connections() <= pcs_before

    run(body(), timeout=110)


def test_a_quiet_microphone_reaches_the_listener_100_ms_at_a_time_and_speech_per_frame() -> None:
    """Before `asr_start` the client's frames go nowhere; then, while nothing is said and
    nothing plays, they are resampled and handed on five at a time (one pass through the
    listener per 100 ms instead of five); once speech starts they go on one by one again, and
    the utterance is still recognised whole. (A client without Opus DTX, which sends a frame
    every 20 ms even in silence.)"""

    async def body() -> None:
        asr = EchoASR()
        handler, ctx, client = await open_session(asr, dtx=False)
        peer = handler.peer
        assert peer is not None
        sizes: list[tuple[bool, int]] = []  # (in an utterance, bytes) per delivery
        deliver = peer.on_audio

        async def recording(pcm: bytes) -> None:
            sizes.append(
                (handler._span is not None and handler._span.listener.in_utterance, len(pcm))
            )
            await deliver(pcm)

        peer.on_audio = recording
        await asyncio.sleep(0.5)
        assert sizes == []  # connected, but nobody listens yet: nothing is even resampled
        await handler.handle("asr_start", {"language": "en-US"}, "a1")
        await asyncio.sleep(1.5)
        quiet = [size for speaking, size in sizes if not speaking]
        assert quiet and sum(size == 3200 for size in quiet) >= len(quiet) * 0.8, quiet
        duration = client.mic.play_wav(speak("Hello there. What is the weather like today?"))
        await wait_until(lambda: ctx.utterances, duration + 10, "a final")
        speaking = [size for in_utterance, size in sizes if in_utterance]
        assert speaking and sum(size == 640 for size in speaking) >= len(speaking) * 0.8
        heard_ms = int(ctx.utterances[0][0].split()[-2])
        assert duration * 1000 - 300 < heard_ms < duration * 1000 + 1200
        await close_session(handler, client)

    run(body())


def test_opus_dtx_is_asked_for_and_used_both_ways_only_when_the_client_offers_it() -> None:
    """The answer asks the client for Opus DTX (and in-band FEC); a client that offered it
    sends about a packet per 400 ms in silence and the server's speaker does the same; a client
    that did not offer it gets a packet every 20 ms, as before."""

    async def body() -> None:
        for dtx in (True, False):
            handler, ctx, client = await open_session(dtx=dtx)
            answer = ctx.of_type("answer")[-1]["sdp"]
            assert "usedtx=1" in answer and "useinbandfec=1" in answer
            speaker = handler.speaker()
            assert speaker is not None and speaker.dtx is dtx and client.mic.dtx is dtx
            await asyncio.sleep(0.5)  # past the hangover of silence frames after the start
            mic_before, speaker_before = client.mic.frames_sent, speaker.frames_sent
            await asyncio.sleep(2.0)
            mic_sent = client.mic.frames_sent - mic_before
            speaker_sent = speaker.frames_sent - speaker_before
            if dtx:  # ~5 each in 2 s instead of ~100
                assert mic_sent <= 15 and speaker_sent <= 15, (mic_sent, speaker_sent)
            else:
                assert mic_sent >= 60 and speaker_sent >= 60, (mic_sent, speaker_sent)
            await close_session(handler, client)

    run(body())


def test_the_end_of_speech_is_found_when_the_client_goes_quiet_with_dtx() -> None:
    """After the user's speech a DTX client sends almost nothing: that silence still ends the
    utterance (it is not a stalled stream), and the recogniser got the whole utterance and about
    the VAD's hangover of silence after it, with no burst of made-up audio."""

    async def body() -> None:
        asr = EchoASR()
        handler, ctx, client = await open_session(asr)
        assert client.mic.dtx
        await handler.handle("asr_start", {"language": "en-US"}, "a1")
        await asyncio.sleep(1.0)
        sent_before = client.mic.frames_sent
        speech = client.mic.utter(*read_wav(speak("Hello there. What is the weather like today?")))
        await speech.ended(20)
        await wait_until(lambda: ctx.utterances, 10, "a final")
        heard_ms = int(ctx.utterances[0][0].split()[-2])
        # pre-roll + speech + the VAD's end_ms of silence, whatever the packets were
        assert speech.duration * 1000 - 300 < heard_ms < speech.duration * 1000 + 1200
        await asyncio.sleep(1.0)
        quiet_frames = client.mic.frames_sent - sent_before - round(speech.duration / 0.02)
        assert quiet_frames < 40, quiet_frames  # the microphone was in DTX meanwhile
        await close_session(handler, client)

    run(body())


def test_silence_in_a_dtx_pause_keeps_up_with_the_clock_when_the_loop_wakes_late() -> None:
    """In a DTX pause mid-utterance the server hands the VAD the silence the clock says has
    passed. On a loaded process, whose loop wakes late every time, it still falls behind by
    at most a wake-up (the VAD's end of speech is not late by the lateness of every step) and
    never runs ahead of the clock (no burst of made-up audio)."""

    async def body() -> None:
        heard: list[tuple[float, int]] = []

        async def on_audio(pcm: bytes) -> None:
            heard.append((time.monotonic(), len(pcm) // 2))

        peer = PeerSession(on_audio=on_audio, on_state=lambda state: None)
        peer.pause_is_silence = lambda: True  # the user went quiet mid-utterance
        reader = asyncio.create_task(peer._read_audio())
        await asyncio.sleep(0)
        peer._inbound.push(bytes(640))  # a last 20 ms frame, then nothing (Opus DTX)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:  # a busy loop: held 15 ms in every 25
            time.sleep(0.015)  # noqa: ASYNC251 - holding the loop is the point
            await asyncio.sleep(0.01)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await peer.close()
        (start, _), *gaps = heard
        silence_s = sum(samples for _, samples in gaps) / 16000
        elapsed_s = heard[-1][0] - start
        assert elapsed_s > 0.8
        assert elapsed_s - 0.08 < silence_s <= elapsed_s + 0.001, (silence_s, elapsed_s)

    run(body())


def test_dtx_is_read_from_the_opus_fmtp_only() -> None:
    """`usedtx=1` counts in an Opus fmtp line (the web client's and the test peer's offers add
    it, one without an fmtp line gets one), not in another codec's."""
    chrome = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 9\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:9 G722/8000\r\n"
    )
    assert not offers_dtx(chrome)
    assert offers_dtx(with_dtx(chrome))
    assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n" in with_dtx(chrome)
    bare = "v=0\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    assert "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 usedtx=1\r\n" in with_dtx(bare)
    other = "v=0\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=fmtp:0 usedtx=1\r\n"
    assert not offers_dtx(other)


def test_a_dtx_packet_in_a_pause_comes_after_the_pause_silence() -> None:
    """Opus DTX sends a packet per 400 ms in silence. Each one that ends a wait of the pause
    comes after the silence owed since the last wake-up, so that the audio handed on keeps to
    the clock: the VAD's end of speech is not a wait later whenever a packet beat a wake-up."""

    async def body() -> None:
        heard: list[int] = []  # samples handed on, cumulated, at each packet's delivery

        async def on_audio(pcm: bytes) -> None:
            total = (heard[-1] if heard else 0) + len(pcm) // 2
            heard.append(total)

        peer = PeerSession(on_audio=on_audio, on_state=lambda state: None)
        peer.pause_is_silence = lambda: True  # the user went quiet mid-utterance
        reader = asyncio.create_task(peer._read_audio())
        await asyncio.sleep(0)
        start = time.monotonic()
        peer._inbound.push(bytes(640))  # a last 20 ms frame, then DTX packets only
        behind: list[float] = []
        for n in range(1, 6):  # between two wake-ups of the pause's waits
            await asyncio.sleep(start + 0.4 * n + 0.035 - time.monotonic())
            pushed = time.monotonic()
            peer._inbound.push(bytes(640))
            await wait_until(lambda: not peer._inbound.chunks, 2, "the packet")
            await asyncio.sleep(0)
            # the audio handed on so far against the clock at the packet's end
            behind.append((pushed - start + 0.02) - heard[-1] / 16000)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await peer.close()
        assert all(-0.015 < late < 0.012 for late in behind), behind

    run(body())


def test_a_lost_microphone_packet_delays_none_of_the_audio_after_it() -> None:
    """On a lossy path one packet of the microphone never comes. The server conceals it and
    hands every later frame on as it arrives: what it has heard keeps up with what the client
    sent, and keeps its length. (aiortc's own buffer stopped for 14 packets and then stayed
    14 packets, 280 ms, behind for the rest of the connection: every later end of speech and
    barge-in that much later.)"""

    async def body() -> None:
        heard = [0]  # 16 kHz samples handed on

        async def on_audio(pcm: bytes) -> None:
            heard[0] += len(pcm) // 2

        async def on_state(state: str) -> None:
            pass

        peer = PeerSession(on_audio=on_audio, on_state=on_state)
        # a packet per 20 ms (no DTX); the 60th is lost on the way
        client = ClientPeer(dtx=False, keep_audio=False, lose=lambda n: n == 60)
        answer = await peer.accept_offer(await client.offer())
        await client.accept(answer.sdp)

        def behind_ms() -> float:
            return client.mic_packets * 20 - heard[0] / 16

        await wait_until(lambda: client.mic_packets >= 50 and heard[0] > 0, 10, "the microphone")
        before = behind_ms()
        await wait_until(lambda: client.mic_packets >= 110, 10, "50 packets after the loss")
        after = [behind_ms()]
        for _ in range(5):
            await asyncio.sleep(0.1)
            after.append(behind_ms())
        await client.close()
        await peer.close()
        assert max(after) - before < 50, (before, after)

    run(body())


def test_a_late_packet_in_a_quiet_stretch_adds_no_silence_and_a_dtx_pause_is_heard_whole() -> None:
    """Mid-utterance, after a quiet frame: a packet 100 ms late on the network (its RTP
    timestamp follows the frame before) adds no silence, so the VAD does not hear the quiet
    stretch longer than it was and end the utterance early; a DTX pause after it (the next
    packet stamped as far on as it comes later) is heard as that much silence."""

    async def body() -> None:
        heard: list[bytes] = []

        async def on_audio(pcm: bytes) -> None:
            heard.append(pcm)

        peer = PeerSession(on_audio=on_audio, on_state=lambda state: None)
        peer.pause_is_silence = lambda: True  # the user went quiet mid-utterance
        reader = asyncio.create_task(peer._read_audio())
        await asyncio.sleep(0)
        frame = b"\x01\x00" * 320  # 20 ms, told apart from the silence handed on
        peer._inbound.push(frame, 0.0)
        await asyncio.sleep(0.1)  # the next packet is late
        peer._inbound.push(frame, 0.02)
        late_at = time.monotonic()  # its audio (media 0.02-0.04) ends as it comes
        await wait_until(lambda: len(b"".join(heard)) >= 1280, 2, "the late packet")
        assert b"".join(heard) == frame * 2  # nothing between them
        heard.clear()
        await asyncio.sleep(0.4)  # DTX
        start = 0.04 + (time.monotonic() - late_at) - 0.02
        peer._inbound.push(frame, start)
        await wait_until(lambda: heard and heard[-1] == frame, 2, "the DTX packet")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await peer.close()
        silence = b"".join(heard)[:-640]
        assert silence == bytes(len(silence))
        assert abs(len(silence) / 2 / 16000 - (start - 0.04)) < 0.002, (len(silence), start)

    run(body())
