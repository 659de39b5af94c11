"""Celery 5 event traffic for the benchmarks, byte-for-byte in the shape workers and producers emit it.

The templates are the real events captured from Celery 5.7 in ``tests/testdata/events/`` (same keys,
same key order, same JSON separators, same tracebacks): only uuids, names, hostnames, clocks and times
change. ``simulate()`` plays a cluster forward on a simulated clock:

* producers publish one ``task-sent`` per task (routing key ``task.sent``), one message each;
* each worker buffers its task events (``task-received``, ``task-started``, ``task-succeeded`` /
  ``task-failed`` / ``task-retried``) the way Celery's EventDispatcher does with ``buffer_group=['task']``:
  a ``task.multi`` list flushed when it reaches Celery's ``buffer_limit`` of 24 or when the worker's hub
  loop turns (modelled as a 10% chance after each event, so most batches hold 1 to 24 events);
* a retry is re-sent by the worker's pool child under its anonymous ``gen<pid>@host`` node name, with an
  ETA (``countdown``), exactly as the captured ``capture.flaky`` runs show;
* workers send ``worker-online``, a ``worker-heartbeat`` every 2 s of simulated time, and (when they go
  away) ``worker-offline``, each a message of its own.

Outcome mix: 88% of tasks succeed at once, 7% fail at once, 5% are retried once or twice and then
succeed (80%) or fail (20%): about 92% success, 8% failure, 5% retried.
``encode_redis`` turns messages into kombu's Redis pub/sub envelope wrapped in a ready RESP ``PUBLISH``
command; ``encode_amqp`` keeps the raw body and properties for ``basic_publish``.
"""

from __future__ import annotations

import base64
import heapq
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TESTDATA = Path(__file__).resolve().parents[1] / "tests" / "testdata" / "events"
BUFFER_LIMIT = 24  # celery.events.dispatcher.EventDispatcher(buffer_limit=24)
FLUSH_P = 0.10
HEARTBEAT_EVERY = 2.0  # Celery's default worker heartbeat frequency (freq: 2.0)
EXCEPTIONS = (
    "ValueError('invalid literal for int() with base 10: {n}')",
    "KeyError('order-{n}')",
    "ConnectionError('Connection refused by upstream {n}')",
    "TimeoutError('timed out after 30s (request {n})')",
    "celery.exceptions.SoftTimeLimitExceeded('SoftTimeLimitExceeded()')",
)
_dumps = json.JSONEncoder().encode  # kombu's json.dumps: default separators, key order kept


def load_templates() -> dict[str, dict[str, Any]]:
    """One captured event per type (the first seen), as an ordered dict of its real keys."""
    out: dict[str, dict[str, Any]] = {}
    for line in (TESTDATA / "redis_payloads.jsonl").read_text().splitlines():
        env = json.loads(json.loads(line)["payload"])
        body = json.loads(base64.b64decode(env["body"]))
        for ev in body if isinstance(body, list) else [body]:
            out.setdefault(ev["type"], ev)
    return out


@dataclass
class Message:
    """One broker message: who sends it (publisher affinity), its routing key and JSON body."""

    source: str
    routing_key: str
    body: bytes
    hostname: str
    n_events: int


@dataclass
class Workload:
    tasks: int = 20_000
    task_names: int = 50
    workers: int = 20
    producers: int = 4
    rate: float = 12_000.0  # simulated tasks per second (only spaces timestamps and heartbeats)
    seed: int = 1
    # Memory scenario: workers live for ``worker_lifetime`` simulated seconds, then go offline and new
    # names take their place; ``lost`` is the share of tasks whose worker died before the outcome.
    worker_lifetime: float = 0.0
    lost: float = 0.0
    t0: float = 0.0
    by_type: Counter[str] = field(default_factory=Counter)


class _Node:
    __slots__ = ("buffer", "clock", "hostname", "pid", "processed")

    def __init__(self, hostname: str, pid: int) -> None:
        self.hostname = hostname
        self.pid = pid
        self.clock = 0
        self.processed = 0
        self.buffer: list[dict[str, Any]] = []


