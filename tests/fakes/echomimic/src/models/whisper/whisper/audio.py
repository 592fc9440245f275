"""Stand-in for upstream's Whisper audio module, which imports ffmpeg-python at its top and
runs the `ffmpeg` program to decode a file path. Arrays pass straight to the spectrogram."""

import ffmpeg
import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_FRAMES = 3000  # 30 s of 10 ms mel frames, what the encoder takes at a time
N_MELS = 80


def load_audio(file: str, sr: int = SAMPLE_RATE):
    # Upstream runs `ffmpeg`; this machine may or may not have it, so the stand-in runs a
    # program that is never there: a path given here fails as on a worker without ffmpeg.
    out, _ = (
        ffmpeg.input(file, threads=0)
        .output("-", format="s16le", acodec="pcm_s16le", ac=1, ar=sr)
        .run(cmd=["ffmpeg-is-not-installed", "-nostdin"], capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.int16).flatten().astype(np.float32) / 32768.0


def pad_or_trim(array, length: int = N_FRAMES, *, axis: int = -1):
    if array.shape[axis] > length:
        return array.index_select(axis, torch.arange(length, device=array.device))
    pad = [0, 0] * array.ndim
    pad[(array.ndim - 1 - axis % array.ndim) * 2 + 1] = length - array.shape[axis]
    return torch.nn.functional.pad(array, pad)


def log_mel_spectrogram(audio, n_mels: int = N_MELS):
    if not torch.is_tensor(audio):
        if isinstance(audio, str):
            audio = load_audio(audio)
        audio = torch.from_numpy(audio)
    window = torch.hann_window(N_FFT).to(audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[:n_mels, :-1].abs() ** 2  # a stand-in for the mel filter bank
    return (torch.clamp(power, min=1e-10).log10() + 4.0) / 4.0
