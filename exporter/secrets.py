"""The one place that redacts secrets: broker and management URLs, and free text that may hold them.

Every log line (``logs.py``), stream and poll error (``brokers/``), ``Config.__repr__`` and configuration
error goes through these functions, so a password has one rule to escape, not four.

URLs are not parsed with ``urlsplit`` alone: a password written without percent-encoding may hold ``/``,
``#``, ``?``, ``@`` or ``;`` (``redis://:2024/pw@host/0``), and a non-numeric port makes ``urlsplit``
raise. The rule here is deliberately greedy: everything between ``scheme://`` and the *last* ``@`` of
the URL is userinfo, and everything in it after the first ``:`` is password. Over-redacting a host name in
a strange URL is harmless; showing part of a password is not. Query parameters named like a secret
(``?password=``, ``?token=``...) are masked too.

The same greedy reading decides which URLs are refused at start (``url_problem``): one whose password
holds an unencoded ``/``, ``?``, ``#``, ``;`` or ``@``-after-the-host would be read by kombu and redis-py
as a different host, port or database, and its password would end up in their error messages. Transport
options (``broker_transport_options``) are masked by key name (``redact_options``, ``option_secrets``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

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


# Keys of a transport-options mapping whose value is a secret (sentinel_kwargs.password, ...).
_SECRET_KEY = re.compile(r"(?i)(password|passwd|pwd|secret|token|api_?key|access_?key|credential)")


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


def url_problem(url: str) -> str | None:
    """Why ``url`` (or one URL of a ``;`` failover list) is malformed, in words that never quote it, or
    None. Refused: no ``scheme://``; an ``@`` after the host (a password holding an unencoded ``/``, ``?``
    or ``#``: ``redis://:2024/pw@host/0`` reads as port 2024 and a database named ``pw@host``); a ``;``
    that does not start another URL; a port that is not a number; a broken IPv6 literal."""
    for one in _split_urls(url.strip()):
        one = one.strip()
        if _STARTS_URL.match(one) is None:
            return "not a URL (expected scheme://host...; value not shown)"
        if ";" in one:
            return ("holds a ';' that does not start another URL: write a ';' in a password as %3B "
                    "(value not shown)")
        try:
            split = urlsplit(one)
            split.port  # noqa: B018  # raises for a port that is not a number or out of range
        except ValueError:
            return ("not a valid URL: the port is not a number from 0 to 65535, or the host is a broken "
                    "IPv6 literal; a password holding '/', '?', '#' or '@' must be percent-encoded "
                    "(%2F, %3F, %23, %40) (value not shown)")
        if "@" in split.path or "@" in split.query or "@" in split.fragment:
            return ("has an '@' after the host: a password holding '/', '?' or '#' must be percent-encoded "
                    "(%2F, %3F, %23), or the URL is read as another host, port or database "
                    "(value not shown)")
    return None


def broker_location(url: str) -> str:
    """``scheme://host:port`` of each URL of ``url`` (``;``-joined), no user, password, path or query:
    what the index page and the start-up line show. Never raises, whatever the URL holds."""
    shown = []
    for one in _split_urls(url.strip()):
        # Redacted first: the greedy userinfo rule finds the host even when a password holds '/' or '#'.
        one = redact_url(one.strip())
        try:
            split = urlsplit(one)
            port = split.port
        except ValueError:
            split, port = urlsplit(one.split("://", 1)[0] + "://"), None
        host = split.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        shown.append(f"{split.scheme}://{host}{f':{port}' if port else ''}")
    return ";".join(shown)


def redact_options(options: Any) -> Any:
    """A copy of a transport-options mapping with every secret-named key's value (at any depth:
    ``sentinel_kwargs.password``) replaced by ``***`` and every URL in a string value redacted."""
    if isinstance(options, Mapping):
        return {k: MASK if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact_options(v)
                for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact_options(v) for v in options)
    if isinstance(options, str):
        return redact_text(options)
    return options


def option_secrets(options: Any) -> tuple[str, ...]:
    """Every secret value a transport-options mapping holds, at any depth, to mask in messages a driver
    builds itself (redis-py's sentinel errors, say)."""
    out: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or bool(_SECRET_KEY.search(str(k))))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, secret)
        elif secret and value not in (None, "") and not isinstance(value, bool):
            out.append(str(value))

    walk(options, False)
    return tuple(dict.fromkeys(out))
