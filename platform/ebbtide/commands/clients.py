"""Commands that talk to a running platform as a client: publish, dlq, outbox, top.

Reading commands (`top`, `outbox`, `dlq list/show`) connect as the read-only observer where generated
users exist; the others as admin.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import time

import msgspec
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .. import dlq_admin, outbox
from ..broker import ConfirmedPublisher, PublishTally, connect, publish_all
from ..broker.access import ServerAccess, client_access
from ..broker.users import with_keyed_subjects
from ..errors import EffectRefused, NatsConnectionError, OutboxError, StoreFull, UsageError
from ..exit_codes import EXIT_FAILURE
from ..manifest import LoadedManifest
from ..status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, decode_status
from ..subjects import subject_matches
from ..top import TopView

log = logging.getLogger("ebbtide")


def publish_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    from ..ordering import entry_subject
    from ..workload.orders import default_entry_subject, encode_order, event_msg_id, generate_order_events, generate_orders

    server = client_access(manifest, args.nats_url)
    subject = args.subject or default_entry_subject(manifest)
    _check_some_function_reads(manifest, subject, args.force)
    # An ordered entry (its function has order_by) takes each message on <subject>.<key>.
    subject_of = entry_subject(manifest, subject)
    if args.file is not None:
        try:
            lines = [line for line in args.file.read_bytes().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"{args.file}: {exc.strerror}") from None
        # An order's orderGuid is its Nats-Msg-Id, as for generated orders: publishing the file twice
        # within the duplicate window stores each order once.
        messages: list[tuple[bytes, str | None]] = [(line, _order_guid(line)) for line in lines]
    else:
        if args.count < 1:
            raise UsageError("--count must be at least 1")
        if args.events_per_order < 1:
            raise UsageError("--events-per-order must be at least 1")
        if args.events_per_order == 1:
            messages = [(encode_order(o), o.order_guid) for o in generate_orders(args.count, args.seed, args.first_id)]
        else:
            events = generate_order_events(args.count, args.events_per_order, args.seed, args.first_id)
            messages = [(encode_order(e), event_msg_id(e)) for e in events]
    if callable(subject_of):
        for number, (payload, _) in enumerate(messages, 1):
            try:
                subject_of(payload)
            except EffectRefused as exc:
                where = f"{args.file}:{number}" if args.file is not None else f"message {number}"
                raise UsageError(f"{where}: {subject} is ordered and {exc}") from None

    async def publish() -> int:
        nc = await client_connect(server, "ebbtide-publish")
        tally = PublishTally()
        try:
            publisher = ConfirmedPublisher(nc)
            await publisher.start()
            confirmed, errors = await publish_all(publisher, subject_of, messages, tally=tally)
        finally:
            await nc.drain()
        where = f"{subject}.<key> (ordered)" if callable(subject_of) else subject
        print(
            f"published {confirmed} message(s) to {where} on {server.url}: {tally.stored} stored, "
            f"{tally.duplicates} dropped as duplicates"
            + (" (their Nats-Msg-Id was stored before, within the stream's duplicate window)" if tally.duplicates else "")
        )
        full = [error for error in errors if isinstance(error, StoreFull)]
        if full:
            print(
                f"ebbtide publish: {len(full)} of {len(messages)} message(s) refused for lack of space ({full[0]}). "
                "Nothing stored was dropped for them: publish the same messages again once space frees (each "
                "keeps its Nats-Msg-Id, so what was already stored is not stored twice)",
                file=sys.stderr,
            )
        for error in [error for error in errors if not isinstance(error, StoreFull)][:5]:
            print(f"  failed: {error}", file=sys.stderr)
        return EXIT_FAILURE if errors else 0

    return uvloop.run(publish())


def _check_some_function_reads(manifest: LoadedManifest, subject: str, force: bool) -> None:
    """A subject no function's trigger matches is refused (a typo: the stream would store the messages and
    nothing would ever read them), unless --force."""
    triggers = [fn.trigger for fn in manifest.spec.functions.values()]
    if any(subject_matches(pattern, subject) for pattern in with_keyed_subjects(manifest, triggers)):
        return
    if force:
        log.warning("no function of %s reads %s: publishing there anyway (--force)", manifest.path, subject)
        return
    raise UsageError(
        f"no function of {manifest.path} reads {subject!r} (their triggers: {', '.join(triggers) or 'none'}): "
        "a stream may store the messages, but nothing would handle them; correct --subject, or add --force"
    )


def dlq_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    server = client_access(manifest, args.nats_url)
    if args.dlq_action == "purge" and not args.yes:
        raise UsageError("purge deletes dead letters for good: add --yes")
    if getattr(args, "function", None) and args.dlq_action == "redrive":
        manifest.function(args.function)  # a typo guard; list and purge may name a function since removed

    async def act() -> int:
        nc = await client_connect(server, "ebbtide-dlq", reading=args.dlq_action in ("list", "show"))
        try:
            if args.dlq_action == "list":
                letters = await dlq_admin.list_dead_letters(nc, manifest, args.function, args.limit)
                print(dlq_admin.format_table(letters, width=screen_width()))
            elif args.dlq_action == "show":
                print(dlq_admin.format_detail(await dlq_admin.show_dead_letter(nc, manifest, args.seq)))
            elif args.dlq_action == "redrive":
                result = await dlq_admin.redrive(nc, manifest, args.function, args.seqs or None)
                print(result.summary())
                for failure in result.failed:
                    print(f"  #{failure.seq}: {failure.reason}", file=sys.stderr)
                return EXIT_FAILURE if result.failed else 0
            else:
                print(f"purged {await dlq_admin.purge(nc, manifest, args.function)} dead letter(s)")
        finally:
            await nc.drain()
        return 0

    try:
        return uvloop.run(act())
    except dlq_admin.DeadLetterError as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def outbox_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.bucket is not None and args.bucket not in manifest.spec.kv:
        # Reading commands connect as the read-only observer, which may read the manifest's buckets only.
        raise UsageError(
            f"{manifest.path}: no KV bucket {args.bucket!r} in the manifest (kv: {', '.join(manifest.spec.kv) or 'none'})"
        )
    buckets = outbox.outbox_buckets(manifest, args.bucket)
    if not buckets:
        raise UsageError(f"{manifest.path}: no function writes a KV bucket (functions.*.kv): name one with --bucket")
    if args.outbox_action == "get" and not outbox.is_valid_key(args.key):
        raise UsageError(f"{args.key!r} is not a KV key (letters, digits and - / _ = . only)")
    if args.outbox_action == "get" and args.wait < 0:
        raise UsageError("--wait must be 0 or more seconds")
    if args.outbox_action == "list" and args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    server = client_access(manifest, args.nats_url)

    async def read() -> int:
        nc = await client_connect(server, "ebbtide-outbox", reading=True)
        try:
            if args.outbox_action == "list":
                print(outbox.format_table(await outbox.list_entries(nc, buckets, args.limit), width=screen_width()))
                return 0
            entries = await outbox.get_entries(nc, buckets, args.key, args.wait)
        finally:
            await nc.drain()
        if not entries:
            print(f"ebbtide: no key {args.key!r} in {', '.join(buckets)}", file=sys.stderr)
            return EXIT_FAILURE
        if len(entries) > 1:
            print(
                f"ebbtide: key {args.key!r} is in {len(entries)} buckets: "
                f"{', '.join(e.bucket for e in entries)} (one value per line, in that order)",
                file=sys.stderr,
            )
        for entry in entries:
            print(outbox.format_value(entry))
        return 0

    try:
        return uvloop.run(read())
    except OutboxError as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def top_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    server = client_access(manifest, args.nats_url)
    view = TopView()
    live = sys.stdout.isatty()

    async def watch() -> int:
        nc = await client_connect(server, "ebbtide-top", reading=True)
        try:

            async def update(msg: Msg) -> None:
                try:
                    view.update(decode_status(msg.data))
                except msgspec.DecodeError:
                    log.debug("ignoring an unreadable status report on %s", msg.subject)

            await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=update)
            await nc.publish(STATUS_REQUEST_SUBJECT, b"")  # every pool reports now, not at its next tick
            refreshes = 0
            while not args.iterations or refreshes < args.iterations:
                await asyncio.sleep(args.interval)
                refreshes += 1
                try:
                    view.dead_letters = await dlq_admin.count_by_function(nc, manifest)
                except dlq_admin.DeadLetterError as exc:
                    log.debug("dead letters unknown: %s", exc)
                    view.dead_letters = None
                screen = view.render(time.time(), width=screen_width())
                print(("\x1b[H\x1b[2J" + screen) if live else screen + "\n", flush=True)
        finally:
            await nc.drain()
        return 0

    try:
        return uvloop.run(watch())
    except KeyboardInterrupt:
        return 0


async def client_connect(server: ServerAccess, name: str, reading: bool = False) -> NatsClient:
    """`reading`: a command that changes nothing connects as the read-only observer (see ServerAccess)."""
    try:
        nc: NatsClient = await connect(
            server.url, name=name, give_up_after_s=5, auth=server.for_reading() if reading else server.admin
        )
        return nc
    except NatsConnectionError as exc:
        raise NatsConnectionError(f"{exc} (is `ebbtide up` running?)") from None


def screen_width() -> int:
    """The terminal's width; wide when the output goes to a file or a pipe, so nothing is cut."""
    return shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 200


def _order_guid(line: bytes) -> str | None:
    """The line's `orderGuid` (a non-empty string in a JSON object), else None: published without an id."""
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    guid = value.get("orderGuid") if isinstance(value, dict) else None
    return guid if isinstance(guid, str) and guid else None
