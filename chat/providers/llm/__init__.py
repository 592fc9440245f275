"""Reply backends: `persona` (offline, no model), `dashscope` (Qwen) and `openai` (compatible).

`chat_messages` is the one place a turn becomes the chat-completions message list, so the
cloud backends send the same system prompt and the same window of history.
"""

from __future__ import annotations

from chat.providers.base import ChatTurn

_LANGUAGE_HINTS = {"zh-CN": "Answer in Mandarin Chinese.", "en-US": "Answer in English."}


def chat_messages(turn: ChatTurn, max_history: int) -> list[dict[str, str]]:
    """The system prompt (persona and language) and the last `max_history` messages (at least
    the user's new one)."""
    system = turn.persona.strip()
    hint = _LANGUAGE_HINTS.get(turn.language)
    if hint:
        system = f"{system}\n{hint}" if system else hint
    history = [
        {"role": item["role"], "content": item["content"]}
        for item in turn.history
        if item.get("role") in ("user", "assistant") and item.get("content")
    ]
    # The user's new message is the last one and always goes.
    history = history[-max(1, max_history) :]
    return [{"role": "system", "content": system}, *history]


def last_user_message(turn: ChatTurn) -> str:
    """What the user said last (empty when the history has no user message)."""
    for item in reversed(turn.history):
        if item.get("role") == "user":
            return (item.get("content") or "").strip()
    return ""
