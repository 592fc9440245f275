"""Opus for the realtime path, calling libopus directly (the system's, else the copy PyAV's
wheel carries).

Decoding: aiortc decodes each received audio packet on a thread of its own per receiver,
through PyAV, to 48 kHz stereo, and hands every 20 ms frame back to the loop: two thread
hand-overs per frame and a resampler after them, for every session. libopus decodes to any of
its rates and to mono itself, in tens of microseconds, so the peer decodes on the loop, straight
to what the listener takes (16 kHz mono), as packets arrive.

Encoding: aiortc's encoder sends stereo at 96 kbit/s at libopus's highest complexity (10), a
few hundred microseconds of CPU per 20 ms frame. The avatar's voice is mono speech: mono at
`SPEECH_BITRATE`, a bit rate WebRTC itself uses for voice, and complexity 1 (libopus's
speed/quality dial, 0-10; the setting WEBRTC_OPUS_COMPLEXITY) costs about a fifth: encoding was
the largest single piece of a talking session's CPU. Decoded, complexity 1 is within 0.35 dB
of complexity 5 in log-spectral distance to the original speech and 0 is 1.6 dB worse
(docs/benchmarks.md).

The library is loaded as a `ctypes.PyDLL`: its calls keep the GIL. A call takes tens to a
hundred-odd microseconds; releasing the GIL for it (`ctypes.CDLL`) let the process's other
threads (the providers' SDK threads) take the GIL, and the event loop then waited for it
back, up to the interpreter's switch interval (5 ms) per frame, with every session's audio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import cache

import av

# The longest Opus packet lasts 120 ms.
MAX_PACKET_MS = 120
SPEECH_BITRATE = 32000
SPEECH_COMPLEXITY = 1  # the default of WEBRTC_OPUS_COMPLEXITY
# libopus's constants (opus_defines.h)
_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010
_GET_COMPLEXITY = 4011
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014


_INT_P = ctypes.POINTER(ctypes.c_int)
# (result, arguments) of the functions used; opus_encoder_ctl is variadic: typed at the call
_SIGNATURES = {
    "opus_decoder_create": (ctypes.c_void_p, [ctypes.c_int32, ctypes.c_int, _INT_P]),
    "opus_decode": (
        ctypes.c_int,
        [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ],
    ),
    "opus_decoder_destroy": (None, [ctypes.c_void_p]),
    "opus_encoder_create": (ctypes.c_void_p, [ctypes.c_int32, ctypes.c_int, ctypes.c_int, _INT_P]),
    "opus_encode": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32],
    ),
    "opus_encoder_ctl": (ctypes.c_int, None),
    "opus_encoder_destroy": (None, [ctypes.c_void_p]),
}


@cache
def _libopus() -> ctypes.PyDLL:
    bundled = os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libopus*.so*")
    for name in [ctypes.util.find_library("opus"), *sorted(glob.glob(bundled))]:
        try:
            lib = ctypes.PyDLL(name) if name else None
        except OSError:
            continue
        if lib is None:
            continue
        for function, (result, arguments) in _SIGNATURES.items():
            getattr(lib, function).restype = result
            if arguments is not None:
                getattr(lib, function).argtypes = arguments
        return lib
    raise OSError("libopus not found (neither the system's nor PyAV's)")


class _State:
    """A libopus decoder's or encoder's state, destroyed with the object."""

    _destroy = ""  # the libopus function that frees it
    _state: int | None = None

    def __init__(self) -> None:
        self._lib = _libopus()

    def _create(self, function: str, *arguments: int) -> None:
        error = ctypes.c_int()
        state = getattr(self._lib, function)(*arguments, ctypes.byref(error))
        if error.value != 0 or not state:
            raise OSError(f"{function} failed ({error.value})")
        self._state = state

    def close(self) -> None:
        if self._state is not None:
            getattr(self._lib, self._destroy)(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class OpusDecoder(_State):
    """One Opus stream's decoder at `rate` Hz (8000, 12000, 16000, 24000 or 48000), mono."""

    _destroy = "opus_decoder_destroy"

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.rate = rate
        self._max_samples = rate * MAX_PACKET_MS // 1000
        self._out = ctypes.create_string_buffer(self._max_samples * 2)
        self.errors = 0
        self.reset()

    def reset(self) -> None:
        """Start afresh (after packets were skipped: the old state would smear into the new)."""
        self.close()
        self._create("opus_decoder_create", self.rate, 1)

    def decode(self, packet: bytes) -> bytes:
        """PCM16 of one packet; b"" for a packet libopus refuses (counted in `errors`)."""
        if self._state is None:
            self.reset()
        samples = self._lib.opus_decode(
            self._state, packet, len(packet), self._out, self._max_samples, 0
        )
        if samples < 0:
            self.errors += 1
            return b""
        return ctypes.string_at(self._out, samples * 2)

    def recover(self, next_packet: bytes, samples: int) -> bytes:
        """PCM16 for the `samples` lost just before `next_packet`, from the redundant copy
        of them that packet carries (Opus in-band FEC, which browsers add when the receiver
        reports loss); the loss concealment where it carries none."""
        return self._stand_in(next_packet, samples) or self.conceal(samples)

    def conceal(self, samples: int) -> bytes:
        """PCM16 standing in for `samples` of lost packets (libopus's loss concealment,
        which fades to silence over a long loss), at most MAX_PACKET_MS of it."""
        return self._stand_in(None, samples)

    def _stand_in(self, packet: bytes | None, samples: int) -> bytes:
        """libopus's audio for lost samples: from `packet`'s FEC copy, or concealed (None)."""
        step = self.rate // 400  # a multiple of 2.5 ms, as libopus requires
        samples = min(samples, self._max_samples) // step * step
        if self._state is None or samples <= 0:
            return b""
        fec = 1 if packet else 0
        done = self._lib.opus_decode(
            self._state, packet or None, len(packet or b""), self._out, samples, fec
        )
        return ctypes.string_at(self._out, done * 2) if done > 0 else b""


