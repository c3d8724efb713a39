"""`ebbtide bench --scenario capacity --quick`: the profile is measured on real processes and written where
`ebbtide plan` reads it, and each measured run has the model's prediction beside it (not judged here: the
machine is shared; the README gives the full run's figures and their load)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ebbtide.capacity.profile import profile_of_results
from ebbtide.cli import main
from ebbtide.manifest import LoadedManifest
from ebbtide.workload.bench import run_bench


async def test_the_capacity_profile_and_the_model_beside_the_runs(
    reference_manifest: LoadedManifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await run_bench(reference_manifest, ["capacity"], quick=True, out_dir=tmp_path)
    results = tmp_path / "results.json"
    saved = json.loads(results.read_text())
    capacity = saved["details"]["capacity"]
    profile = profile_of_results(saved, str(results))
    assert set(profile.functions) == set(reference_manifest.spec.functions)
    for name, fn in profile.functions.items():
        assert 0 < fn.cpu_s < 0.05 and 0 <= fn.server_cpu_s < 0.05, name  # per message: µs to ms, never seconds
        assert 0 < fn.memory_mib < 1024 and fn.rate_per_s > 0, name
    shares = [profile.functions[f].messages_per_order for f in ("receiver-express", "receiver-standard")]
    assert profile.functions["distributor"].messages_per_order == 1 and sum(shares) == pytest.approx(1)
    assert 0 < profile.cold_start_s < 60 and profile.stored_bytes_per_order > 0 and profile.publish_rate > 0
    assert 0 < capacity["machine"]["cores_available"] <= capacity["machine"]["cores"]
    assert [run["measured"]["replicas"] for run in capacity["runs"]] == [1, 2]
    for run in capacity["runs"]:
        measured, predicted = run["measured"], run["predicted"]
        assert measured["stored"] == measured["orders"], "every order of the run stored"
        assert measured["wall_s"] > 0 and math.isfinite(predicted["drain_s"]) and predicted["drain_s"] > 0
        cpu = measured["cpu_per_order"]  # counted from the processes' /proc while the burst ran
        assert set(cpu) == {*reference_manifest.spec.functions, "nats-server", "publisher"}
        assert all(v >= 0 for v in cpu.values()) and cpu["nats-server"] > 0 and cpu["distributor"] > 0
        for function in reference_manifest.spec.functions:
            assert 1 <= measured["peak_instances"][function] <= 4 * measured["replicas"], function
            assert 1 <= predicted["peak_instances"][function] <= 4 * measured["replicas"], function
    assert "Capacity model against this machine's runs" in report.markdown()
    # `ebbtide plan` reads the profile it wrote.
    chart = tmp_path / "plan.svg"
    code = main(
        [
            "--manifest",
            str(reference_manifest.path),
            "plan",
            "--profile",
            str(results),
            "--hours",
            "9",
            "--busy-hours",
            "8-9",
            "--chart",
            str(chart),
        ]
    )
    assert code == 0 and chart.exists()
    assert f"profile: {profile.source}" in capsys.readouterr().out
    assert main(["--manifest", str(reference_manifest.path), "plan", "--profile", str(tmp_path / "missing.json")]) == 2
