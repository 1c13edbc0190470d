"""The LLaVA web demo: a Gradio chat page in front of the controller and its model workers.

    python -m llava.serve.gradio_web_server --controller-url http://127.0.0.1:21001 --model-list-mode reload

Open the printed URL, pick a model, upload an image, ask. Answers stream in from a model worker (found through the
controller), and the line under the chat shows how many visual tokens the worker kept per image, e.g.
``visual tokens: 576 → 36 (prumerge)``.

As upstream's demo, it keeps a conversation log (:mod:`llava.serve.conversation_log`): after each answer a "chat"
record in ``LOGDIR/<date>-conv.json`` (images saved beside it, under ``LOGDIR/serve_images/<date>/``), and a record
per click on 👍 Upvote / 👎 Downvote / ⚠️ Flag (enabled once there is an answer, disabled again after a vote).
LOGDIR is ``$LLAVA_LOGDIR``, else :data:`llava.constants.LOGDIR` (the working directory). ``--no-log`` writes no
files at all (no conversation log, no images, no ``gradio_web_server.log``) and hides the vote buttons.

The model list is in upstream's order (:data:`~llava.serve._gradio_chat.MODEL_PRIORITY` first, then alphabetical),
and ``/?model=NAME`` preselects NAME when a worker serves it (the first model otherwise).

The page binds 127.0.0.1 unless ``--host`` says otherwise, and sends no telemetry (GRADIO_ANALYTICS_ENABLED=False).
The arguments are upstream LLaVA's; ``--moderate`` is accepted and does nothing (upstream called the OpenAI
moderation API; this package makes no network calls of its own). The chat logic lives in
:mod:`llava.serve._gradio_chat`; this module builds the page (:func:`build_demo`) and runs it (:func:`main`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from ..conversation import Conversation
from ..utils import build_logger
from ._gradio_chat import (
    IMAGE_PROCESS_MODES,
    MODEL_PRIORITY,
    ControllerClient,
    add_user_turn,
    new_conversation,
    prepare_regenerate,
    sort_models,
    stream_reply,
)
from .conversation_log import ConversationLog, default_logdir

try:
    import gradio as gr
except ImportError as err:  # the serve extra is optional
    raise ImportError(f"the LLaVA web demo needs gradio ({err}): pip install 'llava[serve]'") from err

logger = logging.getLogger("llava.serve.gradio_web_server")

DEFAULT_CONTROLLER_URL = "http://127.0.0.1:21001"
MODEL_LIST_MODES = ("once", "reload")

TITLE_MARKDOWN = """
# 🌋 LLaVA-1.5 with PruMerge
Chat about an image. The vision tower's 576 patch tokens are reduced (PruMerge / PruMerge+) before the language
model reads them; the line under the chat shows how many were kept.
"""

TOS_MARKDOWN = """
### Terms of use
This is a research preview for non-commercial use. It may produce wrong or offensive answers and has no safety
filter. Do not upload private or sensitive images.
"""

LEARN_MORE_MARKDOWN = """
### License
The code is Apache-2.0. Model weights carry their own licenses (LLaMA / Vicuna terms for LLaVA-1.5).
"""

BLOCK_CSS = """
#buttons button { min-width: min(120px, 100%); }
#visual_tokens { font-family: var(--font-mono); }
#chatbot img { max-height: 240px; width: auto; }
"""

#: the examples shipped in llava/serve/examples/ (image file, question)
EXAMPLES = (
    ("lake_dock.png", "What are the things I should be cautious about when I visit here?"),
    ("shapes.png", "How many shapes are there, and what colour is each one?"),
)


class WebDemo:
    """The demo's per-server state (controller client, model list) and its Gradio event handlers.

    Per-browser-session state is the ``Conversation`` in a ``gr.State``; handlers take it and return it.

    Args:
        controller_url: base URL of the controller.
        model_list_mode: "once" (ask the controller when the demo is built; again on page load only while the list
            is empty) or "reload" (ask on every page load).
        conv_log: where answers and votes are recorded; None records nothing.
        model_priority: models listed first, in this order (see :func:`~llava.serve._gradio_chat.sort_models`).
    """

    def __init__(self, controller_url: str, model_list_mode: str = "once", *, conv_log: ConversationLog | None = None,
                 model_priority: Sequence[str] = MODEL_PRIORITY) -> None:
        if model_list_mode not in MODEL_LIST_MODES:
            raise ValueError(f"--model-list-mode must be one of {MODEL_LIST_MODES}, got {model_list_mode!r}")
        self.client = ControllerClient(controller_url)
        self.model_list_mode = model_list_mode
        self.conv_log = conv_log if conv_log is not None else ConversationLog(None)
        self.model_priority = tuple(model_priority)
        self.models: list[str] = self.fetch_models() if model_list_mode == "once" else []

    def fetch_models(self) -> list[str]:
        """The controller's models in the dropdown's order; [] (logged) when it cannot be reached, so the page loads."""
        try:
            models = sort_models(self.client.list_models(), self.model_priority)
        except (httpx.HTTPError, ValueError, KeyError) as err:
            logger.error("cannot list models at the controller %s: %s", self.client.url, err)
            return []
        logger.info("models: %s", models)
        return models

    # --- handlers (their outputs are listed where build_demo wires them) ------------------------------------

    def load(self, request: gr.Request) -> tuple[Conversation, Any]:
        """Page load: a fresh conversation and the model dropdown (``?model=NAME`` in the URL preselects NAME)."""
        if self.model_list_mode == "reload" or not self.models:
            self.models = self.fetch_models()
        wanted = dict(request.query_params).get("model") if request is not None else None
        value = wanted if wanted in self.models else (self.models[0] if self.models else None)
        return new_conversation(), gr.Dropdown(choices=self.models, value=value)

    def add_text(self, state: Conversation | None, text: str, image, image_process_mode: str) -> tuple:
        """Send: append the user's turn; the reply follows in :meth:`bot`."""
        state = add_user_turn(state if state is not None else new_conversation(), text, image, image_process_mode)
        if state.skip_next:  # nothing was sent: leave the inputs as they are
            return (state, chat_history(state), gr.skip(), gr.skip(), gr.skip()) + _buttons(None, None)
        return (state, chat_history(state), "", None, "") + _buttons(False, False)

    def regenerate(self, state: Conversation | None, image_process_mode: str) -> tuple:
        state = prepare_regenerate(state if state is not None else new_conversation(), image_process_mode)
        return (state, chat_history(state), "", None, "") + _buttons(False, False)

    def clear(self) -> tuple:
        state = new_conversation()
        return (state, chat_history(state), "", None, "") + _buttons(False, False)

    def bot(self, state: Conversation | None, model_name: str | None, temperature: float, top_p: float,
            max_new_tokens: int, request: gr.Request) -> Iterator[tuple]:
        """Stream the assistant's answer into the chat; the visual-token line is filled in at the end.

        A finished answer is recorded in the conversation log before the page shows it as done, and enables the
        vote buttons; a failure (shown in the chat) enables only Regenerate and Clear.
        """
        start = time.time()
        state = state if state is not None else new_conversation()
        skipped = state.skip_next
        for update in stream_reply(state, model_name, self.client, temperature, top_p, max_new_tokens):
            if not update.done:
                yield (update.conv, chat_history(update.conv), gr.skip()) + _buttons(False, False)
            elif skipped:
                yield (update.conv, chat_history(update.conv), gr.skip()) + _buttons(None, None)
            elif update.error:
                yield (update.conv, chat_history(update.conv), update.visual_tokens) + _buttons(False, True)
            else:
                if self.conv_log.enabled:
                    self.conv_log.log_chat(model_name, start, time.time(), update.conv.dict(),
                                           update.conv.get_images(return_pil=True), client_ip(request))
                yield (update.conv, chat_history(update.conv), update.visual_tokens) + _buttons(True, True)

    def upvote(self, state: Conversation | None, model_name: str | None, request: gr.Request) -> tuple:
        return self._vote("upvote", state, model_name, request)

    def downvote(self, state: Conversation | None, model_name: str | None, request: gr.Request) -> tuple:
        return self._vote("downvote", state, model_name, request)

    def flag(self, state: Conversation | None, model_name: str | None, request: gr.Request) -> tuple:
        return self._vote("flag", state, model_name, request)

    def _vote(self, vote_type: str, state: Conversation | None, model_name: str | None,
              request: gr.Request | None) -> tuple:
        """Record the vote on the last answer, then disable the three vote buttons (one vote per answer)."""
        ip = client_ip(request)
        logger.info("%s. ip: %s", vote_type, ip)
        state = state if state is not None else new_conversation()
        self.conv_log.log_vote(vote_type, model_name, state.dict(), ip)
        return gr.Button(interactive=False), gr.Button(interactive=False), gr.Button(interactive=False)


