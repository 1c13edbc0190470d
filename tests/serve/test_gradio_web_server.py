"""The web demo, end to end: a real controller, a real model worker (tiny checkpoint) and the Gradio server on free
127.0.0.1 ports, driven by headless Chromium through Playwright, plus the chat logic it is built on.

Chromium (Debian's, /usr/bin/chromium) and playwright are installed by ``.ci/run`` / ``make test``; without them the
browser tests fail with a message saying so rather than skipping.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from PIL import Image

from llava.serve import _gradio_chat as chat
from llava.serve._background import BackgroundServer
from llava.serve._stream import encode_stream_object, error_object
from llava.serve.controller import Controller
from llava.serve.controller import create_app as create_controller_app
from llava.serve.gradio_web_server import EXAMPLES, build_demo, build_parser, launch_demo
from llava.serve.model_worker import ModelWorker
from llava.serve.model_worker import create_app as create_worker_app

DEMO_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "demo.png"
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "llava" / "serve" / "examples"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL = "llava-v1.5-tiny"
BROKEN_MODEL = "broken-model"
TIMEOUT_MS = 30_000
VISUAL_LINE = re.compile(r"visual tokens: 576 → (\d+) \(prumerge\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- servers and browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controller_with_worker(tiny_checkpoint):
    """A controller and one real model worker (default reduction: prumerge); yields the controller's URL."""
    controller = Controller("shortest_queue")
    with BackgroundServer(create_controller_app(controller)) as controller_server:
        worker_server = BackgroundServer()  # bound first: the worker registers under this address
        worker = ModelWorker(controller_server.url, worker_server.url, "gradio", False, str(tiny_checkpoint), None,
                             MODEL, device="cpu", limit_model_concurrency=1)
        worker_server.start(create_worker_app(worker))
        try:
            yield controller_server.url
        finally:
            worker_server.stop()


def serve_demo(controller_url: str, model_list_mode: str, log_dir: Path, log_conversations: bool = True):
    """The real web server (``build_demo`` + ``launch_demo``) on a free port; returns (demo, url)."""
    demo = build_demo(False, concurrency_count=2, controller_url=controller_url, model_list_mode=model_list_mode,
                      log_dir=log_dir, log_conversations=log_conversations)
    url = launch_demo(demo, host="127.0.0.1", port=free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    return demo, url


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}): `make test` / `.ci/run` install it with the dev extra "
                    "(pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: `.ci/run` installs Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def bot_messages(page):
    return page.locator("#chatbot [data-testid=bot]")


def open_demo(page, url: str) -> None:
    """Open the page and wait for its load event (a fresh conversation, the model list) to be answered."""
    with page.expect_response(lambda response: urlparse(response.url).path.endswith("/gradio_api/run/predict")):
        page.goto(url)
    page.locator("#send_btn").wait_for()


def send(page, text: str) -> None:
    page.locator("#textbox textarea").fill(text)
    page.locator("#send_btn").click()


VOTES = ("#upvote_btn", "#downvote_btn", "#flag_btn")


def expect_buttons(page, *, votes: bool, actions: bool = True) -> None:
    from playwright.sync_api import expect

    for selector in VOTES:
        (expect(page.locator(selector)).to_be_enabled if votes else expect(page.locator(selector)).to_be_disabled)()
    for selector in ("#regenerate_btn", "#clear_btn"):
        (expect(page.locator(selector)).to_be_enabled if actions else expect(page.locator(selector)).to_be_disabled)()


def read_log(log_dir: Path) -> list[dict]:
    """The records of today's conversation log (the file upstream names ``<YYYY-MM-DD>-conv.json``)."""
    path = log_dir / f"{datetime.date.today():%Y-%m-%d}-conv.json"
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the browser tests ------------------------------------------------------------------------------------------


