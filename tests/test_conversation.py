"""Tests for llava.conversation: every template's prompt string written out in full, plus images and copies."""

from __future__ import annotations

import base64
from io import BytesIO

import pytest
from PIL import Image

from llava.conversation import Conversation, SeparatorStyle, conv_templates, default_conversation

Q1 = "What is shown in this image?"
A1 = "A cat on a sofa."
Q2 = "What color is the cat?"
A2 = "Black."

HUMAN_SYS = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
USER_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MMTAG_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand "
    "the visual content that the user provides, and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
LLAMA2_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
LLAVA_LLAMA2_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
V0_EXAMPLE = (
    "Human: What are the key differences between renewable and non-renewable energy sources?###"
    "Assistant: Renewable energy sources are those that can be replenished naturally in a relatively short amount "
    "of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, "
    "are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences "
    "between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are virtually "
    "inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. Environmental "
    "impact: Renewable energy sources have a much lower environmental impact than non-renewable sources, which can "
    "lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n3. Cost: Renewable "
    "energy sources can be more expensive to initially set up, but they typically have lower operational costs than "
    "non-renewable sources.\n4. Reliability: Renewable energy sources are often more reliable and can be used in "
    "more remote locations than non-renewable sources.\n5. Flexibility: Renewable energy sources are often more "
    "flexible and can be adapted to different situations and needs, while non-renewable sources are more rigid and "
    "inflexible.\n6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
    "non-renewable sources are not, and their depletion can lead to economic and social instability.\n###"
)
MPT_SYS = (
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.<|im_end|>"
)

# (template, two turns of text fully answered, image in the first turn and the last answer left to the model)
EXPECTED = {
    "llava_v1": (
        f"{HUMAN_SYS} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
        f"{HUMAN_SYS} USER: <image>\n{Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:",
    ),
    "vicuna_v1": (
        f"{USER_SYS} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
        f"{USER_SYS} USER: <image>\n{Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:",
    ),
    "v1_mmtag": (
        f"{MMTAG_SYS} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
        f"{MMTAG_SYS} USER: <Image><image></Image> ASSISTANT: Received.</s>"
        f"USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:",
    ),
    "llava_v0": (
        f"{HUMAN_SYS}###Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant: {A2}###",
        f"{HUMAN_SYS}###Human: <image>\n{Q1}###Assistant: {A1}###Human: {Q2}###Assistant:",
    ),
    "v0_mmtag": (
        f"{MMTAG_SYS}###Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant: {A2}###",
        f"{MMTAG_SYS}###Human: <Image><image></Image>###Assistant: Received.###"
        f"Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant:",
    ),
    # The v0 template starts with its example exchange, so the image turn is not first: its text stays as given.
    "v0": (
        f"{HUMAN_SYS}###{V0_EXAMPLE}Human: {Q1}###Assistant: {A1}###Human: {Q2}###Assistant: {A2}###",
        f"{HUMAN_SYS}###{V0_EXAMPLE}Human: {Q1}\n<image>###Assistant: {A1}###Human: {Q2}###Assistant:",
    ),
    "llama_2": (
        f"[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST] {A2} </s>",
        f"[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n<image>\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST]",
    ),
    "llava_llama_2": (
        f"[INST] <<SYS>>\n{LLAVA_LLAMA2_SYS}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST] {A2} </s>",
        f"[INST] <<SYS>>\n{LLAVA_LLAMA2_SYS}\n<</SYS>>\n\n<image>\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST]",
    ),
    # Empty system: no <<SYS>> block; empty sep: turns simply follow each other.
    "mistral_instruct": (
        f"[INST] {Q1} [/INST] {A1} </s>[INST] {Q2} [/INST] {A2} </s>",
        f"[INST] <image>\n{Q1} [/INST] {A1} </s>[INST] {Q2} [/INST]",
    ),
    "mpt": (
        f"{MPT_SYS}<|im_start|>user\n{Q1}<|im_end|><|im_start|>assistant\n{A1}<|im_end|>"
        f"<|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n{A2}<|im_end|>",
        f"{MPT_SYS}<|im_start|>user\n<image>\n{Q1}<|im_end|><|im_start|>assistant\n{A1}<|im_end|>"
        f"<|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n",
    ),
    "chatml_direct": (
        f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{Q1}<|im_end|>"
        f"<|im_start|>assistant\n{A1}<|im_end|><|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n{A2}<|im_end|>",
        f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\n{Q1}<|im_end|>"
        f"<|im_start|>assistant\n{A1}<|im_end|><|im_start|>user\n{Q2}<|im_end|><|im_start|>assistant\n",
    ),
    # PLAIN: no roles; user turns end with "\n", answers with sep2 (None here, read as "").
    "plain": (
        f"{Q1}\n{A1}{Q2}\n{A2}",
        f"<image>\n{Q1}\n{A1}{Q2}\n",
    ),
}
ALIASES = {
    "default": "v0",
    "v1": "vicuna_v1",
    "mistral_direct": "chatml_direct",
    "v0_plain": "plain",
}


