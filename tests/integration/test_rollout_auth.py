"""Rollouts followed by a host running as the function's own NATS user (authentication on, as in compose and
Kubernetes): the record's bell, its direct read and the candidate's download need no consumer, and the
function's grants (broker/users.py) are all they take. An operator (admin) starts a shadow run and promotes
it through the CLI; the host picks the candidate up, then swaps it in."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.users import ADMIN_USER, write_bundle
from ebbtide.host import Host
from ebbtide.rollout.store import sha256_of
from tests.conftest import chaos_manifest, provision_for, wait_until
from tests.integration.test_hot_reload import CHAOS_V2
from tests.integration.test_rollout_live import candidate_file, ebbtide


async def test_a_host_running_as_its_functions_user_follows_a_shadow_run_and_its_promotion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    manifest = chaos_manifest(tmp_path)
    bundle = write_bundle(manifest, tmp_path / "auth")
    candidate = candidate_file(tmp_path, CHAOS_V2)
    digest = sha256_of(candidate.read_bytes())
    monkeypatch.setenv("EBBTIDE_NATS_NKEY_SEED_FILE", str(bundle.seed_file(ADMIN_USER)))  # the operator's CLI
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, config_file=bundle.server_config) as server:
        await provision_for(manifest, server.url, bundle.admin())
        url = ["--nats-url", server.url]
        async with Host(manifest, server.url, ["chaos"], auth=bundle.function("chaos")) as host:
            pool = host.pools["chaos"]
            assert await ebbtide(manifest, "shadow", *url, "start", "-f", "chaos", "--module", str(candidate)) == 0
            await wait_until(lambda: pool.candidate_sha256 == digest)
            assert await ebbtide(manifest, "shadow", *url, "promote", "chaos", "--wait", "10") == 0
            await wait_until(lambda: pool.module.sha256 == digest)
    refused = [r.getMessage() for r in caplog.records if "ermission" in r.getMessage() or "rollouts are off" in r.getMessage()]
    assert not refused, refused
