"""The capacity model's pure parts: load shapes, KEDA and the HPA, the simulation, the plan command."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from ebbtide.capacity import load as shapes
from ebbtide.capacity.kube import DeploymentScaler, HpaSettings, KedaSettings
from ebbtide.capacity.model import ClusterSettings, simulate
from ebbtide.capacity.profile import DEFAULT, FunctionProfile, Pipeline, Profile, pipeline_of
from ebbtide.cli import main
from ebbtide.manifest import load_manifest
from ebbtide.scaler import ScalePolicy
from tests.conftest import REPO

# -- load shapes ---------------------------------------------------------------------------------------------


def test_the_zeiss_day_is_a_burst_at_every_busy_minute() -> None:
    day = shapes.zeiss_day(10_000, busy_hours=((8, 10), (15, 16)))
    assert len(day.arrivals) == 180 and day.total_orders == 1_800_000
    assert day.orders_between(8 * 3600, 8 * 3600 + 0.05) == 10_000  # at once, at the minute
    assert day.orders_between(8 * 3600 + 0.05, 8 * 3600 + 60) == 0  # quiet until the next
    assert day.orders_between(0, 8 * 3600) == 0 and day.orders_between(16 * 3600, 24 * 3600) == 0
    assert day.next_arrival_after(10 * 3600) == 15 * 3600
    assert day.next_arrival_after(16 * 3600) is None


def test_steady_and_per_second_rates() -> None:
    steady = shapes.steady(100.0, duration_s=60)
    assert steady.orders_between(10, 20) == pytest.approx(1000)
    rates = shapes.per_second_rates("# orders each second\n5\n0\n\n7.5  # a comment\n")
    assert rates.duration_s == 3 and rates.total_orders == 12.5
    assert rates.orders_between(0, 0.5) == pytest.approx(2.5) and rates.orders_between(1, 2) == 0
    for bad, why in (("x\n", "line 1"), ("-1\n", "line 1"), ("", "no rates"), ("nan\n", "line 1")):
        with pytest.raises(ValueError, match=why):
            shapes.per_second_rates(bad, "rates.txt")
    with pytest.raises(ValueError, match="must not overlap"):
        shapes.LoadShape("x", (shapes.Arrival(0, 10, 1), shapes.Arrival(5, 1, 1)), 10)


# -- KEDA and the HPA ----------------------------------------------------------------------------------------


def test_push_activates_at_once_polling_at_the_next_poll() -> None:
    pushed = DeploymentScaler(2000, KedaSettings("push", polling_interval_s=5), HpaSettings())
    polled = DeploymentScaler(2000, KedaSettings("poll", polling_interval_s=5), HpaSettings())
    for scaler in (pushed, polled):
        scaler.step(0.0, 0, pushed=False)
    pushed.step(1.0, 1, pushed=True)
    polled.step(1.0, 1, pushed=True)
    assert (pushed.replicas, polled.replicas) == (1, 0)
    polled.step(4.9, 1, pushed=False)
    assert polled.replicas == 0
    polled.step(5.0, 1, pushed=False)
    assert polled.replicas == 1


def test_cooldown_to_zero_after_the_last_active_poll() -> None:
    scaler = DeploymentScaler(2000, KedaSettings("push", polling_interval_s=5, cooldown_s=60), HpaSettings())
    scaler.step(0.0, 1, pushed=True)
    scaler.step(5.0, 0, pushed=False)  # inactive from here; last seen active at 0
    scaler.step(55.0, 0, pushed=False)
    assert scaler.replicas == 1
    scaler.step(60.0, 0, pushed=False)
    assert scaler.replicas == 0


def test_the_hpa_follows_the_metric_within_its_policies_and_windows() -> None:
    hpa = HpaSettings(sync_s=15, phase_s=0, up_pods=4, up_percent=100, down_window_s=300)
    scaler = DeploymentScaler(100, KedaSettings("push", max_replicas=50), hpa)
    scaler.step(0.0, 1, pushed=True)  # KEDA: 0 -> 1; the HPA syncs at once (its clock says so) and wants 1
    assert scaler.replicas == 1
    scaler.step(15.0, 3000, pushed=False)  # wants 30; one period allows max(1 + 4, 1 * 2) = 5
    assert scaler.replicas == 5
    scaler.step(30.0, 3000, pushed=False)  # from 5: max(5 + 4, 10) = 10
    assert scaler.replicas == 10
    scaler.step(45.0, 1040, pushed=False)  # wants 11: within 10 % of 10 -> unchanged (tolerance)
    assert scaler.replicas == 10
    scaler.step(60.0, 100, pushed=False)  # wants 1, but the scale-down window holds the highest: 30
    assert scaler.replicas == 10
    scaler.step(345.0, 100, pushed=False)  # the window (300 s) has forgotten the 30s, still holds the 10 of 45 s
    assert scaler.replicas == 10
    scaler.step(360.0, 100, pushed=False)  # only 1s left in it: down, as far as 100 % a period allows
    assert scaler.replicas == 1


# -- the simulation ------------------------------------------------------------------------------------------

ONE = Pipeline(("f",), {"f": ()})
COSTLY = Profile(
    functions={"f": FunctionProfile(cpu_s=1e-3, server_cpu_s=0.5e-3, messages_per_order=1.0, memory_mib=50.0)},
    publish_cpu_s=0.1e-3,
    server_publish_cpu_s=0.1e-3,
    publish_rate=10_000,
    cold_start_s=0.5,
    stored_bytes_per_order=1000,
)
POLICY = {"f": ScalePolicy(0, 4, 100, 5.0)}


def test_a_burst_on_fixed_pods_drains_at_their_pace() -> None:
    result = simulate(ONE, COSTLY, POLICY, shapes.burst(1000), fixed_pods={"f": 2})
    f = result.functions["f"]
    assert f.handled == pytest.approx(1000) and f.left == 0
    assert result.drain_s == pytest.approx(1000 * 1e-3 / 2, abs=0.06)  # two processes, a core each
    assert f.peak_instances == 2 * 4  # each pool sees the whole lag: ceil(1000 / 100) capped at 4
    assert f.pod_seconds == pytest.approx(2 * result.duration_s)
    assert result.server_cores_peak == pytest.approx(1000 * (0.5e-3 + 0.1e-3), rel=0.01)  # all in one second
    assert result.storage_bytes_peak == 1000 * 1000 * 3


def test_shared_cores_slow_everything_alike() -> None:
    alone = simulate(ONE, COSTLY, POLICY, shapes.burst(1000), fixed_pods={"f": 4})
    shared = simulate(ONE, COSTLY, POLICY, shapes.burst(1000), fixed_pods={"f": 4}, cluster=ClusterSettings(cores=0.5))
    assert alone.drain_s is not None and shared.drain_s is not None
    assert shared.drain_s == pytest.approx(1000 * 1.5e-3 / 0.5, abs=0.06)  # function + server CPU on half a core
    assert shared.drain_s > alone.drain_s


def test_a_bench_runs_publisher_feeds_the_burst_at_its_own_rate() -> None:
    # The function drains 4,000/s (4 pods, 1 ms each); the publisher brings 10,000/s: it never waits for it.
    external = simulate(ONE, COSTLY, POLICY, shapes.burst(1000), fixed_pods={"f": 4})
    paced = Profile(**{**COSTLY.__dict__, "publish_rate": 500.0})  # 2 s to publish the 1,000
    bench = simulate(ONE, paced, POLICY, shapes.burst(1000), fixed_pods={"f": 4}, cluster=ClusterSettings(publisher_cpu=True))
    assert external.drain_s is not None and bench.drain_s is not None
    assert external.drain_s == pytest.approx(1000 * 1e-3 / 4, abs=0.06)  # all 1,000 in the stream at once
    assert bench.drain_s == pytest.approx(2.0, abs=0.06)  # the last order handled as it is published
    f = bench.functions["f"]
    assert f.peak_instances == 4  # the lag never builds past what one instance per pod is wanted for


def test_push_wakes_a_pod_sooner_than_polling() -> None:
    load = shapes.LoadShape("one burst at 12.3 s", (shapes.Arrival(12.3, 0.0, 100),), 120.0)
    waits = {}
    for mode in ("push", "poll"):
        result = simulate(ONE, COSTLY, POLICY, load, keda=KedaSettings(mode, polling_interval_s=5, reaction_s=0.5))
        waits[mode] = result.functions["f"].worst_wait_s
        assert result.functions["f"].peak_pods == 1 and result.functions["f"].handled == pytest.approx(100)
    start = 0.5 + ClusterSettings().pod_start_s + COSTLY.cold_start_s
    assert waits["push"] == pytest.approx(start + 0.1, abs=0.15)  # the pod's start, then 0.1 s of work
    assert waits["poll"] == pytest.approx(waits["push"] + (15.0 - 12.3), abs=0.15)  # waited for the poll at 15 s


def test_the_pipeline_follows_the_manifest() -> None:
    manifest = load_manifest(REPO / "ebbtide.toml")
    pipeline = pipeline_of(manifest)
    assert pipeline.order[0] == "distributor" and set(pipeline.order[1:]) == {"receiver-express", "receiver-standard"}
    assert pipeline.entries == ("distributor",) and set(pipeline.leaves) == {"receiver-express", "receiver-standard"}
    policies = {
        n: ScalePolicy(fn.scale.min, fn.scale.max, fn.scale.target_backlog, fn.scale.cooldown_s)
        for n, fn in manifest.spec.functions.items()
    }
    result = simulate(pipeline, DEFAULT, policies, shapes.burst(10_000), fixed_pods={f: 1 for f in pipeline.order})
    handled = {name: f.handled for name, f in result.functions.items()}
    assert handled["distributor"] == pytest.approx(10_000)
    assert handled["receiver-express"] + handled["receiver-standard"] == pytest.approx(10_000)
    assert handled["receiver-express"] == pytest.approx(10_000 * DEFAULT.functions["receiver-express"].messages_per_order)
    assert result.worst_end_to_end_s == pytest.approx(result.drain_s, abs=0.1)
    assert math.isfinite(result.server_cores_peak) and result.server_cores_peak > 0


def test_plan_runs_with_defaults_and_draws_its_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "plan.svg"
    assert (
        main(["--manifest", str(REPO / "ebbtide.toml"), "plan", "--hours", "10", "--busy-hours", "8-9", "--chart", str(chart)])
        == 0
    )
    out = capsys.readouterr().out
    assert "| distributor |" in out and "**all**" in out and "nats-server:" in out
    assert chart.read_text().startswith("<svg") and ">pods (right axis)<" in chart.read_text()
    saved = re.search(r"\*\*(\d+)%\*\* \|$", out, re.M)
    assert saved and 0 < int(saved.group(1)) < 100, out
    assert (
        main(["--manifest", str(REPO / "ebbtide.toml"), "plan", "--sweep", "1000,20000", "--hours", "9", "--busy-hours", "8-9"])
        == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| [0-9]", line)]
    assert len(rows) == 2
    assert main(["--manifest", str(REPO / "ebbtide.toml"), "plan", "--busy-hours", "9-8"]) == 2


# -- the model against the soak (workload/bench/soak.py) -------------------------------------------------------


def test_the_soak_check_compares_each_minute_with_its_own_prediction() -> None:
    from ebbtide.workload.bench.capacity import predict
    from ebbtide.workload.bench.soak import REPLICAS, Minute, SoakResult, model_check

    manifest = load_manifest(REPO / "ebbtide.toml")
    functions = list(manifest.spec.functions)
    replicas = {f: REPLICAS.get(f, 1) for f in functions}

    def minute(index: int, cores: float, slower: float, client_cpu_s: float = DEFAULT.publish_cpu_s) -> Minute:
        """A minute measured as the model predicts it, its drain `slower` times longer (same instance-seconds),
        the soak's own process (the client publishing) costing `client_cpu_s` per order."""
        drain, instance_s, peaks = predict(manifest, DEFAULT, cores, 10_000, replicas)
        return Minute(
            index, 10_000, 10_000, 0.0, drain * slower, 0, 0, [], [], {}, {}, 0.0, 0.0, 0.0, True,
            cores_probed=cores, instance_seconds=instance_s, peak_instances=peaks,
            cpu_per_order={"publisher": client_cpu_s},
        )  # fmt: skip

    heavy_client = minute(4, 2.0, 1.0, client_cpu_s=DEFAULT.publish_cpu_s + 200e-6)
    result = SoakResult(
        "unordered",
        [minute(0, 2.0, 5.0), minute(1, 2.0, 1.0), minute(2, 1.0, 1.2), minute(3, 2.0, 2.0), heavy_client],
        warm_up=1,
    )
    table, details = model_check(manifest, result, DEFAULT)
    assert [m["index"] for m in details["minutes"]] == [1, 2, 3, 4]  # the warm-up minute left out
    assert details["drain_within"] == 3  # +0 %, -17 % and the heavy client's are within ±25 %, -50 % is not
    # Each minute is predicted on its own cores: fewer cores, a longer drain; and with its own client's CPU
    # per order (the soak's process shares the cores): a heavier client, a longer drain.
    assert details["minutes"][1]["drain_s"][1] > details["minutes"][0]["drain_s"][1]
    assert details["minutes"][3]["drain_s"][1] > details["minutes"][0]["drain_s"][1]
    assert "| burst drain, s |" in table and "3 of 4 |" in table
    # The same instance-seconds over a longer drain: fewer instances on average than the model's.
    assert re.search(r"\| distributor: mean instances while draining \| [\d.]+ \| [\d.]+ \| \+\d+% \| \d of 4 \|", table), table
