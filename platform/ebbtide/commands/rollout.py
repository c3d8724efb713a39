"""Trying a new module version on live traffic: `ebbtide shadow start|promote|abort|status` and `ebbtide canary`.

Each command writes (or reads) the function's record in the `ebbtide-rollouts` KV bucket, as admin; every
host running the function follows it (rollout/follow.py). A candidate module is checked here first (it
loads and starts with the function's limits and config: exit 2 when it does not), then uploaded to the
`ebbtide-modules` object store by its sha256, from which every replica loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats.js.errors
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ..broker.access import client_access
from ..broker.names import ROLLOUTS_BUCKET, SHADOW_STREAM
from ..build import build_module
from ..errors import GuestInitError, ModuleLoadError, RunError, UsageError
from ..function import FunctionSpec
from ..manifest import LoadedManifest
from ..rollout.samples import function_filter
from ..rollout.state import (
    Mode,
    Phase,
    Rollout,
    changed,
    decode_rollout,
    encode_rollout,
    parse_share,
)
from ..rollout.store import sha256_of, upload_module
from ..runtime import WasmEngine
from ..status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, PoolStatus, decode_status
from .clients import client_connect

STATUS_WAIT_S = 0.5  # how long `shadow status` listens for the replicas' reports
MIN_CANARY_MESSAGES = 20  # a canary is judged (rolled back or not) after this many of its messages on a host


def shadow_start_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    return _start(args, manifest, Mode.SHADOW)


def shadow_promote_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    manifest.function(args.function)
    return uvloop.run(_change_phase(args, manifest, Phase.PROMOTED))


def shadow_abort_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    manifest.function(args.function)
    return uvloop.run(_change_phase(args, manifest, Phase.ABORTED))


def shadow_status_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.function is not None:
        manifest.function(args.function)
    return uvloop.run(_status(args, manifest))


def canary_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    return _start(args, manifest, Mode.CANARY)


# -- start -----------------------------------------------------------------------------------------------


def _start(args: argparse.Namespace, manifest: LoadedManifest, mode: Mode) -> int:
    fn = manifest.function(args.function)
    lang = manifest.spec.modules[fn.module].lang
    settings = Rollout(function=args.function, mode=mode, candidate_sha256="", lang=lang, share=parse_share(args.share))
    if mode is Mode.SHADOW:
        if args.keep < 1:
            raise UsageError("--keep must be at least 1")
        settings = msgspec.structs.replace(settings, keep=args.keep)
    else:
        if args.window < 1:
            raise UsageError("--window must be at least 1")
        settings = msgspec.structs.replace(
            settings,
            max_fault_rate=parse_share(args.max_fault_rate, "--max-fault-rate"),
            max_dead_letter_rate=parse_share(args.max_dead_letter_rate, "--max-dead-letter-rate"),
            window=args.window,
            min_messages=min(args.window, MIN_CANARY_MESSAGES),
        )
    data = _candidate_bytes(args, manifest)
    if mode is Mode.CANARY:  # a shadow run carries nothing out: a pin does not stop it
        settings = msgspec.structs.replace(
            settings,
            pin_override=_pin_allows(fn.sha256 or "", args.function, sha256_of(data), args.override_pin, "run as a canary"),
        )
    _check_loads(manifest, args.function, data, lang)

    async def start() -> int:
        nc = await client_connect(client_access(manifest, args.nats_url), f"ebbtide-{mode.value}")
        try:
            js = nc.jetstream()
            digest = await upload_module(js, data)
            kv = await _bucket(nc)
            previous, revision = await _read(kv, args.function)
            record = msgspec.structs.replace(
                settings,
                candidate_sha256=digest,
                why=f"started by {mode.value}",
                live_sha256=previous.live_sha256 if previous is not None else "",  # a promotion stays live
                live_lang=previous.live_lang if previous is not None else "",
                changed_at=time.time(),
            )
            if mode is Mode.SHADOW:
                await _fresh_samples(nc, args.function, record.keep)
            await _write(kv, record, revision)
            # Messages published after this command returns meet the candidate on every replica that reports:
            # each loads it on its own, from the record (rollout/follow.py).
            followed = await _replicas_following(nc, args.function, lambda r: r.candidate_sha256 == digest, args.wait)
        finally:
            await nc.drain()
        replaced = (
            f" (replaces the {previous.phase.value} {previous.mode.value} of {previous.candidate_sha256[:12]})"
            if previous
            else ""
        )
        print(
            f"{mode.value} of {args.function}: candidate {digest[:12]} on {record.share:.1%} of its messages{replaced}; "
            f"{followed}; `ebbtide shadow status {args.function}` to follow it"
        )
        return 0

    return uvloop.run(start())


def _candidate_bytes(args: argparse.Namespace, manifest: LoadedManifest) -> bytes:
    if args.build:
        # Into a folder of its own: the function's own build (what `up` runs, and loads after a restart) stays.
        module = manifest.function(args.function).module
        with tempfile.TemporaryDirectory(prefix="ebbtide-candidate-") as scratch:
            candidate = Path(scratch) / f"{module}.candidate.wasm"
            print(f"building the candidate of {module} from its source ...", file=sys.stderr)
            return build_module(manifest, module, into=candidate).output.read_bytes()
    path: Path = args.module
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the candidate module ({exc.strerror})") from None


def _check_loads(manifest: LoadedManifest, function: str, data: bytes, lang: str) -> None:
    """The candidate loads and starts with the function's limits and config, here, before any host sees it."""
    spec = FunctionSpec.of(manifest, function)
    with tempfile.TemporaryDirectory(prefix="ebbtide-candidate-") as folder:
        path = Path(folder) / "candidate.wasm"
        path.write_bytes(data)
        engine = WasmEngine(memory_reservation=spec.memory_reservation)  # no cache: this file is gone after the check
        try:
            spec.start(engine, spec.load(engine, path, sha256=sha256_of(data), lang=lang))
        except (ModuleLoadError, GuestInitError) as exc:
            raise UsageError(f"the candidate for {function} does not load: {exc}") from None


