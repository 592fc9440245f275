"""Lip sync measured without a human: a face-landmark model reads the rendered frames.

The reply audio is made the way the product makes it (the offline TTS provider speaking each
sentence, stored as a WAV); the `lite` renderer animates a drawn avatar (no landmarks: the
face is synthesised from its mouth point) and a real photograph (the Astra fixture: NASA's
portrait of Eileen Collins that scikit-image ships, cropped to her face by the admin's code,
rendered with the landmarks stored with it). tests.face_mesh says which landmark model
measured the mouth (detector_name).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from chat.audio import pcm_to_wav
from chat.providers.tts.espeak import EspeakTTS
from rendering.backends.lite import LiteBackend, face_layout
from rendering.backends.phonemes import Phone, espeak_alignment
from rendering.backends.visemes import from_phones, phone_target
from rendering.backends.warp import Layout
from tests.audio import read_wav, resample, write_wav
from tests.face_mesh import JAW, NOSE, face_box, find_face, opening

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ARIA = FIXTURES / "avatars" / "aria.png"
ASTRA = FIXTURES / "avatars" / "astra.png"
SENTENCES = ["Bob bought a big map.", "Mom made a pop ballad."]  # rich in bilabials
FPS = 25
# The mouth cannot follow loudness exactly: m and b are loud with the lips shut, and the
# opening leads the sound. Measured 0.55-0.76 on these renders; the same measure against the
# envelope half a second away (a mouth that does not follow this speech) is below 0.
MIN_CORRELATION = 0.45
MIN_MARGIN = 0.4
RINGS = ("mouth_outer", "mouth_inner", "left_eye", "right_eye", "jaw", "nose")


def noop(*args: object) -> None:
    return None


def stored_face(slug: str) -> dict:
    """The `face` JSON fixtures/avatars.json stores with an avatar (what the render task passes)."""
    entries = json.loads((FIXTURES / "avatars.json").read_text())
    return next(e for e in entries if e["slug"] == slug)["face"]


@pytest.fixture(scope="module")
def reply_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reply as the speech pipeline stores it: the espeak provider, sentence by sentence."""

    async def speak() -> bytes:
        tts, pcm = EspeakTTS(timeout_s=20), bytearray()
        for sentence in SENTENCES:
            async for chunk in tts.stream(sentence, "en-us", "en-US"):
                pcm.extend(chunk)
        return bytes(pcm)

    path = tmp_path_factory.mktemp("lipsync") / "reply.wav"
    path.write_bytes(pcm_to_wav(asyncio.run(speak()), EspeakTTS.sample_rate))
    return path


@pytest.fixture(scope="module")
def phones(reply_wav: Path) -> list[Phone]:
    found = espeak_alignment(reply_wav, SENTENCES, "en-us")
    assert found, "the espeak reply's phonemes should be found"
    return found


