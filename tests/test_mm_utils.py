"""Tests for llava.mm_utils' text side: tokenization around <image> (sentencepiece and BPE), stopping criteria,
model names. Image preprocessing and loading: test_image_processing.py.

Oracles are written out by hand: token ids are worked out from the piece table of a tiny model trained here.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llava.constants import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    save_tokenizer,
    tokenizer_image_token,
)

IMG = IMAGE_TOKEN_INDEX


# --- fixtures -------------------------------------------------------------------------------------------------

SP_CORPUS = "USER: What is the cat? ASSISTANT: The cat is black.\nUSER: What is the dog? ASSISTANT: The dog is white.\n"


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _write_released_layout(folder, model_bytes: bytes, legacy: bool | None) -> None:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json, as LLaVA-1.5 checkpoints ship them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model_bytes)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _special("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _special("</s>"),
        "model_max_length": 2048,
        "pad_token": "<unk>",
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _special("<unk>"),
    }
    if legacy is not None:
        config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = {"bos_token": _special("<s>"), "eos_token": _special("</s>"), "unk_token": _special("<unk>")}
    special["pad_token"] = "<unk>"
    (folder / "special_tokens_map.json").write_text(json.dumps(special))


@pytest.fixture(scope="module")
def sp_model_bytes(tmp_path_factory) -> bytes:
    """A 330-piece Llama-style sentencepiece BPE (byte fallback, <unk>=0, <s>=1, </s>=2) trained on SP_CORPUS.

    Its pieces used below: 3 + byte for byte pieces (so "\\n" = <0x0A> = 13), 259 'at', 262 '▁is', 265 'ER',
    267 'US', 268 'Wh', 280 '▁The', 281 '▁cat', 282 '▁dog', 283 '▁the', 284 '▁USER', 285 '▁What',
    287 '▁ASSISTANT', 296 '▁black', 303 '▁', 311 ':', 315 '.', 316 '?'. No 'What' without '▁', no '▁▁'.
    """
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sp_train")
    (folder / "corpus.txt").write_text(SP_CORPUS * 20)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "m"),
        vocab_size=330,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return (folder / "m.model").read_bytes()


@pytest.fixture(scope="module")
def sp_tokenizer(sp_model_bytes, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("llava-v1.5-tiny")
    _write_released_layout(folder, sp_model_bytes, legacy=False)
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    """A tokenizers BPE built by hand (no tokenizer.model): Metaspace pre-tokenizer, <s> added in front.

    Vocabulary: 0 <unk>, 1 <s>, 2 </s>, 3 ▁, 4 W, 5 h, 6 a, 7 t, 8 i, 9 s, 10 e, 11 c, 12 ?, 13 \\n,
    14 ▁W, 15 ▁Wh, 16 at, 17 ▁What, 18 ▁i, 19 ▁is, 20 ▁t, 21 ▁th, 22 ▁the, 23 ▁c, 24 ▁cat.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁", "W", "h", "a", "t", "i", "s", "e", "c", "?", "\n"]
    pieces += ["▁W", "▁Wh", "at", "▁What", "▁i", "▁is", "▁t", "▁th", "▁the", "▁c", "▁cat"]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [("▁", "W"), ("▁W", "h"), ("a", "t"), ("▁Wh", "at"), ("▁", "i"), ("▁i", "s")]
    merges += [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁", "c"), ("▁c", "at")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("bpe")
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


# --- tokenizer_image_token: sentencepiece (slow-tokenizer ids) ----------------------------------------------


def test_sp_fixture_is_loaded_as_transformers5_llama_class(sp_tokenizer):
    assert type(sp_tokenizer).__name__ == "LlamaTokenizer"
    assert (sp_tokenizer.unk_token_id, sp_tokenizer.bos_token_id, sp_tokenizer.eos_token_id) == (0, 1, 2)
    assert sp_tokenizer.convert_ids_to_tokens([285, 303, 13, 268, 259]) == ["▁What", "▁", "<0x0A>", "Wh", "at"]


def test_sp_image_then_newline(sp_tokenizer):
    # "USER: " -> ▁USER : ▁ ; "\nWhat is the cat? ASSISTANT:" -> ▁ \n Wh at ▁is ▁the ▁cat ? ▁ASSISTANT :
    ids = tokenizer_image_token("USER: <image>\nWhat is the cat? ASSISTANT:", sp_tokenizer)
    assert ids == [1, 284, 311, 303, IMG, 303, 13, 268, 259, 262, 283, 281, 316, 287, 311]


def test_sp_space_after_image_keeps_slow_tokenizer_piece(sp_tokenizer):
    # " What ..." is encoded by the slow tokenizer as "▁" + " What" -> ▁ ▁What (transformers 5 alone: ▁What).
    ids = tokenizer_image_token("USER: <image> What is the cat? ASSISTANT:", sp_tokenizer)
    assert ids == [1, 284, 311, 303, IMG, 303, 285, 262, 283, 281, 316, 287, 311]


def test_transformers5_alone_drops_the_piece(sp_tokenizer):
    """Documents the difference being fixed: the tokenizers-backed class folds the space into the prefix."""
    assert sp_tokenizer(" What").input_ids == [1, 285]
    assert tokenizer_image_token(" What", sp_tokenizer) == [1, 303, 285]


def test_sp_two_images(sp_tokenizer):
    # chunks "", "\n", "\nWhat is the dog?"
    ids = tokenizer_image_token("<image>\n<image>\nWhat is the dog?", sp_tokenizer, return_tensors="pt")
    assert ids.dtype == torch.long
    assert ids.tolist() == [1, IMG, 303, 13, IMG, 303, 13, 268, 259, 262, 283, 282, 316]


def test_sp_placeholder_mid_sentence(sp_tokenizer):
    prompt = f"USER: What is {IMAGE_PLACEHOLDER} the cat? ASSISTANT:".replace(IMAGE_PLACEHOLDER, "<image>")
    # "USER: What is " -> ▁USER : ▁What ▁is ▁ ; " the cat? ASSISTANT:" -> ▁ ▁the ▁cat ? ▁ASSISTANT :
    expected = [1, 284, 311, 285, 262, 303, IMG, 303, 283, 281, 316, 287, 311]
    assert tokenizer_image_token(prompt, sp_tokenizer) == expected


def test_sp_text_after_eos_has_no_prefix(sp_tokenizer):
    # legacy=False: after "</s>" no "▁" is added, so "USER" is U S E R -> US ER (no "▁USER").
    prompt = "USER: What is the cat? ASSISTANT: The cat is black.</s>USER: What is the dog? ASSISTANT:"
    expected = [1, 284, 311, 285, 262, 283, 281, 316, 287, 311, 280, 281, 262, 296, 315, 2]
    expected += [267, 265, 311, 285, 262, 283, 282, 316, 287, 311]
    assert tokenizer_image_token(prompt, sp_tokenizer) == expected


def test_sp_config_without_legacy_uses_legacy_behaviour(sp_model_bytes, tmp_path):
    # transformers 4.x read a missing "legacy" as True: text after "</s>" gets the dummy prefix (▁USER).
    from transformers import AutoTokenizer

    _write_released_layout(tmp_path / "old", sp_model_bytes, legacy=None)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "old"))
    assert tokenizer_image_token("</s>USER: <image> What", tok) == [1, 2, 284, 311, 303, IMG, 303, 285]


