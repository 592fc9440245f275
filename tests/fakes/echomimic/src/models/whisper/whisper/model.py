"""Stand-in for upstream's Whisper model: only the encoder, returning the per-layer embeddings
that EchoMimic uses as audio features (5 layers of 384 values, 50 per second)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .transcribe import transcribe as transcribe_function


@dataclass
class ModelDimensions:
    n_mels: int
    n_audio_state: int
    n_audio_layer: int


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_state: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.blocks = nn.ModuleList(nn.Linear(n_state, n_state) for _ in range(n_layer))

    def forward(self, x, include_embeddings: bool = False):
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).permute(0, 2, 1)
        embeddings = [x]
        for block in self.blocks:
            x = x + torch.tanh(block(x))
            embeddings.append(x)
        if include_embeddings:
            return x, torch.stack(embeddings, dim=1)  # (b, layers + 1, frames, state)
        return x


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_state, dims.n_audio_layer)

    @property
    def device(self):
        return next(self.parameters()).device

    transcribe = transcribe_function  # as upstream binds it
