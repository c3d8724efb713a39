"""Shadow overhead: the same burst with no shadow, every function shadowing 10 % and 100 % of its messages.

The candidate of each function is its own module (so every verdict is `same` and the candidate does the
full work of a real one): what is measured is the cost of running a second guest beside the live one and
judging the answers, on the same cores. Throughput is the wall-clock figure; the host's CPU per order (this
process: the publisher and the hosts, not nats-server) says the same without the noise of other load on
the machine.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from pathlib import Path

from ...broker import ConfirmedPublisher, EmbeddedNats, connect, provision, publish_all
from ...broker.names import ROLLOUTS_BUCKET
from ...host import Host
from ...manifest import LoadedManifest
from ...rollout.state import Mode, Rollout, encode_rollout
from ...rollout.store import upload_module
from ..orders import INGRESS_SUBJECT, encode_order, generate_orders
from .harness import stored_orders
from .report import BenchReport

SETTINGS: list[tuple[str, float | None]] = [("none", None), ("10 %", 0.1), ("100 %", 1.0)]


async def bench_shadow(manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path) -> None:
    orders = 2_000 if quick else 10_000
    data_dir = out_dir / "nats-shadow"
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench")
        try:
            js = nc.jetstream()
            publisher = ConfirmedPublisher(nc)
            await publisher.start()
            await provision(js, manifest)
            rollouts = await js.key_value(ROLLOUTS_BUCKET)
            throughput: dict[str, list[float]] = {label: [] for label, _ in SETTINGS}
            candidate_share: dict[str, list[float]] = {label: [] for label, _ in SETTINGS}
            cpu_ms: dict[str, list[float]] = {label: [] for label, _ in SETTINGS}  # host CPU per order: robust to other load
            runs: list[dict[str, object]] = []  # per run: messages the live guests ran, the candidates' verdicts
            rounds = 1 if quick else 3  # interleaved, so that the machine's other load falls on every setting alike
            for run, (label, share) in enumerate(SETTINGS * rounds):
                for function, fn in manifest.spec.functions.items():
                    if share is None:
                        await rollouts.delete(function)
                        continue
                    digest = await upload_module(js, manifest.module_path(fn.module).read_bytes())
                    lang = manifest.spec.modules[fn.module].lang
                    record = Rollout(function=function, mode=Mode.SHADOW, candidate_sha256=digest, lang=lang, share=share)
                    await rollouts.put(function, encode_rollout(record))
                batch = generate_orders(orders, seed=run, first_id=5_000_000 + run * orders)
                payloads = [(encode_order(o), o.order_guid) for o in batch]
                async with Host(manifest, server.url) as host:  # reads the records before it takes a message
                    before = await stored_orders(nc, manifest)
                    started, cpu_started = time.time(), time.process_time()
                    await publish_all(publisher, INGRESS_SUBJECT, payloads)
                    while await stored_orders(nc, manifest) < before + orders:
                        await asyncio.sleep(0.005)
                    throughput[label].append(orders / (time.time() - started))
                    cpu_ms[label].append((time.process_time() - cpu_started) / orders * 1000)
                    live_s = sum(pool.stats.handle.sum for pool in host.pools.values())
                    candidate_s = sum(pool.rollout_stats.candidate_s for pool in host.pools.values())
                    candidate_share[label].append(candidate_s / live_s * 100 if live_s else 0.0)
                    verdicts: dict[str, int] = {}
                    for pool in host.pools.values():
                        for verdict, count in pool.rollout_stats.shadow.items():
                            verdicts[verdict] = verdicts.get(verdict, 0) + count
                    ran = sum(pool.stats.handle.count for pool in host.pools.values())
                    runs.append({"setting": label, "share": share, "live_ran": ran, "verdicts": verdicts})
        finally:
            await nc.drain()
    how = (
        f"{orders:,}-order burst, all functions in one process, pools from zero; every function shadows its own "
        f"module; median of {rounds} interleaved run(s) per setting"
    )
    report.details["shadow"] = {"orders": orders, "runs": runs}
    baseline = statistics.median(throughput["none"])
    cpu_baseline = statistics.median(cpu_ms["none"])
    report.add("throughput, no shadow", baseline, "orders/s", how)
    report.add("host CPU per order, no shadow", cpu_baseline, "ms", how + "; this process (publisher and hosts), not nats-server")
    for label in ("10 %", "100 %"):
        report.add(f"throughput, shadow {label}", statistics.median(throughput[label]), "orders/s", how)
        report.add(f"throughput, shadow {label} / none", statistics.median(throughput[label]) / baseline * 100, "%", how)
        cpu = statistics.median(cpu_ms[label])
        report.add(f"host CPU per order, shadow {label}", cpu, "ms", how)
        report.add(f"host CPU per order, shadow {label} / none", cpu / cpu_baseline * 100, "%", how)
        report.add(f"candidate guest time, shadow {label} / live guest time", statistics.median(candidate_share[label]), "%", how)
