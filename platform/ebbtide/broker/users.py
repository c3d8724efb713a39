"""Server-side authorization generated from the manifest: who may publish and subscribe to what.

Users (see SECURITY.md):
- `admin`: everything. Provisioning (`ebbtide provision`, `up` before it starts the functions), the
  operator's tools that change state (publish, dlq redrive/purge), and a host running every function in
  one process.
- one user per function, with exactly what its host needs and no JetStream administration: read its own
  durable consumer's info (the lag), fetch and ack its own messages, read a stored message of its trigger's
  stream (the age of its oldest unhandled one), publish to the subjects and KV
  buckets the manifest allows it and to its own dead-letter subject, and report its status. It cannot
  create, update, delete or purge any stream or consumer: provisioning is a separate admin step. Replies
  arrive below its own inbox prefix, which no other user may read.
- `ingress`: publish to the pipeline's entry subjects (triggers no function publishes to), and read
  replies (JetStream acks) below `_INBOX.`, the default of every NATS client.
- `observer`: read only. The KV outboxes (stream info, get, direct get, the writes as they happen, and the
  ordered consumers KV clients list keys, read history and watch with, plus the account's JetStream info),
  the dead letters, the manifest's streams, the shadow samples and the rollout records (stream info, get),
  and the functions' status reports. `ebbtide top`, `outbox`, `dlq list/show`, `shadow report`, `replay`,
  `console` and Locust's end-to-end timing use it.
- `scaler`: the KEDA external scaler (`ebbtide scaler`). Read every function's consumer info (the lag; an
  ordered function's partition consumers too) and listen on the triggers (the bell that wakes a function
  at zero replicas). Nothing else: no fetch, no ack, no publish but its own requests.

Functions, observer and admin authenticate with NKEYs: the server configuration holds only public keys,
and each seed stays in its own file (mode 0600). `ingress` has a password, since any client must be able
to use it; the configuration holds only its bcrypt hash, the password itself is in ingress.env (0600).
Beside each key, `<user>.env` and `<user>.context.json` say how another client connects as that user (URL,
key, inbox prefix). `write_bundle` creates the keys once and keeps them; the permissions are recomputed from the manifest
each time, so a changed manifest changes what each user may do.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..manifest import LoadedManifest
from ..status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX
from ..subjects import keyed_subject, subject_matches
from .credentials import NatsAuth
from .names import MODULES_STREAM, ROLLOUTS_BUCKET, SHADOW_STREAM, SHADOW_SUBJECT_PREFIX, kv_stream_name, lane_holdings_subject
from .partitions import consumer_names

ADMIN_USER = "admin"
INGRESS_USER = "ingress"
OBSERVER_USER = "observer"
SCALER_USER = "scaler"
SERVER_CONFIG = "server.conf"
INGRESS_ENV = "ingress.env"
JS_API = "$JS.API"
# The server pays the bcrypt cost on every ingress connect: at nats' usual 11 (~0.15 s of a core here), 20
# publishers connecting at once kept a 2-core machine busy for seconds. The cost only slows the guessing
# of a weak password from a leaked hash; this one is 24 random bytes (192 bits, token_urlsafe), which no guessing
# reaches, so the minimum cost keeps the whole protection (the hash never gives the password away).
BCRYPT_COST = 4


@dataclass(frozen=True)
class Permissions:
    publish: list[str]
    subscribe: list[str]


def inbox_prefix(function: str) -> str:
    return f"_ebbtide_inbox.{function}"


def function_permissions(manifest: LoadedManifest, function: str) -> Permissions:
    """The hot path and nothing more: no `$JS.API` subject but its own consumer's info and pull requests."""
    fn = manifest.function(function)
    stream = manifest.stream_for(fn.trigger)
    publish: list[str] = []
    for name in consumer_names(manifest, function):  # its own; an ordered function's partitions too
        consumer = f"{stream}.{name}"
        publish += [
            f"{JS_API}.CONSUMER.INFO.{consumer}",  # the lag, and whether provisioning has created it yet
            f"{JS_API}.CONSUMER.MSG.NEXT.{consumer}",
            f"$JS.ACK.{consumer}.>",  # ack, nak, in-progress of its own messages only
        ]
        if fn.order_by:  # a holder hands its lanes over at once when it stops (broker/partitioned_pull.py)
            publish.append(f"{JS_API}.CONSUMER.UNPIN.{consumer}")
    # The stored time of its oldest unhandled message (`ebbtide_oldest_pending_seconds`, oldest_pending.py): a
    # message get on its trigger's stream. Read only; the subject is per stream, so it could read the stream's
    # other subjects too (the same orders, routed): see SECURITY.md.
    publish.append(f"{JS_API}.STREAM.MSG.GET.{stream}")
    holdings = [lane_holdings_subject(function)] if fn.order_by else []
    publish += [
        *holdings,
        *with_keyed_subjects(manifest, fn.publish),
        *(f"$KV.{bucket}.>" for bucket in fn.kv),
        manifest.dead_letter_subject(function),
        f"{STATUS_SUBJECT_PREFIX}.{function}",
        *rollout_publish(function),
    ]
    # trigger: the wake-up bell (and its keyed subjects, when ordered)
    subscribe = [
        f"{inbox_prefix(function)}.>",
        *with_keyed_subjects(manifest, [fn.trigger]),
        STATUS_REQUEST_SUBJECT,
        *holdings,
    ]
    subscribe.append(f"$KV.{ROLLOUTS_BUCKET}.{function}")  # its rollout record's bell (rollout/follow.py)
    return Permissions(publish, subscribe)


