"""`ebbtide bench --quick` completes and its figures are sane (not that they reach the goals: noisy machines)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ebbtide.bench import SCENARIOS, BenchOptions, run_bench
from ebbtide.manifest import LoadedManifest

async def test_quick_bench_completes_with_sane_figures(reference_manifest: LoadedManifest, tmp_path: Path) -> None:
    report = await run_bench(reference_manifest, list(SCENARIOS), quick=True, out_dir=tmp_path)
    figures = {f.name: f.value for f in report.figures}
    assert all(math.isfinite(v) for v in figures.values())
    assert all(v >= 0 for name, v in figures.items() if "slope" not in name)  # a slope may be negative
    assert 0 < figures["guest call, distributor, one order"] < 10_000  # µs
    assert 0 < figures["instance start"] < 100_000  # µs
    assert 0 < figures["added RSS per idle instance"] < 10_000  # KiB
    assert 0 < figures["activation from zero, p50"] <= figures["activation from zero, p99"] < 10_000  # ms
    assert 1 <= figures["distributor: peak instances"] <= reference_manifest.function("distributor").scale.max
    assert figures["distributor: empty backlog to zero instances"] >= reference_manifest.function("distributor").scale.cooldown_s * 0.9
    assert (tmp_path / "results.json").exists() and (tmp_path / "burst.svg").exists()
    assert "| activation from zero, p50 |" in report.markdown()

    saved = json.loads((tmp_path / "results.json").read_text())
    burst = saved["details"]["burst"]
    ebbtides = {"ebbtide-default"} if burst["fastest_config"]["name"] == "default" else {"ebbtide-default", "ebbtide-fastest"}
    assert set(burst["implementations"]) == {"raw", "faststream"} | ebbtides
    for key, impl in burst["implementations"].items():
        n = burst["orders"]
        assert impl["sent"] == impl["stored"] == impl["writes"] == [n] * burst["repeats"], key  # each order once
        assert impl["dead_letters"] == [0] * burst["repeats"] and impl["exactly_once"], key
        assert 0 < impl["wall_s"]["min"] <= impl["wall_s"]["median"] < 120, key
        assert 0 < impl["orders_per_s"]["median"] <= impl["orders_per_s"]["max"], key
        lat = impl["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] <= impl["wall_s"]["median"] * 1000 + 1, key
    assert len(burst["ratios"]) == 2 * len(ebbtides) and all(0 < r < math.inf for r in burst["ratios"].values())
    assert any("FastStream" in goal for goal in burst["goals"])

    sustained = saved["details"]["sustained"]
    assert sustained["capacity_orders_per_s"] > 0 and len(sustained["rates"]) == 2
    for label, run in sustained["rates"].items():
        assert run["published"] > 0 and run["stored"] == run["published"] and run["publish_errors"] == 0, label
        assert len(run["windows"]) >= 5 and sum(w["published"] for w in run["windows"]) == run["measured"], label
        assert 0 < run["measured"] == run["measured_stored"] < run["published"], label  # the load outlasts the windows
        assert all(0 < w["p50_ms"] <= w["p99_ms"] for w in run["windows"] if w["stored"]), label
        assert run["samples"] and all(s["rss_mib"] > 0 and s["backlog"] >= 0 for s in run["samples"]), label
        for name in ("p99_ms", "backlog", "rss_mib"):
            assert math.isfinite(run["trend"][name]["slope_per_min"]), (label, name)
        assert all(Path(chart).exists() for chart in run["charts"]), label
    markdown = report.markdown()
    assert "ZEISS burst, side by side" in markdown and "Sustained load" in markdown
    assert markdown.index("ZEISS burst, side by side") < markdown.index("Sustained load")


async def test_sustained_alone_at_given_rates(reference_manifest: LoadedManifest, tmp_path: Path) -> None:
    """Without the burst, sustained load still runs (one burst for the capacity) at absolute rates."""
    options = BenchOptions(orders=500, sustained_s=2.0, rates=["300", "600"])
    report = await run_bench(reference_manifest, ["sustained"], quick=True, out_dir=tmp_path, options=options)
    rates = report.details["sustained"]["rates"]
    assert [run["rate"] for run in rates.values()] == [300.0, 600.0]
    for run in rates.values():
        assert run["stored"] == run["published"] > 0
    assert "burst" not in report.details
