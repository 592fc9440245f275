"""Splitting replies into sentences, so speech of the first one starts while the model writes on.

A boundary is a Chinese end mark (。！？；), or an English one (. ! ? …) followed by white space;
either with its closing quotes. A mark at the end of the text so far waits for the next
character, so a streamed "3." is held until "3.14" or "3. " decides, and "好！" until it is
clear whether a closing quote follows. Abbreviations (Mr., e.g.) and initials (J.) do not end a
sentence; line breaks do.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

_CLOSERS = "\"'”’)]」』）》"
_BOUNDARY = re.compile(rf"(?:[。！？；]|[.!?…]+)[{re.escape(_CLOSERS)}]*|\n+")
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e a.m p.m approx inc ltd co mt fig dept est".split()
)


def _is_cjk(char: str) -> bool:
    return "\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef"


def _ends_here(text: str, match: re.Match[str], final: bool) -> bool | None:
    """True/False whether this mark ends a sentence; None when the text after it is needed."""
    mark = match.group()
    if mark[0] == "\n":
        return True
    end = match.end()
    if end == len(text):  # a closing quote may follow
        return True if final else None
    if mark[0] in "。！？；":
        return True
    following = text[end]
    if not (following.isspace() or (_is_cjk(following) and mark[0] != ".")):
        return False
    if mark.rstrip(_CLOSERS) == ".":
        word = _WORD_BEFORE.search(text, 0, match.start())
        if word:
            token = word.group(1)
            if token.lower() in _ABBREVIATIONS or (len(token) == 1 and token.isupper()):
                return False
    return True


def _cut(text: str, final: bool) -> tuple[list[str], str]:
    """The whole sentences at the start of `text` and what is left after them."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        verdict = _ends_here(text, match, final)
        if verdict is None:
            break
        if verdict:
            sentence = text[start : match.end()].strip()
            if sentence:
                sentences.append(sentence)
            start = match.end()
    return sentences, text[start:]


def split_sentences(text: str) -> list[str]:
    """Every sentence of a whole text, the unterminated remainder included as the last."""
    sentences, rest = _cut(text, final=True)
    if rest.strip():
        sentences.append(rest.strip())
    return sentences


async def stream_sentences(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """Whole sentences from a stream of text deltas, each as soon as its end is certain; the
    remainder when the stream ends."""
    buffer = ""
    async for delta in deltas:
        buffer += delta
        sentences, buffer = _cut(buffer, final=False)
        for sentence in sentences:
            yield sentence
    for sentence in split_sentences(buffer):
        yield sentence
