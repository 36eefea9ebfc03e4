"""Run a sandbox in a background thread on a free localhost port (tests and scripts)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from apps.sumup_sandbox.app import create_app
from apps.sumup_sandbox.state import SandboxState


class BackgroundSandbox:
    """A real HTTP sandbox server for the lifetime of a `with` block.

    The listening socket is bound before the thread starts, so `url` is valid at once and no
    other process can take the port in between.
    """

    def __init__(
        self,
        *,
        state: SandboxState | None = None,
        api_keys: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.state = state if state is not None else SandboxState()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        app = create_app(api_keys=api_keys, public_url=self.url, state=self.state)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, *, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"SumUp sandbox did not start on {self.url}")
            time.sleep(0.01)

    def stop(self, *, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundSandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
