"""Settings of one service process, read from the environment.

A service reads its database URL from ``DATABASE_URL_<SERVICE>`` (or ``DATABASE_URL`` when the
process runs a single service, as in a container), the base URLs of its peers from
``INTERNAL_URL_<SERVICE>``, public URLs from ``APP_URL_<SERVICE>``, and the shared secrets
``INTERNAL_SECRET`` and ``SESSION_SECRET``. A missing required setting stops start-up with a
message naming it. Which services exist is not known here: the caller says whether this one is
public and where the public services are in development.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

ENVIRONMENTS = ("dev", "test", "prod")
MIN_SECRET_LENGTH = 16


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
    session_cookie_secure: bool = False
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
    ) -> Settings:
        env = os.environ if environ is None else environ
        upper = service.upper()

        def required(*names: str) -> str:
            for name in names:
                value = env.get(name, "").strip()
                if value:
                    return value
            wanted = " or ".join(names)
            raise ConfigError(f"{service}: missing required setting {wanted}")

        rose_env = env.get("ROSE_ENV", "prod").strip() or "prod"
        if rose_env not in ENVIRONMENTS:
            allowed = ", ".join(ENVIRONMENTS)
            raise ConfigError(f"ROSE_ENV must be one of {allowed}, not {rose_env!r}")

        database_url = required(f"DATABASE_URL_{upper}", "DATABASE_URL")
        internal_secret = required("INTERNAL_SECRET")
        session_secret = required("SESSION_SECRET") if public else env.get("SESSION_SECRET")
        secrets = (("INTERNAL_SECRET", internal_secret), ("SESSION_SECRET", session_secret))
        for name, secret in secrets:
            if secret is not None and len(secret) < MIN_SECRET_LENGTH:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_LENGTH} characters long")

        internal_urls = _urls(env, "INTERNAL_URL_")
        app_urls = _urls(env, "APP_URL_")
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
            dev_app_urls=dict(dev_app_urls or {}),
            editor_user_ids=editor_user_ids,
            session_cookie_domain=env.get("SESSION_COOKIE_DOMAIN") or None,
            session_cookie_secure=env.get("SESSION_COOKIE_SECURE", "") in ("1", "true", "yes"),
            extra={key: value for key, value in env.items() if key.startswith(f"{upper}_")},
        )


def _urls(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    """``<PREFIX><SERVICE>=url`` variables as ``{service: url}``."""
    return {
        key.removeprefix(prefix).lower(): value.strip().rstrip("/")
        for key, value in env.items()
        if key.startswith(prefix) and value.strip()
    }
