"""Stand-in for upstream's accelerated Audio2VideoPipeline: the same constructor and call
signature, a diffusers pipeline driving a real DDIM scheduler over tiny models. It records what
each call was given (`calls`), for the test to check against what upstream expects."""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import DDIMScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class Audio2VideoPipelineOutput(BaseOutput):
    videos: torch.Tensor | np.ndarray


class Audio2VideoPipeline(DiffusionPipeline):
    _optional_components = []

    def __init__(
        self,
        vae,
        reference_unet,
        denoising_unet,
        audio_guider,
        face_locator,
        scheduler: DDIMScheduler,
        image_proj_model=None,
        tokenizer=None,
        text_encoder=None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            reference_unet=reference_unet,
            denoising_unet=denoising_unet,
            audio_guider=audio_guider,
            face_locator=face_locator,
            scheduler=scheduler,
            image_proj_model=image_proj_model,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.ref_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True
        )
        self.calls = []

    def prepare_extra_step_kwargs(self, generator, eta):
        # as upstream: pass eta and generator only when the scheduler's step names them
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    @torch.no_grad()
    def __call__(
        self,
        ref_image,
        audio_path,
        face_mask_tensor,
        width,
        height,
        video_length,
        num_inference_steps,
        guidance_scale,
        num_images_per_prompt=1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "tensor",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.FloatTensor], None] | None = None,
        callback_steps: int | None = 1,
        context_schedule="uniform",
        context_frames=12,
        context_stride=1,
        context_overlap=0,
        context_batch_size=1,
        interpolation_factor=1,
        audio_sample_rate=16000,
        fps=25,
        audio_margin=2,
        **kwargs,
    ):
        device = self._execution_device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        features = self.audio_guider.audio2feat(audio_path)
        chunks = self.audio_guider.feature2chunks(feature_array=features, fps=fps)
        audio = torch.Tensor(chunks).to(dtype=self.vae.dtype, device=self.vae.device)[None]
        video_length = min(video_length, audio.shape[1])
        audio = audio[:, :video_length]
        shape = (
            1,
            4,
            video_length,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        latents = randn_tensor(shape, generator=generator, device=device, dtype=audio.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        face = self.face_locator(face_mask_tensor)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        reference = self.ref_image_processor.preprocess(ref_image, height=height, width=width)
        reference = reference.to(dtype=self.vae.dtype, device=self.vae.device)
        reference_latents = self.vae.encode(reference).latent_dist.mean * 0.18215
        self.reference_unet(reference_latents, 0, encoder_hidden_states=None)
        for t in self.scheduler.timesteps:
            noise_pred = self.denoising_unet(
                self.scheduler.scale_model_input(latents, t),
                t,
                encoder_hidden_states=None,
                audio_cond_fea=audio,
                face_musk_fea=face,
            ).sample
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
        frames = latents[0].permute(1, 0, 2, 3) / 0.18215
        video = self.vae.decode(frames).sample.permute(1, 0, 2, 3)[None]
        video = (video / 2 + 0.5).clamp(0, 1).cpu().float()
        self.calls.append(
            {
                "ref_image": ref_image,
                "audio": audio_path,
                "face_mask": face_mask_tensor,
                "size": (width, height),
                "video_length": video_length,
                "extra_step_kwargs": extra_step_kwargs,
                "fps": fps,
            }
        )
        return Audio2VideoPipelineOutput(videos=video)
