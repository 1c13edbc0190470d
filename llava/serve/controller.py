"""The controller: keeps the list of model workers, tells clients which worker serves a model, relays streams.

    python -m llava.serve.controller --host 127.0.0.1 --port 21001 --dispatch-method shortest_queue

Workers register themselves (``/register_worker``) and send a heartbeat every ``WORKER_HEART_BEAT_INTERVAL``
seconds; a worker that stays silent for ``CONTROLLER_HEART_BEAT_EXPIRATION`` seconds is dropped, whatever its
``check_heart_beat`` said (upstream exempted ``check_heart_beat: false`` workers forever).

Only real workers are called: a worker address must be ``http(s)://host:port`` with nothing after it, and the
controller lists a worker only after it answered ``/worker_get_status`` itself (a ``worker_status`` sent with the
registration is not trusted). With a shared secret (``--worker-token``, or the environment variable
``LLAVA_WORKER_TOKEN``), registering, heartbeats and deregistering must carry it as ``worker_token``; without one,
anyone who can reach the controller may register (it binds 127.0.0.1 unless told otherwise).
Endpoints (JSON POST, as upstream LLaVA's controller, plus ``/deregister_worker``):

==========================  ======================================================  ===============================
endpoint                    body                                                    answer
==========================  ======================================================  ===============================
/register_worker            {worker_name, check_heart_beat, worker_token?}          {registered}
/refresh_all_workers        -                                                       {models}
/list_models                -                                                       {models}
/get_worker_address         {model}                                                 {address} ("" when none)
/receive_heart_beat         {worker_name, queue_length, worker_token?}              {exist}
/deregister_worker          {worker_name, worker_token?}                            {removed}
/worker_generate_stream     the worker's generation request                          the worker's NUL-delimited stream
/worker_get_status          -                                                       {model_names, speed, queue_length}
==========================  ======================================================  ===============================

The last two let a controller stand in for a worker (a controller of controllers). All state lives in a
:class:`Controller` instance; :func:`create_app` wires one to a FastAPI app.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, ValidationError

from ..constants import CONTROLLER_HEART_BEAT_EXPIRATION
from ..utils import build_logger
from ._stream import (
    ERROR_NO_WORKER,
    ERROR_WORKER_UNREACHABLE,
    aiter_stream_records,
    encode_stream_object,
    error_object,
)

try:
    import uvicorn
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import StreamingResponse
except ImportError as err:  # the serve extra is optional
    raise ImportError(f"the LLaVA controller needs fastapi and uvicorn ({err}): pip install 'llava[serve]'") from err

# A fixed name rather than __name__, which is "__main__" under `python -m`.
logger = logging.getLogger("llava.serve.controller")

#: seconds allowed to connect to a worker / to wait for its next bytes while relaying a stream
WORKER_CONNECT_TIMEOUT = 5.0
WORKER_READ_TIMEOUT = 120.0
#: environment variable holding the shared secret workers must present (the --worker-token default)
WORKER_TOKEN_ENV = "LLAVA_WORKER_TOKEN"


class RegistrationError(ValueError):
    """A registration, heartbeat or deregistration the controller refuses; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def validate_worker_address(address: str) -> str:
    """Return ``address`` if it is ``http(s)://host:port`` with nothing after it, else raise RegistrationError."""
    problem = None
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as err:
        parts, port, problem = None, None, str(err)
    if problem is None:
        if parts.scheme not in ("http", "https"):
            problem = f"scheme {parts.scheme!r} is not http or https"
        elif not parts.hostname or parts.username is not None or parts.password is not None:
            problem = "it needs a host (and no user name or password)"
        elif port is None:
            problem = "it has no port"
        elif parts.path or parts.query or parts.fragment or address.endswith(("?", "#")):
            problem = "nothing may follow host:port (no path, query or fragment)"
    if problem is not None:
        raise RegistrationError(f"worker address {address!r} refused: {problem}; expected scheme://host:port, "
                                "e.g. http://127.0.0.1:21002")
    return address


class DispatchMethod(Enum):
    """How ``get_worker_address`` picks among the workers serving a model."""

    LOTTERY = "lottery"  # at random, weighted by each worker's speed
    SHORTEST_QUEUE = "shortest_queue"  # the smallest queue_length / speed; that queue then counts one more

    @classmethod
    def from_str(cls, name: str) -> DispatchMethod:
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown dispatch method {name!r}; valid methods are {valid}") from None


