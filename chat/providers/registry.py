"""Which backend serves each stage: names from settings, classes found by dotted path
(echoproject.backends, the same mechanism as the renderers').

Backends are imported on first use, so an offline install never imports the cloud SDKs, and
built once per process from settings. Changing a provider setting (tests do, with
`override_settings`) drops the cached instances.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.core.signals import setting_changed
from django.dispatch import receiver

from chat.providers.base import ASRProvider, LLMProvider, TTSProvider
from echoproject.backends import Backends

ASR_BACKENDS = {
    "pocketsphinx": "chat.providers.asr.pocketsphinx.PocketSphinxASR",
    "dashscope": "chat.providers.asr.dashscope.DashScopeASR",
}
LLM_BACKENDS = {
    "persona": "chat.providers.llm.persona.PersonaLLM",
    "dashscope": "chat.providers.llm.dashscope.DashScopeLLM",
    "openai": "chat.providers.llm.openai.OpenAILLM",
}
TTS_BACKENDS = {
    "espeak": "chat.providers.tts.espeak.EspeakTTS",
    "dashscope": "chat.providers.tts.dashscope.DashScopeTTS",
}


def _from_settings(cls: Any) -> Any:
    return cls.from_settings()


_STAGES: dict[str, Backends[Any]] = {
    "asr": Backends("ASR_BACKEND", ASR_BACKENDS, _from_settings),
    "llm": Backends("LLM_BACKEND", LLM_BACKENDS, _from_settings),
    "tts": Backends("TTS_BACKEND", TTS_BACKENDS, _from_settings),
}
_PROVIDER_SETTINGS = frozenset(
    {"PROVIDER_TIMEOUT_S", "PROVIDER_CONNECT_TIMEOUT_S", "LLM_MAX_HISTORY"}
)

P = TypeVar("P")


def backend_name(stage: str) -> str:
    """The configured backend name of a stage ("asr", "llm" or "tts")."""
    return _STAGES[stage].name()


def backend_class(stage: str) -> Any:
    """The configured backend's class for `stage` (its module imported)."""
    return _STAGES[stage].backend_class()


def build(stage: str, name: str | None = None) -> Any:
    """A new backend instance for `stage`, the configured one unless `name` is given."""
    return _STAGES[stage].build(name)


def _get(stage: str, kind: type[P]) -> P:
    instance = _STAGES[stage].get()
    assert isinstance(instance, kind)
    return instance


def get_asr() -> ASRProvider:
    return _get("asr", ASRProvider)


def get_llm() -> LLMProvider:
    return _get("llm", LLMProvider)


def get_tts() -> TTSProvider:
    return _get("tts", TTSProvider)


def reset_providers() -> None:
    """Close and forget the built backends; the next `get_*()` builds them again."""
    for backends in _STAGES.values():
        instance = backends.forget()
        if instance is not None:
            instance.close()


@receiver(setting_changed)
def _reset_on_setting_change(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(("ASR_", "LLM_", "TTS_", "DASHSCOPE_")) or setting in _PROVIDER_SETTINGS:
        reset_providers()


# The languages (BCP 47 primary subtags) a recogniser understands; absent: any it is asked for.
ASR_LANGUAGES: dict[str, tuple[str, ...]] = {"pocketsphinx": ("en",)}


def asr_languages() -> list[str] | None:
    """What the configured recogniser understands, or None when it takes every language."""
    languages = ASR_LANGUAGES.get(backend_name("asr"))
    return list(languages) if languages is not None else None


def asr_understands(language: str) -> bool:
    """Whether speech in `language` ("zh-CN") is recognised, not guessed at in English."""
    languages = asr_languages()
    return languages is None or language.split("-")[0].lower() in languages
