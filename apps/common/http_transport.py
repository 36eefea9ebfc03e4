"""An httpx transport that sends requests with aiohttp.

httpx stays the API of every outbound call (our InternalClient, the SumUp SDK): its requests,
responses, timeouts, hooks, redirects and proxies. Underneath, its own HTTP engine (httpcore
and h11, in Python) cost ~0.42 ms of CPU per request here against ~0.07 ms for aiohttp's, whose
parser is C; with this transport a request through httpx costs ~0.22 ms (bench/README.md, issue
#14). On two cores, with three outbound calls per checkout, that is CPU the services need.

What matters most is that an error keeps its meaning. Callers decide from the httpx exception
whether a request may have reached the other side: ``ConnectError``, ``ConnectTimeout`` and
``PoolTimeout`` say it never left (safe to send again); a read timeout or a connection lost
after sending (``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``) say the outcome is
unknown. Each aiohttp error is mapped to the httpx error of the same moment, never to an earlier
one: a server that hangs up after the request was sent is ``RemoteProtocolError``, not a
connect error.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from yarl import URL

# Most specific first: the connect timeout is a ServerTimeoutError, and every one of the first
# four is a ClientConnectionError.
_ERRORS: tuple[tuple[type[aiohttp.ClientError], type[httpx.TransportError]], ...] = (
    # Waiting for a pooled connection or connecting: nothing was sent.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    # Waiting for the answer (or the next part of it): the request was sent.
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    # Refused, unresolvable, TLS failed: nothing was sent.
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    # Connected, then the server hung up before a whole answer: the request may have arrived.
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(f"{type(exc).__name__}: {exc}", request=request) from exc
        raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when read to the end; closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx's requests through one aiohttp session (its connection pool), opened on the
    first request in the running event loop. httpx keeps cookies, redirects, proxies and the
    content decoding; aiohttp only moves the bytes."""

    def __init__(
        self, limits: httpx.Limits | None = None, verify: ssl.SSLContext | str | bool = True
    ) -> None:
        self._limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        # What httpx would trust (``verify`` as httpx takes it; by default certifi's
        # certificates, not only the system's): TLS must not depend on which engine sends.
        # Made with the first session (loading the certificates takes a few milliseconds).
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # A session belongs to the loop it was made in (tests run one loop per test).
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
            expiry = self._limits.keepalive_expiry
            connector = aiohttp.TCPConnector(
                # None is "no limit" to httpx, 0 to aiohttp; None keeps connections "for ever".
                limit=self._limits.max_connections or 0,
                keepalive_timeout=3600.0 if expiry is None else expiry,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # httpx keeps cookies and resolves proxies; aiohttp must not do either again.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                # No headers of its own: httpx's request carries all of them.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_for_this_loop()
        timeout = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        body = await request.aread()
        with _as_httpx_errors(request):
            response = await session.request(
                request.method,
                # Already encoded by httpx: sent as it is (a signed path must arrive unchanged).
                URL(str(request.url), encoded=True),
                # As httpx spells them (its own engine sends the names as given).
                headers=[
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in request.headers.raw
                ],
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    # aiohttp's "connect" includes the wait for a pooled connection.
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            )
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
