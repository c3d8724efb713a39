"""Create or update, idempotently, everything the manifest needs on the server.

Provisioning is an admin step of its own (`ebbtide provision`; `ebbtide up` runs it before it starts the
functions): a function's NATS user may not create or change streams and consumers, so a host only checks
that its consumer exists (`missing_provisioning`) and waits until it does.
"""

from __future__ import annotations

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from ..errors import JetStreamError, RunError
from ..manifest import LoadedManifest
from ..subjects import subject_matches
from . import _nats_fast, jsapi
from .connection import connect
from .credentials import NatsAuth
from .jsapi import ERR_STREAM_NAME_IN_USE, ERR_STREAM_NOT_FOUND
from .names import MODULES_BUCKET, MODULES_STREAM, ROLLOUTS_BUCKET, SHADOW_STREAM, SHADOW_SUBJECT_PREFIX, kv_stream_name
from .partitions import PINNED_CLIENT, lane_consumer_config, lanes, stream_transform_of

ERR_INSUFFICIENT_STORAGE = 10047  # "insufficient storage resources available": max_bytes beyond the server's store
KV_DUPLICATE_WINDOW_S = 120.0
DEFAULT_SHADOW_KEEP = 10  # shadow samples kept per function and verdict (`shadow start --keep` raises it)


def _storage(kind: str) -> api.StorageType:
    return api.StorageType.FILE if kind == "file" else api.StorageType.MEMORY


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await _create_or_update_stream(js, config)
    except nats.js.errors.APIError as exc:
        if exc.err_code != ERR_INSUFFICIENT_STORAGE:
            raise
        # The server reserves a stream's max_bytes from its store when the stream is created or raised.
        raise RunError(
            f"stream {config.name}: the server cannot reserve max_bytes {config.max_bytes} (streams.{config.name}."
            f"max_bytes): its JetStream store (max_file_store / max_memory_store) has less than that left for it; "
            f"lower max_bytes, or give the server a larger store"
        ) from None


def _keeps_key(dest: str) -> bool:
    """Whether a partitioning transform's destination is the layout before the stored subject dropped the key
    (`T.{{partition(P,i)}}.{{wildcard(i)}}`, as earlier versions of ebbtide stored them)."""
    return "}}.{{wildcard(" in dest


async def _create_or_update_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        info = await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != ERR_STREAM_NAME_IN_USE:
            raise
        on_server = (await js.stream_info(str(config.name))).config
        existing = api.RetentionPolicy(on_server.retention or "limits")
        had, wants = on_server.subject_transform, config.subject_transform
        if had is not None and (wants is None or (had.src, had.dest) != (wants.src, wants.dest)):
            # Partitioned messages stored under the old layout would no longer match any partition's consumer.
            earlier = " (an earlier ebbtide's layout, the key kept in the stored subject)" if _keeps_key(had.dest) else ""
            raise RunError(
                f"stream {config.name} partitions ordered subjects as {had.src} -> {had.dest} on the server{earlier}, and "
                f"the manifest wants {f'{wants.src} -> {wants.dest}' if wants else 'no partitioning'} (streams."
                f"{config.name}.partitions, functions.*.order_by): let the functions drain it (`ebbtide top`: backlog 0), "
                f"delete it (`nats stream rm {config.name}`), then run `ebbtide provision` again"
            ) from None
        wanted = api.RetentionPolicy(config.retention or "limits")
        if existing != wanted and api.RetentionPolicy.WORK_QUEUE in (existing, wanted):
            # The server refuses this update with a bare "can not change retention policy": say what to do.
            raise RunError(
                f"stream {config.name} has retention {existing.value} on the server and "
                f"{wanted.value} in the manifest (streams.{config.name}.retention): JetStream cannot change a "
                f"stream to or from workqueue in place. Let the functions drain it (`ebbtide top`: backlog 0), delete "
                f"it (`nats stream rm {config.name}`), then run `ebbtide provision` again"
            ) from None
        info = await js.update_stream(config)
    if config.allow_batched and not info.config.allow_batched:
        # A server before 2.14 ignores the setting: the functions would have every fast batch refused.
        raise RunError(
            f"stream {config.name}: the server did not keep allow_batched (fast batches need nats-server 2.14 or "
            f"later): set allow_batched = false for it in the manifest (streams.X, kv.X or dead_letter)"
        )


