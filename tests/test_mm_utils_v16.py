"""tokenizer_image_token and KeywordsStoppingCriteria with LLaVA-1.6's own tokenizers: llava-v1.6-mistral-7b's
(Mistral, legacy sentencepiece, BOS) on mistral_instruct prompts and llava-v1.6-34b's (Yi, no dummy prefix, no BOS,
ChatML tokens) on chatml_direct prompts.

Oracles: the slow tokenizer's rule written out plainly with the sentencepiece model itself: split at the added
tokens, encode each stretch of text with ``SentencePieceProcessor.encode`` as shipped (legacy: true), put the added
tokens' ids between, ``<s>`` in front only where ``add_bos_token`` is true, -200 for each ``<image>``.
"""

from __future__ import annotations

import pytest
import torch

from llava._tokenization import load_tokenizer, save_tokenizer
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conv_mode import stop_string
from llava.conversation import conv_templates
from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token

IMG = IMAGE_TOKEN_INDEX
Q1, A1, Q2 = "What is shown in this image?", "A man is riding a bike.", "Describe the image in detail."
MISTRAL_BOS, MISTRAL_EOS = 1, 2
IM_START, IM_END = 6, 7


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """(tokenizer, SentencePieceProcessor) of a tiny llava-v1.6-mistral-7b-style tokenizer."""
    import sentencepiece as spm

    from llava.tools.tiny_tokenizer import build_mistral_tokenizer

    folder = tmp_path_factory.mktemp("llava-v1.6-mistral-tiny")
    build_mistral_tokenizer(folder, vocab_size=1000)
    return load_tokenizer(str(folder)), spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


@pytest.fixture(scope="module")
def yi(tmp_path_factory):
    """(tokenizer, SentencePieceProcessor) of a tiny llava-v1.6-34b-style (Nous-Hermes-2-Yi) tokenizer."""
    import sentencepiece as spm

    from llava.tools.tiny_tokenizer import build_yi_tokenizer

    folder = tmp_path_factory.mktemp("llava-v1.6-34b-tiny")
    build_yi_tokenizer(folder, vocab_size=1000)
    return load_tokenizer(str(folder)), spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def _prompt(template: str, *turns: str | None) -> str:
    conv = conv_templates[template].copy()
    for role, text in zip(conv.roles * len(turns), turns):
        conv.append_message(role, text)
    return conv.get_prompt()


# --- mistral_instruct with Mistral's tokenizer ---------------------------------------------------------------


def test_mistral_prompt_single_turn(mistral):
    tok, sp = mistral
    prompt = _prompt("mistral_instruct", f"<image>\n{Q1}", None)
    assert prompt == f"[INST] <image>\n{Q1} [/INST]"
    expected = [MISTRAL_BOS] + sp.encode("[INST] ") + [IMG] + sp.encode(f"\n{Q1} [/INST]")
    assert tokenizer_image_token(prompt, tok) == expected
    # legacy: true keeps the model's dummy prefix on each chunk: "\n..." starts with a lone "▁", then <0x0A>.
    after = expected[expected.index(IMG) + 1 :]
    assert [sp.id_to_piece(i) for i in after[:2]] == ["▁", "<0x0A>"]
    assert [sp.id_to_piece(i) for i in expected[-3:]] == ["▁[/", "INST", "]"]


def test_mistral_prompt_second_turn_after_eos(mistral):
    tok, sp = mistral
    prompt = _prompt("mistral_instruct", f"<image>\n{Q1}", A1, Q2, None)
    assert prompt == f"[INST] <image>\n{Q1} [/INST] {A1} </s>[INST] {Q2} [/INST]"
    expected = [MISTRAL_BOS] + sp.encode("[INST] ") + [IMG] + sp.encode(f"\n{Q1} [/INST] {A1} ")
    expected += [MISTRAL_EOS] + sp.encode(f"[INST] {Q2} [/INST]")  # text after </s> gets its "▁" (legacy)
    ids = tokenizer_image_token(prompt, tok, return_tensors="pt")
    assert ids.dtype == torch.long and ids.tolist() == expected


def test_mistral_space_after_image(mistral):
    # Text after an <image> placeholder mid-sentence: the dummy prefix plus the space give "▁", "▁the".
    tok, sp = mistral
    ids = tokenizer_image_token("[INST] What is <image> the sky? [/INST]", tok)
    assert ids == [MISTRAL_BOS] + sp.encode("[INST] What is ") + [IMG] + sp.encode(" the sky? [/INST]")
    after = ids[ids.index(IMG) + 1 :]
    assert [sp.id_to_piece(i) for i in after[:2]] == ["▁", "▁the"]
    # transformers 5's own encoding folds that space away: the emulation is what keeps the training-time ids.
    assert tok(" the sky? [/INST]", add_special_tokens=False).input_ids != after


