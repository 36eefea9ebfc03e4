"""`rose status`'s health column against real HTTP servers (ops.stack.state.health)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ops.stack.pgserver import free_port
from ops.stack.state import health


class _Readyz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        kind = self.server.kind  # type: ignore[attr-defined]
        if kind == "slow":
            time.sleep(3)
        if kind == "odd":
            # Something else on the port (a proxy's page, another program): not a problem.
            body = b'["not", "a", "problem"]'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
        elif kind == "busy":
            body = json.dumps(
                {"status": 503, "detail": "orders: all 10 database connections are busy"}
            ).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/problem+json")
        else:
            body = b'{"status":"ready"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the slow one answers a client that gave up: a broken pipe, expected


def _serve(kind: str) -> tuple[ThreadingHTTPServer, str]:
    server = _Server(("127.0.0.1", 0), _Readyz)
    server.kind = kind  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_status_says_why_a_service_is_not_ready_and_down_only_when_it_is():
    """probe_oncall: `rose status` said "orders down" while orders ran and its /readyz took
    more than 2 s (every pooled connection busy), and "not ready" without the reason its
    /readyz gave. Down is a service that does not take the connection."""
    servers = {kind: _serve(kind) for kind in ("ready", "busy", "slow", "odd")}
    try:
        answers = health(
            {
                "blog": servers["ready"][1],
                "orders": servers["busy"][1],
                "cart": servers["slow"][1],
                "likes": f"http://127.0.0.1:{free_port()}",
                "events": servers["odd"][1],
            },
            timeout=1.0,
        )
    finally:
        for server, _ in servers.values():
            server.shutdown()
    assert answers == {
        "blog": "ready",
        "orders": "not ready: orders: all 10 database connections are busy",
        "cart": "no answer within 1 s",
        "likes": "down",
        # Review 5: a body that is JSON but no problem raised AttributeError out of status.
        "events": "not ready (503)",
    }
