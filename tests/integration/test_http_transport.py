"""The aiohttp transport under httpx (apps/common/http_transport.py), against a real TCP server
that answers, stalls or hangs up on purpose: requests and answers arrive whole, and every failure
is the httpx error of its moment (never sent: a connect error; sent: a read error or timeout)."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import httpx
import pytest
import trustme
from sumup.errors import APIConnectionError, APIError

from apps.common.http_transport import AiohttpTransport
from apps.common.internal_client import InternalCallError, InternalClient
from apps.orders.payments import sdk_client
from tests.conftest import INTERNAL_SECRET


@dataclass
class Server:
    """One HTTP/1.1 server on a free port; what it does depends on the path."""

    port: int = 0
    connections: int = 0
    requests: list[tuple[str, list[tuple[str, str]], bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, path, _ = request_line.split(" ")
                headers = [tuple(line.split(": ", 1)) for line in lines]
                length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
                body = await reader.readexactly(length) if length else b""
                self.requests.append((f"{method} {path}", headers, body))  # type: ignore[arg-type]
                if path.endswith("/hang-up"):
                    return  # the request arrived; no answer
                if path.endswith("/slow"):
                    await asyncio.sleep(3)
                if path == "/cut-body":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    await writer.drain()
                    return
                if path == "/gzip":
                    payload = gzip.compress(b'{"zipped": true}')
                    extra = b"Content-Encoding: gzip\r\n"
                else:
                    payload = json.dumps(
                        {"method": method, "headers": headers, "body": body.decode()}
                    ).encode()
                    extra = b"X-Answer: yes\r\nSet-Cookie: kept=no\r\n"
                writer.write(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    + extra
                    + b"Content-Length: %d\r\n\r\n" % len(payload)
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listening = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield state
        listening.close()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(authority: trustme.CA) -> AsyncIterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    state = Server()
    listening = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=context)
    state.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield state
        listening.close()


def client(server: Server, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        transport=AiohttpTransport(**kwargs),  # type: ignore[arg-type]
        timeout=httpx.Timeout(2.0),
    )


async def test_a_request_and_its_answer_arrive_whole_on_one_kept_connection(server):
    async with client(server) as http:
        answer = await http.post("/echo", content=b'{"a": 1}', headers={"X-Key": "k1"})
        again = await http.get("/echo")
    assert answer.status_code == 201
    assert answer.reason_phrase == "Created"
    assert answer.headers["x-answer"] == "yes"
    seen = answer.json()
    assert seen["method"] == "POST"
    assert seen["body"] == '{"a": 1}'
    names = [name.lower() for name, _ in seen["headers"]]
    # httpx's headers, once each; none added by aiohttp.
    assert names.count("host") == 1
    assert names.count("content-length") == 1
    assert names.count("user-agent") == 1
    assert ["X-Key", "k1"] in seen["headers"]
    assert "content-type" not in names
    user_agent = dict((k.lower(), v) for k, v in seen["headers"])["user-agent"]
    assert user_agent.startswith("python-httpx/")
    assert again.status_code == 201
    # The cookie the server set is httpx's to keep and send back, once: aiohttp keeps none.
    assert [name.lower() for name, _ in again.json()["headers"]].count("cookie") == 1
    assert server.connections == 1


async def test_the_path_and_query_arrive_exactly_as_httpx_encoded_them(server):
    params = {"q": "a b~c/d%e", "name": "Zoë", "empty": ""}
    async with client(server) as http:
        answer = await http.get("/echo/a%2Fb~c", params=params)
    assert answer.status_code == 201
    line = server.requests[-1][0]
    assert line == f"GET {answer.request.url.raw_path.decode('ascii')}"
    assert "/echo/a%2Fb~c?" in line


async def test_an_encoded_answer_is_decoded_by_httpx(server):
    async with client(server) as http:
        answer = await http.get("/gzip")
    assert answer.json() == {"zipped": True}


async def test_nothing_listening_is_a_connect_error(server):
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:1/echo")


async def test_tls_is_verified_as_httpx_verifies_it(tls_server, authority):
    url = f"https://127.0.0.1:{tls_server.port}/echo"
    # A certificate no trusted authority signed: refused before anything is sent.
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await http.get(url)
    assert tls_server.requests == []
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    async with httpx.AsyncClient(transport=AiohttpTransport(verify=trusting)) as http:
        answer = await http.post(url, content=b"over tls")
    assert answer.status_code == 201
    assert answer.json()["body"] == "over tls"


async def test_a_server_that_hangs_up_after_the_request_is_not_a_connect_error(server):
    async with client(server) as http:
        with pytest.raises(httpx.TransportError) as lost:
            await http.post("/hang-up", content=b"x")
    # The request arrived: the error must not say it was never sent.
    assert server.requests[-1][0] == "POST /hang-up"
    assert isinstance(lost.value, httpx.RemoteProtocolError | httpx.ReadError)
    assert not isinstance(lost.value, httpx.ConnectError | httpx.ConnectTimeout)


async def test_an_answer_cut_short_is_a_read_error(server):
    async with client(server) as http:
        with pytest.raises(httpx.TransportError) as cut:
            await http.get("/cut-body")
    assert not isinstance(cut.value, httpx.ConnectError | httpx.ConnectTimeout)


async def test_a_slow_answer_is_a_read_timeout(server):
    async with client(server) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/slow", timeout=httpx.Timeout(0.3))
    assert server.requests[-1][0] == "GET /slow"


async def test_waiting_for_a_pooled_connection_past_its_timeout_sends_nothing(server):
    async with client(server, limits=httpx.Limits(max_connections=1)) as http:
        busy = asyncio.create_task(http.get("/slow"))
        await asyncio.sleep(0.2)
        with pytest.raises(httpx.ConnectTimeout):
            await http.get("/echo", timeout=httpx.Timeout(2.0, pool=0.2, connect=0.1))
        busy.cancel()
    assert [line for line, _, _ in server.requests] == ["GET /slow"]


async def test_one_transport_serves_one_event_loop_after_another(server):
    transport = AiohttpTransport()

    async def once() -> int:
        http = httpx.AsyncClient(transport=transport)
        return (await http.get(f"http://127.0.0.1:{server.port}/echo")).status_code

    def two_loops() -> list[int]:
        # A session belongs to its loop: the second loop gets a session of its own.
        return [asyncio.run(once()), asyncio.run(once())]

    # In a thread of their own, while this loop goes on serving.
    assert await asyncio.to_thread(two_loops) == [201, 201]
    await transport.aclose()


async def test_the_internal_client_keeps_unreachable_and_outcome_unknown_apart(server):
    internal = InternalClient(
        caller="tests",
        secret=INTERNAL_SECRET,
        base_urls={"gone": "http://127.0.0.1:1", "rude": f"http://127.0.0.1:{server.port}"},
    )
    try:
        with pytest.raises(InternalCallError) as unreachable:
            await internal.call_action("gone", "do", {})
        assert "unreachable" in str(unreachable.value)
        assert not unreachable.value.outcome_unknown
        # The call arrived and the connection broke: whatever it did may have happened.
        with pytest.raises(InternalCallError) as lost:
            await internal.call_action("rude", "hang-up", {})
        assert lost.value.outcome_unknown
        assert "connection lost" in str(lost.value)
        assert server.requests[-1][0] == "POST /internal/actions/hang-up"
        with pytest.raises(InternalCallError) as slow:
            await internal.call_action("rude", "slow", {}, timeout=0.3)
        assert slow.value.outcome_unknown
        assert "timed out" in str(slow.value)
    finally:
        await internal.aclose()


async def test_a_deadline_bounds_the_whole_call_and_names_itself(server):
    """A deadline bounds a call, its attempts and the waits between them together (cart's
    checkout: what a buyer waits on): cut off, its outcome is unknown and the error says how
    long it waited. The client's per-read timeout (5 s by default) does not cut it shorter,
    and a service not listening is still unreachable (nothing sent), not unknown."""
    internal = InternalClient(
        caller="tests",
        secret=INTERNAL_SECRET,
        base_urls={"gone": "http://127.0.0.1:1", "rude": f"http://127.0.0.1:{server.port}"},
    )
    try:
        with pytest.raises(InternalCallError) as cut:
            # /slow answers after 3 s: each attempt would be retried (a key) past 0.5 s.
            await internal.call_action("rude", "slow", {}, idempotency_key="k", deadline=0.5)
        assert cut.value.outcome_unknown
        assert cut.value.waited == 0.5
        assert "no answer within 0.5 s" in str(cut.value)
        assert [line for line, _, _ in server.requests] == ["POST /internal/actions/slow"]
        with pytest.raises(InternalCallError) as unreachable:
            await internal.call_action("gone", "do", {}, deadline=5)
        assert not unreachable.value.outcome_unknown
        assert unreachable.value.waited is None
        assert "unreachable" in str(unreachable.value)
        answered = await internal.call_action("rude", "echo", {}, deadline=5)
        assert answered["method"] == "POST"
    finally:
        await internal.aclose()


async def test_the_sumup_sdk_sends_through_this_transport(server):
    """The SDK builds its own httpx client; ``sdk_client`` swaps its engine. Checked by what
    arrives and by the cause of a failure (an SDK upgrade that ignores the swap fails here)."""
    sdk = sdk_client("sup_sk_test", f"http://127.0.0.1:{server.port}", httpx.Timeout(2.0))
    gone = sdk_client("sup_sk_test", "http://127.0.0.1:1", httpx.Timeout(2.0))
    try:
        with pytest.raises(APIError):  # an echo is no checkout; only its arrival matters here
            await sdk.checkouts.get("abc")
        line, headers, _ = server.requests[-1]
        assert line == "GET /v0.1/checkouts/abc"
        sent = dict((name.lower(), value) for name, value in headers)
        assert sent["authorization"] == "Bearer sup_sk_test"
        assert sent["user-agent"].startswith("sumup-py/")
        with pytest.raises(APIConnectionError) as unreachable:
            await gone.checkouts.get("abc")
        cause = unreachable.value.__cause__
        assert isinstance(cause, httpx.ConnectError)
        assert isinstance(cause.__cause__, aiohttp.ClientConnectorError)
    finally:
        await sdk.aclose()
        await gone.aclose()
