"""The `ebbtide` command line: up, run, provision, build, new, publish, demo, bench, top, console, dlq, outbox,
nats-config, shadow, canary, scaler, plan, nats-exporter.

This module only parses; each command lives in ebbtide.commands and is imported when it runs, so that
`ebbtide up`'s supervisor never loads the Wasm runtime and `ebbtide run` never loads the benchmark.
Exit codes (ebbtide.exit_codes): 0 success, 1 failure at run time, 2 bad usage or configuration, 130
interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import lean_imports
from .capacity.options import add_plan_options  # the options only: the model is imported when `plan` runs
from .errors import Interrupted, ManifestError, RunError, UsageError
from .exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from .launch import DEFAULT_PROCESS_MODE, PROCESS_MODES
from .manifest import DEFAULT_MANIFEST, MODULE_LANGUAGES, LoadedManifest, load_manifest
from .telemetry.logs import configure_logging
from .workload.bench import SCENARIOS as BENCH_SCENARIOS

METRICS_PORT_ENV = "EBBTIDE_METRICS_PORT"
LOG_FORMAT_ENV = "EBBTIDE_LOG_FORMAT"
LOG_FORMATS = ("auto", "json", "text")
CONSOLE_PORT = 8090

Handler = Callable[[argparse.Namespace, LoadedManifest], int]


def main(argv: list[str] | None = None) -> int:
    """The one place where errors become exit codes (see ebbtide.errors for the hierarchy)."""
    lean_imports.install()  # this process is ebbtide's own program: it may import nats-py leaner (see there)
    try:
        args = _parser().parse_args(argv)  # argparse itself exits 2 on bad usage
    except UsageError as exc:  # e.g. a bad $EBBTIDE_METRICS_PORT, read for a default
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.verbose, args.log_format)
    os.environ[LOG_FORMAT_ENV] = args.log_format  # the processes it starts (up's functions) log the same way
    try:
        manifest = _load_manifest(args.manifest)
        return _handler(args.command)(args, manifest)
    except UsageError as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RunError, ConnectionError, OSError) as exc:
        print(f"ebbtide: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _load_manifest(path: str) -> LoadedManifest:
    try:
        return load_manifest(path)
    except ManifestError as exc:
        if Path(path).exists():
            raise
        where = "in this folder" if path == DEFAULT_MANIFEST else "there"
        raise ManifestError(
            f"{exc}: no manifest {where}; run ebbtide in the project's folder (the one with ebbtide.toml), "
            "or name the manifest with -m PATH"
        ) from None


def _handler(spec: str) -> Handler:
    module, function = spec.split(":")
    handler: Handler = getattr(importlib.import_module(f".commands.{module}", __package__), function)
    return handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebbtide", description="Event-driven WebAssembly functions on NATS JetStream.")
    parser.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST, help="manifest file (default: %(default)s)")

    def logging_options(parser: argparse.ArgumentParser, default: Callable[[str], object]) -> None:
        parser.add_argument("--verbose", "-v", action="store_true", default=default("verbose"))
        parser.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default=default("log_format"),
            help=f"auto: JSON lines when stderr is not a terminal (default: ${LOG_FORMAT_ENV}, then auto)",
        )

    logging_options(parser, {"verbose": False, "log_format": _env_log_format()}.__getitem__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: str, help: str) -> argparse.ArgumentParser:
        """`handler`: "module:function" in ebbtide.commands, imported only when this command runs."""
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=handler)
        logging_options(sub, lambda _: argparse.SUPPRESS)  # also after the command; absent there: the value before stays
        return sub

    def nats_url_option(sub: argparse.ArgumentParser, default: object = None) -> None:
        sub.add_argument(
            "--nats-url", default=default, help="NATS server URL (default: $EBBTIDE_NATS_URL, then [nats] url in the manifest)"
        )

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
        sub.add_argument(
            "--metrics-port",
            type=int,
            default=_env_int(METRICS_PORT_ENV),
            help="serve /metrics, /healthz, /readyz on this port, 0: off "
            "(default: $EBBTIDE_METRICS_PORT, then [telemetry] metrics_port)",
        )

    def processes_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--processes",
            choices=PROCESS_MODES,
            default=DEFAULT_PROCESS_MODE,
            help="all functions in this process, or one supervised process each (default: %(default)s)",
        )

    up = command("up", "serve:up_command", "run every function of the manifest (embedded nats-server when no URL is configured)")
    nats_url_option(up)
    processes_option(up)
    metrics_option(up)
    up.add_argument(
        "--watch", action="store_true", help="rebuild a function whose sources change and hot-reload it into its running pool"
    )
    up.add_argument(
        "--no-auth", action="store_true", help="embedded server without authentication (default: [embedded] auth, on)"
    )
    up.add_argument(
        "--console",
        nargs="?",
        type=int,
        const=CONSOLE_PORT,
        metavar="PORT",
        help=f"also serve the console (`ebbtide console`) on 127.0.0.1:PORT (default {CONSOLE_PORT})",
    )
    run = command("run", "serve:run_command", "run one function in this process (as in compose or Kubernetes)")
    run.add_argument("--function", "-f", required=True, help="function name from the manifest")
    nats_url_option(run)
    metrics_option(run)
    provision = command(
        "provision",
        "serve:provision_command",
        "create or update the streams, KV buckets, dead-letter stream and each function's durable "
        "consumer (admin credentials; safe to repeat)",
    )
    nats_url_option(provision)
    provision.add_argument(
        "--wait", action="store_true", help="wait for a server that does not answer yet (default: give up after 5 s)"
    )
    nats_config = command(
        "nats-config",
        "tools:nats_config_command",
        "generate nats-server authorization from the manifest: a least-privilege user per function",
    )
    nats_config.add_argument("--out", type=Path, required=True, help="folder for server.conf and the credentials")
    build = command("build", "tools:build_command", "compile the guest functions from source into the build folder")
    build.add_argument("modules", nargs="*", help="modules to build (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument(
        "--precompile",
        action="store_true",
        help="also compile each function's module into the compiled-module cache, so that a replica's first start "
        "only reads it (as the image ships it)",
    )
    new = command("new", "tools:new_command", "scaffold a function: source from a template, a manifest entry and a test")
    new.add_argument("name", help="function and module name (lowercase letters, digits, _ and -)")
    new.add_argument("--lang", choices=MODULE_LANGUAGES, default="zig", help="(default: %(default)s)")
    new.add_argument("--dir", help="source folder, relative to the manifest (default: functions/NAME)")
    new.add_argument("--trigger", help="subject it consumes (default: NAME.in)")
    new.add_argument("--output", help="subject it publishes to (default: NAME.out)")
    publish = command("publish", "clients:publish_command", "publish orders: generated ZEISS-shaped ones, or from a file")
    nats_url_option(publish)
    publish.add_argument("--count", "-n", type=int, default=10, help="orders to generate (default: %(default)s)")
    publish.add_argument("--seed", type=int, default=1, help="generator seed (default: %(default)s)")
    publish.add_argument("--first-id", type=int, default=1, help="orderId of the first generated order")
    publish.add_argument(
        "--events-per-order",
        type=int,
        default=1,
        help="events per generated order (created, amended..., cancelled; eventSeq 1..N); default: %(default)s",
    )
    publish.add_argument("--file", type=Path, help="JSON Lines file: each line is published as it is (no generation)")
    publish.add_argument(
        "--subject",
        help="(default: the manifest's entry subject, the trigger no function publishes to; with several, orders.ingress)",
    )
    publish.add_argument(
        "--force", action="store_true", help="publish to a subject no function's trigger matches (default: refused)"
    )
    demo = command(
        "demo", "workload:demo_command", "the ZEISS burst: embedded NATS, the pipeline, N orders at once, live view, summary"
    )
    demo.add_argument("--orders", type=int, default=10_000, help="(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--events-per-order", type=int, default=1, help="events per order (ordered pipelines; default: %(default)s)"
    )
    demo.add_argument("--data-dir", type=Path, default=Path(".ebbtide/demo"), help="wiped at start (default: %(default)s)")
    processes_option(demo)
    bench = command(
        "bench",
        "workload:bench_command",
        "measure: guest call and instance start, memory per instance, scaling from zero and back, "
        "the burst side by side with FastStream and raw nats-py, sustained load",
    )
    bench.add_argument(
        "--scenario", action="append", choices=BENCH_SCENARIOS, help="repeatable (default: all but soak, which takes an hour)"
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, well under a minute per scenario (the soak: 2 minutes per manifest, no warm-up: its slopes are not meaningful)",
    )
    bench.add_argument("--out", type=Path, default=Path(".ebbtide/bench"), help="results folder (default: %(default)s)")
    bench.add_argument("--orders", type=int, help="burst size (default 10,000; 2,000 with --quick)")
    bench.add_argument(
        "--repeats", type=int, help="alternating rounds, each implementation timed once per round (default 5; 1 with --quick)"
    )
    bench.add_argument("--sustained-s", type=float, help="seconds of load per rate (default 60; 5 with --quick)")
    bench.add_argument(
        "--rate",
        action="append",
        help="sustained rate: orders/s or a share of the burst's capacity, e.g. 50%% (repeatable; default 50%% and 90%%)",
    )
    bench.add_argument("--minutes", type=int, help="soak: minutes per manifest (default 30; 2 with --quick)")
    bench.add_argument(
        "--soak-manifest",
        action="append",
        choices=["unordered", "ordered"],
        help="soak: which manifests, one after the other (repeatable; default both)",
    )
    bench.add_argument("--sustained-target", choices=["ebbtide-default", "ebbtide-fastest"], default="ebbtide-default")
    dlq_action = actions_of(
        command("dlq", "clients:dlq_command", "dead letters: list, show, redrive (send back to their original subject), purge"),
        "dlq_action",
    )
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
    outbox_command = command("outbox", "clients:outbox_command", "read orders back from the outbox KV buckets")
    nats_url_option(outbox_command)
    outbox_actions = outbox_command.add_subparsers(dest="outbox_action", required=True, metavar="ACTION")
    outbox_get = outbox_actions.add_parser("get", help="print the stored value of one key (exit 1 if it is not there)")
    outbox_get.add_argument("key", metavar="ORDER_ID", help="the key: an order's orderId")
    outbox_get.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the key to be written (default: %(default)s)",
    )
    outbox_list = outbox_actions.add_parser("list", help="one line per key: bucket, key, revision, time, size, value")
    outbox_list.add_argument("--limit", type=int, help="at most N lines")
    for action in (outbox_get, outbox_list):
        action.add_argument("--bucket", "-b", help="this bucket only (default: every bucket the manifest's functions write)")
        action.add_argument("--nats-url", default=argparse.SUPPRESS, help="as before the action")

    # -- rollout, the reading side: `shadow report` and `replay` (commands/replay.py) --
    # rollout.compare.Verdict's values, named here: importing it would load the Wasm runtime into every command.
    verdicts = ("different", "candidate_fault", "same")

    def report_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--verdict",
            action="append",
            choices=verdicts,
            help="show samples of this verdict (repeatable; default: different and candidate_fault)",
        )
        sub.add_argument("--limit", type=int, help="samples shown per verdict, 0: counts only (default: 10)")
        sub.add_argument("--json", action="store_true", help="one JSON document instead of text")

    shadow_action = actions_of(
        command("shadow", "replay:shadow_report_command", "shadow runs of a candidate module beside the live one"),
        "shadow_action",
    )
    shadow_report = shadow_action(
        "report", "what a shadow run kept: counts per verdict, then each sample's input and the diff of the two answers"
    )
    shadow_report.add_argument("function", metavar="FUNCTION", help="function name from the manifest")
    shadow_report.set_defaults(command="replay:shadow_report_command")
    report_options(shadow_report)
    replay = command(
        "replay",
        "replay:replay_command",
        "run a candidate module offline beside the live one over stored messages (dead letters or a stream "
        "range) and report how their answers differ; carries out no effect",
    )
    nats_url_option(replay)
    replay.add_argument("--function", "-f", required=True, help="function name from the manifest")
    candidate = replay.add_mutually_exclusive_group(required=True)
    candidate.add_argument("--module", type=Path, help="the candidate module (.wasm)")
    candidate.add_argument(
        "--build", action="store_true", help="build the candidate from the module's source into a temporary folder"
    )
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dlq", action="store_true", help="the function's dead letters (with their original subject)")
    source.add_argument(
        "--stream", metavar="S", help="a stream that retains messages: its range, filtered on the function's trigger"
    )
    replay.add_argument("--from-seq", type=int, metavar="A", help="first sequence of the range (with --stream)")
    replay.add_argument("--to-seq", type=int, metavar="B", help="last sequence of the range (default: the stream's last)")
    report_options(replay)

    # -- rollouts, the live side (commands/rollout.py): shadow start|promote|abort|status, canary ----------------
    # Each action names its own handler (set_defaults), so `shadow` can hold actions of other modules too.

    def pin_override_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--override-pin",
            action="store_true",
            help="the function's manifest pins its module (functions.F.sha256): let another module act for it anyway "
            "(recorded in the rollout; without it, refused)",
        )

    def wait_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--wait",
            type=float,
            default=10.0,
            metavar="S",
            help="wait up to S s for every replica to follow (default: %(default)s)",
        )

    def candidate_options(sub: argparse.ArgumentParser, share_default: str | None) -> None:
        sub.add_argument("--function", "-f", required=True, help="function name from the manifest")
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--module", type=Path, help="the candidate's built .wasm file")
        source.add_argument(
            "--build", action="store_true", help="build the candidate from the function's sources in the manifest"
        )
        sub.add_argument(
            "--share",
            default=share_default,
            required=share_default is None,
            help="of the function's messages, chosen by a stable hash: 5%% or 0.05"
            + (" (default: %(default)s)" if share_default else ""),
        )
        wait_option(sub)

    shadow_start = shadow_action(
        "start", "start a shadow run: the candidate answers the same messages, nothing it does is carried out"
    )
    shadow_start.add_argument(
        "--keep", type=int, default=10, help="samples kept per verdict for the report (default: %(default)s)"
    )
    candidate_options(shadow_start, "100%")
    shadow_start.set_defaults(command="rollout:shadow_start_command")
    for name, help in (
        ("promote", "swap the candidate in for the live module on every replica (hot reload; kept across restarts)"),
        ("abort", "drop the candidate (after a promotion: return to the manifest's module)"),
    ):
        change = shadow_action(name, help)
        change.set_defaults(command=f"rollout:shadow_{name}_command")
        change.add_argument("function", help="function name from the manifest")
        if name == "promote":
            pin_override_option(change)
        wait_option(change)
    shadow_status = shadow_action("status", "each function's rollout and what its replicas count")
    shadow_status.add_argument("function", nargs="?", help="only this function")
    shadow_status.set_defaults(command="rollout:shadow_status_command")
    canary = command(
        "canary",
        "rollout:canary_command",
        "let a candidate module handle a share of a function's messages, rolled back on faults",
    )
    nats_url_option(canary)
    candidate_options(canary, None)
    canary.add_argument("--max-fault-rate", default="5%", help="roll back past this share of faults (default: %(default)s)")
    canary.add_argument(
        "--max-dead-letter-rate", default="5%", help="... or of messages dead-lettered at once (default: %(default)s)"
    )
    canary.add_argument(
        "--window", type=int, default=200, help="... over the candidate's last N messages on a host (default: %(default)s)"
    )
    pin_override_option(canary)
    # -- end of rollouts --------------------------------------------------------------------------------------
    # -- scaling beyond one machine (commands/scaling.py): scaler, plan ---------------------------------------
    scaler = command("scaler", "scaling:scaler_command", "KEDA external scaler (gRPC): each function's lag and activation")
    nats_url_option(scaler)
    metrics_option(scaler)
    scaler.add_argument("--listen", default="127.0.0.1:9090", help="gRPC address, HOST:PORT (default: %(default)s)")
    scaler.add_argument("--tls-cert", type=Path, help="serve gRPC over TLS with this certificate (PEM) ...")
    scaler.add_argument("--tls-key", type=Path, help="... and its key")
    scaler.add_argument("--tls-client-ca", type=Path, help="require client certificates (KEDA's) signed by this CA")
    add_plan_options(
        command("plan", "scaling:plan_command", "capacity model: what a load costs in pods, nats-server cores and storage")
    )
    top = command(
        "top",
        "clients:top_command",
        "live view of every function: backlog, instances, in-flight, msgs/s, handle time, dead letters",
    )
    nats_url_option(top)
    top.add_argument("--interval", type=float, default=1.0, help="refresh every N seconds (default: %(default)s)")
    top.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (default: run until Ctrl-C)")
    console = command(
        "console",
        "console:console_command",
        "a live web page: the pipeline, backlog and instances over time, dead letters, rollouts, orders",
    )
    nats_url_option(console)
    console.add_argument("--port", type=int, default=CONSOLE_PORT, help="(default: %(default)s)")
    console.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s); any other than loopback needs $EBBTIDE_CONSOLE_TOKEN",
    )
    console.add_argument(
        "--read-only", action="store_true", help="offer no action (redrive, purge, promote, abort), whatever the credentials"
    )
    console.add_argument(
        "--trace-url",
        metavar="URL",
        help="link an order to its trace: a URL with {trace_id}, e.g. http://localhost:16686/trace/{trace_id}",
    )
    exporter = command(
        "nats-exporter",
        "exporter:nats_exporter_command",
        "serve JetStream's store and stream figures (read from nats-server's monitoring port) on /metrics for Prometheus",
    )
    exporter.add_argument(
        "--monitor-url",
        action="append",
        metavar="URL",
        help="a nats-server monitoring port, e.g. http://nats:8222; once per node of a cluster "
        "(default: the embedded server's, [embedded] monitor_port)",
    )
    exporter.add_argument("--port", type=int, default=9465, help="serve /metrics, /healthz, /readyz here (default: %(default)s)")
    exporter.add_argument(
        "--host",
        default=os.environ.get("EBBTIDE_METRICS_HOST") or "127.0.0.1",
        help="the address to serve on (default: $EBBTIDE_METRICS_HOST, then %(default)s)",
    )
    exporter.add_argument("--interval", type=float, default=5.0, help="read the servers every S seconds (default: %(default)s)")
    return parser


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"${name} must be a port number, not {value!r}") from None


def _env_log_format() -> str:
    value = os.environ.get(LOG_FORMAT_ENV) or "auto"
    if value not in LOG_FORMATS:
        raise UsageError(f"${LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return value
