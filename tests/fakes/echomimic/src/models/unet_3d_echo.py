"""Stand-in for upstream's 3D denoising UNet: built from the 2D UNet's folder by
`from_pretrained_2d`, as upstream builds it, with the motion module's weights on top."""

from os import PathLike
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors.torch import load_file
from torch import nn


class EchoUNet3DConditionModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int] = (8,),
        cross_attention_dim: int = 384,
        use_inflated_groupnorm: bool = False,
        unet_use_cross_frame_attention=None,
        unet_use_temporal_attention=None,
        use_motion_module: bool = False,
        motion_module_resolutions=(1, 2, 4, 8),
        motion_module_mid_block: bool = False,
        motion_module_decoder_only: bool = False,
        motion_module_type=None,
        motion_module_kwargs=None,
        **kwargs,
    ):
        super().__init__()
        width = block_out_channels[0]
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        self.audio_proj = nn.Linear(cross_attention_dim, width)
        self.face_proj = nn.Conv2d(320, width, 1)
        self.motion = nn.Conv1d(width, width, 3, padding=1) if use_motion_module else None

    @classmethod
    def from_pretrained_2d(
        cls,
        pretrained_model_path: PathLike,
        motion_module_path: PathLike,
        subfolder=None,
        unet_additional_kwargs=None,
        mm_zero_proj_out=False,
    ):
        pretrained_model_path = Path(pretrained_model_path)
        motion_module_path = Path(motion_module_path)
        if subfolder is not None:
            pretrained_model_path = pretrained_model_path.joinpath(subfolder)
        config_file = pretrained_model_path / "config.json"
        if not (config_file.exists() and config_file.is_file()):
            raise RuntimeError(f"{config_file} does not exist or is not a file")
        unet_config = cls.load_config(config_file)
        unet_config["_class_name"] = cls.__name__
        model = cls.from_config(unet_config, **unet_additional_kwargs)
        if pretrained_model_path.joinpath(SAFETENSORS_WEIGHTS_NAME).exists():
            state_dict = load_file(pretrained_model_path.joinpath(SAFETENSORS_WEIGHTS_NAME))
        elif pretrained_model_path.joinpath(WEIGHTS_NAME).exists():
            state_dict = torch.load(
                pretrained_model_path.joinpath(WEIGHTS_NAME), map_location="cpu", weights_only=True
            )
        else:
            raise FileNotFoundError(f"no weights file found in {pretrained_model_path}")
        if motion_module_path.exists() and motion_module_path.is_file():
            state_dict.update(torch.load(motion_module_path, map_location="cpu", weights_only=True))
        model.load_state_dict(state_dict, strict=False)
        return model

    def forward(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        audio_cond_fea=None,
        face_musk_fea=None,
        return_dict: bool = True,
    ):
        b, c, f, h, w = sample.shape
        x = self.conv_in(sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        audio = self.audio_proj(audio_cond_fea.mean(dim=2)).reshape(b * f, -1, 1, 1)
        face = self.face_proj(face_musk_fea.permute(0, 2, 1, 3, 4).reshape(-1, 320, h, w))
        x = torch.tanh(x + audio + face.expand(b * f, -1, -1, -1))
        out = self.conv_out(x).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        return (out,) if not return_dict else type("Out", (), {"sample": out})()
