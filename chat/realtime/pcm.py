"""PCM16 mono resampling for streams cut into arbitrary chunks.

Audio reaches the realtime path in pieces that respect neither sample boundaries (a websocket
client may cut a frame mid-sample) nor the resampler's filter history; one stateful
`PcmResampler` per stream keeps both, so chunk seams stay inaudible.
"""

from __future__ import annotations

import av
import numpy as np


def frame_pcm(frame: av.AudioFrame) -> bytes:
    """The samples of a packed s16 mono frame as bytes (planes may carry padding)."""
    return bytes(frame.planes[0])[: frame.samples * 2]


class PcmResampler:
    """PCM16 mono bytes at `rate_in` → PCM16 mono bytes at `rate_out`, chunk by chunk."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._odd = b""
        self._resampler = (
            None
            if rate_in == rate_out
            else av.AudioResampler(format="s16", layout="mono", rate=rate_out)
        )

    def __call__(self, data: bytes) -> bytes:
        if self._odd:
            data = self._odd + data
        cut = len(data) - len(data) % 2
        data, self._odd = data[:cut], data[cut:]
        if not data or self._resampler is None:
            return data
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(data, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.rate_in
        return b"".join(frame_pcm(out) for out in self._resampler.resample(frame))
