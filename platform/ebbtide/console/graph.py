"""The pipeline as a graph, from the manifest, and the rate on each of its edges (pure: no I/O).

Nodes: subjects (each function's trigger, and publish allowlist entries that no trigger matches), functions,
KV buckets, and the dead-letter stream. Edges: trigger subject → function, function → every trigger its
publish allowlist matches (or the allowlist entry itself), function → each KV bucket it may write,
function → the DLQ. Where orders enter (a trigger that no function publishes to) is where the graph starts.

Rates, per second, from what the console reads each tick (`Counts`):
- subject → function: the function's messages settled per second (its status reports, every replica);
- function → subject, and into an entry subject: the subject's inflow, from the stream's per-subject message
  counts (a stream that removes handled messages, a work queue, gets its consumers' rate added back);
- function → KV bucket: the bucket's writes (its stream's last sequence);
- function → DLQ: the function's dead letters (what the DLQ holds per function; redrives and purges lower it,
  counted as 0, not negative).
An edge into a node that several functions feed carries the node's whole inflow (`shared`): the stream's
counts do not say who published what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from ..errors import ManifestError
from ..manifest import LoadedManifest
from ..subjects import subject_matches

SUBJECT, FUNCTION, BUCKET, DLQ = "subject", "function", "bucket", "dlq"


class Node(msgspec.Struct, frozen=True):
    id: str  # "<kind>:<name>"
    kind: str  # SUBJECT, FUNCTION, BUCKET or DLQ
    label: str
    column: int  # left to right, as messages flow
    row: int  # top to bottom within the column
    entry: bool = False  # a subject where messages enter the pipeline (no function publishes to it)


class Edge(msgspec.Struct, frozen=True):
    id: str  # "<source>><target>"
    source: str
    target: str
    kind: str  # "trigger", "publish", "kv" or "dead_letter"
    shared: bool = False  # the target has several sources: the rate is the target's whole inflow


class Graph(msgspec.Struct, frozen=True):
    nodes: list[Node]
    edges: list[Edge]


def subject_id(subject: str) -> str:
    return f"{SUBJECT}:{subject}"


def function_id(function: str) -> str:
    return f"{FUNCTION}:{function}"


def bucket_id(bucket: str) -> str:
    return f"{BUCKET}:{bucket}"


DLQ_ID = f"{DLQ}:"


def pipeline(manifest: LoadedManifest) -> Graph:
    """The manifest's functions, subjects, buckets and DLQ, laid out in columns."""
    functions = manifest.spec.functions
    triggers = list(dict.fromkeys(fn.trigger for fn in functions.values()))
    labels: dict[str, tuple[str, str]] = {}  # id -> (kind, label), in the order first seen
    edges: list[tuple[str, str, str]] = []

    def node(id_: str, kind: str, label: str) -> str:
        labels.setdefault(id_, (kind, label))
        return id_

    for name, fn in functions.items():
        node(subject_id(fn.trigger), SUBJECT, fn.trigger)
        edges.append((subject_id(fn.trigger), node(function_id(name), FUNCTION, name), "trigger"))
    for name, fn in functions.items():
        for pattern in fn.publish:
            matched = [t for t in triggers if subject_matches(pattern, t)] or [pattern]
            edges += [(function_id(name), node(subject_id(s), SUBJECT, s), "publish") for s in matched]
        edges += [(function_id(name), node(bucket_id(b), BUCKET, b), "kv") for b in fn.kv]
    dead_letter = manifest.spec.dead_letter
    for name in functions:
        edges.append(
            (function_id(name), node(DLQ_ID, DLQ, f"{dead_letter.stream} ({dead_letter.subject_prefix}.>)"), "dead_letter")
        )
    edges = list(dict.fromkeys(edges))
    sources_of: dict[str, list[str]] = {}
    for source, target, _ in edges:
        sources_of.setdefault(target, []).append(source)
    columns = _columns(list(labels), edges)
    rows = _rows(list(labels), columns, sources_of)
    nodes = [
        Node(
            id_,
            kind,
            label,
            columns[id_],
            rows[id_],
            entry=kind == SUBJECT and not any(s.startswith(FUNCTION) for s in sources_of.get(id_, [])),
        )
        for id_, (kind, label) in labels.items()
    ]
    return Graph(
        nodes,
        [Edge(f"{s}>{t}", s, t, kind, shared=kind != "trigger" and len(sources_of.get(t, [])) > 1) for s, t, kind in edges],
    )


