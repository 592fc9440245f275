"""Cost of decoding one client text frame (`chat.protocol.parse`), usual and hostile.

The decoder scrubs lone surrogates and bounds JSON depth; this shows what that costs on the
frames every session sends (ping, text) and what the hostile ones cost to refuse. With
`--against REV` the decoder of that git revision is timed in the same run, for a before/after.

    .venv/bin/python bench/frames.py [--against REV] [--number 20000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

FRAMES = {
    "ping": json.dumps({"type": "ping", "timestamp": 1700000000000, "id": "p-1"}),
    "text_message, 1 KiB ASCII": json.dumps({"type": "text_message", "text": "hello world " * 85}),
    "text_message, 1 KiB CJK": json.dumps(
        {"type": "text_message", "text": "你好世界" * 85}, ensure_ascii=False
    ),
    "offer, 4 KiB SDP": json.dumps(
        {"type": "offer", "sdp": "a=candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host\r\n" * 70}
    ),
    "hostile: lone surrogates in id and text": '{"type": "text_message", "id": "\\ud800", '
    '"text": "' + "a\\udc00" * 100 + '"}',
    "hostile: 3000-deep JSON": '{"type": "ping", "x": ' + "[" * 3000 + "]" * 3000 + "}",
    "hostile: 40-deep JSON": '{"type": "ping", "x": ' + "[" * 40 + "]" * 40 + "}",
}


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(parse: Callable[[str], object], frame: str, number: int) -> float:
    """Median over 5 runs of µs per call; a refusal (ProtocolError) counts as a call."""

    def once() -> None:
        try:
            parse(frame)
        except Exception as exc:  # ProtocolError of either revision
            if type(exc).__name__ != "ProtocolError":
                raise

    runs = timeit.repeat(once, number=number, repeat=5)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git revision whose chat/protocol.py to time too")
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    args = parser.parse_args()
    variants = {"current": _load(ROOT / "chat/protocol.py", "protocol_current").parse}
    if args.against:
        source = subprocess.run(
            ["git", "show", f"{args.against}:chat/protocol.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
            handle.write(source)
        variants = {args.against: _load(Path(handle.name), "protocol_before").parse, **variants}
    print("frame | " + " | ".join(f"{name} µs" for name in variants))
    for label, frame in FRAMES.items():
        figures = []
        for parse in variants.values():
            try:
                figures.append(f"{_time(parse, frame, args.number):.2f}")
            except RecursionError:  # the old decoder let it escape (before the hostile-frame fixes)
                figures.append("RecursionError")
        print(f"{label} | " + " | ".join(figures))


if __name__ == "__main__":
    main()
