"""The model worker's HTTP layer: the FastAPI app over a ``ModelWorker`` and the uvicorn server that deregisters
it on SIGTERM. ``llava.serve.model_worker`` re-exports ``create_app``.

Endpoints: ``/worker_generate_stream`` (NUL-delimited JSON stream objects; a body that is not a JSON object, or
too large, gets one ``error_code`` 1 object) and ``/worker_get_status``.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ._stream import ERROR_GENERATION, encode_stream_object, error_object
from .request_limits import read_json_object

if TYPE_CHECKING:
    from .model_worker import ModelWorker

logger = logging.getLogger("llava.serve.model_worker")


class WorkerServer(uvicorn.Server):
    """uvicorn's server, deregistering the worker as soon as a SIGTERM / SIGINT arrives (in-flight requests may
    still take a while to finish; the controller should stop sending new ones now)."""

    def __init__(self, config: uvicorn.Config, worker: "ModelWorker") -> None:
        super().__init__(config)
        self._worker = worker

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:  # the first signal: off the signal handler, which must not block
            threading.Thread(target=self._worker.stop, name="worker-deregister", daemon=True).start()
        super().handle_exit(sig, frame)


def create_app(worker: "ModelWorker") -> FastAPI:
    """A FastAPI app serving ``worker``; its lifespan registers with the controller and runs the heartbeat."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="LLaVA model worker", lifespan=lifespan)
    app.state.worker = worker

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> StreamingResponse:
        params = await read_json_object(request, worker.max_request_bytes)
        if isinstance(params, str):  # refused: one error object, as any failed generation
            logger.info("bad request: %s", params)
            return StreamingResponse(iter([encode_stream_object(error_object(params, ERROR_GENERATION))]))
        return StreamingResponse(worker.generate_stream_async(params))

    @app.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return worker.get_status()

    return app