def stream_configs(manifest: LoadedManifest) -> list[api.StreamConfig]:
    spec = manifest.spec
    configs = [
        api.StreamConfig(
            name=name,
            subjects=list(stream.subjects),
            retention=api.RetentionPolicy(stream.retention),
            storage=_storage(stream.storage),
            num_replicas=stream.replicas,
            duplicate_window=stream.duplicate_window_s,
            max_age=stream.max_age_s,
            # Full: refuse the publish (the publisher retries), never drop a stored, maybe unhandled, message.
            max_bytes=stream.max_bytes or -1,
            discard=api.DiscardPolicy.NEW,
            subject_transform=_subject_transform(manifest, name),
            allow_batched=stream.allow_batched,
        )
        for name, stream in spec.streams.items()
    ]
    dlq = spec.dead_letter
    configs.append(
        api.StreamConfig(
            name=dlq.stream,
            subjects=[f"{dlq.subject_prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=_storage(dlq.storage),
            num_replicas=dlq.replicas,
            duplicate_window=KV_DUPLICATE_WINDOW_S,
            allow_batched=dlq.allow_batched,
        )
    )
    for bucket, kv in spec.kv.items():
        configs.append(_kv_stream_config(bucket, kv.history, kv.replicas, _storage(kv.storage), kv.allow_batched))
    return configs


def _kv_stream_config(
    bucket: str, history: int, replicas: int, storage: api.StorageType, allow_batched: bool = False
) -> api.StreamConfig:
    """The same stream layout as nats-py's create_key_value, so clients see an ordinary KV bucket."""
    return api.StreamConfig(
        name=kv_stream_name(bucket),
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=True,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=KV_DUPLICATE_WINDOW_S,
        max_msgs_per_subject=history,
        num_replicas=replicas,
        storage=storage,
        allow_batched=allow_batched,
    )


def rollout_stream_configs(manifest: LoadedManifest) -> list[api.StreamConfig]:
    """Rollouts (rollout/state.py): the records every host watches, the candidates' bytes, the shadow samples.

    Samples: the stream keeps the first N per subject (function and verdict) and refuses the rest (discard
    new, per subject), so the first N survive whichever replica sent them; `shadow start` purges a
    function's old ones and may raise N."""
    storage = _storage(manifest.spec.dead_letter.storage)
    replicas = manifest.spec.dead_letter.replicas
    return [
        _kv_stream_config(ROLLOUTS_BUCKET, 1, replicas, storage),
        # The same layout as nats-py's create_object_store, so clients see an ordinary object store.
        api.StreamConfig(
            name=MODULES_STREAM,
            subjects=[f"$O.{MODULES_BUCKET}.C.>", f"$O.{MODULES_BUCKET}.M.>"],
            max_bytes=-1,
            storage=storage,
            num_replicas=replicas,
            discard=api.DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            allow_direct=True,
        ),
        api.StreamConfig(
            name=SHADOW_STREAM,
            subjects=[f"{SHADOW_SUBJECT_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=storage,
            num_replicas=replicas,
            discard=api.DiscardPolicy.NEW,
            discard_new_per_subject=True,
            max_msgs_per_subject=DEFAULT_SHADOW_KEEP,
            max_msgs=-1,
            max_bytes=-1,
            duplicate_window=KV_DUPLICATE_WINDOW_S,
        ),
    ]


def _subject_transform(manifest: LoadedManifest, stream: str) -> api.SubjectTransform | None:
    """Ordered functions' keyed subjects stored with their partition (broker/partitions.py)."""
    transform = stream_transform_of(manifest, stream)
    return api.SubjectTransform(src=transform[0], dest=transform[1]) if transform is not None else None


def consumer_configs(manifest: LoadedManifest, function: str) -> list[api.ConsumerConfig]:
    """The durable consumers a function reads, as nats-py describes them: its own; when ordered, also one
    per partition (see broker/partitions.py; provisioned with `lane_consumer_config`, which adds the
    priority group nats-py has no field for)."""
    fn = manifest.function(function)
    return [
        api.ConsumerConfig(
            name=lane.consumer,
            durable_name=lane.consumer,
            filter_subject=lane.filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=fn.ack_wait_s,
            # The host counts deliveries and dead-letters after retry.max_deliver; the server must never
            # stop redelivering on its own, or a message would be dropped without a dead letter.
            max_deliver=-1,
            max_ack_pending=fn.max_ack_pending,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        for lane in lanes(manifest, function)
    ]


def consumer_config(manifest: LoadedManifest, function: str) -> api.ConsumerConfig:
    """The function's own durable consumer (named after it; KEDA's trigger names it)."""
    return consumer_configs(manifest, function)[-1]


def streams_needed(manifest: LoadedManifest, functions: list[str]) -> list[str]:
    """The streams these functions read, publish into, write KV entries to, or dead-letter into."""
    spec = manifest.spec
    names = {spec.dead_letter.stream}
    for function in functions:
        fn = manifest.function(function)
        names.add(manifest.stream_for(fn.trigger))
        names.update(
            stream
            for stream, section in spec.streams.items()
            if any(subject_matches(p, s) or subject_matches(s, p) for p in section.subjects for s in fn.publish)
        )
        names.update(kv_stream_name(bucket) for bucket in fn.kv)
    return sorted(names)


async def provision(js: JetStreamContext, manifest: LoadedManifest, functions: list[str] | None = None) -> None:
    """The streams these functions need (dead letters and KV buckets included; every function's by
    default), and a durable pull consumer per function. Needs JetStream administration: the admin user."""
    names = functions if functions is not None else list(manifest.spec.functions)
    needed = set(streams_needed(manifest, names))
    for config in stream_configs(manifest):
        if config.name in needed:
            await ensure_stream(js, config)
    for config in rollout_stream_configs(manifest):
        await _ensure_rollout_stream(js, config)
    for function in names:
        fn = manifest.function(function)
        stream = manifest.stream_for(fn.trigger)
        if fn.order_by:
            await _ensure_lanes(js, manifest, function)
            continue
        for consumer in consumer_configs(manifest, function):
            await js.add_consumer(stream, consumer)


async def _ensure_lanes(js: JetStreamContext, manifest: LoadedManifest, function: str) -> None:
    """An ordered function's lanes: created, or updated in place. Lanes of the earlier layout (one message at
    a time, max_ack_pending 1, no priority group) become pinned lanes with their pending messages and ack
    floor kept (nats-server 2.15 updates a consumer's priority policy in place; checked by
    tests/integration/test_pinned_lanes.py). A host of the earlier version still running then gets its
    pull requests refused (400, no priority group), so it takes nothing more from them."""
    fn = manifest.function(function)
    stream = manifest.stream_for(fn.trigger)
    nc = _nats_fast.client_of_jetstream(js)
    for lane in lanes(manifest, function):  # the partitions first, the function's own consumer last
        body: dict[str, object] = {"stream_name": stream, "config": lane_consumer_config(fn, lane)}
        await jsapi.request(nc, f"CONSUMER.CREATE.{stream}.{lane.consumer}", body, jsapi.ApiResponse)


class LaneConfig(msgspec.Struct):
    priority_policy: str = "none"


class LaneInfo(jsapi.ApiResponse):
    config: LaneConfig | None = None


async def _ensure_rollout_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    """Created when missing; an existing one is left as it is (`shadow start` may have raised the samples' N)."""
    try:
        await js.stream_info(str(config.name))
    except NotFoundError:
        await ensure_stream(js, config)


async def provision_server(url: str, manifest: LoadedManifest, auth: NatsAuth, give_up_after_s: float | None = 30) -> None:
    """`provision` over a connection of its own, with `auth` (the admin user's, or the operator's)."""
    nc = await connect(url, name="ebbtide-provision", give_up_after_s=give_up_after_s, auth=auth)
    try:
        await provision(nc.jetstream(), manifest)
    except (TimeoutError, nats.errors.TimeoutError):
        # A user without the rights gets no answer at all (the server drops the request): say what it needs.
        raise ConnectionError(
            f"{url}: JetStream did not answer the provisioning requests of {auth.describe()}; "
            "provisioning needs the admin credentials"
        ) from None
    except (nats.js.errors.Error, RunError) as exc:
        raise ConnectionError(f"{url}: provisioning refused: {exc}") from None
    finally:
        await nc.drain()


async def missing_provisioning(js: JetStreamContext, manifest: LoadedManifest, function: str) -> str | None:
    """Why this function cannot start yet (its stream or durable consumer does not exist, or an ordered
    function's consumer has the earlier one-at-a-time layout), or None.

    Provisioning creates every stream before any consumer, and a function's own consumer after its
    partitions' (ordered functions), so its existence, and its layout, are the sign that it has run; that
    check needs only the consumer info the function reads for its lag anyway.
    """
    fn = manifest.function(function)
    stream = manifest.stream_for(fn.trigger)
    try:
        if fn.order_by:
            reply = await jsapi.request(_nats_fast.client_of_jetstream(js), f"CONSUMER.INFO.{stream}.{function}", None, LaneInfo)
            if reply.config is None or reply.config.priority_policy != PINNED_CLIENT:
                return (
                    f"the consumers of ordered function {function} on stream {stream} take one message at a time "
                    "(the earlier layout): run `ebbtide provision` with the admin credentials, which makes them "
                    "pinned lanes in place"
                )
            return None
        await js.consumer_info(stream, function)
    except (NotFoundError, JetStreamError) as exc:
        if isinstance(exc, JetStreamError) and exc.code != 404:
            if exc.code == 503:
                return "JetStream is not available yet (no responders)"
            raise
        missing = (
            f"stream {stream}" if exc.err_code == ERR_STREAM_NOT_FOUND else f"durable consumer {function} on stream {stream}"
        )
        return f"{missing} does not exist: run `ebbtide provision` with the admin credentials"
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
        return "JetStream is not available yet (no responders)"  # e.g. a cluster still electing its leader
    except (TimeoutError, nats.errors.TimeoutError):
        return (
            f"no answer to the info request of consumer {function} on stream {stream} "
            "(is this user allowed $JS.API.CONSUMER.INFO of it?)"
        )
    return None
