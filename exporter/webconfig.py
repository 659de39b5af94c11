"""The web config file (``--web-config-file``): TLS and basic auth for every HTTP endpoint, in the format
of Prometheus' exporter-toolkit, so a file written for node_exporter or Prometheus works here unchanged.

``load_web_config(path)`` reads and validates the whole file once, at start-up: unknown keys, unreadable
or mismatched certificate files, bad TLS versions and malformed bcrypt hashes raise ``ConfigError``
naming the key and the file, which the CLI turns into exit status 2. ``WebConfig.ssl_context()`` builds
the server ``SSLContext`` and ``WebConfig.authorizer()`` the check of an ``Authorization`` header.

What differs from exporter-toolkit, and why:

* ``cipher_suites``, ``curve_preferences`` and ``prefer_server_cipher_suites`` name Go constants with no
  reliable mapping onto OpenSSL's names; they are accepted and ignored (a warning says so) and OpenSSL's
  defaults apply, which already exclude weak suites. ``http2`` is ignored: the server speaks HTTP/1.1.
* ``client_allowed_sans``, ``rate_limit`` and ``client_auth_type: RequireAnyClientCert`` are refused
  rather than ignored: each promises a protection this server would not give.
* The file is read at start and on SIGHUP (``exporter.reload``), not per request as the toolkit does: a
  rotated certificate needs a SIGHUP or a restart.

Basic auth follows exporter-toolkit: an unknown user is checked against a decoy hash so response times do
not reveal which users exist; bcrypt runs one at a time (a flood of wrong passwords costs one core, not
all of them); and a successful check is cached, keyed by a keyed hash of the header, so Prometheus pays
the bcrypt cost once per credential rather than once per scrape. The cache is a bounded LRU and holds no
password or anything a password could be recovered from without the per-process key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import structlog
import yaml

from exporter.options import ConfigError
from exporter.secrets import yaml_error

log = structlog.get_logger("exporter.webconfig")

TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"})
TLS_KEYS = frozenset({
    "cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file", "client_auth_type",
    "client_allowed_sans", "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
    "curve_preferences",
})
TLS_IGNORED = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites")
HTTP_KEYS = frozenset({"http2", "headers"})
# exporter-toolkit allows exactly these response headers, and checks two of their values.
HEADER_NAMES = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "X-XSS-Protection",
                "Strict-Transport-Security")
HEADER_VALUES = {"X-Frame-Options": ("deny", "sameorigin"), "X-Content-Type-Options": ("nosniff",)}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    # Go's RequestClientCert asks for a certificate and never checks it; nothing here reads it either,
    # so not asking is the same protection.
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
BCRYPT_HASH = re.compile(rb"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
BCRYPT_MAX_PASSWORD = 72  # bcrypt only ever uses this many bytes; Go and htpasswd truncate silently
AUTH_CACHE_SIZE = 128


@dataclass(frozen=True)
class TLSSettings:
    """``tls_server_config``: file paths (resolved) or inline PEM for the certificate, key and client CA."""

    cert_file: str | None
    key_file: str | None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)
    client_ca_pem: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WebConfig:
    """A validated web config. ``users`` maps user names to bcrypt hashes."""

    path: str
    tls: TLSSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context (built and checked by ``load_web_config``), or None for HTTP."""
        return self.context

    def authorizer(self) -> Callable[[str | None], bool] | None:
        """A check of the ``Authorization`` header, or None when no users are configured."""
        return BasicAuth(self.users) if self.users else None

    def __repr__(self) -> str:  # the hashes are secrets too
        return f"WebConfig(path={self.path!r}, tls={self.tls!r}, users={sorted(self.users)!r})"


