"""One guest loop and one spec (issue 28): the same messages through every path that runs a function's guest
— the live pool, a shadow run, a canary, offline replay and `ebbtide.testing` — get the same answers.

Real nats-server, real Wasm (tests/guests/chaos.wat), the rollouts started through the CLI as a user does.
The function `chaos` publishes each payload to `test.out`, the trigger of an *ordered* function (`order_by =
"k"`): an effect whose payload has no key `k` is refused and dead-lettered by the pool. That is the case
that once drifted (replay held effects against an allowlist without the ordered triggers, and said the
candidate "would now handle" them).
"""

from __future__ import annotations

import json
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.headers import H_REASON
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, parse_manifest
from ebbtide.rollout.compare import Verdict
from ebbtide.rollout.replay import Replay, StoredInput, load_versions
from ebbtide.testing import FunctionUnderTest
from tests.conftest import chaos_manifest, provision_for, wait_until
from tests.integration.test_rollout_live import ebbtide, publish

# payload -> (outcome, dead-letter reason) as the pool gives it at the first delivery (retry.max_deliver = 1:
# a transient failure is dead-lettered at once, so every message ends in one delivery).
EXPECTED: dict[bytes, tuple[str, str | None]] = {
    b'{"k": "a1"}': ("ack", None),
    b"good-but-no-key": ("dead-letter", "effect-refused"),  # not JSON: no order_by key (the drifted case)
    b'{"other": 1}': ("dead-letter", "effect-refused"),  # JSON without the key
    b"X-reject": ("dead-letter", "rejected"),
    b"T-trap": ("dead-letter", "retries-exhausted"),  # a fault; the next message runs on a fresh instance
    b'{"k": "a2"}': ("ack", None),
    b"F-forbidden": ("dead-letter", "effect-refused"),  # outside the allowlist
    b"G-garbage": ("dead-letter", "retries-exhausted"),  # output that does not decode: a fault too
    b"R-retry": ("dead-letter", "retries-exhausted"),
    b'{"k": "a3"}': ("ack", None),
}
PAYLOADS = list(EXPECTED)
FAULTS = 2  # T and G: a shadow's candidate faults where the live module does


def ordered_sink_manifest(tmp_path: Path) -> LoadedManifest:
    """chaos (publishing to test.out), one delivery per message, and `sink`: ordered by `k` on test.out."""
    chaos_manifest(tmp_path)
    path = tmp_path / "ebbtide.toml"
    text = path.read_text().replace("max_deliver = 3", "max_deliver = 1")
    text += '\n[functions.sink]\nmodule = "chaos"\ntrigger = "test.out"\norder_by = "k"\n'
    path.write_text(text)
    return parse_manifest(text, path)


class Outcomes:
    """Reads each round's outcomes from the server: what was dead-lettered (with its reason) and what was
    acked (its effect stored on test.out.<partition>), stored since the last round."""

    def __init__(self, nc: NatsClient) -> None:
        self.js = nc.jetstream()
        self.read_up_to = {"DLQ": 0, "TEST": 0}

    async def of_round(self) -> dict[bytes, tuple[str, str | None]]:
        """Each payload's outcome, once every one of the round has one."""
        got: dict[bytes, tuple[str, str | None]] = {}
        last = dict(self.read_up_to)

        async def read() -> bool:
            for stream in last:
                for seq in range(last[stream] + 1, (await self.js.stream_info(stream)).state.last_seq + 1):
                    last[stream] = seq
                    try:
                        msg = await self.js.get_msg(stream, seq)
                    except nats.js.errors.NotFoundError:
                        continue  # an input of this round, acked from the work queue
                    if stream == "DLQ":
                        got[msg.data] = ("dead-letter", (msg.headers or {}).get(H_REASON))
                    elif msg.subject.startswith("test.out."):
                        got[msg.data] = ("ack", None)
            return len(got) >= len(PAYLOADS)

        await wait_until(read, timeout=60)
        self.read_up_to = last
        return got


