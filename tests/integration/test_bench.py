"""`ebbtide bench --quick` completes and its figures are sane (not that they reach the goals: noisy machines)."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.manifest import LoadedManifest
from ebbtide.workload.bench import DEFAULT_SCENARIOS, BenchOptions, run_bench
from ebbtide.workload.bench import server as server_bench
from ebbtide.workload.bench.comparison import TUNING_ROUNDS
from ebbtide.workload.bench.ordering import CASES as ORDERING_CASES
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import read_stream


# Every scenario at its quick size, after the session's module build: past the default 300 s on the shared
# 2-core machine at load average 25-30 (2026-12-07: 227 s for the call alone; its activation tries right after
# a burst may wait ~5 s each, see README: Activation from zero).
@pytest.mark.timeout(600)
async def test_quick_bench_completes_with_sane_figures(reference_manifest: LoadedManifest, tmp_path: Path) -> None:
    scenarios = [s for s in DEFAULT_SCENARIOS if s != "capacity"]  # its own test: test_capacity_bench.py
    report = await run_bench(reference_manifest, scenarios, quick=True, out_dir=tmp_path)
    figures = {f.name: f.value for f in report.figures}
    assert all(math.isfinite(v) for v in figures.values())
    # A slope may be negative, and so may the memory of one more function in a process: a difference of two
    # processes' private memory, each with its own noise of a few pages (its own bound is checked below).
    added_function = "each additional function in one process: private memory"
    assert all(v >= 0 for name, v in figures.items() if "slope" not in name and name != added_function)
    assert -1 < figures[added_function] < 64  # MiB
    for form in (*server_bench.PUBLISH_FORMS, *server_bench.SETTLE_FORMS):  # every form measured, all stored / settled
        assert 0 < figures[f"nats-server CPU per message: {form}"] < 10_000  # µs
    assert 0 < figures["idle function process: private memory"] < 1024  # MiB
    assert 0 < figures["replica cold start: exec to ready (median)"] < 60_000  # ms
    assert 0 < figures["replica cold start: CPU time to first message processed (median)"] < 60_000  # ms
    # The floor under a replica: the interpreter, then the libraries it needs, then the replica itself.
    bare, libraries = (
        figures[f"floor: {what}, private dirty memory"] for what in ("the interpreter alone", "the interpreter and the libraries")
    )
    assert 0 < bare < libraries < figures["idle function process: private dirty memory"] + 1  # MiB, a page of noise
    assert 0 < figures["guest call, distributor, one order"] < 10_000  # µs
    assert 0 < figures["guest call per message, distributor, batches of 64"] < 10_000  # µs
    assert 0 < figures["instance start"] < 100_000  # µs
    assert 0 < figures["added RSS per idle instance"] < 10_000  # KiB
    for moment in ("right after a burst", "after a long idle"):
        # --quick has too few tries for a p99: it says so and prints the max instead (issue 27: "p99" of 8 tries)
        assert 0 < figures[f"activation from zero {moment}, p50"] <= figures[f"activation from zero {moment}, max"] < 30_000
        assert f"activation from zero {moment}, p99" not in figures
    assert 1 <= figures["distributor: peak instances"] <= reference_manifest.function("distributor").scale.max
    # Measured, and the pool did get back to zero. That it waits for the cooldown first is the scaler's rule,
    # tested without a clock (tests/unit/test_scaler.py): a bound in seconds here failed on a loaded machine,
    # where this benchmark saw the backlog gone late (4.3 s < 0.9 x 5 s; issue 27).
    assert figures["distributor: empty backlog to zero instances"] > 0
    assert 0 < figures["host CPU per order, shadow 100 % / none"] < 1000  # %
    assert (tmp_path / "results.json").exists() and (tmp_path / "burst.svg").exists()
    assert "| activation from zero right after a burst, p50 |" in report.markdown()

    saved = json.loads((tmp_path / "results.json").read_text())
    activation = saved["details"]["activation"]
    assert len(activation["after_burst_ms"]) == 10 and len(activation["after_long_idle_ms"]) == 2
    # The shadow rows compare a candidate that is the live module itself. That it did the live guests' work is
    # a count, not a time ratio (which moved out of 30-300 % on a loaded machine): at 100 % it judged every
    # message a live guest ran, each "same"; at 10 % a part of them; with no shadow, none. Its time was measured.
    for run in saved["details"]["shadow"]["runs"]:
        judged, ran = sum(run["verdicts"].values()), run["live_ran"]
        assert ran >= 2 * saved["details"]["shadow"]["orders"], run  # the distributor's and a receiver's call per order
        assert set(run["verdicts"]) <= {"same"}, run
        assert {"none": judged == 0, "10 %": 0 < judged < ran, "100 %": judged == ran}[run["setting"]], run
    for share in ("10 %", "100 %"):
        assert figures[f"candidate guest time, shadow {share} / live guest time"] > 0
    burst = saved["details"]["burst"]
    ebbtides = {"ebbtide-default"} if burst["fastest_config"]["name"] == "default" else {"ebbtide-default", "ebbtide-fastest"}
    assert set(burst["implementations"]) == {"raw", "raw-batched", "faststream", "ebbtide-puback"} | ebbtides
    for key, impl in burst["implementations"].items():
        n, rounds = burst["orders"], burst["rounds"]
        assert impl["sent"] == impl["stored"] == impl["writes"] == [n] * rounds, key  # each order once
        assert impl["mismatched"] == impl["dead_letters"] == [0] * rounds and impl["exactly_once"], key
        wire = impl["messages_per_order"]
        assert 2 < wire["in"] < 20 and 2 < wire["out"] < 20, key  # a publish, a delivery, an ack... per hop
        if key != "faststream":  # each of the others had a counted burst: every order acked on both hops
            assert 1.99 <= wire["acks"] < 3, key
        assert 0 < impl["wall_s"]["min"] <= impl["wall_s"]["median"] < 120, key
        assert 0 < impl["orders_per_s"]["median"] <= impl["orders_per_s"]["max"], key
        lat = impl["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] <= impl["wall_s"]["median"] * 1000 + 1, key
    # throughput and both CPUs against each baseline and against ebbtide with a PubAck per effect
    assert len(burst["ratios"]) >= 12 * len(ebbtides) and all(0 < r < math.inf for r, _, _ in burst["ratios"].values())
    assert any("FastStream: throughput" in goal for goal in burst["goals"])
    assert any(goal.startswith("every burst exactly once") and goal.endswith("yes") for goal in burst["goals"])

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
    ordering = saved["details"]["ordering"]
    assert [case["case"] for case in ordering["cases"]] == [case.name for case in ORDERING_CASES]
    for case in ordering["cases"]:
        for key in ("unordered", "ordered"):
            assert case[key]["writes"] == case["events"] and case[key]["wall_s"] > 0, (case, key)
        assert case["ordered"]["out_of_order"] == 0, case
    markdown = report.markdown()
    assert "Per-key ordering: its cost" in markdown
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


async def test_the_search_for_the_fastest_configuration(reference_manifest: LoadedManifest, tmp_path: Path) -> None:
    """The full run's search (alternating rounds of one burst per configuration), here over two configurations
    and a small burst."""
    options = BenchOptions(orders=300, tune=True, candidates=["default", "single"])
    report = await run_bench(reference_manifest, ["burst"], quick=True, out_dir=tmp_path, options=options)
    tuning = report.details["tuning"]
    assert set(tuning) == {"default", "single"}
    assert all(len(t["wall_s"]) == TUNING_ROUNDS and 0 < t["median_s"] for t in tuning.values())
    fastest = report.details["burst"]["fastest_config"]["name"]
    assert tuning[fastest]["median_s"] == min(t["median_s"] for t in tuning.values())
    ran = set(report.details["burst"]["implementations"])
    assert ran == {"raw", "raw-batched", "faststream", "ebbtide-default", "ebbtide-puback"} | (
        {"ebbtide-fastest"} if fastest != "default" else set()
    )
    assert "configurations tried" in report.markdown()


async def test_faststream_baseline_stores_valid_orders_and_dead_letters_the_rest(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """The FastStream pipeline does what the Wasm functions do, invalid input included (one process, every role)."""
    await provision(nc.jetstream(), reference_manifest)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ebbtide.workload.baselines.faststream_pipeline",
        "--nats-url",
        nats_server.url,
        "--role",
        "all",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"ready"
        good = generate_orders(20, seed=3)
        js = nc.jetstream()
        for order in good:
            await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        for n, bad in enumerate([b"{not json", b'{"orderId": 1, "delivery": "Drone", "items": [1]}']):
            await js.publish(INGRESS_SUBJECT, bad, headers={"Nats-Msg-Id": f"bad-{n}"})
        express = [o for o in good if o.delivery == "Express"]
        stored = await read_stream(nc, "KV_outbox-express", expected=len(express))
        stored += await read_stream(nc, "KV_outbox-standard", expected=len(good) - len(express))
        assert sorted((m.subject, m.data) for m in stored) == sorted(
            (f"$KV.outbox-{o.delivery.lower()}.{o.order_id}", encode_order(o)) for o in good
        )
        dead = await read_stream(nc, "DLQ", expected=2)
        assert sorted(m.headers["Ebbtide-Error"].split(":")[0] for m in dead) == ["malformed-json", "unknown-delivery"]
        assert all(m.subject == "dlq.distributor" for m in dead)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
