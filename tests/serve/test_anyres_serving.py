"""LLaVA-1.6 (anyres) through the serving entry points, on the tiny LLaVA-1.6 checkpoint: the terminal chat, real model
workers behind a real controller over HTTP on 127.0.0.1, and the web demo's chat logic (its visual-token line).

The counts depend on each image's original size and order reaching the model (a wrong size picks another tile grid
or cuts other padding rows), so asserting them checks that. Oracles, worked out by hand from the released
``image_grid_pinpoints`` (336-px tiles of 24x24 patches), for images of these sizes:

* 672x672: pinpoint 672x672, 2x2 tiles: 5 x 576 = 2880 patches; unreduced 576 + 48 rows x (48 + newline) = 2928;
* 500x300: pinpoint 672x336, 2x1 tiles: 1728 patches; unreduced 576 + 24 x (int(500 * 24 / 300) = 40, + 1) = 1560;
* 336x672: pinpoint 336x672, 1x2 tiles: 1728 patches; unreduced 576 + 48 x 25 = 1776.
"""

from __future__ import annotations

import io
import re
import sys
import time

import httpx
import pytest
import torch

from anyres_images import SIZES, direct_greedy, make_image, to_b64

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images
from llava.model.visual_token_count import VisualTokenBound
from llava.serve import _gradio_chat as chat
from llava.serve import cli
from llava.serve._background import BackgroundServer
from llava.serve._generation import EXCEEDS_CONTEXT_MESSAGE
from llava.serve._stream import iter_stream_objects
from llava.serve.controller import Controller
from llava.serve.controller import create_app as create_controller_app
from llava.serve.model_worker import ModelWorker, serving_context_len, visual_token_upper_bound
from llava.serve.model_worker import create_app as create_worker_app

MODEL = "llava-v1.6-vicuna-tiny"  # default reduction (prumerge)
MODEL_NONE = "llava-v1.6-vicuna-tiny-none"  # --token-reduction none


def chat_prompt(question: str, images: int = 1) -> str:
    conv = conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" * images + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def same_answer(streamed: str, decoded: str) -> bool:
    """Equal texts, up to where either holds U+FFFD: the random tiny model emits byte tokens, and a streamer decodes
    incomplete UTF-8 pieces differently from one decode of all the ids."""
    cut = min(t.find("\ufffd") if "\ufffd" in t else len(t) for t in (streamed, decoded))
    return streamed[:cut] == decoded[:cut] and (cut > 0 or streamed == decoded)


def stream(url: str, payload: dict) -> list[dict]:
    response = httpx.post(url + "/worker_generate_stream", json=payload, timeout=120)
    assert response.status_code == 200 and response.content.endswith(b"\0")
    return list(iter_stream_objects([response.content]))


@pytest.fixture(scope="module")
def cluster16(tiny16_checkpoint):
    """A controller and two LLaVA-1.6 workers (default reduction, and none); yields (controller url, workers)."""
    controller = Controller("shortest_queue")
    controller_server = BackgroundServer(create_controller_app(controller)).start()
    workers, servers = {}, []
    try:
        for name, reduction in ((MODEL, None), (MODEL_NONE, "none")):
            server = BackgroundServer()
            worker = ModelWorker(controller_server.url, server.url, name[-4:], False, str(tiny16_checkpoint), None,
                                 name, device="cpu", limit_model_concurrency=2, token_reduction=reduction,
                                 heart_beat_interval=0.4)
            servers.append(server.start(create_worker_app(worker)))
            workers[name] = worker
        deadline = time.monotonic() + 20  # the controller lists a worker once it answers (a heartbeat re-registers)
        while sorted(controller.list_models()) != [MODEL, MODEL_NONE] and time.monotonic() < deadline:
            time.sleep(0.1)
        yield controller_server.url, workers
    finally:
        for server in servers:
            server.stop()
        controller_server.stop()


# --- model worker ---------------------------------------------------------------------------------------------------


def test_worker_reports_tokens_and_patches_per_image_in_request_order(cluster16, tiny16_loaded):
    _, workers = cluster16
    prompt = chat_prompt("Compare the two.", images=2)
    images = [make_image("tall"), make_image("wide")]
    objects = stream(workers[MODEL_NONE].worker_addr, {
        "model": MODEL_NONE, "prompt": prompt, "images": [to_b64(im) for im in images], "temperature": 0,
        "max_new_tokens": 6})
    final = objects[-1]
    assert final["error_code"] == 0, final
    assert final["visual_tokens"] == [1776, 1560]  # tall, then wide: each laid out by its own size
    assert final["patches"] == [1728, 1728]
    assert final["patches_per_image"] == 576  # the old key keeps its meaning: the tower's patches per tile
    assert final["token_reduction"] == "none"
    answer, counts = direct_greedy(tiny16_loaded, prompt, images, 6)
    assert final["text"].startswith(prompt) and same_answer(final["text"][len(prompt):], answer)
    assert counts == [1776, 1560]


def test_worker_default_reduction_through_the_controller(cluster16):
    url, _ = cluster16
    objects = stream(url, {"model": MODEL, "prompt": chat_prompt("What is it?"), "images": [to_b64(make_image(
        "square"))], "temperature": 0, "max_new_tokens": 4, "stop": "</s>"})
    final = objects[-1]
    assert final["error_code"] == 0, final
    assert final["patches"] == [2880] and final["token_reduction"] == "prumerge"
    (kept,) = final["visual_tokens"]
    assert 1 <= kept < 2880


