"""Moved to `harness.audio` (shared with the benchmarks); the tests' old import path."""

from harness.audio import *  # noqa: F403
