"""The microphone's receive buffer: RTP packets handed on as they arrive, in order.

aiortc's jitter buffer is made for playout. It hands a frame on only once the next packet shows
it complete (20 ms late at best), and a lost packet stops it until 14 more have arrived; from
then on every frame comes out 14 packets (280 ms) late for the rest of the connection, since it
releases at most one frame per packet received. On a microphone that feeds a VAD and a
recogniser, one lost packet made every later end of speech and barge-in ~280 ms late, and the
last frames of each utterance waited inside the buffer for the packets of the next one (a
packet per 400 ms in a DTX pause), after the VAD had ended the utterance without them.

`InOrder` takes its place on the server's audio receiver: a packet in sequence goes on at
once; one that comes early is held until the packets before it arrive, or for `REORDER_WAIT_S`
at most, after which the missing packets count as lost (the decoder rebuilds the last of
them from the copy the next packet carries when the client sends Opus in-band FEC, and conceals
the others) and what was held goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc.rtp import RtpPacket

# How long a packet that came early waits for the ones before it. Packets that arrive out of
# order on a real path are a few ms apart; a wait of two frames costs a lost packet's
# neighbours 40 ms once, where aiortc's buffer cost 280 ms for the rest of the connection.
REORDER_WAIT_S = 0.04
# More packets than this held (a long burst after a loss) go on without waiting.
MAX_HELD = 16
# A jump this far ahead, or back by more than MAX_BEHIND, is a new stream (the sender restarted
# its numbering), not a loss or a late packet.
RESTART_AHEAD = 3000
MAX_BEHIND = 100

_SEQ = 0x10000


class InOrder:
    """Takes the place of an aiortc audio receiver's jitter buffer (its `add`): packets are
    given to `deliver` in sequence-number order as soon as they can be, `lost(n, packet)` is
    told of n packets given up just before `packet`. Runs on the event loop, as the receiver
    does."""

    def __init__(
        self,
        deliver: Callable[[RtpPacket], None],
        lost: Callable[[int, RtpPacket], None],
        wait_s: float = REORDER_WAIT_S,
    ) -> None:
        self._deliver = deliver
        self._lost = lost
        self.wait_s = wait_s
        self._next: int | None = None  # the sequence number due next
        self._held: dict[int, RtpPacket] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, Any]:
        """aiortc's interface: (send a picture loss indication?, a frame to decode); frames
        go to `deliver` instead, so this returns none."""
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) % _SEQ
        if ahead >= _SEQ - MAX_BEHIND:
            return False, None  # a duplicate, or one that came after it was given up
        if ahead > RESTART_AHEAD:
            self._held.clear()
            self._next = seq
        self._held[seq] = packet
        self._release()
        if len(self._held) > MAX_HELD:
            self._give_up()
        elif self._held and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._give_up)
        return False, None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()

    def _release(self) -> None:
        held = self._held
        while self._next in held:
            packet = held.pop(self._next)
            self._next = (self._next + 1) % _SEQ
            self._deliver(packet)
        if not held and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _give_up(self) -> None:
        """The packets missing before the first one held are lost: go on from there."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._held or self._next is None:
            return
        first = min(self._held, key=lambda seq: (seq - self._next) % _SEQ)  # type: ignore[operator]
        self._lost((first - self._next) % _SEQ, self._held[first])
        self._next = first
        self._release()
        if self._held:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._give_up)
