"""The controller: registry, dispatch, heartbeat expiry, its HTTP API and its command line; the stream format.

Workers here are small real HTTP servers answering ``/worker_get_status`` (the controller checks every worker
itself); the model worker tests run the real model worker.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time

import httpx
import pytest

from llava.serve._background import BackgroundServer
from llava.serve._stream import NulSplitter, encode_stream_object, iter_stream_objects
from llava.serve.controller import (
    Controller,
    DispatchMethod,
    RegistrationError,
    create_app,
    validate_worker_address,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(*models: str, speed: float = 1, queue_length: int = 0) -> dict:
    return {"model_names": list(models), "speed": speed, "queue_length": queue_length}


def closed_port_url() -> str:
    """An address where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class StatusWorker:
    """A real HTTP server on 127.0.0.1 that answers ``/worker_get_status`` with ``self.status`` (what a model
    worker answers), so the controller's own check of each worker runs for real."""

    def __init__(self) -> None:
        from fastapi import FastAPI

        self.status = status("m")
        app = FastAPI()
        app.post("/worker_get_status")(lambda: self.status)
        self.server = BackgroundServer(app)

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def worker_pool():
    workers = [StatusWorker() for _ in range(4)]
    for worker in workers:
        worker.server.start()
    yield workers
    for worker in workers:
        worker.server.stop()


@pytest.fixture
def workers(worker_pool):
    """Four live status workers (statuses reset to serve "m")."""
    for worker in worker_pool:
        worker.status = status("m")
    return worker_pool


def register(controller, worker, st, check_heart_beat=True, **kwargs) -> str:
    worker.status = st
    assert controller.register_worker(worker.url, check_heart_beat, **kwargs)
    return worker.url


# --- dispatch ---------------------------------------------------------------------------------------------------


def test_shortest_queue_picks_lowest_queue_per_speed_and_counts_the_pick(workers):
    controller = Controller("shortest_queue")
    a = register(controller, workers[0], status("m", queue_length=2))
    b = register(controller, workers[1], status("m", queue_length=0))
    c = register(controller, workers[2], status("m", speed=4, queue_length=1))
    register(controller, workers[3], status("other-model"))
    picks = [controller.get_worker_address("m") for _ in range(6)]
    # worked by hand: queue/speed starts a=2, b=0, c=0.25; each pick adds 1 to the picked queue; ties go to the
    # first registered
    assert picks == [b, c, c, c, b, c]
    assert controller.worker_info[b].queue_length == 2
    # a heartbeat replaces the controller's guess with the worker's real queue length
    assert controller.receive_heart_beat(a, 0)
    assert controller.get_worker_address("m") == a


def test_lottery_follows_speeds(workers):
    controller = Controller("lottery", rng=random.Random(0))
    register(controller, workers[0], status("m", speed=1))
    fast = register(controller, workers[1], status("m", speed=3))
    stopped = register(controller, workers[2], status("m", speed=0))
    picks = [controller.get_worker_address("m") for _ in range(4000)]
    assert stopped not in picks
    assert abs(picks.count(fast) / len(picks) - 0.75) < 0.03
    # the lottery does not touch queue lengths
    assert all(info.queue_length == 0 for info in controller.worker_info.values())


@pytest.mark.parametrize("method", ["lottery", "shortest_queue"])
def test_no_worker_for_model_gives_empty_address(workers, method):
    controller = Controller(method)
    assert controller.get_worker_address("m") == ""
    register(controller, workers[0], status("m"))
    assert controller.get_worker_address("unknown") == ""


def test_lottery_with_only_zero_speeds_gives_empty_address(workers):
    controller = Controller("lottery")
    register(controller, workers[0], status("m", speed=0))
    assert controller.get_worker_address("m") == ""


def test_unknown_dispatch_method_is_refused():
    with pytest.raises(ValueError, match="round_robin.*lottery, shortest_queue"):
        Controller("round_robin")
    assert Controller(DispatchMethod.LOTTERY).dispatch_method is DispatchMethod.LOTTERY


# --- registry and expiry ----------------------------------------------------------------------------------------


def test_expiry_drops_silent_workers_whatever_check_heart_beat_says(workers):
    clock = FakeClock()
    controller = Controller(heart_beat_expiration=30, clock=clock)
    silent = register(controller, workers[0], status("m1"))
    beating = register(controller, workers[1], status("m2"))
    unchecked = register(controller, workers[2], status("m3"), check_heart_beat=False)
    clock.now += 20
    assert controller.receive_heart_beat(beating, 3)
    clock.now += 10.5  # silent and unchecked: 30.5 s without a heartbeat; beating: 10.5 s
    assert sorted(controller.remove_expired_workers()) == sorted([silent, unchecked])
    assert controller.list_models() == ["m2"]
    assert controller.worker_info[beating].queue_length == 3
    assert not controller.receive_heart_beat(silent, 0)  # told to register again


