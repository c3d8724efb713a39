"""Reading commands of the rollout: `shadow report F` (the samples a shadow run kept) and `replay` (a
candidate run offline over stored messages). Both print the same report (rollout/report.py) and read as
the read-only `observer`: neither carries out an effect nor writes anything to the server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import uvloop

from ..broker.access import client_access
from ..broker.partitions import lanes
from ..build import build_module
from ..errors import UsageError
from ..manifest import LoadedManifest
from ..rollout import report, stored
from ..rollout.compare import Verdict
from ..rollout.replay import Replay, load_versions
from ..rollout.samples import SHADOW_STREAM
from .clients import client_connect

DEFAULT_LIMIT = 10  # samples shown per verdict


def shadow_report_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    manifest.function(args.function)  # a typo guard: exit 2 for a function the manifest does not have
    limit = _limit(args.limit)
    verdicts = _verdicts(args.verdict)
    server = client_access(manifest, args.nats_url)

    async def read() -> stored.KeptSamples:
        nc = await client_connect(server, "ebbtide-shadow-report", reading=True)
        try:
            return await stored.shadow_samples(nc, args.function, verdicts, limit)
        finally:
            await nc.close()

    kept = uvloop.run(read())
    notes = []
    if kept.per_subject_limit > 0:
        notes.append(
            f"(counts of the samples kept: hosts send the first `shadow start --keep` of each verdict, and the "
            f"{SHADOW_STREAM} stream keeps at most {kept.per_subject_limit:,} of each; the running totals are "
            "ebbtide_shadow_total on /metrics)"
        )
    if kept.unreadable:
        notes.append(f"{kept.unreadable} stored message(s) that are not samples skipped")
    if not sum(kept.counts.values()):
        notes.append(f"no samples of {args.function} yet: no shadow run of it has judged a message")
    _print(
        report.Report(
            title=f"shadow report for {args.function}",
            counts=kept.counts,
            samples=kept.samples,
            sequences_of=manifest.stream_for(manifest.function(args.function).trigger),
            notes=notes,
        ),
        args.json,
    )
    return 0


def replay_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    fn = manifest.function(args.function)
    limit = _limit(args.limit)
    verdicts = _verdicts(args.verdict)
    if args.from_dlq and (args.from_seq is not None or args.to_seq is not None):
        raise UsageError("--from-seq/--to-seq read a stream (--stream): not with --from-dlq")
    if args.stream is not None and args.from_seq is None:
        raise UsageError("--stream needs --from-seq (and optionally --to-seq)")
    if (args.from_seq is not None or args.to_seq is not None) and args.stream is None:
        raise UsageError("--from-seq/--to-seq need --stream")
    if args.stream is not None:
        _check_stream(manifest, args.stream, fn.trigger)
    server = client_access(manifest, args.nats_url)
    with tempfile.TemporaryDirectory(prefix="ebbtide-replay-") as scratch:
        candidate = args.module
        if args.build:
            candidate = Path(scratch) / f"{fn.module}.candidate.wasm"
            print(f"building the candidate of {fn.module} from its source ...", file=sys.stderr)
            build_module(manifest, fn.module, into=candidate)
        versions = load_versions(manifest, args.function, candidate)

        judge = Replay(versions, keep=limit, dead_letters=args.from_dlq)

        async def read() -> tuple[str, list[str]]:
            """Reads the inputs into `judge`; returns the stream the sequences number, and notes on what was read."""
            nc = await client_connect(server, "ebbtide-replay", reading=True)
            try:
                if args.from_dlq:
                    letters = await stored.dead_letter_inputs(nc, manifest, args.function)
                    for letter in letters:
                        judge.add(letter)
                    return manifest.spec.dead_letter.stream, [f"{len(letters):,} dead letter(s) of {args.function}"]
                selected = await stored.stream_range(nc, args.stream, args.from_seq, args.to_seq)
                count = 0
                filters = [lane.filter_subject for lane in lanes(manifest, args.function)]
                async for message in stored.stream_inputs(nc, selected, filters):
                    judge.add(message)
                    count += 1
                keyed = f" and its partitions {fn.trigger}.<partition>" if fn.order_by else ""
                notes = [f"{count:,} message(s) on {fn.trigger}{keyed} in {selected.stream} #{selected.first}..#{selected.last}"]
                if selected.retention == "workqueue":
                    notes.append(f"{selected.stream} is a work queue: it holds only the messages not handled yet")
                return selected.stream, notes
            finally:
                await nc.close()

        sequences_of, notes = uvloop.run(read())
        result = judge.finish()
    for reason, seqs in result.skipped.items():
        notes.append(
            f"not replayed, {reason}: {len(seqs)} ({', '.join(f'#{s}' for s in seqs[:20])}{' …' if len(seqs) > 20 else ''})"
        )
    candidate_name = "built from source" if args.build else str(args.module)
    _print(
        report.Report(
            title=f"replay of {args.function}: live {versions.live.path.name} against candidate {candidate_name}",
            counts=result.counts,
            samples=report.select(result.samples, verdicts, limit),
            sequences_of=sequences_of,
            notes=notes,
            would_handle=result.would_handle if args.from_dlq else None,
        ),
        args.json,
    )
    return 0


def _check_stream(manifest: LoadedManifest, stream: str, trigger: str) -> None:
    """The manifest's streams are what the observer may read; the one holding the trigger is the one to read."""
    if stream not in manifest.spec.streams:
        raise UsageError(f"{manifest.path}: no stream {stream!r} under [streams] (streams: {', '.join(manifest.spec.streams)})")
    if manifest.stream_for(trigger) != stream:
        raise UsageError(
            f"stream {stream!r} does not hold {trigger!r}, the function's trigger (it is in {manifest.stream_for(trigger)!r})"
        )


def _limit(value: int | None) -> int:
    """--limit N (samples shown per verdict); 0: counts only."""
    if value is None:
        return DEFAULT_LIMIT
    if value < 0:
        raise UsageError("--limit must be 0 or more")
    return value


def _verdicts(chosen: list[str] | None) -> tuple[Verdict, ...]:
    if not chosen:
        return report.SHOWN_BY_DEFAULT
    return tuple(verdict for verdict in report.VERDICT_ORDER if verdict.value in chosen)


def _print(shown: report.Report, as_json: bool) -> None:
    if as_json:
        sys.stdout.buffer.write(report.to_json(shown) + b"\n")
        sys.stdout.flush()
    else:
        print(report.render(shown))
