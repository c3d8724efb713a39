import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import pytest

from ebbtide.status_reports import PoolStatus
from ebbtide.timeseries import Sample, TimeSeries, aggregate
from ebbtide.workload.charts import write_scaling_chart

START = 1_700_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


def report(host: str, t: float, function: str = "receiver", **fields: float) -> PoolStatus:
    values = dict(
        backlog=0,
        instances=0,
        in_flight=0,
        processed=0,
        dead_lettered=0,
        retried=0,
        guest_faults=0,
        rate=0.0,
        handle_p50_us=0.0,
        handle_p99_us=0.0,
    )
    values.update(fields)
    return PoolStatus(function=function, host_id=host, time=START + t, **values)


def test_two_hosts_are_summed_and_backlog_is_the_latest_value() -> None:
    series = TimeSeries(START)
    series.add(report("a:1", 1.0, backlog=900, instances=2, in_flight=2, rate=100.0))
    series.add(report("b:2", 1.5, backlog=800, instances=3, in_flight=1, rate=50.0))
    series.add(report("a:1", 2.0, backlog=500, instances=4, in_flight=4, rate=200.0))
    assert series.samples("receiver") == [
        Sample(1.0, 900, 2, 2, 100.0),
        Sample(1.5, 800, 5, 3, 150.0),  # b joins; a's latest still counts
        Sample(2.0, 500, 7, 5, 250.0),  # a's newer report replaces its older one, b still counts
    ]


def test_out_of_order_reports_are_placed_by_time() -> None:
    series = TimeSeries(START)
    series.add(report("a:1", 2.0, backlog=10, instances=1))
    series.add(report("a:1", 1.0, backlog=20, instances=3))
    assert [(s.t, s.backlog, s.instances) for s in series.samples("receiver")] == [(1.0, 20, 3), (2.0, 10, 1)]


def test_a_silent_process_stops_counting_after_the_staleness_limit() -> None:
    series = TimeSeries(START, stale_after=10.0)
    series.add(report("a:1", 0.0, instances=2, backlog=5))
    series.add(report("b:2", 0.0, instances=3, backlog=5))  # b dies after this report
    series.add(report("a:1", 5.0, instances=2, backlog=4))
    series.add(report("a:1", 20.0, instances=1, backlog=3))
    samples = series.samples("receiver")
    assert [(s.t, s.instances) for s in samples] == [(0.0, 5), (5.0, 5), (10.0, 2), (15.0, 0), (20.0, 1)]
    assert samples[3].backlog == 4  # every process silent: the consumer's last known lag, not zero


def test_samples_for_unknown_function_and_sorted_functions() -> None:
    series = TimeSeries(START)
    series.add(report("a:1", 1.0, function="zeta"))
    series.add(report("a:1", 1.0, function="alpha"))
    assert series.functions() == ["alpha", "zeta"]
    assert series.samples("nope") == []
    assert set(series.series()) == {"alpha", "zeta"}


def test_json_round_trip() -> None:
    series = TimeSeries(START, stale_after=3.0)
    series.add(report("a:1", 1.0, backlog=7, instances=1, rate=2.5))
    series.add(report("b:2", 2.0, backlog=6, instances=2, function="distributor"))
    data = series.to_json()
    raw = msgspec.json.decode(data)
    assert raw["start"] == START and raw["stale_after"] == 3.0 and len(raw["reports"]) == 2
    assert raw["series"]["receiver"] == [{"t": 1.0, "backlog": 7, "instances": 1, "in_flight": 0, "rate": 2.5}]
    reloaded = TimeSeries.from_json(data)
    assert reloaded.stale_after == 3.0
    assert reloaded.series() == series.series()


def test_aggregate_percentiles() -> None:
    totals = aggregate(
        [
            report("a:1", 1.0, instances=1, handle_p50_us=100.0, handle_p99_us=900.0),
            report("b:2", 2.0, instances=3, handle_p50_us=200.0, handle_p99_us=400.0, backlog=42),
            report("c:3", 0.5, instances=4, handle_p50_us=0.0, handle_p99_us=0.0),  # idle: measured nothing
        ]
    )
    assert totals.handle_p99_us == 900.0  # max over processes
    assert totals.handle_p50_us == pytest.approx((100 * 1 + 200 * 3) / 4)  # weighted by instances, idle left out
    assert totals.backlog == 42 and totals.instances == 8 and totals.processes == 3


def test_aggregate_without_instances_and_empty() -> None:
    scaled_to_zero = aggregate([report("a:1", 1.0, handle_p50_us=100.0), report("b:2", 1.0, handle_p50_us=300.0)])
    assert scaled_to_zero.handle_p50_us == 200.0
    empty = aggregate([])
    assert (empty.processes, empty.backlog, empty.handle_p50_us, empty.handle_p99_us) == (0, 0, 0.0, 0.0)