def test_sp_copied_checkpoint_folder(sp_tokenizer, tmp_path):
    # A copy of the folder resolves its own tokenizer.model.
    src = sp_tokenizer.name_or_path
    shutil.copytree(src, tmp_path / "copy")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "copy"))
    assert tokenizer_image_token("<image> What", tok) == [1, IMG, 303, 285]


def test_sp_added_special_tokens(sp_model_bytes, tmp_path):
    # LLaVA's mm_use_im_start_end adds <im_start>/<im_end> as special tokens (ids 330, 331 here). The slow tokenizer
    # drops the lone "▁" in front of a special token; " What" right after <im_end> is then just ▁What.
    from transformers import AutoTokenizer

    _write_released_layout(tmp_path / "ckpt", sp_model_bytes, legacy=False)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ckpt"))
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    assert tokenizer_image_token("<im_start><image><im_end> What", tok) == [1, 330, IMG, 331, 285]


def test_save_tokenizer_keeps_sentencepiece_model(sp_tokenizer, sp_model_bytes, tmp_path):
    from transformers import AutoTokenizer

    # transformers 5 alone saves tokenizer.json only: a reload falls back to its own ids (no crash, no model file).
    sp_tokenizer.save_pretrained(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "tokenizer.model").exists()
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "plain"))
    assert tokenizer_image_token("<image> What", plain) == [1, IMG, 285]
    # save_tokenizer adds tokenizer.model and legacy=false, so the reload keeps the training-time ids.
    save_tokenizer(sp_tokenizer, tmp_path / "kept")
    assert (tmp_path / "kept" / "tokenizer.model").read_bytes() == sp_model_bytes
    assert json.loads((tmp_path / "kept" / "tokenizer_config.json").read_text())["legacy"] is False
    kept = AutoTokenizer.from_pretrained(str(tmp_path / "kept"))
    assert tokenizer_image_token("<image> What", kept) == [1, IMG, 303, 285]


