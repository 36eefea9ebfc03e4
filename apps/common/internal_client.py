"""Calls from one service to another's internal routes.

A service calls another through the contract it publishes (``apps/<service>/contract.py``):
``client.call(action, request)``, ``client.query(query, params)`` and
``client.fragment(fragment, params)`` take and return the contract's typed structures. Every
request is signed, carries the W3C trace context (``traceparent``), is measured (latency and
errors by target, on ``/metrics``), uses one pooled httpx client per process with explicit
timeouts, retries only what is safe to repeat (GETs, and actions that carry an idempotency
key), and raises
:class:`InternalCallError` for anything but a 2xx, which the error handler turns into a 502/503
problem. The client is made once per process by the app factory and handed to whoever needs it
(tests route services to in-process ASGI apps). The untyped ``call_action``/``fetch_data`` are
for tools that name a call at run time (the ``rose`` CLI, the outbox relay).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import msgspec
from opentelemetry.trace import SpanKind

from apps.common.contracts import Action, Fragment, Query
from apps.common.http_transport import AiohttpTransport
from apps.common.observability import (
    INTERNAL_CALL_ERRORS,
    INTERNAL_CALL_SECONDS,
    inject_trace,
    tracer,
)
from apps.common.signing import sign_headers

Request = TypeVar("Request", bound=msgspec.Struct)
Answer = TypeVar("Answer")
Params = TypeVar("Params", bound=msgspec.Struct)

logger = logging.getLogger("rose.internal")

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
RETRY_DELAYS = (0.1, 0.4)
RETRYABLE_STATUSES = frozenset({502, 503, 504})
# The 4xx answers that may change when the same request is sent again later: a timeout (408), a
# conflict of the moment (409: its idempotency key in use, a replayed nonce), too early (425),
# too many (429), a signature refused (401: a clock or a secret to set right, after which
# the same message is taken) and a path not found (404: a receiver of the release before, which
# lacks a new action, while a deploy goes on; a payment's messages must not die of the order in
# which services are deployed). Any other 4xx refuses the request itself, for good.
REFUSED_FOR_NOW = frozenset({401, 404, 408, 409, 425, 429})
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
        waited: float | None = None,
        connection_lost: bool = False,
    ) -> None:
        super().__init__(f"{service} {name}: {message}")
        self.message = message
        self.service = service
        self.name = name
        self.http_status = http_status
        self.remote_status = remote_status
        self.problem = dict(problem or {})
        # True when the request may have reached the other service and had its effect (it
        # timed out or the connection broke after sending): the caller must not say "nothing
        # happened".
        self.outcome_unknown = outcome_unknown
        # The caller's deadline for the whole call (seconds), when that is what ran out.
        self.waited = waited
        # The connection broke after the request was sent (the other process killed, say):
        # no wait ran out, so a caller must not say the answer did not come in time.
        self.connection_lost = connection_lost

    @property
    def may_have_happened(self) -> bool:
        """Whether the request may have had its effect, so that a caller must not tell anyone
        that nothing happened: its outcome is unknown (:attr:`outcome_unknown`: sent, then no
        answer; a gateway's 504), or the other service answered but neither refused it (a 4xx)
        nor said it was unavailable (a 503): a 2xx whose body does not match the contract (it
        happened), a 500 or 502 (a failure may come after the commit: the answer to COMMIT
        lost, an answer that could not be written, a gateway losing the answer)."""
        if self.outcome_unknown:
            return True
        status = self.remote_status
        return status is not None and not (400 <= status < 500 or status == 503)

    @property
    def refused(self) -> bool:
        """Whether the other service refused the request for good: sent again, unchanged, it
        gets the same answer (a 4xx but those of :data:`REFUSED_FOR_NOW`)."""
        status = self.remote_status
        return status is not None and 400 <= status < 500 and status not in REFUSED_FOR_NOW


def _outcome_unknown(error: InternalCallError) -> InternalCallError:
    """``error`` of a last attempt, after an earlier one whose outcome is unknown."""
    return InternalCallError(
        error.service,
        error.name,
        f"{error.message}, after an attempt that timed out or lost its connection",
        http_status=error.http_status,
        remote_status=error.remote_status,
        problem=error.problem,
        outcome_unknown=True,
        waited=error.waited,
    )


class InternalClient:
    def __init__(
        self,
        *,
        caller: str,
        secret: str,
        base_urls: Mapping[str, str] | None = None,
        asgi_apps: dict[str, Any] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.caller = caller
        self._secret = secret
        self._base_urls = dict(base_urls or {})
        self._timeout = timeout
        # Idle connections are dropped after 4 s, before uvicorn's 5 s keep-alive closes them
        # from the other end: a call does not go out on a connection the server is closing
        # for idleness at that moment (its outcome would be unknown).
        limits = httpx.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=4.0
        )
        self._network = httpx.AsyncClient(
            timeout=timeout, transport=AiohttpTransport(limits=limits)
        )
        # Looked up at call time: a test makes the client before the apps it routes to.
        self._asgi_apps = asgi_apps if asgi_apps is not None else {}
        self._in_process: dict[str, httpx.AsyncClient] = {}
        self._closing: list[httpx.AsyncClient] = []
        self._rerouted: dict[str, Any] = {}

    def route(self, service: str, app: Any) -> None:
        """Send calls of ``service`` to an in-process ASGI app from now on (tests)."""
        self._rerouted[service] = app
        stale = self._in_process.pop(service, None)
        if stale is not None:
            self._closing.append(stale)

    def knows(self, service: str) -> bool:
        """Whether calls to ``service`` have somewhere to go (its URL is configured, or it
        runs in process): a deployment without it has nothing of it to call."""
        return bool(
            service in self._rerouted or service in self._asgi_apps or self._base_urls.get(service)
        )

    async def aclose(self) -> None:
        for client in self._closing:
            await client.aclose()
        await self._network.aclose()
        for client in self._in_process.values():
            await client.aclose()

    def _target(self, service: str, name: str) -> tuple[httpx.AsyncClient, str]:
        app = self._rerouted.get(service) or self._asgi_apps.get(service)
        if app is not None:
            if service not in self._in_process:
                self._in_process[service] = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url=f"http://{service}",
                    timeout=self._timeout,
                )
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
        deadline: float | None = None,
    ) -> httpx.Response:
        started = time.perf_counter()
        with tracer.start_as_current_span(
            f"call {service}.{name}", kind=SpanKind.CLIENT, attributes={"rose.target": service}
        ):
            try:
                attempts = self._attempts(
                    method,
                    service,
                    name,
                    path,
                    body=body,
                    headers=headers,
                    retry=retry,
                    timeout=timeout if deadline is None else self._within_deadline(timeout),
                )
                if deadline is None:
                    return await attempts
                return await _by_deadline(attempts, service, name, deadline)
            except InternalCallError as exc:
                INTERNAL_CALL_ERRORS.labels(service, name, str(exc.http_status)).inc()
                raise
            finally:
                INTERNAL_CALL_SECONDS.labels(service, name).observe(time.perf_counter() - started)

    def _within_deadline(self, timeout: float | None) -> httpx.Timeout:
        """An attempt's timeouts under a deadline for the whole call: connecting keeps its
        own (short: a service not listening is "unreachable", nothing sent), and ``timeout``
        (None: none) bounds the rest; the deadline bounds it all."""
        return httpx.Timeout(timeout, connect=self._timeout.connect, pool=self._timeout.pool)

    async def _attempts(
        self,
        method: str,
        service: str,
        name: str,
        path: str,
        *,
        body: bytes,
        headers: Mapping[str, str] | None,
        retry: bool,
        timeout: float | httpx.Timeout | None,
    ) -> httpx.Response:
        client, base_url = self._target(service, name)
        attempts = len(RETRY_DELAYS) + 1 if retry else 1
        last_error: InternalCallError | None = None
        # Whether an attempt may have had its effect (sent, then no answer): the call's outcome
        # stays unknown whatever later attempts find (unreachable, a 503).
        unknown = False
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(RETRY_DELAYS[attempt - 1])
            # Signed per attempt: a retry gets a fresh timestamp.
            key = (headers or {}).get(IDEMPOTENCY_HEADER)
            request_headers = sign_headers(
                self._secret, method, path, body, caller=self.caller, idempotency_key=key
            )
            request_headers.update(headers or {})
            # W3C trace context: the callee's spans and log lines join this trace.
            inject_trace(request_headers)
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
                unknown = True
                continue
            except httpx.TransportError as exc:
                last_error = InternalCallError(
                    service,
                    name,
                    f"connection lost ({type(exc).__name__})",
                    http_status=503,
                    outcome_unknown=True,
                    connection_lost=True,
                )
                unknown = True
                continue
            if response.status_code in RETRYABLE_STATUSES and attempt + 1 < attempts:
                last_error = _error_from_response(service, name, response)
                unknown = unknown or last_error.outcome_unknown
                continue
            if response.is_success:
                return response
            error = _error_from_response(service, name, response)
            if unknown and response.status_code in RETRYABLE_STATUSES:
                raise _outcome_unknown(error)
            raise error
        assert last_error is not None
        if unknown and not last_error.outcome_unknown:
            last_error = _outcome_unknown(last_error)
        logger.warning("internal call failed after %d attempt(s): %s", attempts, last_error)
        raise last_error

    async def call(
        self,
        action: Action[Request, Answer],
        request: Request,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        retry: bool | None = None,
        deadline: float | None = None,
    ) -> Answer:
        """Ask for an action of another service's contract; its typed answer. ``timeout``
        bounds each step of each attempt (connecting, each read); ``deadline`` (seconds) the
        whole call, attempts and waits between them included: past it the call is an
        :class:`InternalCallError` whose outcome is unknown, with ``waited`` set (what a
        person waits on; without ``timeout`` only the deadline bounds an attempt's answer)."""
        response = await self._action(
            action.service,
            action.name,
            msgspec.to_builtins(request),
            idempotency_key=idempotency_key,
            timeout=timeout,
            retry=retry,
            deadline=deadline,
        )
        return _typed(action.service, action.name, response, action.answer)

    async def query(
        self, query: Query[Params, Answer], params: Params, *, timeout: float | None = None
    ) -> Answer:
        """Read through another service's contract; its typed answer."""
        response = await self._data(
            query.service, query.name, msgspec.to_builtins(params), timeout=timeout
        )
        return _typed(query.service, query.name, response, query.answer)

    async def fragment(
        self,
        fragment: Fragment[Params],
        params: Params,
        *,
        timeout: float | None = None,
        retry: bool = True,
    ) -> str:
        return await self.fetch_fragment(
            fragment.service,
            fragment.name,
            msgspec.to_builtins(params),
            timeout=timeout,
            retry=retry,
        )

    async def fetch_data(
        self,
        service: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        return _json(service, name, await self._data(service, name, params, timeout=timeout))

    async def _data(
        self,
        service: str,
        name: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float | None,
    ) -> httpx.Response:
        path = f"/internal/data/{name}" + _query(params)
        return await self._request("GET", service, name, path, retry=True, timeout=timeout)

    async def call_action(
        self,
        service: str,
        name: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        retry: bool | None = None,
        deadline: float | None = None,
    ) -> Any:
        """``retry`` defaults to: only when the action carries an idempotency key. ``timeout``
        and ``deadline`` as for :meth:`call`."""
        response = await self._action(
            service,
            name,
            payload,
            idempotency_key=idempotency_key,
            timeout=timeout,
            retry=retry,
            deadline=deadline,
        )
        return _json(service, name, response)

    async def _action(
        self,
        service: str,
        name: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None,
        timeout: float | None,
        retry: bool | None,
        deadline: float | None = None,
    ) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        return await self._request(
            "POST",
            service,
            name,
            f"/internal/actions/{name}",
            body=body,
            headers=headers,
            retry=idempotency_key is not None if retry is None else retry,
            timeout=timeout,
            deadline=deadline,
        )

    async def fetch_fragment(
        self,
        service: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry: bool = True,
    ) -> str:
        path = f"/internal/fragments/{name}" + _query(params)
        response = await self._request("GET", service, name, path, retry=retry, timeout=timeout)
        return response.text


async def _by_deadline(
    attempts: Coroutine[Any, Any, httpx.Response], service: str, name: str, deadline: float
) -> httpx.Response:
    """``attempts`` given ``deadline`` seconds in all. Cut off, the request may have been sent
    and applied: its outcome is unknown."""
    timer = asyncio.timeout(deadline)
    try:
        async with timer:
            return await attempts
    except TimeoutError:
        if not timer.expired():
            raise
    error = InternalCallError(
        service,
        name,
        f"no answer within {deadline:g} s",
        http_status=503,
        outcome_unknown=True,
        waited=deadline,
    )
    logger.warning("internal call failed: %s", error)
    raise error


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


def _typed(service: str, name: str, response: httpx.Response, answer_type: Any) -> Any:
    """The 2xx ``response``'s body as the contract's ``answer_type``. One that is not of it is
    an error that keeps the answer's status (:attr:`InternalCallError.may_have_happened`: the
    other service did what was asked)."""
    answer = _json(service, name, response)
    try:
        return msgspec.convert(answer, answer_type, strict=False)
    except msgspec.ValidationError as exc:
        raise InternalCallError(
            service,
            name,
            f"answered with a body that does not match its contract: {exc}",
            remote_status=response.status_code,
        ) from None


def _json(service: str, name: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise InternalCallError(
            service,
            name,
            "answered with a body that is not JSON",
            remote_status=response.status_code,
        ) from None


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
        # A gateway's timeout: it passed the request on and stopped waiting for the answer.
        outcome_unknown=status == 504,
    )
