"""One training conversation -> ``input_ids`` and ``labels``, for each conversation template.

A sample's ``conversations`` is a list of turns ``{"from": "human" | "gpt", "value": text}``. The turns are
rendered with the run's template (``llava.conversation``), tokenized with ``tokenizer_image_token`` (``<image>``
becomes IMAGE_TOKEN_INDEX; sentencepiece Llama tokenizers give the ids LLaVA-1.5 was trained with), and every
token that is not part of an assistant reply is masked with IGNORE_INDEX in ``labels``.

Which tokens are labels, per separator style (upstream's rules):

* PLAIN (``--version plain``, pretraining): the prompt is ``"<image>" + caption + "\\n"`` (the human text is
  dropped); BOS and the image token are masked, the caption and the newline are labels.
* TWO (``v1``, vicuna/llava_v1), LLAMA_2 (``llama_2``, ``mistral_instruct``), MPT (``mpt``, ``chatml_direct``):
  each assistant reply and the separator that closes it (``</s>`` for v1) are labels; the system prompt, user
  turns and the assistant tag (``" ASSISTANT:"``) are masked. The first reply token (``"▁The"`` in
  ``"ASSISTANT: The"``) is a label, as in upstream.

How the boundaries are found. Upstream computes them by tokenizing each round on its own and applying fixed
offsets (``-2`` for BOS plus the trailing-space token of ``"ASSISTANT: "``; ``-1`` more for every round after the
first when ``tokenizer.legacy`` is False), which holds for Vicuna's vocabulary but not for every sentencepiece
vocabulary: after ``</s>`` the slow tokenizer writes ``"USER"`` without its word-start marker, and whether that
costs one token more or one less than ``"▁USER"`` depends on the vocabulary. Here every boundary is measured by
tokenizing the rendered prompt *up to* that boundary (the same text the full prompt starts with) and checking that
those ids are a prefix of the full prompt's ids, so the result is exact for any tokenizer. Where upstream's offsets
are right, both agree. A prefix that does not tokenize as a prefix (a tokenizer merging across the boundary) is
upstream's "tokenization mismatch": the sample's labels are all masked and a warning names the sample.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._tokenization import adds_bos_token, encode_text
from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from ..conversation import Conversation, SeparatorStyle, conv_templates
from ..mm_utils import tokenizer_image_token

logger = logging.getLogger(__name__)

#: JSON "from" values -> index into the template's roles (0: user, 1: assistant).
SPEAKERS: dict[str, int] = {"human": 0, "gpt": 1}

#: Template versions upstream maps to vicuna_v1 instead of looking them up (its default_conversation).
_VICUNA_V1_VERSIONS = ("v0", "v0.5")


class ConversationError(ValueError):
    """A conversation that cannot be rendered (bad speaker, turns out of order, wrong shape for the template)."""


@dataclass(frozen=True)
class TokenizedConversation:
    """``input_ids`` and ``labels``, both ``[T]`` long; labels are IGNORE_INDEX outside assistant replies."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def conversation_for_version(version: str | None) -> Conversation:
    """The template a ``--version`` trains with (upstream's rule, without its global ``default_conversation``).

    ``"v0"``/``"v0.5"``/None and unknown names give ``vicuna_v1``; known names give ``conv_templates[version]``.
    """
    if version in conv_templates and version not in _VICUNA_V1_VERSIONS:
        return conv_templates[version]
    if version not in _VICUNA_V1_VERSIONS and version is not None:
        logger.warning("conversation version %r is not in conv_templates: using vicuna_v1", version)
    return conv_templates["vicuna_v1"]


def check_turns(turns: Any) -> None:
    """Raise ConversationError unless ``turns`` is a non-empty list of {"from": human|gpt, "value": str}."""
    if not isinstance(turns, list) or not turns:
        raise ConversationError(f"'conversations' must be a non-empty list of turns, got {type(turns).__name__}")
    for j, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise ConversationError(f"turn {j} is a {type(turn).__name__}, not an object with 'from' and 'value'")
        speaker = turn.get("from")
        if speaker not in SPEAKERS:
            raise ConversationError(f"turn {j} has unknown 'from' {speaker!r}; expected one of {sorted(SPEAKERS)}")
        if not isinstance(turn.get("value"), str):
            raise ConversationError(f"turn {j} has no string 'value'")


def move_image_to_front(
    turns: Sequence[Mapping[str, str]], *, mm_use_im_start_end: bool = False, mmtag: bool = False
) -> list[dict[str, str]]:
    """Upstream's ``preprocess_multimodal`` on one conversation, returning new turns (the input is not changed).

    In every turn that mentions ``<image>``, the tag is removed and put in front: ``"<image>\\n" + text``
    (``"<Image><image></Image>"`` for ``*mmtag*`` templates); ``<image>`` is wrapped in ``<im_start>``/``<im_end>``
    when ``mm_use_im_start_end``.
    """
    out = []
    for turn in turns:
        value = turn["value"]
        if DEFAULT_IMAGE_TOKEN in value:
            value = (DEFAULT_IMAGE_TOKEN + "\n" + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()).strip()
            if mmtag:
                value = value.replace(DEFAULT_IMAGE_TOKEN, "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>")
        if mm_use_im_start_end:
            wrapped = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
            value = value.replace(DEFAULT_IMAGE_TOKEN, wrapped)
        out.append({**turn, "value": value})
    return out


