"""The realtime part of a session's protocol: WebRTC signalling and recognition spans.

The consumer hands this class the client messages `offer`, `ice_candidate`, `ready`,
`asr_start`, `asr_stop` and the binary frames of a websocket span; it answers through the
`SessionContext` (the session's turns) it is given. The messages' fields were checked by
`chat.protocol.parse`; the states, and whether a candidate names a usable address, are checked
here. States follow docs/protocol.md: Initialized → OfferReceived → AnswerSent →
WebRTCConnected → Ready; a failed connection goes back to Initialized, so the client may
negotiate again (after reconnecting, as the protocol says, or on the same socket).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, Protocol

from django.conf import settings
from redis.exceptions import RedisError

from chat import limits, protocol
from chat.ice import session_ice_servers
from chat.protocol import Err
from chat.providers.base import ASRProvider, ProviderError
from chat.providers.registry import get_asr
from chat.realtime.listener import SAMPLE_RATE, Listener
from chat.realtime.pcm import PcmResampler
from chat.realtime.peer import CandidateError, PeerSession, WebRTCError, parse_candidate
from chat.realtime.speaker import SpeakerTrack
from chat.realtime.tasks import Tasks
from chat.realtime.vad import VADConfig
from echoproject import metrics

logger = logging.getLogger(__name__)

INITIALIZED = "Initialized"
OFFER_RECEIVED = "OfferReceived"
ANSWER_SENT = "AnswerSent"
WEBRTC_CONNECTED = "WebRTCConnected"
READY = "Ready"
_CONNECTED_STATES = (WEBRTC_CONNECTED, READY)


class SessionContext(Protocol):
    """What the handler needs from the consumer."""

    session_id: str
    language: str

    async def send_event(self, event: dict[str, Any]) -> None: ...

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        ref: str | None = None,
        **extra: Any,
    ) -> None: ...

    async def user_utterance(self, text: str, utterance_id: str) -> None: ...

    async def barge_in(self) -> None: ...


class BadMessage(ValueError):
    """A field of the wrong type or value: ERR_BAD_MESSAGE."""


class _Span:
    """One `asr_start … asr_stop` span."""

    def __init__(
        self, transport: str, listener: Listener, ref: str | None, sample_rate: int
    ) -> None:
        self.transport = transport
        self.listener = listener
        self.ref = ref
        self.resample = PcmResampler(sample_rate, SAMPLE_RATE)
        self.fed = 0  # bytes of PCM at SAMPLE_RATE given to the recogniser (chat.limits)


def _get_asr() -> ASRProvider:
    # Imported on first use: the providers registry loads backends lazily.
    return get_asr()


class RealtimeHandler:
    """Realtime signalling and recognition of one session (see the module docstring)."""

    def __init__(
        self,
        ctx: SessionContext,
        *,
        asr: ASRProvider | None = None,
        vad_config: VADConfig | None = None,
        on_transport: Callable[[str], None] | None = None,
    ) -> None:
        """`on_transport("webrtc" | "websocket")`: the session's audio moved to a connected
        peer, or back (the peer failed or closed)."""
        self.ctx = ctx
        self._on_transport = on_transport
        self.state = INITIALIZED
        self._asr = asr
        self._vad_config = vad_config
        self._peer: PeerSession | None = None
        self._offer_ref: str | None = None
        self._connected_pending = False
        self._direction = "both"
        self._span: _Span | None = None
        self._finishing_ws = 0
        self._tasks = Tasks()
        self._closed = False

    # --- what the consumer reads ------------------------------------------------------------

    def speaker(self) -> SpeakerTrack | None:
        """The outgoing track while WebRTC is connected; reply audio goes there.

        None when the client's `ready` said it only sends ("send"): it will not play ours.
        """
        if self._direction == "send":
            return None
        if self._peer is not None and self.state in _CONNECTED_STATES:
            return self._peer.speaker
        return None

    @property
    def ws_audio_span(self) -> bool:
        """Inside a websocket-transport span: reply audio goes back as binary frames.

        Still true after `asr_stop` until the span's last final was delivered, so that the
        reply to the utterance `asr_stop` ended is streamed the same way.
        """
        span_open = self._span is not None and self._span.transport == "websocket"
        return span_open or self._finishing_ws > 0

    @property
    def peer(self) -> PeerSession | None:
        return self._peer

    # --- client messages --------------------------------------------------------------------

    async def handle(self, msg_type: str, msg: dict[str, Any], ref: str | None) -> None:
        """Handle one client message; every refusal is answered through ctx.send_error."""
        method = {
            "offer": self._offer,
            "ice_candidate": self._ice_candidate,
            "ready": self._ready,
            "asr_start": self._asr_start,
            "asr_stop": self._asr_stop,
        }.get(msg_type)
        if method is None:
            await self.ctx.send_error(
                Err.UNKNOWN_TYPE, f"unknown message type {msg_type!r}", ref=ref
            )
            return
        if self._closed:
            await self.ctx.send_error(Err.STATE, "the session is closing", ref=ref)
            return
        try:
            await method(msg, ref)
        except BadMessage as exc:
            await self.ctx.send_error(Err.BAD_MESSAGE, str(exc), ref=ref)

    async def feed_pcm(self, data: bytes) -> bool:
        """A binary frame: consumed (True) inside a websocket span, else left to the caller."""
        span = self._span
        if span is None or span.transport != "websocket":
            return False
        pcm = span.resample(data)
        if pcm:
            span.fed += len(pcm)
            await span.listener.feed(pcm)
        return True

    # --- signalling -------------------------------------------------------------------------

    async def _offer(self, msg: dict[str, Any], ref: str | None) -> None:
        sdp = msg["sdp"]
        candidates = msg.get("candidates", [])
        for candidate in candidates:
            _check_candidate(candidate)
        if self.state != INITIALIZED:
            await self.ctx.send_error(
                Err.STATE, f"offer not allowed in state {self.state}", ref=ref
            )
            return

        self.state = OFFER_RECEIVED
        self._offer_ref = ref
        self._connected_pending = False
        peer = PeerSession(
            on_audio=self._on_webrtc_audio,
            batch_audio=self._may_batch_audio,
            wants_audio=self._listens_over_webrtc,
            pause_is_silence=self._pause_is_silence,
            quiet_left=self._quiet_left,
            on_state=self._on_peer_state,
            ice_servers=session_ice_servers(self.ctx.session_id),
            timeout_s=float(settings.WEBRTC_TIMEOUT_S),
            opus_complexity=settings.WEBRTC_OPUS_COMPLEXITY,
        )
        self._peer = peer
        for candidate in candidates:  # kept by the peer until the offer is applied
            await peer.add_candidate(candidate)
        # Negotiation (ICE gathering, STUN) takes a while: it runs beside the consumer's
        # message loop, and candidates trickled meanwhile wait in the peer too.
        self._tasks.spawn(self._negotiate(peer, sdp, ref), "webrtc-offer")

    async def _negotiate(self, peer: PeerSession, sdp: str, ref: str | None) -> None:
        try:
            answer = await peer.accept_offer(sdp, "offer")
        except WebRTCError as exc:
            await self._fail(peer, str(exc), retryable=exc.retryable, ref=ref)
            return
        if self._peer is not peer:  # closed meanwhile
            return
        self.state = ANSWER_SENT
        await self.ctx.send_event(protocol.event("answer", ref, sdp=answer.sdp, sdp_type="answer"))
        if self._connected_pending:
            await self._mark_connected(peer)

    async def _ice_candidate(self, msg: dict[str, Any], ref: str | None) -> None:
        _check_candidate(msg)
        if self._peer is None or self.state == INITIALIZED:
            await self.ctx.send_error(Err.STATE, "ice_candidate before offer", ref=ref)
            return
        try:
            await self._peer.add_candidate(msg)
        except CandidateError as exc:
            raise BadMessage(str(exc)) from exc
        except Exception as exc:
            logger.warning("adding an ICE candidate failed: %s", exc)
            raise BadMessage(f"ICE candidate refused: {exc}") from exc

    async def _ready(self, msg: dict[str, Any], ref: str | None) -> None:
        direction = msg.get("direction", "both")
        if self.state not in _CONNECTED_STATES:
            await self.ctx.send_error(
                Err.STATE, f"ready not allowed in state {self.state}", ref=ref
            )
            return
        self.state = READY
        self._direction = direction
        await self.ctx.send_event(protocol.event("ready", ref, direction=direction))

    async def _on_peer_state(self, state: str) -> None:
        peer = self._peer
        if peer is None or self._closed:
            return
        if state == "connected":
            if self.state == OFFER_RECEIVED:
                self._connected_pending = True
            elif self.state == ANSWER_SENT:
                await self._mark_connected(peer)
            return
        reason = peer.failure_reason if state == "failed" else "WebRTC connection closed"
        await self._fail(peer, reason or "WebRTC connection failed", retryable=True, ref=None)

    async def _mark_connected(self, peer: PeerSession) -> None:
        if self._peer is not peer or self.state != ANSWER_SENT:
            return
        self.state = WEBRTC_CONNECTED
        metrics.webrtc("connected")
        self._transport("webrtc")
        await self.ctx.send_event(protocol.event("connected", self._offer_ref))

    def _transport(self, transport: str) -> None:
        if self._on_transport is not None:
            self._on_transport(transport)

    async def _fail(
        self, peer: PeerSession, message: str, *, retryable: bool, ref: str | None
    ) -> None:
        """ERR_WEBRTC_FAILED; the peer is closed and the session may negotiate again."""
        if self._peer is not peer:
            return
        metrics.webrtc("failed" if self.state not in _CONNECTED_STATES else "lost")
        if self.state in _CONNECTED_STATES:
            self._transport("websocket")
        self._peer = None
        self.state = INITIALIZED
        self._direction = "both"
        span = self._span
        if span is not None and span.transport == "webrtc":
            self._span = None
            await span.listener.close()
        await peer.close()
        await self.ctx.send_error(Err.WEBRTC_FAILED, message, retryable=retryable, ref=ref)

    # --- recognition ------------------------------------------------------------------------

    async def _asr_start(self, msg: dict[str, Any], ref: str | None) -> None:
        language = msg.get("language") or self.ctx.language
        transport = msg.get("transport")
        rate = msg.get("sample_rate", SAMPLE_RATE)
        connected = self.state in _CONNECTED_STATES
        if transport is None:
            transport = "webrtc" if connected else "websocket"
        if self._span is not None:
            await self.ctx.send_error(Err.STATE, "asr_start inside a recognition span", ref=ref)
            return
        if transport == "webrtc" and not connected:
            await self.ctx.send_error(
                Err.STATE, "asr_start over webrtc needs a connected peer", ref=ref
            )
            return
        who = getattr(self.ctx, "subject", "")
        try:
            if who and settings.LIMIT_AUDIO_S_PER_DAY:
                await asyncio.to_thread(limits.check, limits.AUDIO, who)
        except limits.Limited as exc:
            await self.ctx.send_error(
                Err.RATE_LIMITED, exc.message, retryable=True, ref=ref, **exc.fields()
            )
            return
        try:
            asr = self._asr or _get_asr()
        except ProviderError as exc:
            metrics.provider_error(exc.code)
            await self.ctx.send_error(exc.code, exc.message, retryable=exc.retryable, ref=ref)
            return
        listener = Listener(
            asr,
            language,
            on_speech_start=self.ctx.barge_in,
            on_interim=self._on_interim,
            on_final=self.ctx.user_utterance,
            on_error=self._on_asr_error,
            vad_config=self._vad_config,
            final_timeout_s=float(settings.PROVIDER_TIMEOUT_S),
            on_maybe_speech=self._hold_speech,
        )
        self._span = _Span(
            transport, listener, ref, rate if transport == "websocket" else SAMPLE_RATE
        )

    def _hold_speech(self, held: bool) -> None:
        """Pause the reply on the outgoing track while the user may be starting to talk (the
        websocket transport sends reply audio ahead of playback: nothing to pause there)."""
        speaker = self.speaker()
        if speaker is not None:
            speaker.hold(held)

    async def _asr_stop(self, msg: dict[str, Any], ref: str | None) -> None:
        span = self._span
        if span is None:
            await self.ctx.send_error(Err.STATE, "asr_stop outside a recognition span", ref=ref)
            return
        # The span ends now (later binary frames are uploads again); the final text arrives
        # when the recogniser is done, without holding up the consumer's next message.
        self._span = None
        self._tasks.spawn(self._finish_span(span), "asr-stop")

    async def _finish_span(self, span: _Span) -> None:
        websocket = span.transport == "websocket"
        self._finishing_ws += websocket
        try:
            await span.listener.stop()
        finally:
            self._finishing_ws -= websocket
            await span.listener.close()
            await self._count_audio(span)

    async def _count_audio(self, span: _Span) -> None:
        """The span's audio counts against the audio limit of the session's subject."""
        who = getattr(self.ctx, "subject", "")
        seconds, span.fed = span.fed / (2 * SAMPLE_RATE), 0
        if who and seconds:
            try:
                await asyncio.to_thread(limits.add, limits.AUDIO, who, seconds)
            except (RedisError, OSError) as exc:
                logger.warning(
                    "limits: could not count %.1f s of audio of %s: %s", seconds, who, exc
                )

    def _listens_over_webrtc(self) -> bool:
        """A webrtc recognition span is open: the microphone's audio has a listener."""
        return self._span is not None and self._span.transport == "webrtc"

    def _pause_is_silence(self) -> bool:
        """An utterance (or its first speech-like frames) is being heard over WebRTC and the
        last frame was quiet: a pause in the client's packets now is Opus DTX, silence that must
        reach the VAD to end the utterance. (After a loud frame a pause is a late packet: DTX
        only starts after silence.)"""
        span = self._span
        if span is None or span.transport != "webrtc":
            return False
        listener = span.listener
        if not (listener.in_utterance or listener.vad.rising):
            return False
        vad = listener.vad
        return vad.last_db < vad.threshold_db - (vad.config.hysteresis_db if vad.speaking else 0)

    def _quiet_left(self) -> float | None:
        """Seconds of quiet the VAD of the utterance being heard still needs to end it."""
        span = self._span
        return None if span is None else span.listener.vad.quiet_left_s

    def _may_batch_audio(self) -> bool:
        """Whether the microphone's frames may reach the listener 100 ms at a time: not while
        an utterance or its first speech-like frames are under way (the end of speech and the
        start are timed per frame) nor while reply speech is queued (a barge-in pauses it at
        the first speech-like frame)."""
        span = self._span
        if span is not None and span.transport == "webrtc":
            listener = span.listener
            if listener.in_utterance or listener.vad.rising:
                return False
        peer = self._peer
        return peer is None or (peer.speaker.queued_ms == 0 and not peer.speaker.held)

    async def _on_webrtc_audio(self, pcm: bytes) -> None:
        span = self._span
        if span is not None and span.transport == "webrtc":
            span.fed += len(pcm)
            await span.listener.feed(pcm)

    async def _on_interim(self, text: str, utterance_id: str) -> None:
        ref = self._span.ref if self._span is not None else None
        await self.ctx.send_event(protocol.asr_interim(text, utterance_id, ref))

    async def _on_asr_error(self, exc: ProviderError) -> None:
        metrics.provider_error(exc.code)
        ref = self._span.ref if self._span is not None else None
        await self.ctx.send_error(exc.code, exc.message, retryable=exc.retryable, ref=ref)

    # --- lifetime ---------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait for the work left running (a negotiation, finals being recognised); for tests."""
        await self._tasks.wait()

    async def close(self) -> None:
        """End everything of the session: span, listener, peer connection, tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        span, self._span = self._span, None
        peer, self._peer = self._peer, None
        if span is not None:
            await span.listener.close()
            await self._count_audio(span)
        await self._tasks.cancel()
        if peer is not None:
            await peer.close()


def _check_candidate(msg: dict[str, Any]) -> None:
    """Refuse a candidate aiortc would choke on later, beside the loop (absurd ports,
    addresses that are neither IP nor mDNS names), while the client can still be told. Its
    fields' types and sizes were checked by `chat.protocol.parse`."""
    candidate = msg["candidate"]
    try:
        parsed = parse_candidate(candidate, None, 0)
    except CandidateError as exc:
        raise BadMessage(str(exc)) from exc
    if parsed is None:  # end of candidates
        return
    ports = [parsed.port] + ([parsed.relatedPort] if parsed.relatedPort is not None else [])
    if (
        not all(0 <= port <= 65535 for port in ports)
        or not 1 <= parsed.component <= 256
        or not 0 <= parsed.priority < 2**32
        or parsed.protocol.lower() not in ("udp", "tcp")
        or not _candidate_address(parsed.ip)
    ):
        raise BadMessage(f"unusable ICE candidate: {candidate[:100]!r}")


def _candidate_address(host: str) -> bool:
    """An IP address, or the mDNS name (`<uuid>.local`) browsers put in place of one."""
    if host.endswith(".local") and 6 < len(host) <= 255:
        return all(c.isascii() and (c.isalnum() or c in "-.") for c in host)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