def rollout_publish(function: str) -> list[str]:
    """What a host needs to follow rollouts (rollout/follow.py): read the records (the bucket's stream info,
    direct gets of a record's last value), download candidate modules (the object store's stream info and
    its messages by subject), write its own function's record (a canary's rollback) and publish its shadow
    samples. No consumer is created on these streams, none deleted, listed or changed: another replica's
    reads are out of its reach. It changes no stream."""
    rollouts, modules = kv_stream_name(ROLLOUTS_BUCKET), MODULES_STREAM
    return [
        *(f"{JS_API}.STREAM.INFO.{stream}" for stream in (rollouts, modules)),
        f"{JS_API}.DIRECT.GET.{rollouts}.>",
        f"{JS_API}.STREAM.MSG.GET.{modules}",
        f"$KV.{ROLLOUTS_BUCKET}.{function}",
        f"{SHADOW_SUBJECT_PREFIX}.{function}.>",
    ]


def with_keyed_subjects(manifest: LoadedManifest, subjects: list[str]) -> list[str]:
    """`subjects`, each ordered trigger among them followed by its keyed form `<trigger>.*`."""
    ordered = manifest.ordered_triggers()
    out: list[str] = []
    for subject in subjects:
        out.append(subject)
        out += [keyed_subject(t, "*") for t in ordered if subject_matches(subject, t)]
    return out


def observer_permissions(manifest: LoadedManifest) -> Permissions:
    """Read the outboxes, the dead letters, the streams (`replay`), the shadow samples, the rollout records
    and the status reports; change nothing."""
    spec = manifest.spec
    # The rollout records too (`ebbtide console` shows each function's rollout): read, never written.
    read = (spec.dead_letter.stream, *spec.streams, SHADOW_STREAM, kv_stream_name(ROLLOUTS_BUCKET))
    publish = [f"{JS_API}.STREAM.{action}.{stream}" for stream in read for action in ("INFO", "MSG.GET")]
    subscribe = [f"{inbox_prefix(OBSERVER_USER)}.>", f"{STATUS_SUBJECT_PREFIX}.>"]
    for bucket in spec.kv:
        stream = kv_stream_name(bucket)
        publish += [
            f"{JS_API}.STREAM.INFO.{stream}",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}.>",
            # A KV client's keys, history and watch read through an ordered consumer: created unnamed
            # (nats-py), or named by the client with its filter inside the bucket (nats.js watching a key),
            # and its info read; none deleted, listed or paused.
            f"{JS_API}.CONSUMER.CREATE.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}.*.$KV.{bucket}.>",
            f"{JS_API}.CONSUMER.INFO.{stream}.*",
        ]
        subscribe.append(f"$KV.{bucket}.>")  # each write as it happens (Locust's end-to-end timing)
    publish.append(f"{JS_API}.INFO")  # the account's JetStream usage: what nats.js and the nats CLI ask first
    publish.append(STATUS_REQUEST_SUBJECT)  # every pool reports at once (`ebbtide top`)
    return Permissions(publish, subscribe)


