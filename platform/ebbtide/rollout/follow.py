"""A host follows the rollout records of the functions it runs (the `ebbtide-rollouts` KV bucket).

One KV watch per function: its current record is read before the host takes any message (so a replica
started later, or restarted, runs what the record says: a promoted module, a candidate beside the live
one), and every later write is applied as it arrives, on every replica. Applying a record:

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

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ..broker.headers import H_MSG_ID
from ..broker.names import ROLLOUTS_BUCKET
from ..errors import RunError
from ..manifest import LoadedManifest
from ..pool import FunctionPool
from ..runtime import WasmEngine
from ..runtime.guests import GuestModule, load_guest_module
from .canary import CanaryRun
from .candidate import Candidate
from .samples import Sample, encode_sample, sample_subject
from .shadow import ShadowRun
from .state import Mode, Phase, Rollout, changed, decode_rollout, encode_rollout
from .store import fetch_module

log = logging.getLogger("ebbtide.rollout")

BUCKET_RETRY_S = 5.0  # while the rollouts bucket does not exist (a server provisioned by an older version)


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
        self._kv = kv = await self._js.key_value(ROLLOUTS_BUCKET)
        watchers: dict[str, KeyValue.KeyWatcher] = {}
        try:
            for name in self._pools:
                watcher = watchers[name] = await kv.watch(name)
                while (entry := await watcher.updates(timeout=30)) is not None:  # type: ignore[no-untyped-call]  # the current record, then None
                    await self._apply(name, entry)
        except BaseException:
            for watcher in watchers.values():
                await _stop(watcher)
            raise
        for name, watcher in watchers.items():
            self._spawn(self._follow(name, watcher))

    async def _start_later(self) -> None:
        while True:
            await asyncio.sleep(BUCKET_RETRY_S)
            try:
                await self._watch_all()
                log.info("rollouts: following %s", ", ".join(self._pools))
                return
            except Exception as exc:
                log.debug("rollouts still off: %r", exc)

    async def _follow(self, name: str, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is not None:
                    await self._apply(name, entry)
        finally:
            await _stop(watcher)

    def pinned(self, function: str) -> str:
        """The promoted module this function runs instead of the manifest's ("" when none)."""
        return self._promoted.get(function, "")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- applying a record -----------------------------------------------------------------------------

    async def _apply(self, name: str, entry: KeyValue.Entry) -> None:
        deleted = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
        try:
            record = None if deleted else decode_rollout(entry.value or b"")
        except Exception as exc:
            log.error("%s: unreadable rollout record (revision %s), ignored: %r", name, entry.revision, exc)
            return
        async with self._applying[name]:
            try:
                await self._apply_record(name, record)
            except Exception as exc:  # a module that cannot be fetched or loaded: the live path stays as it was
                log.error("%s: cannot apply the rollout record (revision %s): %s", name, entry.revision, exc)
                self._pools[name].rollout = None
            self.records[name] = (record, entry.revision or 0)

    async def _apply_record(self, name: str, record: Rollout | None) -> None:
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
        ordered_trigger = pool.function.trigger if pool.function.order_by else None
        candidate = Candidate(record, module, self._engine, pool.limits, pool.config_json, pool.rollout_stats, ordered_trigger)
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
        language = lang or self._manifest.spec.modules[pool.function.module].lang
        return await asyncio.to_thread(
            load_guest_module, self._engine, path, language, sha256=digest, wasi_grants=frozenset(pool.function.wasi)
        )

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


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except Exception:
        pass  # the connection is already closed: nothing to unsubscribe