# --- tokenizer_image_token: tokenizers BPE (plain behaviour) -------------------------------------------------


def test_bpe_image_then_newline(bpe_tokenizer):
    # "\nWhat is the cat?" -> ▁\nWhat: ▁ \n W h at ; ▁is ; ▁the ; ▁cat ?
    ids = tokenizer_image_token("<image>\nWhat is the cat?", bpe_tokenizer)
    assert ids == [1, IMG, 3, 13, 4, 5, 16, 19, 22, 24, 12]


def test_bpe_space_after_image_is_plain(bpe_tokenizer):
    # No tokenizer.model: the tokenizer's own ids ("What is " -> ▁What ▁is ▁ ; " the cat?" -> ▁the ▁cat ?).
    assert tokenizer_image_token("What is <image> the cat?", bpe_tokenizer) == [1, 17, 19, 3, IMG, 22, 24, 12]


def test_custom_image_index_and_bad_return_tensors(bpe_tokenizer):
    assert tokenizer_image_token("<image>", bpe_tokenizer, image_token_index=-7) == [1, -7]
    with pytest.raises(ValueError, match="np"):
        tokenizer_image_token("<image>", bpe_tokenizer, return_tensors="np")


# --- KeywordsStoppingCriteria --------------------------------------------------------------------------------


def test_keywords_stopping_is_per_row(bpe_tokenizer):
    prompt = torch.tensor([[1, 17], [1, 17], [1, 24], [1, 17]])
    crit = KeywordsStoppingCriteria(["</s>", "cat?"], bpe_tokenizer, prompt)
    out = torch.tensor(
        [
            [1, 17, 19, 2],  # ends with </s> ids
            [1, 17, 24, 12],  # ends with "cat?" ids (▁cat ?)
            [1, 24, 12, 19],  # "cat?" only in the prompt + first new token; last 2 decode to "? is"
            [1, 17, 19, 22],  # " is the"
        ]
    )
    # Rows 0 and 1 stop; row 2's keyword ids are not at the end and its last-2-token text "? is" has no keyword.
    result = crit(out, torch.zeros(4, 25))
    assert result.dtype == torch.bool
    assert result.tolist() == [True, True, False, False]


def test_keywords_stopping_ignores_prompt(bpe_tokenizer):
    prompt = torch.tensor([[1, 24, 12]])
    crit = KeywordsStoppingCriteria(["cat?"], bpe_tokenizer, prompt)
    assert crit(prompt, torch.zeros(1, 25)).tolist() == [False]
    assert crit(torch.tensor([[1, 24, 12, 19]]), torch.zeros(1, 25)).tolist() == [False]
    assert crit(torch.tensor([[1, 24, 12, 24, 12]]), torch.zeros(1, 25)).tolist() == [True]