# --- chatml_direct with Yi's tokenizer -----------------------------------------------------------------------


def test_yi_prompt_single_turn(yi):
    tok, sp = yi
    prompt = _prompt("chatml_direct", f"<image>\n{Q1}", None)
    assert prompt == (
        f"<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\n{Q1}<|im_end|>"
        "<|im_start|>assistant\n"
    )
    expected = [IM_START] + sp.encode("system\nAnswer the questions.") + [IM_END, IM_START] + sp.encode("user\n")
    expected += [IMG] + sp.encode(f"\n{Q1}") + [IM_END, IM_START] + sp.encode("assistant\n")
    ids = tokenizer_image_token(prompt, tok)
    assert ids == expected
    # No BOS (add_bos_token: false) and no "▁" after the ChatML tokens (Yi's model adds no dummy prefix).
    assert ids[0] == IM_START and 1 not in ids
    assert [sp.id_to_piece(i) for i in ids[1:2]] == ["system"]
    assert tok("user\n", add_special_tokens=False).input_ids != sp.encode("user\n")  # transformers 5 adds a "▁"


def test_yi_prompt_second_turn(yi):
    tok, sp = yi
    prompt = _prompt("chatml_direct", f"<image>\n{Q1}", A1, Q2, None)
    expected = [IM_START] + sp.encode("system\nAnswer the questions.") + [IM_END, IM_START] + sp.encode("user\n")
    expected += [IMG] + sp.encode(f"\n{Q1}") + [IM_END, IM_START] + sp.encode(f"assistant\n{A1}")
    expected += [IM_END, IM_START] + sp.encode(f"user\n{Q2}") + [IM_END, IM_START] + sp.encode("assistant\n")
    assert tokenizer_image_token(prompt, tok) == expected


def test_yi_space_after_image(yi):
    tok, sp = yi
    ids = tokenizer_image_token("<|im_start|>user\nWhat is <image> the sky?<|im_end|>", tok)
    assert ids == [IM_START] + sp.encode("user\nWhat is ") + [IMG] + sp.encode(" the sky?") + [IM_END]
    assert sp.id_to_piece(ids[ids.index(IMG) + 1]) == "▁the"


def test_ids_survive_save_tokenizer(mistral, yi, tmp_path):
    # A checkpoint saved by this package (tokenizer.json + tokenizer.model + legacy) reloads with the same ids.
    cases = [
        (mistral[0], "mistral", _prompt("mistral_instruct", f"What is <image> {Q1}", A1, Q2, None)),
        (yi[0], "yi", _prompt("chatml_direct", f"What is <image> {Q1}", A1, Q2, None)),
    ]
    for tok, name, prompt in cases:
        save_tokenizer(tok, tmp_path / name)
        again = load_tokenizer(str(tmp_path / name))
        assert (tmp_path / name / "tokenizer.model").is_file()
        assert tokenizer_image_token(prompt, again) == tokenizer_image_token(prompt, tok)
        assert (len(again), again.bos_token_id, again.eos_token_id) == (len(tok), tok.bos_token_id, tok.eos_token_id)


# --- stopping on each template's stop string -----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "template", "stop_id"), [("mistral", "mistral_instruct", MISTRAL_EOS),
                                                             ("yi", "chatml_direct", IM_END)])
def test_keywords_stopping_on_template_stop_string(request, kind, template, stop_id):
    tok, sp = request.getfixturevalue(kind)
    stop = stop_string(conv_templates[template])
    assert stop == {"mistral_instruct": "</s>", "chatml_direct": "<|im_end|>"}[template]
    prompt = torch.tensor([tokenizer_image_token(_prompt(template, Q1, None), tok)])
    crit = KeywordsStoppingCriteria([stop], tok, prompt)
    assert crit.keyword_ids[0].tolist() == [stop_id]
    answer = sp.encode("A man is riding a bike.")
    rows = torch.tensor([
        prompt[0].tolist() + answer + [stop_id],  # the answer ends with the stop token
        prompt[0].tolist() + answer + [answer[0]],  # still talking
    ])
    assert crit(rows, torch.zeros(2, len(tok))).tolist() == [True, False]
    assert crit(prompt, torch.zeros(1, len(tok))).tolist() == [False]  # the prompt's own stop tokens do not count
