"""What a check says: ``Status`` (ok, warning, problem, unknown = not yet known) and ``Result`` (the
status, the evidence, and the fix in one sentence). Leaf: the checks, the doctor, the status page and the
``celery_exporter_check_status`` collector all speak it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.Enum):
    """A check's verdict; ``value`` is what ``celery_exporter_check_status`` reports."""

    UNKNOWN = -1
    OK = 0
    WARNING = 1
    PROBLEM = 2

    @property
    def label(self) -> str:
        return "not yet known" if self is Status.UNKNOWN else self.name.lower()


@dataclass(frozen=True)
class Result:
    check: str  # the check's name: the ``check`` label, the doctor's and the docs' heading
    status: Status
    summary: str  # one sentence: what was found
    evidence: tuple[str, ...] = ()  # which workers, which queues, the numbers
    fix: str = ""  # one sentence naming the exact setting or command ("" when nothing to fix)
    details: dict[str, Any] = field(default_factory=dict)  # machine-readable evidence for --output json

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status.label, "value": self.status.value,
                "summary": self.summary, "evidence": list(self.evidence), "fix": self.fix,
                "details": self.details}


ORDER = (Status.PROBLEM, Status.WARNING, Status.UNKNOWN, Status.OK)  # how the doctor groups them


def worst(results: list[Result]) -> Status:
    """PROBLEM if any check is a problem, else WARNING if any is one, else OK (unknowns do not count)."""
    statuses = {r.status for r in results}
    for status in (Status.PROBLEM, Status.WARNING):
        if status in statuses:
            return status
    return Status.OK
