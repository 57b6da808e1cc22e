"""Line plots as inline SVG, drawn on the server: the status page's last hour.

Pure functions from (time, value) series to SVG markup; no script, so the page shows the
same picture with scripts off, in ``chromium --dump-dom`` and in a screenshot.  The axes'
tick labels are text elements (``class=tick``, ``data-axis=x|y``) that tests can read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

WIDTH, HEIGHT = 520, 170
LEFT, RIGHT, TOP, BOTTOM = 64, 10, 10, 22  # margins: room for the axes' labels
WINDOW = 3600.0  # seconds shown: the last hour
X_TICKS = (-60, -45, -30, -15, 0)  # minutes
# Nice upper bounds of the y axis: the smallest of these (times a power of ten) at or
# above the largest value, so the axis reads as round numbers.
NICE = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)

Points = Sequence[tuple[float, "float | None"]]


@dataclass(frozen=True)
class Line:
    name: str  # legend text
    color: str  # CSS colour of the line and its legend swatch
    points: Points  # (time, value); None: no data for that interval (a gap)


def nice_ceiling(value: float) -> float:
    """The y axis' top for a largest value of ``value`` (1 for an empty plot)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    for step in NICE:
        if step * scale >= value * (1 - 1e-9):
            return step * scale
    return 10.0 * scale


def plot(ident: str, title: str, lines: Sequence[Line], now: float,
         label: Callable[[float], str], top: float | None = None) -> str:
    """One plot of the hour before ``now``: its lines, a y axis from 0 to ``top`` (by
    default the nice ceiling of the values) labelled by ``label``, a legend."""
    values = [v for line in lines for t, v in line.points if v is not None and t > now - WINDOW]
    top = top if top is not None else nice_ceiling(max(values, default=0.0))
    parts = [f'<svg id="{escape(ident)}" class=plot role=img xmlns="http://www.w3.org/2000/svg"'
             f' width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"'
             f' data-y-max="{top:g}"><title>{escape(title)}</title>',
             _axes(now, top, label)]
    for line in lines:
        parts.extend(_polylines(line, now, top))
    parts.append("</svg>")
    legend = "".join(f'<span class=key><span class=swatch style="background:{line.color}">'
                     f"</span>{escape(line.name)}</span>" for line in lines)
    return (f'<figure class=plot-box><figcaption>{escape(title)}</figcaption>'
            + "".join(parts) + f"<div class=legend>{legend}</div></figure>")


def _x(t: float, now: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (1 - (now - t) / WINDOW)


def _y(v: float, top: float) -> float:
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - min(v, top) / top)


def _axes(now: float, top: float, label: Callable[[float], str]) -> str:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}"'
           ' fill="#fff" stroke="#c9d0da"/>']
    for fraction in (0.0, 0.5, 1.0):
        y = _y(top * fraction, top)
        out.append(f'<line x1="{LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#e6e9ef"/>')
        out.append(f'<text class=tick data-axis=y x="{LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor=end font-size=11 fill="#5a6472">'
                   f"{escape(label(top * fraction))}</text>")
    for minutes in X_TICKS:
        x = _x(now + minutes * 60, now)
        text = "now" if minutes == 0 else f"{minutes} min"
        anchor = "end" if minutes == 0 else "start" if minutes == X_TICKS[0] else "middle"
        out.append(f'<text class=tick data-axis=x x="{x:.1f}" y="{HEIGHT - 6}" '
                   f'text-anchor={anchor} font-size=11 fill="#5a6472">{text}</text>')
    return "".join(out)


def _polylines(line: Line, now: float, top: float) -> list[str]:
    """One ``<polyline>`` per run of points without a gap (a lone point: a dot)."""
    runs: list[list[str]] = [[]]
    for t, v in line.points:
        if t <= now - WINDOW:
            continue
        if v is None:
            runs.append([])
        else:
            runs[-1].append(f"{_x(t, now):.1f},{_y(v, top):.1f}")
    out = []
    for run in runs:
        if len(run) == 1:
            x, y = run[0].split(",")
            out.append(f'<circle data-series="{escape(line.name)}" cx="{x}" cy="{y}" r="2.5" '
                       f'fill="{line.color}"/>')
        elif run:
            out.append(f'<polyline data-series="{escape(line.name)}" fill="none" '
                       f'stroke="{line.color}" stroke-width="2" stroke-linejoin="round" '
                       f'points="{" ".join(run)}"/>')
    return out
