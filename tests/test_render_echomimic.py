"""The `echomimic` backend: its own work around the upstream pipeline (chunks, per-step progress,
cancellation, segments) with a minimal pipeline, and its loading and call path against a stand-in
of the upstream clone (tests/fakes/echomimic: upstream's module paths and signatures, tiny
weights made here), so that an import path, signature or weight layout that does not match
upstream fails here, on a CPU."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from rendering.backends.base import RenderCancelled
from rendering.backends.echomimic import EchoMimicBackend, missing_parts
from tests.audio import read_wav, speak

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "avatars" / "aria.png"
ASTRA = ROOT / "fixtures" / "avatars" / "astra.png"
STANDIN = Path(__file__).resolve().parent / "fakes" / "echomimic"
STEPS = 6
NO_GPU = "a CUDA GPU (the pipeline runs in fp16 on cuda only)"


class StandInScheduler:
    def step(self, *args: Any, **kwargs: Any) -> None:
        return None


class StandInPipeline:
    """Called like Audio2VideoPipeline: steps the scheduler, returns a video one frame short
    (as Whisper's chunking can), values in [0, 1] as (1, 3, frames, h, w)."""

    def __init__(self) -> None:
        self.scheduler = StandInScheduler()
        self.calls: list[tuple[Any, int]] = []

    def __call__(
        self, ref: Any, audio: Any, mask: Any, w: int, h: int, length: int, *a: Any, **k: Any
    ) -> Any:
        self.calls.append((audio, length))
        for _ in range(STEPS):
            self.scheduler.step()
        return type("Output", (), {"videos": torch.rand(1, 3, max(1, length - 1), h, w)})()


def backend() -> EchoMimicBackend:
    """The backend without its models: what __init__ does after loading, on the CPU."""
    instance = EchoMimicBackend.__new__(EchoMimicBackend)
    instance.configure("cpu", size=64)
    instance.pipe = StandInPipeline()
    instance.hook_scheduler(instance.pipe.scheduler)
    return instance


def test_renders_in_chunks_with_per_step_progress_and_pieces(tmp_path: Path) -> None:
    wav = speak("One chunk after another, while the rest still renders.")
    pcm, rate = read_wav(wav)
    progress: list[tuple[float, str]] = []
    segments: list[int] = []
    renderer = backend()
    result = renderer.render(
        FIXTURE,
        wav,
        tmp_path,
        lambda p, s: progress.append((p, s)),
        lambda path, index, *rest: segments.append(index),
        lambda: False,
    )
    chunks = -(-result.frames // 50)
    assert [length for _, length in renderer.pipe.calls][:-1] == [50] * (chunks - 1)
    assert segments == list(range(chunks))
    rendering = [p for p, s in progress if s == "rendering"]
    assert len(rendering) == chunks * STEPS and rendering == sorted(rendering)
    assert rendering[-1] == pytest.approx(90) and progress[-1] == (95.0, "encoding")
    with av.open(str(result.video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert container.streams.audio
    assert frames == result.frames and abs(frames / 25 - len(pcm) / rate) <= 1 / 25
    # the speech goes in as 16 kHz float samples, 640 per frame, not as a file
    audio = [a for a, _ in renderer.pipe.calls]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in audio)
    assert abs(sum(len(a) for a in audio) - len(pcm) * 16000 / rate) <= 640


def test_cancel_stops_within_a_denoising_step(tmp_path: Path) -> None:
    steps: list[float] = []
    renderer = backend()
    with pytest.raises(RenderCancelled):
        renderer.render(
            FIXTURE,
            speak("Stop me after a few steps, please."),
            tmp_path,
            lambda p, s: steps.append(p),
            lambda *a: None,
            lambda: len(steps) >= 3,
        )
    assert len(steps) == 3 and len(renderer.pipe.calls) == 1


# --- against the stand-in of the upstream clone -------------------------------------------


def upstream(module: str) -> Any:
    if str(STANDIN) not in sys.path:
        sys.path.insert(0, str(STANDIN))
    return importlib.import_module(module)


def make_weights(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny random weights in upstream's file layout; returns what each file holds."""
    from diffusers import AutoencoderKL

    unet2d = upstream("src.models.unet_2d_condition").UNet2DConditionModel
    unet3d = upstream("src.models.unet_3d_echo").EchoUNet3DConditionModel
    locator = upstream("src.models.face_locator").FaceLocator
    whisper = upstream("src.models.whisper.whisper.model")
    torch.manual_seed(1)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ).save_pretrained(root / "sd-vae-ft-mse")
    unet2d(block_out_channels=(8,)).save_pretrained(root / "sd-image-variations-diffusers/unet")
    saved = {
        "reference_unet.pth": unet2d(block_out_channels=(8,)).state_dict(),
        "face_locator.pth": locator(320, 1, (16, 32, 96, 256)).state_dict(),
    }
    echo = unet3d(block_out_channels=(8,), cross_attention_dim=384, use_motion_module=True)
    state = echo.state_dict()
    saved["motion_module_acc.pth"] = {k: v for k, v in state.items() if k.startswith("motion.")}
    saved["denoising_unet_acc.pth"] = {
        k: v for k, v in state.items() if k not in saved["motion_module_acc.pth"]
    }
    for name, tensors in saved.items():
        torch.save(tensors, root / name)
    dims = whisper.ModelDimensions(n_mels=80, n_audio_state=384, n_audio_layer=4)
    model = whisper.Whisper(dims)
    (root / "audio_processor").mkdir()
    checkpoint = {"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}
    torch.save(checkpoint, root / "audio_processor/whisper_tiny.pt")
    saved["audio_processor/whisper_tiny.pt"] = model.state_dict()
    return saved


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The backend loaded from the stand-in clone and the weights, as a worker loads it."""
    from django.conf import settings

    weights = tmp_path_factory.mktemp("weights")
    saved = make_weights(weights)
    before = settings.ECHOMIMIC_DIR, settings.ECHOMIMIC_WEIGHTS_DIR
    settings.ECHOMIMIC_DIR, settings.ECHOMIMIC_WEIGHTS_DIR = str(STANDIN), str(weights)
    try:
        problems = missing_parts()
        renderer = EchoMimicBackend.__new__(EchoMimicBackend)
        renderer.configure("cpu", size=64)
        renderer.pipe = renderer._load()
    finally:
        settings.ECHOMIMIC_DIR, settings.ECHOMIMIC_WEIGHTS_DIR = before
    return renderer, saved, problems


def test_stand_in_clone_and_weights_leave_only_the_gpu_missing(loaded: Any) -> None:
    _, _, problems = loaded
    assert problems == [NO_GPU] or problems == []


def test_every_weight_file_is_loaded_into_its_model(loaded: Any) -> None:
    renderer, saved, _ = loaded
    pipe = renderer.pipe
    models = {
        "reference_unet.pth": pipe.reference_unet,
        "face_locator.pth": pipe.face_locator,
        "denoising_unet_acc.pth": pipe.denoising_unet,
        "motion_module_acc.pth": pipe.denoising_unet,
        "audio_processor/whisper_tiny.pt": pipe.audio_guider.model,
    }
    for name, model in models.items():
        state = model.state_dict()
        for key, tensor in saved[name].items():
            assert torch.equal(state[key].cpu(), tensor), f"{name}: {key} not loaded"


def test_hooked_step_keeps_the_schedulers_signature(loaded: Any) -> None:
    renderer, _, _ = loaded
    parameters = inspect.signature(renderer.pipe.scheduler.step).parameters
    assert "eta" in parameters and "generator" in parameters


def test_upstream_whisper_cannot_take_a_file_path_without_ffmpeg(loaded: Any) -> None:
    """What the backend avoids: given a path, upstream's Whisper runs the ffmpeg program."""
    renderer, _, _ = loaded
    with pytest.raises(FileNotFoundError):
        renderer.pipe.audio_guider.audio2feat(str(speak("A path, not samples.")))


def test_renders_the_photo_as_its_face_crop_with_a_mask_from_the_landmarks(
    loaded: Any, tmp_path: Path
) -> None:
    renderer, _, _ = loaded
    astra = next(
        e for e in json.loads((ROOT / "fixtures/avatars.json").read_text()) if e["slug"] == "astra"
    )
    wav = speak("Bob bought a big map, and a bat.")
    pcm, rate = read_wav(wav)
    renderer.pipe.calls.clear()
    segments: list[int] = []
    result = renderer.render(
        ASTRA,
        wav,
        tmp_path,
        lambda p, s: None,
        lambda path, index, *rest: segments.append(index),
        lambda: False,
        mouth=(astra["mouth_x"], astra["mouth_y"]),
        face=astra["face"],
    )
    calls = renderer.pipe.calls
    assert len(calls) == len(segments) == -(-result.frames // 50)
    for call in calls:
        # the pipeline passed eta and generator on to the real DDIM step
        assert set(call["extra_step_kwargs"]) == {"eta", "generator"}
        assert isinstance(call["audio"], np.ndarray) and call["audio"].dtype == np.float32
        assert call["ref_image"].size == (64, 64) and call["size"] == (64, 64)
    # the audio given is the speech itself at 16 kHz
    given = np.concatenate([c["audio"] for c in calls])
    assert abs(len(given) - len(pcm) * 16000 / rate) <= 640
    rms = float(np.sqrt(np.mean(given**2)))
    spoken = pcm.astype(np.float64) / 32768  # the 16-bit samples of the WAV file
    assert rms == pytest.approx(float(np.sqrt(np.mean(spoken**2))), rel=0.1)
    # the portrait goes in as the square face crop (the stored avatar is one already)
    with Image.open(ASTRA) as image:
        expected = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
    reference = np.asarray(calls[0]["ref_image"], dtype=np.float32)
    assert np.abs(reference - expected).mean() < 4
    # the mask covers the face the landmarks outline, and not the background
    mask = calls[0]["face_mask"]
    assert tuple(mask.shape) == (1, 1, 1, 64, 64)
    plane = mask[0, 0, 0].numpy()
    face = astra["face"]["points"]
    for name in ("mouth_outer", "left_eye", "right_eye", "jaw"):
        for x, y in face[name]:
            assert plane[min(63, int(y * 64)), min(63, int(x * 64))] == 1.0, name
    assert plane[0, 0] == plane[0, 63] == plane[63, 0] == plane[63, 63] == 0.0
    assert 0.15 < plane.mean() < 0.6
    with av.open(str(result.video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == result.frames


def test_a_drawing_without_landmarks_goes_in_as_a_square_not_stretched(
    loaded: Any, tmp_path: Path
) -> None:
    renderer, _, _ = loaded
    wide = Image.new("RGB", (300, 100), (200, 40, 40))  # red, with a blue square on the right
    wide.paste((40, 40, 200), (200, 0, 300, 100))
    path = tmp_path / "wide.png"
    wide.save(path)
    renderer.pipe.calls.clear()
    renderer.render(
        path,
        speak("Hello."),
        tmp_path / "out",
        lambda p, s: None,
        lambda *a: None,
        lambda: False,
        mouth=(0.83, 0.7),  # the mouth point lies in the blue square
    )
    reference = np.asarray(renderer.pipe.calls[0]["ref_image"], dtype=np.float32)
    assert reference[..., 2].mean() > 150 and reference[..., 0].mean() < 80  # all blue
    mask = renderer.pipe.calls[0]["face_mask"][0, 0, 0].numpy()
    assert mask[int(0.7 * 64), int(0.5 * 64)] == 1.0  # round the mouth, in the crop's middle


def test_check_renderer_names_each_missing_module_of_the_import_chain(
    settings: Any, tmp_path: Path
) -> None:
    clone = tmp_path / "echomimic"
    shutil.copytree(STANDIN, clone)
    audio = clone / "src/models/whisper/whisper/audio.py"
    audio.write_text(
        audio.read_text().replace(
            "import ffmpeg\n",
            "import ffmpeg\nimport cv2\nimport not_a_module_anywhere\n"
            "if False:\n    import xformers\n",
        )
    )
    settings.RENDER_BACKEND = "echomimic"
    settings.ECHOMIMIC_DIR = str(clone)
    settings.ECHOMIMIC_WEIGHTS_DIR = str(tmp_path / "weights")
    with pytest.raises(CommandError) as info:
        call_command("check_renderer")
    line = str(info.value)
    assert "\n" not in line
    assert "opencv-python (module cv2)" in line and "not_a_module_anywhere" in line
    assert "xformers" not in line  # optional imports upstream guards are not required
    assert "ffmpeg" not in line  # ffmpeg-python is installed here (requirements/dev.txt)
