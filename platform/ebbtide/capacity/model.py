"""The capacity model: a day (or a burst) of load through the pipeline, with KEDA and the HPA scaling each
function's pods and each pod's pool scaling its Wasm instances. Pure: no clock, no I/O; deterministic.

A fluid model, stepped in time (`busy_dt_s` while anything waits, longer steps while all is quiet):
- orders arrive by the load shape, into the entry function's backlog (a bench run's publisher takes them
  there at its own pace, at most its rate alone, and spends its CPU on the same cores meanwhile); each
  function's handled messages become its downstream functions' backlog, in the proportions of the profile
  (messages per order), once their batch is done: a batch of `batches[f]` messages (fewer when fewer wait)
  takes its CPU time at the pace the process gets;
- each function's Deployment: KEDA and the HPA (kube.py) decide its replicas from its lag; a new pod is
  ready after KEDA's reaction, the pod's start and the process's cold start; with `fixed_pods`, a fixed
  number of pods ready from the start (pods kept running, or a bench run's replicas);
- each ready pod runs its pool by the real policy (ebbtide.scaler.Scaler, the manifest's `scale`), on the
  function's whole lag (every replica reads the same consumer): woken by its bell with one instance, it
  reads the lag every control interval, later when the cores are shared (its tick waits for the CPU too);
  it handles up to one core's worth of messages (1 / cpu_s per second: one Python process), less its own
  overhead while busy (control loop, pull requests: the profile's `replica_overhead_cores`);
- CPU: with `cores` set (a machine, as in bench runs: the cores its processes get), the functions,
  nats-server and the publisher share them in proportion to what each asks for: beyond it, everything is
  slowed alike. Without it, each pod has its core and nats-server what it needs, and the model reports how
  many cores that is.

Per function it gives pods over time, the worst wait of a message in its backlog, pod-seconds,
memory-seconds and instance-seconds; for the run, the drain time, the worst wait from publish to the last
function, nats-server cores (peak over one second, and the mean) and JetStream storage.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from ..scaler import ScalePolicy, Scaler
from .kube import DeploymentScaler, HpaSettings, KedaSettings
from .load import LoadShape
from .profile import Pipeline, Profile

EPSILON = 1e-6  # messages: less than this left is nothing left


@dataclass(frozen=True)
class ClusterSettings:
    pod_start_s: float = 2.0  # scheduling and container start, before the process's own cold start
    cores: float | None = None  # the cores one machine gives everything (bench runs); None: a pod per core
    # A bench run's publisher: one process on the machine, publishing at most at its rate alone, its CPU counted
    # against `cores`. Without it, orders enter the streams as they arrive (clients elsewhere publish them).
    publisher_cpu: bool = False
    stream_replicas: int = 3  # JetStream copies of every message (R3 on deploy/kubernetes's cluster)
    retention_s: float = 86_400.0  # how long ORDERS keeps a handled message (max_age_s)


@dataclass(frozen=True)
class StepSettings:
    busy_dt_s: float = 0.05  # the pools' control interval (controller.TICK_S)
    quiet_dt_s: float = 1.0
    sample_s: float = 1.0  # resolution of the series kept for the chart
    drain_limit_s: float = 3_600.0  # after the load: stop if the backlog is still not gone


@dataclass
class FunctionResult:
    name: str
    times: list[float] = field(default_factory=list)  # sample starts
    pods: list[int] = field(default_factory=list)  # most pods (ready or starting) within each sample
    backlog: list[float] = field(default_factory=list)  # largest backlog within each sample
    instances: list[int] = field(default_factory=list)  # most live instances (all pods) within each sample
    handled: float = 0.0
    left: float = 0.0  # still waiting when the simulation stopped
    worst_wait_s: float = 0.0
    pod_seconds: float = 0.0
    memory_mib_seconds: float = 0.0
    instance_seconds: float = 0.0
    peak_pods: int = 0
    peak_instances: int = 0
    cpu_seconds: float = 0.0


@dataclass
class SimulationResult:
    functions: dict[str, FunctionResult]
    duration_s: float  # simulated
    drain_s: float | None  # from t = 0 until every order was handled by every function (None: never)
    worst_end_to_end_s: float
    server_cores_peak: float  # busiest second
    server_cores_mean: float
    storage_bytes_peak: float  # every copy (stream_replicas)
    orders: float


class _Function:
    """One function's state during a simulation."""

    def __init__(self, name: str, policy: ScalePolicy, deployment: DeploymentScaler | None, fixed_pods: int) -> None:
        self.name = name
        self.policy = policy
        self.deployment = deployment
        self.pods_ready_at: list[float] = [0.0] * fixed_pods  # one entry per pod: when it is ready (sorted)
        self.ready = fixed_pods  # pods ready now (this step)
        self.scaler = Scaler(policy)
        self.instances = 0  # per ready pod
        self.next_control_at = 0.0  # when its pools next read the lag
        self.backlog = 0.0
        self.pushed = False
        self.arrived = 0.0  # cumulative
        self.handled = 0.0
        self.waiting: deque[tuple[float, float]] = deque()  # (cumulative arrivals, when they arrived)
        self.result = FunctionResult(name)


