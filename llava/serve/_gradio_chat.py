"""The web demo's chat logic without any Gradio: the controller client, turns, the worker request, stream parsing.

:mod:`llava.serve.gradio_web_server` wires these to Gradio components. Everything here works on a
:class:`~llava.conversation.Conversation` and plain values, so it can be read (and tested) without a browser.

One chat round, as upstream LLaVA's demo does it:

1. :func:`add_user_turn` appends the user's text (with ``<image>`` and the image when one was uploaded) and an empty
   assistant turn.
2. :func:`stream_reply` picks the conversation template from the model name (first round only), asks the controller
   for a worker, posts ``/worker_generate_stream`` and yields :class:`ReplyUpdate` s while the NUL-delimited JSON
   stream arrives. Failures (no controller, no worker, a worker error) end up as a readable assistant message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from ..constants import DEFAULT_IMAGE_TOKEN
from ..conv_mode import stop_string, web_template_name
from ..conversation import Conversation, conv_templates, default_conversation
from ._stream import ERROR_NONE, iter_stream_objects

logger = logging.getLogger("llava.serve.gradio_web_server")

#: appended to the partial answer while it streams (upstream's cursor)
STREAM_CURSOR = "▌"
#: upstream's hard cut-offs for one user message, in characters
MAX_TEXT_CHARS = 1536
MAX_TEXT_CHARS_WITH_IMAGE = 1200
#: upstream's ceiling on the max_new_tokens the demo sends
MAX_NEW_TOKENS_LIMIT = 1536
#: patches per image before reduction when a worker does not say: CLIP ViT-L/14 at 336 px gives a 24 x 24 grid.
#: Workers report the real count per image in the stream's ``"patches"`` (anyres LLaVA-1.6: tiles x 576).
PATCHES_PER_IMAGE = 576
IMAGE_PROCESS_MODES = ("Crop", "Resize", "Pad", "Default")

#: seconds to connect / to wait for the controller's answer or the worker's next stream object
CONNECT_TIMEOUT = 10.0
CONTROLLER_TIMEOUT = 20.0
STREAM_READ_TIMEOUT = 120.0
HEADERS = {"User-Agent": "LLaVA Client"}
#: models listed first in the model dropdown, in this order (upstream's table); every other model follows, sorted
MODEL_PRIORITY = ("vicuna-13b", "koala-13b")


class ControllerClient:
    """The two controller calls the demo makes, on one base URL.

    Raises ``httpx.HTTPError`` (connection refused, timeout, error status) and ``ValueError`` / ``KeyError`` (an
    answer that is not the expected JSON); callers turn them into messages.
    """

    def __init__(self, url: str, timeout: float = CONTROLLER_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)

    def list_models(self) -> list[str]:
        """Ask every worker for its status again (``/refresh_all_workers``), then return the models, sorted."""
        httpx.post(self.url + "/refresh_all_workers", timeout=self.timeout, headers=HEADERS).raise_for_status()
        response = httpx.post(self.url + "/list_models", timeout=self.timeout, headers=HEADERS)
        response.raise_for_status()
        return sorted(response.json()["models"])

    def worker_address(self, model: str) -> str:
        """The address of a worker serving ``model``; "" when none does."""
        response = httpx.post(self.url + "/get_worker_address", json={"model": model}, timeout=self.timeout,
                              headers=HEADERS)
        response.raise_for_status()
        return response.json()["address"]


def sort_models(models: Sequence[str], priority: Sequence[str] = MODEL_PRIORITY) -> list[str]:
    """The model dropdown's order: names in ``priority`` first, in its order; then the rest alphabetically.

    Upstream sorted by ``priority.get(name, name)`` with keys like ``"aaaaaaa"``, which lets a name that sorts
    before them ("13b-model") jump ahead; here a priority name always comes first.

    >>> sort_models(["zeta", "koala-13b", "13b-model", "vicuna-13b"])
    ['vicuna-13b', 'koala-13b', '13b-model', 'zeta']
    """
    rank = {name: i for i, name in enumerate(priority)}
    return sorted(models, key=lambda name: (0, rank[name], "") if name in rank else (1, 0, name))


def new_conversation() -> Conversation:
    """An empty conversation in the default template (the model's template replaces it at the first reply)."""
    return default_conversation.copy()


def add_user_turn(conv: Conversation, text: str, image: Image.Image | None, image_process_mode: str) -> Conversation:
    """Append the user's message and an empty assistant turn; returns the conversation to keep.

    An empty message (no text, no image) sets ``skip_next`` instead, so the following reply does nothing. The text
    is cut to upstream's limits; with an image, ``<image>`` is added when the text lacks it and the message becomes
    ``(text, image, image_process_mode)``. A new image starts a new conversation (LLaVA-1.5 takes one image per
    conversation).
    """
    text = (text or "").strip()
    if not text and image is None:
        conv.skip_next = True
        return conv
    if image_process_mode not in IMAGE_PROCESS_MODES:
        raise ValueError(f"image_process_mode must be one of {IMAGE_PROCESS_MODES}, got {image_process_mode!r}")
    message: Any = text[:MAX_TEXT_CHARS_WITH_IMAGE] if image is not None else text[:MAX_TEXT_CHARS]
    if image is not None:
        if DEFAULT_IMAGE_TOKEN not in message:
            message += "\n" + DEFAULT_IMAGE_TOKEN
        message = (message, image.convert("RGB"), image_process_mode)
        if conv.get_images(return_pil=True):
            conv = new_conversation()
    conv.append_message(conv.roles[0], message)
    conv.append_message(conv.roles[1], None)
    conv.skip_next = False
    return conv


def prepare_regenerate(conv: Conversation, image_process_mode: str) -> Conversation:
    """Forget the last answer (and apply the current image mode to the last user image) so it is generated again."""
    if len(conv.messages) < conv.offset + 2:
        conv.skip_next = True
        return conv
    conv.messages[-1][-1] = None
    previous = conv.messages[-2]
    if isinstance(previous[1], tuple):
        previous[1] = (*previous[1][:2], image_process_mode)
    conv.skip_next = False
    return conv


def template_for_model(conv: Conversation, model_name: str) -> Conversation:
    """At the first round, move the user's message into the template the model was trained with.

    The template comes from the model's name by upstream's web-demo rule (:func:`llava.conv_mode.web_template_name`).
    """
    if len(conv.messages) != conv.offset + 2:
        return conv
    fresh = conv_templates[web_template_name(model_name)].copy()
    fresh.append_message(fresh.roles[0], conv.messages[-2][1])
    fresh.append_message(fresh.roles[1], None)
    return fresh


def build_request(conv: Conversation, model_name: str, temperature: float, top_p: float,
                  max_new_tokens: int) -> dict[str, Any]:
    """The ``/worker_generate_stream`` body: prompt, sampling settings, stop string and base64 images."""
    return {
        "model": model_name,
        "prompt": conv.get_prompt(),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": min(int(max_new_tokens), MAX_NEW_TOKENS_LIMIT),
        "stop": stop_string(conv),
        "images": conv.get_images(),
    }


def format_visual_tokens(kept: Sequence[int], mode: str | None,
                         patches: int | Sequence[int] | None = None) -> str:
    """The visual-token line shown under the chat, one ``patches → tokens`` per image.

    ``patches`` is the worker's ``"patches"`` (one count per image: tiles x 576 for an anyres LLaVA-1.6 image), or
    an older worker's single ``"patches_per_image"`` number, or None (LLaVA-1.5's 576). Without reduction an image
    whose token count equals its patch count shows the count alone.

    >>> format_visual_tokens([36], "prumerge")
    'visual tokens: 576 → 36 (prumerge)'
    >>> format_visual_tokens([212, 51], "prumerge", [2880, 1728])
    'visual tokens: 2880 → 212, 1728 → 51 (prumerge)'
    >>> format_visual_tokens([2928], "none", [2880])
    'visual tokens: 2880 → 2928 (no reduction)'
    """
    if not kept:
        return ""
    if isinstance(patches, (list, tuple)) and len(patches) == len(kept):
        before = [int(p) for p in patches]
    else:
        before = [int(patches) if isinstance(patches, int) and patches > 0 else PATCHES_PER_IMAGE] * len(kept)
    unreduced = mode in (None, "none")
    parts = [str(n) if unreduced and n == b else f"{b} → {n}" for b, n in zip(before, kept)]
    return "visual tokens: " + ", ".join(parts) + (" (no reduction)" if unreduced else f" ({mode})")


@dataclass
class ReplyUpdate:
    """One step of a streamed reply: the conversation as it stands, and whether the reply is over."""

    conv: Conversation
    done: bool = False
    visual_tokens: str = ""  # the line for the UI, set on the final update when the worker reported counts
    error: bool = False


def _fail(conv: Conversation, text: str) -> ReplyUpdate:
    conv.messages[-1][-1] = text
    return ReplyUpdate(conv, done=True, error=True)


def stream_reply(conv: Conversation, model_name: str | None, client: ControllerClient, temperature: float,
                 top_p: float, max_new_tokens: int) -> Iterator[ReplyUpdate]:
    """Generate the assistant's turn, yielding the conversation as the answer grows (with :data:`STREAM_CURSOR`).

    Never raises for network or server trouble: the last update's assistant message then says what went wrong
    (``error=True``). The last update has ``done=True``.
    """
    if conv.skip_next or not conv.messages or conv.messages[-1][1] is not None:  # no assistant turn to fill
        yield ReplyUpdate(conv, done=True)
        return
    if not model_name:
        yield _fail(conv, f"**No model to answer:** the controller at {client.url} lists no models. Start a model "
                          "worker (`python -m llava.serve.model_worker ...`), then reload this page.")
        return
    conv = template_for_model(conv, model_name)
    try:
        worker = client.worker_address(model_name)
    except (httpx.HTTPError, ValueError, KeyError) as err:
        logger.error("controller %s failed: %s", client.url, err)
        yield _fail(conv, f"**Cannot reach the controller** at {client.url} ({err}). Is "
                          "`python -m llava.serve.controller` running?")
        return
    if not worker:
        logger.info("no worker for model %s", model_name)
        yield _fail(conv, f"**No model worker serves {model_name} right now** (controller {client.url}). Start "
                          "one, or pick another model, then press Regenerate.")
        return
    logger.info("model %s, worker %s", model_name, worker)

    payload = build_request(conv, model_name, temperature, top_p, max_new_tokens)
    prompt = payload["prompt"]
    conv.messages[-1][-1] = STREAM_CURSOR
    yield ReplyUpdate(conv)
    final: dict[str, Any] = {}
    try:
        timeout = httpx.Timeout(STREAM_READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        with httpx.stream("POST", worker + "/worker_generate_stream", json=payload, headers=HEADERS,
                          timeout=timeout) as response:
            response.raise_for_status()
            for obj in iter_stream_objects(response.iter_bytes()):
                if obj.get("error_code", ERROR_NONE) != ERROR_NONE:
                    yield _fail(conv, f"{obj.get('text', '')} (error_code: {obj['error_code']})")
                    return
                final = obj
                conv.messages[-1][-1] = obj["text"][len(prompt):].strip() + STREAM_CURSOR
                yield ReplyUpdate(conv)
    except (httpx.HTTPError, ValueError, KeyError) as err:
        logger.error("worker %s failed: %s", worker, err)
        yield _fail(conv, f"**The model worker at {worker} failed:** {err}")
        return
    conv.messages[-1][-1] = conv.messages[-1][-1].removesuffix(STREAM_CURSOR)
    line = format_visual_tokens(final.get("visual_tokens") or [], final.get("token_reduction"),
                                final.get("patches") or final.get("patches_per_image"))
    yield ReplyUpdate(conv, done=True, visual_tokens=line)
