"""Conversation templates and prompt rendering, compatible with upstream LLaVA 1.2.x.

A :class:`Conversation` holds a system prompt, two role names and a list of ``[role, message]`` pairs. Callers
mutate it in place (``conv.append_message(...)``, ``conv.messages[-1][1] = None``) and render it with
:meth:`Conversation.get_prompt`. The rendered strings are byte-for-byte those of upstream for every separator style,
so checkpoints see the prompts they were trained on.

A message is either a string, ``None`` (the turn the model is about to write: the prompt ends with the role tag),
or a tuple ``(text, PIL.Image, image_process_mode)`` for a user turn that carries an image; ``image_process_mode``
is one of ``"Pad"``, ``"Default"``, ``"Crop"``, ``"Resize"``.

Templates are looked up by name in :data:`conv_templates` and must be ``.copy()``-ed before use.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Callable, Sequence
from enum import Enum, auto
from io import BytesIO
from typing import Any

from PIL import Image

from llava._image_processing import expand2square
from llava.constants import DEFAULT_IMAGE_TOKEN

logger = logging.getLogger(__name__)

__all__ = ["SeparatorStyle", "Conversation", "conv_templates", "default_conversation"]

# Background used by the "Pad" display mode (upstream's fixed grey, not the CLIP mean used for the model input).
_DISPLAY_PAD_COLOR = (122, 116, 104)
_IMAGE_MODES = ("Pad", "Default", "Crop", "Resize")


class SeparatorStyle(Enum):
    """How turns are joined into one prompt string."""

    SINGLE = auto()  # system + sep, then "role: message" + sep
    TWO = auto()  # like SINGLE, but user turns end with sep and assistant turns with sep2
    MPT = auto()  # system + sep, then role + message + sep (roles carry their own tags, e.g. ChatML)
    PLAIN = auto()  # messages only, no roles (pretraining: "<image>\ncaption\n")
    LLAMA_2 = auto()  # "[INST] <<SYS>>...<</SYS>> msg [/INST] answer </s>"


Message = Any  # str | None | tuple[str, Image.Image, str]


def _message_text(message: Message) -> Any:
    """The text of a message: the first element of an image tuple, else the message itself."""
    return message[0] if isinstance(message, tuple) else message


def _fit_for_display(image: Image.Image, max_len: int, min_len: int) -> Image.Image:
    """Shrink ``image`` (aspect kept) when its long side exceeds ``max_len``, as upstream's web demo does."""
    if max(image.size) <= max_len:
        return image
    max_hw, min_hw = max(image.size), min(image.size)
    aspect_ratio = max_hw / min_hw
    shortest_edge = int(min(max_len / aspect_ratio, min_len, min_hw))
    longest_edge = int(shortest_edge * aspect_ratio)
    width, height = image.size
    if height > width:
        new_size = (shortest_edge, longest_edge)
    else:
        new_size = (longest_edge, shortest_edge)
    return image.resize(new_size)


# --- one renderer per separator style: (conversation, normalised messages) -> prompt -------------------------


def _render_single(conv: Conversation, messages: Sequence[Sequence[Message]]) -> str:
    out = conv.system + conv.sep
    for role, message in messages:
        if message:
            out += f"{role}: {_message_text(message)}{conv.sep}"
        else:
            out += f"{role}:"
    return out


def _render_two(conv: Conversation, messages: Sequence[Sequence[Message]]) -> str:
    seps = (conv.sep, conv.sep2 or "")
    out = conv.system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            out += f"{role}: {_message_text(message)}{seps[i % 2]}"
        else:
            out += f"{role}:"
    return out


def _render_mpt(conv: Conversation, messages: Sequence[Sequence[Message]]) -> str:
    out = conv.system + conv.sep
    for role, message in messages:
        if message:
            out += f"{role}{_message_text(message)}{conv.sep}"
        else:
            out += role
    return out


