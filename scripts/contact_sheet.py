"""Regenerate docs/rendering-contact-sheet.png: frames of the `lite` renderer at chosen sounds.

The offline TTS speaks a sentence; the drawn avatar (no landmarks: its face is synthesised
from the mouth point) and the photograph (the Astra fixture, with the landmarks stored with it
in fixtures/avatars.json) say it with the phonemes the render worker would find; one row per
avatar, one column per sound, labelled.

    .venv/bin/python scripts/contact_sheet.py [--out docs/rendering-contact-sheet.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")

SENTENCES = ["Bob bought a big map.", "Five fish see you."]
# (label, phoneme, which occurrence): rest is the last frame, in the pause after the speech
COLUMNS = [
    ("rest", None, 0),
    ("b: closed", "b", 1),
    ("aw: open, round", "O:", 0),
    ("a: open", "a", 0),
    ("m: closed", "m", 0),
    ("f: teeth", "f", 0),
    ("ee: spread", "i:", 0),
    ("oo: rounded", "u:", 0),
]
TILE = 192


def reply(directory: Path) -> Path:
    from chat.audio import pcm_to_wav
    from chat.providers.tts.espeak import EspeakTTS

    async def speak() -> bytes:
        tts, pcm = EspeakTTS(timeout_s=20), bytearray()
        for sentence in SENTENCES:
            async for chunk in tts.stream(sentence, "en-us", "en-US"):
                pcm.extend(chunk)
        return bytes(pcm)

    path = directory / "reply.wav"
    path.write_bytes(pcm_to_wav(asyncio.run(speak()), EspeakTTS.sample_rate))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "rendering-contact-sheet.png"))
    args = parser.parse_args()
    import django

    django.setup()
    import av
    import numpy as np
    from PIL import Image, ImageDraw

    from rendering.backends.lite import LiteBackend
    from rendering.backends.phonemes import espeak_alignment
    from tests.face_mesh import face_box, find_face

    work = Path(tempfile.mkdtemp(prefix="contact-sheet-"))
    wav = reply(work)
    phones = espeak_alignment(wav, SENTENCES, "en-us")
    if not phones:
        raise SystemExit("espeak-ng's phonemes were not found for the reply")
    photo = ROOT / "fixtures" / "avatars" / "astra.png"
    entries = json.loads((ROOT / "fixtures" / "avatars.json").read_text())
    photo_face = next(e for e in entries if e["slug"] == "astra")["face"]
    aria = ROOT / "fixtures" / "avatars" / "aria.png"
    photo_points = find_face(np.asarray(Image.open(photo).convert("RGB")), (0, 0, 512, 512))
    rows = [
        ("drawn (mouth point)", aria, None, (96, 96, 416, 416)),
        ("photo (landmarks)", photo, photo_face, face_box(photo_points, 1.2)),
    ]
    backend = LiteBackend()
    label_h, side_w = 22, 150
    sheet = Image.new(
        "RGB", (side_w + TILE * len(COLUMNS), label_h + TILE * len(rows)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for c, (label, _, _) in enumerate(COLUMNS):
        draw.text((side_w + c * TILE + 6, 5), label, fill=(0, 0, 0))
    for r, (name, image, face, box) in enumerate(rows):
        result = backend.render(
            image, wav, work / f"out{r}", print_none, print_none, never, face=face, phonemes=phones
        )
        with av.open(str(result.video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        draw.text((6, label_h + r * TILE + TILE // 2), name, fill=(0, 0, 0))
        for c, (_, symbol, nth) in enumerate(COLUMNS):
            index = len(frames) - 1
            if symbol is not None:
                phone = [p for p in phones if p.symbol == symbol][nth]
                index = min(len(frames) - 1, int((phone.start_s + phone.end_s) / 2 * 25))
            tile = Image.fromarray(frames[index]).crop(box).resize((TILE, TILE))
            sheet.paste(tile, (side_w + c * TILE, label_h + r * TILE))
    # a 256-colour palette: a third of the bytes, no visible loss at this size
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}")


def print_none(*args: object) -> None:
    return None


def never() -> bool:
    return False


if __name__ == "__main__":
    main()
