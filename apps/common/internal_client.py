"""Calls from one service to another's internal routes.

``fetch_data``, ``call_action`` and ``fetch_fragment`` sign every request, use one pooled httpx
client per process with explicit timeouts, retry only what is safe to repeat (GETs, and actions
that carry an idempotency key), and raise :class:`InternalCallError` for anything but a 2xx, which
the error handler turns into a 502/503 problem. Tests route services to in-process ASGI apps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

from apps.common.signing import sign_headers

logger = logging.getLogger("rose.internal")

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
RETRY_DELAYS = (0.1, 0.4)
RETRYABLE_STATUSES = frozenset({502, 503, 504})
IDEMPOTENCY_HEADER = "Idempotency-Key"


class InternalCallError(Exception):
    """A call to another service failed. ``http_status`` is what our caller should answer."""

    def __init__(
        self,
        service: str,
        name: str,
        message: str,
        *,
        http_status: int = 502,
        remote_status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(f"{service} {name}: {message}")
        self.service = service
        self.name = name
        self.http_status = http_status
        self.remote_status = remote_status
        self.problem = dict(problem or {})
        # True when the request may have reached the other service and had its effect (it
        # timed out or the connection broke after sending): the caller must not say "nothing
        # happened".
        self.outcome_unknown = outcome_unknown


class InternalClient:
    def __init__(
        self,
        *,
        caller: str,
        secret: str,
        base_urls: Mapping[str, str] | None = None,
        asgi_apps: Mapping[str, Any] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.caller = caller
        self._secret = secret
        self._base_urls = dict(base_urls or {})
        self._timeout = timeout
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._network = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._in_process = {
            name: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=f"http://{name}", timeout=timeout
            )
            for name, app in (asgi_apps or {}).items()
        }

    async def aclose(self) -> None:
        await self._network.aclose()
        for client in self._in_process.values():
            await client.aclose()

    def _target(self, service: str, name: str) -> tuple[httpx.AsyncClient, str]:
        if service in self._in_process:
            return self._in_process[service], f"http://{service}"
        base_url = self._base_urls.get(service)
        if not base_url:
            raise InternalCallError(
                service,
                name,
                f"no INTERNAL_URL_{service.upper()} is configured",
                http_status=503,
            )
        return self._network, base_url

    async def _request(
        self,
        method: str,
        service: str,
        name: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        retry: bool,
        timeout: float | None,
    ) -> httpx.Response:
        client, base_url = self._target(service, name)
        attempts = len(RETRY_DELAYS) + 1 if retry else 1
        last_error: InternalCallError | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(RETRY_DELAYS[attempt - 1])
            # Signed per attempt: a retry gets a fresh timestamp.
            request_headers = sign_headers(self._secret, method, path, body, caller=self.caller)
            request_headers.update(headers or {})
            if body:
                request_headers["Content-Type"] = "application/json"
            try:
                response = await client.request(
                    method,
                    base_url + path,
                    content=body,
                    headers=request_headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError) as exc:
                last_error = InternalCallError(
                    service, name, f"unreachable ({type(exc).__name__})", http_status=503
                )
                continue
            except httpx.TimeoutException:
                last_error = InternalCallError(
                    service, name, "timed out", http_status=503, outcome_unknown=True
                )
                continue
            except httpx.TransportError as exc:
                last_error = InternalCallError(
                    service,
                    name,
                    f"connection lost ({type(exc).__name__})",
                    http_status=503,
                    outcome_unknown=True,
                )
                continue
            if response.status_code in RETRYABLE_STATUSES and attempt + 1 < attempts:
                last_error = _error_from_response(service, name, response)
                continue
            if response.is_success:
                return response
            raise _error_from_response(service, name, response)
        assert last_error is not None
        logger.warning("internal call failed after %d attempt(s): %s", attempts, last_error)
        raise last_error

    async def fetch_data(
        self,
        service: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        path = f"/internal/data/{name}" + _query(params)
        response = await self._request("GET", service, name, path, retry=True, timeout=timeout)
        return _json(service, name, response)

    async def call_action(
        self,
        service: str,
        name: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        retry: bool | None = None,
    ) -> Any:
        """``retry`` defaults to: only when the action carries an idempotency key."""
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        response = await self._request(
            "POST",
            service,
            name,
            f"/internal/actions/{name}",
            body=body,
            headers=headers,
            retry=idempotency_key is not None if retry is None else retry,
            timeout=timeout,
        )
        return _json(service, name, response)

    async def fetch_fragment(
        self,
        service: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        path = f"/internal/fragments/{name}" + _query(params)
        response = await self._request("GET", service, name, path, retry=True, timeout=timeout)
        return response.text


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        values = value if isinstance(value, list | tuple | set | frozenset) else [value]
        for item in values:
            if isinstance(item, bool):
                item = "true" if item else "false"
            pairs.append((key, str(item)))
    return "?" + urlencode(pairs) if pairs else ""


def _json(service: str, name: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise InternalCallError(service, name, "answered with a body that is not JSON") from None


def _error_from_response(service: str, name: str, response: httpx.Response) -> InternalCallError:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    detail = problem.get("detail") or response.reason_phrase
    status = response.status_code
    # An unavailable dependency stays "unavailable" for our caller; anything else is a bad gateway.
    http_status = 503 if status in (503, 504) else 502
    return InternalCallError(
        service,
        name,
        f"answered {status}: {detail}",
        http_status=http_status,
        remote_status=status,
        problem=problem,
    )


_client: InternalClient | None = None


def install_client(client: InternalClient) -> None:
    """Make ``client`` the process-wide client (tests install one routed to ASGI apps)."""
    global _client
    _client = client


def current_client() -> InternalClient:
    if _client is None:
        raise RuntimeError("no internal client: the app's lifespan installs one at start-up")
    return _client


def client_installed() -> bool:
    return _client is not None


async def close_client() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


async def fetch_data(service: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
    return await current_client().fetch_data(service, name, params)


async def call_action(
    service: str,
    name: str,
    payload: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    timeout: float | None = None,
    retry: bool | None = None,
) -> Any:
    return await current_client().call_action(
        service, name, payload, idempotency_key=idempotency_key, timeout=timeout, retry=retry
    )


async def fetch_fragment(service: str, name: str, params: Mapping[str, Any] | None = None) -> str:
    return await current_client().fetch_fragment(service, name, params)
