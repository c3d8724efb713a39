"""Locust load test for ebbtide: ZEISS-shaped orders into `orders.ingress`, timed to their outbox write.

    locust -f loadtest/locustfile.py --headless -u 20 -r 20 -t 30s --host nats://127.0.0.1:4222
    locust -f loadtest/locustfile.py                       # web UI on http://localhost:8089

Reported to Locust:
  - request type "jetstream", name "orders.ingress": publish -> JetStream ack (a timeout, an error reply or
    a duplicate ack is a failure);
  - request type "e2e", name "outbox-express" / "outbox-standard": publish -> the order's write to its
    outbox (seen as the message `$KV.<bucket>.<orderId>` on a core subscription); an order whose write
    does not arrive within --e2e-timeout seconds is a failure, also at the end of a run: when the users
    stop, orders still in flight get the rest of their --e2e-timeout before being counted as lost.
  - request type "nats", name "connect": a connection that could not be made (the user retries each second).

See loadtest/README.md for the options and for running it in compose or against Kubernetes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable

import gevent
import msgspec
from locust import User, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from natsclient import ConnectionClosed, Credentials, JetStreamError, Msg, NatsConnection, NatsError

from ebbtide.workload.orders import Order, encode_order, generate_orders

# Read by tests/unit/test_deploy_consistency (with ast): keep these plain literals.
INGRESS_SUBJECT = "orders.ingress"
OUTBOX_BUCKETS = ("outbox-express", "outbox-standard")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

_BUCKET_BY_DELIVERY = {"Express": OUTBOX_BUCKETS[0], "Standard": OUTBOX_BUCKETS[1]}
logger = logging.getLogger("ebbtide.loadtest")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--express-share",
        type=float,
        default=0.3,
        env_var="EBBTIDE_EXPRESS_SHARE",
        help="fraction of orders with delivery Express (the rest Standard); default 0.3",
    )
    parser.add_argument(
        "--user-rate",
        type=float,
        default=0.0,
        env_var="EBBTIDE_USER_RATE",
        help="orders per second per user (constant throughput); 0 = as fast as acks come back",
    )
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=5.0,
        env_var="EBBTIDE_ACK_TIMEOUT",
        help="seconds to wait for a JetStream ack before the publish is a failure; default 5",
    )
    parser.add_argument(
        "--e2e-timeout",
        type=float,
        default=30.0,
        env_var="EBBTIDE_E2E_TIMEOUT",
        help="seconds from publish to outbox write before an order counts as lost; default 30",
    )
    parser.add_argument(
        "--e2e-host",
        default="",
        env_var="EBBTIDE_E2E_HOST",
        help="NATS URL for reading the outbox writes, if the publishing user may not subscribe "
        "to $KV.outbox-*.> (default: --host)",
    )
    parser.add_argument(
        "--nkey-seed-file",
        default="",
        env_var="EBBTIDE_NATS_NKEY_SEED_FILE",
        help="authenticate with this NKEY seed (user and password: in the URL, or "
        "EBBTIDE_NATS_USER / EBBTIDE_NATS_PASSWORD; a token: EBBTIDE_NATS_TOKEN)",
    )
    parser.add_argument(
        "--e2e-nkey-seed-file",
        default="",
        env_var="EBBTIDE_E2E_NKEY_SEED_FILE",
        help="NKEY seed for reading the outbox writes only (e.g. ebbtide's read-only observer.nk when "
        "publishing as the ingress user, who may not read them)",
    )
    parser.add_argument(
        "--record-orders",
        default="",
        include_in_web_ui=False,
        env_var="EBBTIDE_RECORD_ORDERS",
        help="write the ids of the orders published (acked, failed, interrupted) to this JSON file "
        "when the test stops (a worker process adds .<pid>)",
    )


@events.init.add_listener
def _check_options(environment: Environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return  # used as a library
    problems = [
        text
        for bad, text in (
            (not 0.0 <= options.express_share <= 1.0, f"--express-share must be within [0, 1], got {options.express_share}"),
            (options.user_rate < 0, f"--user-rate must be >= 0, got {options.user_rate}"),
            (options.ack_timeout <= 0, f"--ack-timeout must be > 0, got {options.ack_timeout}"),
            (options.e2e_timeout <= 0, f"--e2e-timeout must be > 0, got {options.e2e_timeout}"),
        )
        if bad
    ]
    if problems:  # bad usage: exit code 2, as ebbtide's own commands
        print("locustfile: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(2)


class OrderFactory:
    """Unique orders for this process: ids are a random 20-bit base << 32 plus a counter.

    So processes (Locust workers, repeated runs) never share an id and each outbox write maps to exactly
    one publish; ids stay below 2**52, exact for any JSON reader. The rest of each order comes from
    ebbtide's own generator.
    """

    def __init__(self, express_share: float, templates: int = 512) -> None:
        if not 0.0 <= express_share <= 1.0:
            raise ValueError(f"--express-share must be within [0, 1], got {express_share}")
        self._rng = random.Random()
        self._express_share = express_share
        self._next_id = (self._rng.getrandbits(20) << 32) + 1
        self._templates = generate_orders(templates, seed=self._rng.getrandbits(32))

    def next(self) -> Order:
        order_id = self._next_id
        self._next_id += 1
        template = self._templates[order_id % len(self._templates)]
        return msgspec.structs.replace(
            template,
            order_id=order_id,
            order_guid=str(uuid.uuid4()),
            description=f"Order {order_id}: {len(template.items)} item(s) for the lab",
            delivery="Express" if self._rng.random() < self._express_share else "Standard",
        )


class EndToEnd:
    """Matches outbox writes (`$KV.<bucket>.<orderId>`) to the publishes of this process."""

    def __init__(self, environment: Environment, url: str, timeout: float, creds: Credentials) -> None:
        self._environment = environment
        self._timeout = timeout
        # orderId -> (publish time on perf_counter, bucket); deque of (deadline, orderId) in publish order
        self._pending: dict[str, tuple[float, str]] = {}
        self._deadlines: deque[tuple[float, str]] = deque()
        self.late = 0  # writes that arrived after their order had been reported lost
        self._expired: set[str] = set()
        self._connection = NatsConnection.connect(url, name="ebbtide-loadtest-e2e", credentials=creds)
        for bucket in OUTBOX_BUCKETS:
            self._connection.subscribe(f"$KV.{bucket}.>", self._on_write)
        try:  # the round trip also means the server has the subscriptions before the first order goes out
            self._connection.check_subscriptions()
        except NatsError as exc:
            self._connection.close()
            raise NatsError(
                f"cannot follow the outbox writes for end-to-end latency: {exc} "
                "(use --e2e-host with a user that may subscribe to $KV.outbox-*.>)"
            ) from None
        self._sweeper = gevent.spawn(self._sweep_loop)

    def expect(self, order_id: str, bucket: str, started: float) -> None:
        self._pending[order_id] = (started, bucket)
        self._deadlines.append((started + self._timeout, order_id))

    def forget(self, order_id: str) -> bool:
        """Stop tracking an order; False if its outbox write was already seen (and reported)."""
        return self._pending.pop(order_id, None) is not None

    @property
    def is_closed(self) -> bool:
        return self._connection.is_closed

    def _on_write(self, msg: Msg) -> None:
        now = time.perf_counter()
        _, bucket, key = msg.subject.split(".", 2)
        entry = self._pending.pop(key, None)
        if entry is None:
            if key in self._expired:
                self._expired.discard(key)
                self.late += 1
            return  # another process's order, or one we stopped tracking
        started, expected_bucket = entry
        error = (
            None if bucket == expected_bucket else AssertionError(f"order {key} stored in {bucket}, expected {expected_bucket}")
        )
        self._report(expected_bucket, (now - started) * 1000, len(msg.payload), error)

    def _sweep_loop(self) -> None:
        while self._pending or not self._connection.is_closed:
            gevent.sleep(0.5)
            self.expire(time.perf_counter())

    def expire(self, now: float) -> None:
        """Report as lost every order whose deadline has passed."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, order_id = self._deadlines.popleft()
            entry = self._pending.pop(order_id, None)
            if entry is not None:
                self._expired.add(order_id)
                self._report(entry[1], (now - entry[0]) * 1000, 0, TimeoutError(f"no outbox write within {self._timeout:g} s"))

    def finish(self) -> None:
        """At the end of a test: wait for the orders in flight, each until its own deadline, then report the rest."""
        while self._pending and not self._connection.is_closed:
            gevent.sleep(0.05)
            self.expire(time.perf_counter())
        self.expire(float("inf"))
        self._deadlines.clear()
        if self.late:
            logger.warning("%d outbox write(s) arrived after their order had been reported lost", self.late)

    def close(self) -> None:
        self._sweeper.kill(block=False)
        self._connection.close()

    def _report(self, bucket: str, response_time: float, length: int, error: Exception | None) -> None:
        self._environment.events.request.fire(
            request_type="e2e", name=bucket, response_time=response_time, response_length=length, exception=error, context={}
        )