def test_chat_streams_an_answer_and_shows_the_kept_visual_tokens(controller_with_worker, page, tmp_path):
    """One chat with an image; then the conversation log: the answer's record, the image beside it, and one
    vote of each kind (upvote, then regenerate + downvote, regenerate + flag)."""
    from playwright.sync_api import expect

    log_dir = tmp_path / "logs"
    demo, url = serve_demo(controller_with_worker, "reload", log_dir)
    try:
        open_demo(page, url)
        expect_buttons(page, votes=False, actions=False)  # nothing to vote on yet
        # pick the model from the dropdown
        page.locator("#model_selector input").click()
        page.get_by_role("option", name=MODEL).click()
        expect(page.locator("#model_selector input")).to_have_value(MODEL)
        # an example fills in the image and the question
        page.get_by_text(EXAMPLES[1][1]).click()
        expect(page.locator("#textbox textarea")).to_have_value(EXAMPLES[1][1])
        expect(page.locator("#imagebox img")).to_be_visible()
        # a short greedy answer keeps the test fast
        page.locator("#parameters").get_by_text("Parameters").click()
        for slider, value in (("#temperature", "0"), ("#max_output_tokens", "64")):
            number = page.locator(f"{slider} input[type=number]")
            number.fill(value)
            number.press("Enter")
        page.locator("#imagebox button[aria-label='Remove Image']").click()  # drop the example's image ...
        page.locator("#imagebox input[type=file]").set_input_files(str(DEMO_IMAGE))  # ... and upload ours
        expect(page.locator("#imagebox img")).to_be_visible()
        # record every text the answer shows while it streams
        page.evaluate("""() => {
            window.__seen = [];
            new MutationObserver(() => {
                const answers = document.querySelectorAll('#chatbot [data-testid=bot]');
                for (const m of answers) window.__seen.push(m.innerText);
            }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
        }""")
        send(page, "What is shown in this image?")

        expect(page.locator("#visual_tokens")).to_contain_text("visual tokens", timeout=60_000)
        line = page.locator("#visual_tokens").inner_text().strip()
        match = VISUAL_LINE.fullmatch(line)
        assert match, line
        assert 1 < int(match.group(1)) < 576
        expect(page.locator("#clear_btn")).to_be_enabled()

        user = page.locator("#chatbot [data-testid=user]")
        expect(user).to_have_count(1)
        expect(user).to_contain_text("What is shown in this image?")
        expect(user.locator("img")).to_have_count(1)  # the uploaded image is shown in the user's turn
        expect(bot_messages(page)).to_have_count(1)
        answer = bot_messages(page).inner_text().strip()
        assert answer and "▌" not in answer
        seen = page.evaluate("window.__seen")
        assert any("▌" in text for text in seen), "the answer never showed the streaming cursor"
        # the inputs were emptied for the next turn
        expect(page.locator("#textbox textarea")).to_have_value("")
        expect(page.locator("#imagebox img")).to_have_count(0)

        screenshot = Path(tempfile.gettempdir()) / "llava_gradio_web_server.png"
        page.screenshot(path=str(screenshot), full_page=True)

        # the answer was logged before the page showed it done, with the image saved beside the log
        expect_buttons(page, votes=True)
        [chat_record] = read_log(log_dir)
        assert chat_record["type"] == "chat" and chat_record["model"] == MODEL and chat_record["ip"] == "127.0.0.1"
        assert chat_record["start"] <= chat_record["finish"] == chat_record["tstamp"]
        messages = chat_record["state"]["messages"]
        assert messages[0] == ["USER", "What is shown in this image?\n<image>"]  # the image turn as its text
        assert messages[1][0] == "ASSISTANT" and messages[1][1].strip() and "▌" not in messages[1][1]
        [digest] = chat_record["images"]
        saved = log_dir / "serve_images" / f"{datetime.date.today():%Y-%m-%d}" / f"{digest}.jpg"
        assert re.fullmatch(r"[0-9a-f]{32}", digest)
        with Image.open(saved) as image:
            assert image.format == "JPEG" and image.size == Image.open(DEMO_IMAGE).size
        saved_stat = saved.stat()

        # each vote is one record of the conversation as it stands, then the three vote buttons are disabled
        for vote, button in zip(("upvote", "downvote", "flag"), VOTES):
            if vote != "upvote":  # one vote per answer: a new answer enables them again
                page.locator("#regenerate_btn").click()
                expect_buttons(page, votes=True)
            page.locator(button).click()
            expect_buttons(page, votes=False, actions=True)
            *_, answered, voted = read_log(log_dir)
            assert answered["type"] == "chat" and answered["images"] == [digest]
            assert voted == {"tstamp": voted["tstamp"], "type": vote, "model": MODEL, "state": answered["state"],
                             "ip": "127.0.0.1"}
            assert voted["tstamp"] >= answered["finish"]
        assert [record["type"] for record in read_log(log_dir)] == [
            "chat", "upvote", "chat", "downvote", "chat", "flag"]
        # the image was saved once: the regenerated answers named the same file and left it alone
        assert [path.name for path in saved.parent.iterdir()] == [saved.name]
        assert (saved.stat().st_ino, saved.stat().st_mtime_ns) == (saved_stat.st_ino, saved_stat.st_mtime_ns)

        page.locator("#clear_btn").click()
        expect(page.locator("#chatbot [data-testid=user]")).to_have_count(0)
        expect(bot_messages(page)).to_have_count(0)
        expect(page.locator("#visual_tokens")).not_to_contain_text("visual tokens")
        expect_buttons(page, votes=False, actions=False)
    finally:
        demo.close()


