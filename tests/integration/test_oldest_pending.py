"""`ebbtide_oldest_pending_seconds`: the age of a function's oldest unhandled message, read by the function's
own least-privilege user on a real server, in the status reports and on /metrics, and 0 once it is handled."""

from __future__ import annotations

from pathlib import Path

import msgspec
import nats
import pytest

from ebbtide.broker import provision
from ebbtide.broker.access import embedded_server
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.status_reports import STATUS_SUBJECT_PREFIX, PoolStatus, decode_status
from ebbtide.telemetry import render_metrics
from tests.conftest import chaos_manifest, wait_until


def retried_for_a_while(tmp_path: Path, ordered: bool) -> LoadedManifest:
    """The chaos guest (R: asks for a retry, every time), retried every half second, practically forever;
    ordered: by a key in 8 partitions, messages published to `in.chaos.<key>`."""
    manifest = chaos_manifest(tmp_path, 'order_by = "key"\n' if ordered else "")
    fn = manifest.function("chaos")
    fn = msgspec.structs.replace(fn, retry=msgspec.structs.replace(fn.retry, max_deliver=100_000, backoff_ms=[500]))
    streams = {name: msgspec.structs.replace(s, partitions=8) for name, s in manifest.spec.streams.items()}
    return LoadedManifest(msgspec.structs.replace(manifest.spec, functions={"chaos": fn}, streams=streams), manifest.path)


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_the_age_of_a_message_stuck_in_retries_is_reported_until_it_is_removed(tmp_path: Path, ordered: bool) -> None:
    """A message the guest retries forever keeps the function's age growing while newer ones are handled; an
    operator deletes it, and the age is 0 again. Ordered, the stuck message sits on one partition's consumer
    and the others are empty: the function's age is that partition's."""
    manifest = retried_for_a_while(tmp_path, ordered)
    subject = "in.chaos.key-1" if ordered else "in.chaos"
    with embedded_server(manifest, tmp_path / "nats", port=0, monitor_port=0, auth=True) as (server, access):
        admin = await nats.connect(server.url, **access.admin.connect_options())
        reports: list[PoolStatus] = []

        async def record(msg) -> None:  # type: ignore[no-untyped-def]
            reports.append(decode_status(msg.data))

        await admin.subscribe(f"{STATUS_SUBJECT_PREFIX}.chaos", cb=record)
        js = admin.jetstream()
        await provision(js, manifest)
        async with Host(manifest, server.url, ["chaos"], auth=access.for_functions(["chaos"])) as host:
            pool, controller = host.pools["chaos"], host.controllers["chaos"]
            stuck = await js.publish(subject, b"R-retry")
            stored_at = (await js.get_msg("TEST", stuck.seq)).time
            assert stored_at is not None
            stored_unix = stored_at.timestamp()

            def reported_age() -> list[PoolStatus]:
                return [r for r in reports if r.oldest_pending_s > 0]

            await wait_until(lambda: reported_age() and pool.stats.retried >= 1)
            await js.publish(subject.replace("key-1", "key-2"), b"good")  # handled at once; the stuck one stays the oldest
            await wait_until(lambda: pool.stats.processed == 1)
            await wait_until(lambda: any(r.processed == 1 for r in reported_age()))
            for report in reported_age():
                # The stored time of the stuck message, read by the function's own user: its age at each report.
                assert abs(report.oldest_pending_s - (report.time - stored_unix)) < 0.01, (report, stored_unix)
            metrics = render_metrics(host.snapshot())
            [line] = [x for x in metrics.splitlines() if x.startswith('ebbtide_oldest_pending_seconds{function="chaos"}')]
            assert float(line.split()[-1]) > 0

            await js.delete_msg("TEST", stuck.seq)  # the operator removes it
            await wait_until(lambda: controller.oldest_pending_s == 0.0)  # nothing unhandled any more
            assert 'ebbtide_oldest_pending_seconds{function="chaos"} 0.0' in render_metrics(host.snapshot())
            assert pool.stats.dead_lettered == 0
        await admin.drain()
