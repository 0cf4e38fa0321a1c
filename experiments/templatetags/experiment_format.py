"""Number formatting for the experiment results pages: rates as percentages, p-values, lifts, money."""

from __future__ import annotations

import math

from django import template

register = template.Library()

DASH = "–"


def _missing(value: object) -> bool:
    # Templates resolve a missing attribute (e.g. no comparison for the control) to "".
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return not math.isfinite(value)


@register.filter
def pct(value: float | None, decimals: int = 2) -> str:
    """0.1234 -> "12.34%"."""
    if _missing(value):
        return DASH
    return f"{float(value) * 100:.{int(decimals)}f}%"  # type: ignore[arg-type]


@register.filter
def signed_pct(value: float | None, decimals: int = 1) -> str:
    """A relative lift: 0.052 -> "+5.2%"."""
    if _missing(value):
        return DASH
    return f"{float(value) * 100:+.{int(decimals)}f}%"  # type: ignore[arg-type]


@register.filter
def pp(value: float | None, decimals: int = 2) -> str:
    """A difference of rates in percentage points: 0.012 -> "+1.20 pp"."""
    if _missing(value):
        return DASH
    return f"{float(value) * 100:+.{int(decimals)}f} pp"  # type: ignore[arg-type]


@register.filter
def pvalue(value: float | None) -> str:
    if _missing(value):
        return DASH
    v = float(value)  # type: ignore[arg-type]
    return "< 0.0001" if v < 0.0001 else f"{v:.4f}"


@register.filter
def num(value: float | None, decimals: int = 2) -> str:
    if _missing(value):
        return DASH
    return f"{float(value):,.{int(decimals)}f}"  # type: ignore[arg-type]


@register.filter
def signed_num(value: float | None, decimals: int = 2) -> str:
    if _missing(value):
        return DASH
    return f"{float(value):+,.{int(decimals)}f}"  # type: ignore[arg-type]


@register.filter
def bar_width(value: float | None) -> int:
    """A progress fraction as a CSS width percentage, capped at 100."""
    if _missing(value):
        return 0
    return max(0, min(100, round(float(value) * 100)))  # type: ignore[arg-type]