def _render_llama_2(conv: Conversation, messages: Sequence[Sequence[Message]]) -> str:
    if not messages:
        return ""
    first_role, first_message = messages[0]
    if not first_message or first_role != conv.roles[0]:
        raise ValueError("LLAMA_2 prompts must start with a non-empty user message")
    out = ""
    for i, (_role, message) in enumerate(messages):
        if not message:
            continue
        text = _message_text(message)
        if i == 0 and conv.system:
            text = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n{text}"
        if i % 2 == 0:
            out += f"{conv.sep}[INST] {text} [/INST]"
        else:
            out += f" {text} {conv.sep2}"
    # Upstream strips the separator in front of the first "[INST]" (it used str.lstrip; same result here).
    return out.removeprefix(conv.sep)


def _render_plain(conv: Conversation, messages: Sequence[Sequence[Message]]) -> str:
    # Upstream would fail on sep2=None after an answer; an absent sep2 is read as "".
    seps = (conv.sep, conv.sep2 or "")
    out = conv.system
    for i, (_role, message) in enumerate(messages):
        if message:
            out += f"{_message_text(message)}{seps[i % 2]}"
    return out


_RENDERERS: dict[SeparatorStyle, Callable[[Conversation, Sequence[Sequence[Message]]], str]] = {
    SeparatorStyle.SINGLE: _render_single,
    SeparatorStyle.TWO: _render_two,
    SeparatorStyle.MPT: _render_mpt,
    SeparatorStyle.LLAMA_2: _render_llama_2,
    SeparatorStyle.PLAIN: _render_plain,
}


