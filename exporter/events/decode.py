"""Pure decoding of Celery event messages into validated event dicts.

Three shapes reach us:

* Redis pub/sub: kombu's JSON envelope ``{"body": <base64>, "content-type": ..., "properties":
  {"body_encoding": "base64", ...}}`` published on ``/{db}.celeryev/<routing key>``;
* AMQP: the raw body with ``content_type``/``content_encoding`` message properties;
* either carries one event (a JSON object) or a ``task.multi`` batch (a JSON list of events).

Only JSON is ever decoded; a pickle, yaml or msgpack body is refused by content type before its bytes are
looked at. Nothing here raises on bad input: every problem becomes a reason string that the caller
counts in ``celery_exporter_events_invalid_total{reason}``.
"""

from __future__ import annotations

import binascii
import json
import math
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from celery.utils.time import utcoffset as _local_utcoffset

# Reasons, the label values of celery_exporter_events_invalid_total.
MALFORMED_ENVELOPE = "malformed_envelope"
UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
UNSUPPORTED_ENCODING = "unsupported_encoding"
BAD_BASE64 = "bad_base64"
BAD_JSON = "bad_json"
NOT_AN_EVENT = "not_an_event"
MISSING_TYPE = "missing_type"
BAD_TIMESTAMP = "bad_timestamp"
REASONS = (
    MALFORMED_ENVELOPE,
    UNSUPPORTED_CONTENT_TYPE,
    UNSUPPORTED_ENCODING,
    BAD_BASE64,
    BAD_JSON,
    NOT_AN_EVENT,
    MISSING_TYPE,
    BAD_TIMESTAMP,
)

JSON_CONTENT_TYPES = frozenset({"application/json", "application/x-json"})
UTF8 = frozenset({"utf-8", "utf8", "UTF-8"})
MAX_TYPE_LEN = 64
# Events further in the future than this (seconds, against the exporter's clock) are refused: a
# far-future timestamp would pin celery_exporter_last_event_timestamp_seconds for good.
MAX_FUTURE_SKEW = 86_400.0

# The exporter's own offset, read once: events carry the sender's, and Celery adjusts by the difference.
LOCAL_UTCOFFSET: float = _local_utcoffset()

_loads: Callable[[str | bytes], Any] = json.loads
_isfinite = math.isfinite


class Decoded:
    """The events of one message and the reasons for whatever in it was refused."""

    __slots__ = ("events", "invalid")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.invalid: list[str] = []


def decode_redis_payload(
    payload: bytes | str, now: float, here_offset: float | None = None
) -> Decoded:
    """Decode one message received on the Redis ``celeryev`` pub/sub channel."""
    out = Decoded()
    try:
        envelope = _loads(payload)
    except (ValueError, TypeError, RecursionError):
        out.invalid.append(BAD_JSON)
        return out
    if not isinstance(envelope, dict):
        out.invalid.append(MALFORMED_ENVELOPE)
        return out
    body = envelope.get("body")
    props = envelope.get("properties")
    if not isinstance(body, str) or (props is not None and not isinstance(props, dict)):
        out.invalid.append(MALFORMED_ENVELOPE)
        return out
    ctype = envelope.get("content-type")
    if ctype not in JSON_CONTENT_TYPES:
        out.invalid.append(UNSUPPORTED_CONTENT_TYPE)
        return out
    cenc = envelope.get("content-encoding", "utf-8")
    if cenc not in UTF8:
        out.invalid.append(UNSUPPORTED_ENCODING)
        return out
    if props and props.get("body_encoding") == "base64":
        try:
            raw: bytes | str = b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            out.invalid.append(BAD_BASE64)
            return out
    else:
        raw = body
    _decode_json_body(raw, now, here_offset, out)
    return out


def decode_amqp_body(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    now: float,
    here_offset: float | None = None,
) -> Decoded:
    """Decode one message consumed from the ``celeryev`` exchange over AMQP."""
    out = Decoded()
    if content_type not in JSON_CONTENT_TYPES:
        out.invalid.append(UNSUPPORTED_CONTENT_TYPE)
        return out
    if content_encoding is not None and content_encoding not in UTF8:
        out.invalid.append(UNSUPPORTED_ENCODING)
        return out
    _decode_json_body(body, now, here_offset, out)
    return out


def decode_event_objects(obj: Any, now: float, here_offset: float | None = None) -> Decoded:
    """Validate an already-deserialised body (the kombu fallback path hands us these)."""
    out = Decoded()
    _collect(obj, now, here_offset, out)
    return out


def _decode_json_body(raw: bytes | str, now: float, here_offset: float | None, out: Decoded) -> None:
    try:
        obj = _loads(raw)
    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        out.invalid.append(BAD_JSON)
        return
    _collect(obj, now, here_offset, out)


def _collect(obj: Any, now: float, here_offset: float | None, out: Decoded) -> None:
    if isinstance(obj, list):  # task.multi: a batch of events
        for item in obj:
            _one(item, now, here_offset, out)
    else:
        _one(obj, now, here_offset, out)


def _one(ev: Any, now: float, here_offset: float | None, out: Decoded) -> None:
    if not isinstance(ev, dict):
        out.invalid.append(NOT_AN_EVENT)
        return
    etype = ev.get("type")
    if not isinstance(etype, str) or not etype or len(etype) > MAX_TYPE_LEN:
        out.invalid.append(MISSING_TYPE)
        return
    ts = ev.get("timestamp")
    if ts.__class__ is not float:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            out.invalid.append(BAD_TIMESTAMP)
            return
        try:
            ts = float(ts)
        except OverflowError:  # a JSON integer beyond float range
            out.invalid.append(BAD_TIMESTAMP)
            return
    offset = ev.get("utcoffset")
    if offset is not None and isinstance(offset, (int, float)) and not isinstance(offset, bool):
        # Celery's own EventReceiver makes this adjustment (celery.utils.time.adjust_timestamp), so a
        # worker whose zone differs from ours lands on the same time line as the fallback path.
        here = LOCAL_UTCOFFSET if here_offset is None else here_offset
        if offset != here and -24 <= offset <= 24:
            ts = ts - (offset - here) * 3600
    if not _isfinite(ts) or ts < 0 or ts > now + MAX_FUTURE_SKEW:
        out.invalid.append(BAD_TIMESTAMP)
        return
    ev["timestamp"] = ts
    out.events.append(ev)
