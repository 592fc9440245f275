"""The `lite` backend renders a real espeak-ng utterance into a playable talking-head MP4."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from rendering.backends.base import RenderCancelled, RenderError
from rendering.backends.lite import LiteBackend, select_device
from tests.audio import read_wav, speak, write_wav

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "avatars" / "aria.png"
SENTENCE = "Hello! I am Aria. Where shall we travel this summer?"


def noop(*args: object) -> None:
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 512×512 render of a real utterance, with the events the backend reported."""
    out = tmp_path_factory.mktemp("lite")
    wav = speak(SENTENCE)
    progress: list[tuple[float, str]] = []
    segments: list[tuple[Path, int, int, int]] = []
    result = LiteBackend().render(
        FIXTURE,
        wav,
        out,
        lambda p, s: progress.append((p, s)),
        lambda *seg: segments.append(seg),
        lambda: False,
        mouth=(0.5, 0.7),
    )
    return {"result": result, "wav": wav, "progress": progress, "segments": segments}


def decode(path: Path) -> tuple[list[np.ndarray], av.container.InputContainer]:
    container = av.open(str(path))
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames, container


def test_video_has_h264_and_aac_at_25_fps_and_the_audio_length(rendered: dict) -> None:
    pcm, rate = read_wav(rendered["wav"])
    audio_s = len(pcm) / rate
    with av.open(str(rendered["result"].video)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert video.average_rate == 25
        assert (video.width, video.height) == (512, 512)
        duration_s = container.duration / 1e6
        frames = sum(1 for _ in container.decode(video=0))
    assert abs(frames / 25 - audio_s) <= 1 / 25
    assert abs(duration_s - audio_s) <= 1 / 25
    assert rendered["result"].duration_ms == round(frames * 1000 / 25)


def test_mouth_opens_on_loud_syllables_and_closes_in_silence(rendered: dict) -> None:
    pcm, rate = read_wav(rendered["wav"])
    frames, container = decode(rendered["result"].video)
    container.close()
    hop = rate // 25
    level = np.array(
        [
            np.sqrt(np.mean(pcm[i * hop : (i + 1) * hop].astype(float) ** 2))
            for i in range(len(frames))
        ]
    )
    around = np.array([level[max(0, i - 3) : i + 4].max() for i in range(len(frames))])
    silent = np.flatnonzero(around < 0.02 * level.max())
    loud = np.argsort(level)[-8:]
    assert len(silent) >= 3, "the utterance should have pauses"

    def mouth_area(i: int) -> int:
        """Pixels of the dark red lips or the dark inside of the mouth below the nose (aria's
        mouth is at (0.5, 0.7))."""
        region = frames[i][320:440, 170:340].astype(int)
        red = (region[..., 0] > 100) & (region[..., 1] < 80) & (region[..., 2] < 90)
        cavity = (region.max(axis=-1) < 70) & (region[..., 1] < 35)  # not the brown hair
        return int((red | cavity).sum())

    assert np.mean([mouth_area(i) for i in loud]) > 1.3 * np.mean([mouth_area(i) for i in silent])
    loud_frame, silent_frame = frames[loud[-1]].astype(int), frames[silent[0]].astype(int)
    assert np.abs(loud_frame - silent_frame)[320:440, 170:340].mean() > 2.0


def test_pieces_are_independently_playable_and_cover_the_video(rendered: dict) -> None:
    segments = rendered["segments"]
    total = rendered["result"].frames
    assert len(segments) == -(-total // 50)  # ~2 s segments
    start = 0
    for index, (path, seg_index, start_ms, duration_ms) in enumerate(segments):
        assert seg_index == index and start_ms == start * 40
        with av.open(str(path)) as container:
            assert container.streams.audio and container.streams.video
            first = next(container.demux(video=0))
            assert first.is_keyframe
        with av.open(str(path)) as container:
            count = sum(1 for _ in container.decode(video=0))
        assert duration_ms == count * 40
        start += count
    assert start == total


def test_progress_never_decreases_and_ends_encoding(rendered: dict) -> None:
    values = [p for p, _ in rendered["progress"]]
    assert values == sorted(values) and 0 <= values[0] and values[-1] <= 100
    assert rendered["progress"][-1][1] == "encoding"
    assert {s for _, s in rendered["progress"]} <= {"rendering", "encoding"}


def test_cancel_stops_within_one_segment(tmp_path: Path) -> None:
    segments: list[int] = []
    with pytest.raises(RenderCancelled):
        LiteBackend().render(
            FIXTURE,
            speak(SENTENCE),
            tmp_path,
            noop,
            lambda path, index, *rest: segments.append(index),
            lambda: bool(segments),
        )
    assert segments == [0]
    assert not (tmp_path / "video.mp4").exists()


@pytest.mark.parametrize("problem", ["missing image", "corrupt audio", "empty audio", "no image"])
def test_bad_inputs_raise_a_clear_render_error(tmp_path: Path, problem: str) -> None:
    image, audio = FIXTURE, speak("Hi.")
    if problem == "missing image":
        image = tmp_path / "gone.png"
    elif problem == "no image":
        image = tmp_path / "text.png"
        image.write_text("not an image")
    elif problem == "corrupt audio":
        audio = tmp_path / "noise.wav"
        audio.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    else:
        audio = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)
    with pytest.raises(RenderError) as info:
        LiteBackend().render(image, audio, tmp_path / "out", noop, noop, lambda: False)
    assert not info.value.retryable
    expected = {"missing image": "not found", "no image": "cannot be read"}
    expected |= {"corrupt audio": "cannot be decoded", "empty audio": "empty"}
    assert expected[problem] in info.value.message


def test_device_is_cuda_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RenderError):
            select_device("cuda")
