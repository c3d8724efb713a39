"""A host follows the rollout records of the functions it runs (the `ebbtide-rollouts` KV bucket).

Per function, its current record is read before the host takes any message (so a replica started later,
or restarted, runs what the record says: a promoted module, a candidate beside the live one), and every
later write is applied as it arrives, on every replica: a plain subscription on the record's subject rings
a bell, and the record is then read (a direct get of its last value); it is also read every RECONCILE_S,
for a write made while the connection was down. No consumer is created: a function's NATS user may read
its record and subscribe to its subject, and create, delete or change no consumer (broker/users.py).
Applying a record:

- the live module is `live_sha256` (a promoted candidate, from the `ebbtide-modules` object store) or the
  manifest's; a change is swapped in through the pool's hot reload (`FunctionPool.swap_module`: messages in
  flight finish on the old module, none is lost);
- an active record puts its candidate beside it (`ShadowRun` or `CanaryRun` as `pool.rollout`); any other
  phase removes it.

A canary that passes its threshold on this host is stopped here at once and `rolled-back` is written to
the record (compare-and-set on its revision: of several hosts seeing it, the first writes), which every
replica then follows.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from ..broker.headers import H_MSG_ID
from ..broker.names import ROLLOUTS_BUCKET, kv_subject
from ..errors import RunError
from ..manifest import LoadedManifest
from ..pool import FunctionPool
from ..runtime import WasmEngine
from ..runtime.guests import GuestModule
from .canary import CanaryRun
from .candidate import Candidate
from .samples import Sample, encode_sample, sample_subject
from .shadow import ShadowRun
from .state import Mode, Phase, Rollout, changed, decode_rollout, encode_rollout
from .store import fetch_module

log = logging.getLogger("ebbtide.rollout")

BUCKET_RETRY_S = 5.0  # while the rollouts bucket does not exist (a server provisioned by an older version)
RECONCILE_S = 5.0  # each record is read this often besides its bell: a write while disconnected rang none


def scratch_folder() -> Path:
    """Where candidates go when build_dir cannot be written (the image's /app/build belongs to root, and
    Kubernetes mounts the root filesystem read-only with an emptyDir at /tmp). Not `tempfile`: a function
    process does not load it (tests/integration/test_lean_imports.py); each file is checked against its
    digest before it is used, whoever could write there."""
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"ebbtide-rollout-{os.getuid()}"


class RolloutFollower:
    def __init__(self, nc: NatsClient, manifest: LoadedManifest, engine: WasmEngine, pools: dict[str, FunctionPool]) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._manifest = manifest
        self._engine = engine
        self._pools = pools
        self._folder = manifest.build_dir / "rollout"
        self.records: dict[str, tuple[Rollout | None, int]] = {}  # function -> (record, revision) as applied
        self._kv: KeyValue | None = None
        self._bells: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._applying: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in pools}
        self._promoted: dict[str, str] = {}  # function -> the promoted module's sha256 it runs (none: the manifest's)

    async def start(self) -> None:
        """Apply each function's current record, then follow it (in the background). Rollouts that cannot be
        followed (no bucket yet: a server provisioned by an older version; a user without the rights) are
        off, said once, and tried again every BUCKET_RETRY_S: the functions run as they are meanwhile."""
        try:
            await self._watch_all()
        except Exception as exc:
            log.warning(
                "rollouts are off for now (%r): is the %s bucket provisioned (`ebbtide provision`) and may this "
                "user read it (`ebbtide nats-config`)? trying again every %.0f s",
                exc,
                ROLLOUTS_BUCKET,
                BUCKET_RETRY_S,
            )
            self._spawn(self._start_later())

    async def _watch_all(self) -> None:
        self._kv = await self._js.key_value(ROLLOUTS_BUCKET)
        bells = {name: asyncio.Event() for name in self._pools}
        subscriptions: list[Subscription] = []
        try:
            for name, bell in bells.items():
                subscriptions.append(await self._nc.subscribe(kv_subject(ROLLOUTS_BUCKET, name), cb=_ringing(bell)))
                await self._read_and_apply(name)  # the current record, before the host takes a message
        except BaseException:
            await _unsubscribe(subscriptions)
            raise
        self._bells = subscriptions
        for name, bell in bells.items():
            self._spawn(self._follow(name, bell))

    async def _start_later(self) -> None:
        while True:
            await asyncio.sleep(BUCKET_RETRY_S)
            try:
                await self._watch_all()
                log.info("rollouts: following %s", ", ".join(self._pools))
                return
            except Exception as exc:
                log.debug("rollouts still off: %r", exc)

    async def _follow(self, name: str, bell: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(bell.wait(), RECONCILE_S)
            except TimeoutError:
                pass
            bell.clear()
            try:
                await self._read_and_apply(name)
            except Exception as exc:  # the server away for a while: the next bell or reconcile reads it
                log.debug("%s: rollout record not read: %r", name, exc)

    async def _read_and_apply(self, name: str) -> None:
        """Read the function's record; apply it when its revision is not the one applied."""
        assert self._kv is not None
        value: bytes | None
        try:
            entry = await self._kv.get(name)
            value, revision = entry.value, entry.revision or 0
        except nats.js.errors.KeyNotFoundError as gone:  # never written, or deleted / purged
            value, revision = None, getattr(getattr(gone, "entry", None), "revision", None) or 0
        if name in self.records and self.records[name][1] == revision:
            return
        await self._apply(name, value, revision)

    def pinned(self, function: str) -> str:
        """The promoted module this function runs instead of the manifest's ("" when none)."""
        return self._promoted.get(function, "")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await _unsubscribe(self._bells)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- applying a record -----------------------------------------------------------------------------

    async def _apply(self, name: str, value: bytes | None, revision: int) -> None:
        try:
            record = decode_rollout(value) if value else None
        except Exception as exc:
            log.error("%s: unreadable rollout record (revision %s), ignored: %r", name, revision, exc)
            self.records[name] = (self.records.get(name, (None, 0))[0], revision)  # read once, not on every reconcile
            return
        async with self._applying[name]:
            try:
                await self._apply_record(name, record)
            except Exception as exc:  # a module that cannot be fetched or loaded: the live path stays as it was
                log.error("%s: cannot apply the rollout record (revision %s): %s", name, revision, exc)
                self._pools[name].rollout = None
            self.records[name] = (record, revision)

    def _unpinned(self, name: str, record: Rollout | None) -> Rollout | None:
        """The record as this host may follow it: a function whose manifest pins its module (sha256) runs no
        other module live, neither promoted nor as a canary, unless the record says an operator overrode the
        pin (`--override-pin`). A shadow run acts on nothing and is followed."""
        pin = (self._pools[name].function.sha256 or "").lower()
        if record is None or not pin or record.pin_override:
            return record
        if record.live_sha256 and record.live_sha256 != pin:
            log.error(
                "%s: the manifest pins module %s; the promoted %s is not run (promote with --override-pin to allow it)",
                name,
                pin[:12],
                record.live_sha256[:12],
            )
            record = msgspec.structs.replace(record, live_sha256="", live_lang="")
        if record.active and record.mode is Mode.CANARY and record.candidate_sha256 != pin:
            log.error(
                "%s: the manifest pins module %s; the canary %s is not run (start it with --override-pin to allow it)",
                name,
                pin[:12],
                record.candidate_sha256[:12],
            )
            record = msgspec.structs.replace(record, phase=Phase.ABORTED, why="refused: the manifest pins the module")
        return record

    async def _apply_record(self, name: str, record: Rollout | None) -> None:
        record = self._unpinned(name, record)
        pool = self._pools[name]
        wanted = record.live_sha256 if record is not None else ""
        if wanted != self._promoted.get(name, ""):
            if wanted:
                assert record is not None
                module = await self._load(pool, wanted, record.live_lang)
            else:
                module = await asyncio.to_thread(pool.load_module)
            pool.rollout = None
            pool.swap_module(module)  # hot reload: in-flight messages finish on the old module
            self._promoted[name] = wanted
            log.info("%s: now running %s module %s", name, "the promoted" if wanted else "the manifest's", module.sha256[:12])
        if record is None or not record.active:
            if pool.rollout is not None:
                log.info(
                    "%s: candidate dropped (%s: %s)",
                    name,
                    record.phase if record else "record deleted",
                    record.why if record else "",
                )
            pool.rollout = None
            return
        running = pool.rollout
        if isinstance(running, ShadowRun | CanaryRun) and running.candidate.rollout == record:
            return
        module = await self._load(pool, record.candidate_sha256, record.lang)
        candidate = Candidate(record, module, self._engine, pool.spec, pool.rollout_stats)
        if record.mode is Mode.SHADOW:
            pool.rollout = ShadowRun(candidate, self._publisher(pool))
        else:
            pool.rollout = CanaryRun(candidate, self._rolling_back(name, record))
        log.info(
            "%s: %s of candidate %s on %.1f%% of its messages",
            name,
            record.mode.value,
            record.candidate_sha256[:12],
            record.share * 100,
        )

    async def _load(self, pool: FunctionPool, digest: str, lang: str) -> GuestModule:
        try:
            path: Path = await fetch_module(self._js, digest, self._folder)
        except OSError as exc:  # build_dir not writable here: from now on the scratch folder
            if self._folder == scratch_folder():
                raise
            log.info("%s: cannot keep candidates in %s (%s); using %s", pool.name, self._folder, exc, scratch_folder())
            self._folder = scratch_folder()
            path = await fetch_module(self._js, digest, self._folder)
        return await asyncio.to_thread(pool.spec.load, self._engine, path, sha256=digest, lang=lang or None)

    # -- what a host writes and publishes --------------------------------------------------------------

    def _rolling_back(self, name: str, record: Rollout) -> Callable[[str], None]:
        """What a canary calls when it passes its threshold: stop it here now, then record why."""

        def roll_back(why: str) -> None:
            pool = self._pools[name]
            pool.rollout = None
            pool.rollout_stats.rollbacks += 1
            self._spawn(self._record_rollback(name, record, why))

        return roll_back

    async def _record_rollback(self, name: str, record: Rollout, why: str) -> None:
        assert self._kv is not None
        _, revision = self.records.get(name, (None, 0))
        try:
            await self._kv.update(name, encode_rollout(changed(record, Phase.ROLLED_BACK, why)), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # another replica (or an operator) wrote first: every host follows what is there
        except Exception as exc:
            log.error("%s: could not record the rollback (%r); this host stopped the canary anyway", name, exc)

    def _publisher(self, pool: FunctionPool) -> Callable[[Sample], None]:
        def publish(sample: Sample) -> None:
            self._spawn(self._publish_sample(pool, sample))

        return publish

    async def _publish_sample(self, pool: FunctionPool, sample: Sample) -> None:
        msg_id = f"shadow:{sample.function}:{sample.candidate_sha256[:16]}:{sample.stream_sequence}"
        try:
            await self._js.publish(
                sample_subject(sample.function, sample.verdict), encode_sample(sample), headers={H_MSG_ID: msg_id}
            )
            pool.rollout_stats.samples_published += 1
        except nats.js.errors.APIError as exc:  # the stream keeps the first N per verdict and refuses the rest
            log.debug("%s: shadow sample not kept: %s", sample.function, exc)
        except (nats.errors.Error, RunError, TimeoutError) as exc:
            log.warning("%s: shadow sample not published: %r", sample.function, exc)


def _ringing(bell: asyncio.Event) -> Callable[[Msg], Coroutine[Any, Any, None]]:
    async def ring(_msg: Msg) -> None:
        bell.set()

    return ring


async def _unsubscribe(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        try:
            await subscription.unsubscribe()
        except Exception:
            pass  # the connection is already closed: nothing to unsubscribe
