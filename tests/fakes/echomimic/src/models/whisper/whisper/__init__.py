"""Stand-in for upstream's Whisper copy: `load_model` reads a checkpoint with the model's
dimensions and state dict, as upstream's whisper_tiny.pt is laid out."""

import torch

from .audio import load_audio, log_mel_spectrogram, pad_or_trim  # noqa: F401
from .model import ModelDimensions, Whisper
from .transcribe import transcribe  # noqa: F401


def load_model(
    name: str,
    device: str | torch.device | None = None,
    download_root: str = None,
    in_memory: bool = False,
) -> Whisper:
    with open(name, "rb") as fp:
        checkpoint = torch.load(fp, map_location=device or "cpu")
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    return model.to(device or "cpu")