def test_keywords_stopping_text_match(bpe_tokenizer):
    # "at?" is inside the decoded text "cat?" of the last tokens, but its ids (a t ?) are not.
    crit = KeywordsStoppingCriteria(["at?"], bpe_tokenizer, torch.tensor([[1]]))
    assert crit(torch.tensor([[1, 19, 24, 12]]), None).tolist() == [True]


# --- get_model_name_from_path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("liuhaotian/llava-v1.5-7b", "llava-v1.5-7b"),
        ("/data/models/llava-v1.5-13b/", "llava-v1.5-13b"),
        ("./checkpoints/llava-v1.5-7b-lora/checkpoint-500", "llava-v1.5-7b-lora_checkpoint-500"),
        ("./checkpoints/run/checkpoint-500/", "run_checkpoint-500"),
        ("checkpoint-3", "checkpoint-3"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_keywords_call_for_batch_matches_rows(bpe_tokenizer):
    prompt = torch.tensor([[1, 17], [1, 17], [1, 24], [1, 17]])
    crit = KeywordsStoppingCriteria(["</s>", "cat?"], bpe_tokenizer, prompt)
    out = torch.tensor([[1, 17, 19, 2], [1, 17, 24, 12], [1, 24, 12, 19], [1, 17, 19, 22]])
    per_row = [crit.call_for_batch(out[i].unsqueeze(0), None) for i in range(4)]
    assert per_row == [True, True, False, False]
    assert all(type(v) is bool for v in per_row)
    assert per_row == crit(out, None).tolist()
    assert crit.call_for_batch(prompt[:1], None) is False  # nothing generated yet
    with pytest.raises(ValueError, match="one row"):
        crit.call_for_batch(out, None)


def test_keywords_stopping_batch_one_is_truthy_like_upstream_bool(bpe_tokenizer):
    crit = KeywordsStoppingCriteria(["cat?"], bpe_tokenizer, torch.tensor([[1]]))
    assert crit(torch.tensor([[1, 24, 12]]), None)  # upstream returned True here
    assert not crit(torch.tensor([[1, 19, 22]]), None)  # and False here


def test_keywords_stopping_in_stopping_criteria_list(bpe_tokenizer):
    # transformers 5 combines criteria row by row: ``is_done | criterion(...)``.
    from transformers import MaxLengthCriteria, StoppingCriteriaList

    crit = KeywordsStoppingCriteria(["</s>"], bpe_tokenizer, torch.tensor([[1, 17], [1, 17]]))
    out = torch.tensor([[1, 17, 19, 2], [1, 17, 19, 22]])
    done = StoppingCriteriaList([crit, MaxLengthCriteria(max_length=10)])(out, None)
    assert done.tolist() == [True, False]


def test_keywords_stopping_with_generate(bpe_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, StoppingCriteriaList

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    prompt = torch.tensor([[1, 17, 19], [1, 24, 22]])
    kwargs = dict(do_sample=False, max_new_tokens=6, eos_token_id=2, pad_token_id=0)  # eos set: finished rows get padded
    full = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert full.shape[1] == 9
    # stop on one of row 0's new tokens whose decoded text re-encodes to that one id
    crit = stop_id = None
    for tok_id in full[0, 3:].tolist():
        text = bpe_tokenizer.decode([tok_id])
        candidate = KeywordsStoppingCriteria([text], bpe_tokenizer, prompt) if text.strip() else None
        if candidate is not None and [t.tolist() for t in candidate.keyword_ids] == [[tok_id]] \
                and tok_id not in full[1, 3:].tolist():
            crit, stop_id = candidate, tok_id
            break
    if crit is None:
        pytest.skip("no generated token of row 0 round-trips through the tokenizer")
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                         stopping_criteria=StoppingCriteriaList([crit]), **kwargs)
    first_stop = min(i for i in range(3, 9) if crit.call_for_batch(full[:1, : i + 1], None))
    assert first_stop < 8
    assert out[0, : first_stop + 1].tolist() == full[0, : first_stop + 1].tolist()
    assert out[0, first_stop + 1:].tolist() == [0] * (out.shape[1] - first_stop - 1)  # padded once finished