@pytest.fixture(scope="module", params=["aria", "astra"])
def avatar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The portrait, its landmarks as measured, and the `face` JSON the renderer gets."""
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "aria":
        path, search, face = ARIA, (110, 130, 400, 420), None
    else:
        path, search, face = ASTRA, (0, 0, 512, 512), stored_face("astra")
    portrait = np.asarray(Image.open(path).convert("RGB"))
    points = find_face(portrait, search)
    return {
        "name": request.param,
        "path": path,
        "portrait": portrait,
        "points": points,
        "box": face_box(points),
        "face": face,
        "dir": directory,
    }


def render(avatar: dict, wav: Path, phonemes: list[Phone] | None, name: str) -> list[np.ndarray]:
    out = avatar["dir"] / name
    result = LiteBackend().render(
        avatar["path"], wav, out, noop, noop, lambda: False, face=avatar["face"], phonemes=phonemes
    )
    with av.open(str(result.video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def with_phonemes(avatar: dict, reply_wav: Path, phones: list[Phone]) -> np.ndarray:
    """Mouth opening per frame of the render that knows the phonemes."""
    frames = render(avatar, reply_wav, phones, "phones")
    return np.array([opening(frame, avatar["box"]) for frame in frames])


@pytest.fixture(scope="module")
def audio_only(avatar: dict, reply_wav: Path) -> np.ndarray:
    """Mouth opening per frame of the render that has only the audio (as for CosyVoice)."""
    frames = render(avatar, reply_wav, None, "audio")
    return np.array([opening(frame, avatar["box"]) for frame in frames])


def envelope(wav: Path, frames: int) -> np.ndarray:
    pcm, rate = read_wav(wav)
    hop = rate / FPS
    level = np.array(
        [
            np.sqrt(np.mean(pcm[int(i * hop) : int((i + 1) * hop)].astype(float) ** 2))
            for i in range(frames)
        ]
    )
    return np.convolve(level, np.ones(3) / 3, mode="same")


def follows(opened: np.ndarray, level: np.ndarray) -> tuple[float, float]:
    """Correlation with the envelope, and the best one with it half a second either way."""
    shift = FPS // 2
    here = float(np.corrcoef(opened, level)[0, 1])
    away = max(float(np.corrcoef(opened, np.roll(level, k))[0, 1]) for k in (-shift, shift))
    return here, away


def test_mouth_opening_follows_the_speech_with_phonemes(
    with_phonemes: np.ndarray, reply_wav: Path
) -> None:
    here, away = follows(with_phonemes, envelope(reply_wav, len(with_phonemes)))
    assert here > MIN_CORRELATION and here - away > MIN_MARGIN, (here, away)


def test_mouth_opening_follows_the_speech_from_the_audio_alone(
    audio_only: np.ndarray, reply_wav: Path
) -> None:
    here, away = follows(audio_only, envelope(reply_wav, len(audio_only)))
    assert here > MIN_CORRELATION and here - away > MIN_MARGIN, (here, away)


def at(opened: np.ndarray, phone: Phone) -> float:
    return float(opened[min(len(opened) - 1, int((phone.start_s + phone.end_s) / 2 * FPS))])


def test_lips_close_on_bilabials(
    with_phonemes: np.ndarray, audio_only: np.ndarray, phones: list[Phone]
) -> None:
    bilabials = [p for p in phones if p.symbol[0] in "bmp"]
    vowels = [p for p in phones if p.symbol[0] in "aA0O"]
    assert len(bilabials) >= 8 and len(vowels) >= 4
    closed = np.mean([at(with_phonemes, p) for p in bilabials])
    opened = np.mean([at(with_phonemes, p) for p in vowels])
    rest = with_phonemes[-1]  # the pause at the end: the portrait's own mouth
    assert closed <= 0.7 * opened, (closed, opened)
    assert closed <= rest + 0.02, (closed, rest)
    # the measure tells them apart: guessed from the audio alone, the lips stay apart there
    assert np.mean([at(audio_only, p) for p in bilabials]) > closed + 0.03


def test_speech_moves_nothing_outside_the_mouth_region(
    avatar: dict, reply_wav: Path, phones: list[Phone]
) -> None:
    """Against the same avatar rendered for silence of the same length (same sway, breath and
    blinks): only the lower face, from the nose down to below the chin, may differ."""
    pcm, rate = read_wav(reply_wav)
    silence = write_wav(avatar["dir"] / "silence.wav", np.zeros(len(pcm), np.int16), rate)
    speaking = render(avatar, reply_wav, phones, "speaking")
    quiet = render(avatar, silence, None, "quiet")
    points = avatar["points"]
    jaw = points[JAW]
    width = np.ptp(points[[61, 291], 0])
    ys, xs = np.mgrid[:512, :512]
    mouth_region = (
        (xs >= jaw[:, 0].min())
        & (xs <= jaw[:, 0].max())
        & (ys >= points[NOSE, 1].max())
        & (ys <= jaw[:, 1].max() + 0.8 * width)
    )

    def blocks(frame: np.ndarray) -> np.ndarray:
        """4×4 block means: the encoder's noise differs between two videos, blocks less."""
        means = frame.astype(float).reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
        return means.repeat(4, axis=0).repeat(4, axis=1)

    outside, inside = [], []
    for a, b in zip(speaking, quiet, strict=True):
        diff = np.abs(blocks(a) - blocks(b)).mean(axis=-1)
        outside.append(diff[~mouth_region].mean())
        inside.append(diff[mouth_region].mean())
    assert max(outside) < 1.5, max(outside)
    assert max(inside) > 8 * max(outside)  # the mouth did move