def credentials(environment: Environment, *, e2e: bool = False) -> Credentials:
    """The publishers' credentials (ebbtide's EBBTIDE_NATS_* variables, --nkey-seed-file), or the e2e reader's."""
    options = environment.parsed_options
    if e2e and getattr(options, "e2e_nkey_seed_file", ""):
        return Credentials(nkey_seed_file=options.e2e_nkey_seed_file)
    return Credentials(
        user=os.environ.get("EBBTIDE_NATS_USER") or None,
        password=os.environ.get("EBBTIDE_NATS_PASSWORD") or None,
        token=os.environ.get("EBBTIDE_NATS_TOKEN") or None,
        nkey_seed_file=getattr(options, "nkey_seed_file", "") or None,
    )


class _Run:
    """What one Locust process shares between its users: the order factory, e2e tracking, the record."""

    def __init__(self) -> None:
        self.factory: OrderFactory | None = None
        self.e2e: EndToEnd | None = None
        # Only with --record-orders (a long run would otherwise keep every id in memory):
        # bucket -> orders confirmed (acked, or their outbox write seen); "failed"; "interrupted" (user stopped).
        self.record: dict[str, list[int]] | None = None

    def note(self, kind: str, order_id: int) -> None:
        if self.record is not None:
            self.record[kind].append(order_id)

    def start(self, environment: Environment, url: str) -> EndToEnd:
        options = environment.parsed_options
        if self.factory is None:
            self.factory = OrderFactory(getattr(options, "express_share", 0.3))
        if self.record is None and getattr(options, "record_orders", ""):
            self.record = {kind: [] for kind in (*OUTBOX_BUCKETS, "failed", "interrupted")}
        if self.e2e is None or self.e2e.is_closed:  # first user of the test, or the connection was lost
            # (a lost tracker still reports its own orders as lost, until its last deadline)
            self.e2e = EndToEnd(
                environment,
                getattr(options, "e2e_host", "") or url,
                getattr(options, "e2e_timeout", 30.0),
                credentials(environment, e2e=True),
            )
        return self.e2e

    def stop(self, environment: Environment) -> None:
        if self.e2e is not None:
            self.e2e.finish()
            self.e2e.close()
            self.e2e = None
        path = getattr(environment.parsed_options, "record_orders", "")
        if path and self.record is not None:
            if isinstance(environment.runner, WorkerRunner):
                path = f"{path}.{os.getpid()}"
            with open(path, "w") as out:
                json.dump(self.record, out)
        self.record = None
        if getattr(environment.parsed_options, "csv_prefix", None):
            # Locust writes its CSV files every second and does not write them again at exit: give the
            # writer one more turn so the e2e results reported just now are in them.
            gevent.sleep(1.1)