def broken_worker_app() -> FastAPI:
    """A worker that registers fine but answers every generation with an error object."""
    app = FastAPI()

    @app.post("/worker_get_status")
    def status() -> dict:
        return {"model_names": [BROKEN_MODEL], "speed": 1, "queue_length": 0}

    @app.post("/worker_generate_stream")
    def generate() -> StreamingResponse:
        return StreamingResponse(iter([encode_stream_object(error_object("the worker ran out of memory", 1))]))

    return app


def test_failures_are_readable_messages_in_the_chat(page, tmp_path):
    """No models, a worker error, no worker for the model, no controller: each is a sentence in the chat (with
    nothing to vote on, and nothing logged)."""
    from playwright.sync_api import expect

    controller = Controller()
    controller_server = BackgroundServer(create_controller_app(controller)).start()
    demo, url = serve_demo(controller_server.url, "reload", tmp_path)
    try:
        open_demo(page, url)  # the controller knows no workers
        send(page, "Hello")
        expect(bot_messages(page).last).to_contain_text("No model to answer")
        expect(bot_messages(page).last).to_contain_text(f"the controller at {controller_server.url} lists no models")

        with BackgroundServer(broken_worker_app()) as worker_server:
            assert controller.register_worker(worker_server.url, False, None)
            open_demo(page, url)  # "reload": the page asks the controller again
            expect(page.locator("#model_selector input")).to_have_value(BROKEN_MODEL)
            send(page, "Hello")
            expect(bot_messages(page).last).to_have_text("the worker ran out of memory (error_code: 1)")
            expect_buttons(page, votes=False, actions=True)

            controller.remove_worker(worker_server.url)
            page.locator("#regenerate_btn").click()
            expect(bot_messages(page).last).to_contain_text(f"No model worker serves {BROKEN_MODEL} right now")

            controller_server.stop()
            page.locator("#regenerate_btn").click()
            expect(bot_messages(page).last).to_contain_text(f"Cannot reach the controller at {controller_server.url}")
        for text in bot_messages(page).all_inner_texts():
            assert "Traceback" not in text
        assert page.locator(".toast-body").count() == 0  # no Gradio error pop-up: every failure went to the chat
        assert list(tmp_path.iterdir()) == []  # failed answers are not logged
    finally:
        demo.close()
        controller_server.stop()


