"""Label masks of the training preprocessing, checked by hand on the tiny sentencepiece (Llama) tokenizer.

The oracles are the tokenizer's own encoding of each assistant reply (``tokenizer(reply, add_special_tokens=False)``)
and upstream's offset arithmetic where it is vocabulary-independent (the first round).
"""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token
from llava.train.model_setup import load_tokenizer
from llava.train.preprocess import (
    ConversationError,
    conversation_for_version,
    move_image_to_front,
    preprocess,
)

QUESTION_1 = "What color is the square?"
REPLY_1 = "The square is blue."
QUESTION_2 = "What color is the background?"
REPLY_2 = "The background is yellow."


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    tok = load_tokenizer(str(tiny_checkpoint), model_max_length=2048)
    tok.pad_token = tok.unk_token
    return tok


def two_rounds(image: bool = True) -> list[dict[str, str]]:
    first = f"{QUESTION_1}\n<image>" if image else QUESTION_1
    return [
        {"from": "human", "value": first},
        {"from": "gpt", "value": REPLY_1},
        {"from": "human", "value": QUESTION_2},
        {"from": "gpt", "value": REPLY_2},
    ]


def labeled_spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of non-ignored labels."""
    spans, start = [], None
    for i, value in enumerate(labels.tolist() + [IGNORE_INDEX]):
        if value != IGNORE_INDEX and start is None:
            start = i
        elif value == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def own_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_tokenizer_is_the_slow_llama_one(tokenizer):
    # The tiny checkpoint's config.json says model_type "llava"; AutoTokenizer would drop the word-start marker.
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert tokenizer.convert_ids_to_tokens(own_ids(tokenizer, "The cat")) == ["\u2581The", "\u2581cat"]


@pytest.mark.parametrize("image", [True, False], ids=["image", "text-only"])
def test_v1_labels_are_exactly_the_assistant_replies(tokenizer, image):
    template = conversation_for_version("v1")
    turns = move_image_to_front(two_rounds(image)) if image else two_rounds(image)
    out = preprocess(turns, tokenizer, template)
    ids, labels = out.input_ids, out.labels

    eos = tokenizer.eos_token_id
    expected_1 = own_ids(tokenizer, REPLY_1) + [eos]
    expected_2 = own_ids(tokenizer, REPLY_2) + [eos]
    spans = labeled_spans(labels)
    assert [ids[s:e].tolist() for s, e in spans] == [expected_1, expected_2]
    for s, e in spans:  # labels equal the inputs there ...
        assert torch.equal(labels[s:e], ids[s:e])
    assert int((labels != IGNORE_INDEX).sum()) == len(expected_1) + len(expected_2)  # ... and are ignored elsewhere

    # Hand check of the whole layout: BOS, system, "USER:", image, question, "ASSISTANT:", reply, </s>, ...
    assert ids[0].item() == tokenizer.bos_token_id and labels[0].item() == IGNORE_INDEX
    assert (ids == IMAGE_TOKEN_INDEX).sum().item() == (1 if image else 0)
    first_start, first_end = spans[0]
    assert tokenizer.decode(ids[first_start - 4 : first_start]).endswith("ASSISTANT:")
    assert ids[first_end - 1].item() == eos and ids[-1].item() == eos
    prompt_part = tokenizer.decode([i for i in ids[first_end:spans[1][0]].tolist()])
    assert prompt_part == f"USER: {QUESTION_2} ASSISTANT:"


def test_v1_first_round_matches_upstream_offsets(tokenizer):
    """Upstream: labels of round 1 start at 1 + len(tok("... ASSISTANT: ")) - 2 and end at 1 + len(tok(round))."""
    template = conversation_for_version("v1")
    turns = move_image_to_front(two_rounds())
    conv = template.copy()
    conv.messages = []
    for j, turn in enumerate(turns):
        conv.append_message(conv.roles[j % 2], turn["value"])
    prompt = conv.get_prompt()
    sep = conv.sep + conv.roles[1] + ": "
    first_round = prompt.split(conv.sep2)[0]
    instruction = first_round.split(sep)[0] + sep
    upstream_start = 1 + len(tokenizer_image_token(instruction, tokenizer)) - 2
    upstream_end = 1 + len(tokenizer_image_token(first_round, tokenizer))

    spans = labeled_spans(preprocess(turns, tokenizer, template).labels)
    assert spans[0] == (upstream_start, upstream_end)


def test_v1_later_rounds_do_not_depend_on_vocabulary_offsets(tokenizer):
    """After "</s>" the slow tokenizer writes "USER" without "▁"; in this vocabulary that is one token MORE than
    "▁USER" (upstream's fixed -1 assumes one less, as in Vicuna's). The measured boundaries are still exact."""
    after_eos = tokenizer.convert_ids_to_tokens(tokenizer_image_token("x</s>USER:", tokenizer)[1:])
    standalone = tokenizer.convert_ids_to_tokens(own_ids(tokenizer, "USER:"))
    assert len(after_eos) - 2 != len(standalone)  # "x" and "</s>" aside: the round really is a different length
    out = preprocess(move_image_to_front(two_rounds()), tokenizer, conversation_for_version("v1"))
    second = labeled_spans(out.labels)[1]
    assert out.input_ids[second[0] : second[1]].tolist() == own_ids(tokenizer, REPLY_2) + [tokenizer.eos_token_id]


def test_plain_labels_are_the_caption_and_newline(tokenizer):
    caption = "a red circle on white"
    turns = move_image_to_front([
        {"from": "human", "value": "Describe the image.\n<image>"},
        {"from": "gpt", "value": caption},
    ])
    out = preprocess(turns, tokenizer, conversation_for_version("plain"))
    caption_ids = own_ids(tokenizer, caption + "\n")
    assert out.input_ids.tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX] + caption_ids  # human text dropped
    assert out.labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX] + caption_ids


@pytest.mark.parametrize(
    "version, closing",
    [("v1", "</s>"), ("llama_2", " </s>"), ("mistral_instruct", " </s>"), ("mpt", "<|im_end|>")],
)
def test_chat_templates_label_each_reply_and_its_closing_separator(tokenizer, version, closing):
    out = preprocess(move_image_to_front(two_rounds()), tokenizer, conversation_for_version(version))
    decoded = [tokenizer.decode(out.input_ids[s:e]) for s, e in labeled_spans(out.labels)]
    assert [d.strip() for d in decoded] == [(REPLY_1 + closing).strip(), (REPLY_2 + closing).strip()]


def test_leading_assistant_turn_is_skipped_and_turns_must_alternate(tokenizer):
    template = conversation_for_version("v1")
    skipped = preprocess([{"from": "gpt", "value": "Hello."}] + two_rounds(False), tokenizer, template)
    plain = preprocess(two_rounds(False), tokenizer, template)
    assert torch.equal(skipped.input_ids, plain.input_ids)
    with pytest.raises(ConversationError, match="alternate"):
        preprocess([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], tokenizer, template)


def test_plain_needs_two_turns_with_an_image(tokenizer):
    with pytest.raises(ConversationError, match="exactly 2 turns"):
        preprocess(two_rounds(False), tokenizer, conversation_for_version("plain"))


def test_version_rules():
    assert conversation_for_version("v0") is conv_templates["vicuna_v1"]  # upstream's default_conversation
    assert conversation_for_version("plain") is conv_templates["plain"]
    assert conversation_for_version("no-such-template") is conv_templates["vicuna_v1"]
    with pytest.raises(NotImplementedError, match="not supported"):
        preprocess(two_rounds(False), None, conv_templates["v0"])  # SINGLE ("###") style