def test_visual_token_bound_is_a_true_upper_bound(cluster16, tiny16_loaded):
    _, workers = cluster16
    worker = workers[MODEL_NONE]
    # LLaVA-1.6 reads inputs of up to tokenizer_model_max_length 4096; the loader's context_len says 2048
    assert worker.context_len == 4096 == serving_context_len(2048, worker.model.config)
    assert workers[MODEL].context_len == 4096
    _, model, image_processor, _ = tiny16_loaded
    for name, read in (("square", 2928), ("wide", 1560), ("tall", 1776)):
        image = make_image(name)
        image_args = worker._prepare_images([to_b64(image)])
        assert image_args["image_sizes"] == [SIZES[name]]
        bound = visual_token_upper_bound([SIZES[name]], worker.model.config, worker.model.get_vision_tower())
        with torch.inference_mode():  # what the (unreduced) model reads for this image
            model.prepare_inputs_labels_for_multimodal(
                torch.tensor([[1, IMAGE_TOKEN_INDEX, 5]]), None, None, None, None,
                process_images([image], image_processor, model.config), [image.size])
        assert model.last_visual_token_counts == [read]
        assert bound >= read
        # the training data check's count is exact without a reduction (the unpadded grid and its newlines)
        assert VisualTokenBound.from_model(model.config, model.get_vision_tower()).fewest(SIZES[name]) == read
        if name == "square":  # no letterbox padding: every stitched row is read, so the bound is exact
            assert bound == 2928 > 2880
    # with a reduction the bound still holds (each tile may add PruMerge's extra token)
    reduced = workers[MODEL]
    assert visual_token_upper_bound([(672, 672)], reduced.model.config,
                                    reduced.model.get_vision_tower()) == 5 * 577 + 48


def test_images_beyond_the_context_are_refused_before_generating(cluster16):
    _, workers = cluster16
    square = to_b64(make_image("square"))
    prompt = chat_prompt("Compare.", images=2)  # 2 x 2928 visual tokens > 4096
    objects = stream(workers[MODEL_NONE].worker_addr, {"model": MODEL_NONE, "prompt": prompt,
                                                       "images": [square, square], "max_new_tokens": 4})
    assert objects == [{"text": prompt + EXCEEDS_CONTEXT_MESSAGE, "error_code": 0}]


def test_missing_image_sizes_reach_the_client_as_a_readable_error(cluster16, monkeypatch):
    _, workers = cluster16
    worker = workers[MODEL_NONE]
    original = worker._prepare_images

    def without_sizes(images_b64):
        image_args = original(images_b64)
        image_args.pop("image_sizes")
        return image_args

    monkeypatch.setattr(worker, "_prepare_images", without_sizes)
    objects = stream(worker.worker_addr, {"model": MODEL_NONE, "prompt": chat_prompt("Hi?"),
                                          "images": [to_b64(make_image("tall"))], "max_new_tokens": 2})
    assert objects[-1]["error_code"] == 1 and all(o["error_code"] == 0 for o in objects[:-1])
    assert "needs image_sizes" in objects[-1]["text"]


# --- the web demo's chat logic --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "line"), [
    (MODEL_NONE, r"visual tokens: 2880 → 2928 \(no reduction\)"),
    (MODEL, r"visual tokens: 2880 → (\d+) \(prumerge\)"),
])
def test_web_demo_line_shows_the_patches_of_an_anyres_image(cluster16, model, line):
    url, _ = cluster16
    conv = chat.add_user_turn(chat.new_conversation(), "What is in the picture?", make_image("square"), "Default")
    updates = list(chat.stream_reply(conv, model, chat.ControllerClient(url), temperature=0, top_p=1.0,
                                     max_new_tokens=4))
    final = updates[-1]
    assert final.done and not final.error, final.conv.messages[-1]
    match = re.fullmatch(line, final.visual_tokens)
    assert match, final.visual_tokens
    if match.groups():
        assert 1 <= int(match.group(1)) < 2880


def test_web_demo_line_formats():
    fmt = chat.format_visual_tokens
    assert fmt([212, 51], "prumerge", [2880, 1728]) == "visual tokens: 2880 → 212, 1728 → 51 (prumerge)"
    assert fmt([2928, 1560], "none", [2880, 1728]) == "visual tokens: 2880 → 2928, 1728 → 1560 (no reduction)"
    assert fmt([576], "none", [576]) == "visual tokens: 576 (no reduction)"
    # an older worker: one patches_per_image number, or none at all
    assert fmt([36], "prumerge", 576) == "visual tokens: 576 → 36 (prumerge)"
    assert fmt([36, 40], "prumerge+") == "visual tokens: 576 → 36, 576 → 40 (prumerge+)"
    assert fmt([36], "prumerge", [576, 576]) == "visual tokens: 576 → 36 (prumerge)"  # mismatched: LLaVA-1.5's 576


# --- the terminal chat ----------------------------------------------------------------------------------------------


def test_cli_on_llava16_reports_patches_and_answers_as_the_model(monkeypatch, capsys, tiny16_checkpoint,
                                                                 tiny16_loaded, tmp_path):
    image_file = tmp_path / "tall.png"
    make_image("tall").save(image_file)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the image?\nAnd then?\n"))
    code = cli.main(["--model-path", str(tiny16_checkpoint), "--image-file", str(image_file), "--device", "cpu",
                     "--temperature", "0", "--max-new-tokens", "6", "--token-reduction", "none"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("visual tokens:") == 1 and "visual tokens: 1728 -> 1776 (none)\n" in out
    answer, _ = direct_greedy(tiny16_loaded, chat_prompt("What is in the image?"), [make_image("tall")], 6)
    answer = answer.split("</s>")[0].strip()
    first = out.split("ASSISTANT: ")[1].split("\n")[0]
    assert answer and same_answer(first.strip(), answer), (first, answer)
    assert out.count("ASSISTANT: ") == 2  # the second turn re-encodes the image with its size too
