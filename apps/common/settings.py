"""Settings of one service process, read from the environment.

A service reads its database URL from ``DATABASE_URL_<SERVICE>`` (or ``DATABASE_URL`` when the
process runs a single service, as in a container), the base URLs of its peers from
``INTERNAL_URL_<SERVICE>``, public URLs from ``APP_URL_<SERVICE>``, and the shared secrets
``INTERNAL_SECRET`` and ``SESSION_SECRET``. A missing required setting stops start-up with one
line naming every missing one. Which services exist is not known here: the caller says whether
this one is public and where the public services are in development.

Production (``ROSE_ENV=prod``, the default) has no development defaults: a public service needs
the public URL of every public service (``APP_URL_<SERVICE>``; pages link to them, orders hands
them to SumUp), and none of them may point at this machine (``localhost``, loopback).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

ENVIRONMENTS = ("dev", "test", "prod")
MIN_SECRET_LENGTH = 16
POOL_SIZE = 10
POOL_TIMEOUT = 10.0  # seconds


class ConfigError(RuntimeError):
    """A required setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    service: str
    public: bool
    env: str
    database_url: str
    internal_secret: str
    session_secret: str | None
    internal_urls: Mapping[str, str] = field(default_factory=dict)
    app_urls: Mapping[str, str] = field(default_factory=dict)
    # Where each public service is when APP_URL_<SERVICE> does not say (development ports), in
    # the order the navigation shows them.
    dev_app_urls: Mapping[str, str] = field(default_factory=dict)
    # Signed-in users allowed to edit page configs and attachments (blog, events admin).
    editor_user_ids: frozenset[int] = frozenset()
    # Cookie domain shared by every public service (".rose-ash.com" in production); None means
    # host-only, which on localhost is shared across ports.
    session_cookie_domain: str | None = None
    # Secure (HTTPS only) by default in production; SESSION_COOKIE_INSECURE=1 opts out (plain
    # HTTP setups only), SESSION_COOKIE_SECURE=1 opts in elsewhere.
    session_cookie_secure: bool = False
    # Also accepted during a rotation (the previous secret, or the next one while a rolling
    # deploy brings it everywhere); signing always uses the current one.
    internal_secrets_accepted: tuple[str, ...] = ()
    session_secrets_accepted: tuple[str, ...] = ()
    # Connections of the process's pool, all kept open: a pool that opened more under load and
    # closed them after cost PostgreSQL a process, a password exchange and an FDW connection per
    # new one (bench/README.md). A request that finds all busy waits at most the timeout, then
    # gets a 503.
    database_pool_size: int = POOL_SIZE
    database_pool_timeout: float = POOL_TIMEOUT
    # Open the pool's connections (and their FDW connections) at start-up, not on first use.
    database_pool_warm: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_dev(self) -> bool:
        return self.env == "dev"

    @property
    def public_urls(self) -> dict[str, str]:
        """Every public service's URL: its APP_URL_<SERVICE>, else its development URL."""
        urls = {name: self.app_urls.get(name, url) for name, url in self.dev_app_urls.items()}
        urls.update(self.app_urls)
        return urls

    @classmethod
    def from_env(
        cls,
        service: str,
        environ: Mapping[str, str] | None = None,
        *,
        public: bool,
        dev_app_urls: Mapping[str, str] | None = None,
        peers: Sequence[str] = (),
    ) -> Settings:
        """``peers``: the other services, whose ``INTERNAL_URL_<SERVICE>`` production requires
        (without one, the first call to that service would fail, long after start-up)."""
        env = os.environ if environ is None else environ
        upper = service.upper()
        missing: list[str] = []

        def required(*names: str) -> str:
            for name in names:
                value = env.get(name, "").strip()
                if value:
                    return value
            missing.append(" or ".join(names))
            return ""

        rose_env = env.get("ROSE_ENV", "prod").strip() or "prod"
        if rose_env not in ENVIRONMENTS:
            allowed = ", ".join(ENVIRONMENTS)
            raise ConfigError(f"ROSE_ENV must be one of {allowed}, not {rose_env!r}")
        production = rose_env == "prod"

        database_url = required(f"DATABASE_URL_{upper}", "DATABASE_URL")
        internal_secret = required("INTERNAL_SECRET")
        # A service no browser reaches needs none; given empty (compose blanks it for them),
        # it has none, as ``required`` reads an empty setting as missing.
        session_secret = (
            required("SESSION_SECRET") if public else env.get("SESSION_SECRET", "").strip() or None
        )
        app_urls = url_settings(env, "APP_URL_")
        if production and public:
            # No development URL stands in for a public one in production.
            for name in dev_app_urls or {}:
                if name not in app_urls:
                    missing.append(f"APP_URL_{name.upper()}")
        internal_urls = url_settings(env, "INTERNAL_URL_")
        if production:
            missing += [
                f"INTERNAL_URL_{peer.upper()}"
                for peer in peers
                if peer != service and peer not in internal_urls
            ]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            where = " (ROSE_ENV=prod: no development defaults)" if production else ""
            raise ConfigError(f"missing required setting{plural} {', '.join(missing)}{where}")
        if production:
            for name, url in sorted(app_urls.items()):
                if _is_this_machine(url):
                    raise ConfigError(
                        f"APP_URL_{name.upper()}={url} points at this machine; production "
                        "needs the public URL (ROSE_ENV=dev for a local stack)"
                    )
        internal_accepted = _list(env, "INTERNAL_SECRET_PREVIOUS")
        session_accepted = _list(env, "SESSION_SECRET_PREVIOUS")
        secrets = [("INTERNAL_SECRET", internal_secret), ("SESSION_SECRET", session_secret)]
        secrets += [("INTERNAL_SECRET_PREVIOUS", value) for value in internal_accepted]
        secrets += [("SESSION_SECRET_PREVIOUS", value) for value in session_accepted]
        for name, secret in secrets:
            if secret is not None and len(secret) < MIN_SECRET_LENGTH:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_LENGTH} characters long")
        # Read as every switch is (on or off, or named): ``on`` or ``TRUE`` was ignored.
        insecure = _switch(env, "SESSION_COOKIE_INSECURE")
        asked_secure = _switch(env, "SESSION_COOKIE_SECURE")
        secure = not insecure and (rose_env == "prod" or bool(asked_secure))

        pool_size = _number(env, int, f"DATABASE_POOL_SIZE_{upper}", "DATABASE_POOL_SIZE")
        pool_timeout = _number(
            env, float, f"DATABASE_POOL_TIMEOUT_{upper}", "DATABASE_POOL_TIMEOUT"
        )
        pool_warm = _switch(env, f"DATABASE_POOL_WARM_{upper}", "DATABASE_POOL_WARM")

        editors = env.get("ROSE_EDITOR_USER_IDS", "")
        try:
            editor_user_ids = frozenset(int(part) for part in editors.split(",") if part.strip())
        except ValueError:
            raise ConfigError(
                f"ROSE_EDITOR_USER_IDS must be a comma-separated list of user ids, not {editors!r}"
            ) from None
        return cls(
            service=service,
            public=public,
            env=rose_env,
            database_url=database_url,
            internal_secret=internal_secret,
            session_secret=session_secret,
            internal_urls=internal_urls,
            app_urls=app_urls,
            # Production never falls back to a development URL.
            dev_app_urls={} if production else dict(dev_app_urls or {}),
            editor_user_ids=editor_user_ids,
            session_cookie_domain=env.get("SESSION_COOKIE_DOMAIN") or None,
            session_cookie_secure=secure,
            internal_secrets_accepted=internal_accepted,
            session_secrets_accepted=session_accepted,
            database_pool_size=int(pool_size or POOL_SIZE),
            database_pool_timeout=float(pool_timeout or POOL_TIMEOUT),
            database_pool_warm=True if pool_warm is None else pool_warm,
            extra={key: value for key, value in env.items() if key.startswith(f"{upper}_")},
        )


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _switch(env: Mapping[str, str], *names: str) -> bool | None:
    """The first of ``names`` that is set, as on or off; None when none is set."""
    for name in names:
        text = env.get(name, "").strip().lower()
        if not text:
            continue
        if text in _ON:
            return True
        if text in _OFF:
            return False
        raise ConfigError(f"{name} must be one of {', '.join(_ON + _OFF)}, not {env[name]!r}")
    return None


