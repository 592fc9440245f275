"""The offline backends with real audio: espeak-ng speaks, pocketsphinx listens; and the
persona responder, the sentence splitter and the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.providers import get_asr, get_llm, get_tts, reset_providers
from chat.providers.asr.pocketsphinx import PocketSphinxASR
from chat.providers.base import ChatTurn, Hypothesis
from chat.providers.llm.persona import PersonaLLM
from chat.providers.text import split_sentences, stream_sentences
from chat.providers.tts.espeak import EspeakTTS, espeak_voice
from tests.audio import read_wav, resample, rms, speak, write_wav

pytestmark = pytest.mark.usefixtures("offline_providers")

# Sentences espeak-ng says and pocketsphinx's English model reliably hears, with key words.
SENTENCES = {
    "i would like to order a pizza": {"order", "pizza"},
    "what is the weather like today": {"weather"},
    "good morning how are you": {"good", "morning"},
}


def _utterance(tmp_path: Path, text: str) -> Path:
    """espeak-ng saying `text` as a 16 kHz WAV with half a second of silence around it, as a
    recording would have (the recogniser adapts to the background during the silence)."""
    pcm, rate = read_wav(speak(text, rate=160, sample_rate=16000))
    pad = np.zeros(rate // 2, dtype=np.int16)
    return write_wav(tmp_path / "utterance.wav", np.concatenate([pad, pcm, pad]), rate)


def _words(text: str) -> set[str]:
    return set(text.lower().split())


async def _stream_file(path: Path, chunk_ms: int = 100) -> list[Hypothesis]:
    pcm, rate = read_wav(path)
    data = pcm.tobytes()
    step = rate * chunk_ms // 1000 * 2
    stream = get_asr().stream("en-US", rate)
    reader = asyncio.create_task(_collect(stream.results()))
    for start in range(0, len(data), step):
        await stream.feed(data[start : start + step])
    await stream.finish()
    return await reader


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


# --- registry -------------------------------------------------------------------------------
def test_registry_builds_the_offline_defaults_once() -> None:
    assert (get_asr().name, get_llm().name, get_tts().name) == ("pocketsphinx", "persona", "espeak")
    assert get_asr() is get_asr()
    first = get_tts()
    reset_providers()
    assert get_tts() is not first


def test_changing_a_provider_setting_rebuilds_the_backend(settings: Any) -> None:
    first = get_asr()
    settings.PROVIDER_TIMEOUT_S = 7.0
    assert get_asr() is not first
    assert get_asr().timeout_s == 7.0  # type: ignore[attr-defined]


# --- pocketsphinx ---------------------------------------------------------------------------
@pytest.mark.parametrize(("sentence", "key_words"), SENTENCES.items())
def test_pocketsphinx_recognises_key_words_of_a_file(
    tmp_path: Path, sentence: str, key_words: set[str]
) -> None:
    path = _utterance(tmp_path, sentence)
    text = asyncio.run(get_asr().recognize_file(str(path), "", "en-US"))
    assert key_words & _words(text), text


def test_pocketsphinx_stream_gives_interim_hypotheses_before_the_final(tmp_path: Path) -> None:
    path = _utterance(tmp_path, "i would like to order a pizza. what is the weather like today")
    results = asyncio.run(_stream_file(path))
    interim = [h for h in results if not h.final]
    final = [h for h in results if h.final]
    assert interim, results
    assert len(final) == 1 and results[-1] is final[0]
    assert {"pizza", "weather"} & _words(final[0].text), final[0].text


def test_pocketsphinx_stream_of_silence_ends_without_words() -> None:
    async def silence() -> list[Hypothesis]:
        stream = get_asr().stream("en-US")
        await stream.feed(b"\x00\x00" * 16000)
        await stream.finish()
        return await _collect(stream.results())

    assert asyncio.run(silence()) == []


def test_pocketsphinx_stream_can_be_abandoned() -> None:
    async def abandon() -> None:
        stream = get_asr().stream("en-US")
        await stream.feed(b"\x01\x00" * 8000)
        await stream.close()
        await stream.close()

    asyncio.run(abandon())


def test_pocketsphinx_keeps_few_idle_decoders_after_a_burst_of_concurrent_streams(
    tmp_path: Path,
) -> None:
    """After six people talked at once, the web process keeps only a couple of decoders
    loaded, and later streams still recognise speech."""
    from chat.providers.asr import pocketsphinx

    path = _utterance(tmp_path, "i would like to order a pizza")

    async def burst() -> list[list[Hypothesis]]:
        return await asyncio.gather(*(_stream_file(path) for _ in range(6)))

    for results in asyncio.run(burst()):
        assert {"order", "pizza"} & _words(results[-1].text), results
    assert pocketsphinx._pool.idle(16000) <= pocketsphinx.MAX_IDLE_DECODERS
    final = asyncio.run(_stream_file(path))[-1]
    assert final.final and {"order", "pizza"} & _words(final.text), final


def test_six_people_talking_at_once_share_at_most_asr_offline_decoders(
    tmp_path: Path, settings: Any
) -> None:
    """With ASR_OFFLINE_DECODERS=2 the process never holds more than two decoders (the memory
    bound), and each of six simultaneous utterances is still recognised: the others wait."""
    import threading

    from chat.providers.asr import pocketsphinx

    settings.ASR_OFFLINE_DECODERS = 2
    path = _utterance(tmp_path, "i would like to order a pizza")
    most, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], pocketsphinx._pool.loaded())
            stop.wait(0.005)

    async def burst() -> list[list[Hypothesis]]:
        return await asyncio.gather(*(_stream_file(path, chunk_ms=20) for _ in range(6)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcomes = asyncio.run(burst())
    finally:
        stop.set()
        watcher.join()
    for results in outcomes:
        assert results[-1].final and {"order", "pizza"} & _words(results[-1].text), results
    assert 1 <= most[0] <= 2


def test_streams_closed_holding_or_waiting_for_the_only_decoder_leave_it_free(
    tmp_path: Path, settings: Any
) -> None:
    """One decoder allowed: one speaker holds it, a second waits for it; both leave, and the
    next speaker's utterance is still recognised (nothing keeps the decoder)."""
    settings.ASR_OFFLINE_DECODERS = 1
    path = _utterance(tmp_path, "i would like to order a pizza")

    async def scenario() -> list[Hypothesis]:
        holding = get_asr().stream("en-US")
        await holding.feed(b"\x00\x00" * 1600)
        waiting = get_asr().stream("en-US")
        await waiting.feed(b"\x00\x00" * 1600)
        await asyncio.sleep(0.3)
        await waiting.close()
        await holding.close()
        return await asyncio.wait_for(_stream_file(path), 60)

    final = asyncio.run(scenario())[-1]
    assert final.final and {"order", "pizza"} & _words(final.text), final