class OpusEncoder(_State):
    """Mono PCM16 at `rate` Hz → one Opus packet per frame, tuned for speech (see above)."""

    _destroy = "opus_encoder_destroy"

    def __init__(
        self,
        rate: int,
        bitrate: int = SPEECH_BITRATE,
        complexity: int = SPEECH_COMPLEXITY,
        fec_loss_pct: int = 0,
    ) -> None:
        """`fec_loss_pct` > 0: in-band FEC for that expected loss, as a browser encodes once
        its peer reports loss."""
        super().__init__()
        self.rate = rate
        self._out = ctypes.create_string_buffer(1500)  # an RTP payload's worth
        self._create("opus_encoder_create", rate, 1, _APPLICATION_VOIP)
        settings = [(_SET_BITRATE, bitrate), (_SET_COMPLEXITY, complexity)]
        if fec_loss_pct > 0:
            settings += [(_SET_INBAND_FEC, 1), (_SET_PACKET_LOSS_PERC, fec_loss_pct)]
        for request, value in settings:
            result = self._lib.opus_encoder_ctl(
                ctypes.c_void_p(self._state), ctypes.c_int(request), ctypes.c_int(value)
            )
            if result != 0:
                raise OSError(f"opus_encoder_ctl({request}, {value}) failed ({result})")

    @property
    def complexity(self) -> int:
        """The complexity libopus encodes with (as it reports it)."""
        value = ctypes.c_int()
        self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._state), ctypes.c_int(_GET_COMPLEXITY), ctypes.byref(value)
        )
        return value.value

    def encode(self, pcm: bytes) -> bytes:
        """One frame (2.5-60 ms of samples) as an Opus packet."""
        size = self._lib.opus_encode(self._state, pcm, len(pcm) // 2, self._out, len(self._out))
        if size < 0:
            raise ValueError(f"opus_encode failed ({size})")
        return ctypes.string_at(self._out, size)