def test_register_without_status_asks_the_worker_and_fails_when_unreachable():
    controller = Controller()
    address = closed_port_url()
    assert controller.register_worker(address, True, None) is False
    assert controller.list_models() == []


def test_a_status_sent_with_the_registration_is_not_trusted(workers):
    """Only what the worker itself answers is listed; an address that is not a worker is not listed at all."""
    controller = Controller()
    workers[0].status = status("real-model")
    assert controller.register_worker(workers[0].url, False, status("claimed-model"))
    assert controller.list_models() == ["real-model"]
    assert controller.register_worker(closed_port_url(), False, status("ghost")) is False
    assert controller.list_models() == ["real-model"]


@pytest.mark.parametrize("address", [
    "http://127.0.0.1:21002/anypath?x=", "http://127.0.0.1:21002/", "http://127.0.0.1:21002?x", "ftp://127.0.0.1:21",
    "http://127.0.0.1", "http://user:pw@127.0.0.1:21002", "127.0.0.1:21002", "http://127.0.0.1:21002#frag",
])
def test_worker_addresses_must_be_scheme_host_port_only(address):
    with pytest.raises(RegistrationError, match="refused.*expected scheme://host:port"):
        Controller().register_worker(address, True, None)
    assert validate_worker_address("https://gpu-7.local:443") == "https://gpu-7.local:443"


def test_refresh_drops_workers_that_stopped_answering(workers):
    controller = Controller()
    worker = StatusWorker()
    with worker.server:
        register(controller, worker, status("m"))
        assert controller.list_models() == ["m"]
    controller.refresh_all_workers()
    assert controller.worker_info == {}


def test_a_token_is_required_when_set(workers):
    controller = Controller(worker_token="s3cret")
    with pytest.raises(RegistrationError, match="missing or wrong worker_token") as refused:
        controller.register_worker(workers[0].url, True)
    assert refused.value.status == 403
    with pytest.raises(RegistrationError):
        controller.register_worker(workers[0].url, True, token="guess")
    assert controller.worker_info == {}
    assert controller.register_worker(workers[0].url, True, token="s3cret")
    with pytest.raises(RegistrationError):
        controller.receive_heart_beat(workers[0].url, 0)
    assert controller.receive_heart_beat(workers[0].url, 0, token="s3cret")
    with pytest.raises(RegistrationError):
        controller.deregister_worker(workers[0].url)
    assert controller.deregister_worker(workers[0].url, token="s3cret")
    assert controller.worker_info == {}


# --- HTTP API ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served():
    """A controller with a fast expiry sweep, served on a free port."""
    controller = Controller("lottery", heart_beat_expiration=0.6, sweep_interval=0.1, rng=random.Random(1))
    with BackgroundServer(create_app(controller)) as server:
        yield controller, server.url


@pytest.fixture
def served_slowly():
    """A controller whose workers expire only after 30 s, served on a free port."""
    controller = Controller("lottery", heart_beat_expiration=30, rng=random.Random(1))
    with BackgroundServer(create_app(controller)) as server:
        yield controller, server.url


def test_http_register_list_dispatch_heartbeat(served_slowly, workers):
    _, url = served_slowly
    for worker, speed in ((workers[0], 1), (workers[1], 0)):
        worker.status = status("m", "n", speed=speed)
        answer = httpx.post(url + "/register_worker", json={"worker_name": worker.url, "check_heart_beat": False})
        assert answer.status_code == 200 and answer.json() == {"registered": True}
    assert httpx.post(url + "/list_models").json() == {"models": ["m", "n"]}
    # lottery: the second worker has speed 0, so every pick is the first
    assert {httpx.post(url + "/get_worker_address", json={"model": "m"}).json()["address"] for _ in range(5)} == {
        workers[0].url}
    assert httpx.post(url + "/get_worker_address", json={"model": "nope"}).json() == {"address": ""}
    assert httpx.post(url + "/receive_heart_beat", json={"worker_name": workers[0].url, "queue_length": 2}).json() \
        == {"exist": True}
    assert httpx.post(url + "/receive_heart_beat", json={"worker_name": "http://x:1", "queue_length": 0}).json() == {
        "exist": False}
    assert httpx.post(url + "/deregister_worker", json={"worker_name": workers[1].url}).json() == {"removed": True}
    assert httpx.post(url + "/get_worker_address", json={"model": "n"}).json() == {"address": workers[0].url}