def test_visemes_blend_without_popping(phones: list[Phone]) -> None:
    frames = int(phones[-1].end_s * FPS) + 1
    shapes = from_phones(phones, frames, FPS, np.ones(frames))
    steps = np.abs(np.diff(shapes, axis=0)).max(axis=0)
    # no field jumps across its whole range in one frame (40 ms)
    assert (steps < 0.75).all(), steps
    assert shapes[:, 0].max() > 0.6 and shapes[:, 2].max() > 0.8  # yet it opens and seals


def test_phoneme_classes_map_to_the_six_visemes() -> None:
    def shape(symbol: str) -> np.ndarray:
        return phone_target(symbol)[0]

    assert shape("b")[2] == 1 and shape("m")[0] == 0  # closed
    assert shape("u:")[1] < -0.5 and shape("w")[1] < -0.5  # rounded
    assert shape("i:")[1] > 0.5  # spread
    assert shape("a")[0] == 1  # open
    assert shape("f")[3] == 1 and shape("v")[3] == 1  # teeth
    assert shape("_")[0] < 0.1  # rest
    assert phone_target("(en)")[1] == 0  # espeak-ng's language switch pulls nowhere


def test_phonemes_only_for_the_espeak_speech_they_belong_to(
    reply_wav: Path, phones: list[Phone], tmp_path: Path
) -> None:
    symbols = [p.symbol for p in phones]
    assert symbols[:3] == ["b", "0", "b"]
    assert [s for s in symbols if s in ("b", "m", "p")].count("m") >= 3
    assert all(b.start_s >= a.start_s for a, b in zip(phones, phones[1:], strict=False))
    pcm, rate = read_wav(reply_wav)
    assert abs(phones[-1].end_s - len(pcm) / rate) < 0.02
    # another text, another voice, the same speech resampled (an upload): no phonemes
    assert espeak_alignment(reply_wav, ["Bob bought a big mop.", SENTENCES[1]], "en-us") is None
    assert espeak_alignment(reply_wav, SENTENCES, "en-gb") is None
    other = write_wav(tmp_path / "upload.wav", resample(pcm, rate, 24000), 24000)
    assert espeak_alignment(other, SENTENCES, "en-us") is None


GOOD_RING = [[0.4, 0.7], [0.5, 0.68], [0.6, 0.7], [0.5, 0.72]]
BAD_FACES = [
    {"version": 1},
    {"points": {"mouth_outer": [[0.5, 0.7]]}},
    {"points": "mouth"},
    {"points": dict.fromkeys(("mouth_outer", "mouth_inner", "jaw"), GOOD_RING)},
    {"points": dict.fromkeys(RINGS, [[0.5, 0.7], [0.5, float("nan")], [0.6, 0.7]])},
    {"points": dict.fromkeys(RINGS, [[0.5, 0.7], [0.5, 0.71], [0.5, 0.72]])},
    {"points": dict.fromkeys(RINGS, [[0.4, 0.7], [1e9, 0.7], [0.6, 0.7]])},
    {"points": dict.fromkeys(RINGS, [["a", "b"], [0.5, 0.7], [0.6, 0.7]])},
]


@pytest.mark.parametrize("face", BAD_FACES)
def test_bad_landmarks_are_refused_and_the_mouth_point_used(face: dict) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        Layout.from_face(face, 512, 512)
    layout = face_layout(face, (0.5, 0.7), 512, 512)
    assert np.allclose(layout.mouth_centre, [256, 358], atol=4)  # around the mouth point


def test_unusable_landmarks_fall_back_to_the_mouth_point(tmp_path: Path) -> None:
    wav = write_wav(
        tmp_path / "tone.wav",
        (8000 * np.sin(np.linspace(0, 2000, 16000))).astype(np.int16),
        16000,
    )
    broken = {"version": 1, "points": {"mouth_outer": [[0.5, 0.7]]}}
    result = LiteBackend().render(
        ARIA, wav, tmp_path / "out", noop, noop, lambda: False, face=broken
    )
    assert result.frames == 25