_run = _Run()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # runs no users: its workers track their own orders
    _run.stop(environment)


class OrderPublisher(User):
    """Publishes one order per task to orders.ingress and waits for its JetStream ack."""

    host = os.environ.get("NATS_URL", DEFAULT_NATS_URL)  # Locust's --host (or the web UI's host field) replaces it

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        rate = getattr(options, "user_rate", 0.0) if options is not None else 0.0
        self._pace: Callable[[User], float] | None = constant_throughput(rate) if rate > 0 else None
        self._ack_timeout = getattr(options, "ack_timeout", 5.0) if options is not None else 5.0
        self._connection: NatsConnection | None = None
        self._e2e: EndToEnd | None = None

    def wait_time(self) -> float:
        return self._pace(self) if self._pace is not None else 0.0

    def on_stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @task
    def publish_order(self) -> None:
        if not self._connected():
            return
        order = _run.factory.next()
        payload = encode_order(order)
        order_id = str(order.order_id)
        bucket = _BUCKET_BY_DELIVERY[order.delivery]
        started = time.perf_counter()
        self._e2e.expect(order_id, bucket, started)  # before publishing: the write may beat the ack
        error: Exception | None = None
        try:
            ack = self._connection.js_publish(
                INGRESS_SUBJECT, payload, {"Nats-Msg-Id": order.order_guid}, timeout=self._ack_timeout
            )
            if ack.duplicate:
                error = JetStreamError(f"duplicate ack for order {order_id} (stream {ack.stream}, seq {ack.seq})")
        except NatsError as exc:
            error = exc
        except gevent.GreenletExit:
            # The user was stopped mid-publish (its ack not yet seen): unless its outbox write was already
            # reported, the order may or may not be stored, and is not counted.
            _run.note("interrupted" if self._e2e.forget(order_id) else bucket, order.order_id)
            raise
        response_time = (time.perf_counter() - started) * 1000
        if error is None:
            _run.note(bucket, order.order_id)
        else:
            self._e2e.forget(order_id)  # counted once, as a failed publish
            _run.note("failed", order.order_id)
        self.environment.events.request.fire(
            request_type="jetstream",
            name=INGRESS_SUBJECT,
            response_time=response_time,
            response_length=len(payload),
            exception=error,
            context={},
        )
        if isinstance(error, ConnectionClosed):
            self._connection = None

    def _connected(self) -> bool:
        """Connect (again) if needed; a failure is reported and retried after a second."""
        if self._connection is not None and not self._connection.is_closed and self._e2e is not None and not self._e2e.is_closed:
            return True
        started = time.perf_counter()
        try:
            self._e2e = _run.start(self.environment, self.host)
            if self._connection is None or self._connection.is_closed:
                self._connection = NatsConnection.connect(self.host, credentials=credentials(self.environment))
            return True
        except (NatsError, ValueError) as exc:
            self.environment.events.request.fire(
                request_type="nats",
                name="connect",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=0,
                exception=exc,
                context={},
            )
            gevent.sleep(1.0)
            return False
