"""Controller + real model workers (tiny checkpoint) over real HTTP on 127.0.0.1, plus the scripts that talk to them.

Oracles: generation through the servers is checked against ``model.generate`` called directly on the same prompt and
image (greedy), and the image count / visual-token semantics against numbers written out in the tests.
"""

from __future__ import annotations

import base64
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.serve import register_worker
from llava.serve import test_message as message_script
from llava.serve._background import BackgroundServer
from llava.serve._generation import EXCEEDS_CONTEXT_MESSAGE
from llava.serve._stream import iter_stream_objects
from llava.serve.controller import Controller
from llava.serve.controller import create_app as create_controller_app
from llava.serve.model_worker import ModelWorker, build_parser, default_worker_address
from llava.serve.model_worker import create_app as create_worker_app

DEMO_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "demo.png"
MODEL = "llava-v1.5-tiny"  # the default reduction (prumerge), concurrency limit 1
MODEL_NONE = "llava-v1.5-tiny-none"  # --token-reduction none
EXPIRATION = 2.0  # controller heartbeat expiration (s); workers beat every 0.4 s


def chat_prompt(question: str, images: int = 1) -> str:
    conv = conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" * images + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@pytest.fixture(scope="module")
def demo_b64() -> str:
    return base64.b64encode(DEMO_IMAGE.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint):
    """A controller and two workers on free ports; yields (controller, controller url, {model name: worker})."""
    controller = Controller("shortest_queue", heart_beat_expiration=EXPIRATION, sweep_interval=0.1)
    controller_server = BackgroundServer(create_controller_app(controller)).start()
    workers, servers = {}, []
    try:
        for name, reduction, limit in ((MODEL, None, 1), (MODEL_NONE, "none", 5)):
            server = BackgroundServer()  # bound first: the worker registers under this address
            worker = ModelWorker(controller_server.url, server.url, name[-4:], False, str(tiny_checkpoint), None, name,
                                 device="cpu", limit_model_concurrency=limit, token_reduction=reduction,
                                 heart_beat_interval=0.4)
            servers.append(server.start(create_worker_app(worker)))
            workers[name] = worker
        # the controller lists a worker once it has answered /worker_get_status, i.e. once it is listening
        deadline = time.monotonic() + 10
        while controller.list_models() != [MODEL, MODEL_NONE] and time.monotonic() < deadline:
            time.sleep(0.05)
        yield controller, controller_server.url, workers
    finally:
        for server in servers:
            server.stop()
        controller_server.stop()


def stream(url: str, payload: dict) -> list[dict]:
    """POST a generation request; check the NUL framing and return the decoded objects."""
    response = httpx.post(url + "/worker_generate_stream", json=payload, timeout=60)
    assert response.status_code == 200
    body = response.content
    assert body.endswith(b"\0"), body[-50:]
    return list(iter_stream_objects([body]))


def direct_greedy(tiny_loaded, prompt: str, images, max_new_tokens: int) -> tuple[str, list[int]]:
    """What the model itself says, and the visual tokens it kept, for ``prompt`` and PIL ``images``."""
    tokenizer, model, image_processor, _ = tiny_loaded
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    pixel_values = process_images(images, image_processor, model.config)
    with torch.inference_mode():
        out = model.generate(input_ids, images=pixel_values, image_sizes=[im.size for im in images],
                             do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True), list(model.last_visual_token_counts)


# --- registration and status ------------------------------------------------------------------------------------


def test_workers_register_and_are_dispatched(cluster):
    _, url, workers = cluster
    assert httpx.post(url + "/list_models").json() == {"models": [MODEL, MODEL_NONE]}
    for name, worker in workers.items():
        assert httpx.post(url + "/get_worker_address", json={"model": name}).json() == {"address": worker.worker_addr}


def test_worker_status_fields(cluster):
    _, url, workers = cluster
    worker = workers[MODEL]
    assert httpx.post(worker.worker_addr + "/worker_get_status").json() == {
        "model_names": [MODEL], "speed": 1, "queue_length": 0}
    # the controller answers for all its workers together
    assert httpx.post(url + "/worker_get_status").json() == {
        "model_names": [MODEL, MODEL_NONE], "speed": 2, "queue_length": 0}