PRIORITY_TEST_MODELS = ["zeta-7b", "koala-13b", "13b-model", "vicuna-13b"]


def answering_worker_app(models: list[str], answer: str) -> FastAPI:
    """A worker serving ``models`` that streams ``answer`` in two steps (upstream's stream: prompt + text so far)."""
    app = FastAPI()

    @app.post("/worker_get_status")
    def status() -> dict:
        return {"model_names": models, "speed": 1, "queue_length": 0}

    @app.post("/worker_generate_stream")
    async def generate(request: Request) -> StreamingResponse:
        prompt = (await request.json())["prompt"]
        half = len(answer) // 2
        return StreamingResponse(iter([encode_stream_object({"text": prompt + text, "error_code": 0})
                                       for text in (answer[:half], answer)]))

    return app


def test_model_order_url_preselection_and_no_logging(page, tmp_path, monkeypatch):
    """The dropdown lists upstream's priority models first; ``/?model=NAME`` preselects NAME (an unknown name
    falls back to the first); with logging off (``--no-log``) there are no vote buttons and no file is written."""
    from playwright.sync_api import expect

    env_dir, log_dir = tmp_path / "env", tmp_path / "logs"
    monkeypatch.setenv("LLAVA_LOGDIR", str(env_dir))
    controller = Controller()
    with BackgroundServer(create_controller_app(controller)) as controller_server, \
            BackgroundServer(answering_worker_app(PRIORITY_TEST_MODELS, "It is a picture.")) as worker_server:
        assert controller.register_worker(worker_server.url, False, None)
        demo, url = serve_demo(controller_server.url, "once", log_dir, log_conversations=False)
        try:
            open_demo(page, url + "?model=no-such-model")
            selector = page.locator("#model_selector input")
            expect(selector).to_have_value("vicuna-13b")  # an unknown name: the first model
            selector.click()
            expect(page.get_by_role("option")).to_have_count(len(PRIORITY_TEST_MODELS))
            assert [text.replace("✓", "").strip() for text in page.get_by_role("option").all_inner_texts()] == [
                "vicuna-13b", "koala-13b", "13b-model", "zeta-7b"]  # the selected one carries a check mark
            selector.press("Escape")

            open_demo(page, url + "?model=13b-model")
            expect(selector).to_have_value("13b-model")

            page.locator("#imagebox input[type=file]").set_input_files(str(DEMO_IMAGE))
            expect(page.locator("#imagebox img")).to_be_visible()
            send(page, "What is it?")
            expect(bot_messages(page).last).to_have_text("It is a picture.")
            expect(page.locator("#clear_btn")).to_be_enabled()
            for button in VOTES:
                expect(page.locator(button)).to_be_hidden()
        finally:
            demo.close()
    assert not log_dir.exists() and not env_dir.exists()


# --- the chat logic without a browser ---------------------------------------------------------------------------


def test_user_turn_adds_the_image_token_and_a_new_image_starts_over():
    image = Image.new("RGB", (40, 20), "red")
    conv = chat.add_user_turn(chat.new_conversation(), "Describe it.", image, "Pad")
    assert conv.messages[0][1][0] == "Describe it.\n<image>" and conv.messages[0][1][2] == "Pad"
    assert conv.messages[1][1] is None and not conv.skip_next
    conv.messages[1][1] = "A red box."
    again = chat.add_user_turn(conv, "x" * 5000, Image.new("RGB", (8, 8)), "Default")
    assert len(again.messages) == 2  # LLaVA-1.5: one image per conversation
    assert again.messages[0][1][0] == "x" * chat.MAX_TEXT_CHARS_WITH_IMAGE + "\n<image>"
    empty = chat.add_user_turn(chat.new_conversation(), "  ", None, "Default")
    assert empty.skip_next and empty.messages == []
    with pytest.raises(ValueError, match="Stretch"):
        chat.add_user_turn(chat.new_conversation(), "hi", image, "Stretch")


