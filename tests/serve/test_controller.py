"""The controller: registry, dispatch, heartbeat expiry, its HTTP API and its command line; the stream format.

Workers here are fake (a registered name and status): the model worker tests run the real thing.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time

import httpx
import pytest

from llava.serve._background import BackgroundServer
from llava.serve._stream import NulSplitter, encode_stream_object, iter_stream_objects
from llava.serve.controller import Controller, DispatchMethod, create_app


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


# --- dispatch ---------------------------------------------------------------------------------------------------


def test_shortest_queue_picks_lowest_queue_per_speed_and_counts_the_pick():
    controller = Controller("shortest_queue")
    controller.register_worker("http://a", True, status("m", queue_length=2))
    controller.register_worker("http://b", True, status("m", queue_length=0))
    controller.register_worker("http://c", True, status("m", speed=4, queue_length=1))
    controller.register_worker("http://other", True, status("other-model"))
    picks = [controller.get_worker_address("m") for _ in range(6)]
    # worked by hand: queue/speed starts a=2, b=0, c=0.25; each pick adds 1 to the picked queue; ties go to the
    # first registered
    assert picks == ["http://b", "http://c", "http://c", "http://c", "http://b", "http://c"]
    assert controller.worker_info["http://b"].queue_length == 2
    # a heartbeat replaces the controller's guess with the worker's real queue length
    assert controller.receive_heart_beat("http://a", 0)
    assert controller.get_worker_address("m") == "http://a"


def test_lottery_follows_speeds():
    controller = Controller("lottery", rng=random.Random(0))
    controller.register_worker("http://slow", True, status("m", speed=1))
    controller.register_worker("http://fast", True, status("m", speed=3))
    controller.register_worker("http://stopped", True, status("m", speed=0))
    picks = [controller.get_worker_address("m") for _ in range(4000)]
    assert "http://stopped" not in picks
    assert abs(picks.count("http://fast") / len(picks) - 0.75) < 0.03
    # the lottery does not touch queue lengths
    assert all(info.queue_length == 0 for info in controller.worker_info.values())


@pytest.mark.parametrize("method", ["lottery", "shortest_queue"])
def test_no_worker_for_model_gives_empty_address(method):
    controller = Controller(method)
    assert controller.get_worker_address("m") == ""
    controller.register_worker("http://a", True, status("m"))
    assert controller.get_worker_address("unknown") == ""


def test_lottery_with_only_zero_speeds_gives_empty_address():
    controller = Controller("lottery")
    controller.register_worker("http://a", True, status("m", speed=0))
    assert controller.get_worker_address("m") == ""


def test_unknown_dispatch_method_is_refused():
    with pytest.raises(ValueError, match="round_robin.*lottery, shortest_queue"):
        Controller("round_robin")
    assert Controller(DispatchMethod.LOTTERY).dispatch_method is DispatchMethod.LOTTERY


# --- registry and expiry ----------------------------------------------------------------------------------------


def test_expiry_drops_only_silent_heartbeat_checked_workers():
    clock = FakeClock()
    controller = Controller(heart_beat_expiration=30, clock=clock)
    controller.register_worker("http://silent", True, status("m1"))
    controller.register_worker("http://beating", True, status("m2"))
    controller.register_worker("http://unchecked", False, status("m3"))
    clock.now += 20
    assert controller.receive_heart_beat("http://beating", 3)
    clock.now += 10.5  # silent: 30.5 s without a heartbeat; beating: 10.5 s
    assert controller.remove_expired_workers() == ["http://silent"]
    assert controller.list_models() == ["m2", "m3"]
    assert controller.worker_info["http://beating"].queue_length == 3
    assert not controller.receive_heart_beat("http://silent", 0)  # told to register again


def test_register_without_status_asks_the_worker_and_fails_when_unreachable():
    controller = Controller()
    address = closed_port_url()
    assert controller.register_worker(address, True, None) is False
    assert controller.list_models() == []


def test_refresh_drops_unreachable_workers():
    controller = Controller()
    controller.register_worker(closed_port_url(), True, status("m"))
    controller.refresh_all_workers()
    assert controller.worker_info == {}


# --- HTTP API ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served():
    """A controller with a fast expiry sweep, served on a free port."""
    controller = Controller("lottery", heart_beat_expiration=0.6, sweep_interval=0.1, rng=random.Random(1))
    with BackgroundServer(create_app(controller)) as server:
        yield controller, server.url


def test_http_register_list_dispatch_heartbeat(served):
    _, url = served
    for name, speed in (("http://w1", 1), ("http://w2", 0)):
        answer = httpx.post(url + "/register_worker", json={
            "worker_name": name, "check_heart_beat": False, "worker_status": status("m", "n", speed=speed)})
        assert answer.status_code == 200 and answer.json() == {"registered": True}
    assert httpx.post(url + "/list_models").json() == {"models": ["m", "n"]}
    # lottery: w2 has speed 0, so every pick is w1
    assert {httpx.post(url + "/get_worker_address", json={"model": "m"}).json()["address"] for _ in range(5)} == {
        "http://w1"}
    assert httpx.post(url + "/get_worker_address", json={"model": "nope"}).json() == {"address": ""}
    assert httpx.post(url + "/receive_heart_beat", json={"worker_name": "http://w1", "queue_length": 2}).json() == {
        "exist": True}
    assert httpx.post(url + "/receive_heart_beat", json={"worker_name": "http://x", "queue_length": 0}).json() == {
        "exist": False}


def test_http_background_sweep_removes_silent_worker(served):
    controller, url = served
    httpx.post(url + "/register_worker", json={"worker_name": "http://ghost", "check_heart_beat": True,
                                               "worker_status": status("ghost-model")})
    httpx.post(url + "/register_worker", json={"worker_name": "http://static", "check_heart_beat": False,
                                               "worker_status": status("static-model")})
    assert httpx.post(url + "/list_models").json()["models"] == ["ghost-model", "static-model"]
    assert wait_for(lambda: httpx.post(url + "/list_models").json()["models"] == ["static-model"], timeout=5)
    assert "http://ghost" not in controller.worker_info


def test_http_stream_errors_are_stream_objects(served):
    _, url = served
    body = httpx.post(url + "/worker_generate_stream", json={"model": "nope", "prompt": "hi"}).content
    assert body.endswith(b"\0")
    assert list(iter_stream_objects([body])) == [{"text": "no worker serves model 'nope'", "error_code": 2}]

    dead = closed_port_url()
    httpx.post(url + "/register_worker", json={"worker_name": dead, "check_heart_beat": False,
                                               "worker_status": status("dead-model")})
    objects = list(iter_stream_objects([httpx.post(url + "/worker_generate_stream",
                                                   json={"model": "dead-model", "prompt": "hi"}).content]))
    assert len(objects) == 1 and objects[0]["error_code"] == 3 and dead in objects[0]["text"]


def test_http_status_of_a_controller_without_workers(served):
    _, url = served
    assert httpx.post(url + "/worker_get_status").json() == {"model_names": [], "speed": 0, "queue_length": 0}
    assert httpx.post(url + "/refresh_all_workers").json() == {"models": []}


def test_controller_command_line(tmp_path):
    """``python -m llava.serve.controller`` serves on the given port (a real separate process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "llava.serve.controller", "--port", str(port), "--dispatch-method", "lottery",
         "--heart-beat-expiration", "5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def answers() -> bool:
            assert process.poll() is None, "the controller process exited"
            try:
                return httpx.post(url + "/list_models", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, timeout=30), "the controller did not come up"
        httpx.post(url + "/register_worker", json={"worker_name": "http://w", "check_heart_beat": True,
                                                   "worker_status": status("cli-model")})
        assert httpx.post(url + "/get_worker_address", json={"model": "cli-model"}).json() == {"address": "http://w"}
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "dispatch lottery" in output
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