def chat_history(conv: Conversation) -> list[dict[str, Any]]:
    """The conversation in the Chatbot's messages format.

    Gradio 6 takes ``Conversation.to_gradio_chatbot``'s string contents as they are (it wraps each in a
    ``{"text", "type"}`` part), and its HTML sanitizer keeps the user turn's inline ``data:`` image.
    """
    return conv.to_gradio_chatbot()


def client_ip(request: gr.Request | None) -> str | None:
    """The browser's address as the server sees it (None outside a request)."""
    return getattr(getattr(request, "client", None), "host", None)


def _buttons(votes: bool | None, actions: bool | None) -> tuple:
    """Updates for (Upvote, Downvote, Flag) and (Regenerate, Clear): enabled (True), disabled (False), or left as
    they are (None)."""

    def update(interactive: bool | None):
        return gr.skip() if interactive is None else gr.Button(interactive=interactive)

    return (update(votes),) * 3 + (update(actions),) * 2


def build_demo(embed_mode: bool, cur_dir: str | Path | None = None, concurrency_count: int = 10,
               controller_url: str = DEFAULT_CONTROLLER_URL, *, model_list_mode: str = "once",
               log_dir: str | os.PathLike | None = None, log_conversations: bool = True) -> gr.Blocks:
    """The demo page, wired to the controller at ``controller_url``.

    Args:
        embed_mode: leave out the title and the terms/license text (for embedding in another page).
        cur_dir: folder holding the example images (default: ``llava/serve/``; images are in ``examples/``).
        concurrency_count: answers generated at once by this server; more requests wait in Gradio's queue.
        controller_url: base URL of the controller.
        model_list_mode: "once" or "reload" (see :class:`WebDemo`).
        log_dir: the conversation log's folder (default: ``$LLAVA_LOGDIR``, else ``llava.constants.LOGDIR``).
        log_conversations: False writes no conversation log and hides the vote buttons (``--no-log``).
    Returns:
        The ``gr.Blocks``; run it with :func:`launch_demo`.
    """
    conv_log = ConversationLog((log_dir if log_dir is not None else default_logdir()) if log_conversations else None)
    logger.info("conversation log: %s", conv_log.logdir if conv_log.enabled else "off")
    demo_state = WebDemo(controller_url, model_list_mode, conv_log=conv_log)
    examples_dir = Path(cur_dir) if cur_dir is not None else Path(__file__).resolve().parent
    models = demo_state.models

    with gr.Blocks(title="LLaVA", analytics_enabled=False) as demo:
        state = gr.State(new_conversation())
        if not embed_mode:
            gr.Markdown(TITLE_MARKDOWN)
        with gr.Row():
            with gr.Column(scale=3):
                model_selector = gr.Dropdown(choices=models, value=models[0] if models else None, interactive=True,
                                             show_label=False, container=False, elem_id="model_selector")
                imagebox = gr.Image(type="pil", label="Image", elem_id="imagebox")
                image_process_mode = gr.Radio(list(IMAGE_PROCESS_MODES), value="Default",
                                              label="Preprocess for non-square image", elem_id="image_process_mode")
                textbox = gr.Textbox(show_label=False, placeholder="Enter text and press ENTER", container=False,
                                     elem_id="textbox", render=False)
                gr.Examples(examples=[[str(examples_dir / "examples" / name), question]
                                      for name, question in EXAMPLES], inputs=[imagebox, textbox])
                with gr.Accordion("Parameters", open=False, elem_id="parameters"):
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, interactive=True, label="Temperature",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, interactive=True, label="Top P",
                                      elem_id="top_p")
                    max_output_tokens = gr.Slider(0, 1024, value=512, step=64, interactive=True,
                                                  label="Max output tokens", elem_id="max_output_tokens")
            with gr.Column(scale=8):
                chatbot = gr.Chatbot(elem_id="chatbot", label="LLaVA Chatbot", height=550, buttons=["copy", "copy_all"])
                visual_tokens = gr.Markdown("", elem_id="visual_tokens")
                with gr.Row():
                    with gr.Column(scale=8):
                        textbox.render()
                    with gr.Column(scale=1, min_width=50):
                        submit_btn = gr.Button("Send", variant="primary", elem_id="send_btn")
                with gr.Row(elem_id="buttons"):
                    upvote_btn = gr.Button("👍  Upvote", interactive=False, visible=conv_log.enabled,
                                           elem_id="upvote_btn")
                    downvote_btn = gr.Button("👎  Downvote", interactive=False, visible=conv_log.enabled,
                                             elem_id="downvote_btn")
                    flag_btn = gr.Button("⚠️  Flag", interactive=False, visible=conv_log.enabled,
                                         elem_id="flag_btn")
                    regenerate_btn = gr.Button("🔄  Regenerate", interactive=False, elem_id="regenerate_btn")
                    clear_btn = gr.Button("🗑️  Clear", interactive=False, elem_id="clear_btn")
        if not embed_mode:
            gr.Markdown(TOS_MARKDOWN)
            gr.Markdown(LEARN_MORE_MARKDOWN)

        vote_buttons = [upvote_btn, downvote_btn, flag_btn]
        buttons = [*vote_buttons, regenerate_btn, clear_btn]
        turn_outputs = [state, chatbot, textbox, imagebox, visual_tokens, *buttons]
        bot_inputs = [state, model_selector, temperature, top_p, max_output_tokens]
        bot_outputs = [state, chatbot, visual_tokens, *buttons]
        for trigger in (submit_btn.click, textbox.submit):
            trigger(demo_state.add_text, [state, textbox, imagebox, image_process_mode], turn_outputs,
                    queue=False).then(demo_state.bot, bot_inputs, bot_outputs, concurrency_limit=concurrency_count)
        regenerate_btn.click(demo_state.regenerate, [state, image_process_mode], turn_outputs, queue=False).then(
            demo_state.bot, bot_inputs, bot_outputs, concurrency_limit=concurrency_count)
        clear_btn.click(demo_state.clear, None, turn_outputs, queue=False)
        chatbot.clear(demo_state.clear, None, turn_outputs, queue=False)  # the chat's own trash button
        for button, vote in zip(vote_buttons, (demo_state.upvote, demo_state.downvote, demo_state.flag)):
            button.click(vote, [state, model_selector], vote_buttons, queue=False)
        demo.load(demo_state.load, None, [state, model_selector], queue=False)
    return demo


