"""The worker's side of the controller protocol (shared secret, deregistering on shutdown) and the bounds on what
one request may cost. Real servers on 127.0.0.1: a controller and tiny-checkpoint workers, in process and as a
``python -m llava.serve.model_worker`` subprocess."""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from io import BytesIO

import httpx
import pytest
from PIL import Image

from llava.serve import register_worker
from llava.serve._background import BackgroundServer
from llava.serve._generation import EXCEEDS_CONTEXT_MESSAGE
from llava.serve._stream import iter_stream_objects
from llava.serve.controller import Controller
from llava.serve.controller import create_app as create_controller_app
from llava.serve.model_worker import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TOTAL_PIXELS,
    ModelWorker,
    build_parser,
)
from llava.serve.model_worker import create_app as create_worker_app

TOKEN = "s3cret"
LONG_EXPIRATION = 120.0  # far longer than any test: a worker gone from the list was removed, not expired


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def png_b64(width: int, height: int) -> str:
    buf = BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def header_only_png_b64(width: int, height: int) -> str:
    """A PNG whose header announces width x height but which holds no pixel data (it cannot be decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode("ascii")


def objects_of(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:200]
    assert response.content.endswith(b"\0"), response.content[-80:]
    return list(iter_stream_objects([response.content]))


def post_stream(url: str, **kwargs) -> list[dict]:
    return objects_of(httpx.post(url + "/worker_generate_stream", timeout=60, **kwargs))


# --- a worker with small limits (not registered) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tiny_checkpoint):
    worker = ModelWorker("http://127.0.0.1:9", "http://127.0.0.1:9", "limit", True, str(tiny_checkpoint), None,
                         "tiny-limited", device="cpu", max_request_bytes=200_000, max_images=3,
                         max_total_pixels=200_000)
    with BackgroundServer(create_worker_app(worker)) as server:
        yield worker, server.url


def test_limit_defaults_on_the_command_line():
    args = build_parser().parse_args([])
    assert (args.max_request_bytes, args.max_images, args.max_total_pixels) == (32 * 1024 * 1024, 8, 64_000_000)
    assert (DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_IMAGES, DEFAULT_MAX_TOTAL_PIXELS) == (33554432, 8, 64_000_000)
    args = build_parser().parse_args(["--max-request-bytes", "10", "--max-images", "2", "--max-total-pixels", "5"])
    assert (args.max_request_bytes, args.max_images, args.max_total_pixels) == (10, 2, 5)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_size_limit_is_an_error_object(limited, chunked):
    _, url = limited
    body = b'{"prompt": "' + b"x" * 300_000 + b'", "max_new_tokens": 2}'
    content = iter([body[i:i + 16384] for i in range(0, len(body), 16384)]) if chunked else body
    objects = post_stream(url, content=content, headers={"Content-Type": "application/json"})
    assert len(objects) == 1 and objects[0]["error_code"] == 1
    assert "over this worker's limit of 200000 bytes" in objects[0]["text"]


@pytest.mark.parametrize("body, why", [(b'{"prompt": "Hi",', "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
                                       (b"[1, 2]", "must be a JSON object"), (b'"Hi"', "must be a JSON object")])
def test_a_body_that_is_not_a_json_object_is_an_error_object(limited, body, why):
    _, url = limited
    objects = post_stream(url, content=body, headers={"Content-Type": "application/json"})
    assert len(objects) == 1 and objects[0]["error_code"] == 1 and why in objects[0]["text"]


@pytest.mark.parametrize("max_new_tokens", [0, -5])
def test_max_new_tokens_below_one_is_an_error(limited, max_new_tokens):
    _, url = limited
    objects = post_stream(url, json={"prompt": "Hi", "max_new_tokens": max_new_tokens})
    assert objects == [{"text": f"max_new_tokens must be at least 1, got {max_new_tokens}", "error_code": 1}]


def test_too_many_images_is_an_error(limited):
    _, url = limited
    objects = post_stream(url, json={"prompt": "<image>\n" * 4 + "Hi", "images": [png_b64(8, 8)] * 4,
                                     "max_new_tokens": 2})
    assert len(objects) == 1 and objects[0]["error_code"] == 1
    assert "4 images were given, more than this worker's limit of 3" in objects[0]["text"]


def test_the_pixel_budget_is_checked_from_the_headers_before_decoding(limited):
    _, url = limited
    # 3 x 90,000 pixels > 200,000, each under the per-image limit; the images have no pixel data at all, so only a
    # check of the headers can tell (decoding them fails with "cannot decode")
    objects = post_stream(url, json={"prompt": "<image>\n" * 3 + "Hi", "images": [header_only_png_b64(300, 300)] * 3,
                                     "max_new_tokens": 2})
    assert len(objects) == 1 and objects[0]["error_code"] == 1
    assert "270000 pixels in all" in objects[0]["text"] and "limit of 200000 pixels" in objects[0]["text"]
    # within the budget, the same images fail at decoding, as before
    objects = post_stream(url, json={"prompt": "<image>\nHi", "images": [header_only_png_b64(300, 300)],
                                     "max_new_tokens": 2})
    assert len(objects) == 1 and objects[0]["error_code"] == 1 and "cannot decode" in objects[0]["text"]
    # and real images within the budget generate
    objects = post_stream(url, json={"prompt": "<image>\n" * 2 + "Hi", "images": [png_b64(300, 300)] * 2,
                                     "temperature": 0, "max_new_tokens": 2})
    assert objects[-1]["error_code"] == 0 and len(objects[-1]["visual_tokens"]) == 2


def test_the_context_length_is_checked_before_decoding_images(limited):
    worker, url = limited
    # the prompt plus the image's 576+ visual tokens cannot fit: refused from the header, the image is never decoded
    prompt = "<image>\n" + "word " * (worker.context_len - 300)
    objects = post_stream(url, json={"prompt": prompt, "images": [header_only_png_b64(40, 40)],
                                     "max_new_tokens": 8})
    assert objects == [{"text": prompt + EXCEEDS_CONTEXT_MESSAGE, "error_code": 0}]


# --- the shared secret --------------------------------------------------------------------------------------------


def test_only_a_worker_with_the_controllers_token_is_listed(tiny_checkpoint):
    controller = Controller("shortest_queue", heart_beat_expiration=LONG_EXPIRATION, sweep_interval=0.1,
                            worker_token=TOKEN)
    with BackgroundServer(create_controller_app(controller)) as controller_server:
        servers = {}
        try:
            for name, token in (("tiny-right", TOKEN), ("tiny-wrong", "not-it"), ("tiny-none", None)):
                server = BackgroundServer()
                worker = ModelWorker(controller_server.url, server.url, name, False, str(tiny_checkpoint), None,
                                     name, device="cpu", heart_beat_interval=0.2, worker_token=token)
                servers[name] = server.start(create_worker_app(worker))
            assert wait_for(lambda: controller.list_models() == ["tiny-right"])
            time.sleep(1.0)  # several heartbeats and registration retries later
            assert controller.list_models() == ["tiny-right"]
            assert list(controller.worker_info) == [servers["tiny-right"].url]
            # the registration script: refused without the token, accepted with it
            address = servers["tiny-none"].url
            args = ["--controller-address", controller_server.url, "--worker-name", address]
            assert register_worker.main(args) == 1
            assert address not in controller.worker_info
            assert register_worker.main(args + ["--worker-token", TOKEN]) == 0
            assert "tiny-none" in controller.worker_info[address].model_names
        finally:
            for server in servers.values():
                server.stop()
        # at their lifespan end: the right-token worker deregistered itself; tiny-none (registered by the script)
        # sent no token, so its deregistration was refused and it stays until it expires
        assert list(controller.worker_info) == [servers["tiny-none"].url]


# --- deregistering on shutdown ------------------------------------------------------------------------------------


def test_lifespan_end_deregisters_at_once(tiny_checkpoint):
    controller = Controller("shortest_queue", heart_beat_expiration=LONG_EXPIRATION, sweep_interval=0.1)
    with BackgroundServer(create_controller_app(controller)) as controller_server:
        server = BackgroundServer()
        worker = ModelWorker(controller_server.url, server.url, "life", False, str(tiny_checkpoint), None,
                             "tiny-life", device="cpu", heart_beat_interval=0.3)
        server.start(create_worker_app(worker))
        try:
            assert wait_for(lambda: controller.list_models() == ["tiny-life"])
        finally:
            server.stop()
        assert controller.list_models() == []
        assert httpx.post(controller_server.url + "/list_models").json() == {"models": []}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_deregisters_a_worker_process_at_once(tiny_checkpoint, tmp_path):
    controller = Controller("shortest_queue", heart_beat_expiration=LONG_EXPIRATION, sweep_interval=0.1,
                            worker_token=TOKEN)
    with BackgroundServer(create_controller_app(controller)) as controller_server:
        port = free_port()
        env = {**os.environ, "LLAVA_WORKER_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        process = subprocess.Popen(
            [sys.executable, "-m", "llava.serve.model_worker", "--host", "127.0.0.1", "--port", str(port),
             "--controller-address", controller_server.url, "--model-path", str(tiny_checkpoint),
             "--model-name", "tiny-proc", "--device", "cpu", "--heart-beat-interval", "0.5"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            listed = wait_for(lambda: controller.list_models() == ["tiny-proc"] or process.poll() is not None, 120)
            assert listed and process.poll() is None, process.communicate(timeout=10)[0].decode()[-3000:]
            assert list(controller.worker_info) == [f"http://127.0.0.1:{port}"]  # registered with the env token
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0].decode()
            # uvicorn shuts down cleanly, then re-raises the signal it caught: killed by SIGTERM, after shutdown
            assert process.returncode in (0, -signal.SIGTERM), output[-3000:]
            assert "Application shutdown complete" in output
            # gone right away: long before the 120 s expiry, and without waiting for the sweep
            assert controller.list_models() == [], output[-3000:]
            assert time.monotonic() - sent < 30
            assert "deregistered from the controller" in output
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
