"""Small line charts as inline SVG, drawn on the server: the admin's health page needs lines over
a time axis and nothing more, so no script, no stylesheet from elsewhere, nothing to load.

A chart is a list of series over shared time buckets; a bucket without a value (None) breaks
the line instead of drawing it down to zero, so a quiet hour does not look like a fast one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 24, 10, 24
DOTS_UP_TO = 100  # buckets: with fewer, every value also gets a dot (a lone one shows)
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


@dataclass
class Series:
    name: str
    values: Sequence[float | None]
    colour: str = ""


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _number(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


def line_chart(
    title: str,
    starts: Sequence[datetime],
    series: Sequence[Series],
    unit: str = "",
    step: bool = False,
) -> SafeString:
    """An SVG of `series` over the buckets that begin at `starts` (evenly spaced)."""
    count = len(starts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    known = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(known, default=0.0))

    def x(index: float) -> float:
        return LEFT + plot_w * index / max(count - 1, 1)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        format_html(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" '
            'role="img" aria-label="{}" class="chart">',
            WIDTH,
            HEIGHT,
            title,
        ),
        format_html("<title>{}</title>", title),
    ]
    for fraction in (0, 0.5, 1):  # grid and y labels
        level = TOP + plot_h * (1 - fraction)
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>'
                '<text x="{}" y="{}" text-anchor="end" font-size="11" fill="#666">{}{}</text>',
                LEFT,
                WIDTH - RIGHT,
                f"{level:.1f}",
                f"{level:.1f}",
                LEFT - 4,
                f"{level + 4:.1f}",
                _number(top * fraction),
                unit,
            )
        )
    if count:
        for index in sorted({0, count // 4, count // 2, 3 * count // 4, count - 1}):
            parts.append(
                format_html(
                    '<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="#666">{}</text>',
                    f"{x(index):.1f}",
                    HEIGHT - 6,
                    starts[index].strftime("%H:%M"),
                )
            )
    for number, line in enumerate(series):
        colour = line.colour or COLOURS[number % len(COLOURS)]
        path, dots, drawing, points = [], [], False, 0
        for index, value in enumerate(line.values):
            if value is None:
                drawing = False
                continue
            if step and drawing:
                path.append(f"H{x(index):.1f}")
            path.append(f"{'L' if drawing else 'M'}{x(index):.1f},{y(value):.1f}")
            drawing, points = True, points + 1
            if count <= DOTS_UP_TO:
                dots.append(
                    format_html(
                        '<circle cx="{}" cy="{}" r="2.5" fill="{}"><title>{}: {}{}</title>'
                        "</circle>",
                        f"{x(index):.1f}",
                        f"{y(value):.1f}",
                        colour,
                        line.name,
                        f"{value:g}",
                        unit,
                    )
                )
        parts.append(
            format_html(
                '<path d="{}" fill="none" stroke="{}" stroke-width="1.6" '
                'data-series="{}" data-points="{}"/>',
                " ".join(path),
                colour,
                line.name,
                points,
            )
        )
        parts.extend(dots)
    parts.append("</svg>")
    legend = "".join(
        format_html(
            '<span class="legend"><i style="background:{}"></i>{}</span>',
            line.colour or COLOURS[number % len(COLOURS)],
            line.name,
        )
        for number, line in enumerate(series)
    )
    return mark_safe("".join(str(p) for p in parts) + legend)  # noqa: S308 - built escaped
