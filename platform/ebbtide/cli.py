"""The `ebbtide` command line: up, run, provision, build, publish, demo, bench, top, dlq, outbox, nats-config.

Exit codes: 0 success, 1 failure at run time, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .broker import ConfirmedPublisher, configured_url, connect, provision_server, publish_all
from .broker.access import ServerAccess, embedded_client_access, embedded_server, external_access
from .broker.auth import NatsAuth
from .broker.authorization import ADMIN_USER, INGRESS_ENV, OBSERVER_USER, inbox_prefix, ingress_subjects, write_bundle
from .broker.provision import stream_configs
from . import dlq, outbox
from .build import build_modules
from .errors import BuildError, ManifestError, RunError, UsageError
from .workload.bench import SCENARIOS as BENCH_SCENARIOS
from .scaffold import TEMPLATES as SCAFFOLD_LANGUAGES, new_function
from .host import Host
from .launch import DEFAULT_PROCESS_MODE, PROCESS_MODES, ProcessMode, running
from .supervisor import Supervisor
from .manifest import DEFAULT_MANIFEST, LoadedManifest, load_manifest
from .status import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, decode_status
from .telemetry.logs import configure_logging
from .top import TopView

log = logging.getLogger("ebbtide")

METRICS_PORT_ENV = "EBBTIDE_METRICS_PORT"

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """The one place where errors become exit codes (see ebbtide.errors for the hierarchy)."""
    try:
        args = _parser().parse_args(argv)  # argparse itself exits 2 on bad usage
    except UsageError as exc:  # e.g. a bad $EBBTIDE_METRICS_PORT, read for a default
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.verbose, args.log_format)
    try:
        manifest = load_manifest(args.manifest)
        return args.command(args, manifest)
    except UsageError as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RunError, ConnectionError, OSError) as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebbtide", description="Event-driven WebAssembly functions on NATS JetStream.")
    parser.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST, help="manifest file (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--log-format", choices=("auto", "json", "text"), default="auto",
                        help="auto: JSON lines when stderr is not a terminal (default: %(default)s)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace, LoadedManifest], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=handler)
        return sub

    def nats_url_option(sub: argparse.ArgumentParser, default: object = None) -> None:
        sub.add_argument("--nats-url", default=default,
                         help="NATS server URL (default: $EBBTIDE_NATS_URL, then [nats] url in the manifest)")

    def actions_of(sub: argparse.ArgumentParser, dest: str) -> Callable[[str, str], argparse.ArgumentParser]:
        """A command with actions (`dlq list`): its connection options go before or after the action."""
        nats_url_option(sub)
        actions = sub.add_subparsers(dest=dest, required=True, metavar="ACTION")

        def action(name: str, help: str) -> argparse.ArgumentParser:
            parser = actions.add_parser(name, help=help, description=help)
            nats_url_option(parser, default=argparse.SUPPRESS)  # absent here: the command's value stays
            return parser

        return action

    def metrics_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--metrics-port", type=int, default=_env_int(METRICS_PORT_ENV),
                         help="serve /metrics, /healthz, /readyz on this port, 0: off "
                              "(default: $EBBTIDE_METRICS_PORT, then [telemetry] metrics_port)")

    def processes_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--processes", choices=PROCESS_MODES, default=DEFAULT_PROCESS_MODE,
                         help="all functions in this process, or one supervised process each (default: %(default)s)")

    up = command("up", _up, "run every function of the manifest (embedded nats-server when no URL is configured)")
    nats_url_option(up)
    processes_option(up)
    metrics_option(up)
    up.add_argument("--watch", action="store_true",
                    help="rebuild a function whose sources change and hot-reload it into its running pool")
    up.add_argument("--no-auth", action="store_true",
                    help="embedded server without authentication (default: [embedded] auth, on)")
    run = command("run", _run, "run one function in this process (as in compose or Kubernetes)")
    run.add_argument("--function", "-f", required=True, help="function name from the manifest")
    nats_url_option(run)
    metrics_option(run)
    provision = command("provision", _provision,
                        "create or update the streams, KV buckets, dead-letter stream and each function's durable "
                        "consumer (admin credentials; safe to repeat)")
    nats_url_option(provision)
    nats_config = command("nats-config", _nats_config,
                          "generate nats-server authorization from the manifest: a least-privilege user per function")
    nats_config.add_argument("--out", type=Path, required=True, help="folder for server.conf and the credentials")
    build = command("build", _build, "compile the guest functions from source into the build folder")
    build.add_argument("modules", nargs="*", help="modules to build (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    new = command("new", _new, "scaffold a function: source from a template, a manifest entry and a test")
    new.add_argument("name", help="function and module name (lowercase letters, digits, _ and -)")
    new.add_argument("--lang", choices=list(SCAFFOLD_LANGUAGES), default="zig", help="(default: %(default)s)")
    new.add_argument("--dir", help="source folder, relative to the manifest (default: functions/NAME)")
    new.add_argument("--trigger", help="subject it consumes (default: NAME.in)")
    new.add_argument("--output", help="subject it publishes to (default: NAME.out)")
    publish = command("publish", _publish, "publish orders: generated ZEISS-shaped ones, or from a file")
    nats_url_option(publish)
    publish.add_argument("--count", "-n", type=int, default=10, help="orders to generate (default: %(default)s)")
    publish.add_argument("--seed", type=int, default=1, help="generator seed (default: %(default)s)")
    publish.add_argument("--first-id", type=int, default=1, help="orderId of the first generated order")
    publish.add_argument("--file", type=Path, help="JSON Lines file: each line is published as it is (no generation)")
    publish.add_argument("--subject", help="(default: the manifest's entry subject, the trigger no function publishes to)")
    demo = command("demo", _demo, "the ZEISS burst: embedded NATS, the pipeline, N orders at once, live view, summary")
    demo.add_argument("--orders", type=int, default=10_000, help="(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--data-dir", type=Path, default=Path(".ebbtide/demo"), help="wiped at start (default: %(default)s)")
    processes_option(demo)
    bench = command("bench", _bench, "measure: guest call and instance start, memory per instance, scaling from zero and back, "
                    "the burst side by side with FastStream and raw nats-py, sustained load")
    bench.add_argument("--scenario", action="append", choices=BENCH_SCENARIOS, help="repeatable (default: all)")
    bench.add_argument("--quick", action="store_true", help="small sizes, well under a minute (CI smoke test)")
    bench.add_argument("--out", type=Path, default=Path(".ebbtide/bench"), help="results folder (default: %(default)s)")
    bench.add_argument("--orders", type=int, help="burst size (default 10,000; 2,000 with --quick)")
    bench.add_argument("--repeats", type=int, help="timed bursts per implementation (default 3; 1 with --quick)")
    bench.add_argument("--sustained-s", type=float, help="seconds of load per rate (default 60; 5 with --quick)")
    bench.add_argument("--rate", action="append", help="sustained rate: orders/s or a share of the burst's capacity, "
                       "e.g. 50%% (repeatable; default 50%% and 90%%)")
    bench.add_argument("--sustained-target", choices=["ebbtide-default", "ebbtide-fastest"], default="ebbtide-default")
    dlq_action = actions_of(command("dlq", _dlq, "dead letters: list, show, redrive (send back to their original subject), purge"),
                            "dlq_action")
    dlq_list = dlq_action("list", "one line per dead letter, oldest first")
    dlq_list.add_argument("--function", "-f", help="only this function's dead letters")
    dlq_list.add_argument("--limit", type=int, help="at most N")
    dlq_show = dlq_action("show", "one dead letter: every header and the payload")
    dlq_show.add_argument("seq", type=int, help="its sequence in the dead-letter stream (from `list`)")
    dlq_redrive = dlq_action("redrive", "republish to the original subject, then delete (safe to repeat)")
    dlq_redrive.add_argument("seqs", type=int, nargs="*", help="sequences to redrive (default: all, or --function)")
    dlq_redrive.add_argument("--function", "-f", help="only this function's dead letters")
    dlq_purge = dlq_action("purge", "delete dead letters")
    dlq_purge.add_argument("--function", "-f", help="only this function's dead letters")
    dlq_purge.add_argument("--yes", action="store_true", help="required: purging cannot be undone")
    outbox_command = command("outbox", _outbox, "read orders back from the outbox KV buckets")
    nats_url_option(outbox_command)
    outbox_actions = outbox_command.add_subparsers(dest="outbox_action", required=True, metavar="ACTION")
    outbox_get = outbox_actions.add_parser("get", help="print the stored value of one key (exit 1 if it is not there)")
    outbox_get.add_argument("key", metavar="ORDER_ID", help="the key: an order's orderId")
    outbox_get.add_argument("--wait", type=float, default=0.0, metavar="S",
                            help="wait up to S seconds for the key to be written (default: %(default)s)")
    outbox_list = outbox_actions.add_parser("list", help="one line per key: bucket, key, revision, time, size, value")
    outbox_list.add_argument("--limit", type=int, help="at most N lines")
    for action in (outbox_get, outbox_list):
        action.add_argument("--bucket", "-b", help="this bucket only (default: every bucket the manifest's functions write)")
        action.add_argument("--nats-url", default=argparse.SUPPRESS, help="as before the action")
    top = command("top", _top, "live view of every function: backlog, instances, in-flight, msgs/s, handle time, dead letters")
    nats_url_option(top)
    top.add_argument("--interval", type=float, default=1.0, help="refresh every N seconds (default: %(default)s)")
    top.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (default: run until Ctrl-C)")
    return parser


async def _serve(manifest: LoadedManifest, server: ServerAccess, mode: ProcessMode, functions: list[str] | None = None,
                 verbose: bool = False, metrics_port: int | None = None, watch: bool = False,
                 provision_as: NatsAuth | None = None) -> int:
    """Run until SIGINT or SIGTERM, then stop the pools (or child processes) and drain. SIGHUP hot-reloads
    changed modules; `watch` does so whenever a function's sources change.

    `provision_as`: provision the server with these (admin) credentials beside starting the functions,
    which wait for their consumers; a server that is not there yet is retried like the functions' own
    connections, and refused provisioning (not an admin) stops everything with exit code 1.

    A signal during start-up interrupts it wherever it waits (e.g. on a server that never answers): what
    was started is stopped, and the exit code is 130."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None
    signalled: list[signal.Signals] = []
    started = False

    def on_stop_signal(sig: signal.Signals) -> None:
        if not started and not signalled:
            serving.cancel()
        signalled.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    provisioning = (asyncio.ensure_future(provision_server(server.url, manifest, provision_as, give_up_after_s=None))
                    if provision_as is not None else None)
    try:
        async with running(manifest, server, mode, functions, verbose, metrics_port) as runner:
            started = True
            return await _serve_until_stopped(manifest, runner, stop, watch, provisioning)
    except asyncio.CancelledError as exc:
        if not signalled:
            raise
        serving.uncancel()
        where = " ".join(getattr(exc, "__notes__", [])) or "during start-up"  # e.g. while connecting to ...: why
        print(f"ebbtide: stopped by {signalled[0].name} {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if provisioning is not None and not provisioning.done():
            provisioning.cancel()


async def _serve_until_stopped(manifest: LoadedManifest, runner: Host | Supervisor, stop: asyncio.Event, watch: bool,
                               provisioning: asyncio.Future[None] | None = None) -> int:
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    def reload() -> None:
        if isinstance(runner, Host):
            task = asyncio.create_task(runner.reload())
            background.add(task)
            task.add_done_callback(background.discard)
        else:
            runner.reload()

    loop.add_signal_handler(signal.SIGHUP, reload)
    if isinstance(runner, Host):
        log.info("running %s in this process (pid %d); Ctrl-C to stop, SIGHUP to reload changed modules",
                 ", ".join(runner.function_names), os.getpid())
    else:
        log.info("running %s, one supervised process each; Ctrl-C to stop, SIGHUP to reload changed modules",
                 ", ".join(runner.children))
    waits = [asyncio.ensure_future(stop.wait())]
    if watch:
        waits.append(asyncio.ensure_future(_watch_sources(manifest, reload)))
    if isinstance(runner, Host):  # a supervisor's children report their own losses by exiting
        waits.append(asyncio.ensure_future(runner.connection_lost.wait()))
    failed = False
    while True:
        pending = [*waits, provisioning] if provisioning is not None else waits
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if provisioning is None or provisioning not in done:
            break
        if provisioning.exception() is not None:
            log.error("provisioning failed, stopping: %s", provisioning.exception())
            failed = True
            break
        log.info("provisioned: streams, KV buckets, dead letters, durable consumers")
        provisioning = None
    for wait in waits:
        wait.cancel()
    loop.remove_signal_handler(signal.SIGHUP)
    if failed or not stop.is_set():
        return EXIT_FAILURE  # provisioning refused, or the connection lost for good: exit so that a supervisor restarts us
    log.info("stopping")
    return 0


async def _watch_sources(manifest: LoadedManifest, reload: Callable[[], None], interval_s: float = 1.0) -> None:
    """`up --watch`: an incremental build every second; whatever was rebuilt is hot-reloaded."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            rebuilt = [r.module for r in await asyncio.to_thread(build_modules, manifest) if r.rebuilt]
        except (BuildError, ManifestError) as exc:  # a half-typed edit: report it, keep running the last good modules
            log.error("watch: build failed, the running modules stay: %s", exc)
            continue
        if rebuilt:
            log.info("watch: rebuilt %s; reloading", ", ".join(rebuilt))
            reload()


def _up(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    url = configured_url(manifest, args.nats_url)
    build_modules(manifest)
    if url is not None:
        access = external_access(manifest, url)
        return uvloop.run(_serve(manifest, access, args.processes, verbose=args.verbose, metrics_port=args.metrics_port,
                                 watch=args.watch, provision_as=access.admin))  # with the credentials `up` was given
    with embedded_server(manifest, auth=False if args.no_auth else None) as (server, access):
        log.info("embedded nats-server at %s (monitoring %s, data in %s)", server.url, server.monitor_url, server.data_dir)
        if access.bundle is not None:
            # Where the secrets are, never the secrets themselves (logs are often collected).
            log.info("authentication on: publish orders as the user in %s, or use the admin NKEY seed %s "
                     "(--no-auth or [embedded] auth = false turns it off)",
                     access.bundle.folder / INGRESS_ENV, access.bundle.seed_file(ADMIN_USER))
        else:
            log.warning("authentication is off: anyone who reaches %s may do anything", server.url)
        return uvloop.run(_serve(manifest, access, args.processes, verbose=args.verbose, metrics_port=args.metrics_port,
                                 watch=args.watch, provision_as=access.admin))  # as the generated admin user


def _run(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    url = configured_url(manifest, args.nats_url)
    if url is None:
        raise UsageError("`run` needs a NATS server: give --nats-url, EBBTIDE_NATS_URL or [nats] url (or use `ebbtide up`)")
    manifest.function(args.function)
    build_modules(manifest, [manifest.function(args.function).module])
    return uvloop.run(_serve(manifest, external_access(manifest, url), "single", [args.function],
                             metrics_port=args.metrics_port))


def _provision(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    server = _client_access(manifest, args.nats_url)
    uvloop.run(provision_server(server.url, manifest, server.admin, give_up_after_s=5))
    print(f"provisioned on {server.url}: streams {', '.join(config.name for config in stream_configs(manifest))}; "
          f"durable consumers {', '.join(manifest.spec.functions)}")
    return 0


def _nats_config(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    bundle = write_bundle(manifest, args.out)
    print(f"wrote {bundle.server_config} (include it in the nats-server configuration) and, readable only by you:")
    print(f"  {bundle.seed_file(ADMIN_USER)}  admin: everything (`ebbtide provision`, operator tools); "
          "EBBTIDE_NATS_NKEY_SEED_FILE")
    print(f"  {bundle.seed_file(OBSERVER_USER)}  observer: read outboxes, dead letters, status (top, Locust); "
          f"EBBTIDE_NATS_NKEY_SEED_FILE, EBBTIDE_NATS_INBOX_PREFIX={inbox_prefix(OBSERVER_USER)}")
    for function in manifest.spec.functions:
        print(f"  {bundle.seed_file(function)}  {function}: its own consumer and allowed effects; "
              f"EBBTIDE_NATS_NKEY_SEED_FILE, EBBTIDE_NATS_INBOX_PREFIX={inbox_prefix(function)}")
    print(f"  {bundle.folder / INGRESS_ENV}  ingress: publish to {', '.join(ingress_subjects(manifest))} only "
          "(EBBTIDE_NATS_USER / EBBTIDE_NATS_PASSWORD)")
    return 0


def _new(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    made = new_function(manifest, args.name, args.lang, folder=args.dir, trigger=args.trigger, output=args.output)
    print(f"wrote {made.source} and {made.test}; added [functions.{args.name}] to {made.manifest}")
    print(f"next: ebbtide build {args.name} && pytest {made.test.parent}")
    return 0


def _build(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    for result in build_modules(manifest, args.modules or None, force=args.force):
        state = "prebuilt" if result.prebuilt else "built" if result.rebuilt else "up to date"
        print(f"{result.module:<16} {state:<11} {result.output} ({result.output.stat().st_size} bytes)")
    return 0


def _publish(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    from .workload.orders import encode_order, generate_orders

    server = _client_access(manifest, args.nats_url)
    subject = args.subject or _entry_subject(manifest)
    if args.file is not None:
        try:
            lines = [line for line in args.file.read_bytes().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"{args.file}: {exc.strerror}") from None
        messages: list[tuple[bytes, str | None]] = [(line, None) for line in lines]
    else:
        if args.count < 1:
            raise UsageError("--count must be at least 1")
        messages = [(encode_order(o), o.order_guid) for o in generate_orders(args.count, args.seed, args.first_id)]

    async def publish() -> int:
        nc = await _client_connect(server, "ebbtide-publish")
        try:
            publisher = ConfirmedPublisher(nc)
            await publisher.start()
            confirmed, errors = await publish_all(publisher, subject, messages)
        finally:
            await nc.drain()
        print(f"published {confirmed} message(s) to {subject} on {server.url}")
        for error in errors[:5]:
            print(f"  failed: {error}", file=sys.stderr)
        return EXIT_FAILURE if errors else 0

    return uvloop.run(publish())


def _entry_subject(manifest: LoadedManifest) -> str:
    subjects = ingress_subjects(manifest)
    if len(subjects) != 1:
        raise UsageError(f"{manifest.path}: {len(subjects)} entry subjects ({', '.join(subjects) or 'none'}); "
                         "choose one with --subject")
    return subjects[0]


def _bench(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    from .workload.bench import BenchOptions, run_bench

    try:
        options = BenchOptions(orders=args.orders, repeats=args.repeats, sustained_s=args.sustained_s,
                               rates=args.rate or [], sustained_target=args.sustained_target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = uvloop.run(run_bench(manifest, args.scenario or list(BENCH_SCENARIOS), args.quick, args.out, options))
    print()
    print(report.markdown())
    print()
    for path in report.files:
        print(f"wrote {path}")
    return 0


def _dlq(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    server = _client_access(manifest, args.nats_url)
    if args.dlq_action == "purge" and not args.yes:
        raise UsageError("purge deletes dead letters for good: add --yes")
    if getattr(args, "function", None) and args.dlq_action == "redrive":
        manifest.function(args.function)  # a typo guard; list and purge may name a function since removed

    async def act() -> int:
        nc = await _client_connect(server, "ebbtide-dlq", reading=args.dlq_action in ("list", "show"))
        try:
            if args.dlq_action == "list":
                letters = await dlq.list_dead_letters(nc, manifest, args.function, args.limit)
                print(dlq.format_table(letters, width=_screen_width()))
            elif args.dlq_action == "show":
                print(dlq.format_detail(await dlq.show_dead_letter(nc, manifest, args.seq)))
            elif args.dlq_action == "redrive":
                result = await dlq.redrive(nc, manifest, args.function, args.seqs or None)
                print(result.summary())
                for failure in result.failed:
                    print(f"  #{failure.seq}: {failure.reason}", file=sys.stderr)
                return EXIT_FAILURE if result.failed else 0
            else:
                print(f"purged {await dlq.purge(nc, manifest, args.function)} dead letter(s)")
        finally:
            await nc.drain()
        return 0

    try:
        return uvloop.run(act())
    except dlq.DeadLetterError as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _outbox(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.bucket is not None and args.bucket not in manifest.spec.kv:
        # Reading commands connect as the read-only observer, which may read the manifest's buckets only.
        raise UsageError(f"{manifest.path}: no KV bucket {args.bucket!r} in the manifest (kv: {', '.join(manifest.spec.kv) or 'none'})")
    buckets = outbox.outbox_buckets(manifest, args.bucket)
    if not buckets:
        raise UsageError(f"{manifest.path}: no function writes a KV bucket (functions.*.kv): name one with --bucket")
    if args.outbox_action == "get" and not outbox.is_valid_key(args.key):
        raise UsageError(f"{args.key!r} is not a KV key (letters, digits and - / _ = . only)")
    if args.outbox_action == "get" and args.wait < 0:
        raise UsageError("--wait must be 0 or more seconds")
    if args.outbox_action == "list" and args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    server = _client_access(manifest, args.nats_url)

    async def read() -> int:
        nc = await _client_connect(server, "ebbtide-outbox", reading=True)
        try:
            if args.outbox_action == "list":
                print(outbox.format_table(await outbox.list_entries(nc, buckets, args.limit), width=_screen_width()))
                return 0
            entries = await outbox.get_entries(nc, buckets, args.key, args.wait)
        finally:
            await nc.drain()
        if not entries:
            print(f"ebbtide: no key {args.key!r} in {', '.join(buckets)}", file=sys.stderr)
            return EXIT_FAILURE
        if len(entries) > 1:
            print(f"ebbtide: key {args.key!r} is in {len(entries)} buckets: "
                  f"{', '.join(e.bucket for e in entries)} (one value per line, in that order)", file=sys.stderr)
        for entry in entries:
            print(outbox.format_value(entry))
        return 0

    try:
        return uvloop.run(read())
    except outbox.OutboxError as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _top(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    server = _client_access(manifest, args.nats_url)
    view = TopView()
    live = sys.stdout.isatty()

    async def watch() -> int:
        nc = await _client_connect(server, "ebbtide-top", reading=True)
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
                    view.dead_letters = await dlq.count_by_function(nc, manifest)
                except dlq.DeadLetterError as exc:
                    log.debug("dead letters unknown: %s", exc)
                    view.dead_letters = None
                screen = view.render(time.time(), width=_screen_width())
                print(("\x1b[H\x1b[2J" + screen) if live else screen + "\n", flush=True)
        finally:
            await nc.drain()
        return 0

    try:
        return uvloop.run(watch())
    except KeyboardInterrupt:
        return 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"${name} must be a port number, not {value!r}") from None


def _screen_width() -> int:
    """The terminal's width; wide when the output goes to a file or a pipe, so nothing is cut."""
    return shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 200


def _client_access(manifest: LoadedManifest, flag: str | None) -> ServerAccess:
    """For client commands: the configured server, else the embedded one that `ebbtide up` starts
    (as its admin user, when it has generated users)."""
    url = configured_url(manifest, flag)
    return external_access(manifest, url) if url is not None else embedded_client_access(manifest)


async def _client_connect(server: ServerAccess, name: str, reading: bool = False) -> NatsClient:
    """`reading`: a command that changes nothing connects as the read-only observer (see ServerAccess)."""
    try:
        return await connect(server.url, name=name, give_up_after_s=5,
                             auth=server.for_reading() if reading else server.admin)
    except ConnectionError as exc:
        raise ConnectionError(f"{exc} (is `ebbtide up` running?)") from None


def _demo(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.orders < 1:
        raise UsageError("--orders must be at least 1")
    from .workload.demo import print_summary, run_demo

    result = uvloop.run(run_demo(manifest, args.orders, args.seed, args.data_dir, args.processes))
    print_summary(result)
    return 0 if result.complete else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