@dataclasses.dataclass
class Conversation:
    """A conversation history plus the template that renders it (upstream LLaVA's class, same fields)."""

    system: str
    roles: Sequence[str]
    messages: list  # list of [role, message]; templates hold tuples and are copied before use
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"

    skip_next: bool = False

    # -- rendering -----------------------------------------------------------------------------------------

    def _messages_for_prompt(self) -> list[Sequence[Message]]:
        """Messages with the first turn's image normalised as upstream does.

        When the first message carries an image, its ``<image>`` tags are removed and one image token is put in
        front (``"<image>\\n" + text``); ``*mmtag*`` versions instead open with a user turn
        ``"<Image><image></Image>"`` answered ``"Received."``.
        """
        messages = list(self.messages)
        if not messages or not isinstance(messages[0][1], tuple):
            return messages
        role, first = messages[0]
        text = first[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if "mmtag" in self.version:
            messages[0] = (role, text)
            messages[:0] = [(self.roles[0], "<Image><image></Image>"), (self.roles[1], "Received.")]
        else:
            messages[0] = (role, f"{DEFAULT_IMAGE_TOKEN}\n{text}")
        return messages

    def get_prompt(self) -> str:
        """Render the whole conversation as the model's prompt string."""
        renderer = _RENDERERS.get(self.sep_style)
        if renderer is None:
            raise ValueError(f"Invalid style: {self.sep_style}")
        return renderer(self, self._messages_for_prompt())

    def append_message(self, role: str, message: Message) -> None:
        """Append ``[role, message]`` (a mutable list, so callers can fill in ``messages[-1][1]`` later)."""
        self.messages.append([role, message])

    # -- images --------------------------------------------------------------------------------------------

    def process_image(
        self,
        image: Image.Image,
        image_process_mode: str,
        return_pil: bool = False,
        image_format: str = "PNG",
        max_len: int = 1344,
        min_len: int = 672,
    ) -> Image.Image | str:
        """Prepare one uploaded image for transport or display.

        ``"Pad"`` pads to a square with a grey background, ``"Resize"`` resizes to 336x336, ``"Default"`` and
        ``"Crop"`` keep the image. Then images whose long side exceeds ``max_len`` are shrunk (aspect kept, short
        side at most ``min_len``). Returns the PIL image, or its base64-encoded ``image_format`` bytes.
        """
        if image_process_mode == "Pad":
            image = expand2square(image, _DISPLAY_PAD_COLOR)
        elif image_process_mode == "Resize":
            image = image.resize((336, 336))
        elif image_process_mode not in _IMAGE_MODES:
            raise ValueError(f"Invalid image_process_mode: {image_process_mode!r}; expected one of {_IMAGE_MODES}")
        image = _fit_for_display(image, max_len, min_len)
        if return_pil:
            return image
        if image_format.upper() in ("JPEG", "JPG") and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        buffer = BytesIO()
        image.save(buffer, format=image_format)
        return base64.b64encode(buffer.getvalue()).decode()

    def get_images(self, return_pil: bool = False) -> list[Image.Image | str]:
        """Images of the user turns from ``offset`` on, processed by their mode (base64 PNG, or PIL)."""
        images = []
        for i, (_role, message) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0 and isinstance(message, tuple):
                _text, image, mode = message
                images.append(self.process_image(image, mode, return_pil=return_pil))
        return images

    def to_gradio_chatbot(self) -> list[dict[str, str]]:
        """The history in Gradio's "messages" format (Gradio 5/6 ``gr.Chatbot(type="messages")``).

        Returns a list of ``{"role": "user" | "assistant", "content": str}``. A user turn with an image shows the
        image inline as an HTML ``<img>`` (base64 JPEG data URI) followed by the text with ``<image>`` removed, as
        upstream's demo does. Turns alternate user/assistant from ``offset``; an assistant turn still ``None``
        (not generated yet) is left out.
        """
        history: list[dict[str, str]] = []
        for i, (_role, message) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0:
                if isinstance(message, tuple):
                    text, image, _mode = message
                    b64 = self.process_image(image, "Default", return_pil=False, image_format="JPEG")
                    img_html = f'<img src="data:image/jpeg;base64,{b64}" alt="user upload image" />'
                    message = img_html + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                history.append({"role": "user", "content": message})
            elif message is not None:
                history.append({"role": "assistant", "content": message})
        return history

    # -- copies and serialisation ---------------------------------------------------------------------------

    def copy(self) -> Conversation:
        """A copy with its own list of ``[role, message]`` lists (``skip_next`` is reset, as upstream)."""
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, message] for role, message in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def dict(self) -> dict[str, Any]:
        """JSON-friendly summary (image tuples reduced to their text), as upstream's worker logs it."""
        has_images = any(isinstance(message, tuple) for _role, message in self.messages)
        messages = (
            [[role, _message_text(message)] for role, message in self.messages] if has_images else self.messages
        )
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


# --- templates (texts are upstream's, unchanged: checkpoints were trained on them) ---------------------------

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
    "  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content."
    " Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
_V0_EXAMPLE = (
    ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
    (
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively "
        "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
        "Non-renewable energy sources, on the other hand, are finite and will eventually be "
        "depleted, such as coal, oil, and natural gas. Here are some key differences between "
        "renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
        "energy sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
        "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
        "and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
        "have lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ),
)

conv_vicuna_v0 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("Human", "Assistant"),
    messages=_V0_EXAMPLE,
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)
conv_vicuna_v1 = Conversation(
    system=_USER_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)
conv_llama_2 = Conversation(
    system=_LLAMA_2_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)
conv_llava_llama_2 = Conversation(
    system=_LLAVA_LLAMA_2_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)
conv_mpt = Conversation(
    system="<|im_start|>system\n"
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)
conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)
conv_llava_v0 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)
conv_llava_v0_mmtag = Conversation(
    system=_MMTAG_SYSTEM,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
    version="v0_mmtag",
)
conv_llava_v1 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)
conv_llava_v1_mmtag = Conversation(
    system=_MMTAG_SYSTEM,
    roles=("USER", "ASSISTANT"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1_mmtag",
)
conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="",
    sep2="</s>",
)
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

default_conversation = conv_vicuna_v1
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}