def scaler_permissions(manifest: LoadedManifest) -> Permissions:
    """Every function's consumer info (what KEDA scales on), and the triggers' bell. The bell shows it the
    messages as they are published (a core subscription cannot be had without them); it cannot take,
    ack or change any."""
    publish: list[str] = []
    subscribe = [f"{inbox_prefix(SCALER_USER)}.>"]
    for function, fn in manifest.spec.functions.items():
        stream = manifest.stream_for(fn.trigger)
        publish += [f"{JS_API}.CONSUMER.INFO.{stream}.{name}" for name in consumer_names(manifest, function)]
        subscribe += [s for s in with_keyed_subjects(manifest, [fn.trigger]) if s not in subscribe]
    return Permissions(publish, subscribe)


def ingress_subjects(manifest: LoadedManifest) -> list[str]:
    """Triggers that no function publishes to: where orders enter the pipeline."""
    published = [subject for fn in manifest.spec.functions.values() for subject in fn.publish]
    return [fn.trigger for fn in manifest.spec.functions.values() if not any(subject_matches(p, fn.trigger) for p in published)]


def ingress_permissions(manifest: LoadedManifest) -> Permissions:
    """The entry subjects; an ordered one also with a key (`<trigger>.<key>`)."""
    return Permissions(publish=with_keyed_subjects(manifest, ingress_subjects(manifest)), subscribe=["_INBOX.>"])


@dataclass(frozen=True)
class AuthBundle:
    """A folder of generated credentials: server.conf, <user>.nk seeds, ingress.env."""

    folder: Path

    @property
    def server_config(self) -> Path:
        return self.folder / SERVER_CONFIG

    def seed_file(self, user: str) -> Path:
        return self.folder / f"{user}.nk"

    def env_file(self, user: str) -> Path:
        """How another client connects as `user` (NATS_URL, the key, NATS_INBOX_PREFIX); ingress.env for ingress."""
        return self.folder / (INGRESS_ENV if user == INGRESS_USER else f"{user}.env")

    def admin(self) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(ADMIN_USER)))

    def function(self, function: str) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(function)), inbox_prefix=inbox_prefix(function))

    def observer(self) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(OBSERVER_USER)), inbox_prefix=inbox_prefix(OBSERVER_USER))

    def scaler(self) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(SCALER_USER)), inbox_prefix=inbox_prefix(SCALER_USER))

    def ingress(self) -> NatsAuth:
        lines = (self.folder / INGRESS_ENV).read_text().splitlines()
        values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        return NatsAuth(user=values["EBBTIDE_NATS_USER"], password=values["EBBTIDE_NATS_PASSWORD"])