def _columns(ids: list[str], edges: list[tuple[str, str, str]]) -> dict[str, int]:
    """Longest path from where messages enter; an edge back into a node already on the path (a function
    publishing to its own trigger, A → B → A) does not push it further. The DLQ goes in the last column."""
    following: dict[str, list[str]] = {}
    has_source: set[str] = set()
    for source, target, kind in edges:
        if kind != "dead_letter":
            following.setdefault(source, []).append(target)
            has_source.add(target)
    column = dict.fromkeys(ids, 0)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(start: str) -> None:  # iterative DFS: a long chain of functions must not hit the recursion limit
        stack = [(start, iter(following.get(start, [])))]
        state[start] = 1
        while stack:
            current, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[current] = 2
                stack.pop()
            elif state.get(child) == 1:
                back.add((current, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(following.get(child, []))))

    for id_ in [i for i in ids if i not in has_source] + ids:  # entries first; then whatever a cycle left
        if id_ not in state:
            visit(id_)
    order = _topological(ids, following, back)
    for id_ in order:
        for child in following.get(id_, []):
            if (id_, child) not in back:
                column[child] = max(column[child], column[id_] + 1)
    if DLQ_ID in column:  # under the last column's nodes: every function's dead letters end there
        column[DLQ_ID] = max((c for i, c in column.items() if i != DLQ_ID), default=0)
    return column