class BasicAuth:
    """``authorize(header) -> bool`` for ``Authorization: Basic ...`` against bcrypt hashes."""

    def __init__(self, users: Mapping[str, bytes], cache_size: int = AUTH_CACHE_SIZE) -> None:
        self._users = {u.encode(): h for u, h in users.items()}
        # Checked when the user does not exist, at the cost of the real hashes, so a wrong user name
        # takes as long as a wrong password and response times do not reveal who exists.
        cost = max((int(h[4:6]) for h in users.values()), default=10)
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def cached_ok(self, header: str | None) -> bool:
        """True if ``header`` was accepted before (no bcrypt needed); the HTTP server asks this on its
        event loop and runs ``__call__`` in a thread only when it is False."""
        if not header:
            return False
        digest = hmac.new(self._key, header.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
        with self._cache_lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return True
        return False

    def __call__(self, header: str | None) -> bool:
        if not header:
            return False
        if self.cached_ok(header):
            return True
        digest = hmac.new(self._key, header.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        with self._bcrypt_lock:
            try:
                ok = bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed or self._decoy)
            except ValueError:  # validated at load, so only a decoy surprise could land here
                ok = False
        if not ok or hashed is None:
            return False
        with self._cache_lock:
            self._cache[digest] = None
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True

    @property
    def cached(self) -> int:
        return len(self._cache)


def _parse_basic(header: str) -> tuple[bytes, bytes] | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


# ---------------------------------------------------------------- loading and validation
def load_web_config(path: str) -> WebConfig:
    """Read and validate an exporter-toolkit web config file. Raises ConfigError naming key and file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError("web_config_file", path, f"cannot read the file: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a password hash or a key.
        raise ConfigError("web_config_file", path, f"not valid YAML: {yaml_error(exc)}") from None
    data = {} if data is None else data
    _check_keys(data, TOP_KEYS, "", path)
    if data.get("rate_limit") is not None:
        raise _err(path, "rate_limit", "not supported by celery-exporter; rate-limit in a proxy instead")
    tls_raw = data.get("tls_server_config")
    tls = _tls_settings(tls_raw, path) if tls_raw else None
    users = _users(data.get("basic_auth_users"), path)
    headers = _headers(data.get("http_server_config"), path)
    # The context is built here so a bad certificate fails at start-up, not on the first connection.
    context = _build_context(tls, path) if tls is not None else None
    web = WebConfig(path=path, tls=tls, users=users, headers=headers, context=context)
    if web.users and tls is None:
        log.warning("basic auth without TLS: passwords cross the network in clear text", file=path)
    return web


def _err(path: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"web config key {key}", path, message)


def _check_keys(section: Any, allowed: frozenset[str], prefix: str, path: str) -> None:
    if not isinstance(section, dict):
        raise _err(path, prefix.rstrip(".") or "(top level)", "expected a mapping")
    for key in section:
        if key not in allowed:
            raise _err(path, f"{prefix}{key}", f"unknown key; known keys: {', '.join(sorted(allowed))}")


def _str_field(section: Mapping[str, Any], key: str, prefix: str, path: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _err(path, prefix + key, "expected a string")
    return value


def _file_field(section: Mapping[str, Any], key: str, prefix: str, path: str) -> str | None:
    value = _str_field(section, key, prefix, path)
    if value is None:
        return None
    # Relative paths are relative to the web config file, as in exporter-toolkit.
    resolved = Path(path).parent / value
    if not os.access(resolved, os.R_OK) or not resolved.is_file():
        raise _err(path, prefix + key, f"cannot read {value!r}")
    return str(resolved)


def _tls_settings(raw: Any, path: str) -> TLSSettings:
    prefix = "tls_server_config."
    _check_keys(raw, TLS_KEYS, prefix, path)
    for inline in ("cert", "key", "client_ca"):
        if raw.get(inline) and raw.get(inline + "_file"):
            raise _err(path, prefix + inline, f"give either {inline} or {inline}_file, not both")
    if raw.get("client_allowed_sans"):
        raise _err(path, prefix + "client_allowed_sans", "not supported by celery-exporter")
    ignored = [k for k in TLS_IGNORED if raw.get(k) not in (None, [], "")]
    if ignored:
        log.warning("web config keys ignored; OpenSSL defaults apply", keys=ignored, file=path)
    pem = {k: _str_field(raw, k, prefix, path) for k in ("cert", "key", "client_ca")}
    cert = _file_field(raw, "cert_file", prefix, path)
    key = _file_field(raw, "key_file", prefix, path)
    if cert is None and pem["cert"] is None:
        raise _err(path, prefix + "cert_file", "missing: TLS needs a certificate")
    if key is None and pem["key"] is None:
        raise _err(path, prefix + "key_file", "missing: TLS needs a private key")
    ca = _file_field(raw, "client_ca_file", prefix, path)
    auth_name = _str_field(raw, "client_auth_type", prefix, path) or "NoClientCert"
    if auth_name not in CLIENT_AUTH:
        hint = " (it accepts unverified certificates)" if auth_name == "RequireAnyClientCert" else ""
        raise _err(path, prefix + "client_auth_type",
                   f"unsupported value {auth_name!r}{hint}; use one of {', '.join(CLIENT_AUTH)}")
    auth = CLIENT_AUTH[auth_name]
    has_ca = ca is not None or pem["client_ca"] is not None
    if auth != ssl.CERT_NONE and not has_ca:
        raise _err(path, prefix + "client_ca_file", f"client_auth_type {auth_name} needs client_ca_file")
    if has_ca and auth == ssl.CERT_NONE:
        raise _err(path, prefix + "client_auth_type",
                   "client_ca_file is set but client_auth_type does not verify client certificates")
    versions = {}
    for key_name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _str_field(raw, key_name, prefix, path) or default
        if name not in TLS_VERSIONS:
            raise _err(path, prefix + key_name,
                       f"unknown TLS version {name!r}; use {', '.join(TLS_VERSIONS)}")
        versions[key_name] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise _err(path, prefix + "min_version", "is above max_version")
    return TLSSettings(cert, key, auth, ca, versions["min_version"], versions["max_version"],
                       pem["cert"], pem["key"], pem["client_ca"])


def _build_context(tls: TLSSettings, path: str) -> ssl.SSLContext:
    prefix = "tls_server_config."
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = tls.min_version
        ctx.maximum_version = tls.max_version
    except (ValueError, ssl.SSLError) as exc:
        raise _err(path, prefix + "min_version", f"not supported by this OpenSSL: {exc}") from None
    # ssl loads certificates and keys only from files: inline PEM goes to a private (0700) temporary
    # directory that is gone as soon as the context holds it.
    with tempfile.TemporaryDirectory(prefix="celery-exporter-") as tmp:
        def file_for(given: str | None, inline: str | None, name: str) -> str | None:
            if given is not None or inline is None:
                return given
            target = Path(tmp) / name
            target.write_text(inline, encoding="utf-8")
            return str(target)

        cert = file_for(tls.cert_file, tls.cert_pem, "cert.pem")
        key = file_for(tls.key_file, tls.key_pem, "key.pem")
        ca = file_for(tls.client_ca_file, tls.client_ca_pem, "ca.pem")
        try:
            # An encrypted key would make OpenSSL prompt on the terminal; refuse it instead.
            ctx.load_cert_chain(cert or "", key, password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise _err(path, prefix + "cert_file", "cannot load the certificate and key (not PEM, or they "
                       f"do not match): {exc.__class__.__name__}: {getattr(exc, 'reason', None) or exc}"
                       ) from None
        ctx.verify_mode = tls.client_auth
        if ca is not None:
            try:
                ctx.load_verify_locations(cafile=ca)
            except (ssl.SSLError, OSError) as exc:
                raise _err(path, prefix + "client_ca_file",
                           f"cannot load the CA certificates: {exc}") from None
    return ctx


def _no_passphrase() -> bytes:
    raise ssl.SSLError("the private key is encrypted; give an unencrypted key")


def _users(raw: Any, path: str) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _err(path, "basic_auth_users", "expected a mapping of user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        name = str(user)
        if not name or ":" in name:
            # "admin:hunter2" pasted as a key would be a password: not quoted.
            raise _err(path, "basic_auth_users", "a user name is empty or contains ':' (value not shown)")
        encoded = hashed.encode() if isinstance(hashed, str) else b""
        if not BCRYPT_HASH.match(encoded):
            # The value is a secret (or a password pasted by mistake): never echo it.
            raise _err(path, f"basic_auth_users.{name}",
                       "not a bcrypt hash ($2b$<cost>$...; value not shown)")
        users[name] = encoded
    return users


def _headers(raw: Any, path: str) -> dict[str, str]:
    if raw is None:
        return {}
    _check_keys(raw, HTTP_KEYS, "http_server_config.", path)
    http2 = raw.get("http2")
    if http2 is not None and not isinstance(http2, bool):
        raise _err(path, "http_server_config.http2", "expected true or false")
    headers = raw.get("headers") or {}
    prefix = "http_server_config.headers."
    _check_keys(headers, frozenset(HEADER_NAMES), prefix, path)
    out: dict[str, str] = {}
    for name, value in headers.items():
        if value is None or value == "":
            continue
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise _err(path, prefix + name, "expected a one-line string")
        allowed = HEADER_VALUES.get(name)
        if allowed and value.lower() not in allowed:
            raise _err(path, prefix + name, f"must be one of {', '.join(allowed)}")
        out[name] = value
    return out


def web_security(path: str | None) -> tuple[Any, Any, Any]:
    """The HTTP server's TLS context, authorizer and extra headers from a web config file (or none)."""
    if not path:
        return None, None, None
    web = load_web_config(path)
    return web.ssl_context(), web.authorizer(), web.headers
