"""broker/_nats_fast.py leans on nats-py internals: this fails loudly when a nats-py release changes them.

It runs on every nats-py release ebbtide declares (.ci/dependency-range runs it on the lowest and the highest).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable

import nats.errors
import nats.protocol.parser
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ebbtide.broker import _nats_fast
from tests.dependency_range import at_least, installed_is_declared


def test_nats_py_is_a_declared_release_with_the_internals_used() -> None:
    installed_is_declared("nats-py")
    client_source = inspect.getsource(NatsClient)
    for name in ("_send_command", "_flush_pending", "_flush_queue", "_max_pending_size", "_pending_data_size", "self._subs"):
        assert name in client_source, name
    # FastNatsClient._process_msg takes over from nats-py's for direct subscriptions: the same arguments,
    # and the same steps before a message reaches a subscription (counted, headers parsed, message built).
    process_msg = inspect.getsource(NatsClient._process_msg)
    assert list(inspect.signature(NatsClient._process_msg).parameters) == ["self", "sid", "subject", "reply", "data", "headers"]
    for step in ('self.stats["in_msgs"] += 1', 'self.stats["in_bytes"] += payload_size', "sub = self._subs.get(sid)"):
        assert step in process_msg, step
    assert "hdr = await self._process_headers(headers)" in process_msg
    assert "msg = self._build_message(sid, subject, reply, data, hdr)" in process_msg
    assert "await self.nc._process_msg(" in inspect.getsource(nats.protocol.parser)  # the read loop calls it
    subscription_source = inspect.getsource(Subscription.__init__)
    assert "self._pending_queue" in subscription_source and "self._pending_size" in subscription_source
    assert "self._id = id" in subscription_source
    msg_source = inspect.getsource(Msg)
    assert "self._ackd = True" in msg_source and "_client" in msg_source
    # FastParser (FastNatsClient's protocol parser) takes over from nats-py's: made in the client's __init__,
    # fed by its read loop, reset with a new buffer on a reconnect, and building messages of `msg_class`.
    assert re.search(r"self\._ps(: Parser)? = Parser\(self\)", inspect.getsource(NatsClient.__init__))
    assert "await self._ps.parse(b)" in inspect.getsource(NatsClient._read_loop)
    assert "self.buf = bytearray()" in inspect.getsource(nats.protocol.parser.Parser.reset)
    assert "self.state = AWAITING_CONTROL_LINE" in inspect.getsource(nats.protocol.parser.Parser.reset)
    assert "self.msg_class(" in inspect.getsource(NatsClient._build_message)
    if at_least("nats-py", "2.15"):  # the release that brought the parser FastNatsClient replaces
        assert "_parse_header_lines(raw_headers)" in inspect.getsource(NatsClient._process_headers)


def test_the_fast_path_is_ebbtides_own_client_only() -> None:
    """Nothing of nats-py is replaced: the parser and the direct dispatch belong to FastNatsClient."""
    if _nats_fast.NATS_PY_PARSE_HEADER_LINES is None:  # an older nats-py: its own header parsing, unchanged
        assert not at_least("nats-py", "2.15") and "_parse_header_lines" not in vars(_nats_fast.FastNatsClient)
    else:
        assert NatsClient.__dict__["_parse_header_lines"].__func__ is _nats_fast.NATS_PY_PARSE_HEADER_LINES
        assert _nats_fast.FastNatsClient._parse_header_lines is _nats_fast.parse_header_lines
    assert issubclass(_nats_fast.FastNatsClient, NatsClient)
    assert "_process_msg" not in vars(Subscription) and "put_nowait" not in vars(Subscription)


HEADER_BLOCKS = [
    b"Nats-Msg-Id: ORDERS:1:0\r\nEbbtide-Ingress-At: 1732800000000000000\r\n\r\n",
    b"A:b\r\nA: c\r\n\r\n",  # the later one wins, as in nats-py
    b"Bad Name: x\r\nTab\tName: y\r\nOk:\tz \r\n:empty name\r\nno colon\r\n\xff\xfe: v\r\nK: \xff\r\n\r\n",
    b"Fs\x1cName: x\r\n\r\n",  # \x1c is whitespace to str.isspace and to str.split alike
    b"\x00\x1c: x\r\n\r\n",  # ... and bytes.strip leaves it at the end of a name (found by hypothesis)
    b"",
]


def nats_py_parser() -> Callable[[bytes], dict[str, str]]:
    if _nats_fast.NATS_PY_PARSE_HEADER_LINES is None:
        pytest.skip("this nats-py has no header-line parser for FastNatsClient to replace")
    return _nats_fast.NATS_PY_PARSE_HEADER_LINES


def test_the_header_parser_reads_as_nats_py_does() -> None:
    parse = nats_py_parser()
    for _ in range(2):  # the second time, each name as remembered the first time
        for raw in HEADER_BLOCKS:
            assert _nats_fast.parse_header_lines(raw) == parse(raw), raw


@given(st.lists(st.tuples(st.binary(max_size=12), st.sampled_from([b":", b": ", b""]), st.binary(max_size=12)), max_size=6))
def test_the_header_parser_reads_any_bytes_as_nats_py_does(lines: list[tuple[bytes, bytes, bytes]]) -> None:
    raw = b"".join(name + sep + value + b"\r\n" for name, sep, value in lines) + b"\r\n"
    assert _nats_fast.parse_header_lines(raw) == nats_py_parser()(raw)


def test_protocol_commands_are_what_nats_py_sends() -> None:
    assert _nats_fast.pub("$JS.ACK.S.c.1.2.2.0.0") == b"PUB $JS.ACK.S.c.1.2.2.0.0 0\r\n\r\n"
    header = _nats_fast.header_block({"Nats-Msg-Id": "S:2:0", "Why": "two\r\nlines"})
    assert header == b"NATS/1.0\r\nNats-Msg-Id: S:2:0\r\nWhy: two  lines\r\n\r\n"
    assert _nats_fast.hpub("a.b", "_INBOX.x.1", header, b"{}") == (
        f"HPUB a.b _INBOX.x.1 {len(header)} {len(header) + 2}\r\n".encode() + header + b"{}\r\n"
    )


# -- FastParser: what nats-py's parser would have handed over, however the reads split the stream ----------

HEADERS = b"NATS/1.0\r\nNats-Msg-Id: x:1\r\nEbbtide-Ingress-At: 12\r\n\r\n"
PROTOCOL = b"".join(
    [
        b"MSG _INBOX.a 1 5\r\nhello\r\n",
        b"HMSG ORDERS.in 1 $JS.ACK.ORDERS.c.1.7.7.0.0 %d %d\r\n%s{}\r\n" % (len(HEADERS), len(HEADERS) + 2, HEADERS),
        b"PING\r\n",
        b"HMSG _INBOX.a 1 28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n",  # a status: nats-py's own header parsing
        b"MSG other.subject 2 reply.x 3\r\nabc\r\n",  # not a direct subscription: its queue, as nats-py does
        b"+OK\r\n",
        b"HMSG _INBOX.b 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",  # an empty header block
        b"MSG gone 3 1\r\nx\r\n",  # no subscription: dropped, counted
        b"PONG\r\n",
        b"MSG _INBOX.c 1 0\r\n\r\n",
        b"HMSG _INBOX.d 1 r 0 2\r\nok\r\n",  # HMSG without a header block
        b"INFO {}\r\n",
        b"MSG _INBOX.a  1   2\r\nok\r\n",  # more than one space between fields, as nats-py's expressions allow
    ]
)


class RecordingClient(_nats_fast.FastNatsClient):
    """A FastNatsClient not connected to anything, recording what its parser hands over, in order."""

    def __init__(self, fast: bool) -> None:
        super().__init__()
        if not fast:
            self._ps = nats.protocol.parser.Parser(self)
        self.seen: list[object] = []
        self._direct[1] = lambda msg: self.seen.append((msg.subject, msg.reply, msg.data, msg.headers, msg._client is self))
        self._subs[1] = Subscription(self, 1, "_INBOX.>")
        self._subs[2] = Subscription(self, 2, "other.>")

    async def _process_ping(self) -> None:
        self.seen.append("PING")

    async def _process_pong(self) -> None:
        self.seen.append("PONG")

    async def _process_info(self, info: dict[str, object], initial_connection: bool = False) -> None:
        self.seen.append(("INFO", info))


async def parsed(stream: bytes, cuts: list[int], fast: bool) -> tuple[list[object], list[Msg], dict[str, int]]:
    client = RecordingClient(fast)
    assert isinstance(client._ps, _nats_fast.FastParser) is fast
    edges = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    for begin, end in zip(edges, edges[1:]):
        await client._ps.parse(stream[begin:end])
    queued = []
    while not client._subs[2]._pending_queue.empty():
        queued.append(client._subs[2]._pending_queue.get_nowait())
    return client.seen, queued, {key: client.stats[key] for key in ("in_msgs", "in_bytes")}


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_the_fast_parser_hands_over_what_nats_pys_would_however_reads_split(cuts: list[int]) -> None:
    fast_seen, fast_queued, fast_stats = asyncio.run(parsed(PROTOCOL, cuts, fast=True))
    seen, queued, stats = asyncio.run(parsed(PROTOCOL, [], fast=False))
    assert fast_seen == seen and len(seen) == 10
    assert (
        [(m.subject, m.reply, m.data) for m in fast_queued]
        == [(m.subject, m.reply, m.data) for m in queued]
        == [("other.subject", "reply.x", b"abc")]
    )
    assert fast_stats == stats == {"in_msgs": 9, "in_bytes": 5 + 2 + 3 + 2 + 1 + 2 + 2}
    assert seen[1] == ("ORDERS.in", "$JS.ACK.ORDERS.c.1.7.7.0.0", b"{}", {"Nats-Msg-Id": "x:1", "Ebbtide-Ingress-At": "12"}, True)


def test_the_fast_parser_leaves_a_malformed_message_to_nats_pys_error() -> None:
    with pytest.raises(nats.errors.ProtocolError):
        asyncio.run(parsed(b"MSG a 1 x\r\nabc\r\n", [], fast=True))


class ResettingClient(RecordingClient):
    """As RecordingClient, but a message of a subscription that is not direct resets the parser while it is
    being handled, as a reconnect does: what the read had brought after it is gone, as in nats-py."""

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        await super()._process_msg(sid, subject, reply, data, headers)
        if sid == 2:
            self._ps.reset()


async def parsed_with_reset(fast: bool) -> list[object]:
    client = ResettingClient(fast)
    await client._ps.parse(b"MSG _INBOX.a 1 1\r\na\r\nMSG other.x 2 1\r\nb\r\nMSG _INBOX.c 1 1\r\nc\r\n")
    assert not client._ps.buf
    await client._ps.parse(b"MSG _INBOX.d 1 1\r\nd\r\n")  # the new connection's first message
    return client.seen


def test_the_fast_parser_stops_where_nats_pys_does_when_reset_while_it_awaits() -> None:
    seen = asyncio.run(parsed_with_reset(fast=True))
    assert seen == asyncio.run(parsed_with_reset(fast=False))
    assert [entry[0] for entry in seen] == ["_INBOX.a", "_INBOX.d"]  # type: ignore[index]