def write_bundle(manifest: LoadedManifest, folder: Path) -> AuthBundle:
    """Create (or bring up to date with the manifest) the credentials and server config in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    bundle = AuthBundle(folder)
    users: list[dict[str, object]] = [{"nkey": _public_key(bundle.seed_file(ADMIN_USER))}]
    for function in manifest.spec.functions:
        permissions = function_permissions(manifest, function)
        users.append({"nkey": _public_key(bundle.seed_file(function)), "permissions": _permission_block(permissions)})
    ingress_env = folder / INGRESS_ENV
    if not ingress_env.exists():
        _write_secret(ingress_env, f"EBBTIDE_NATS_USER={INGRESS_USER}\nEBBTIDE_NATS_PASSWORD={secrets.token_urlsafe(24)}\n")
    ingress = bundle.ingress()
    users.append(
        {
            "user": ingress.user,
            "password": _password_hash(bundle, ingress),
            "permissions": _permission_block(ingress_permissions(manifest)),
        }
    )
    users.append(
        {"nkey": _public_key(bundle.seed_file(OBSERVER_USER)), "permissions": _permission_block(observer_permissions(manifest))}
    )
    users.append(
        {"nkey": _public_key(bundle.seed_file(SCALER_USER)), "permissions": _permission_block(scaler_permissions(manifest))}
    )
    _write_client_files(manifest, bundle, ingress)
    # JSON is valid NATS configuration syntax, and json.dumps quotes every subject safely.
    config = "# Generated by ebbtide from " + manifest.path.name + "; regenerate with `ebbtide nats-config`.\n"
    config += "authorization " + json.dumps({"users": users}, indent=2) + "\n"
    _write_secret(bundle.server_config, config)  # public keys and a password hash: private all the same
    return bundle


def client_url(manifest: LoadedManifest) -> str:
    """The URL a client of this manifest's server connects to: its [nats] url, else the embedded server's."""
    embedded = manifest.spec.embedded
    return manifest.spec.nats.url or f"nats://{embedded.host}:{embedded.port}"


def _write_client_files(manifest: LoadedManifest, bundle: AuthBundle, ingress: NatsAuth) -> None:
    """For every user, how another client connects as it: `<user>.env` (NATS_URL, NATS_NKEY (the seed file) or
    NATS_USER/NATS_PASSWORD, NATS_INBOX_PREFIX: the variables the nats CLI reads, and what nats.js and nats-py
    take as options) and `<user>.context.json` (a nats CLI context: copy it into ~/.config/nats/context/).
    The ingress user's file is ingress.env, which also keeps its password for ebbtide (EBBTIDE_NATS_*)."""
    url = client_url(manifest)
    prefixes = {
        ADMIN_USER: "",
        INGRESS_USER: "",
        OBSERVER_USER: inbox_prefix(OBSERVER_USER),
        SCALER_USER: inbox_prefix(SCALER_USER),
    }
    prefixes |= {function: inbox_prefix(function) for function in manifest.spec.functions}
    for user, prefix in prefixes.items():
        env = {"NATS_URL": url}
        context: dict[str, str] = {"description": f"ebbtide {user} ({manifest.path.name})", "url": url}
        if user == INGRESS_USER:
            env |= {"NATS_USER": ingress.user, "NATS_PASSWORD": ingress.password}
            context |= {"user": ingress.user, "password": ingress.password}
        else:
            env["NATS_NKEY"] = context["nkey"] = str(bundle.seed_file(user).resolve())
        if prefix:
            env["NATS_INBOX_PREFIX"] = context["inbox_prefix"] = prefix
        lines: list[str] = []
        if user == INGRESS_USER:
            lines += [f"EBBTIDE_NATS_USER={ingress.user}", f"EBBTIDE_NATS_PASSWORD={ingress.password}"]
        lines += [f"{name}={value}" for name, value in env.items()]
        _write_secret(bundle.env_file(user), "\n".join(lines) + "\n")
        _write_secret(bundle.folder / f"{user}.context.json", json.dumps(context, indent=2) + "\n")


def _permission_block(permissions: Permissions) -> dict[str, object]:
    return {"publish": {"allow": permissions.publish}, "subscribe": {"allow": permissions.subscribe}}


def _password_hash(bundle: AuthBundle, user: NatsAuth) -> str:
    """The bcrypt hash nats-server checks the password against (it reads any value starting with `$2` as
    one). The one already in server.conf while it still matches: regenerating changes nothing, so a
    Kubernetes Secret made from the file keeps its name and no pod rolls for nothing."""
    import bcrypt  # here: only the process that writes the server's authorization needs it

    try:
        text = bundle.server_config.read_text()
        users = json.loads(text[text.index("authorization ") + len("authorization ") :])["users"]
        existing = next(u["password"] for u in users if u.get("user") == user.user)
        if existing.startswith(f"$2b${BCRYPT_COST:02d}$") and bcrypt.checkpw(user.password.encode(), existing.encode()):
            return str(existing)
    except (OSError, ValueError, KeyError, StopIteration):
        pass  # no configuration yet, or one this version did not write: hash afresh
    return bcrypt.hashpw(user.password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def _public_key(seed_file: Path) -> str:
    """The user's public key; its seed is created on first use and kept."""
    import nkeys  # here, as bcrypt: a function process does not load it (nor PyNaCl) unless it signs in with a seed

    if not seed_file.exists():
        _write_secret(seed_file, nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode() + "\n")
    seed = bytearray(seed_file.read_bytes().strip())
    public: bytes = nkeys.from_seed(seed).public_key
    return public.decode()


def _write_secret(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    temporary.replace(path)
