"""`ebbtide bench --quick` completes and its figures are sane (not that they reach the goals: noisy machines)."""

from __future__ import annotations

import math
from pathlib import Path

from ebbtide.bench import SCENARIOS, run_bench
from ebbtide.manifest import LoadedManifest


async def test_quick_bench_completes_with_sane_figures(reference_manifest: LoadedManifest, tmp_path: Path) -> None:
    report = await run_bench(reference_manifest, list(SCENARIOS), quick=True, out_dir=tmp_path)
    figures = {f.name: f.value for f in report.figures}
    assert all(math.isfinite(v) and v >= 0 for v in figures.values())
    assert 0 < figures["guest call, distributor, one order"] < 10_000  # µs
    assert 0 < figures["instance start"] < 100_000  # µs
    assert 0 < figures["added RSS per idle instance"] < 10_000  # KiB
    assert 0 < figures["activation from zero, p50"] <= figures["activation from zero, p99"] < 10_000  # ms
    assert 1 <= figures["distributor: peak instances"] <= reference_manifest.function("distributor").scale.max
    assert figures["distributor: empty backlog to zero instances"] >= reference_manifest.function("distributor").scale.cooldown_s * 0.9
    assert (tmp_path / "results.json").exists() and (tmp_path / "burst.svg").exists()
    assert "| activation from zero, p50 |" in report.markdown()
