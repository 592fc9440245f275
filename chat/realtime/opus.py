"""Opus decoding straight into what the listener takes (16 kHz mono PCM16), on the event loop.

aiortc decodes each received audio packet on a thread of its own per receiver, through PyAV, to
48 kHz stereo, and hands every 20 ms frame back to the loop: two thread hand-overs per frame and
a resampler after them, for every session. libopus decodes to any of its rates and to mono
itself, in tens of microseconds, so this calls it directly (the system's libopus, else the copy
PyAV's wheel carries) and the peer decodes on the loop as packets arrive.
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


@cache
def _libopus() -> ctypes.CDLL:
    bundled = os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libopus*.so*")
    candidates = [ctypes.util.find_library("opus"), *sorted(glob.glob(bundled))]
    for name in candidates:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [
            ctypes.c_int32,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        return lib
    raise OSError("libopus not found (neither the system's nor PyAV's)")


class OpusDecoder:
    """One Opus stream's decoder at `rate` Hz (8000, 12000, 16000, 24000 or 48000), mono."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lib = _libopus()
        self._max_samples = rate * MAX_PACKET_MS // 1000
        self._out = ctypes.create_string_buffer(self._max_samples * 2)
        self._state: int | None = None
        self.errors = 0
        self.reset()

    def reset(self) -> None:
        """Start afresh (after packets were skipped: the old state would smear into the new)."""
        self.close()
        error = ctypes.c_int()
        state = self._lib.opus_decoder_create(self.rate, 1, ctypes.byref(error))
        if error.value != 0 or not state:
            raise OSError(f"opus_decoder_create failed ({error.value})")
        self._state = state

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
        return self._out.raw[: samples * 2]

    def close(self) -> None:
        if self._state is not None:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