def test_heartbeats_keep_workers_while_a_silent_one_expires(cluster):
    from fastapi import FastAPI

    controller, url, _ = cluster
    ghost_app = FastAPI()  # answers the controller's status check, then never sends a heartbeat
    ghost_app.post("/worker_get_status")(lambda: {"model_names": ["ghost"], "speed": 1, "queue_length": 0})
    with BackgroundServer(ghost_app) as ghost:
        response = httpx.post(url + "/register_worker", json={"worker_name": ghost.url, "check_heart_beat": True})
        assert response.json() == {"registered": True}
        assert "ghost" in httpx.post(url + "/list_models").json()["models"]
        deadline = time.monotonic() + 3 * EXPIRATION
        while "ghost" in httpx.post(url + "/list_models").json()["models"] and time.monotonic() < deadline:
            time.sleep(0.1)
        # more than one expiration has passed since the workers registered: their heartbeats kept them
        assert httpx.post(url + "/list_models").json() == {"models": [MODEL, MODEL_NONE]}
        assert ghost.url not in controller.worker_info


# --- generation -------------------------------------------------------------------------------------------------


def test_stream_through_controller_matches_the_model(cluster, demo_b64, tiny_loaded, demo_image):
    _, url, _ = cluster
    prompt = chat_prompt("What is shown in this image?")
    objects = stream(url, {"model": MODEL, "prompt": prompt, "images": [demo_b64], "temperature": 0,
                           "max_new_tokens": 12, "stop": "</s>"})
    assert all(o["error_code"] == 0 for o in objects)
    texts = [o["text"] for o in objects]
    assert all(t.startswith(prompt) for t in texts)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # the text only grows
    final = objects[-1]
    answer, kept = direct_greedy(tiny_loaded, prompt, [demo_image], 12)
    assert final["text"] == prompt + answer
    assert final["token_reduction"] == "prumerge"
    assert final["visual_tokens"] == kept
    assert final["patches_per_image"] == 576
    assert 1 <= kept[0] < 576  # 576 patches -> N kept


def test_no_reduction_keeps_all_576_tokens_per_image(cluster, demo_b64):
    _, url, workers = cluster
    objects = stream(workers[MODEL_NONE].worker_addr, {
        "model": MODEL_NONE, "prompt": chat_prompt("Compare.", images=2), "images": [demo_b64, demo_b64],
        "temperature": 0, "max_new_tokens": 3})
    assert objects[-1]["error_code"] == 0
    assert objects[-1]["visual_tokens"] == [576, 576]
    assert objects[-1]["token_reduction"] == "none"