def test_pocketsphinx_hears_what_a_stock_decoder_hears(tmp_path: Path) -> None:
    """Sharing the language model and trimming the dictionary to its words changes no word
    and no score: the same recordings give what pocketsphinx's own decoder gives."""
    from pocketsphinx import Decoder

    stock = Decoder(samprate=16000, loglevel="FATAL")
    noise = (np.random.default_rng(7).normal(0, 3000, 16000 * 2)).astype(np.int16)
    for number, text in enumerate([*SENTENCES, "open the pod bay doors", ""]):
        if text:
            pcm = np.concatenate([noise[:8000] // 20, read_wav(_utterance(tmp_path, text))[0]])
        else:
            pcm = noise
        path = write_wav(tmp_path / f"{number}.wav", pcm, 16000)
        stock.start_utt()
        stock.process_raw(pcm.tobytes(), False, True)
        stock.end_utt()
        hyp = stock.hyp()
        expected = hyp.hypstr if hyp is not None else ""
        stock.reinit_feat()
        assert asyncio.run(get_asr().recognize_file(str(path), "", "en-US")) == expected


def test_pocketsphinx_rejects_unreadable_files(tmp_path: Path) -> None:
    from chat.providers.base import ASRError

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    with pytest.raises(ASRError) as caught:
        asyncio.run(PocketSphinxASR(5.0).recognize_file(str(bad), "", "en-US"))
    assert caught.value.code == "ERR_ASR_FAILED" and not caught.value.retryable


# --- espeak-ng TTS --------------------------------------------------------------------------
def _seconds(audio: bytes) -> float:
    return len(audio) / 2 / EspeakTTS.sample_rate


def test_espeak_speaks_english_with_plausible_length() -> None:
    short = "Hello, this is a test."
    long = "Hello, this is a test. The quick brown fox jumps over the lazy dog near the river bank."
    tts = get_tts()
    a = asyncio.run(tts.synthesize(short, "longxiaochun_v2", "en-US"))
    b = asyncio.run(tts.synthesize(long, "longxiaochun_v2", "en-US"))
    assert len(a) % 2 == 0 and len(b) % 2 == 0
    assert 0.8 < _seconds(a) < 4.0
    assert 2.0 < _seconds(b) / _seconds(a) < 6.0
    assert rms(np.frombuffer(b, dtype=np.int16)) > 300


def test_espeak_speaks_mandarin() -> None:
    audio = asyncio.run(get_tts().synthesize("你好，我是林晓。今天天气很好。", "", "zh-CN"))
    assert 1.5 < _seconds(audio) < 10.0
    assert rms(np.frombuffer(audio, dtype=np.int16)) > 300


def test_espeak_streams_several_chunks() -> None:
    text = " ".join(["This sentence is one of several that make a long reply."] * 4)
    chunks = asyncio.run(_collect(get_tts().stream(text, "", "en-US")))
    assert len(chunks) > 3
    assert all(len(chunk) % 2 == 0 for chunk in chunks)
    assert len(chunks[0]) < sum(map(len, chunks)) / 3


def test_espeak_voice_choice() -> None:
    assert espeak_voice("longxiaochun_v2", "zh-CN") == "cmn"
    assert espeak_voice("", "en-US") == "en-us"
    assert espeak_voice("en-us+f3", "en-US") == "en-us+f3"
    assert espeak_voice("no-such-voice+nobody", "en-US") == "en-us"


def test_espeak_reads_text_that_looks_like_options() -> None:
    audio = asyncio.run(get_tts().synthesize("--help -v", "", "en-US"))
    assert _seconds(audio) > 0.3


def test_espeak_speech_is_understood_by_pocketsphinx(tmp_path: Path) -> None:
    """Round trip: what the TTS says, the ASR hears."""
    audio = asyncio.run(get_tts().synthesize("i would like to order a pizza", "", "en-US"))
    pcm = resample(np.frombuffer(audio, dtype=np.int16), EspeakTTS.sample_rate, 16000)
    pad = np.zeros(8000, dtype=np.int16)
    path = write_wav(tmp_path / "round.wav", np.concatenate([pad, pcm, pad]), 16000)
    text = asyncio.run(get_asr().recognize_file(str(path), "", "en-US"))
    assert {"order", "pizza"} & _words(text), text


# --- persona LLM ----------------------------------------------------------------------------
ARIA = ChatTurn(
    persona="You are Aria, a warm and curious travel guide. You answer in English.",
    history=[{"role": "user", "content": "I want to visit Lisbon"}],
    avatar_name="Aria",
    greeting="Hi, I'm Aria.",
)


def test_persona_reply_echoes_the_user_and_speaks_as_the_avatar() -> None:
    pieces = asyncio.run(_collect(get_llm().stream_reply(ARIA)))
    reply = "".join(pieces)
    assert len(pieces) > 5
    assert "You said: 'I want to visit Lisbon'" in reply
    assert "I am Aria, a warm and curious travel guide." in reply


def test_persona_answers_in_chinese_for_mandarin_avatars() -> None:
    turn = ChatTurn(
        persona="你是林晓，一位耐心的中文口语老师。",
        history=[{"role": "user", "content": "我想练习口语"}],
        avatar_name="Lin Xiao",
        language="zh-CN",
    )
    reply = asyncio.run(get_llm().reply(turn))
    assert "你说：“我想练习口语”" in reply
    assert "我是林晓" in reply


def test_persona_greets_when_nothing_was_said() -> None:
    turn = ChatTurn(persona="You are Aria.", history=[], greeting="Hi, I'm Aria.")
    assert asyncio.run(PersonaLLM().reply(turn)) == "Hi, I'm Aria."


# --- sentence splitter ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
        (
            "Mr. Smith paid 3.50 dollars. Then he left.",
            ["Mr. Smith paid 3.50 dollars.", "Then he left."],
        ),
        (
            "See e.g. the map. J. R. R. Tolkien wrote it.",
            ["See e.g. the map.", "J. R. R. Tolkien wrote it."],
        ),
        ('He said "Go." Then quiet', ['He said "Go."', "Then quiet"]),
        (
            "你好！我是林晓。今天天气很好；我们出去吧？好",
            ["你好！", "我是林晓。", "今天天气很好；", "我们出去吧？", "好"],
        ),
        ("Wait... what?! No", ["Wait...", "what?!", "No"]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_stream_sentences_yields_each_sentence_as_soon_as_it_ends() -> None:
    text = "The price is 3.14 today. Is it? 好的。Bye"
    consumed: list[int] = []

    async def deltas() -> AsyncIterator[str]:
        for index, char in enumerate(text):
            consumed.append(index)
            yield char

    async def run() -> list[tuple[str, int]]:
        return [(s, consumed[-1]) async for s in stream_sentences(deltas())]

    results = asyncio.run(run())
    assert [s for s, _ in results] == ["The price is 3.14 today.", "Is it?", "好的。", "Bye"]
    # "today." is only certain at the following space; "好的。" at the next character, which
    # could have been a closing quote.
    assert results[0][1] == text.index(" Is")
    assert results[2][1] == text.index("Bye")
    assert results[1][1] < len(text) - 1


_TEXT = st.text(alphabet=st.sampled_from(list("ab Mr.3!?…\n。！？；”\"'e.g好的 ")), max_size=60)


@hypothesis_settings(max_examples=1000, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_stream_sentences_agrees_with_split_sentences_however_the_text_is_cut(
    text: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    async def run() -> list[str]:
        async def pieces() -> AsyncIterator[str]:
            for delta in deltas:
                yield delta

        return [s async for s in stream_sentences(pieces())]

    sentences = asyncio.run(run())
    assert sentences == split_sentences(text)
    assert "".join(sentences).replace(" ", "") == "".join(text.split())


def test_pocketsphinx_gives_the_same_words_for_the_same_file_whatever_it_heard_before(
    tmp_path: Path,
) -> None:
    path = _utterance(tmp_path, "good morning how are you")
    first = asyncio.run(get_asr().recognize_file(str(path), "", "en-US"))
    noise = (np.random.default_rng(1).normal(0, 6000, 16000 * 3)).astype(np.int16)
    other = write_wav(tmp_path / "noise.wav", noise, 16000)
    for _ in range(3):  # another caller's loud noise goes through the same pooled decoder
        asyncio.run(get_asr().recognize_file(str(other), "", "en-US"))
    assert asyncio.run(get_asr().recognize_file(str(path), "", "en-US")) == first
