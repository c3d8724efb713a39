"""Every error ebbtide raises, in one hierarchy (the CLI maps its two branches to exit codes).

    EbbtideError
    ├── UsageError                  exit 2: the command line or the configuration is wrong
    │   ├── ManifestError           ebbtide.toml: names the file and the key
    │   ├── AuthConfigError         NATS credentials that cannot be used as configured
    │   ├── ScaffoldError           `ebbtide new` cannot scaffold what was asked
    │   └── EmbeddedServerConflict  the embedded server's ports or data folder are another process's
    └── RunError                    exit 1: the configuration is fine, running it failed
        ├── BuildError              a guest did not compile (or its toolchain is missing)
        ├── ModuleLoadError         a module is missing, invalid, tampered with, or not the guest ABI
        │   └── ComponentLoadError  ... a component (Python guest)
        ├── GuestInitError          a guest refused its configuration or could not be instantiated
        ├── EmbeddedServerError     the embedded nats-server did not start
        ├── NatsConnectionError     no connection to NATS: not reachable in time, or credentials refused
        ├── TracingError            the tracing exporter cannot be set up
        ├── JetStreamError          the server refused a JetStream API request (carries its codes)
        ├── UnreadableReply         ... or answered something the API does not say
        ├── FetchError              the server answered a pull request with an error status
        ├── PublishError            a publish was not confirmed by the server
        ├── DeadLetterError         a dead letter cannot be read or redriven
        ├── OutboxError             an outbox cannot be read (no such bucket, JetStream not answering)
        └── Interrupted             exit 130: a stop signal ended a command that stops only when done (`demo`)

    Per message, never seen by the CLI (each decides one message's outcome, not the process's):
    MessageError
    ├── GuestFault                  the guest trapped, ran out of fuel or memory, or wrote garbage
    ├── InputTooLarge               the message does not fit the guest's input buffer
    └── EffectRefused               the guest asked for an effect outside its allowlist or limits

Each class lives here so that a module raising it needs nothing but this one; the modules that own a
concept re-export their errors under the old names.
"""

from __future__ import annotations

import signal
from typing import Literal, get_args

# What a guest fault was (the `kind` of GuestFault and of outcome.Faulted, and the label of
# ebbtide_guest_faults_total): a trap, its time limit (fuel), its memory limit, output the host cannot read, or
# the host could not run it at all (no instance would start: rollout candidates).
FaultKind = Literal["trap", "timeout", "memory-limit", "invalid-output", "host-error"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)


class EbbtideError(Exception):
    """Base of every error ebbtide raises on purpose."""


class UsageError(EbbtideError):
    """Bad usage or configuration: `ebbtide` exits 2 with the message."""


class RunError(EbbtideError):
    """A failure at run time: `ebbtide` exits 1 with the message."""


class ManifestError(UsageError):
    """The manifest is missing, unreadable or invalid; the message names the file and the key."""


class AuthConfigError(UsageError):
    """NATS credentials that cannot be used as configured (the message names the kind, never the secret)."""


class ScaffoldError(UsageError):
    """`ebbtide new` cannot scaffold what was asked (a name taken, an unknown language, ...)."""


class EmbeddedServerConflict(UsageError):
    """The embedded server's ports, or its data folder, are in use by another process (another `ebbtide up`):
    the message says which and, where it can tell, by what."""


class BuildError(RunError):
    """A guest module did not build, or the toolchain it needs is missing (the message says how to get it)."""


class ModuleLoadError(RunError):
    """A module file is missing, does not compile, or does not implement the guest ABI."""


class ComponentLoadError(ModuleLoadError):
    """A component file is missing, does not compile, or does not export the ebbtide handler world."""


class GuestInitError(RunError):
    """The guest refused its configuration, or could not be instantiated."""


class EmbeddedServerError(RunError):
    """The embedded nats-server could not be started."""


class NatsConnectionError(RunError, ConnectionError):
    """No connection to NATS: the server did not answer in time, or refused the credentials. Also a builtin
    ConnectionError, so code written against `except ConnectionError` keeps working."""


class TracingError(RunError):
    """Tracing is configured but cannot be set up (e.g. the OTLP exporter is not installed)."""


class JetStreamError(RunError):
    """The server answered a JetStream API request with an error: its HTTP-like `code` and its `err_code`."""

    def __init__(self, subject: str, description: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(f"{subject}: {description} (err_code {err_code})")
        self.subject = subject
        self.description = description
        self.code = code
        self.err_code = err_code


class WireError(RunError):
    """Bytes that are not the protobuf message expected (a KEDA request to `ebbtide scaler`)."""


class UnreadableReply(RunError):
    """The server's reply to a JetStream API request is not what the API says."""


class FetchError(RunError):
    """The server answered a pull request with an error status (e.g. 409 consumer deleted, 503 no JetStream)."""


class PublishError(RunError):
    """The server did not confirm a publish (error reply, no stream, or timeout)."""


class PublishRetryLater(PublishError):
    """The server did not store a publish for a reason of its own, not the message's: try again later. A
    function's message whose effects meet only these keeps its retries (outcome.after_unconfirmed)."""


class PublishUnanswered(PublishRetryLater):
    """No answer to a publish in time, or it could not be sent (disconnected): the server, not the message,
    is the trouble (e.g. a stream electing a new leader after a node failed)."""


class StoreFull(PublishRetryLater):
    """Refused for lack of space: the stream holds its `max_bytes` (discard new), or the server's JetStream
    store (max_file_store, the disk) is full. Nothing stored was removed to make room; retry once space frees
    (handled messages age out with `max_age_s`, or an operator frees space)."""


class DeadLetterError(RunError):
    """A dead letter cannot be read, shown or redriven."""


class OutboxError(RunError):
    """An outbox cannot be read: no such bucket on the server, JetStream not answering."""


class Interrupted(RunError):
    """SIGINT or SIGTERM stopped a command that stops only when done (`ebbtide demo`), once it stopped what it
    started: `ebbtide` exits 130 with the message."""

    def __init__(self, message: str, sig: signal.Signals) -> None:
        super().__init__(message)
        self.signal = sig


class MessageError(EbbtideError):
    """Decides one message's outcome (retry or dead letter); never stops the process."""


class GuestFault(MessageError):
    """The guest failed this message (trap, time limit, memory limit, bad output). Replace the instance."""

    def __init__(self, kind: FaultKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: FaultKind = kind


class InputTooLarge(MessageError):
    """The message does not fit the guest's input buffer (dead-lettered as payload-too-large)."""


class EffectRefused(MessageError):
    """The guest asked for an effect outside its allowlist or its limits (dead-lettered as effect-refused)."""