def _image(size=(30, 10), colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _text_conversation(name: str) -> Conversation:
    conv = conv_templates[name].copy()
    for role, text in zip(conv.roles * 2, (Q1, A1, Q2, A2)):
        conv.append_message(role, text)
    return conv


def _image_conversation(name: str) -> Conversation:
    conv = conv_templates[name].copy()
    conv.append_message(conv.roles[0], (f"{Q1}\n<image>", _image(), "Default"))
    conv.append_message(conv.roles[1], A1)
    conv.append_message(conv.roles[0], Q2)
    conv.append_message(conv.roles[1], "placeholder")
    conv.messages[-1][1] = None  # the generation-prompt form used by every eval script
    return conv


def test_template_keys_and_default():
    assert set(conv_templates) == set(EXPECTED) | set(ALIASES)
    for alias, target in ALIASES.items():
        assert conv_templates[alias] is conv_templates[target]
    assert default_conversation is conv_templates["vicuna_v1"]


@pytest.mark.parametrize("name", sorted(set(EXPECTED) | set(ALIASES)))
def test_text_prompt(name):
    expected_text, _ = EXPECTED[ALIASES.get(name, name)]
    assert _text_conversation(name).get_prompt() == expected_text


@pytest.mark.parametrize("name", sorted(set(EXPECTED) | set(ALIASES)))
def test_image_generation_prompt(name):
    _, expected_image = EXPECTED[ALIASES.get(name, name)]
    assert _image_conversation(name).get_prompt() == expected_image


def test_vicuna_v1_single_turn_string_image():
    # The form the eval scripts build: "<image>\n" + question as a plain string, answer None.
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nDescribe the image.")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == f"{USER_SYS} USER: <image>\nDescribe the image. ASSISTANT:"


def test_image_tag_moved_to_front_of_first_turn():
    conv = conv_templates["llava_v1"].copy()
    conv.append_message("USER", ("Look <image> here", _image(), "Pad"))
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == f"{HUMAN_SYS} USER: <image>\nLook  here ASSISTANT:"
    # get_prompt never mutates the stored messages.
    assert conv.messages[0][1][0] == "Look <image> here"


def test_llama_2_first_message_must_be_user_text():
    conv = conv_templates["llama_2"].copy()
    conv.append_message("USER", None)
    with pytest.raises(ValueError, match="user"):
        conv.get_prompt()
    assert conv_templates["llama_2"].copy().get_prompt() == ""


def test_copy_is_independent_and_templates_stay_empty():
    conv = _text_conversation("vicuna_v1")
    assert len(conv_templates["vicuna_v1"].messages) == 0
    clone = conv.copy()
    clone.messages[0][1] = "changed"
    clone.append_message("USER", "more")
    assert conv.messages[0][1] == Q1 and len(conv.messages) == 4
    assert isinstance(clone.messages[0], list)


def test_dict_reduces_images_to_text():
    conv = _image_conversation("vicuna_v1")
    d = conv.dict()
    assert d["messages"][0] == ["USER", f"{Q1}\n<image>"]
    assert d["messages"][-1] == ["ASSISTANT", None]
    assert {k: d[k] for k in ("system", "roles", "offset", "sep", "sep2")} == {
        "system": USER_SYS,
        "roles": ("USER", "ASSISTANT"),
        "offset": 0,
        "sep": " ",
        "sep2": "</s>",
    }
    assert _text_conversation("vicuna_v1").dict()["messages"][0] == ["USER", Q1]


def _decode(b64: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(b64)))


@pytest.mark.parametrize(
    ("mode", "size", "expected_size"),
    [
        ("Default", (30, 10), (30, 10)),
        ("Crop", (30, 10), (30, 10)),
        ("Pad", (30, 10), (30, 30)),
        ("Resize", (30, 10), (336, 336)),
        # Long side 2000 > 1344: aspect 2, short side int(min(1344 / 2, 672, 1000)) = 672, long side 1344.
        ("Default", (2000, 1000), (1344, 672)),
        ("Default", (1000, 2000), (672, 1344)),
    ],
)
def test_get_images_modes_and_size_limit(mode, size, expected_size):
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message("USER", ("<image>\nhi", _image(size), mode))
    conv.append_message("ASSISTANT", None)
    (b64,) = conv.get_images()
    png = _decode(b64)
    assert png.format == "PNG" and png.size == expected_size
    (pil,) = conv.get_images(return_pil=True)
    assert pil.size == expected_size


def test_get_images_pad_colour_and_bad_mode():
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message("USER", ("<image>", _image((30, 10)), "Pad"))
    (pil,) = conv.get_images(return_pil=True)
    assert pil.getpixel((0, 0)) == (122, 116, 104) and pil.getpixel((15, 15)) == (200, 30, 30)
    conv.messages[0][1] = ("<image>", _image(), "Stretch")
    with pytest.raises(ValueError, match="Stretch"):
        conv.get_images()


def test_get_images_skips_assistant_slots_and_offset():
    conv = conv_templates["default"].copy()  # offset 2: the example exchange is skipped
    conv.append_message("Human", ("<image>\nq", _image(), "Default"))
    conv.append_message("Assistant", ("not an upload", _image(), "Default"))
    assert len(conv.get_images()) == 1


def test_to_gradio_chatbot_messages_format():
    conv = _image_conversation("vicuna_v1")
    history = conv.to_gradio_chatbot()
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    first = history[0]["content"]
    prefix = '<img src="data:image/jpeg;base64,'
    assert first.startswith(prefix)
    b64, rest = first[len(prefix) :].split('" alt="user upload image" />')
    assert rest == Q1  # "<image>" removed, text stripped
    jpeg = _decode(b64)
    assert jpeg.format == "JPEG" and jpeg.size == (30, 10)
    assert history[1:] == [{"role": "assistant", "content": A1}, {"role": "user", "content": Q2}]
    conv.messages[-1][1] = "Black."
    assert conv.to_gradio_chatbot()[-1] == {"role": "assistant", "content": "Black."}


def test_separator_style_members_and_invalid_style():
    assert [s.name for s in SeparatorStyle] == ["SINGLE", "TWO", "MPT", "PLAIN", "LLAMA_2"]
    conv = Conversation(system="s", roles=("A", "B"), messages=[], offset=0, sep_style="bogus")
    with pytest.raises(ValueError, match="Invalid style"):
        conv.get_prompt()
