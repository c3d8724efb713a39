"""Redrive: republish dead letters to their original subjects, confirmed, then delete them from the DLQ.

An ordered function's input, stored under its partition (`T.<p>`), goes back to `T.<key>` (its dead
letter's `Ebbtide-Order-Key`): the server partitions it again, into the same partition.

Each is republished with `Nats-Msg-Id: redrive:<dlq stream>:<dlq seq>` and `Ebbtide-Redriven-From: <dlq
seq>`. Not the original `Nats-Msg-Id`: it may still be inside the original stream's duplicate window, and
the republish would be dropped silently. A redrive that stopped between the confirmation and the delete can
be repeated: within the duplicate window the server recognises the id (the PubAck says `duplicate`) and
stores nothing new; the dead letter is then deleted. (After the window a repeat stores the order once
more; the pipeline's effects are idempotent per `orderId`, so the outbox still holds one entry.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nats.aio.client import Client as NatsClient

from ..broker.headers import H_ORDER_KEY, H_ORIGINAL_SUBJECT, H_REDRIVEN_FROM
from ..broker.publisher import ConfirmedPublisher, PubAck, PublishBatch
from ..errors import DeadLetterError, PublishError
from ..manifest import LoadedManifest
from ..subjects import KEY_TOKEN, keyed_subject, subject_matches
from .model import RedriveFailure, Redriven, RedriveResult, StoredDeadLetter
from .store import delete, scan, sequences, show_dead_letter, target

REDRIVE_WINDOW = 256  # publishes awaiting confirmation at once
REDRIVE_CONFIRM_TIMEOUT_S = 10.0


async def redrive(
    nc: NatsClient, manifest: LoadedManifest, function: str | None = None, seqs: list[int] | None = None
) -> RedriveResult:
    """Republish dead letters to their original subjects (confirmed), then delete them from the DLQ.

    Selects `seqs` if given (each must be a dead letter, of `function` if that is given too), else every
    dead letter of `function`, else all. A failure of one dead letter is reported in the result and
    leaves it in the DLQ; a missing DLQ stream raises DeadLetterError.
    """
    stream = manifest.spec.dead_letter.stream
    await sequences(nc, stream)
    result = RedriveResult()
    publisher = ConfirmedPublisher(nc)  # one PubAck per letter: each says where it went, and if it was there already
    await publisher.start()
    batch = PublishBatch()
    letters: list[tuple[StoredDeadLetter, str]] = []

    async def settle() -> None:
        nonlocal batch
        outcomes = await publisher.wait(batch, timeout=REDRIVE_CONFIRM_TIMEOUT_S)
        confirmed: list[tuple[StoredDeadLetter, str, PubAck]] = []
        for (letter, subject), outcome in zip(letters, outcomes):
            if isinstance(outcome, PublishError):
                result.failed.append(RedriveFailure(letter.seq, f"republish to {subject} not confirmed: {outcome}"))
            else:
                confirmed.append((letter, subject, outcome))
        letters.clear()
        batch = PublishBatch()
        deletes = await asyncio.gather(*(delete(nc, stream, letter.seq) for letter, _, _ in confirmed), return_exceptions=True)
        for (letter, subject, ack), deleted in zip(confirmed, deletes):
            if isinstance(deleted, BaseException):
                result.failed.append(
                    RedriveFailure(
                        letter.seq,
                        f"republished to {subject} ({ack.stream} #{ack.seq}) but not removed from {stream}: {deleted}; "
                        "redriving it again within the duplicate window will not publish it twice",
                    )
                )
            else:
                result.redriven.append(Redriven(letter.seq, subject, ack.stream, ack.seq, ack.duplicate))

    try:
        async for letter in _selected(nc, manifest, function, seqs, result):
            try:
                subject = redrive_subject(letter, manifest)
            except DeadLetterError as exc:
                result.failed.append(RedriveFailure(letter.seq, str(exc)))
                continue
            publisher.add(batch, subject, letter.payload, f"redrive:{stream}:{letter.seq}", {H_REDRIVEN_FROM: str(letter.seq)})
            letters.append((letter, subject))
            if len(letters) >= REDRIVE_WINDOW:
                await settle()
        if letters:
            await settle()
    finally:
        try:
            await publisher.stop()
        except Exception:
            pass  # connection already closed
    result.failed.sort(key=lambda f: f.seq)
    return result


def redrive_subject(letter: StoredDeadLetter, manifest: LoadedManifest) -> str:
    """Where a dead letter goes back to: its original subject, or for an ordered function's input stored under
    its partition, `<trigger>.<key>`; DeadLetterError when it cannot go back."""
    subject = letter.original_subject
    if not subject:
        raise DeadLetterError(f"dead letter #{letter.seq} has no {H_ORIGINAL_SUBJECT} header: nowhere to redrive it to")
    prefix = manifest.spec.dead_letter.subject_prefix
    if any(c in subject for c in "*> \t\r\n") or subject_matches(f"{prefix}.>", subject):
        raise DeadLetterError(f"dead letter #{letter.seq}: cannot redrive to {subject!r}")
    trigger, _, partition = subject.rpartition(".")
    if partition.isdigit() and trigger in manifest.ordered_triggers():
        # Stored under its partition (broker/partitions.py): published again under its key, so that the
        # server puts it in the same partition, after what its key got since.
        key = letter.headers.get(H_ORDER_KEY, "")
        if not KEY_TOKEN.match(key):
            raise DeadLetterError(
                f"dead letter #{letter.seq}: stored under {subject!r} (a partition of the ordered trigger {trigger}) "
                f"without a key that can be a subject token ({H_ORDER_KEY}: {key!r}, read from its payload): publish it "
                f"again yourself, to {trigger}.<key>"
            )
        return keyed_subject(trigger, key)
    return subject


async def _selected(
    nc: NatsClient, manifest: LoadedManifest, function: str | None, seqs: list[int] | None, result: RedriveResult
) -> AsyncIterator[StoredDeadLetter]:
    if seqs is None:
        async for letter in scan(nc, manifest, function):
            yield letter
        return
    wanted = target(manifest, function)[1]
    for seq in dict.fromkeys(seqs):
        try:
            letter = await show_dead_letter(nc, manifest, seq)
        except DeadLetterError as exc:
            result.failed.append(RedriveFailure(seq, str(exc)))
            continue
        if not subject_matches(wanted, letter.subject):
            result.failed.append(RedriveFailure(seq, f"dead letter #{seq} is on {letter.subject}, not {wanted}"))
            continue
        yield letter
