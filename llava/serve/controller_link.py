"""A model worker's side of the controller protocol: register, heartbeat, deregister (upstream's endpoints).

One :class:`ControllerLink` per worker. It owns the heartbeat thread and its events, so several workers in one
process (the tests run some) never share state.

* ``start``: a thread registers, retrying quickly until the controller lists the worker (the controller asks
  ``/worker_get_status`` itself first, which works only once the worker's server is listening). It then sends a
  heartbeat every interval, and one at once when ``beat_soon`` is called (a request started or ended).
* ``stop``: stop the heartbeats and POST ``/deregister_worker`` once, so the controller stops routing to the
  worker now rather than at heartbeat expiry.
* With a ``worker_token``, every call carries it as ``worker_token``, as a controller started with the same
  secret requires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from ..constants import WORKER_HEART_BEAT_INTERVAL

logger = logging.getLogger("llava.serve.model_worker")

HTTP_TIMEOUT = 5.0  # seconds for calls to the controller


class ControllerLink:
    """Registration and heartbeats of one worker.

    Args:
        controller_addr / worker_addr: base URLs of the controller and of the worker as the controller reaches it.
        status: the worker's ``/worker_get_status`` body, sent with the registration.
        queue_length: the worker's current queue length, sent with each heartbeat.
        describe: a line for the heartbeat log (models, semaphore, requests).
        enabled: False (``--no-register``): every call is a no-op.
        heart_beat_interval: seconds between heartbeats.
        worker_token: the controller's shared secret, or None.
    """

    def __init__(self, controller_addr: str, worker_addr: str, *, status: Callable[[], dict[str, Any]],
                 queue_length: Callable[[], int], describe: Callable[[], str], enabled: bool = True,
                 heart_beat_interval: float = WORKER_HEART_BEAT_INTERVAL, worker_token: str | None = None) -> None:
        self.controller_addr = controller_addr.rstrip("/")
        self.worker_addr = worker_addr.rstrip("/")
        self.enabled = enabled
        self.heart_beat_interval = heart_beat_interval
        self.worker_token = worker_token or None
        self._status, self._queue_length, self._describe = status, queue_length, describe
        self._stop = threading.Event()
        self._beat_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._deregister_lock = threading.Lock()
        self._deregistered = False

    def start(self) -> None:
        """Start the thread that registers and then heartbeats."""
        if not self.enabled:
            return
        self._stop.clear()
        self._deregistered = False
        self._thread = threading.Thread(target=self._heart_beat_loop, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeats, then deregister (once; also safe when never started)."""
        self._stop.set()
        self._beat_now.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None
        self.deregister()

    def beat_soon(self) -> None:
        """Send a heartbeat now rather than at the next interval (the queue length changed)."""
        self._beat_now.set()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        if self.worker_token is not None:
            body = {**body, "worker_token": self.worker_token}
        response = httpx.post(self.controller_addr + path, timeout=HTTP_TIMEOUT, json=body)
        response.raise_for_status()
        return response

    def register(self) -> bool:
        """Register, sending the worker's status (upstream's field; the controller asks the worker again).

        Returns:
            False when the controller answered that it could not reach the worker (``{"registered": false}``).
        Raises:
            httpx.HTTPError: the controller could not be reached or refused.
        """
        logger.info("registering with the controller at %s", self.controller_addr)
        response = self._post("/register_worker", {"worker_name": self.worker_addr, "check_heart_beat": True,
                                                    "worker_status": self._status()})
        answer = response.json() if response.content else None
        return not (isinstance(answer, dict) and answer.get("registered") is False)

    def heart_beat(self) -> bool:
        """One heartbeat; registers again when the controller has forgotten the worker. False when it failed."""
        logger.info("heartbeat: %s", self._describe())
        try:
            response = self._post("/receive_heart_beat", {"worker_name": self.worker_addr,
                                                          "queue_length": self._queue_length()})
            if not response.json()["exist"] and not self._stop.is_set():
                self.register()
        except (httpx.HTTPError, ValueError, KeyError) as err:
            logger.error("heartbeat to %s failed: %s", self.controller_addr, err)
            return False
        return True

    def deregister(self) -> bool:
        """POST ``/deregister_worker`` (once per start).

        Returns:
            True when the controller answered (whether or not it knew the worker); False when skipped or it failed
            (logged).
        """
        with self._deregister_lock:
            if not self.enabled or self._deregistered:
                return False
            self._deregistered = True
            try:
                self._post("/deregister_worker", {"worker_name": self.worker_addr})
            except httpx.HTTPError as err:
                logger.error("cannot deregister from the controller at %s: %s", self.controller_addr, err)
                return False
            logger.info("deregistered from the controller at %s", self.controller_addr)
            return True

    def _register_until_listed(self) -> None:
        """Register, retrying soon (0.1 s, doubling up to the heartbeat interval) until the controller lists us."""
        delay, reported = 0.1, False
        while not self._stop.is_set():
            try:
                if self.register():
                    return
                why = "it could not reach this worker at " + self.worker_addr
            except httpx.HTTPError as err:
                why = str(err)
            if not reported:  # once: the retries go on quietly
                logger.error("cannot register with the controller at %s yet (%s); retrying", self.controller_addr,
                             why)
                reported = True
            self._stop.wait(delay)
            delay = min(delay * 2, self.heart_beat_interval)

    def _heart_beat_loop(self) -> None:
        self._register_until_listed()
        while not self._stop.is_set():
            self._beat_now.wait(self.heart_beat_interval)
            self._beat_now.clear()
            if self._stop.is_set():
                break
            self.heart_beat()
