"""A function whose manifest pins its module (`functions.F.sha256`) runs that module and no other unless an
operator overrides the pin: `ebbtide canary` and `ebbtide shadow promote` of another digest exit 2 saying
so (a shadow run, which carries nothing out, is allowed); a record promoting another digest without the
override (written by hand, or by an older version) is not followed by the host; with `--override-pin`
the promotion goes through and is recorded as overridden."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
import wasmtime
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.names import ROLLOUTS_BUCKET
from ebbtide.host import Host
from ebbtide.rollout.state import Phase, encode_rollout
from ebbtide.rollout.store import sha256_of
from tests.conftest import GUESTS, chaos_manifest, provision_for, wait_until
from tests.integration.test_hot_reload import CHAOS_V2
from tests.integration.test_rollout_live import candidate_file, ebbtide, record_of


async def test_a_pinned_module_is_replaced_only_with_the_admins_explicit_override(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    pin = hashlib.sha256(wasmtime.wat2wasm((GUESTS / "chaos.wat").read_text())).hexdigest()
    manifest = chaos_manifest(tmp_path, f'sha256 = "{pin}"\n')
    await provision_for(manifest, nats_server.url)
    candidate = candidate_file(tmp_path, CHAOS_V2)
    digest = sha256_of(candidate.read_bytes())
    url = ["--nats-url", nats_server.url]
    kv = await nc.jetstream().key_value(ROLLOUTS_BUCKET)
    async with Host(manifest, nats_server.url) as host:
        pool, follower = host.pools["chaos"], host.rollouts
        assert pool.module.sha256 == pin and follower is not None

        # A canary would carry out the candidate's answers: refused, nothing recorded.
        assert await ebbtide(manifest, "canary", *url, "-f", "chaos", "--module", str(candidate), "--share", "10%") == 2
        assert f"pins its module to sha256 {pin[:12]}" in capsys.readouterr().err
        assert [key async for key in _keys(kv)] == []

        # A shadow run carries nothing out: allowed. Its promotion is not, without the override.
        assert await ebbtide(manifest, "shadow", *url, "start", "-f", "chaos", "--module", str(candidate)) == 0
        await wait_until(lambda: pool.candidate_sha256 == digest)
        assert await ebbtide(manifest, "shadow", *url, "promote", "chaos", "--wait", "0") == 2
        assert "--override-pin" in capsys.readouterr().err
        assert (await record_of(nc, "chaos")).phase is Phase.ACTIVE and pool.module.sha256 == pin

        # A record promoting another digest without the override (by hand, or an older version): not followed.
        record = await record_of(nc, "chaos")
        promoted = msgspec.structs.replace(record, phase=Phase.PROMOTED, live_sha256=digest, live_lang=record.lang)
        revision = await kv.put("chaos", encode_rollout(promoted))
        await wait_until(lambda: follower.records.get("chaos", (None, 0))[1] == revision)
        assert pool.module.sha256 == pin and follower.pinned("chaos") == ""

        # The admin's explicit override: promoted, and recorded as overridden.
        await kv.put("chaos", encode_rollout(record))  # back to the active shadow run
        assert await ebbtide(manifest, "shadow", *url, "promote", "chaos", "--override-pin", "--wait", "10") == 0
        await wait_until(lambda: pool.module.sha256 == digest)
        after = await record_of(nc, "chaos")
        assert (after.phase, after.live_sha256, after.pin_override) == (Phase.PROMOTED, digest, True)


async def _keys(kv):  # type: ignore[no-untyped-def]
    try:
        for key in await kv.keys():
            yield key
    except nats.js.errors.NoKeysError:
        return
