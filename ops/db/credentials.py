"""Role passwords and shared secrets.

In development they are generated on first use and kept in a git-ignored file
(``.rose/credentials.json``, mode 0600). In production (``ROSE_ENV=prod``) nothing is generated:
every value comes from the environment (``ROSE_DB_PASSWORD_<ROLE>``, ``INTERNAL_SECRET``,
``SESSION_SECRET``, ``ROSE_DB_SUPERUSER_PASSWORD``) and a missing one is an error naming it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from apps.common.settings import ENVIRONMENTS, ConfigError
from apps.registry import SERVICES
from ops.db.manifest import load_edges
from ops.paths import rose_home


def _read_values(path: Path) -> dict[str, str]:
    """The file's passwords. A damaged file (a crash or a full disk while writing) is refused,
    never replaced: the cluster's passwords are in it."""
    try:
        values = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"{path} cannot be read ({exc}); it holds the cluster's passwords, so it is not "
            "replaced: restore it, or remove it and the embedded database (rose up --fresh)"
        ) from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise ConfigError(f"{path} is not a JSON object of passwords; restore or remove it")
    return values


def role_env_name(role: str) -> str:
    return f"ROSE_DB_PASSWORD_{role.upper()}"


def rose_environment() -> str:
    """``ROSE_ENV`` as rose's commands read it: ``dev`` when unset, else one of the services'
    environments. Anything else is refused: ``production`` was read as development, and
    provisioning then set every role's password to new generated ones."""
    value = os.environ.get("ROSE_ENV", "").strip() or "dev"
    if value not in ENVIRONMENTS:
        raise ConfigError(f"ROSE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {value!r}")
    return value


class Credentials:
    def __init__(
        self,
        path: Path | None,
        *,
        environ: Mapping[str, str] | None = None,
        generate: bool = True,
    ) -> None:
        self.path = path
        self._env = os.environ if environ is None else environ
        self._generate = generate
        self._values: dict[str, str] = {}
        if path is not None and path.exists():
            self._values = _read_values(path)

    @classmethod
    def for_environment(cls, home: Path | None = None, *, generate: bool = True) -> Credentials:
        """Production: the environment only. Development: the environment, then the file;
        ``generate=False`` (for read-only commands) makes a missing value an error instead."""
        production = rose_environment() == "prod"
        if production:
            return cls(None, generate=False)
        return cls((home or rose_home()) / "credentials.json", generate=generate)

    def _get(self, key: str, env_name: str, length: int = 24) -> str:
        value = self._env.get(env_name)
        if value:
            return value
        if key in self._values:
            return self._values[key]
        if not self._generate:
            if self.path is None:
                raise ConfigError(f"missing required setting {env_name}")
            # Development: the file is where they are, not only the environment.
            what = key.removeprefix("role:")
            raise ConfigError(f"no password for {what} in {env_name} or {self.path}")
        value = secrets.token_urlsafe(length)
        self._values[key] = value
        self._save()
        return value

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._values, indent=2, sort_keys=True))
        temporary.chmod(0o600)
        temporary.replace(self.path)

    def role_password(self, role: str) -> str:
        return self._get(f"role:{role}", role_env_name(role))

    def superuser_password(self) -> str:
        return self._get("superuser", "ROSE_DB_SUPERUSER_PASSWORD")

    def internal_secret(self) -> str:
        return self._get("internal_secret", "INTERNAL_SECRET", 32)

    def session_secret(self) -> str:
        return self._get("session_secret", "SESSION_SECRET", 32)


def login_roles() -> list[str]:
    """Every role that logs in: each service's app role, each FDW edge's reader."""
    roles = [SERVICES[name].app_role for name in SERVICES]
    return roles + sorted({edge.reader_role for edge in load_edges()})


def missing_role_passwords(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``ROSE_DB_PASSWORD_<ROLE>`` variables production provisioning needs and lacks."""
    env = os.environ if environ is None else environ
    names = [role_env_name(role) for role in login_roles()]
    return [name for name in names if not env.get(name)]


ROTATION_NOTE = """\
# Rotating INTERNAL_SECRET or SESSION_SECRET without downtime (docs/deployment.md, "Secrets"),
# each step rolled out to every service before the next:
#   1. the new value in *_PREVIOUS (accepted everywhere, nobody signs with it yet);
#   2. the new value as INTERNAL_SECRET / SESSION_SECRET, the old one in *_PREVIOUS;
#   3. *_PREVIOUS empty again once nothing signed with the old value lives: five minutes
#      after step 2 for INTERNAL_SECRET (a signed call's life), 30 days for SESSION_SECRET.
# Each *_PREVIOUS takes a comma-separated list.
INTERNAL_SECRET_PREVIOUS=
SESSION_SECRET_PREVIOUS=
"""


def production_env_template() -> str:
    """Every secret a production deployment needs, freshly generated, as an env file (what
    compose.yaml reads as .env): the superuser's, the shared secrets (with how to rotate them),
    every login role's."""
    lines = [
        "# rose-ash production secrets (compose.yaml reads this as .env). Keep it private.",
        f"ROSE_DB_SUPERUSER_PASSWORD={secrets.token_urlsafe(24)}",
        f"INTERNAL_SECRET={secrets.token_urlsafe(32)}",
        f"SESSION_SECRET={secrets.token_urlsafe(32)}",
    ]
    lines += [f"{role_env_name(role)}={secrets.token_urlsafe(24)}" for role in login_roles()]
    return "".join(line + "\n" for line in lines) + ROTATION_NOTE
