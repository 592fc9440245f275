"""Speech and language providers behind small interfaces; settings choose the backend.

`get_asr()`, `get_llm()`, `get_tts()` return the configured backend, imported on first use from
the registry of dotted paths in `chat.providers.registry`.
"""

from chat.providers.registry import get_asr, get_llm, get_tts, reset_providers

__all__ = ["get_asr", "get_llm", "get_tts", "reset_providers"]
