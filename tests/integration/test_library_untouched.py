"""`import ebbtide` changes no other library (issue 28): an application that embeds ebbtide keeps its own
nats-py clients, and nats-py and wasmtime-py themselves, exactly as published.

Run in a fresh interpreter (this test process imported ebbtide long ago): every class and function of
every nats and wasmtime module is recorded, then ebbtide and each of its modules are imported, and nothing
recorded may have changed. Then a plain nats-py client and an ebbtide connection run side by side on a
real server: the plain one is nats-py's own class, its subscription keeps nats-py's queue and its headers
are parsed by nats-py's parser; ebbtide's connection has its fast path."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ebbtide.broker import EmbeddedNats
from ebbtide.broker._nats_fast import subscribe_direct

PROBE = r"""
import asyncio, importlib, inspect, json, pkgutil, sys

import nats, nats.aio.client, nats.aio.msg, nats.aio.subscription, nats.js, nats.js.kv, wasmtime

def record():
    '''Every module of nats and wasmtime: its globals, and each class's attributes, by identity.'''
    seen = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.split(".")[0] in ("nats", "wasmtime"):
            continue
        seen[name] = {key: id(value) for key, value in vars(module).items()}
        for key, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == name:
                seen[f"{name}.{key}"] = {attr: id(item) for attr, item in vars(value).items()}
    return seen

before = record()
meta_path, path_hooks = list(sys.meta_path), list(sys.path_hooks)

import ebbtide
imported = []
for info in pkgutil.walk_packages(ebbtide.__path__, "ebbtide."):
    if info.name == "ebbtide.__main__" or info.name.startswith("ebbtide.workload.baselines."):
        continue  # runs the command line; the benchmark's baselines import FastStream, whose doings are its own
    importlib.import_module(info.name)
    imported.append(info.name)

after = record()
changed = sorted(
    name for name in before
    if name in after and {k: v for k, v in after[name].items() if k in before[name]} != before[name]
    and not name.endswith("__loader__")
)

async def side_by_side(url):
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription
    from ebbtide.broker import connect
    from ebbtide.broker._nats_fast import FastNatsClient, subscribe_direct

    plain = await nats.connect(url)
    ours = await connect(url, name="ebbtide-beside")
    got_plain, got_ours = asyncio.Queue(), []
    async def on_plain(msg):
        await got_plain.put(msg)
    plain_sub = await plain.subscribe("beside.plain", cb=on_plain)
    ours_arrived = asyncio.Event()
    def on_ours(msg):
        got_ours.append(msg)
        ours_arrived.set()
    await subscribe_direct(ours, "beside.ours", on_ours)
    await plain.flush()  # both subscriptions are on the server before anything is published
    await ours.flush()
    headers = {"Kept": "value", "Other": "two words"}
    await ours.publish("beside.plain", b"to plain", headers=headers)
    await plain.publish("beside.ours", b"to ebbtide", headers=headers)
    plain_msg = await asyncio.wait_for(got_plain.get(), 10)
    await asyncio.wait_for(ours_arrived.wait(), 10)
    result = {
        "plain_class": type(plain) is Client,
        "ours_class": type(ours) is FastNatsClient,
        "plain_queue": type(plain_sub._pending_queue) is asyncio.Queue,
        "plain_parser": getattr(plain, "_parse_header_lines", None) is getattr(Client, "_parse_header_lines", None),
        "plain_got": [plain_msg.data.decode(), plain_msg.headers],
        "ours_got": [[m.data.decode(), m.headers] for m in got_ours],
    }
    await plain.drain()
    await ours.drain()
    return result

print(json.dumps({
    "changed": changed,
    "meta_path": sys.meta_path == meta_path,
    "path_hooks": sys.path_hooks == path_hooks,
    "imported": len(imported),
    "side_by_side": asyncio.run(side_by_side(sys.argv[1])),
}))
"""


def test_importing_ebbtide_changes_no_other_library(nats_server: EmbeddedNats) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, nats_server.url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["changed"] == []  # no class, method or global of nats-py or wasmtime-py replaced
    assert report["meta_path"] and report["path_hooks"]  # no import hook left behind by `import ebbtide`
    assert report["imported"] > 50  # every module of ebbtide was imported, not just the package
    beside = report["side_by_side"]
    assert beside["plain_class"] and beside["plain_queue"] and beside["plain_parser"]
    assert beside["ours_class"]  # ebbtide's own connection has its fast path
    expected = {"Kept": "value", "Other": "two words"}
    assert beside["plain_got"] == ["to plain", expected]
    assert beside["ours_got"] == [["to ebbtide", expected]]


async def test_a_direct_subscription_delivers_what_came_while_subscribing_first(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message the read loop took while `subscribe` was still flushing went into the subscription's queue
    (the direct function was not registered yet): it is handed on first, and the queue stays balanced, so
    the subscription's drain() (which joins that queue) still ends."""
    from ebbtide.broker import connect
    from ebbtide.broker._nats_fast import FastNatsClient

    subscribe = FastNatsClient.subscribe

    async def subscribe_while_one_arrives(self: FastNatsClient, subject: str, **options: object) -> Subscription:
        subscription = await subscribe(self, subject, **options)  # type: ignore[arg-type]
        await self._process_msg(subscription._id, subject.encode(), b"", b"early", b"")  # the read loop, meanwhile
        return subscription

    nc = await connect(nats_server.url, name="ebbtide-direct")
    monkeypatch.setattr(FastNatsClient, "subscribe", subscribe_while_one_arrives)
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(msg: Msg) -> None:
        got.append(msg.data)
        if len(got) == 2:
            arrived.set()

    subscription = await subscribe_direct(nc, "direct.early", on_message)
    monkeypatch.undo()
    await nc.publish("direct.early", b"later")
    await asyncio.wait_for(arrived.wait(), 10)
    assert got == [b"early", b"later"]
    await asyncio.wait_for(subscription.drain(), 10)
    await nc.drain()