class _Sim:
    """Builds timed events, then walks them in time order through per-worker buffers."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.rng = random.Random(w.seed)
        self.tpl = load_templates()
        self.t0 = w.t0
        # Zipf-like popularity: a few task names dominate, every name appears.
        self.names = [f"app.tasks.{('billing', 'email', 'media', 'search', 'sync')[i % 5]}.job_{i:04d}"
                      for i in range(w.task_names)]
        weights = [1.0 / (i + 1) for i in range(w.task_names)]
        total = sum(weights)
        self.cum = []
        acc = 0.0
        for x in weights:
            acc += x / total
            self.cum.append(acc)
        self.queues = {n: ("celery", "priority", "bulk", "io")[i % 4] for i, n in enumerate(self.names)}
        self.producers = [_Node(f"gen{4000 + i}@producer-{i}", 4000 + i) for i in range(w.producers)]
        self.generation = 0
        self.workers = [self._new_worker(i) for i in range(w.workers)]
        self.events: list[tuple[float, int, str, dict[str, Any]]] = []
        self.seq = 0

    def _new_worker(self, slot: int) -> _Node:
        self.generation += 1
        tag = uuid.UUID(int=self.rng.getrandbits(128)).hex[:10]
        return _Node(f"celery@worker-{slot}-{tag}", 10_000 + self.generation)

    def name(self) -> str:
        x = self.rng.random()
        lo, hi = 0, len(self.cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return self.names[lo]

    def add(self, t: float, node: str, ev: dict[str, Any]) -> None:
        self.seq += 1
        self.events.append((t, self.seq, node, ev))


def _ev(tpl: dict[str, Any], **values: Any) -> dict[str, Any]:
    ev = dict(tpl)
    ev.update(values)
    return ev


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def simulate(w: Workload) -> Iterator[Message]:
    """The messages of ``w`` in the order the cluster would publish them."""
    s = _Sim(w)
    rng, tpl = s.rng, s.tpl
    nodes: dict[str, _Node] = {p.hostname: p for p in s.producers}
    children: dict[str, _Node] = {}
    end_t = s.t0 + w.tasks / w.rate
    lifetime = w.worker_lifetime or (end_t - s.t0 + 10.0)
    # Worker lifecycles: online, heartbeats, and offline when a lifetime ends mid-run. With churn, the
    # slots' lives are staggered so names come and go all through the run.
    lifecycles = []
    for slot, node in enumerate(s.workers):
        born = s.t0 - 0.5 - (lifetime * slot / w.workers if w.worker_lifetime else 0.0)
        while born < end_t:
            lifecycles.append((born, min(born + lifetime, end_t + 1.0), slot, node))
            born += lifetime
            node = s._new_worker(slot)
    # The worker serving a task at time t in a slot: the one whose life covers t.
    alive: dict[int, list[tuple[float, float, _Node]]] = {}
    for born, dies, slot, node in lifecycles:
        nodes[node.hostname] = node
        alive.setdefault(slot, []).append((born, dies, node))
        gone = dies <= end_t
        s.add(born, node.hostname, _ev(tpl["worker-online"], hostname=node.hostname, pid=node.pid))
        t = born + HEARTBEAT_EVERY
        while t < dies:
            s.add(t, node.hostname, _ev(tpl["worker-heartbeat"], hostname=node.hostname, pid=node.pid))
            t += HEARTBEAT_EVERY
        if gone:
            s.add(dies, node.hostname, _ev(tpl["worker-offline"], hostname=node.hostname, pid=node.pid))

    def worker_at(t: float) -> _Node:
        for born, dies, node in alive[rng.randrange(w.workers)]:
            if born <= t < dies:
                return node
        return s.workers[0]

    def child(node: _Node) -> _Node:
        c = children.get(node.hostname)
        if c is None:
            c = children[node.hostname] = _Node(f"gen{node.pid + 1}@{node.hostname.split('@')[1]}", node.pid + 1)
            nodes[c.hostname] = c
        return c

    for i in range(w.tasks):
        t = s.t0 + i / w.rate
        name = s.name()
        queue = s.queues[name]
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        prod = s.producers[i % len(s.producers)]
        sent_tpl = _ev(tpl["task-sent"], uuid=task_id, root_id=task_id, name=name,
                       args=f"({i}, {rng.randrange(1000)})", queue=queue, routing_key=queue)
        s.add(t, prod.hostname, sent_tpl)
        x = rng.random()
        retries = 0 if x >= 0.05 else (1 if rng.random() < 0.7 else 2)
        final_fail = (0.05 <= x < 0.12) or (retries and rng.random() < 0.2)
        attempt_t = t
        for attempt in range(retries + 1):
            node = worker_at(attempt_t)
            recv = attempt_t + rng.uniform(0.0005, 0.02)
            start = recv + rng.uniform(0.0002, 0.03)
            runtime = min(rng.lognormvariate(-3.0, 1.0), 30.0)
            done = start + runtime + 0.0003
            eta = _iso(attempt_t) if attempt else None
            s.add(recv, node.hostname, _ev(tpl["task-received"], uuid=task_id, root_id=task_id, name=name,
                                           args=sent_tpl["args"], retries=attempt, eta=eta))
            s.add(start, node.hostname, _ev(tpl["task-started"], uuid=task_id))
            if w.lost and rng.random() < w.lost:
                break  # the worker died mid-task: no outcome, the record stays until evicted
            if attempt < retries:
                exc = rng.choice(EXCEPTIONS[:3]).format(n=i)
                s.add(done, node.hostname, _ev(tpl["task-retried"], uuid=task_id, exception=exc))
                attempt_t = done + 1.0 * (attempt + 1)  # countdown / retry_backoff
                kid = child(node)
                s.add(done + 0.0002, kid.hostname,
                      _ev(tpl["task-sent"], uuid=task_id, root_id=task_id, name=name, args=sent_tpl["args"],
                          retries=attempt + 1, eta=_iso(attempt_t), queue=queue, routing_key=queue))
            elif final_fail:
                exc = rng.choice(EXCEPTIONS).format(n=i)
                s.add(done, node.hostname, _ev(tpl["task-failed"], uuid=task_id, exception=exc))
            else:
                s.add(done, node.hostname, _ev(tpl["task-succeeded"], uuid=task_id, result=str(i),
                                               runtime=runtime))
    yield from _publish_order(s, nodes, w)


def _publish_order(s: _Sim, nodes: dict[str, _Node], w: Workload) -> Iterator[Message]:
    heapq.heapify(s.events)
    rng = s.rng
    buffered: set[str] = set()
    while s.events:
        t, _, hostname, ev = heapq.heappop(s.events)
        node = nodes[hostname]
        node.clock += 1
        ev["clock"] = node.clock
        ev["timestamp"] = t
        etype = ev["type"]
        w.by_type[etype] += 1
        if etype.startswith("worker-"):
            ev["processed"] = node.processed
            ev["active"] = rng.randrange(0, 8) if etype == "worker-heartbeat" else 0
            yield Message(hostname, etype.replace("-", "."), _dumps(ev).encode(), hostname, 1)
            continue
        if etype == "task-sent":  # producers and retrying children publish task-sent unbuffered
            yield Message(hostname, "task.sent", _dumps(ev).encode(), hostname, 1)
            continue
        if etype in ("task-succeeded", "task-failed"):
            node.processed += 1
        node.buffer.append(ev)
        buffered.add(hostname)
        if len(node.buffer) >= BUFFER_LIMIT or rng.random() < FLUSH_P:
            yield _flush(node)
            buffered.discard(hostname)
    for hostname in sorted(buffered):
        node = nodes[hostname]
        if node.buffer:
            yield _flush(node)


def _flush(node: _Node) -> Message:
    batch, node.buffer = node.buffer, []
    return Message(node.hostname, "task.multi", _dumps(batch).encode(), node.hostname, len(batch))


# ------------------------------------------------------------------------------------------ encoders
def redis_envelope(msg: Message, rng: random.Random) -> bytes:
    """kombu's Redis transport message, exactly as the capture shows it."""
    return _dumps({
        "body": base64.b64encode(msg.body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": msg.hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": msg.routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        },
    }).encode()


def resp_publish(channel: bytes, payload: bytes) -> bytes:
    """A RESP ``PUBLISH channel payload`` command, ready to write to the socket."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)


def encode_redis(msgs: list[Message], db: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    prefix = f"/{db}.celeryev/".encode()
    return [resp_publish(prefix + m.routing_key.encode(), redis_envelope(m, rng)) for m in msgs]


def split_by_source(msgs: list[Message], n: int) -> list[list[int]]:
    """Indexes of ``msgs`` per publisher: each source keeps one connection (and its order), as in life."""
    sources = sorted({m.source for m in msgs})
    lane = {src: i % n for i, src in enumerate(sources)}
    out: list[list[int]] = [[] for _ in range(n)]
    for i, m in enumerate(msgs):
        out[lane[m.source]].append(i)
    return out
