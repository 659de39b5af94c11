"""What the nameless task events do to a task: task-started opens the oldest received attempt,
task-retried and a requeued task-rejected close the oldest open one, task-succeeded, task-failed,
task-revoked and a dropped task-rejected end the task. Each handler reads its row of ``rules.RULES``.

Hot path, not for reuse (with ``core``): plain functions of (state, uuid, live entry or None once the
task has ended, key, event, timestamp, now), looked up by event type in ``NAMELESS_HANDLERS``, so that
``Core.apply_many`` calls them directly; the state's dicts are read from the ``Core`` it binds them on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from exporter.labels import MAX_LABEL_BYTES
from exporter.state.core import Core
from exporter.state.entries import ATTEMPTS, RETRIES, STARTS, WORKER, Done, TaskEntry, take_started_attempt
from exporter.state.rules import COUNTER, DONE_BITS, DURATION, EXHAUSTED, NAMELESS, STAMP
from exporter.state.settings import MAX_STARTS

_Key = tuple[str, str]
_Ev = Mapping[str, Any]
_Rec = TaskEntry | None
Handler = Callable[[Core, str, _Rec, _Key, _Ev, float, float], None]

# Plain functions of (state, uuid, live record or None once finished, key, event, timestamp, now), each
# reading its row of RULES, bound here once.
_C_STARTED, _S_STARTED = COUNTER["task-started"], STAMP["task-started"]
_C_SUCCEEDED, _S_SUCCEEDED = COUNTER["task-succeeded"], STAMP["task-succeeded"]
_B_SUCCEEDED, _D_SUCCEEDED = DONE_BITS["task-succeeded"], DURATION["task-succeeded"]
_S_FAILED, _B_FAILED, _D_FAILED = STAMP["task-failed"], DONE_BITS["task-failed"], DURATION["task-failed"]
_S_RETRIED, _D_RETRIED = STAMP["task-retried"], DURATION["task-retried"]
_C_REJECTED, _B_REJECTED = COUNTER["task-rejected"], DONE_BITS["task-rejected"]
_C_REVOKED, _B_REVOKED = COUNTER["task-revoked"], DONE_BITS["task-revoked"]


def _task_started(st: Core, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float, now: float) -> None:
    assert rec is not None  # a task-started of a finished task is handled by _after_end
    st._tasks.move_to_end(uuid)
    starts = rec[STARTS]
    if ts in starts:
        st._ignore("duplicate")  # the same task-started twice
        return
    st.counters[key][_C_STARTED] += 1
    st._stamp(key, _S_STARTED, ts)
    attempts = rec[ATTEMPTS]
    if len(attempts) == 1:  # the usual case, take_started_attempt's answer without a call
        att, attempts = attempts[0], ()
    else:
        att, attempts = take_started_attempt(attempts)
    wait_ts = st._wait_ts
    if uuid in wait_ts and uuid not in st._waiting.retries and (att is None or att[0] >= 0):
        del wait_ts[uuid]  # WaitingTasks.started's answer for the common case, without the call
    elif uuid in wait_ts or st._waiting.sampled:
        st._waiting.started(uuid, att[0] if att is not None else None)
    if att is not None:
        enqueued = att[1] if att[1] is not None else att[3]
        if enqueued is not None:
            eta = att[2]
            if eta is not None and eta > enqueued:
                enqueued = eta
            st._observe_wait(key, ts - enqueued)
    if starts:
        adopted = st._adopted
        if adopted and adopted.get(uuid) == starts[-1]:  # the inventory's start of this very attempt
            del adopted[uuid]
            starts = (*starts[:-1], ts)
            st._run_starts.pop(uuid, None)  # re-dated below from the event's own start
        else:
            starts = (*starts, ts)
            if len(starts) > MAX_STARTS:
                starts = starts[1:]
            else:
                st.active[key] += 1
    else:
        starts = (ts,)
        st.active[key] += 1
    # The worker's name only ties the task to a worker record (never a label): kept raw when short, which
    # a sane node name always is; Workers keys its records by label_value(), the same string for those.
    host = ev.get("hostname")
    if host.__class__ is not str or len(host) > MAX_LABEL_BYTES:
        host = None
    worker = rec[WORKER]
    if worker is not None and worker != host:
        st._unrun(worker, uuid)
    if host is not None:
        running = st._running.get(host)
        if running is None:
            running = st._running[host] = {}
        running[uuid] = ts
        worker_rec = st.workers.get(host)
        if worker_rec is not None:  # the starts its heartbeats' processed is compared with
            worker_rec.task_events += 1
    run = st._run_starts
    if uuid not in run and len(run) < st._stall_cap:
        run[uuid] = starts[0]
    else:
        st._run_ages.start(uuid, starts[0])
    st._tasks[uuid] = (key, attempts, starts, rec[RETRIES], host, now, None)


def _runtime(value: Any) -> float | None:
    if value.__class__ is float:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # decode refuses these; a direct caller may not have
            return None
    return None


def _task_succeeded(st: Core, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float, now: float) -> None:
    st.counters[key][_C_SUCCEEDED] += 1
    st._stamp(key, _S_SUCCEEDED, ts)
    runtime = ev.get("runtime")
    if runtime.__class__ is not float:
        runtime = _runtime(runtime)
    starts = rec[STARTS] if rec is not None else ()
    if runtime is not None:
        st._observe_duration(key, _D_SUCCEEDED, runtime)
    elif starts:
        st._observe_duration(key, _D_SUCCEEDED, ts - starts[-1])  # the final attempt is the newest
    if rec is not None:
        st._finish(uuid, rec, key, _B_SUCCEEDED, ts)


def _task_failed(st: Core, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float, now: float) -> None:
    st._count_by_label(st.failed, key, st._exception(ev.get("exception"), ev.get("traceback")))
    st._stamp(key, _S_FAILED, ts)
    if rec is not None:
        if rec[RETRIES] >= 1:
            st.counters[key][EXHAUSTED] += 1
        if rec[STARTS]:
            st._observe_duration(key, _D_FAILED, ts - rec[STARTS][-1])
        st._finish(uuid, rec, key, _B_FAILED, ts)


def _task_retried(st: Core, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float, now: float) -> None:
    st._count_by_label(st.retried, key, st._exception(ev.get("exception"), ev.get("traceback")))
    st._stamp(key, _S_RETRIED, ts)
    if rec is None:  # after the task's end: the attempt it closes was left open in the finished memory
        done = st._finished.get(uuid)
        if done is not None and len(done[2]) > 1:  # the last start is the final attempt's
            st._observe_duration(key, _D_RETRIED, ts - done[2][0])
            st._finished.put(uuid, (done[0], done[1], done[2][1:], done[3]))
        return
    st._tasks.move_to_end(uuid)
    start, starts = _take_start(st, uuid, rec, key)
    if start is not None:
        st._observe_duration(key, _D_RETRIED, ts - start)
    st._tasks[uuid] = (key, rec[ATTEMPTS], starts, rec[RETRIES], rec[WORKER] if starts else None, now, None)


def _task_rejected(st: Core, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float, now: float) -> None:
    st.counters[key][_C_REJECTED] += 1
    if rec is None:
        return
    if ev.get("requeue") is False:  # dropped (or dead-lettered): this delivery is over
        st._finish(uuid, rec, key, _B_REJECTED, ts)
        return
    # Requeued: the attempt is over, the task is not; the message comes back with a task-received.
    st._tasks.move_to_end(uuid)
    _, starts = _take_start(st, uuid, rec, key)
    st._tasks[uuid] = (key, rec[ATTEMPTS], starts, rec[RETRIES], rec[WORKER] if starts else None, now, None)


def _task_revoked(st: Core, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float, now: float) -> None:
    if ev.get("expired") is True:
        st._count_by_label(st.revoked, key, "expired")
    elif ev.get("terminated") is True:
        st._count_by_label(st.revoked, key, "terminated")
    else:
        st.counters[key][_C_REVOKED] += 1
    if rec is not None:
        st._finish(uuid, rec, key, _B_REVOKED, ts)


NAMELESS_HANDLERS: dict[str, Handler] = {
    "task-started": _task_started,
    "task-succeeded": _task_succeeded,
    "task-failed": _task_failed,
    "task-retried": _task_retried,
    "task-rejected": _task_rejected,
    "task-revoked": _task_revoked,
}
assert set(NAMELESS_HANDLERS) == set(NAMELESS)


def after_end(st: Core, uuid: str, done: Done, ev: _Ev, ts: float, now: float) -> None:
    """An event of a finished task: a repeat changes nothing but a self-metric, a late one of an
    earlier attempt (or a contradicting outcome) counts under the task's name."""
    etype = ev["type"]
    key, bits, starts, end = done
    if etype == "task-started":
        if ts in starts:
            st._ignore("duplicate")
        elif ts > end:  # no new delivery (that opens with task-received) started it
            st._ignore("after_terminal")
            st._workers.count_starts(ev.get("hostname"), 1)  # the worker did accept it
        else:  # an earlier attempt's, overtaken by the end: left open for its late task-retried
            st._workers.count_starts(ev.get("hostname"), 1)
            st.counters[key][_C_STARTED] += 1
            st._stamp(key, _S_STARTED, ts)
            st._finished.put(uuid, (key, bits, (ts, *starts), end))
        return
    bit = DONE_BITS.get(etype, 0)
    if bits & bit:
        st._ignore("duplicate")  # a redelivered or repeated terminal event
        return
    if bit:
        st._finished.put(uuid, (key, bits | bit, starts, end))
    NAMELESS_HANDLERS[etype](st, uuid, None, key, ev, ts, now)


def _take_start(st: Core, uuid: str, rec: TaskEntry, key: _Key) -> tuple[float | None, tuple[float, ...]]:
    """Close the oldest open attempt (a task-retried or task-rejected ends it)."""
    starts = rec[STARTS]
    if not starts:
        return None, starts
    st.active[key] -= 1
    if len(starts) == 1 and rec[WORKER] is not None:
        st._unrun(rec[WORKER], uuid)
    st._run_ages.next_attempt(uuid, starts[1] if len(starts) > 1 else None)
    return starts[0], starts[1:]
