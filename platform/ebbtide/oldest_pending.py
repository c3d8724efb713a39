"""How old a function's oldest unhandled message is (`ebbtide_oldest_pending_seconds`). Pure; no I/O.

A message no function handled within the stream's `max_age_s` is removed unhandled (README, Delivery
guarantees); this age is what an operator watches to see a stuck pipeline long before that.

A consumer's oldest unhandled message is the first one stored after its ack floor that matches its filter:
everything up to the floor is acked, and the first match above it is not (else the floor would have moved
past it). The controller reads each consumer's info anyway (its lag, and with it the ack floor); what it
does not have is that message's stored time, which costs a `STREAM.MSG.GET` (`next_by_subj` from floor + 1).
That message stays the oldest for as long as the floor stays where it was, however long the pipeline is
stuck, so it is read again only once the floor moved: then at most once per REFRESH_S per consumer, and one
read at a time for the whole function (the one whose reading is oldest first, since it decides the answer).
Between reads the age keeps growing from the stored time, so a reading that the floor has since left
overstates the age by at most the time until the next read; it never hides a stuck message.

An ordered function's age is the largest over its consumers (its partitions' and its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REFRESH_S = 1.0  # a consumer whose floor moved is read again at most this often


@dataclass(slots=True)
class _Lane:
    floor: int = 0  # the consumer's ack floor (stream sequence) at its latest info
    lag: int = 0  # num_pending + num_ack_pending at its latest info
    read_floor: int | None = None  # the floor its reading was made at (None: no reading)
    stored_at: float | None = None  # unix seconds: when the first message after read_floor was stored (None: none)
    read_at: float = -math.inf  # monotonic seconds of its latest read, or attempt


class OldestPending:
    """The consumers (`lanes`) of one function: their floors and lags in, which one to read and the age out."""

    def __init__(self, lanes: int) -> None:
        self._lanes = [_Lane() for _ in range(lanes)]

    def update(self, lane: int, floor: int, lag: int) -> None:
        """A consumer's info, as the controller read it: its ack floor's stream sequence and its lag."""
        state = self._lanes[lane]
        state.floor, state.lag = floor, lag
        if lag == 0:  # nothing unhandled: no reading holds once something arrives
            state.read_floor, state.stored_at = None, None

    def lane_to_read(self, now: float) -> tuple[int, int] | None:
        """(lane, first sequence to look from) of the consumer to read next, or None when every reading
        stands. `now`: monotonic seconds."""
        due: list[tuple[float, int]] = []
        for index, state in enumerate(self._lanes):
            if state.lag == 0 or state.read_floor == state.floor:
                continue  # nothing unhandled, or its reading stands (its floor has not moved)
            if now - state.read_at < REFRESH_S:
                continue  # read, or tried, a moment ago: an older reading overstates the age until the next
            due.append((state.stored_at if state.stored_at is not None else -math.inf, index))  # unknown first
        if not due:
            return None
        _, index = min(due)
        return index, self._lanes[index].floor + 1

    def read_failed(self, lane: int, now: float) -> None:
        """The read could not be made (no answer, refused): the consumer is read again after REFRESH_S."""
        self._lanes[lane].read_at = now

    def read(self, lane: int, floor: int, stored_at: float | None, now: float) -> None:
        """The stored time of the first message after `floor` on the consumer's filter (None: none stored
        any more, e.g. removed by max_age); `now`: monotonic seconds of the read."""
        state = self._lanes[lane]
        state.read_at = now
        if state.lag > 0:  # else it was handled meanwhile: nothing to hold
            state.read_floor, state.stored_at = floor, stored_at

    def age(self, now: float) -> float:
        """Seconds since the oldest unhandled message of any consumer was stored (0: none, or not read yet).
        `now`: unix seconds, the clock the server stamps messages with."""
        oldest = min((s.stored_at for s in self._lanes if s.lag > 0 and s.stored_at is not None), default=None)
        return max(0.0, now - oldest) if oldest is not None else 0.0