class WorkerStatus(BaseModel):
    """What a worker reports about itself (``/worker_get_status``)."""

    model_names: list[str]
    speed: int | float = 1
    queue_length: int = 0


class RegisterWorkerRequest(BaseModel):
    worker_name: str = Field(description="the worker's address, e.g. http://127.0.0.1:21002")
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = Field(None, description="accepted for compatibility; the controller "
                                                                 "asks the worker itself")
    worker_token: str | None = None


class HeartBeatRequest(BaseModel):
    worker_name: str
    queue_length: int = 0
    worker_token: str | None = None


class DeregisterWorkerRequest(BaseModel):
    worker_name: str
    worker_token: str | None = None


class WorkerAddressRequest(BaseModel):
    model: str


@dataclass
class WorkerInfo:
    """The controller's record of one worker."""

    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float  # on the controller's clock (monotonic seconds)


class Controller:
    """The registry of workers, with dispatch and heartbeat expiry.

    Args:
        dispatch_method: "lottery" or "shortest_queue".
        heart_beat_expiration: seconds without a heartbeat after which a worker registered with
            ``check_heart_beat`` is removed.
        sweep_interval: seconds between expiry sweeps (default: ``heart_beat_expiration``, as upstream, so a silent
            worker goes after one to two expirations).
        rng: random source for the lottery (seeded in tests).
        clock: monotonic time source.
        worker_token: shared secret that registrations, heartbeats and deregistrations must carry (None: none).
    """

    def __init__(
        self,
        dispatch_method: str | DispatchMethod = DispatchMethod.SHORTEST_QUEUE,
        *,
        heart_beat_expiration: float = CONTROLLER_HEART_BEAT_EXPIRATION,
        sweep_interval: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        worker_token: str | None = None,
    ) -> None:
        if isinstance(dispatch_method, str):
            dispatch_method = DispatchMethod.from_str(dispatch_method)
        if heart_beat_expiration <= 0:
            raise ValueError(f"heart_beat_expiration must be positive, got {heart_beat_expiration}")
        self.dispatch_method = dispatch_method
        self.heart_beat_expiration = heart_beat_expiration
        self.sweep_interval = sweep_interval if sweep_interval is not None else heart_beat_expiration
        self.worker_info: dict[str, WorkerInfo] = {}
        self._lock = threading.Lock()  # guards worker_info: endpoints run on a thread pool, the sweeper on its own
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._worker_token = worker_token or None

    def check_token(self, token: str | None, worker_name: str) -> None:
        """Raise RegistrationError (HTTP 403) unless ``token`` is the controller's secret (when it has one)."""
        if self._worker_token is None:
            return
        if token is None or not hmac.compare_digest(token.encode(), self._worker_token.encode()):
            raise RegistrationError(f"worker {worker_name!r}: missing or wrong worker_token", status=403)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread that removes expired workers."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="controller-heartbeat-sweeper", daemon=True)
        self._sweeper.start()
        logger.info("controller started: dispatch %s, heartbeat expiration %.1f s",
                    self.dispatch_method.value, self.heart_beat_expiration)

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
            self._sweeper = None

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_interval):
            self.remove_expired_workers()

    # --- registry -------------------------------------------------------------------------------------------

    def register_worker(self, worker_name: str, check_heart_beat: bool = True, worker_status: dict | None = None,
                        *, token: str | None = None) -> bool:
        """Add or update a worker once it has answered ``/worker_get_status`` itself.

        ``worker_status`` (sent by upstream's workers) is not trusted: the live answer is what gets listed.
        Every worker expires after ``heart_beat_expiration`` seconds without a heartbeat; ``check_heart_beat``
        is recorded for compatibility only.

        Returns:
            False when the worker did not answer (it is then not registered).
        Raises:
            RegistrationError: a malformed address (400) or a missing / wrong token (403).
        """
        validate_worker_address(worker_name)
        self.check_token(token, worker_name)
        live = self.get_worker_status(worker_name)
        if live is None:
            return False
        status = WorkerStatus.model_validate(live)
        with self._lock:
            known = worker_name in self.worker_info
            self.worker_info[worker_name] = WorkerInfo(
                list(status.model_names), status.speed, status.queue_length, check_heart_beat, self._clock()
            )
        logger.info("%s worker %s: models %s, speed %s, queue %d", "updated" if known else "registered new",
                    worker_name, status.model_names, status.speed, status.queue_length)
        return True

    def deregister_worker(self, worker_name: str, *, token: str | None = None) -> bool:
        """Remove a worker at its own request (a worker stopping); True if it was registered."""
        self.check_token(token, worker_name)
        with self._lock:
            known = self.worker_info.pop(worker_name, None) is not None
        logger.info("worker %s deregistered%s", worker_name, "" if known else " (it was not registered)")
        return known

    def get_worker_status(self, worker_name: str) -> dict | None:
        """Ask a worker for its status; None (logged) when it cannot be reached or answers nonsense."""
        try:
            response = httpx.post(worker_name + "/worker_get_status", timeout=WORKER_CONNECT_TIMEOUT)
            response.raise_for_status()
            return WorkerStatus.model_validate(response.json()).model_dump()
        except (httpx.HTTPError, ValueError, ValidationError) as err:
            logger.error("cannot get the status of worker %s: %s", worker_name, err)
            return None

    def remove_worker(self, worker_name: str) -> None:
        with self._lock:
            self.worker_info.pop(worker_name, None)
        logger.info("removed worker %s", worker_name)

    def refresh_all_workers(self) -> None:
        """Ask every known worker for its status again; drop those that do not answer."""
        with self._lock:
            known = dict(self.worker_info)
        for name, info in known.items():
            if not self.register_worker(name, info.check_heart_beat, token=self._worker_token):
                logger.info("removing unreachable worker %s", name)
                self.remove_worker(name)

    def list_models(self) -> list[str]:
        """Every model name some worker serves, sorted."""
        with self._lock:
            return sorted({name for info in self.worker_info.values() for name in info.model_names})

    def get_worker_address(self, model_name: str) -> str:
        """The address of a worker serving ``model_name`` by the dispatch method; "" when none does."""
        with self._lock:
            candidates = [(name, info) for name, info in self.worker_info.items() if model_name in info.model_names]
            if not candidates:
                return ""
            if self.dispatch_method is DispatchMethod.LOTTERY:
                speeds = [max(info.speed, 0.0) for _, info in candidates]
                if sum(speeds) < 1e-4:
                    return ""
                return self._rng.choices([name for name, _ in candidates], weights=speeds)[0]
            # SHORTEST_QUEUE: the first registered among equals; the pick counts until its next heartbeat
            name, info = min(candidates, key=lambda c: c[1].queue_length / c[1].speed if c[1].speed > 0
                             else float("inf"))
            info.queue_length += 1
            return name

    def receive_heart_beat(self, worker_name: str, queue_length: int, *, token: str | None = None) -> bool:
        """Record a heartbeat. Returns False for an unknown worker (it should register again).

        Raises:
            RegistrationError: a missing / wrong token (403) when the controller has one.
        """
        self.check_token(token, worker_name)
        with self._lock:
            info = self.worker_info.get(worker_name)
            if info is None:
                logger.info("heartbeat from unknown worker %s", worker_name)
                return False
            info.queue_length = queue_length
            info.last_heart_beat = self._clock()
        return True

    def remove_expired_workers(self) -> list[str]:
        """Drop workers silent for longer than the expiration (``check_heart_beat`` or not); return their names."""
        deadline = self._clock() - self.heart_beat_expiration
        with self._lock:
            expired = [name for name, info in self.worker_info.items() if info.last_heart_beat < deadline]
            for name in expired:
                del self.worker_info[name]
        for name in expired:
            logger.info("worker %s expired (no heartbeat for %.1f s)", name, self.heart_beat_expiration)
        return expired

    # --- the controller as a worker -------------------------------------------------------------------------

    def worker_api_get_status(self) -> dict[str, Any]:
        """The union of the workers' models, the sum of their speeds and queue lengths (asked live)."""
        with self._lock:
            names = list(self.worker_info)
        model_names: set[str] = set()
        speed, queue_length = 0, 0
        for name in names:
            status = self.get_worker_status(name)
            if status is not None:
                model_names.update(status["model_names"])
                speed += status["speed"]
                queue_length += status["queue_length"]
        return {"model_names": sorted(model_names), "speed": speed, "queue_length": queue_length}

    async def worker_api_generate_stream(self, params: dict[str, Any]) -> AsyncIterator[bytes]:
        """Relay the stream of a worker chosen for ``params["model"]``, object by object.

        Failures become stream objects: error_code 2 when no worker serves the model, 3 when the worker cannot be
        reached or breaks off.
        """
        model = params.get("model")
        address = self.get_worker_address(model) if isinstance(model, str) else ""
        if not address:
            logger.info("no worker for model %r", model)
            yield encode_stream_object(error_object(f"no worker serves model {model!r}", ERROR_NO_WORKER))
            return
        timeout = httpx.Timeout(WORKER_READ_TIMEOUT, connect=WORKER_CONNECT_TIMEOUT)
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                async with client.stream("POST", address + "/worker_generate_stream", json=params) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise httpx.HTTPStatusError(f"HTTP {response.status_code}: {response.text[:200]}",
                                                    request=response.request, response=response)
                    async for record in aiter_stream_records(response.aiter_bytes()):
                        yield record
        except (httpx.HTTPError, ValueError) as err:  # unreachable, an error status, or a stream broken off
            logger.info("worker %s failed: %s", address, err)
            yield encode_stream_object(error_object(f"worker {address} failed: {err}", ERROR_WORKER_UNREACHABLE))


