"""The key of an ordered function's message: the payload's `order_by` field, read on both sides.

Publishing: a function publishing to the trigger T of an ordered function (functions.X.order_by = "field")
asks for a publish to T, as it would without ordering; the host sends it to `T.<key>`, the key being the
payload's JSON field (a string or an integer). A payload without a usable key is refused with the reason
(the input is dead-lettered, never silently dropped), since an unkeyed message would leave its order's
sequence. See broker/partitions.py for what the server does with the keyed subject.

Reading: the stream stores `T.<key>` as `T.<partition>`, without the key, so the holder of a partition reads
each message's key from its payload again (`LaneKeys`), the field every publisher took it from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from .errors import EffectRefused
from .subjects import KEY_TOKEN, keyed_subject

if TYPE_CHECKING:
    from .manifest import LoadedManifest


class KeyReader:
    """Reads one JSON field of a payload as a subject token (msgspec skips the rest of the document)."""

    def __init__(self, field: str) -> None:
        self.field = field
        key_struct = msgspec.defstruct("OrderKey", [("key", str | int | None, None)], rename={"key": field})
        self._decode = msgspec.json.Decoder(key_struct).decode

    def key(self, payload: bytes) -> str:
        """The key token of `payload`; EffectRefused when it has none that can be one."""
        try:
            value: str | int | None = self._decode(payload).key  # type: ignore[attr-defined]
        except msgspec.DecodeError as exc:  # ValidationError is one: the field is neither string nor integer
            raise EffectRefused(f"order_by: cannot read field {self.field!r} of the payload: {exc}") from None
        if value is None:
            raise EffectRefused(f"order_by: the payload has no field {self.field!r} to order by")
        key = str(value)
        if not KEY_TOKEN.match(key):
            raise EffectRefused(
                f"order_by: field {self.field!r} is {key[:100]!r}, not a key (1-128 characters, no dots, wildcards or whitespace)"
            )
        return key

    def lane_key(self, payload: bytes) -> str:
        """The key a partition's holder runs a stored message under: the payload's, or "" when it has none
        (a client published it under a key its payload does not carry): such messages of a partition run as
        one sequence of their own, in stream order, never dropped."""
        try:
            value: str | int | None = self._decode(payload).key  # type: ignore[attr-defined]
        except msgspec.DecodeError:
            return ""
        return "" if value is None else str(value)


class LaneKeys:
    """The key each message of an ordered function runs under (broker/lanes.py keeps each key in order)."""

    def __init__(self, trigger: str, order_by: str) -> None:
        self._trigger = trigger
        self._reader = KeyReader(order_by)

    def of(self, subject: str, payload: bytes) -> str:
        """The key of a message stored under `subject`: "" on the bare trigger (published without a key: the
        function's own consumer, one sequence), else the payload's (KeyReader.lane_key)."""
        return "" if subject == self._trigger else self._reader.lane_key(payload)


class KeyedSubjects:
    """Subjects of ordered triggers -> how their publishes get their key."""

    def __init__(self, ordered: dict[str, str]) -> None:
        """`ordered`: trigger -> order_by field (LoadedManifest.ordered_triggers)."""
        self._readers = {trigger: KeyReader(field) for trigger, field in ordered.items()}

    def __bool__(self) -> bool:
        return bool(self._readers)

    def subject_for(self, subject: str, payload: bytes) -> str:
        """Where a publish to `subject` goes: `subject.<key>` for an ordered trigger, else `subject`."""
        reader = self._readers.get(subject)
        return subject if reader is None else keyed_subject(subject, reader.key(payload))


def entry_subject(manifest: LoadedManifest, subject: str) -> str | Callable[[bytes], str]:
    """Where a client publishes a payload meant for `subject`: `subject` itself, or, when it is an ordered
    function's trigger, a function giving each payload's keyed subject (EffectRefused without a key)."""
    field = manifest.ordered_triggers().get(subject)
    if field is None:
        return subject
    keyed = KeyedSubjects({subject: field})
    return lambda payload: keyed.subject_for(subject, payload)
