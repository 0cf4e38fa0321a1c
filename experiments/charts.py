"""Server-side line charts as inline SVG for the admin results page: axes, gridlines, one line per series, legend.

Pure: a function from series to an SVG string, no JavaScript, no ORM. Every piece of text is XML-escaped, so variant
names typed by a merchandiser cannot inject markup into the admin page.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Series", "line_chart_svg", "percent", "plain_number"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")

_MARGIN_LEFT = 64
_MARGIN_RIGHT = 20
_MARGIN_TOP = 32
_MARGIN_BOTTOM = 64
_Y_TICKS = 5
_X_TICKS = 7
_MARKERS_UP_TO = 60  # points per series; beyond that markers only clutter the line


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend and ``(x, y)`` points; x is a date or an aware datetime."""

    name: str
    points: tuple[tuple[dt.date | dt.datetime, float], ...]


def percent(value: float) -> str:
    return f"{value * 100:.{_decimals(value * 100)}f}%"


def plain_number(value: float) -> str:
    return f"{value:,.{_decimals(value)}f}"


def _decimals(value: float) -> int:
    magnitude = abs(value)
    if magnitude == 0 or magnitude >= 10:
        return 0
    if magnitude >= 1:
        return 1
    return min(4, 1 - math.floor(math.log10(magnitude)))


def line_chart_svg(
    series: Sequence[Series],
    *,
    title: str,
    y_format: Callable[[float], str] = percent,
    y_min: float | None = None,
    y_max: float | None = None,
    width: int = 760,
    height: int = 300,
) -> str:
    """An ``<svg>`` element drawing each series as a polyline over a shared time axis.

    The y range spans the data (from 0 when all values are positive, unless ``y_min`` is given) rounded out to
    "nice" tick steps (1, 2, 2.5, 5 x 10^k). An empty chart says so instead of drawing empty axes.
    """
    plot_w = width - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - _MARGIN_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="exp-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" font-family="sans-serif" '
        'font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_MARGIN_LEFT}" y="18" font-size="13" font-weight="bold" fill="#333">{escape(title)}</text>',
    ]
    drawn = [(s, sorted(((_timestamp(x), float(y)) for x, y in s.points if math.isfinite(y)))) for s in series]
    drawn = [(s, pts) for s, pts in drawn if pts]
    if not drawn:
        parts.append(
            f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" fill="#777">No data yet</text>'
        )
        parts.append("</svg>")
        return "".join(parts)

    xs = [x for _, pts in drawn for x, _ in pts]
    ys = [y for _, pts in drawn for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:  # one day of data: centre it
        x_lo, x_hi = x_lo - 43_200, x_hi + 43_200
    y_lo_data = min(ys) if y_min is None else y_min
    if y_min is None and y_lo_data > 0:
        y_lo_data = 0.0
    y_hi_data = max(ys) if y_max is None else y_max
    ticks = _nice_ticks(y_lo_data, y_hi_data)
    y_lo, y_hi = ticks[0], ticks[-1]
    tick_step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0

    def px(x: float) -> float:
        return _MARGIN_LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return _MARGIN_TOP + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    bottom = _MARGIN_TOP + plot_h
    # Horizontal gridlines with y labels.
    for tick in ticks:
        y = py(tick)
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{y:.1f}" x2="{_MARGIN_LEFT + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        label = escape(_tick_label(tick, tick_step, y_format))
        parts.append(f'<text x="{_MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{label}</text>')
    # Vertical gridlines at up to _X_TICKS of the distinct x values, with date labels.
    distinct_x = sorted(set(xs))
    step = max(1, math.ceil(len(distinct_x) / _X_TICKS))
    span_days = (max(xs) - min(xs)) / 86_400
    for x in distinct_x[::step]:
        gx = px(x)
        parts.append(f'<line x1="{gx:.1f}" y1="{_MARGIN_TOP}" x2="{gx:.1f}" y2="{bottom}" stroke="#f0f0f0"/>')
        parts.append(
            f'<text x="{gx:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#555">'
            f"{escape(_x_label(x, span_days))}</text>"
        )
    # Axes on top of the grid.
    parts.append(f'<line x1="{_MARGIN_LEFT}" y1="{bottom}" x2="{_MARGIN_LEFT + plot_w}" y2="{bottom}" stroke="#888"/>')
    parts.append(f'<line x1="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" x2="{_MARGIN_LEFT}" y2="{bottom}" stroke="#888"/>')

    legend_x = float(_MARGIN_LEFT)
    legend_y = height - 14
    for index, (s, pts) in enumerate(drawn):
        colour = PALETTE[index % len(PALETTE)]
        name = escape(s.name)
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<g class="series" data-series="{name}">')
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        if len(pts) <= _MARKERS_UP_TO:
            for x, y in pts:
                parts.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{name}: {escape(y_format(y))}</title></circle>"
                )
        parts.append("</g>")
        parts.append(f'<rect x="{legend_x:.1f}" y="{legend_y - 9}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 16:.1f}" y="{legend_y + 1}" fill="#333">{name}</text>')
        legend_x += 28 + 7 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)


def _tick_label(value: float, step: float, y_format: Callable[[float], str]) -> str:
    """Axis labels share one number of decimals, enough to tell adjacent ticks apart (0%, 2.5%, 5.0%, ...)."""
    if y_format is percent:
        scale, suffix = 100.0, "%"
    elif y_format is plain_number:
        scale, suffix = 1.0, ""
    else:
        return y_format(value)
    scaled_step = step * scale
    decimals = next((d for d in range(7) if abs(round(scaled_step, d) - scaled_step) < 1e-9 * max(1.0, scaled_step)), 6)
    return f"{value * scale:,.{decimals}f}{suffix}"


def _timestamp(x: dt.date | dt.datetime) -> float:
    if isinstance(x, dt.datetime):
        if x.tzinfo is None:
            raise ValueError(f"chart x values must be timezone-aware, got {x!r}")
        return x.timestamp()
    return dt.datetime.combine(x, dt.time(), tzinfo=dt.UTC).timestamp()


def _x_label(x: float, span_days: float) -> str:
    moment = dt.datetime.fromtimestamp(x, tz=dt.UTC)
    return moment.strftime("%b %d %H:%M") if span_days < 2 else moment.strftime("%b %d")


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Evenly spaced round values covering ``[lo, hi]`` (about ``_Y_TICKS`` of them)."""
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / (_Y_TICKS - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = [start]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(start + len(ticks) * step)
    return [round(t, 12) for t in ticks]
