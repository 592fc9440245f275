"""Benchmarks: each runs from the repository's root as `python -m bench.<name>` and prints its
figures (docs/benchmarks.md records them). `bench.stack` starts the service's processes;
`harness` (shared with the tests) holds the clients and process helpers."""