def _topological(ids: list[str], following: dict[str, list[str]], back: set[tuple[str, str]]) -> list[str]:
    incoming = dict.fromkeys(ids, 0)
    for source, targets in following.items():
        for target in targets:
            if (source, target) not in back:
                incoming[target] += 1
    ready = [i for i in ids if incoming[i] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for target in following.get(current, []):
            if (current, target) not in back:
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
    return order


def _rows(ids: list[str], columns: dict[str, int], sources_of: dict[str, list[str]]) -> dict[str, int]:
    """Within a column, nodes sit near the mean row of what feeds them (fewer crossings), else in manifest
    order; the DLQ at the bottom."""
    rows: dict[str, int] = {}
    for column in sorted(set(columns.values())):
        members = [i for i in ids if columns[i] == column]
        weights: dict[str, tuple[float, int]] = {}
        for index, id_ in enumerate(members):
            placed = [rows[s] for s in sources_of.get(id_, []) if s in rows]
            weights[id_] = (sum(placed) / len(placed) if placed else float(index), index)
        if DLQ_ID in weights:
            weights[DLQ_ID] = (float("inf"), 0)
        for row, id_ in enumerate(sorted(members, key=weights.__getitem__)):
            rows[id_] = row
    return rows


# -- rates ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What the console read at one tick (cumulative counters; rates come from two of these)."""

    time: float  # unix seconds
    stream_subjects: Mapping[str, Mapping[str, int]]  # stream -> stored subject -> messages it holds
    bucket_writes: Mapping[str, int]  # bucket -> its stream's last sequence
    dead_letters: Mapping[str, int]  # function -> letters in the DLQ
    function_rates: Mapping[str, float]  # function -> messages settled per second (status reports)


@dataclass
class EdgeRates:
    """Turns successive `Counts` into the rate of every edge and the inflow of every subject node."""

    manifest: LoadedManifest
    graph: Graph
    _previous: Counts | None = None
    _subject_of: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (stream, stored subject) -> node

    def observe(self, counts: Counts) -> tuple[dict[str, float], dict[str, float]]:
        """(edge id -> per second, subject node id -> inflow per second); zeros at the first observation."""
        previous, self._previous = self._previous, counts
        elapsed = counts.time - previous.time if previous is not None else 0.0
        inflow: dict[str, float] = {}
        subject_nodes = [n for n in self.graph.nodes if n.kind == SUBJECT]
        if previous is not None and elapsed > 0:
            before, after = self._stored(previous), self._stored(counts)
            for n in subject_nodes:
                inflow[n.id] = max(0.0, (after.get(n.id, 0) - before.get(n.id, 0)) / elapsed) + self._consumed(n, counts)
        else:
            inflow = dict.fromkeys((n.id for n in subject_nodes), 0.0)
        rates: dict[str, float] = {}
        for edge in self.graph.edges:
            if previous is None or elapsed <= 0:
                rates[edge.id] = 0.0
            elif edge.kind == "trigger":
                rates[edge.id] = counts.function_rates.get(edge.target.split(":", 1)[1], 0.0)
            elif edge.kind == "publish":
                rates[edge.id] = inflow.get(edge.target, 0.0)
            elif edge.kind == "kv":
                bucket = edge.target.split(":", 1)[1]
                rates[edge.id] = _per_second(previous.bucket_writes.get(bucket), counts.bucket_writes.get(bucket), elapsed)
            else:
                function = edge.source.split(":", 1)[1]
                rates[edge.id] = _per_second(
                    previous.dead_letters.get(function, 0), counts.dead_letters.get(function, 0), elapsed
                )
        return rates, inflow

    def _stored(self, counts: Counts) -> dict[str, int]:
        """Messages stored per subject node: a stored subject counts for the node it matches (an ordered
        trigger's partitions `T.<partition>` for T)."""
        totals: dict[str, int] = {}
        for stream, subjects in counts.stream_subjects.items():
            for subject, count in subjects.items():
                node = self._node_of(stream, subject)
                if node is not None:
                    totals[node] = totals.get(node, 0) + count
        return totals

    def _node_of(self, stream: str, subject: str) -> str | None:
        key = (stream, subject)
        if key not in self._subject_of:
            ordered = self.manifest.ordered_triggers(stream)
            found = None
            for n in self.graph.nodes:
                if n.kind != SUBJECT:
                    continue
                keyed = n.label in ordered and subject_matches(f"{n.label}.*", subject)
                if subject_matches(n.label, subject) or keyed:
                    found = n.id
                    break
            self._subject_of[key] = found
        return self._subject_of[key]

    def _consumed(self, node: Node, counts: Counts) -> float:
        """A stream that removes what its consumers handled (work queue, interest) lowers its counts by
        their rate: added back, so the inflow is what came in."""
        try:
            stream = self.manifest.stream_for(node.label)
        except ManifestError:  # a publish pattern no stream captures (the manifest check allows it)
            return 0.0
        if self.manifest.spec.streams[stream].retention == "limits":
            return 0.0
        consumers = [n for n, fn in self.manifest.spec.functions.items() if fn.trigger == node.label]
        return sum(counts.function_rates.get(name, 0.0) for name in consumers)


def _per_second(before: int | None, after: int | None, elapsed: float) -> float:
    if before is None or after is None:
        return 0.0
    return max(0.0, (after - before) / elapsed)


def streams_to_count(manifest: LoadedManifest, graph: Graph) -> list[str]:
    """The manifest's streams that hold a subject node: their per-subject counts are read each tick."""
    streams: list[str] = []
    for n in graph.nodes:
        if n.kind != SUBJECT:
            continue
        for name, stream in manifest.spec.streams.items():
            if any(subject_matches(p, n.label) or subject_matches(n.label, p) for p in stream.subjects):
                streams.append(name)
    return list(dict.fromkeys(streams))
