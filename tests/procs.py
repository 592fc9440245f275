"""Moved to `harness.procs` (shared with the benchmarks); the tests' old import path."""

from harness.procs import *  # noqa: F403
