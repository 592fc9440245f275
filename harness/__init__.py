"""What the tests and the benchmarks share: real processes (`procs`), speech and PCM helpers
(`audio`) and a WebRTC client peer that stands in for the browser (`peer`).

An ordinary package at the repository's root: pytest (rootdir on `sys.path`) and the
benchmarks (`python -m bench.<name>` from the root) import it without path tricks.
"""