async def _fresh_samples(nc: NatsClient, function: str, keep: int) -> None:
    """A new shadow run keeps its own first samples: the function's old ones go, and N is at least `keep`."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(SHADOW_STREAM)
    except nats.js.errors.NotFoundError:
        raise RunError(f"no {SHADOW_STREAM} stream: run `ebbtide provision` (this version adds it)") from None
    await js.purge_stream(SHADOW_STREAM, subject=function_filter(function))
    if (info.config.max_msgs_per_subject or 0) < keep:
        config = info.config
        config.max_msgs_per_subject = keep
        await js.update_stream(config)


def _pin_allows(pin: str, function: str, digest: str, override: bool, what: str) -> bool:
    """Whether a module of `digest` may act for `function`: raises UsageError when the manifest pins another
    module (`pin`, functions.F.sha256) and the operator did not override the pin. True when it was overridden."""
    if not pin or pin.lower() == digest:
        return False
    if not override:
        raise UsageError(
            f"{function}: the manifest pins its module to sha256 {pin.lower()[:12]} (functions.{function}.sha256); "
            f"refusing to {what} {digest[:12]}. Change the pin in the manifest, or pass --override-pin to let it act anyway"
        )
    print(f"{function}: overriding the pin {pin.lower()[:12]} for {digest[:12]} (--override-pin)", file=sys.stderr)
    return True


# -- promote, abort ----------------------------------------------------------------------------------------


async def _change_phase(args: argparse.Namespace, manifest: LoadedManifest, phase: Phase) -> int:
    nc = await client_connect(client_access(manifest, args.nats_url), f"ebbtide-{phase.value}")
    try:
        pin = manifest.function(args.function).sha256 or ""
        done = await change_phase(nc, args.function, phase, args.wait, pin=pin, override_pin=getattr(args, "override_pin", False))
    finally:
        await nc.drain()
    print(done)
    return 0


async def change_phase(
    nc: NatsClient, function: str, phase: Phase, wait_s: float, pin: str = "", override_pin: bool = False
) -> str:
    """Promote or abort `function`'s rollout (admin), then wait up to `wait_s` for its replicas to follow;
    says what was done and how many follow. Raises RunError when there is nothing to change, UsageError
    when a promotion would replace the module the manifest pins (`pin`, its sha256) without `override_pin`.
    The console's promote and abort call this too."""
    kv = await _bucket(nc)
    record, revision = await _read(kv, function)
    if record is None:
        raise RunError(f"{function} has no rollout to {'promote' if phase is Phase.PROMOTED else 'abort'}")
    if phase is Phase.PROMOTED and not record.active:
        raise RunError(
            f"{function}: the {record.mode.value} of {record.candidate_sha256[:12]} is {record.phase.value} ({record.why}); nothing to promote"
        )
    if phase is Phase.PROMOTED:
        overridden = _pin_allows(pin, function, record.candidate_sha256, override_pin, "promote")
        record = msgspec.structs.replace(record, pin_override=record.pin_override or overridden)
    if phase is Phase.ABORTED and not (record.active or record.phase is Phase.PROMOTED):
        raise RunError(f"{function}: the {record.mode.value} of {record.candidate_sha256[:12]} is already {record.phase.value}")
    after = changed(record, phase, f"{phase.value} by an operator")
    await _write(kv, after, revision)
    if phase is Phase.PROMOTED:
        what = f"promoted {record.candidate_sha256[:12]}; it is kept across restarts"
        followed = await _replicas_following(nc, function, lambda r: r.module_sha256 == record.candidate_sha256, wait_s)
    elif record.phase is Phase.PROMOTED:
        what = f"promotion of {record.candidate_sha256[:12]} undone: back to the manifest's module"
        followed = await _replicas_following(nc, function, lambda r: r.module_sha256 != record.candidate_sha256, wait_s)
    else:
        what = f"{record.mode.value} of {record.candidate_sha256[:12]} aborted; the live module runs alone"
        followed = await _replicas_following(nc, function, lambda r: not r.candidate_sha256, wait_s)
    return f"{function}: {what}; {followed}"


