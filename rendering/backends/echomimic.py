"""The `echomimic` backend: EchoMimic's accelerated audio-to-video pipeline (docs/echomimic.md).

The upstream code is imported from ECHOMIMIC_DIR and its weights read from
ECHOMIMIC_WEIGHTS_DIR once, when the worker process starts (never per task). The pipeline
is several times slower than real time even on large GPUs, so the audio is rendered in
chunks of about RENDER_SEGMENT_S: each chunk becomes a playable piece while the next one
renders. The pipeline never calls its own progress callback, so progress and cancellation
hook the scheduler's step, which runs once per denoising step.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from rendering.backends.base import (
    DEFAULT_MOUTH,
    ENCODING_PROGRESS,
    RENDERING_SHARE,
    CancelFn,
    ProgressFn,
    RenderBackend,
    RenderCancelled,
    RenderError,
    RenderResult,
    SegmentFn,
)
from rendering.media import AudioTrack, Speech, load_speech
from rendering.pieces import PieceWriter

PIPELINE_MODULE = "src/pipelines/pipeline_echo_mimic_acc.py"
INFERENCE_CONFIG = "configs/inference/inference_v2.yaml"
WEIGHTS = [
    "denoising_unet_acc.pth",
    "motion_module_acc.pth",
    "reference_unet.pth",
    "face_locator.pth",
    "audio_processor/whisper_tiny.pt",
    "sd-vae-ft-mse/config.json",
    "sd-image-variations-diffusers/unet/config.json",
]
ANY_OF = {  # weights that come as .bin or .safetensors
    "sd-vae-ft-mse/diffusion_pytorch_model": (".safetensors", ".bin"),
    "sd-image-variations-diffusers/unet/diffusion_pytorch_model": (".safetensors", ".bin"),
}
PYTHON_MODULES = ["diffusers", "omegaconf", "einops", "transformers"]
STEPS, CFG, CONTEXT_FRAMES, CONTEXT_OVERLAP, SEED = 6, 1.0, 12, 3, 420
SIZE = 512  # the accelerated weights are trained at 512×512
WHISPER_RATE = 16_000


def missing_parts() -> list[str]:
    """Everything this machine lacks to run the backend, named so a person can fix it."""
    missing: list[str] = []
    install = Path(settings.ECHOMIMIC_DIR) if settings.ECHOMIMIC_DIR else None
    weights = Path(settings.ECHOMIMIC_WEIGHTS_DIR) if settings.ECHOMIMIC_WEIGHTS_DIR else None
    if install is None:
        missing.append("ECHOMIMIC_DIR is not set")
    elif not (install / PIPELINE_MODULE).is_file():
        missing.append(
            f"ECHOMIMIC_DIR {install} has no {PIPELINE_MODULE} (clone antgroup/echomimic)"
        )
    elif not (install / INFERENCE_CONFIG).is_file():
        missing.append(f"ECHOMIMIC_DIR {install} has no {INFERENCE_CONFIG}")
    if weights is None:
        missing.append("ECHOMIMIC_WEIGHTS_DIR is not set")
    elif not weights.is_dir():
        missing.append(f"ECHOMIMIC_WEIGHTS_DIR {weights} does not exist")
    else:
        absent = [name for name in WEIGHTS if not (weights / name).is_file()]
        absent += [
            stem + suffixes[0]
            for stem, suffixes in ANY_OF.items()
            if not any((weights / (stem + s)).is_file() for s in suffixes)
        ]
        if absent:
            missing.append(f"weights missing in {weights}: {', '.join(absent)}")
    modules = [m for m in PYTHON_MODULES if importlib.util.find_spec(m) is None]
    if modules:
        missing.append(f"Python packages missing: {', '.join(modules)}")
    import torch

    if not torch.cuda.is_available() or settings.RENDER_DEVICE == "cpu":
        missing.append("a CUDA GPU (the pipeline runs in fp16 on cuda only)")
    return missing


class EchoMimicBackend(RenderBackend):
    name = "echomimic"

    @classmethod
    def check(cls) -> str | None:
        missing = missing_parts()
        return "; ".join(missing) if missing else None

    def __init__(self) -> None:
        problem = self.check()
        if problem:
            raise RenderError(f"echomimic backend cannot start: {problem}")
        self.fps = settings.RENDER_FPS
        self.segment_s = settings.RENDER_SEGMENT_S
        self.size, self._device = SIZE, "cuda"
        self._hook: Any = None
        self.pipe = self._load()

    @property
    def device(self) -> str:
        return self._device

    def _load(self) -> Any:
        """Build the upstream pipeline once: fp16 on the GPU, scheduler step hooked."""
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler
        from omegaconf import OmegaConf

        install, weights = Path(settings.ECHOMIMIC_DIR), Path(settings.ECHOMIMIC_WEIGHTS_DIR)
        if str(install) not in sys.path:
            sys.path.insert(0, str(install))
        from src.models.face_locator import FaceLocator
        from src.models.unet_2d_condition import UNet2DConditionModel
        from src.models.unet_3d_echo import EchoUNet3DConditionModel
        from src.models.whisper.audio2feature import load_audio_model
        from src.pipelines.pipeline_echo_mimic_acc import Audio2VideoPipeline

        dtype, device = torch.float16, self._device
        infer = OmegaConf.load(install / INFERENCE_CONFIG)
        base = weights / "sd-image-variations-diffusers"
        vae = AutoencoderKL.from_pretrained(weights / "sd-vae-ft-mse").to(device, dtype=dtype)
        reference = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        reference.load_state_dict(torch.load(weights / "reference_unet.pth", map_location="cpu"))
        denoising = EchoUNet3DConditionModel.from_pretrained_2d(
            base,
            weights / "motion_module_acc.pth",
            subfolder="unet",
            unet_additional_kwargs=infer.unet_additional_kwargs,
        )
        denoising.load_state_dict(
            torch.load(weights / "denoising_unet_acc.pth", map_location="cpu"), strict=False
        )
        locator = FaceLocator(320, conditioning_channels=1, block_out_channels=(16, 32, 96, 256))
        locator.load_state_dict(torch.load(weights / "face_locator.pth", map_location="cpu"))
        audio = load_audio_model(
            model_path=str(weights / "audio_processor/whisper_tiny.pt"), device=device
        )
        scheduler = DDIMScheduler(**OmegaConf.to_container(infer.noise_scheduler_kwargs))
        pipe = Audio2VideoPipeline(
            vae=vae,
            reference_unet=reference.to(device, dtype=dtype),
            denoising_unet=denoising.to(device, dtype=dtype),
            audio_guider=audio,
            face_locator=locator.to(device, dtype=dtype),
            scheduler=scheduler,
        ).to(device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        self.hook_scheduler(scheduler)
        return pipe

    def hook_scheduler(self, scheduler: Any) -> None:
        """Wrap the scheduler's step, which the pipeline calls once per denoising step: the
        hook that reports progress and stops a cancelled render."""
        step = scheduler.step

        def hooked_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            if self._hook is not None:
                self._hook()
            return out

        scheduler.step = hooked_step

    def _face_mask(self, mouth: tuple[float, float]) -> Any:
        """The face region the pipeline animates, estimated from the avatar's mouth."""
        import torch

        mx, my = mouth
        size = self.size
        mask = torch.zeros(size, size)
        x0, x1 = int(max(0.0, mx - 0.25) * size), int(min(1.0, mx + 0.25) * size)
        y0, y1 = int(max(0.0, my - 0.45) * size), int(min(1.0, my + 0.18) * size)
        mask[y0:y1, x0:x1] = 1.0
        dtype = torch.float16 if self._device == "cuda" else torch.float32
        return mask.to(self._device, dtype=dtype)[None, None, None]

    def render(
        self,
        image_path: Path,
        audio_path: Path,
        out_dir: Path,
        progress: ProgressFn,
        on_segment: SegmentFn,
        should_cancel: CancelFn,
        *,
        mouth: tuple[float, float] = DEFAULT_MOUTH,
        face: dict | None = None,
    ) -> RenderResult:
        import torch
        from PIL import Image, UnidentifiedImageError

        from rendering.backends.lite import rgb_frames_to_i420

        started = time.perf_counter()
        try:
            with Image.open(image_path) as image:
                reference = image.convert("RGB").resize(
                    (self.size, self.size), Image.Resampling.LANCZOS
                )
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise RenderError(
                f"avatar image {Path(image_path).name} cannot be read: {exc}"
            ) from None
        speech = load_speech(audio_path)
        frames = speech.frame_count(self.fps)
        out_dir.mkdir(parents=True, exist_ok=True)
        audio = AudioTrack(speech)
        chunk = max(CONTEXT_FRAMES, round(self.segment_s * self.fps))
        spans = [(s, min(s + chunk, frames)) for s in range(0, frames, chunk)]
        total_steps, done_steps = len(spans) * STEPS, 0
        mask = self._face_mask(mouth)

        def step_done() -> None:
            nonlocal done_steps
            done_steps += 1
            progress(RENDERING_SHARE * done_steps / total_steps, "rendering")
            if should_cancel():
                raise RenderCancelled()

        writer = PieceWriter(
            out_dir,
            self.size,
            self.size,
            self.fps,
            chunk,
            audio,
            lambda p: on_segment(p.path, p.index, p.start_ms, p.duration_ms),
        )
        self._hook = step_done
        try:
            for start, end in spans:
                wav = self._chunk_wav(speech, start, end, out_dir)
                video = self.pipe(
                    reference,
                    str(wav),
                    mask,
                    self.size,
                    self.size,
                    end - start,
                    STEPS,
                    CFG,
                    generator=torch.manual_seed(SEED),
                    audio_sample_rate=WHISPER_RATE,
                    context_frames=CONTEXT_FRAMES,
                    context_overlap=CONTEXT_OVERLAP,
                    fps=self.fps,
                ).videos  # (1, 3, f, h, w) in [0, 1]
                clip = video[0].permute(1, 0, 2, 3)
                if clip.shape[0] < end - start:  # whisper may give a frame less: hold the last
                    pad = clip[-1:].expand(end - start - clip.shape[0], -1, -1, -1)
                    clip = torch.cat([clip, pad])
                for i420 in rgb_frames_to_i420(clip[: end - start]):
                    writer.write(i420)
            progress(ENCODING_PROGRESS, "encoding")
            result_path = writer.finish(out_dir / "video.mp4")
        except BaseException:
            writer.abort()
            raise
        finally:
            self._hook = None
            audio.close()
        return RenderResult(
            video=result_path,
            duration_ms=round(frames * 1000 / self.fps),
            frames=frames,
            width=self.size,
            height=self.size,
            segments=[p.path for p in writer.pieces],
            timings={"total_ms": round((time.perf_counter() - started) * 1000, 1)},
        )

    def _chunk_wav(self, speech: Speech, start: int, end: int, out_dir: Path) -> Path:
        """The audio of frames [start, end) as 16 kHz PCM WAV, what the whisper encoder reads."""
        import wave

        lo, hi = (round(f * speech.rate / self.fps) for f in (start, end))
        part = speech.samples[lo:hi]
        idx = np.linspace(0, len(part) - 1, max(1, round(len(part) * WHISPER_RATE / speech.rate)))
        pcm = np.interp(idx, np.arange(len(part)), part) if len(part) else np.zeros(1)
        path = out_dir / f"chunk-{start:06d}.wav"
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(WHISPER_RATE)
            handle.writeframes((np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes())
        return path
