"""The ordered pipeline (deploy/ordered/ebbtide.toml) with authentication on: each function in a host of its
own with its own generated NATS user (as compose and Kubernetes run it), orders fed as `ingress` on their
keyed subjects. Every partition consumer, keyed subject and rollout watch works with only the grants
users.py gives (tests/integration/test_permissions_matrix.py checks they give nothing more), and every
order's events are applied in sequence."""

from __future__ import annotations

import logging
from pathlib import Path

import nats
import pytest

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.users import write_bundle
from ebbtide.host import Host
from ebbtide.manifest import load_manifest
from ebbtide.ordering import entry_subject
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, event_msg_id, generate_order_events
from tests.conftest import BUILD_DIR, REPO, provision_for, wait_until
from tests.ordering_check import check_outboxes

EVENTS_PER_ORDER = 3
BUCKET_OF = {"Express": "outbox-express", "Standard": "outbox-standard"}


def ordered_copy(tmp_path: Path) -> Path:
    """deploy/ordered/ebbtide.toml building into the session's folder, its data in tmp_path."""
    text = (REPO / "deploy" / "ordered" / "ebbtide.toml").read_text()
    text = text.replace('build_dir = "../../build"', f'build_dir = "{BUILD_DIR}"')
    text = text.replace('data_dir = "../../.ebbtide/nats-ordered"', f'data_dir = "{tmp_path / "nats"}"')
    for folder in ("functions/distributor", "functions/receiver"):
        text = text.replace(f'source = "../../{folder}"', f'source = "{REPO / folder}"\nsdk = "{REPO / "functions/sdk"}"')
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    return path


async def test_the_ordered_pipeline_runs_with_each_function_as_its_own_user(
    tmp_path: Path, reference_manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    manifest = load_manifest(ordered_copy(tmp_path))
    bundle = write_bundle(manifest, tmp_path / "auth")
    events = generate_order_events(120, EVENTS_PER_ORDER, seed=31)
    expected: dict[str, dict[str, int]] = {bucket: {} for bucket in BUCKET_OF.values()}
    for event in events:
        expected[BUCKET_OF[event.delivery]][str(event.order_id)] = EVENTS_PER_ORDER
    subject_of = entry_subject(manifest, INGRESS_SUBJECT)
    assert callable(subject_of), "the ordered manifest's entry is keyed"
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, config_file=bundle.server_config) as server:
        await provision_for(manifest, server.url, bundle.admin())
        hosts = [Host(manifest, server.url, [f], auth=bundle.function(f)) for f in manifest.spec.functions]
        admin = await nats.connect(server.url, **bundle.admin().connect_options())
        ingress = await nats.connect(server.url, **bundle.ingress().connect_options())
        try:
            for host in hosts:
                await host.__aenter__()
            js = ingress.jetstream()
            for event in events:
                payload = encode_order(event)
                await js.publish(subject_of(payload), payload, headers={"Nats-Msg-Id": event_msg_id(event)})

            async def all_applied() -> bool:
                streams = [await admin.jetstream().stream_info(f"KV_{b}") for b in BUCKET_OF.values()]
                return sum(s.state.last_seq for s in streams) >= len(events)

            await wait_until(all_applied, timeout=120)
        finally:
            for host in reversed(hosts):
                await host.__aexit__(None, None, None)
            await ingress.close()
        try:
            checks = await check_outboxes(admin, expected)
            dead = (await admin.jetstream().stream_info("DLQ")).state.messages
        finally:
            await admin.close()
    assert all(check.clean for check in checks.values()), checks
    assert dead == 0
    refused = [r.getMessage() for r in caplog.records if "ermission" in r.getMessage() or "rollouts are off" in r.getMessage()]
    assert not refused, refused  # every grant the hosts needed (partitions, keyed subjects, rollout watch) was there
