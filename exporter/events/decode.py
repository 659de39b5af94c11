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
from collections.abc import Callable
from typing import Any

from celery.utils.time import utcoffset as _local_utcoffset

from exporter.state.settings import SENT_AT


def _pick_orjson() -> Callable[[str | bytes], Any] | None:
    """orjson's loads if a safe version is installed: about 3x the json module's speed on event bodies.
    Before 3.9.15 its loads had no nesting limit (CVE-2024-27454): a deeply nested message from anyone
    who can publish on the event channel crashed the process, so older versions are not used."""
    try:
        import orjson
    except ImportError:
        return None
    try:
        version = tuple(int(part) for part in orjson.__version__.split(".")[:3])
    except (AttributeError, ValueError):
        return None
    return orjson.loads if version >= (3, 9, 15) else None


_orjson_loads = _pick_orjson()

# Reasons, the label values of celery_exporter_events_invalid_total.
MALFORMED_ENVELOPE = "malformed_envelope"
UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
UNSUPPORTED_ENCODING = "unsupported_encoding"
BAD_BASE64 = "bad_base64"
BAD_JSON = "bad_json"
NOT_AN_EVENT = "not_an_event"
MISSING_TYPE = "missing_type"
BAD_TIMESTAMP = "bad_timestamp"
BAD_NUMBER = "bad_number"
REASONS = (
    MALFORMED_ENVELOPE,
    UNSUPPORTED_CONTENT_TYPE,
    UNSUPPORTED_ENCODING,
    BAD_BASE64,
    BAD_JSON,
    NOT_AN_EVENT,
    MISSING_TYPE,
    BAD_TIMESTAMP,
    BAD_NUMBER,
)

JSON_CONTENT_TYPES = frozenset({"application/json", "application/x-json"})
UTF8 = frozenset({"utf-8", "utf8", "UTF-8"})
MAX_TYPE_LEN = 64
# Events further in the future than this (seconds, against the exporter's clock) are refused: a
# far-future timestamp is not a clock running fast but a broken or hostile sender.
MAX_FUTURE_SKEW = 86_400.0
# Events stamped further ahead than this (a sender whose clock runs fast) are applied with the time they
# arrived instead, and counted (``Decoded.clamped``): an event can only arrive after it was sent, so no
# timestamp the exporter serves (celery_exporter_last_event_timestamp_seconds, a worker's last heartbeat,
# a task's last event) runs ahead of its own clock by more than this. One worker 23 hours ahead would
# otherwise hide an events-stopped alert for 23 hours. Celery warns from 16 s of heartbeat drift. The
# sender's own (offset-adjusted) value stays in the event under ``SENT_AT``, for a clock-skew check.
FUTURE_SKEW = 30.0

# Numeric fields the state turns into floats or compares: an integer beyond this (JSON has no limit, and
# the json module parses a 400-digit integer exactly) is refused with the whole event, before any counter
# moves, instead of raising OverflowError half-way through applying it. ``runtime`` is the exception: it
# only feeds the duration histogram, so such a runtime is dropped and the event kept (the state then
# times the task from its own events, as for an Inf, NaN, negative or text runtime); refusing a
# task-succeeded whole would leave its task active until --task-max-age and its success uncounted.
_NUMERIC_FIELDS = ("retries", "active", "utcoffset")
_MAX_INT = 2**63

# The exporter's own offset, read once: events carry the sender's, and Celery adjusts by the difference.
LOCAL_UTCOFFSET: float = _local_utcoffset()

_json_loads: Callable[[str | bytes], Any] = json.loads
_isfinite = math.isfinite
_a2b = binascii.a2b_base64
_BinasciiError = binascii.Error
# kombu's Redis transport always writes the envelope as json.dumps({"body": ..., ...}): the body comes first.
_ENVELOPE_HEAD = b'{"body": "'
_HEAD_LEN = len(_ENVELOPE_HEAD)


def _loads(raw: str | bytes) -> Any:
    """``json.loads``, through orjson when a safe version is installed. orjson accepts a subset of what
    the json module does (no NaN/Infinity, no integers past 64 bits, no BOM, no lone surrogates, at most
    1,024 levels of nesting) and returns the same objects for it; whatever it refuses is handed to the json
    module, so the outcome is the same with or without orjson. (The one exception: nesting between the
    json module's recursion limit, about 1,000 levels, and 1,024 is parsed by orjson, refused by json.)"""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(raw)
        except Exception:  # orjson.JSONDecodeError, or a type it does not take: let json decide
            pass
    return _json_loads(raw)


class Decoded:
    """The events of one message and the reasons for whatever in it was refused."""

    __slots__ = ("clamped", "events", "invalid")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.clamped = 0  # events whose timestamp ran too far ahead (FUTURE_SKEW): stamped on arrival