async def _replicas_following(nc: NatsClient, function: str, follows: Callable[[PoolStatus], bool], wait_s: float) -> str:
    """Until every replica that reports says it follows the record (their own status reports), or `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        reports = [r for r in (await _reports(nc, [function])).values()]
        behind = [r.host_id for r in reports if not follows(r)]
        if not behind and reports:
            return f"{len(reports)} replica(s) follow"
        if time.monotonic() >= deadline:
            if not reports:
                return "no replica reported (the record applies when the function starts)"
            return f"{len(reports) - len(behind)} of {len(reports)} replica(s) follow so far (not yet: {', '.join(behind)})"


# -- status ----------------------------------------------------------------------------------------------------


async def _status(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    functions = [args.function] if args.function else list(manifest.spec.functions)
    nc = await client_connect(client_access(manifest, args.nats_url), "ebbtide-shadow-status")
    try:
        kv = await _bucket(nc)
        records = {name: (await _read(kv, name))[0] for name in functions}
        reports = await _reports(nc, functions)
    finally:
        await nc.drain()
    for name in functions:
        print(format_status(name, records[name], [r for r in reports.values() if r.function == name]))
    return 0


async def _reports(nc: NatsClient, functions: list[str]) -> dict[str, PoolStatus]:
    """The latest report of every replica of `functions` (by host), after asking them all to report now."""
    latest: dict[str, PoolStatus] = {}

    async def record(msg: Msg) -> None:
        try:
            report = decode_status(msg.data)
        except msgspec.DecodeError:
            return
        if report.function in functions:
            latest[f"{report.function}@{report.host_id}"] = report

    subscription = await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.*", cb=record)
    await nc.publish(STATUS_REQUEST_SUBJECT, b"")
    await asyncio.sleep(STATUS_WAIT_S)
    await subscription.unsubscribe()
    return latest


def format_status(function: str, record: Rollout | None, reports: list[PoolStatus]) -> str:
    """One block per function: the record, then what its replicas report (summed, and each one's modules)."""
    lines = [f"{function}:"]
    if record is None:
        lines.append("  no rollout; the manifest's module runs")
    else:
        lines.append(
            f"  {record.mode.value} of {record.candidate_sha256[:12]} on {record.share:.1%}: {record.phase.value}"
            + (f" ({record.why})" if record.why else "")
        )
        lines.append(f"  live module: {record.live_sha256[:12] + ' (promoted)' if record.live_sha256 else 'the manifest’s'}")
    totals: dict[str, int] = {}
    for report in reports:
        for key, count in report.rollout.items():
            totals[key] = totals.get(key, 0) + count
    shadow = {key.split(".", 1)[1]: count for key, count in totals.items() if key.startswith("shadow.")}
    if shadow:
        lines.append(
            "  shadow: "
            + ", ".join(f"{verdict} {shadow.get(verdict, 0)}" for verdict in ("same", "different", "candidate_fault"))
        )
    for version in ("live", "candidate"):
        counts = {key.rsplit(".", 1)[1]: n for key, n in totals.items() if key.startswith(f"canary.{version}.")}
        if counts:
            lines.append(f"  canary {version}: " + ", ".join(f"{result} {n}" for result, n in sorted(counts.items())))
    for report in sorted(reports, key=lambda r: r.host_id):
        candidate = f", candidate {report.candidate_sha256[:12]}" if report.candidate_sha256 else ""
        lines.append(f"  replica {report.host_id}: module {report.module_sha256[:12]}{candidate}")
    if not reports:
        lines.append("  no replica reported (is the function running?)")
    return "\n".join(lines)


# -- the record --------------------------------------------------------------------------------------------------


async def _bucket(nc: NatsClient) -> KeyValue:
    try:
        return await nc.jetstream().key_value(ROLLOUTS_BUCKET)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        raise RunError(f"no {ROLLOUTS_BUCKET} bucket: run `ebbtide provision` (this version adds it)") from None


async def _read(kv: KeyValue, function: str) -> tuple[Rollout | None, int]:
    """The function's record and its revision (0: none)."""
    try:
        entry = await kv.get(function)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
        return None, entry.revision or 0
    return decode_rollout(entry.value), entry.revision or 0


async def _write(kv: KeyValue, record: Rollout, revision: int) -> None:
    """Compare-and-set: a host's rollback (or another operator) written since we read wins, and we say so."""
    try:
        await kv.update(record.function, encode_rollout(record), last=revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        current, _ = await _read(kv, record.function)
        now = f"{current.phase.value} ({current.why})" if current is not None else "gone"
        raise RunError(f"{record.function}: the rollout changed meanwhile; it is now {now}; try again") from None
