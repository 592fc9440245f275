"""pocketsphinx decoders of one process: the language model loaded once, a bounded pool.

A stock pocketsphinx decoder loads its own copy of the 27 MB US English language model and of
the whole 134 000-word pronunciation dictionary: about 91 MB each. Here the language model is
read once per process and every decoder searches with that one copy (pocketsphinx's bindings
hold the GIL inside the decoder, so two decoders never score with it at the same time), and
decoders load only the 79 000 dictionary entries the language model knows: the search never
considers the other words, so the hypotheses are the same, at about 47 MB per decoder.

At most `limit` decoders exist per process; an utterance that finds them all busy waits for
one, its audio queued, and then decodes its backlog at several times real time. That bounds
the process's memory whatever the number of people talking at once, and costs nothing a
process could deliver anyway: decoding holds the GIL, so a few concurrent decoders already
take one core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pocketsphinx import Decoder, LogMath, NGramModel

_VARIANT = re.compile(r"\(\d+\)$")  # "read(2)": the second pronunciation of "read"


class SharedModels:
    """What every decoder of the process shares: the language model and the trimmed dictionary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lm: NGramModel | None = None
        self._logmath: LogMath | None = None  # the model keeps a pointer to it: keep it alive
        self._dict_path = ""

    def _load(self) -> tuple[NGramModel, str]:
        with self._lock:
            if self._lm is None:
                from pocketsphinx import Config, LogMath, NGramModel

                config = Config(loglevel="FATAL")
                # The decoder's own log base, with the table it builds (no shift): scores match.
                logmath = LogMath(float(config["logbase"]), 0, True)
                lm = NGramModel(config, logmath, config["lm"])
                self._dict_path = str(_known_words_dict(lm, config["dict"], config["lm"]))
                self._lm, self._logmath = lm, logmath
            return self._lm, self._dict_path

    def decoder(self, sample_rate: int) -> Decoder:
        """A new decoder at `sample_rate` searching with the shared language model."""
        from pocketsphinx import Decoder

        lm, dict_path = self._load()
        decoder = Decoder(samprate=sample_rate, loglevel="FATAL", lm=None, dict=dict_path)
        decoder.add_lm("default", lm)
        decoder.activate_search("default")
        return decoder


def _known_words_dict(lm: NGramModel, dict_path: str, lm_path: str) -> Path:
    """The entries of `dict_path` whose word the language model knows, written once per
    machine (next to the other temporary files, named after the models it comes from)."""
    key = hashlib.sha1()
    for path in (dict_path, lm_path):
        stat = os.stat(path)
        key.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    folder = Path(tempfile.gettempdir()) / "echoproject-pocketsphinx"
    target = folder / f"known-words-{key.hexdigest()[:16]}.dict"
    if target.exists():
        return target
    unknown = lm.prob(["\x01not a word\x01"])  # the score of a word the model does not have
    with open(dict_path, encoding="utf-8") as source:
        kept = [
            line
            for line in source
            if line.strip() and lm.prob([_VARIANT.sub("", line.split(maxsplit=1)[0])]) != unknown
        ]
    folder.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=folder, suffix=".tmp", delete=False
    ) as out:
        out.writelines(kept)
    os.replace(out.name, target)  # atomic: a concurrent process reads a whole file or none
    return target


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): unused pages of every arena back to the system (no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class DecoderPool:
    """At most `limit` decoders per process; idle ones kept for the next utterance.

    A decoder adapts its feature extraction (cepstral mean, noise estimate) to what it hears; a
    returned one starts afresh, so one speaker's audio never shapes another's recognition and
    the same recording always gives the same words."""

    def __init__(self, models: SharedModels, max_idle: int) -> None:
        self._models = models
        self._max_idle = max_idle
        self._idle: dict[int, list[Decoder]] = {}
        self._busy = 0
        self._dropped = False  # a decoder was let go since the last trim()
        self._cond = threading.Condition()

    def idle(self, sample_rate: int) -> int:
        """How many loaded decoders wait for work at `sample_rate` (what the pool keeps)."""
        with self._cond:
            return len(self._idle.get(sample_rate, ()))

    def loaded(self) -> int:
        """Decoders that exist in this process, busy or idle."""
        with self._cond:
            return self._busy + sum(len(idle) for idle in self._idle.values())

    def acquire(
        self, sample_rate: int, limit: int, cancelled: threading.Event | None = None
    ) -> Decoder | None:
        """A decoder for one utterance; waits while `limit` are busy. None once `cancelled`."""
        with self._cond:
            while True:
                if cancelled is not None and cancelled.is_set():
                    return None
                idle = self._idle.get(sample_rate)
                if idle:
                    self._busy += 1
                    return idle.pop()
                if self._busy < limit:
                    if self._busy + sum(len(i) for i in self._idle.values()) >= limit:
                        # the room is taken by idle decoders of another sample rate: drop one
                        next(i for i in self._idle.values() if i).pop()
                    self._busy += 1
                    break
                self._cond.wait(0.1)  # also wakes for `cancelled`, which nobody notifies
        try:
            return self._models.decoder(sample_rate)
        except BaseException:
            self._done()
            raise

    def release(self, sample_rate: int, decoder: Decoder) -> None:
        """Keep `decoder` for the next utterance, or let it go when enough are kept already."""
        with self._cond:
            keep = len(self._idle.get(sample_rate, ())) < self._max_idle
        if keep:
            try:
                decoder.reinit_feat()
            except Exception:  # noqa: BLE001 - a broken decoder is dropped, never reused
                keep = False
        with self._cond:
            self._busy -= 1
            idle = self._idle.setdefault(sample_rate, [])
            if keep and len(idle) < self._max_idle:
                idle.append(decoder)
            else:
                self._dropped = True
            self._cond.notify()

    def trim(self) -> None:
        """Give the heap a dropped decoder freed back to the system. Call it where the caller
        no longer holds the decoder: the allocator keeps most of a freed decoder's ~47 MB in
        its per-thread arenas otherwise, and the process stays that large."""
        with self._cond:
            dropped, self._dropped = self._dropped, False
        if dropped:
            _malloc_trim()

    def _done(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify()
