"""Candidate modules' bytes in the `ebbtide-modules` object store, keyed by their sha256, so that every
replica, on any machine, loads the same module.

The CLI uploads (`upload_module`); a host downloads into `<build_dir>/rollout/<sha256>.wasm` once
(`fetch_module`) and loads it through the runtime's own loaders, which check the digest again before
anything of it is compiled (runtime/cache.py `read_checked`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from ..broker.names import MODULES_BUCKET, MODULES_STREAM
from ..errors import RunError


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload_module(js: JetStreamContext, data: bytes) -> str:
    """Store `data` under its sha256 (once: a module already there is not sent again); its digest."""
    digest = sha256_of(data)
    store = await _store(js)
    try:
        info = await store.get_info(digest)
        if info.size == len(data):
            return digest
    except ObjectNotFoundError:
        pass
    await store.put(digest, data)
    return digest


async def fetch_module(js: JetStreamContext, digest: str, folder: Path) -> Path:
    """The module's file in `folder`, downloaded when it is not there yet (or not what its name says)."""
    path = folder / f"{digest}.wasm"
    try:
        if sha256_of(path.read_bytes()) == digest:
            return path
    except OSError:
        pass
    data = await _download(js, digest)
    if sha256_of(data) != digest:
        raise RunError(f"module {digest[:12]} in the {MODULES_BUCKET} object store does not match its digest")
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)  # processes on one machine may share the folder
    return path


async def _download(js: JetStreamContext, digest: str) -> bytes:
    """The object's bytes, chunk by chunk with `STREAM.MSG.GET` (the next message on the object's chunk
    subject after the last one read), naming the stream: a function's user may read this stream's messages
    but create no consumer on it, nor list streams."""
    store = await _store(js)
    try:
        info = await store.get_info(digest)
    except ObjectNotFoundError:
        raise RunError(f"module {digest[:12]} is not in the {MODULES_BUCKET} object store") from None
    chunks: list[bytes] = []
    chunk_subject = f"$O.{MODULES_BUCKET}.C.{info.nuid}"
    received, seq = 0, 1
    while received < (info.size or 0):
        try:
            msg = await js.get_msg(MODULES_STREAM, seq=seq, subject=chunk_subject, next=True)
        except NotFoundError:
            raise RunError(f"module {digest[:12]}: the object store holds {received} of its {info.size} bytes") from None
        chunks.append(msg.data or b"")
        received += len(msg.data or b"")
        seq = (msg.seq or seq) + 1
    return b"".join(chunks)


async def _store(js: JetStreamContext):  # type: ignore[no-untyped-def]
    try:
        return await js.object_store(MODULES_BUCKET)
    except BucketNotFoundError:
        raise RunError(f"the {MODULES_BUCKET} object store does not exist: run `ebbtide provision`") from None
