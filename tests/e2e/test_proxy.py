"""Every public site behind a real Caddy (``rose up --proxy``, the Caddyfile template rendered
for local hosts): each site on its host, the internal services and ``/internal/`` refused from
outside, a checkout in chromium through the proxy with SumUp's webhook coming through it too;
the production rendering (HSTS, the rose-ash.com hosts) run by a real Caddy with its own CA."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from apps.common.signing import sign_headers
from ops.stack.pgserver import free_port
from ops.stack.processes import LogSink, ProcessGroup
from ops.stack.proxy import caddy_binary, local_caddyfile, production_caddyfile, public_services
from tests.conftest import truncate_all
from tests.e2e.conftest import buy_in_the_browser, live_stack, rose_up
from tests.integration.commerce_fixtures import cart_rows, open_shop
from tests.integration.orders_fixtures import order_payload, order_rows, product_line
from tests.waiting import eventually_sync

PORT_OFFSET = 21000
REFUSED = "Not served on this host: the services' internal API, metrics and schema are not public"
PROBLEM = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": REFUSED}
DOWN = {
    "type": "about:blank",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "This site is not answering right now: try again in a moment",
}
NO_SITE = {
    "type": "about:blank",
    "title": "Not Found",
    "status": 404,
    "detail": "No site is served on this host",
}


@dataclass
class Proxied:
    home: Path
    port: int
    services: dict[str, str]
    internal_secret: str

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, service: str, path: str = "/") -> str:
        host = "rose.localhost" if service == "blog" else f"{service}.rose.localhost"
        return f"http://{host}:{self.port}{path}"

    def client(self) -> httpx.Client:
        """From outside: every request goes to Caddy (as DNS pointing at it would send it)."""
        return httpx.Client(proxy=self.address, timeout=10, follow_redirects=False)

    def log(self) -> str:
        return (self.home / "rose.log").read_text()


@pytest.fixture(scope="module")
def proxied(provisioned, credentials) -> Iterator[Proxied]:
    """``rose up --proxy`` on the session's server (with the session's credentials)."""
    truncate_all(provisioned)
    assert credentials.path is not None
    home = credentials.path.parent
    port = free_port()
    args = ["--database-url", provisioned.admin_url, "--no-demo", "--proxy"]
    args += ["--proxy-port", str(port), "--port-offset", str(PORT_OFFSET)]
    try:
        with rose_up(home, *args) as running:
            yield Proxied(home, port, running.state["services"], credentials.internal_secret())
    finally:
        truncate_all(provisioned)


def test_each_public_site_answers_on_its_host(proxied: Proxied):
    assert set(public_services()) == {"blog", "market", "cart", "events", "orders"}
    with proxied.client() as client:
        for name in public_services():
            response = client.get(proxied.url(name, "/readyz"))
            assert response.status_code == 200, name
            page = client.get(proxied.url(name, "/"))
            assert page.status_code == 200, (name, page.status_code)
            assert page.headers["content-type"].startswith("text/html")
    assert "orders     http://127.0.0.1:29010  ready  public: http://orders.rose.localhost:" in (
        proxied.log()
    )


@pytest.mark.parametrize(
    "path",
    [
        "/internal/actions/create-order",
        "/internal/data/get-children",
        "/INTERNAL/actions/create-order",
        "/%69nternal/actions/create-order",
        "//internal/actions/create-order",
        "/internal",
        "/metrics",
        # The OpenAPI document describes the internal API too: not for the public either.
        "/schema/openapi.json",
        "/schema",
    ],
)
def test_internal_paths_are_refused_on_every_host_even_signed(proxied: Proxied, path: str):
    body = json.dumps(order_payload(product_line(1, "9.00"))).encode()
    headers = sign_headers(proxied.internal_secret, "POST", path, body, caller="cart")
    headers["content-type"] = "application/json"
    with proxied.client() as client:
        for name in public_services():
            for method in ("GET", "POST"):
                response = client.request(
                    method, proxied.url(name, path), content=body, headers=headers
                )
                assert response.status_code == 404, (name, method, path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json() == PROBLEM
            # Audit O11: a browser got the bare JSON; it gets a page saying why.
            page = client.get(proxied.url(name, path), headers={"accept": "text/html"})
            assert page.status_code == 404, (name, path)
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert f'<p role="alert">{REFUSED}.</p>' in page.text
    # Nothing reached a service's internal API.
    assert "/internal/actions/create-order 200" not in proxied.log()


def test_internal_services_and_unknown_hosts_are_refused(proxied: Proxied):
    with proxied.client() as client:
        for host in ("relations.rose.localhost", "likes.rose.localhost", "127.0.0.1"):
            response = client.get(f"http://{host}:{proxied.port}/readyz")
            assert response.status_code == 404, host
            assert response.json() == NO_SITE
            page = client.get(f"http://{host}:{proxied.port}/", headers={"accept": "text/html"})
            assert (page.status_code, page.headers["content-type"]) == (
                404,
                "text/html; charset=utf-8",
            ), host
    # Directly, they are up (on this machine's loopback only).
    assert httpx.get(proxied.services["relations"] + "/readyz").status_code == 200


def test_forwarded_headers_come_from_the_proxy_and_a_spoofed_one_is_dropped(proxied: Proxied):
    with proxied.client() as client:
        response = client.get(
            proxied.url("orders", "/healthz-not"),
            headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "proxyspoof01"},
        )
    assert response.status_code == 404
    assert eventually_sync(lambda: "request=proxyspoof01" in proxied.log())
    (line,) = [line for line in proxied.log().splitlines() if "request=proxyspoof01" in line]
    # Caddy replaced the client's X-Forwarded-For with the address it saw.
    assert " client=127.0.0.1 " in f"{line} ", line


def test_forwarded_headers_are_trusted_from_the_proxy_address_only(provisioned, credentials):
    """A service trusts X-Forwarded-For only from FORWARDED_ALLOW_IPS (compose sets Caddy's
    address): from anywhere else the header is ignored."""
    assert client_seen_by_relations(provisioned, credentials, "10.255.255.1") == "127.0.0.1"
    assert client_seen_by_relations(provisioned, credentials, "127.0.0.1") == "203.0.113.9"


def client_seen_by_relations(provisioned, credentials, allowed: str) -> str:
    """The client address relations logs for a request claiming X-Forwarded-For 203.0.113.9,
    when it trusts forwarded headers from ``allowed`` only."""
    request_id = f"fwd{allowed.replace('.', '')}"
    with live_stack(
        provisioned, credentials, ["relations"], extra_env={"FORWARDED_ALLOW_IPS": allowed}
    ) as stack:
        httpx.get(
            stack.url("relations", "/nothing-here"),
            headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": request_id},
        )
        process = stack.group.processes["relations"]

        def logged() -> list[str]:
            return [line for line in process.last_lines if f"request={request_id}" in line]

        assert eventually_sync(lambda: len(logged()) == 1)
        return logged()[0].rsplit("client=", 1)[1].split()[0]


def test_a_checkout_through_the_proxy_webhook_included(proxied: Proxied, provisioned, page):
    open_shop(provisioned)
    urls = {name: proxied.url(name, "") for name in ("market", "cart", "orders")}
    buy_in_the_browser(page, urls, sandbox_url(proxied), user_id=41, product=2)
    assert eventually_sync(lambda: [row[1] for row in order_rows(provisioned)] == ["paid"])
    assert eventually_sync(lambda: not [row for row in cart_rows(provisioned) if row[6]])
    page.goto(f"{urls['cart']}/")
    assert page.locator("#empty-cart").count() == 1
    # SumUp was handed the proxy's URL, and its webhook came through Caddy.
    deliveries = httpx.get(f"{sandbox_url(proxied)}/_sandbox/deliveries").json()
    assert [(d["url"].split("/checkout/")[0], d["outcome"]) for d in deliveries] == [
        (urls["orders"], "delivered")
    ]


def sandbox_url(proxied: Proxied) -> str:
    match = re.search(r"sumup\s+(http://127\.0\.0\.1:\d+)\s+SumUp sandbox", proxied.log())
    assert match is not None
    return match.group(1)


def test_the_production_caddyfile_runs_with_hsts_on_the_public_hosts(proxied: Proxied, tmp_path):
    """The production rendering itself (rose-ash.com hosts, HSTS), run by a real Caddy with its
    own CA instead of ACME and high ports, in front of the running services."""
    http_port, https_port = free_port(), free_port()
    upstreams = {name: url.removeprefix("http://") for name, url in proxied.services.items()}
    config = tmp_path / "Caddyfile"
    config.write_text(
        production_caddyfile(
            upstreams=upstreams,
            tls="internal",
            http_port=http_port,
            https_port=https_port,
            admin=False,
        )
    )
    sink = LogSink(None, echo=sys.stderr)
    group = ProcessGroup(sink, {"XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    group.start(
        "caddy",
        https_port,
        [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"],
    )

    def get(host: str, path: str) -> httpx.Response:
        with httpx.Client(verify=False, timeout=10) as client:
            return client.get(
                f"https://127.0.0.1:{https_port}{path}",
                headers={"Host": host},
                extensions={"sni_hostname": host},
            )

    try:

        def answers() -> bool:
            try:
                return get("orders.rose-ash.com", "/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        assert eventually_sync(answers)
        hosts = {
            "blog": "rose-ash.com",
            "market": "market.rose-ash.com",
            "cart": "cart.rose-ash.com",
            "events": "events.rose-ash.com",
            "orders": "orders.rose-ash.com",
        }
        for host in hosts.values():
            response = get(host, "/")
            assert response.status_code == 200, host
            assert response.headers["strict-transport-security"] == (
                "max-age=63072000; includeSubDomains"
            )
            refused = get(host, "/internal/data/get-children")
            assert refused.status_code == 404
            assert refused.json() == PROBLEM
        # No site, no certificate: relations and likes cannot even be spoken to.
        for host in ("relations.rose-ash.com", "likes.rose-ash.com"):
            with pytest.raises(httpx.ConnectError):
                get(host, "/readyz")
        # Plain HTTP is redirected to HTTPS.
        redirect = httpx.get(
            f"http://127.0.0.1:{http_port}/", headers={"Host": "market.rose-ash.com"}
        )
        assert redirect.status_code == 308
        assert redirect.headers["location"].startswith("https://market.rose-ash.com")
    finally:
        group.stop()
        sink.close()


def test_a_site_whose_service_is_down_answers_a_page_or_a_problem_not_a_blank(tmp_path, browser):
    """While a service is down (restarting, or gone), Caddy has nothing to pass on: the
    browser gets a page saying the site is not answering (it got a blank 503, Content-Length
    0, a white page), any other client a problem naming it."""
    port, dead = free_port(), free_port()
    config = tmp_path / "Caddyfile"
    config.write_text(local_caddyfile(port, {"market": f"127.0.0.1:{dead}"}))
    sink = LogSink(None, echo=sys.stderr)
    group = ProcessGroup(sink, {"XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    group.start(
        "caddy", port, [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"]
    )
    url = f"http://market.rose.localhost:{port}/product/apple-jam/"
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as client:

            def answer() -> httpx.Response | None:
                try:
                    return client.get(url)
                except httpx.HTTPError:
                    return None

            response = eventually_sync(answer)
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json() == DOWN
            assert response.headers["retry-after"] == "5"
        context = browser.new_context()
        try:
            page = context.new_page()
            shown = page.goto(url)
            assert shown is not None
            assert (shown.status, shown.headers["content-type"]) == (
                503,
                "text/html; charset=utf-8",
            )
            assert page.evaluate("document.documentElement.lang") == "en"
            assert page.title() == "Service Unavailable"
            assert page.locator('[role="alert"]').inner_text() == DOWN["detail"] + "."
        finally:
            context.close()
    finally:
        group.stop()
        sink.close()
