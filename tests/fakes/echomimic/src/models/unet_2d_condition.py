"""Stand-in for upstream's reference UNet (a diffusers model loaded with from_pretrained)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class UNet2DConditionModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int] = (8,),
        cross_attention_dim: int = 16,
        **kwargs,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True):
        return self.conv_out(torch.tanh(self.conv_in(sample)))