async def test_the_pool_shadow_canary_replay_and_the_testing_harness_give_the_same_answers(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = ordered_sink_manifest(tmp_path)
    await provision_for(manifest, nats_server.url)
    module = manifest.module_path("chaos")  # every candidate is the live module itself: the answers must agree
    url = ["--nats-url", nats_server.url]
    messages = [(payload, None) for payload in PAYLOADS]

    # ebbtide.testing: no NATS, the function as the manifest describes it.
    harness = FunctionUnderTest.from_manifest(manifest, "chaos", build=False)
    tested = {payload: harness.run(payload) for payload in PAYLOADS}
    assert {p: (r.outcome, r.reason) for p, r in tested.items()} == EXPECTED

    outcomes = Outcomes(nc)
    async with Host(manifest, nats_server.url, functions=["chaos"]) as host:
        pool = host.pools["chaos"]
        # The live pool alone.
        await publish(nc, "in.chaos", messages)
        assert await outcomes.of_round() == EXPECTED

        # A shadow run of the same module: the live answers are carried out as before, and the candidate's
        # are the same (a fault is the candidate's own verdict, whatever the live module did).
        assert await ebbtide(manifest, "shadow", *url, "start", "-f", "chaos", "--module", str(module)) == 0
        await wait_until(lambda: pool.candidate_sha256 != "")
        await publish(nc, "in.chaos", messages)
        assert await outcomes.of_round() == EXPECTED
        await wait_until(lambda: sum(pool.rollout_stats.shadow.values()) == len(PAYLOADS))
        assert pool.rollout_stats.shadow == {Verdict.SAME.value: len(PAYLOADS) - FAULTS, Verdict.CANDIDATE_FAULT.value: FAULTS}
        assert await ebbtide(manifest, "shadow", *url, "abort", "chaos") == 0
        await wait_until(lambda: pool.candidate_sha256 == "")

        # A canary taking every message: the candidate's answers are carried out, and they are the pool's.
        canary = ["canary", *url, "-f", "chaos", "--module", str(module), "--share", "100%"]
        assert await ebbtide(manifest, *canary, "--max-fault-rate", "100%", "--max-dead-letter-rate", "100%") == 0
        await wait_until(lambda: pool.candidate_sha256 != "")
        await publish(nc, "in.chaos", messages)
        assert await outcomes.of_round() == EXPECTED
        counted = dict(pool.rollout_stats.canary)
        assert sum(counted.values()) == len(PAYLOADS) and {version for version, _ in counted} == {"candidate"}
        assert await ebbtide(manifest, "shadow", *url, "abort", "chaos") == 0
        await wait_until(lambda: pool.candidate_sha256 == "")

        # The live pool again, its dead letters alone in the stream, for `ebbtide replay --from-dlq`.
        await nc.jetstream().purge_stream("DLQ")
        await publish(nc, "in.chaos", messages)
        assert await outcomes.of_round() == EXPECTED

    # Offline replay, the candidate being the live module: it would handle exactly what the pool acked.
    judge = Replay(load_versions(manifest, "chaos", module), keep=0, dead_letters=True)
    for seq, payload in enumerate(PAYLOADS, start=1):
        judge.add(StoredInput("in.chaos", payload, seq))
    replayed = judge.finish()
    acked = [seq for seq, payload in enumerate(PAYLOADS, start=1) if EXPECTED[payload][0] == "ack"]
    assert replayed.would_handle == acked
    assert replayed.counts == {Verdict.SAME: len(PAYLOADS) - FAULTS, Verdict.CANDIDATE_FAULT: FAULTS, Verdict.DIFFERENT: 0}

    # ... and from the dead-letter stream, through the CLI: none of them (refused keys included) would it handle.
    capsys.readouterr()
    assert await ebbtide(manifest, "replay", *url, "-f", "chaos", "--module", str(module), "--from-dlq", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    dead = sum(outcome == "dead-letter" for outcome, _ in EXPECTED.values())
    assert document["would_handle"] == []
    assert document["counts"] == {"different": 0, "candidate_fault": FAULTS, "same": dead - FAULTS}
