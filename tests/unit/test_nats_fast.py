"""broker/_nats_fast.py leans on nats-py internals: this fails loudly when a nats-py release changes them.

It runs on every nats-py release ebbtide declares (.ci/dependency-range runs it on the lowest and the highest).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

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