def test_request_uses_the_model_template_stop_string_and_base64_images():
    image = Image.new("RGB", (30, 30), "blue")
    conv = chat.template_for_model(chat.add_user_turn(chat.new_conversation(), "What?", image, "Default"), MODEL)
    request = chat.build_request(conv, MODEL, temperature=0, top_p=0.7, max_new_tokens=4096)
    # llava_v1 (a "v1" name): the LLaVA-1.5 system prompt, the image first, "</s>" ends the answer
    assert request["prompt"].startswith("A chat between a curious human")
    assert request["prompt"].endswith("USER: <image>\nWhat? ASSISTANT:")
    assert request["stop"] == "</s>"
    assert request["max_new_tokens"] == chat.MAX_NEW_TOKENS_LIMIT
    assert len(request["images"]) == 1
    assert Image.open(io.BytesIO(base64.b64decode(request["images"][0]))).size == (30, 30)


def test_model_order_puts_priority_models_first_then_the_rest_alphabetically():
    assert chat.MODEL_PRIORITY == ("vicuna-13b", "koala-13b")  # upstream's table, in its order
    # "13b-model" < "aaaaaaa": upstream's priority.get(name, name) key would have put it first
    assert chat.sort_models(["zeta", "koala-13b", "13b-model", "Alpha", "vicuna-13b", "llava-v1.5-7b"]) == [
        "vicuna-13b", "koala-13b", "13b-model", "Alpha", "llava-v1.5-7b", "zeta"]
    assert chat.sort_models(["b", "a"], priority=("b",)) == ["b", "a"]
    assert chat.sort_models(["koala-13b", "b"], priority=()) == ["b", "koala-13b"]
    assert chat.sort_models([]) == []


def test_visual_token_line():
    assert chat.format_visual_tokens([36], "prumerge") == "visual tokens: 576 → 36 (prumerge)"
    assert chat.format_visual_tokens([150, 140], "prumerge+") == "visual tokens: 576 → 150, 576 → 140 (prumerge+)"
    assert chat.format_visual_tokens([576], "none") == "visual tokens: 576 (no reduction)"
    assert chat.format_visual_tokens([], "prumerge") == ""
    assert chat.format_visual_tokens([20], "prumerge", patches=196) == "visual tokens: 196 → 20 (prumerge)"


def test_unreachable_controller_gives_an_empty_model_list_not_a_crash():
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    demo = build_demo(True, controller_url=url, model_list_mode="once")
    try:
        dropdown = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "model_selector")
        assert dropdown.choices == []
    finally:
        demo.close()
    updates = list(chat.stream_reply(chat.add_user_turn(chat.new_conversation(), "Hi", None, "Default"), MODEL,
                                     chat.ControllerClient(url), 0.2, 0.7, 16))
    assert len(updates) == 1 and updates[0].done and updates[0].error
    assert updates[0].conv.messages[-1][1].startswith(f"**Cannot reach the controller** at {url}")
    # nothing sent (empty message): the reply step does nothing and calls nobody
    skipped = chat.add_user_turn(chat.new_conversation(), "", None, "Default")
    updates = list(chat.stream_reply(skipped, MODEL, chat.ControllerClient(url), 0.2, 0.7, 16))
    assert len(updates) == 1 and updates[0].done and not updates[0].error and skipped.messages == []


def test_command_line_defaults_and_examples():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.controller_url) == ("127.0.0.1", None, "http://127.0.0.1:21001")
    assert (args.concurrency_count, args.model_list_mode, args.share, args.moderate, args.embed, args.no_log) == (
        16, "once", False, False, False, False)
    assert build_parser().parse_args(["--no-log"]).no_log
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model-list-mode", "sometimes"])
    sizes = 0
    for name, question in EXAMPLES:
        path = EXAMPLES_DIR / name
        assert Image.open(path).size[0] >= 224 and question.endswith("?")
        sizes += path.stat().st_size
    assert sizes < 60_000

