"""`ebbtide bench`: measured figures, printed as a Markdown table and saved as JSON (+ charts).

Scenarios (pick with --scenario; --quick shrinks every size so the whole run takes under a minute):
- host:      cost of one guest call (input copy, call, output read, effect decode) and of an instance start
- memory:    RSS of the host at zero instances, added RSS per idle and per busy Wasm instance
- replica:   one function process idle (RSS, PSS, private), the supervisor, each added function, cold start
- scale:     activation latency from zero, the burst's time to max instances and back to zero, idle CPU
- tracing:   the same burst with tracing off, sampling 1 % and 100 % (spans built and batched, then dropped)
- shadow:    the same burst with no shadow run, and every function shadowing 10 % and 100 % of its messages
             (its candidate: its own module), and the candidates' guest time beside the live one's
- server:    what nats-server spends per message for each way of publishing (a PubAck each, fast and atomic
             batches) and of settling (an ack each, AckAll per batch, none) (server.py)
- burst:     the ZEISS burst side by side: ebbtide (default and fastest configuration), FastStream, a raw
             nats-py pass-through (the limit) and the same with fast batches by hand, on one embedded
             nats-server, in alternating rounds, with the messages in and out per order (comparison.py)
- sustained: fixed publish rates for a while, latency per window, backlog and RSS over time (sustained.py)
- ordering:  the burst with and without per-key ordering side by side, 3 events per order, and one hot
             key holding 30 % of the events (ordering.py)
- capacity:  the profile `ebbtide plan` reads (each function alone: CPU per message of the process and of
             nats-server, memory, cold start; the publisher; storage per order), then the burst with 1, 2
             and 4 processes per function, measured beside the model's prediction from that profile
             (capacity.py)
- soak:      the ZEISS day shape for --minutes M per manifest (30 by default; not part of the default run):
             a burst a minute and a trickle between, memory, fds, tasks and objects of every process over
             time, their slopes, latency, exactly-once at the end (soak.py)

All figures come from one run on one machine, with warm-up excluded where stated.
"""

from __future__ import annotations

from typing import Any

SCENARIOS = (
    *("host", "memory", "replica", "scale", "tracing", "shadow", "server", "burst", "sustained", "ordering", "capacity"),
    "soak",
)
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s != "soak")  # the soak takes an hour: only when asked for

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "BenchOptions", "BenchReport", "Figure", "Section", "run_bench"]

# The CLI's parser needs SCENARIOS only: the rest (the runtime, the baselines, OpenTelemetry) is imported
# when first used.
_LAZY = {"BenchOptions": ".options", "BenchReport": ".report", "Figure": ".report", "Section": ".report", "run_bench": ".run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
