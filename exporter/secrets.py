"""The one place that redacts secrets: broker and management URLs, and free text that may hold them.

Every log line (``logs.py``), stream and poll error (``brokers/``), ``Config.__repr__`` and configuration
error goes through these functions, so a password has one rule to escape, not four.

URLs are not parsed with ``urlsplit`` alone: a password written without percent-encoding may hold ``/``,
``#``, ``?``, ``@`` or ``;`` (``redis://:2024/pw@host/0``), and a non-numeric port makes ``urlsplit``
raise. The rule here is deliberately greedy: everything between ``scheme://`` and the *last* ``@`` of
the URL is userinfo, and everything in it after the first ``:`` is password. Over-redacting a host name in
a strange URL is harmless; showing part of a password is not. Query parameters named like a secret
(``?password=``, ``?token=``...) are masked too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.\-]*://"
# Failover lists (``sentinel://:pw@h1;sentinel://:pw@h2``) split only where a new URL starts, so a ``;``
# inside a password does not cut it in two.
_NEXT_URL = re.compile(r";(?=\s*" + _SCHEME + ")")
_STARTS_URL = re.compile(r"\s*(" + _SCHEME + ")")
# Query (or free-text ``key=value``) parameters whose value is a secret.
_SECRET_PARAM = re.compile(
    r"(?i)(\b[\w.\-]*(?:password|passwd|pwd|secret|token|api_?key|access_?key)[\w.\-]*=)[^&#;\s'\"]*"
)
# A URL inside free text: up to whitespace or a quote/bracket that ends it.
_URL_IN_TEXT = re.compile(_SCHEME + r"[^\s'\"<>]+")


def _split_urls(url: str) -> list[str]:
    return _NEXT_URL.split(url)


def _userinfo(one: str) -> tuple[int, int] | None:
    """``(start, end)`` of the userinfo of one URL (without the ``@``), or None when it has none."""
    match = _STARTS_URL.match(one)
    if match is None:
        return None
    start = match.end()
    at = one.rfind("@")
    if at < start:
        return None
    return start, at


def redact_url(url: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:***@host/0``, for every URL of a ``;`` failover list,
    whatever the password holds; ``?password=x`` -> ``?password=***``. The user name stays visible."""
    parts = []
    for one in _split_urls(url):
        span = _userinfo(one)
        if span is not None:
            start, at = span
            user, colon, _password = one[start:at].partition(":")
            shown = f"{user}:{MASK}" if colon else user
            one = one[:start] + shown + one[at:]
        parts.append(_SECRET_PARAM.sub(lambda m: m.group(1) + MASK, one))
    return ";".join(parts)


def url_secrets(url: str) -> tuple[str, ...]:
    """Every password in a (possibly ``;``-separated) URL, as written and percent-decoded, for masking
    in messages a driver builds itself (it may quote the decoded password without the URL)."""
    out: list[str] = []
    for one in _split_urls(url):
        span = _userinfo(one)
        if span is not None:
            _user, colon, password = one[span[0]:span[1]].partition(":")
            if colon:
                out.append(password)
        out.extend(m.group(0)[len(m.group(1)):] for m in _SECRET_PARAM.finditer(one))
    found = [s for raw in out for s in (raw, unquote(raw)) if s]
    return tuple(dict.fromkeys(found))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it redacted, every ``password=...``-like pair masked and every known
    secret (``url_secrets`` of the configured URLs, a sentinel password...) replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):  # longest first: no leftovers
        text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)


def describe_error(exc: BaseException, secrets: Iterable[str] = (), limit: int = 500) -> str:
    """``Type: message`` of an exception, redacted, at most ``limit`` characters (one log line)."""
    name = type(exc).__name__
    return redact_text(f"{name}: {str(exc) or name}", secrets)[:limit]


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def yaml_error(exc: Exception) -> str:
    """What went wrong in a YAML file, without its content: PyYAML's ``str(exc)`` quotes the offending
    line (an inline password, a bcrypt hash), and even its ``problem`` may quote a token, so only the
    problem's wording (quoted parts removed) and the line and column are kept."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = _QUOTED.sub("(…)", str(getattr(exc, "problem", None) or "parse error"))
    return f"{problem}{where}"