def test_render_task_gives_the_renderer_the_phonemes_of_an_espeak_reply(
    video_session: object, reply_wav: Path, settings: object
) -> None:
    """What the render worker does with a stored reply (the WAV of the offline TTS)."""
    from rendering.tasks import _espeak_phonemes
    from tests.fixtures_rendering import make_reply

    settings.TTS_BACKEND = "espeak"  # type: ignore[attr-defined]
    spoken = make_reply(video_session, reply_wav, text=" ".join(SENTENCES))
    found = _espeak_phonemes(spoken, reply_wav)
    assert found and [p.symbol for p in found[:3]] == ["b", "0", "b"]
    other = make_reply(video_session, reply_wav, text="Something else entirely.")
    assert _espeak_phonemes(other, reply_wav) is None
    settings.TTS_BACKEND = "dashscope"  # type: ignore[attr-defined]
    assert _espeak_phonemes(spoken, reply_wav) is None


def test_a_reply_in_the_avatars_own_espeak_voice_gets_its_phonemes_too(
    video_session: object, tmp_path: Path, settings: object
) -> None:
    """An avatar with its own espeak-ng voice, rate and pitch: the render worker times the
    phonemes of the reply as it was spoken, not of the language's default voice."""
    from avatars.voices import speaking_voice
    from rendering.tasks import _espeak_phonemes
    from tests.fixtures_rendering import make_reply

    settings.TTS_BACKEND = "espeak"  # type: ignore[attr-defined]
    avatar = video_session.avatar  # type: ignore[attr-defined]
    avatar.espeak_voice, avatar.espeak_rate, avatar.espeak_pitch = "en-us+f3", 230, 70
    avatar.save()

    async def speak() -> bytes:
        tts, voice, pcm = EspeakTTS(timeout_s=20), speaking_voice(avatar), bytearray()
        for sentence in SENTENCES:
            async for chunk in tts.stream(sentence, voice, "en-US"):
                pcm.extend(chunk)
        return bytes(pcm)

    wav = tmp_path / "own-voice.wav"
    wav.write_bytes(pcm_to_wav(asyncio.run(speak()), EspeakTTS.sample_rate))
    spoken = make_reply(video_session, wav, text=" ".join(SENTENCES))
    found = _espeak_phonemes(spoken, wav)
    assert found and [p.symbol for p in found[:3]] == ["b", "0", "b"]
    pcm, rate = read_wav(wav)
    assert abs(found[-1].end_s - len(pcm) / rate) < 0.02  # timed to this faster speech
    # the default voice's timing does not fit this audio: no phonemes rather than wrong ones
    assert espeak_alignment(wav, SENTENCES, "en-us") is None


def count_phones(wav: str) -> int | None:
    found = espeak_alignment(Path(wav), SENTENCES, "en-us")
    return None if found is None else len(found)


def test_phonemes_are_found_inside_a_celery_pool_process(reply_wav: Path, phones: list) -> None:
    """Celery's prefork pool processes are daemonic: they may not use multiprocessing."""
    import billiard

    with billiard.Pool(1) as pool:
        assert pool.map(count_phones, [str(reply_wav)]) == [len(phones)]


def vowel(formants: list[float], seconds: float, rate: int = 48_000) -> np.ndarray:
    """A voiced sound at 120 Hz whose harmonics are loud near `formants`."""
    t = np.arange(int(seconds * rate)) / rate
    out = np.zeros_like(t)
    for k in range(1, 40):
        f = 120.0 * k
        gain = sum(np.exp(-(((f - fm) / 120.0) ** 2)) for fm in formants)
        out += gain * np.sin(2 * np.pi * f * t)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def test_audio_alone_tells_rounded_from_spread_and_closes_on_short_gaps() -> None:
    from rendering.backends.visemes import from_audio
    from rendering.media import Speech, loudness

    rate = 48_000
    oo, ee = vowel([300, 700], 0.5), vowel([300, 2300, 3000], 0.5)
    gap = np.zeros(int(0.08 * rate), np.float32)
    samples = np.concatenate([oo, gap, ee])
    speech = Speech(samples)
    frames = speech.frame_count(FPS)
    shapes = from_audio(speech, frames, FPS, loudness(speech, FPS, frames))
    spread = shapes[:, 1]
    assert spread[4:9].mean() < -0.3  # "oo": rounded
    assert spread[-8:-3].mean() > 0.3  # "ee": spread
    middle = int((0.5 + 0.04) * FPS)
    assert shapes[middle - 1 : middle + 2, 2].max() > 0.4  # the short gap: lips pressed
    assert shapes[middle - 1 : middle + 2, 0].min() < shapes[4:9, 0].mean()