def create_app(controller: Controller) -> FastAPI:
    """A FastAPI app serving ``controller``; its lifespan starts and stops the expiry sweeper."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        controller.start()
        try:
            yield
        finally:
            controller.stop()

    app = FastAPI(title="LLaVA controller", lifespan=lifespan)
    app.state.controller = controller

    # Endpoints that may call workers are plain functions: FastAPI runs them on its thread pool.
    def refused(err: RegistrationError) -> HTTPException:
        logger.warning("refused: %s", err)
        return HTTPException(status_code=err.status, detail=str(err))

    @app.post("/register_worker")
    def register_worker(request: RegisterWorkerRequest) -> dict[str, bool]:
        try:
            registered = controller.register_worker(request.worker_name, request.check_heart_beat,
                                                    token=request.worker_token)
        except RegistrationError as err:
            raise refused(err) from None
        return {"registered": registered}

    @app.post("/deregister_worker")
    def deregister_worker(request: DeregisterWorkerRequest) -> dict[str, bool]:
        try:
            return {"removed": controller.deregister_worker(request.worker_name, token=request.worker_token)}
        except RegistrationError as err:
            raise refused(err) from None

    @app.post("/refresh_all_workers")
    def refresh_all_workers() -> dict[str, list[str]]:
        controller.refresh_all_workers()
        return {"models": controller.list_models()}

    @app.post("/list_models")
    def list_models() -> dict[str, list[str]]:
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    def get_worker_address(request: WorkerAddressRequest) -> dict[str, str]:
        return {"address": controller.get_worker_address(request.model)}

    @app.post("/receive_heart_beat")
    def receive_heart_beat(request: HeartBeatRequest) -> dict[str, bool]:
        try:
            return {"exist": controller.receive_heart_beat(request.worker_name, request.queue_length,
                                                           token=request.worker_token)}
        except RegistrationError as err:
            raise refused(err) from None

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(params: dict[str, Any] = Body(...)) -> StreamingResponse:
        return StreamingResponse(controller.worker_api_generate_stream(params))

    @app.post("/worker_get_status")
    def worker_get_status() -> dict[str, Any]:
        return controller.worker_api_get_status()

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The LLaVA serving controller.")
    parser.add_argument("--host", type=str, default="127.0.0.1",
                        help="address to bind (default: localhost only; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=21001)
    parser.add_argument("--dispatch-method", type=str, choices=[m.value for m in DispatchMethod],
                        default=DispatchMethod.SHORTEST_QUEUE.value)
    parser.add_argument("--heart-beat-expiration", type=float, default=CONTROLLER_HEART_BEAT_EXPIRATION,
                        help="seconds without a heartbeat before a worker is dropped")
    parser.add_argument("--worker-token", type=str, default=os.environ.get(WORKER_TOKEN_ENV),
                        help=f"shared secret workers must send to register (default: ${WORKER_TOKEN_ENV}; the "
                             "environment variable keeps it out of the process list)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    build_logger(logger.name, "controller.log")
    logger.info("args: %s", {k: ("***" if k == "worker_token" and v else v) for k, v in vars(args).items()})
    controller = Controller(args.dispatch_method, heart_beat_expiration=args.heart_beat_expiration,
                            worker_token=args.worker_token)
    uvicorn.run(create_app(controller), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
