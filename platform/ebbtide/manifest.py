"""The `ebbtide.toml` manifest: what runs, on which subjects, with which limits.

Decoded once with msgspec into frozen Structs; every error names the file and the key.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from .broker.names import kv_stream_name
from .errors import ManifestError
from .subjects import SubjectRoutes, stream_transform, subject_matches

DEFAULT_MANIFEST = "ebbtide.toml"

PositiveInt = Annotated[int, Meta(gt=0)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
# NATS names used in stream, consumer and bucket names: no dots, wildcards or whitespace.
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)]
Subject = Annotated[str, Meta(pattern=r"^[^\s]+$", max_length=255)]

# streams.X.max_bytes by default. Measured 2026-12 (issue 25: 5,000 orders through the reference pipeline,
# stream_info bytes / orders): ORDERS stores 882 bytes per order (the ingress copy and the routed one; ordered,
# per event alike). A million orders, rounded up to 1 GiB: two hours of the ZEISS rate (10,000 orders a
# minute), or a week at 100 orders a minute. A day at the ZEISS rate needs 12.7 GB: size it to your day, and
# keep the streams' max_bytes together below the server's max_file_store (the server reserves it up front).
BYTES_PER_ORDER = 882
DEFAULT_STREAM_MAX_BYTES = 1 << 30


class _Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class NatsSection(_Section, frozen=True):
    url: str = ""  # empty: start the embedded server (overridden by --nats-url / EBBTIDE_NATS_URL)
    # Credentials, at most one kind (EBBTIDE_NATS_* variables override them; see broker/auth.py). Prefer
    # the variables or files for secrets: a manifest is often committed. Relative paths start at the manifest.
    user: str = ""
    password: str = ""
    token: str = ""
    creds_file: str = ""  # a .creds file (user JWT + NKEY seed)
    nkey_seed_file: str = ""  # a file holding an NKEY user seed (SU...)
    tls_ca: str = ""  # CA bundle that signed the server's certificate (turns TLS on)
    tls_cert: str = ""  # client certificate and key, for servers that verify clients
    tls_key: str = ""


class EmbeddedSection(_Section, frozen=True):
    data_dir: str = ".ebbtide/nats"
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 4222  # 0: pick a free port
    monitor_port: Annotated[int, Meta(ge=0, le=65535)] = 8222
    # Users and permissions generated from this manifest into <data_dir>/auth (see `ebbtide nats-config`);
    # false: anyone who can reach the port may do anything.
    auth: bool = True


class TelemetrySection(_Section, frozen=True):
    # Prometheus /metrics, /healthz and /readyz over HTTP; 0: off. With one process per function, the
    # i-th function (manifest order) listens on metrics_port + i.
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    metrics_host: str = "127.0.0.1"  # "0.0.0.0" in containers
    # Traces go to an OTLP/HTTP endpoint (this, or $OTEL_EXPORTER_OTLP_ENDPOINT); none: tracing off.
    otlp_endpoint: str = ""
    trace_sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0  # of new traces; a sampled parent is always followed


class StreamSection(_Section, frozen=True):
    subjects: list[Subject]
    retention: Literal["workqueue", "limits", "interest"] = "limits"
    storage: Literal["file", "memory"] = "file"
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    duplicate_window_s: PositiveFloat = 120.0  # Nats-Msg-Id dedupe window
    # How long the stream keeps a message, handled or not; 0: no age limit. With `limits` retention an acked
    # message stays until then, so the server's duplicate table, which a restarted server rebuilds from the
    # messages it still stores, still knows its Nats-Msg-Id: it must be at least duplicate_window_s. A
    # message no function handled within max_age_s is removed unhandled: keep it longer than any outage.
    max_age_s: NonNegativeFloat = 0.0
    # The most the stream stores, in bytes. A full stream refuses new publishes (discard new): a publisher gets
    # an error and retries later, a function's effect is retried without using up the message's retries, and
    # nothing unhandled is ever removed to make room. 0: no limit of its own (the server's store is the bound).
    max_bytes: NonNegativeInt = DEFAULT_STREAM_MAX_BYTES
    # Partitions of the ordered functions' triggers in this stream (functions.X.order_by): how many keys
    # can be worked on at once. Fixed: changing it needs a drained stream (see README: Ordering by key).
    partitions: Annotated[int, Meta(ge=1, le=1024)] = 16
    # Fast batches (nats-server 2.14+, ADR-50): the functions publish a round of effects to this stream as one
    # batch with one PubAck, each message still checked for its Nats-Msg-Id (README: Performance).
    allow_batched: bool = True


class KvSection(_Section, frozen=True):
    storage: Literal["file", "memory"] = "file"
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    history: Annotated[int, Meta(ge=1, le=64)] = 1
    allow_batched: bool = True  # as streams.X.allow_batched, for the bucket's stream


class DeadLetterSection(_Section, frozen=True):
    stream: Name = "DLQ"
    subject_prefix: Subject = "dlq"  # a function's dead letters go to <prefix>.<function>
    storage: Literal["file", "memory"] = "file"
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    allow_batched: bool = True  # as streams.X.allow_batched


ModuleLanguage = Literal["zig", "c", "assemblyscript", "python"]  # one builder each in build.py
MODULE_LANGUAGES: tuple[str, ...] = get_args(ModuleLanguage)


class ModuleSection(_Section, frozen=True):
    # Folder holding the function's source (main.zig, main.c, main.ts or app.py), relative to the manifest;
    # required unless the module is prebuilt.
    source: str = ""
    lang: ModuleLanguage = "zig"
    # The guest SDK it builds against, relative to the manifest; empty: the language's own
    # (functions/sdk, functions/sdk-c, functions/sdk-assemblyscript; see build.sdk_folder).
    sdk: str = ""
    # Ships built: <build_dir>/wasm/<name>.wasm is run as it is and never compiled (no sources, no toolchain
    # needed). Without it a missing `source` is an error, never a reason to run whatever was built before.
    prebuilt: bool = False


class ScaleSection(_Section, frozen=True):
    min: NonNegativeInt = 0
    max: PositiveInt = 4
    target_backlog: PositiveInt = 100  # messages of backlog per instance
    cooldown_s: NonNegativeFloat = 5.0


class LimitsSection(_Section, frozen=True):
    memory_mib: Annotated[int, Meta(ge=1, le=64)] = 16
    fuel: PositiveInt = 20_000_000  # per message; ~1 unit per Wasm instruction (a few ms of work)
    max_payload: PositiveInt = 65536  # bytes; larger inputs are dead-lettered without calling the guest
    max_header_bytes: PositiveInt = 8192  # bytes of NATS headers of an input; more: dead-lettered unread
    max_effects: PositiveInt = 64  # effects one message may ask for; more: the message is dead-lettered
    max_effect_bytes: PositiveInt = 1_048_576  # payload (publish) or value (KV put) of one effect


class RetrySection(_Section, frozen=True):
    max_deliver: Annotated[int, Meta(ge=1, le=1000)] = 5  # deliveries before a failing message is dead-lettered
    backoff_ms: list[NonNegativeInt] = msgspec.field(default_factory=lambda: [200, 1000, 5000])


WasiGrant = Literal["clock", "random"]


class FunctionSection(_Section, frozen=True):
    module: Name
    trigger: Subject  # subject of the function's durable pull consumer
    # Per-key ordering: the JSON field of the payload whose value is the key (e.g. "orderGuid"). Messages of
    # one key are handled one at a time in stream order; publishers send them to `<trigger>.<key>` (a
    # function's effects get the key appended by the host). Empty: no ordering (the fastest).
    order_by: Annotated[str, Meta(pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,63})?$")] = ""
    # Hex SHA-256 of the built module; when set, a module with any other digest is refused before loading.
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    # WASI functions the guest may import, by group; none by default. Filesystem, environment, arguments,
    # sockets and stdio are never provided.
    wasi: list[WasiGrant] = []
    publish: list[Subject] = []  # subjects (NATS wildcards allowed) the guest may publish to
    kv: list[Name] = []  # KV buckets the guest may put into
    config: dict[str, str] = {}  # passed to the guest's ebbtide_init as a JSON object
    batch: PositiveInt = 256  # messages per fetch
    ack_wait_s: PositiveFloat = 30.0
    max_ack_pending: PositiveInt = 4096  # the server's bound on unacked messages: a burst waits, never drops
    shutdown_grace_s: NonNegativeFloat = 10.0  # on SIGTERM: time to finish in-flight batches before nak'ing them
    scale: ScaleSection = ScaleSection()
    limits: LimitsSection = LimitsSection()
    retry: RetrySection = RetrySection()


class Manifest(_Section, frozen=True):
    build_dir: str = "build"
    nats: NatsSection = NatsSection()
    embedded: EmbeddedSection = EmbeddedSection()
    telemetry: TelemetrySection = TelemetrySection()
    streams: dict[Name, StreamSection] = {}
    kv: dict[Name, KvSection] = {}
    dead_letter: DeadLetterSection = DeadLetterSection()
    modules: dict[Name, ModuleSection] = {}
    functions: dict[Name, FunctionSection] = {}


class LoadedManifest:
    """A validated manifest and the folder its relative paths start from."""

    def __init__(self, manifest: Manifest, path: Path) -> None:
        self.spec = manifest
        self.path = path
        self.root = path.parent

    def resolve(self, relative: str) -> Path:
        """A path of the manifest (relative to its folder), absolute."""
        return (self.root / relative).resolve()

    @property
    def build_dir(self) -> Path:
        """Where built modules (`wasm/`) and compiled code (`cache/`) go."""
        return self.resolve(self.spec.build_dir)

    def module_path(self, module: str) -> Path:
        """The built file of module `module`."""
        return self.build_dir / "wasm" / f"{module}.wasm"

    def function(self, name: str) -> FunctionSection:
        """The `[functions.NAME]` section; ManifestError, naming the known ones, if there is none."""
        try:
            return self.spec.functions[name]
        except KeyError:
            known = ", ".join(sorted(self.spec.functions)) or "none"
            raise ManifestError(f"{self.path}: no function named {name!r} (functions: {known})") from None

    def stream_for(self, subject: str) -> str:
        """The name of the stream that captures `subject`."""
        for name, stream in self.spec.streams.items():
            if any(subject_matches(pattern, subject) for pattern in stream.subjects):
                return name
        raise ManifestError(f"{self.path}: no stream captures subject {subject!r}")

    def ordered_triggers(self, stream: str | None = None) -> dict[str, str]:
        """Trigger -> order_by field of every ordered function (of `stream` only, when given)."""
        return {
            fn.trigger: fn.order_by
            for fn in self.spec.functions.values()
            if fn.order_by and (stream is None or self.stream_for(fn.trigger) == stream)
        }

    def batched_stream_of(self) -> Callable[[str], str | None]:
        """For a publisher (broker/publisher.py): the stream a subject's publishes go to when that stream
        allows fast batches (`allow_batched` on a stream, a KV bucket, the dead letters), else None."""
        spec = self.spec
        routes = [
            (pattern, name if stream.allow_batched else None)
            for name, stream in spec.streams.items()
            for pattern in stream.subjects
        ]
        routes += [(f"$KV.{bucket}.>", kv_stream_name(bucket) if kv.allow_batched else None) for bucket, kv in spec.kv.items()]
        dlq = spec.dead_letter
        routes.append((f"{dlq.subject_prefix}.>", dlq.stream if dlq.allow_batched else None))
        return SubjectRoutes(routes).get

    def dead_letter_subject(self, function: str) -> str:
        """Where the function's dead letters go: `<dead_letter.subject_prefix>.<function>`."""
        return f"{self.spec.dead_letter.subject_prefix}.{function}"

    def config_json(self, function: str) -> bytes:
        """The function's `config`, as the JSON object its guest's init receives."""
        return config_json(self.function(function))


