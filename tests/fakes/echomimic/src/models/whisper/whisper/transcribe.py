"""Stand-in for upstream's reworked `transcribe`: no decoding, only the encoder's embeddings of
each 30 s window of the log-mel spectrogram, with the window's start and end."""

import torch

from .audio import N_FRAMES, log_mel_spectrogram, pad_or_trim


def transcribe(model, audio, *, verbose=None, **decode_options):
    dtype = torch.float16 if decode_options.get("fp16", True) else torch.float32
    if model.device == torch.device("cpu"):
        dtype = torch.float32
    mel = log_mel_spectrogram(audio)
    segments = []
    seek, frames = 0, mel.shape[-1]
    while seek < frames:
        window = pad_or_trim(mel[:, seek : seek + N_FRAMES], N_FRAMES).to(model.device, dtype)
        _, embeddings = model.encoder(window.unsqueeze(0), include_embeddings=True)
        segments.append(
            {
                "start": seek,
                "end": min(seek + N_FRAMES, frames),
                "encoder_embeddings": embeddings.float().cpu().numpy(),
            }
        )
        seek += N_FRAMES
    return dict(segments=segments)
