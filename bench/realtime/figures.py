"""Medians and 99th percentiles as the benchmark prints them."""

from __future__ import annotations

import statistics


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)


def summary(values: list[float]) -> str:
    return f"p50 {median(values)} p99 {p99(values)} (n={len(values)})"