def launch_demo(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
                block: bool = True) -> str:
    """Queue and serve ``demo`` (no telemetry, no server-side rendering); returns the local URL.

    With ``block=False`` the server runs on a background thread; stop it with ``demo.close()``.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo.queue(api_open=False)
    _app, local_url, _share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, ssr_mode=False,
        theme=gr.themes.Default(), css=BLOCK_CSS, quiet=not block,
    )
    return local_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The LLaVA web demo (Gradio).")
    parser.add_argument("--host", type=str, default="127.0.0.1",
                        help="address to bind (default: localhost only; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's first free one from 7860)")
    parser.add_argument("--controller-url", type=str, default=DEFAULT_CONTROLLER_URL)
    parser.add_argument("--concurrency-count", type=int, default=16,
                        help="answers generated at once; more requests wait in the queue")
    parser.add_argument("--model-list-mode", type=str, default="once", choices=MODEL_LIST_MODES,
                        help="once: ask the controller for models at startup; reload: on every page load")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--moderate", action="store_true", help="accepted for compatibility; does nothing")
    parser.add_argument("--embed", action="store_true", help="leave out the title and terms (embedding)")
    parser.add_argument("--no-log", action="store_true",
                        help="write no files: no conversation log (LOGDIR/<date>-conv.json), no saved images, no "
                             "gradio_web_server.log, and no vote buttons. LOGDIR is $LLAVA_LOGDIR, else the "
                             "working directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency_count < 1:
        print(f"error: --concurrency-count must be at least 1, got {args.concurrency_count}", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logdir = default_logdir()
    build_logger(logger.name, None if args.no_log else os.path.abspath(os.path.join(logdir, "gradio_web_server.log")))
    logger.info("args: %s", args)
    if args.moderate:
        logger.warning("--moderate does nothing: upstream's OpenAI moderation call is not part of this package")
    demo = build_demo(args.embed, concurrency_count=args.concurrency_count, controller_url=args.controller_url,
                      model_list_mode=args.model_list_mode, log_dir=logdir, log_conversations=not args.no_log)
    launch_demo(demo, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