def render_turns(template: Conversation, turns: Sequence[Mapping[str, str]]) -> Conversation:
    """A copy of ``template`` holding ``turns`` as alternating user/assistant messages.

    A leading assistant turn is skipped (as upstream). Raises ConversationError when turns do not alternate.
    """
    if turns and SPEAKERS[turns[0]["from"]] != 0:
        turns = turns[1:]
    conv = template.copy()
    conv.messages = []
    for j, turn in enumerate(turns):
        if SPEAKERS[turn["from"]] != j % 2:
            expected = "human" if j % 2 == 0 else "gpt"
            raise ConversationError(
                f"turn {j} is from {turn['from']!r} but turns must alternate; expected {expected!r}"
            )
        conv.append_message(conv.roles[j % 2], turn["value"])
    return conv


def text_ids(text: str, tokenizer: Any) -> list[int]:
    """``[T]`` ids of ``text`` with BOS (when the tokenizer adds one), ``"<image>"`` kept as plain text.

    What ``tokenizer(text).input_ids`` gave with the slow tokenizer the checkpoints trained with (``encode_text``).
    """
    return ([tokenizer.bos_token_id] if adds_bos_token(tokenizer) else []) + encode_text(tokenizer, text)


def _ids(text: str, tokenizer: Any, has_image: bool = True) -> list[int]:
    return tokenizer_image_token(text, tokenizer) if has_image else text_ids(text, tokenizer)


def _prefix_prompt(conv: Conversation, messages: list, upto: int, reply: str | None) -> str:
    """The prompt of messages ``[:upto]`` followed by the assistant turn ``upto`` holding ``reply``."""
    partial = conv.copy()
    partial.messages = [list(m) for m in messages[:upto]] + [[conv.roles[1], reply]]
    return partial.get_prompt()


def tokenize_chat(
    turns: Sequence[Mapping[str, str]],
    tokenizer: Any,
    template: Conversation,
    *,
    where: str = "sample",
    has_image: bool = True,
) -> TokenizedConversation:
    """TWO / LLAMA_2 / MPT templates: the rendered conversation, labels on the assistant replies only.

    Args:
        turns: checked turns (``check_turns``), ``<image>`` already moved by ``move_image_to_front``.
        tokenizer: the run's tokenizer.
        template: a template with sep_style TWO, LLAMA_2 or MPT.
        where: names the sample in the mismatch warning.
        has_image: each ``"<image>"`` becomes IMAGE_TOKEN_INDEX; False tokenizes it as plain text (upstream's
            text-only path, ``has_image=False``). Text without ``"<image>"`` gives the same ids either way.
    """
    conv = render_turns(template, turns)
    prompt = conv.get_prompt()
    full = _ids(prompt, tokenizer, has_image)
    labels = [IGNORE_INDEX] * len(full)
    messages = conv.messages
    for j in range(1, len(messages), 2):
        before = _prefix_prompt(conv, messages, j, None)  # ends with the assistant tag, e.g. "... ASSISTANT:"
        after = _prefix_prompt(conv, messages, j, messages[j][1])  # ends after the reply's closing separator
        if not (prompt.startswith(before) and prompt.startswith(after)):
            raise AssertionError(f"{template.sep_style}: partial prompts are not prefixes of the prompt")
        start_ids, end_ids = _ids(before, tokenizer, has_image), _ids(after, tokenizer, has_image)
        if full[: len(start_ids)] != start_ids or full[: len(end_ids)] != end_ids:
            logger.warning(
                "%s: tokenization mismatch at assistant turn %d (the prompt does not tokenize as its prefixes): "
                "all its labels are masked (ignored), as upstream does", where, j,
            )
            labels = [IGNORE_INDEX] * len(full)
            break
        labels[len(start_ids) : len(end_ids)] = full[len(start_ids) : len(end_ids)]
    return TokenizedConversation(torch.tensor(full, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


def tokenize_plain(turns: Sequence[Mapping[str, str]], tokenizer: Any, template: Conversation) -> TokenizedConversation:
    """PLAIN template (pretraining): ``"<image>" + caption + sep``; only the caption and ``sep`` are labels.

    Raises:
        ConversationError: unless there are exactly two turns and the first mentions ``<image>``.
    """
    if len(turns) != 2 or DEFAULT_IMAGE_TOKEN not in turns[0]["value"]:
        raise ConversationError(
            "the 'plain' template (pretraining) needs exactly 2 turns, the first containing <image>; got "
            f"{len(turns)} turns"
        )
    prefix = DEFAULT_IMAGE_TOKEN  # the human text (and any <im_start>/<im_end>) is dropped, as upstream
    full = _ids(prefix + turns[1]["value"] + template.sep, tokenizer)
    masked = len(_ids(prefix, tokenizer))
    labels = [IGNORE_INDEX] * masked + full[masked:]
    return TokenizedConversation(torch.tensor(full, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


def preprocess(
    turns: Sequence[Mapping[str, str]], tokenizer: Any, template: Conversation, *, where: str = "sample"
) -> TokenizedConversation:
    """Tokenize one conversation with the rule of ``template``'s separator style (see the module docstring).

    Upstream's batch-level ``preprocess(sources, tokenizer, has_image=False)``, which reads the template from
    ``llava.conversation.default_conversation``, is ``llava.train.train.preprocess`` (``upstream_api``).

    Raises:
        ConversationError: a conversation the template cannot render.
        NotImplementedError: the SINGLE-separator (``v0``-style ``###``) preprocessing, which is not supported.
    """
    style = template.sep_style
    if style == SeparatorStyle.PLAIN:
        return tokenize_plain(turns, tokenizer, template)
    if style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2, SeparatorStyle.MPT):
        return tokenize_chat(turns, tokenizer, template, where=where)
    raise NotImplementedError(
        f"training with a {style.name}-separator template (version {template.version!r}) is not supported; "
        "use --version plain, v1, llama_2 or mpt"
    )
