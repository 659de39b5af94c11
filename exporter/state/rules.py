"""What each task event does to a task, as data (the way Celery's ``events/state.py`` keeps
``TASK_EVENT_TO_STATE`` and its merge rules): which plain counter it adds to, which newest-timestamp slot
it moves, which terminal bit it sets in the finished-task memory, what it does to the task's open
attempts and which duration histogram it observes. The handlers in ``core`` read these rows; the index
names below are also the layout the collectors read from a ``Snapshot``.
"""

from __future__ import annotations

from typing import NamedTuple

# Indexes into the per-(task_name, queue) counter list.
SENT, RECEIVED, STARTED, SUCCEEDED, REJECTED, REVOKED, EXHAUSTED = range(7)
N_COUNTERS = 7
# Indexes into the duration histograms per (task_name, queue), and their state label.
D_SUCCEEDED, D_FAILED, D_RETRIED = range(3)
DURATION_STATES = ("succeeded", "failed", "retried")
# Newest-timestamp slots per (task_name, queue) (celery_task_last_event_timestamp_seconds{state}).
STAMPED_STATES = ("sent", "started", "succeeded", "failed", "retried")
# celery_exporter_events_ignored_total{reason}
IGNORED_REASONS = ("duplicate", "after_terminal", "no_uuid")

# What an event does to the task's attempts.
NAMES = "names"  # carries the task's name: opens (or re-keys) its record, enqueues an attempt
OPENS = "opens"  # starts the oldest received attempt
CLOSES = "closes"  # ends the oldest open attempt; the task goes on (a retry, a requeue)
ENDS = "ends"  # ends the task (task-rejected only when not requeued)


class Rule(NamedTuple):
    counter: int | None  # plain counter +1 (None: counted by exception class instead)
    stamp: int | None  # slot in STAMPED_STATES moved to the event's timestamp
    done: int  # bit in the finished-task memory: a second event with the same bit is a duplicate
    attempt: str  # NAMES, OPENS, CLOSES or ENDS
    duration: int | None  # duration histogram observed (the attempt's run time)


RULES: dict[str, Rule] = {
    "task-sent": Rule(SENT, 0, 0, NAMES, None),
    "task-received": Rule(RECEIVED, None, 0, NAMES, None),
    "task-started": Rule(STARTED, 1, 0, OPENS, None),
    "task-succeeded": Rule(SUCCEEDED, 2, 1, ENDS, D_SUCCEEDED),
    "task-failed": Rule(None, 3, 2, ENDS, D_FAILED),  # +EXHAUSTED when the task had retried
    "task-retried": Rule(None, 4, 0, CLOSES, D_RETRIED),
    "task-rejected": Rule(REJECTED, None, 8, CLOSES, None),  # ENDS when requeue is False
    "task-revoked": Rule(REVOKED, None, 4, ENDS, None),  # terminated/expired counted by reason instead
}
# The table by column, for the handlers to bind once.
COUNTER = {etype: rule.counter for etype, rule in RULES.items() if rule.counter is not None}
STAMP = {etype: rule.stamp for etype, rule in RULES.items() if rule.stamp is not None}
DONE_BITS = {etype: rule.done for etype, rule in RULES.items() if rule.done}  # terminal events
DURATION = {etype: rule.duration for etype, rule in RULES.items() if rule.duration is not None}
# Events without a name: routed to their task's record (held until a name comes for a task never seen).
NAMELESS = tuple(etype for etype, rule in RULES.items() if rule.attempt != NAMES)