@pytest.mark.parametrize(("tokens", "images"), [(2, 1), (1, 0), (0, 1)])
def test_image_count_mismatch_is_an_error_object(cluster, demo_b64, tokens, images):
    _, url, _ = cluster
    objects = stream(url, {"model": MODEL, "prompt": chat_prompt("Hi?", images=tokens), "images": [demo_b64] * images})
    assert objects == [{"text": f"the prompt has {tokens} <image> tokens but {images} images were given",
                        "error_code": 1}]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` pixels, with (almost) no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("image", "expected"), [
    ("this is not base64!", "not valid base64"),
    (base64.b64encode(b"plain text, no image").decode(), "not a decodable image"),
    (base64.b64encode(png_header(9000, 9000)).decode(), "9000x9000"),  # refused from the header alone
])
def test_bad_images_are_error_objects(cluster, image, expected):
    _, url, _ = cluster
    objects = stream(url, {"model": MODEL, "prompt": chat_prompt("Hi?"), "images": [image]})
    assert len(objects) == 1 and objects[0]["error_code"] == 1
    assert expected in objects[0]["text"]


def test_invalid_parameters_are_error_objects(cluster):
    _, url, _ = cluster
    objects = stream(url, {"model": MODEL, "prompt": "Hi", "temperature": -1})
    assert len(objects) == 1 and objects[0]["error_code"] == 1 and "temperature" in objects[0]["text"]


def test_stop_string_ends_the_answer(cluster, demo_b64):
    _, url, workers = cluster
    address = workers[MODEL].worker_addr
    prompt = chat_prompt("Describe it.")
    request = {"model": MODEL, "prompt": prompt, "images": [demo_b64], "temperature": 0, "max_new_tokens": 16}
    full = stream(address, request)[-1]["text"][len(prompt):]
    assert len(full) > 12, full
    stop = full[6:9]
    cut = full[: full.find(stop)]
    objects = stream(address, {**request, "stop": stop})
    assert objects[-1]["text"] == prompt + cut
    assert all(stop not in o["text"][len(prompt):] for o in objects)


def test_prompt_longer_than_the_context(cluster):
    _, url, workers = cluster
    prompt = "word " * (workers[MODEL].context_len + 10)
    objects = stream(url, {"model": MODEL, "prompt": prompt, "max_new_tokens": 10})
    assert objects == [{"text": prompt + EXCEEDS_CONTEXT_MESSAGE, "error_code": 0}]


def test_concurrency_limit_holds_and_every_request_completes(cluster, demo_b64, monkeypatch):
    _, url, workers = cluster
    worker = workers[MODEL]  # limit_model_concurrency=1
    active, peak, lock = [0], [0], threading.Lock()
    original = worker._run_generate

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(worker, "_run_generate", counting)
    request = {"model": MODEL, "prompt": chat_prompt("Why?"), "images": [demo_b64], "temperature": 0,
               "max_new_tokens": 6}
    results: list = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, stream(worker.worker_addr, request)[-1]))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert peak[0] == 1
    assert all(r is not None and r["error_code"] == 0 for r in results)
    assert len({(r["text"], tuple(r["visual_tokens"])) for r in results}) == 1  # same greedy answer, same counts
    assert worker.get_queue_length() == 0
    assert worker.request_count >= 3


# --- scripts ----------------------------------------------------------------------------------------------------


def test_test_message_through_the_controller(cluster, capsys):
    _, url, workers = cluster
    code = message_script.main(["--controller-address", url, "--model-name", MODEL, "--max-new-tokens", "6",
                              "--temperature", "0", "--message", "Hello there", "--image-file", str(DEMO_IMAGE)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"Models: {[MODEL, MODEL_NONE]}" in out
    assert f"worker_addr: {workers[MODEL].worker_addr}" in out
    assert "USER: <image>\nHello there ASSISTANT:" in out
    assert "visual tokens: [" in out and "(prumerge)" in out


def test_test_message_unknown_model(cluster, capsys):
    _, url, _ = cluster
    assert message_script.main(["--controller-address", url, "--model-name", "nope", "--message", "Hi"]) == 1
    assert "no worker serves nope" in capsys.readouterr().err


def test_register_worker_script(cluster, capsys):
    controller, url, workers = cluster
    address = workers[MODEL_NONE].worker_addr
    # the controller asks the worker for its status (worker_status is null)
    assert register_worker.main(["--controller-address", url, "--worker-name", address, "--check-heart-beat"]) == 0
    assert controller.worker_info[address].model_names == [MODEL_NONE]
    unreachable = "http://127.0.0.1:9"
    assert register_worker.main(["--controller-address", url, "--worker-name", unreachable]) == 1
    assert "could not reach" in capsys.readouterr().err


def test_worker_command_line_defaults():
    args = build_parser().parse_args(["--model-path", "m", "--multi-modal", "--token-reduction", "prumerge_plus"])
    assert (args.host, args.port, args.limit_model_concurrency, args.stream_interval) == ("127.0.0.1", 21002, 5, 1)
    assert args.controller_address == "http://127.0.0.1:21001"
    assert args.token_reduction == "prumerge+" and args.token_budget is None
    assert default_worker_address("0.0.0.0", 21002) == "http://localhost:21002"
    assert default_worker_address("127.0.0.1", 4000) == "http://127.0.0.1:4000"
