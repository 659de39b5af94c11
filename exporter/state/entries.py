"""The task table's entries and the finished-task memory: the layout of an entry (a flat tuple per task
uuid), the helpers that edit its pending attempts, and ``FinishedTasks``, the bounded memory of tasks that
ended (name, queue, terminal bits, open attempts), for their late and repeated events.
"""

from __future__ import annotations

from typing import Any

from exporter.state.settings import MAX_PENDING_ATTEMPTS

# The task table maps a task uuid to an entry, what we remember about the task between its events:
#     (key, attempts, starts, retries, worker, touched, held)
# ``starts`` holds the timestamps of the task-started events whose attempt has not ended yet, oldest
# first (normally zero or one; two when a retry's task-started overtakes the task-retried of the attempt
# before it); each one counts in celery_tasks_active. ``worker`` is the (sanitised) hostname of the
# latest task-started, so a lost worker's tasks can be found. ``held`` is None for a task seen named;
# for a task whose first events came without a name it holds those events (see held.Held).
# ``attempts`` holds the attempts published or received but not yet started, oldest first, each as
# ``(retries, sent_ts, eta_ts, received_ts)``. Events of consecutive attempts arrive out of order (a
# retry's task-sent and task-received often overtake the task-started of the attempt that retried, because
# the parent and child processes publish on different connections), so task-started is matched to the
# oldest received attempt rather than to whatever came last.
#
# Entries are tuples of atomic values, replaced rather than mutated, because the cyclic garbage collector
# stops tracking such tuples: a full table (100,000 tasks by default) then adds nothing to its work. As
# objects and lists, a full table made each full collection walk ~250,000 containers, a pause of ~200 ms
# (on the benchmark machine) that stalled ingest and scrapes alike every few seconds.
K, ATTEMPTS, STARTS, RETRIES, WORKER, TOUCHED, HELD = range(7)
TaskEntry = tuple[Any, ...]
Attempt = tuple[Any, Any, Any, Any]


def attempt_index(attempts: tuple[Attempt, ...], n: int) -> tuple[tuple[Attempt, ...], int]:
    """``attempts`` with an attempt ``n`` in it, and its index (-1 if adding it pushed it past the cap)."""
    for i, att in enumerate(attempts):
        if att[0] == n:
            return attempts, i
    new = (n, None, None, None)
    attempts = (*attempts, new)
    if len(attempts) > 1:
        attempts = tuple(sorted(attempts, key=_first))
        if len(attempts) > MAX_PENDING_ATTEMPTS:
            attempts = attempts[1:]
    for i, att in enumerate(attempts):
        if att is new:
            return attempts, i
    return attempts, -1


def replace_attempt(attempts: tuple[Attempt, ...], i: int, att: Attempt) -> tuple[Attempt, ...]:
    return (*attempts[:i], att, *attempts[i + 1:])


def take_started_attempt(attempts: tuple[Attempt, ...]) -> tuple[Attempt | None, tuple[Attempt, ...]]:
    """The attempt a task-started belongs to (the oldest one a worker has received) and the rest."""
    for i, att in enumerate(attempts):
        if att[3] is not None:
            return att, (*attempts[:i], *attempts[i + 1:])
    if attempts:
        return attempts[0], attempts[1:]
    return None, attempts


def retries_of(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _first(att: Attempt) -> Any:
    return att[0]


# A finished task, remembered: (key, terminal-event bits, starts, end timestamp). ``starts`` are the
# attempts' start times open at the end, the last one being the final attempt's (closed by the end): the
# others wait for their late task-retried. A task-started at one of these times is a repeat.
Done = tuple[Any, int, tuple[float, ...], float]


class _Generation:
    __slots__ = ("bits", "keys", "starts", "times")

    def __init__(self) -> None:
        # Parallel dicts of atomic values (and shared key tuples): a tuple per finished task would be
        # a new GC-tracked object surviving each collection; 20,000 of them made the event benchmark's
        # young-generation collections 8x as frequent and the state ~30% slower. Each dict written per
        # task costs about 0.1 µs an event (a growing table), so most tasks write two.
        self.keys: dict[str, Any] = {}
        # complex(end, start) for a task that ended with one attempt open (nearly all: a complex is one
        # untracked object for two floats); else the end, with the starts (none or several) in ``starts``.
        self.times: dict[str, complex | float] = {}
        self.starts: dict[str, tuple[float, ...]] = {}
        self.bits: dict[str, int] = {}  # only where not FinishedTasks.common


class FinishedTasks:
    """Bounded memory of recently finished tasks (uuid -> ``Done``): two generations, the older dropped
    whole when the younger fills half the size, so remembering a task costs a few dict stores."""

    __slots__ = ("common", "half", "old", "young")

    def __init__(self, size: int, common: int) -> None:
        self.half = max(1, size // 2)
        self.common = common  # the bits most tasks end with, not stored
        self.young = _Generation()
        self.old = _Generation()

    def get(self, uuid: str) -> Done | None:
        gen = self.young
        key = gen.keys.get(uuid)
        if key is None:
            gen = self.old
            key = gen.keys.get(uuid)
            if key is None:
                return None
        t = gen.times[uuid]
        bits = gen.bits.get(uuid, self.common)
        if t.__class__ is complex:
            return key, bits, (t.imag,), t.real
        return key, bits, gen.starts.get(uuid, ()), t  # type: ignore[return-value]

    def put(self, uuid: str, done: Done) -> None:
        """Remember ``uuid`` again (its bits or starts changed)."""
        key, bits, starts, end = done
        self.pop(uuid)
        self.remember(uuid, key, bits, starts, end)

    def remember(self, uuid: str, key: Any, bits: int, starts: tuple[float, ...], end: float) -> None:
        """Remember a task that just left the task table (so not remembered yet: else ``put``)."""
        young = self.young
        young.keys[uuid] = key
        if len(starts) == 1:
            young.times[uuid] = complex(end, starts[0])
        else:
            young.times[uuid] = end
            if starts:
                young.starts[uuid] = starts
        if bits != self.common:
            young.bits[uuid] = bits
        if len(young.keys) >= self.half:
            self.old, self.young = young, _Generation()

    def pop(self, uuid: str) -> None:
        for gen in (self.young, self.old):
            if gen.keys.pop(uuid, None) is not None:
                del gen.times[uuid]
                gen.starts.pop(uuid, None)
                gen.bits.pop(uuid, None)

    def __len__(self) -> int:
        return len(self.young.keys) + len(self.old.keys)
