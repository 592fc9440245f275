"""Stand-in for upstream's FaceLocator: the face mask (b, 1, f, h, w) to features at 1/8."""

import torch.nn.functional as F
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class FaceLocator(ModelMixin):
    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 1,
        block_out_channels: tuple[int] = (16, 32, 64, 128),
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1, stride=2)
            for a, b in zip(block_out_channels[:-1], block_out_channels[1:], strict=False)
        )
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, 1)

    def forward(self, conditioning):
        b, c, f, h, w = conditioning.shape
        x = conditioning.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        x = self.conv_out(x)
        return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)
