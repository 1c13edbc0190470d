"""Run a FastAPI app with uvicorn in a background thread (tests, notebooks, several servers in one process)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class BackgroundServer:
    """A uvicorn server on its own thread, listening on a socket bound before it starts (``port=0``: any free one).

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Signal handlers are left alone (uvicorn
    installs them only on the main thread).
    """

    def __init__(self, app=None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        """Bind the socket now (so :attr:`url` is known before the app exists); serve ``app`` from :meth:`start`."""
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.app = app
        self.log_level = log_level
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, app=None, timeout: float = 30.0) -> BackgroundServer:
        """Start serving ``app`` (or the one given to the constructor); return once it accepts connections.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds (or its startup failed).
        """
        app = app if app is not None else self.app
        if app is None:
            raise ValueError("BackgroundServer.start needs an app")
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=self.log_level, lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True,
                                        name=f"uvicorn-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to finish (running lifespan shutdown), wait for its thread, close the socket."""
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