def _number(env: Mapping[str, str], kind: type[int] | type[float], *names: str) -> float | None:
    """The first of ``names`` that is set, as a positive ``kind``; None when none is set."""
    for name in names:
        text = env.get(name, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:  # NaN and infinity too
            what = "a whole number" if kind is int else "a number of seconds"
            raise ConfigError(f"{name} must be {what} above zero, not {text!r}")
        return value
    return None


def url_settings(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    """``<PREFIX><SERVICE>=url`` variables as ``{service: url}``, each an http(s) URL with a
    host: one without its scheme (``events:8000``) was taken as it was, and failed every call
    to it (or went to SumUp as a webhook address) long after start-up said all was well."""
    urls = {}
    for key, value in env.items():
        if not key.startswith(prefix) or not value.strip():
            continue
        url = value.strip()
        if not _is_http_url(url):
            ascii_only = "" if url.isascii() else " (a host name in its xn-- form: IDNA)"
            raise ConfigError(
                f"{key} must be an http:// or https:// URL with a host{ascii_only}, not {url!r}"
            )
        urls[key.removeprefix(prefix).lower()] = url.rstrip("/")
    return urls


# A host as a URL names it: a DNS name (IDNs in their xn-- form) or an IP address; the brackets
# of an IPv6 one urlsplit has taken off.
_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._~-]+)?")


