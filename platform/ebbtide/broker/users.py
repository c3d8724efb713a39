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
- `observer`: read only. The KV outboxes (stream info, get, direct get, and the writes as they happen),
  the dead letters, the manifest's streams and the shadow samples (stream info, get), and the functions'
  status reports. `ebbtide top`, `outbox`, `dlq list/show`, `shadow report`, `replay` and Locust's
  end-to-end timing use it.

Functions, observer and admin authenticate with NKEYs: the server configuration holds only public keys,
and each seed stays in its own file (mode 0600). `ingress` has a password, since any client must be able
to use it; the configuration holds only its bcrypt hash, the password itself is in ingress.env (0600).
`write_bundle` creates the keys once and keeps them; the permissions are recomputed from the manifest
each time, so a changed manifest changes what each user may do.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..manifest import LoadedManifest, subject_matches
from ..status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX
from .credentials import NatsAuth
from .names import MODULES_STREAM, ROLLOUTS_BUCKET, SHADOW_STREAM, SHADOW_SUBJECT_PREFIX, kv_stream_name
from .partitions import consumer_names, keyed_subject, ordered_triggers

ADMIN_USER = "admin"
INGRESS_USER = "ingress"
OBSERVER_USER = "observer"
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
    # The stored time of its oldest unhandled message (`ebbtide_oldest_pending_seconds`, oldest_pending.py): a
    # message get on its trigger's stream. Read only; the subject is per stream, so it could read the stream's
    # other subjects too (the same orders, routed): see SECURITY.md.
    publish.append(f"{JS_API}.STREAM.MSG.GET.{stream}")
    publish += [
        *with_keyed_subjects(manifest, fn.publish),
        *(f"$KV.{bucket}.>" for bucket in fn.kv),
        manifest.dead_letter_subject(function),
        f"{STATUS_SUBJECT_PREFIX}.{function}",
        *rollout_publish(function),
    ]
    # trigger: the wake-up bell (and its keyed subjects, when ordered)
    subscribe = [f"{inbox_prefix(function)}.>", *with_keyed_subjects(manifest, [fn.trigger]), STATUS_REQUEST_SUBJECT]
    return Permissions(publish, subscribe)


def rollout_publish(function: str) -> list[str]:
    """What a host needs to follow rollouts (rollout/follow.py): watch the records (an ordered consumer on
    the bucket's stream), download candidate modules (an ordered consumer on the object store's), write its
    own function's record (a canary's rollback) and publish its shadow samples. It can create consumers on
    these two streams only, and change no stream."""
    rollouts, modules = kv_stream_name(ROLLOUTS_BUCKET), MODULES_STREAM
    return [
        *(f"{JS_API}.{api}.{stream}" for stream in (rollouts, modules) for api in ("STREAM.INFO", "CONSUMER.CREATE")),
        *(f"{JS_API}.{api}.{stream}.*" for stream in (rollouts, modules) for api in ("CONSUMER.INFO", "CONSUMER.DELETE")),
        *(f"{JS_API}.CONSUMER.CREATE.{stream}.>" for stream in (rollouts, modules)),  # a named one, with its filter
        f"{JS_API}.DIRECT.GET.{rollouts}.>",
        f"{JS_API}.STREAM.MSG.GET.{modules}",
        f"$KV.{ROLLOUTS_BUCKET}.{function}",
        f"{SHADOW_SUBJECT_PREFIX}.{function}.>",
    ]


def with_keyed_subjects(manifest: LoadedManifest, subjects: list[str]) -> list[str]:
    """`subjects`, each ordered trigger among them followed by its keyed form `<trigger>.*`."""
    ordered = ordered_triggers(manifest)
    out: list[str] = []
    for subject in subjects:
        out.append(subject)
        out += [keyed_subject(t, "*") for t in ordered if subject_matches(subject, t)]
    return out


def observer_permissions(manifest: LoadedManifest) -> Permissions:
    """Read the outboxes, the dead letters, the streams (`replay`), the shadow samples and the status
    reports; change nothing."""
    spec = manifest.spec
    read = (spec.dead_letter.stream, *spec.streams, SHADOW_STREAM)
    publish = [f"{JS_API}.STREAM.{action}.{stream}" for stream in read for action in ("INFO", "MSG.GET")]
    subscribe = [f"{inbox_prefix(OBSERVER_USER)}.>", f"{STATUS_SUBJECT_PREFIX}.>"]
    for bucket in spec.kv:
        stream = kv_stream_name(bucket)
        publish += [
            f"{JS_API}.STREAM.INFO.{stream}",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}.>",
        ]
        subscribe.append(f"$KV.{bucket}.>")  # each write as it happens (Locust's end-to-end timing)
    publish.append(STATUS_REQUEST_SUBJECT)  # every pool reports at once (`ebbtide top`)
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

    def admin(self) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(ADMIN_USER)))

    def function(self, function: str) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(function)), inbox_prefix=inbox_prefix(function))

    def observer(self) -> NatsAuth:
        return NatsAuth(nkey_seed_file=str(self.seed_file(OBSERVER_USER)), inbox_prefix=inbox_prefix(OBSERVER_USER))

    def ingress(self) -> NatsAuth:
        values = dict(line.split("=", 1) for line in (self.folder / INGRESS_ENV).read_text().splitlines() if "=" in line)
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
    # JSON is valid NATS configuration syntax, and json.dumps quotes every subject safely.
    config = "# Generated by ebbtide from " + manifest.path.name + "; regenerate with `ebbtide nats-config`.\n"
    config += "authorization " + json.dumps({"users": users}, indent=2) + "\n"
    _write_secret(bundle.server_config, config)  # public keys and a password hash: private all the same
    return bundle


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