def test_http_refuses_hostile_registrations(served, workers):
    controller, url = served
    answer = httpx.post(url + "/register_worker", json={"worker_name": workers[0].url + "/anypath?x=",
                                                        "check_heart_beat": False,
                                                        "worker_status": status("m")})
    assert answer.status_code == 400 and "nothing may follow host:port" in answer.json()["detail"]
    answer = httpx.post(url + "/register_worker", json={"worker_name": closed_port_url(), "check_heart_beat": False,
                                                        "worker_status": status("m")})
    assert answer.json() == {"registered": False}
    assert controller.worker_info == {}


def test_http_token(workers):
    controller = Controller(worker_token="t0k")
    with BackgroundServer(create_app(controller)) as server:
        body = {"worker_name": workers[0].url, "check_heart_beat": True}
        assert httpx.post(server.url + "/register_worker", json=body).status_code == 403
        assert httpx.post(server.url + "/register_worker", json={**body, "worker_token": "t0k"}).json() == {
            "registered": True}


def test_http_background_sweep_removes_silent_workers(served, workers):
    controller, url = served
    workers[0].status = status("ghost-model")
    workers[1].status = status("static-model")
    httpx.post(url + "/register_worker", json={"worker_name": workers[0].url, "check_heart_beat": True})
    httpx.post(url + "/register_worker", json={"worker_name": workers[1].url, "check_heart_beat": False})
    assert httpx.post(url + "/list_models").json()["models"] == ["ghost-model", "static-model"]
    assert wait_for(lambda: httpx.post(url + "/list_models").json()["models"] == [], timeout=5)
    assert controller.worker_info == {}


def test_http_stream_errors_are_stream_objects(served):
    controller, url = served
    body = httpx.post(url + "/worker_generate_stream", json={"model": "nope", "prompt": "hi"}).content
    assert body.endswith(b"\0")
    assert list(iter_stream_objects([body])) == [{"text": "no worker serves model 'nope'", "error_code": 2}]

    dying = StatusWorker()
    dying.status = status("dead-model")
    with dying.server:
        assert controller.register_worker(dying.url, False)
    objects = list(iter_stream_objects([httpx.post(url + "/worker_generate_stream",
                                                   json={"model": "dead-model", "prompt": "hi"}).content]))
    assert len(objects) == 1 and objects[0]["error_code"] == 3 and dying.url in objects[0]["text"]


def test_http_status_of_a_controller_without_workers(served):
    _, url = served
    assert httpx.post(url + "/worker_get_status").json() == {"model_names": [], "speed": 0, "queue_length": 0}
    assert httpx.post(url + "/refresh_all_workers").json() == {"models": []}


def test_controller_command_line(tmp_path, workers):
    """``python -m llava.serve.controller`` serves on the given port (a real separate process), with the token
    taken from the environment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "llava.serve.controller", "--port", str(port), "--dispatch-method", "lottery",
         "--heart-beat-expiration", "5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "LLAVA_WORKER_TOKEN": "from-env"},
    )
    try:
        def answers() -> bool:
            assert process.poll() is None, "the controller process exited"
            try:
                return httpx.post(url + "/list_models", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, timeout=30), "the controller did not come up"
        workers[0].status = status("cli-model")
        body = {"worker_name": workers[0].url, "check_heart_beat": True}
        assert httpx.post(url + "/register_worker", json=body).status_code == 403
        httpx.post(url + "/register_worker", json={**body, "worker_token": "from-env"})
        assert httpx.post(url + "/get_worker_address", json={"model": "cli-model"}).json() == {
            "address": workers[0].url}
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "dispatch lottery" in output
    assert "from-env" not in output  # the secret is not logged
    assert (tmp_path / "controller.log").is_file()  # upstream's log file, in LOGDIR (".")


# --- the stream format ------------------------------------------------------------------------------------------


def test_nul_splitter_handles_any_chunking():
    objects = [{"text": "a\nb", "error_code": 0}, {"text": "ünïcode", "error_code": 0, "visual_tokens": [33]}]
    data = b"".join(encode_stream_object(o) for o in objects)
    assert data.count(b"\0") == 2 and json.loads(data.split(b"\0")[0]) == objects[0]
    for size in (1, 2, 5, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(iter_stream_objects(chunks)) == objects
    splitter = NulSplitter()
    assert splitter.feed(b'{"a": 1}\0\0{"b"') == [b'{"a": 1}']
    assert splitter.pending == b'{"b"'


def test_truncated_stream_is_an_error():
    with pytest.raises(ValueError, match="inside an object"):
        list(iter_stream_objects([b'{"text": "a", "error_code": 0}\0{"text": "ab']))
    with pytest.raises(ValueError, match="not JSON"):
        list(iter_stream_objects([b"nope\0"]))