def _is_http_url(url: str) -> bool:
    """An http(s) URL with a host, a port that is a port (if any), and no whitespace or other
    control character (which urlsplit keeps in the host or path, and which no header may
    carry). The services append paths to it: a query or fragment would swallow them."""
    if any(
        character.isspace() or ord(character) < 32 or ord(character) == 127 for character in url
    ):
        return False
    if "?" in url or "#" in url:
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not one)
    except ValueError:  # "http://[::1": an unclosed IPv6 address; a port out of range
        return False
    host = parts.hostname
    return (
        parts.scheme.lower() in ("http", "https")
        and bool(host)
        and _HOST.fullmatch(host or "") is not None
    )


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated setting as its non-empty parts."""
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def _is_this_machine(url: str) -> bool:
    """Whether a URL's host is this machine: ``localhost``, ``*.localhost`` or a loopback
    address (a URL SumUp or a visitor could never reach)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


Number = TypeVar("Number", int, float)


def setting_number(
    extra: Mapping[str, str],
    name: str,
    kind: Callable[[str], Number],
    default: Number,
    *,
    zero_allowed: bool = False,
) -> Number:
    """A service's own numeric setting (``extra``, its ``<SERVICE>_*`` variables): ``default``
    when unset, else a positive ``kind`` (or 0 too, with ``zero_allowed``) in ASCII digits
    (``int()`` would also read full-width ones), else a ConfigError naming it."""
    raw = extra.get(name)
    if raw is None or not raw.strip():
        return default
    wanted = "a number of 0 or more" if zero_allowed else "a positive number"
    try:
        if not raw.isascii():
            raise ValueError(raw)
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be {wanted}, not {raw!r}") from None
    if not (value >= 0 if zero_allowed else value > 0) or not math.isfinite(value):
        raise ConfigError(f"{name} must be {wanted}, not {raw!r}")
    return value
