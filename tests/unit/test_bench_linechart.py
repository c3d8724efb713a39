"""The sustained load's line chart: valid SVG, one panel per quantity, one line per series, gaps allowed."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from ebbtide.workload.charts import write_line_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_chart_has_a_line_per_series_and_skips_missing_values(tmp_path: Path) -> None:
    path = write_line_chart(
        [
            ("latency (ms)", {"p50": [(0.5, 1.0), (1.5, math.nan), (2.5, 2.0)], "p99": [(0.5, 5.0), (1.5, 9.0), (2.5, 7.0)]}),
            ("RSS (MiB)", {"RSS": [(0.0, 140.0)]}),
        ],
        tmp_path / "chart.svg",
        title="a <title> & more",
    )
    root = ET.parse(path).getroot()  # well-formed, title escaped
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "a <title> & more" in texts and "latency (ms)" in texts and "RSS (MiB)" in texts
    lines = [p.get("d") for p in root.iter(f"{SVG}path")]
    assert len(lines) == 3
    assert lines[0].count("L") == 1  # p50: the NaN point is left out
    assert lines[1].count("L") == 2
    assert len(list(root.iter(f"{SVG}circle"))) == 1  # a lone point is marked


def test_chart_without_data_is_still_drawn(tmp_path: Path) -> None:
    root = ET.parse(write_line_chart([("backlog", {"backlog": []})], tmp_path / "empty.svg", title="t")).getroot()
    assert not list(root.iter(f"{SVG}path")) and "backlog" in [t.text for t in root.iter(f"{SVG}text")]
