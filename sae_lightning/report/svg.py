"""The frame every self-contained SVG bar chart of the reports starts with."""

from __future__ import annotations

import html


def svg_frame(
    width: int, height: int, title: str, left: int, right: int, baseline: float
) -> list[str]:
    """The opening ``<svg>`` tag (sans-serif, 11 px), the escaped ``title`` centred on top and
    the x axis at ``baseline`` from ``left`` to ``width - right``; the caller appends the bars,
    labels and ``</svg>``."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
        f'<line x1="{left}" y1="{baseline}" x2="{width - right}" y2="{baseline}" stroke="#333"/>',
    ]
