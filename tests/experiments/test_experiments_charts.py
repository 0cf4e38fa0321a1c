"""experiments.charts: the inline SVG line chart (pure)."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

from experiments.charts import Series, line_chart_svg, percent

SVG = "{http://www.w3.org/2000/svg}"


def test_chart_draws_a_line_and_legend_entry_per_series() -> None:
    days = [dt.date(2026, 3, d) for d in (1, 2, 3, 4)]
    series = [
        Series("control", tuple(zip(days, [0.10, 0.11, 0.10, 0.105], strict=True))),
        Series("b", tuple(zip(days, [0.12, 0.13, 0.125, 0.13], strict=True))),
    ]

    svg = line_chart_svg(series, title="CTR")

    root = ET.fromstring(svg)  # noqa: S314 - our own output, parsed to prove it is well-formed
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f".//{SVG}polyline")) == 2
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "control" in texts
    assert "b" in texts
    assert "CTR" in texts
    assert "Mar 01" in texts  # x labels are dates
    assert any(t and t.endswith("%") for t in texts)  # y labels are percentages


def test_higher_values_are_drawn_higher() -> None:
    day = dt.date(2026, 3, 1)
    next_day = day + dt.timedelta(days=1)
    svg = line_chart_svg(
        [Series("low", ((day, 0.1), (next_day, 0.1))), Series("high", ((day, 0.3), (next_day, 0.3)))], title="t"
    )
    lines = re.findall(r'points="([^"]+)"', svg)
    low_y = float(lines[0].split()[0].split(",")[1])
    high_y = float(lines[1].split()[0].split(",")[1])
    assert high_y < low_y  # SVG y grows downwards


def test_text_is_escaped() -> None:
    svg = line_chart_svg([Series("<script>alert(1)</script>", ((dt.date(2026, 1, 1), 0.5),))], title="a & b")

    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "a &amp; b" in svg
    ET.fromstring(svg)  # noqa: S314 - our own output


def test_empty_chart_says_so() -> None:
    svg = line_chart_svg([Series("a", ())], title="Nothing")

    assert "No data yet" in svg
    ET.fromstring(svg)  # noqa: S314 - our own output


def test_percent_format() -> None:
    assert percent(0.25) == "25%"
    assert percent(0.01234) == "1.2%"
    assert percent(0.001234) == "0.12%"
    assert percent(0.0) == "0%"
