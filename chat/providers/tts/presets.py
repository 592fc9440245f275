"""The CosyVoice preset voices the admin offers, with the languages each speaks.

Preset ids are what `SpeechSynthesizer(voice=...)` takes; the `_v2` presets belong to
cosyvoice-v2 (the default DASHSCOPE_TTS_MODEL). Any other id typed by hand still works.
"""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    voice_id: str
    description: str
    languages: tuple[str, ...]  # BCP 47 language subtags: "zh", "en"


COSYVOICE_PRESETS: tuple[Preset, ...] = (
    Preset("longxiaochun_v2", "Long Xiaochun: bright, gentle woman", ("zh", "en")),
    Preset("longxiaoxia_v2", "Long Xiaoxia: calm, authoritative woman", ("zh",)),
    Preset("longwan_v2", "Long Wan: soft, positive woman", ("zh",)),
    Preset("longcheng_v2", "Long Cheng: clear young man", ("zh",)),
    Preset("longhua_v2", "Long Hua: lively girl", ("zh",)),
    Preset("longshu_v2", "Long Shu: steady news-reading man", ("zh",)),
    Preset("loongbella_v2", "Bella: capable newsreader woman", ("zh",)),
    Preset("longjielidou_v2", "Long Jielidou: sunny boy", ("zh", "en")),
    Preset("longfei_v2", "Long Fei: stirring male narrator", ("zh",)),
)

_LANGUAGE_NAMES = {"zh": "Chinese", "en": "English"}


def preset_choices() -> list[tuple[str, str]]:
    """(id, "id — description (languages)") pairs for a select box."""
    return [
        (
            p.voice_id,
            f"{p.voice_id} — {p.description} "
            f"({', '.join(_LANGUAGE_NAMES.get(lang, lang) for lang in p.languages)})",
        )
        for p in COSYVOICE_PRESETS
    ]


def speaks(voice_id: str, language: str) -> bool | None:
    """Whether a known preset speaks `language` ("zh-CN"); None for an id not in the list."""
    for preset in COSYVOICE_PRESETS:
        if preset.voice_id == voice_id:
            return language.split("-")[0].lower() in preset.languages
    return None
