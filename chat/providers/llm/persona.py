"""The offline responder: no model, a deterministic reply from the avatar's persona.

It echoes what it understood and answers in the persona's own words, so every flow (speech,
text, video) works end to end with no keys and no network, and tests can assert on replies.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from chat.providers.base import ChatTurn, LLMProvider
from chat.providers.llm import last_user_message
from chat.providers.text import split_sentences

# A word with its trailing space, or one CJK character or mark: the size of a model's token.
_PIECE = re.compile(
    r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]|[^\s\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+\s*|\s+"
)


def _first_person(sentence: str) -> str:
    """'You are Aria, a guide.' → 'I am Aria, a guide.' (personas address the model)."""
    sentence = re.sub(r"^You are\b", "I am", sentence)
    sentence = re.sub(r"^Your\b", "My", sentence)
    return re.sub(r"^你是", "我是", sentence)


class PersonaLLM(LLMProvider):
    """Replies "You said: '…'." then who the avatar is, in the avatar's language."""

    name = "persona"

    @classmethod
    def from_settings(cls) -> PersonaLLM:
        return cls()

    def compose(self, turn: ChatTurn) -> str:
        """The whole reply for a turn."""
        chinese = turn.language.lower().startswith("zh")
        said = last_user_message(turn)
        persona = split_sentences(turn.persona)
        intro = _first_person(persona[0]) if persona else ""
        if not said:
            if turn.greeting:
                return turn.greeting
            return (
                "我没听清楚，你能再说一遍吗？"
                if chinese
                else "I didn't catch that. Could you say it again?"
            )
        if chinese:
            intro = intro or f"我是{turn.avatar_name or '你的助手'}。"
            return f"你说：“{said}”。{intro}我们继续聊吧，你还想说什么？"
        intro = intro or f"I am {turn.avatar_name or 'your assistant'}."
        return f"You said: '{said}'. {intro} What would you like to talk about next?"

    async def stream_reply(self, turn: ChatTurn) -> AsyncIterator[str]:
        for piece in _PIECE.findall(self.compose(turn)):
            yield piece
            await asyncio.sleep(0)  # one piece per loop turn, like a model's token stream