def config_json(function: FunctionSection) -> bytes:
    """A function's `config`, as the JSON object its guest's init receives."""
    return json.dumps(function.config, separators=(",", ":")).encode()


def load_manifest(path: str | Path = DEFAULT_MANIFEST) -> LoadedManifest:
    """Read and check a manifest (`ebbtide.toml`): ManifestError, naming the file and the key, if it is not
    valid. Relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror})") from None
    return parse_manifest(data, path)


def parse_manifest(data: bytes | str, path: Path) -> LoadedManifest:
    """A manifest from its TOML text, as if read from `path` (named in errors; relative paths in it are
    relative to its folder)."""
    try:
        raw = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None
    try:
        manifest = msgspec.convert(raw, Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{path}: {_name_the_key(raw, str(exc))}") from None
    loaded = LoadedManifest(manifest, path.resolve())
    problems = _check_references(loaded)
    if problems:
        raise ManifestError(f"{path}: " + f"\n{path}: ".join(problems))
    return loaded


_NAMED_SECTIONS: dict[str, type[Struct]] = {
    "streams": StreamSection,
    "kv": KvSection,
    "modules": ModuleSection,
    "functions": FunctionSection,
}


def _name_the_key(raw: dict[str, Any], message: str) -> str:
    """Turn msgspec's 'Expected `int` - at `$.functions[...].batch`' into 'functions.f.batch: Expected `int`'.

    msgspec does not name dict keys in its paths (`[...]`), so find the entry that fails on its own.
    """
    match = re.match(r"^(.*) - at `\$\.?(.*)`$", message, re.S)
    if not match:
        return message
    problem, key = match.group(1), match.group(2)
    section = key.split("[", 1)[0]
    if key.startswith(f"{section}[...]") and section in _NAMED_SECTIONS and isinstance(raw.get(section), dict):
        for name, value in raw[section].items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(name)):
                return f"{section}.{name}: invalid name (letters, digits, _ and - only, at most 64)"
            try:
                msgspec.convert(value, _NAMED_SECTIONS[section])
            except msgspec.ValidationError:
                key = key.replace(f"{section}[...]", f"{section}.{name}", 1)
                break
    return f"{key or '(top level)'}: {problem}"


def _check_stream_sizes(loaded: LoadedManifest) -> list[str]:
    """A stream must hold at least one message that its functions accept (`limits.max_payload`)."""
    problems = []
    for name, fn in loaded.spec.functions.items():
        try:
            stream_name = loaded.stream_for(fn.trigger)
        except ManifestError:
            continue  # reported with the function's trigger
        max_bytes = loaded.spec.streams[stream_name].max_bytes
        if 0 < max_bytes < fn.limits.max_payload:
            problems.append(
                f"streams.{stream_name}.max_bytes: {max_bytes} cannot hold one message of functions.{name} "
                f"(limits.max_payload {fn.limits.max_payload}): give at least that, or 0 for no limit"
            )
    return problems


def _check_references(loaded: LoadedManifest) -> list[str]:
    spec = loaded.spec
    problems: list[str] = []
    if not spec.functions:
        problems.append("functions: at least one function is required")
    dlq_prefix = spec.dead_letter.subject_prefix
    for stream_name, stream in spec.streams.items():
        for subject in stream.subjects:
            if subject_matches(subject, f"{dlq_prefix}.x") or subject_matches(f"{dlq_prefix}.>", subject):
                problems.append(f"streams.{stream_name}.subjects: {subject!r} overlaps the dead-letter subjects {dlq_prefix}.>")
        if stream.max_age_s and stream.max_age_s < stream.duplicate_window_s:
            problems.append(
                f"streams.{stream_name}.max_age_s: {stream.max_age_s:g} is shorter than duplicate_window_s "
                f"{stream.duplicate_window_s:g}: a retried publish must find its first copy still stored "
                "(give at least the duplicate window, or 0 for no age limit)"
            )
    problems += _check_stream_sizes(loaded)
    if spec.dead_letter.stream in spec.streams:
        problems.append(f"dead_letter.stream: {spec.dead_letter.stream!r} is also declared under [streams]")
    problems += _check_credentials(spec.nats)
    for name, module in spec.modules.items():
        if not module.source and not module.prebuilt:
            problems.append(
                f"modules.{name}.source: required: the folder of its sources (or prebuilt = true "
                f"for a module that ships built as {loaded.module_path(name)})"
            )
    triggers: dict[str, str] = {}
    for name, fn in spec.functions.items():
        key = f"functions.{name}"
        if fn.module not in spec.modules:
            problems.append(f"{key}.module: no [modules.{fn.module}] (modules: {', '.join(sorted(spec.modules)) or 'none'})")
        try:
            loaded.stream_for(fn.trigger)
        except ManifestError:
            problems.append(f"{key}.trigger: no stream captures {fn.trigger!r}")
        if fn.trigger in triggers:
            problems.append(f"{key}.trigger: {fn.trigger!r} is already the trigger of {triggers[fn.trigger]}")
        triggers[fn.trigger] = name
        for i, subject in enumerate(fn.publish):
            if subject_matches(subject, fn.trigger) or subject_matches(fn.trigger, subject):
                problems.append(f"{key}.publish[{i}]: {subject!r} would feed the function its own output")
            if not any(
                subject_matches(p, subject) or subject_matches(subject, p) for s in spec.streams.values() for p in s.subjects
            ):
                problems.append(f"{key}.publish[{i}]: no stream captures {subject!r}")
        for i, bucket in enumerate(fn.kv):
            if bucket not in spec.kv:
                problems.append(f"{key}.kv[{i}]: no [kv.{bucket}] bucket")
        if fn.scale.min > fn.scale.max:
            problems.append(f"{key}.scale.min: {fn.scale.min} is greater than scale.max {fn.scale.max}")
        if not fn.retry.backoff_ms:
            problems.append(f"{key}.retry.backoff_ms: give at least one delay")
        if fn.batch > fn.max_ack_pending and not fn.order_by:  # ordered: one message per partition at a time
            problems.append(f"{key}.batch: {fn.batch} is greater than max_ack_pending {fn.max_ack_pending}")
    problems += _check_ordering(loaded)
    return problems


def _check_ordering(loaded: LoadedManifest) -> list[str]:
    """Ordered triggers must share their stream's one subject transform, and it must catch no other trigger."""
    problems: list[str] = []
    spec = loaded.spec
    for stream_name in spec.streams:
        try:
            ordered = loaded.ordered_triggers(stream_name)
        except ManifestError:
            return problems  # a trigger no stream captures: reported above
        if not ordered:
            continue
        try:
            src, _ = stream_transform(sorted(ordered), spec.streams[stream_name].partitions)
        except ValueError as exc:
            problems.append(f"functions.*.order_by: streams.{stream_name}: {exc}")
            continue
        for name, fn in spec.functions.items():
            if fn.trigger not in ordered and (subject_matches(src, fn.trigger) or subject_matches(fn.trigger, src)):
                problems.append(
                    f"functions.{name}.trigger: {fn.trigger!r} is caught by stream {stream_name}'s partitioning of "
                    f"ordered subjects ({src}); give it another subject or order it too"
                )
    return problems


def _check_credentials(nats: NatsSection) -> list[str]:
    kinds = [
        kind
        for kind, given in (
            ("user", nats.user),
            ("token", nats.token),
            ("creds_file", nats.creds_file),
            ("nkey_seed_file", nats.nkey_seed_file),
        )
        if given
    ]
    problems = []
    if len(kinds) > 1:
        problems.append(f"nats: give one kind of credential, not {' and '.join(kinds)}")
    if nats.password and not nats.user:
        problems.append("nats.password: needs nats.user")
    if bool(nats.tls_cert) != bool(nats.tls_key):
        problems.append("nats.tls_cert: a client certificate needs both tls_cert and tls_key")
    return problems