def simulate(
    pipeline: Pipeline,
    profile: Profile,
    policies: dict[str, ScalePolicy],
    load: LoadShape,
    *,
    keda: KedaSettings | None = None,
    hpa: HpaSettings | None = None,
    cluster: ClusterSettings | None = None,
    steps: StepSettings | None = None,
    fixed_pods: dict[str, int] | None = None,
    batches: dict[str, int] | None = None,
) -> SimulationResult:
    """Run `load` through the pipeline. Without `fixed_pods`, KEDA and the HPA scale each function from zero;
    with it, each function has that many pods, ready from t = 0, and nothing scales them."""
    keda, hpa, cluster, steps = (
        keda or KedaSettings(),
        hpa or HpaSettings(),
        cluster or ClusterSettings(),
        steps or StepSettings(),
    )
    functions: dict[str, _Function] = {}
    for name in pipeline.order:
        policy = policies[name]
        deployment = None if fixed_pods is not None else DeploymentScaler(policy.target_backlog * policy.max, keda, hpa)
        functions[name] = _Function(name, policy, deployment, fixed_pods.get(name, 0) if fixed_pods is not None else 0)
    costs = {name: profile.functions[name] for name in pipeline.order}
    start_delay = keda.reaction_s + cluster.pod_start_s + profile.cold_start_s
    overhead = min(profile.replica_overhead_cores, 0.5)
    downstream = {name: [f for f in pipeline.order if name in pipeline.upstream[f]] for name in pipeline.order}

    t = 0.0
    to_publish = 0.0  # orders arrived, not yet in the entry functions' streams
    in_transit: list[tuple[float, int, str, float]] = []  # heap: (when, tie, function, messages) a batch hands on
    sent = 0
    orders_in = 0.0  # published into the entry functions' streams
    orders_done = 0.0
    order_waits: deque[tuple[float, float]] = deque()
    worst_e2e = 0.0
    drain_s: float | None = None
    leaves_share = sum(costs[f].messages_per_order for f in pipeline.leaves)
    server_cpu_total = 0.0
    server_window = [0.0, 0.0]  # (second, CPU seconds in it)
    server_peak = 0.0
    stored: deque[tuple[float, float]] = deque()  # (when, orders) still within retention
    stored_orders = 0.0
    storage_peak = 0.0
    sample_at = 0.0
    last_share = 1.0  # the CPU share of the step before
    end = load.duration_s

    while True:
        busy = to_publish > EPSILON or bool(in_transit) or any(f.backlog > EPSILON for f in functions.values())
        next_arrival = load.next_arrival_after(t)
        if t >= end and next_arrival is None and (not busy or t >= end + steps.drain_limit_s):
            break
        starting = any(f.pods_ready_at and f.pods_ready_at[-1] > t for f in functions.values())
        if busy or starting or (next_arrival is not None and next_arrival < t + steps.busy_dt_s):
            dt = steps.busy_dt_s
        else:
            dt = steps.quiet_dt_s
            if next_arrival is not None:
                dt = min(dt, max(next_arrival - t, steps.busy_dt_s))

        # Arrivals: into the publisher, or straight into the entry functions' streams.
        arriving = load.orders_between(t, t + dt)
        if arriving:
            order_waits.append((orders_in + to_publish + arriving, t))
            stored.append((t, arriving))
            stored_orders += arriving
        to_publish += arriving

        # Deployments: KEDA and the HPA on each function's lag; pods started or stopped to match.
        for f in functions.values():
            if f.deployment is None:
                continue
            f.deployment.step(t, f.backlog, f.pushed)
            f.pushed = False
            want = f.deployment.replicas
            while len(f.pods_ready_at) < want:
                f.pods_ready_at.append(t + start_delay)  # later than every other: the list stays sorted
            del f.pods_ready_at[want:]  # the newest (or still starting) pods go first

        # Batches done: their effects reach the next function.
        while in_transit and in_transit[0][0] <= t:
            _, _, child, amount = heapq.heappop(in_transit)
            target = functions[child]
            target.backlog += amount
            target.arrived += amount
            target.waiting.append((target.arrived, t))
            if target.deployment is not None:
                target.pushed = True  # the scaler's bell (KEDA acts on it at once when at zero)

        # What each process would do in this step, then the CPU they share.
        publish = min(to_publish, profile.publish_rate * dt) if cluster.publisher_cpu else to_publish
        wanted: dict[str, float] = {}
        busy_replicas = 0
        for f in functions.values():
            f.ready = ready = bisect.bisect_right(f.pods_ready_at, t)
            if ready == 0:
                if f.instances:
                    f.instances, f.scaler = 0, Scaler(f.policy)  # the next pod's pool starts afresh
                wanted[f.name] = 0.0
                continue
            if f.instances == 0 and f.backlog > EPSILON:
                # A pool at zero wakes on its bell with one instance; it reads the lag a control interval later.
                f.instances = f.scaler.wake(t)
                f.next_control_at = t + steps.busy_dt_s / last_share
            elif t >= f.next_control_at - EPSILON:
                # A controller's tick waits for the CPU like everything else: on shared cores it comes later.
                in_flight = 1 if f.backlog > EPSILON else 0
                lag = math.ceil(f.backlog - EPSILON)
                f.instances = f.scaler.desired(lag=lag, in_flight=in_flight, current=f.instances, now=t)
                f.next_control_at = t + steps.busy_dt_s / last_share
            # A replica's core, less what its control loop and fetches cost while there is work.
            capacity = ready * (1 - overhead) * costs[f.name].replica_rate * dt if f.instances > 0 else 0.0
            wanted[f.name] = min(f.backlog, capacity)
            if wanted[f.name] > 0:
                busy_replicas += ready
        cpu = sum(wanted[n] * (costs[n].cpu_s + costs[n].server_cpu_s) for n in wanted)
        if cluster.publisher_cpu:
            cpu += publish * (profile.publish_cpu_s + profile.server_publish_cpu_s)
        share = 1.0
        if cluster.cores is not None and cpu > 0:
            # The busy replicas' overhead is spent whatever else runs; the messages share what is left.
            share = min(1.0, max(cluster.cores - busy_replicas * overhead, 0.01 * cluster.cores) * dt / cpu)
        last_share = share

        # Carry it out: publish, handle, hand on downstream.
        published = publish * share if cluster.publisher_cpu else publish
        to_publish -= published
        orders_in += published
        server_cpu = published * profile.server_publish_cpu_s
        inflow = {name: 0.0 for name in functions}
        for name in pipeline.entries:
            inflow[name] += published * costs[name].messages_per_order
        for f in functions.values():
            if inflow[f.name]:
                f.backlog += inflow[f.name]
                f.arrived += inflow[f.name]
                f.waiting.append((f.arrived, t))
                if f.deployment is not None:
                    f.pushed = True  # the scaler's bell: any message arriving (KEDA acts on it at once when at zero)
        for name in pipeline.order:
            f = functions[name]
            handled = min(f.backlog, wanted[name] * share)
            f.backlog -= handled
            if f.backlog < EPSILON:
                f.backlog = 0.0
            f.handled += handled
            cost = costs[name]
            f.result.cpu_seconds += handled * cost.cpu_s
            server_cpu += handled * cost.server_cpu_s
            if handled and downstream[name]:
                # A batch is done after its messages' CPU time at this step's pace (a whole core: share 1).
                pods = max(1, f.ready * max(f.instances, 1))
                batch = min(float((batches or {}).get(name, 1)), (f.backlog + handled) / pods)
                done_at = t + dt + batch * (cost.cpu_s + cost.server_cpu_s) / share
                for child in downstream[name]:
                    share_of = costs[child].messages_per_order / cost.messages_per_order / len(pipeline.upstream[child])
                    sent += 1
                    heapq.heappush(in_transit, (done_at, sent, child, handled * share_of))
            while f.waiting and f.waiting[0][0] <= f.handled + EPSILON + 1e-9 * f.arrived:
                f.result.worst_wait_s = max(f.result.worst_wait_s, t + dt - f.waiting.popleft()[1])
            if name in pipeline.leaves and leaves_share:
                orders_done += handled / leaves_share
        while order_waits and order_waits[0][0] <= orders_done + EPSILON + 1e-9 * orders_done:
            worst_e2e = max(worst_e2e, t + dt - order_waits.popleft()[1])
        if drain_s is None and next_arrival is None and orders_done >= load.total_orders * (1 - 1e-9) - EPSILON:
            drain_s = t + dt  # the last order's last message handled in this step

        # Accounting.
        server_cpu_total += server_cpu
        second = math.floor(t)
        if second != server_window[0]:
            server_peak = max(server_peak, server_window[1])
            server_window = [second, 0.0]
        server_window[1] += server_cpu
        while stored and stored[0][0] < t - cluster.retention_s:
            stored_orders -= stored.popleft()[1]
        storage_peak = max(storage_peak, stored_orders)
        new_sample = t >= sample_at
        if new_sample:
            sample_at = t + steps.sample_s
        for f in functions.values():
            r = f.result
            pods = len(f.pods_ready_at)
            ready = f.ready
            live = ready * f.instances
            r.pod_seconds += pods * dt
            r.instance_seconds += live * dt
            r.memory_mib_seconds += (pods * costs[f.name].memory_mib + live * profile.instance_memory_mib) * dt
            r.peak_pods = max(r.peak_pods, pods)
            r.peak_instances = max(r.peak_instances, live)
            if new_sample:
                r.times.append(t)
                r.pods.append(pods)
                r.backlog.append(f.backlog)
                r.instances.append(live)
            else:
                r.pods[-1] = max(r.pods[-1], pods)
                r.backlog[-1] = max(r.backlog[-1], f.backlog)
                r.instances[-1] = max(r.instances[-1], live)
        t += dt

    server_peak = max(server_peak, server_window[1])
    for f in functions.values():
        f.result.handled, f.result.left = f.handled, f.backlog
    return SimulationResult(
        functions={name: f.result for name, f in functions.items()},
        duration_s=t,
        drain_s=drain_s,
        worst_end_to_end_s=worst_e2e,
        server_cores_peak=server_peak,
        server_cores_mean=server_cpu_total / t if t > 0 else 0.0,
        storage_bytes_peak=storage_peak * profile.stored_bytes_per_order * cluster.stream_replicas,
        orders=load.total_orders,
    )