def decode_redis_payload(
    payload: bytes | str, now: float, here_offset: float | None = None, out: Decoded | None = None
) -> Decoded:
    """Decode one message received on the Redis ``celeryev`` pub/sub channel (into ``out`` if given)."""
    if out is None:
        out = Decoded()
    if payload.__class__ is bytes and payload.startswith(_ENVELOPE_HEAD) and _fast_envelope(
        payload, now, here_offset, out
    ):
        return out
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
            raw: bytes | str = _a2b(body, strict_mode=True)
        except (_BinasciiError, ValueError):
            out.invalid.append(BAD_BASE64)
            return out
    else:
        raw = body
    _decode_json_body(raw, now, here_offset, out)
    return out


def _fast_envelope(payload: bytes, now: float, here_offset: float | None, out: Decoded) -> bool:
    """The envelope as kombu writes it, without JSON-parsing its (large) base64 body.

    The body is sliced out and only the small rest of the envelope is parsed. This is taken only when it
    gives exactly what parsing the whole envelope would: a body of base64 characters alone (so no JSON
    escapes), one "body" key, a well-formed rest, ``body_encoding: base64``, and a valid JSON content type
    and encoding. Anything else returns False and the caller decodes the message the general way, which
    also finds the right reason for refusing it.
    """
    end = payload.find(b'"', _HEAD_LEN)
    if end < 0 or payload[end + 1:end + 2] != b",":
        return False
    try:
        rest = _loads(b"{" + payload[end + 2:])
    except (ValueError, TypeError, RecursionError):
        return False
    if not rest or rest.__class__ is not dict or "body" in rest:
        return False
    props = rest.get("properties")
    if (
        props.__class__ is not dict
        or props.get("body_encoding") != "base64"
        or rest.get("content-type") not in JSON_CONTENT_TYPES
        or rest.get("content-encoding", "utf-8") not in UTF8
    ):
        return False
    try:
        raw = _a2b(payload[_HEAD_LEN:end], strict_mode=True)
    except (_BinasciiError, ValueError):
        return False
    _decode_json_body(raw, now, here_offset, out)
    return True


def decode_amqp_body(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    now: float,
    here_offset: float | None = None,
    out: Decoded | None = None,
) -> Decoded:
    """Decode one message consumed from the ``celeryev`` exchange over AMQP (into ``out`` if given)."""
    if out is None:
        out = Decoded()
    if content_type not in JSON_CONTENT_TYPES:
        out.invalid.append(UNSUPPORTED_CONTENT_TYPE)
        return out
    if content_encoding is not None and content_encoding not in UTF8:
        out.invalid.append(UNSUPPORTED_ENCODING)
        return out
    _decode_json_body(body, now, here_offset, out)
    return out


def decode_event_objects(
    obj: Any, now: float, here_offset: float | None = None, out: Decoded | None = None
) -> Decoded:
    """Validate an already-deserialised body (the kombu fallback path hands us these)."""
    if out is None:
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
    # The hottest loop of the exporter: one pass per event, no call unless something needs fixing.
    events = obj if obj.__class__ is list else (obj,) if obj.__class__ is dict else None
    if events is None:
        if isinstance(obj, list):
            events = obj
        else:
            _one(obj, now, here_offset, out)
            return
    append = out.events.append
    latest = now + FUTURE_SKEW
    here = LOCAL_UTCOFFSET if here_offset is None else here_offset
    for ev in events:
        if ev.__class__ is dict:
            etype = ev.get("type")
            ts = ev.get("timestamp")
            offset = ev.get("utcoffset")
            if (
                etype.__class__ is str
                and 0 < len(etype) <= MAX_TYPE_LEN
                and ts.__class__ is float
                and (offset is None or (offset.__class__ is float and offset == here))  # nothing to adjust
                and 0.0 <= ts <= latest  # also False for NaN; +-Inf is beyond latest or below 0
            ):
                if "runtime" not in ev:  # the common case, tested without a call
                    append(ev)
                    continue
                runtime = ev["runtime"]  # the one number a float() is taken of: ints go the slow way
                if runtime is None or runtime.__class__ is float:
                    append(ev)
                    continue
        _one(ev, now, here_offset, out)


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
    runtime = ev.get("runtime")
    if runtime.__class__ is int and not -_MAX_INT < runtime < _MAX_INT:
        del ev["runtime"]
    for field in _NUMERIC_FIELDS:
        value = ev.get(field)
        if value.__class__ is int and not -_MAX_INT < value < _MAX_INT:
            out.invalid.append(BAD_NUMBER)
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
    if ts > now + FUTURE_SKEW:
        ev[SENT_AT] = ts  # what the sender wrote: the workers room reads a clock's skew from it
        ts = now
        out.clamped += 1
    ev["timestamp"] = ts
    out.events.append(ev)
