"""The operator's dead-letter tool: list, show, redrive and purge the dead letters of the DLQ stream.

The entry points (what `ebbtide dlq` and the console call), each on a connection and the manifest:

    list_dead_letters(nc, manifest, function=None, limit=None)   oldest first
    show_dead_letter(nc, manifest, seq)
    redrive(nc, manifest, function=None, seqs=None)              -> RedriveResult
    purge(nc, manifest, function=None)                           -> how many were deleted
    count_by_function(nc, manifest)                              -> {function: dead letters}
    format_table(letters), format_detail(letter)                 text for a terminal

    model    StoredDeadLetter, RedriveResult (pure)
    store    the DLQ stream through the JetStream API: read, count, delete, purge
    redriving  republish, confirmed, then delete
    render   the terminal output (pure)
"""

from ..broker.headers import H_REDRIVEN_FROM
from ..errors import DeadLetterError
from .model import RedriveFailure, Redriven, RedriveResult, StoredDeadLetter
from .redriving import redrive
from .render import format_detail, format_table
from .store import count_by_function, list_dead_letters, purge, show_dead_letter

__all__ = [
    "H_REDRIVEN_FROM",
    "DeadLetterError",
    "RedriveFailure",
    "RedriveResult",
    "Redriven",
    "StoredDeadLetter",
    "count_by_function",
    "format_detail",
    "format_table",
    "list_dead_letters",
    "purge",
    "redrive",
    "show_dead_letter",
]