def burst() -> dict[str, list[Sample]]:
    def series(delay: float, peak: int) -> list[Sample]:
        samples = []
        for k in range(60):
            t = k * 0.1
            backlog = max(0, int(peak * (1 - abs(t - delay - 1))))
            samples.append(Sample(t, backlog, 4 if delay <= t < delay + 4 else 0, 0, 0.0))
        return samples

    return {"distributor": series(0.2, 10_000), "receiver-express": series(0.5, 3_000), "receiver-standard": series(0.5, 7_000)}


def parse(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    text = path.read_text()
    assert not re.search(r"\b(nan|inf)\b", text)
    return root


def texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in element.iter(f"{SVG}text")]


def path_points(d: str) -> list[tuple[float, float]]:
    """Absolute coordinates of an M/L/H/V path (H and V keep the other coordinate)."""
    points, x, y = [], 0.0, 0.0
    for command, a, b in re.findall(r"([MLHV])\s*(-?[\d.]+)(?:,(-?[\d.]+))?", d):
        if command in "ML":
            x, y = float(a), float(b)
        elif command == "H":
            x = float(a)
        else:
            y = float(a)
        points.append((x, y))
    return points


def test_chart_is_well_formed_with_one_panel_per_function(tmp_path: Path) -> None:
    out = write_scaling_chart(burst(), tmp_path / "chart.svg", "Burst & <scale>")
    assert out == tmp_path / "chart.svg"
    root = parse(out)
    panels = [g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"]
    assert [g.get("id") for g in panels] == ["panel-distributor", "panel-receiver-express", "panel-receiver-standard"]
    labels = texts(root)
    assert "Burst & <scale>" in labels  # escaped in the file, intact once parsed
    assert "backlog (messages, left axis)" in labels and "instances (right axis)" in labels
    first = texts(panels[0])
    assert "distributor" in first and "10k" in first and "4" in first
    assert "time since start (s)" in texts(panels[-1]) and "time since start (s)" not in first


def test_chart_lines_stay_inside_their_panel(tmp_path: Path) -> None:
    root = parse(write_scaling_chart(burst(), tmp_path / "chart.svg", "t"))
    for panel in (g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"):
        frame = [r for r in panel.iter(f"{SVG}rect")][-1]
        x0, y0 = float(frame.get("x", "")), float(frame.get("y", ""))
        x1, y1 = x0 + float(frame.get("width", "")), y0 + float(frame.get("height", ""))
        paths = list(panel.iter(f"{SVG}path"))
        assert len(paths) == 3  # backlog area, backlog line, instance steps
        for p in paths:
            for x, y in path_points(p.get("d", "")):
                assert x0 <= x <= x1 and y0 <= y <= y1
        peak_y = min(y for _, y in path_points(paths[2].get("d", "")))
        assert peak_y > y0 + 1  # the instance line at its peak stays clear of the frame


@pytest.mark.parametrize(
    "series",
    [
        {},
        {"idle": []},
        {"once": [Sample(3.0, 120, 2, 1, 5.0)]},
        {"zeros": [Sample(t, 0, 0, 0, 0.0) for t in (0.0, 1.0, 2.0)]},
        {"instant": [Sample(0.0, 5, 1, 0, 0.0), Sample(0.0, 5, 1, 0, 0.0)]},
    ],
)
def test_chart_edge_cases(tmp_path: Path, series: dict[str, list[Sample]]) -> None:
    root = parse(write_scaling_chart(series, tmp_path / "edge.svg", "edge"))
    labels = texts(root)
    assert "edge" in labels
    panels = [g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"]
    assert len(panels) == len(series)
    if not series:
        assert "no status reports recorded" in labels
    if series == {"idle": []}:
        assert "no data" in labels
    if "once" in series:
        assert len(list(root.iter(f"{SVG}circle"))) == 2
    if "zeros" in series:
        assert {"0", "1", "2"} <= set(texts(panels[0]))  # a usable axis instead of a 0..0 range
    for element in root.iter():
        for value in element.attrib.values():
            assert not any(math.isnan(float(n)) for n in re.findall(r"-?\d+\.\d+", value))


def test_chart_starts_at_the_run_start(tmp_path: Path) -> None:
    samples = [Sample(-4.0, 0, 0, 0, 0.0), Sample(-1.0, 0, 1, 0, 0.0), Sample(2.0, 50, 3, 3, 9.0)]
    root = parse(write_scaling_chart({"f": samples}, tmp_path / "c.svg", "t"))
    panel = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "panel")
    frame = list(panel.iter(f"{SVG}rect"))[-1]
    steps = path_points(list(panel.iter(f"{SVG}path"))[2].get("d", ""))
    assert steps[0][0] == float(frame.get("x", ""))  # the state from before the start, drawn from t = 0
    assert len(steps) == 3  # start at 1 instance, H to t = 2, V to 3 instances
    assert "-1" not in texts(panel) and "0" in texts(panel)
