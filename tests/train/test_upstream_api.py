"""Upstream ``llava/train/train.py`` helpers, called with upstream's signatures on the tiny tokenizer and model.

Oracles: the tokenizer's own encoding of each reply and prompt string written out here, hand-worked masks, and
files on disk compared with the model's own parameters.
"""

from __future__ import annotations

import copy
import inspect
import logging
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.train.args import DataArguments, TrainingArguments
from llava.train.llava_trainer import LLaVATrainer
from llava.train.model_setup import load_tokenizer
from llava.train.preprocess import move_image_to_front, tokenize_chat
from llava.train.train import (
    _mask_targets,
    _tokenize_fn,
    preprocess,
    preprocess_llama_2,
    preprocess_mpt,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
    rank0_print,
    safe_save_model_for_hf_trainer,
    smart_tokenizer_and_embedding_resize,
)
from test_preprocess import QUESTION_1, QUESTION_2, REPLY_1, REPLY_2, labeled_spans, own_ids

PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    tok = load_tokenizer(str(tiny_checkpoint), model_max_length=2048)
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture
def conversation(monkeypatch):
    """Set ``llava.conversation.default_conversation`` the way upstream scripts do (restored after the test)."""
    def use(name: str) -> None:
        monkeypatch.setattr(conversation_lib, "default_conversation", conv_templates[name])
    return use


def sources(image: bool = True) -> list[list[dict[str, str]]]:
    """One two-round conversation, as upstream's dataset hands it over (after ``preprocess_multimodal``)."""
    first = f"<image>\n{QUESTION_1}" if image else QUESTION_1
    return [[{"from": "human", "value": first}, {"from": "gpt", "value": REPLY_1},
             {"from": "human", "value": QUESTION_2}, {"from": "gpt", "value": REPLY_2}]]


# ------------------------------------------------------------------------------------------------ signatures


@pytest.mark.parametrize("function, parameters", [
    (preprocess, ["sources", "tokenizer", "has_image"]),
    (preprocess_multimodal, ["sources", "data_args"]),
    (preprocess_v1, ["sources", "tokenizer", "has_image"]),
    (preprocess_llama_2, ["sources", "tokenizer", "has_image"]),
    (preprocess_mpt, ["sources", "tokenizer", "has_image"]),
    (preprocess_plain, ["sources", "tokenizer"]),
    (_tokenize_fn, ["strings", "tokenizer"]),
    (_mask_targets, ["target", "tokenized_lens", "speakers"]),
    (safe_save_model_for_hf_trainer, ["trainer", "output_dir"]),
    (rank0_print, ["args"]),
    (smart_tokenizer_and_embedding_resize, ["special_tokens_dict", "tokenizer", "model"]),
], ids=lambda x: getattr(x, "__name__", ""))
def test_upstream_names_and_parameters(function, parameters):
    signature = inspect.signature(function)
    assert list(signature.parameters) == parameters
    if "has_image" in parameters:
        assert signature.parameters["has_image"].default is False


# ------------------------------------------------------------------------------------------------ preprocess_*


@pytest.mark.parametrize("function, name, closing", [
    (preprocess_v1, "vicuna_v1", "</s>"),
    (preprocess_v1, "llava_v1", "</s>"),
    (preprocess_llama_2, "llava_llama_2", " </s>"),
    (preprocess_llama_2, "mistral_instruct", " </s>"),
    (preprocess_mpt, "mpt", "<|im_end|>"),
    (preprocess_mpt, "chatml_direct", "<|im_end|>"),
])
@pytest.mark.parametrize("image", [True, False], ids=["image", "text-only"])
def test_chat_labels_decode_to_the_replies_and_their_closing(tokenizer, conversation, function, name, closing, image):
    conversation(name)
    out = function(sources(image), tokenizer, image)  # upstream passes has_image positionally too
    assert set(out) == {"input_ids", "labels"}
    ids, labels = out["input_ids"], out["labels"]
    assert ids.dim() == 2 and ids.shape[0] == 1 and labels.shape == ids.shape  # upstream's [N, T]
    ids, labels = ids[0], labels[0]
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == (1 if image else 0)
    spans = labeled_spans(labels)
    assert [tokenizer.decode(ids[s:e]) for s, e in spans] == [REPLY_1 + closing, REPLY_2 + closing]
    for s, e in spans:
        assert torch.equal(labels[s:e], ids[s:e])


def test_v1_reply_ids_are_exact_and_agree_with_tokenize_chat(tokenizer, conversation):
    conversation("vicuna_v1")
    out = preprocess(copy.deepcopy(sources()), tokenizer, has_image=True)
    ids, labels = out["input_ids"][0], out["labels"][0]
    eos = tokenizer.eos_token_id
    assert [ids[s:e].tolist() for s, e in labeled_spans(labels)] == [own_ids(tokenizer, REPLY_1) + [eos],
                                                                     own_ids(tokenizer, REPLY_2) + [eos]]
    own = tokenize_chat(sources()[0], tokenizer, conv_templates["vicuna_v1"])  # the package's own path
    assert torch.equal(ids, own.input_ids) and torch.equal(labels, own.labels)


def test_text_only_path_keeps_image_tag_as_text(tokenizer, conversation):
    conversation("vicuna_v1")
    out = preprocess_v1(sources(image=True), tokenizer, has_image=False)
    assert not (out["input_ids"] == IMAGE_TOKEN_INDEX).any()
    with_image = preprocess_v1(sources(image=True), tokenizer, has_image=True)
    assert out["input_ids"].shape[1] > with_image["input_ids"].shape[1]  # "<image>" spelled out in pieces


def test_a_batch_of_different_lengths_is_right_padded(tokenizer, conversation):
    conversation("vicuna_v1")
    short = [[{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]]
    batch = preprocess_v1(sources(False) + short, tokenizer)
    alone = [preprocess_v1(s, tokenizer) for s in (sources(False), short)]
    assert batch["input_ids"].shape == (2, alone[0]["input_ids"].shape[1])
    n = alone[1]["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][0], alone[0]["input_ids"][0])
    assert torch.equal(batch["input_ids"][1, :n], alone[1]["input_ids"][0])
    assert (batch["input_ids"][1, n:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all()


def test_tokenization_mismatch_masks_the_sample_and_warns(tiny_checkpoint, conversation, caplog):
    """A token added across the "ASSISTANT: The" boundary: the prompt no longer tokenizes as its prefixes."""
    conversation("vicuna_v1")
    tok = load_tokenizer(str(tiny_checkpoint), model_max_length=2048)
    tok.add_tokens([": The"])
    with caplog.at_level(logging.WARNING, logger="llava.train"):
        out = preprocess_v1(sources(), tok, has_image=True)
    assert (out["labels"] == IGNORE_INDEX).all()
    assert "tokenization mismatch" in caplog.text and "preprocess_v1: source 0" in caplog.text


def test_chat_function_refuses_another_template(tokenizer, conversation):
    conversation("llava_llama_2")
    with pytest.raises(ValueError, match="sep_style TWO.*LLAMA_2"):
        preprocess_v1(sources(), tokenizer, has_image=True)


def test_plain_is_image_caption_and_newline(tokenizer, conversation):
    conversation("plain")
    caption = "a red circle on white"
    data = [[{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption}]]
    out = preprocess_plain(data, tokenizer)
    assert isinstance(out["input_ids"], list) and len(out["input_ids"]) == 1
    caption_ids = own_ids(tokenizer, caption + "\n")
    assert out["input_ids"][0].tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX] + caption_ids
    assert out["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX] + caption_ids


def test_legacy_path_for_hash_templates(tokenizer, conversation):
    """v0 ("###"): upstream's prompt, the header masked, the rest by _mask_targets."""
    conversation("v0")
    template = conv_templates["v0"]
    out = preprocess(sources(), tokenizer, has_image=True)
    header = f"{template.system}\n\n"
    turns = [f"### {template.roles[j % 2]}: {t['value']}\n" for j, t in enumerate(sources()[0])]
    prompt = header + "".join(turns) + "### "
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids.tolist() == tokenizer_image_token(prompt, tokenizer)
    header_len = len(tokenizer_image_token(header, tokenizer))
    assert (labels[:header_len] == IGNORE_INDEX).all()
    assert labels[header_len : header_len + 2].tolist() == ids[header_len : header_len + 2].tolist()


# ------------------------------------------------------------------------------------------------ dispatch


@pytest.mark.parametrize("name, function", [
    ("plain", preprocess_plain), ("v0_plain", preprocess_plain), ("vicuna_v1", preprocess_v1),
    ("v1_mmtag", preprocess_v1), ("llama_2", preprocess_llama_2), ("mistral_instruct", preprocess_llama_2),
    ("mpt", preprocess_mpt), ("chatml_direct", preprocess_mpt),
])
def test_preprocess_dispatches_by_default_conversation(tokenizer, conversation, name, function):
    conversation(name)
    data = [sources()[0][:2]]
    out = preprocess(copy.deepcopy(data), tokenizer, True)
    expected = function(copy.deepcopy(data), tokenizer) if function is preprocess_plain else function(
        copy.deepcopy(data), tokenizer, has_image=True)
    for key in ("input_ids", "labels"):
        assert all(torch.equal(a, b) for a, b in zip(out[key], expected[key]))


def test_preprocess_reads_the_attribute_at_call_time(tokenizer, monkeypatch):
    before = conversation_lib.default_conversation
    default = preprocess(sources(), tokenizer, has_image=True)["input_ids"][0]
    assert before is conv_templates["vicuna_v1"]
    monkeypatch.setattr(conversation_lib, "default_conversation", conv_templates["llava_llama_2"])
    llama = preprocess(sources(), tokenizer, has_image=True)["input_ids"][0]
    def text(ids: torch.Tensor) -> str:
        return tokenizer.decode(ids[ids != IMAGE_TOKEN_INDEX])
    assert "[INST]" in text(llama) and "[INST]" not in text(default)
    monkeypatch.undo()
    assert conversation_lib.default_conversation is before


# ------------------------------------------------------------------------------------------------ multimodal


@pytest.mark.parametrize("name, start_end, expected", [
    ("vicuna_v1", False, "<image>\nWhat is it?"),
    ("vicuna_v1", True, "<im_start><image><im_end>\nWhat is it?"),
    ("v1_mmtag", False, "<Image><image></Image>\nWhat is it?"),
])
def test_preprocess_multimodal_moves_the_image_in_place(conversation, name, start_end, expected):
    conversation(name)
    data_args = DataArguments(is_multimodal=True)
    data_args.mm_use_im_start_end = start_end  # upstream's train() sets this attribute
    data = [[{"from": "human", "value": "What is it? <image>"}, {"from": "gpt", "value": "A cat."}]]
    turn = data[0][0]
    out = preprocess_multimodal(data, data_args)
    assert out is data and data[0][0] is turn  # in place, as upstream
    assert turn["value"] == expected and data[0][1]["value"] == "A cat."


def test_preprocess_multimodal_needs_is_multimodal():
    data = [[{"from": "human", "value": "What is it? <image>"}, {"from": "gpt", "value": "A cat."}]]
    assert preprocess_multimodal(data, SimpleNamespace(is_multimodal=False))[0][0]["value"] == "What is it? <image>"
    assert move_image_to_front(data[0])[0]["value"] == "<image>\nWhat is it?"  # the package's function, same rule


# ------------------------------------------------------------------------------------------------ tokens and masks


def test_tokenize_fn_ids_and_lengths(tiny_checkpoint):
    tok = load_tokenizer(str(tiny_checkpoint), model_max_length=4)
    out = _tokenize_fn(["The cat", "The square is blue."], tok)
    bos = tok.bos_token_id
    full = [[bos] + own_ids(tok, "The cat"), [bos] + own_ids(tok, "The square is blue.")]
    assert len(full[0]) < 4 < len(full[1])
    assert [t.tolist() for t in out["input_ids"]] == [full[0], full[1][:4]]  # cut to model_max_length
    assert [t.tolist() for t in out["labels"]] == [full[0], full[1][:4]]
    assert out["input_ids_lens"] == out["labels_lens"] == [len(full[0]), 4]


def test_mask_targets_by_hand():
    target = torch.arange(12)
    _mask_targets(target, [3, 4, 5], ["human", "gpt"])
    m = IGNORE_INDEX
    # header [0, 3) masked; human turn [3, 7) masked from its third position; gpt turn [7, 12) kept
    assert target.tolist() == [m, m, m, 3, 4, m, m, 7, 8, 9, 10, 11]
    target = torch.arange(8)
    _mask_targets(target, [2, 3, 3], ["gpt", "human"])
    assert target.tolist() == [m, m, 2, 3, 4, 5, 6, m]


# ------------------------------------------------------------------------------------------------ rank0_print


def test_rank0_print_only_on_local_rank_zero(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank0_print("hello", 1)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    rank0_print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"
    monkeypatch.delenv("LOCAL_RANK")
    rank0_print("single process")  # not distributed: rank 0 of one
    assert capsys.readouterr().out == "single process\n"


# ------------------------------------------------------------------------------------------------ saving


@pytest.fixture(scope="module")
def trained(tiny_checkpoint):
    """A fresh tiny model and its tokenizer (the tests do not change them)."""
    tok, model, _, _ = load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny", device="cpu")
    return tok, model


def make_trainer(model, tok, output_dir) -> LLaVATrainer:
    args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none")
    return LLaVATrainer(model=model, args=args, processing_class=tok)


def test_safe_save_projector_only(trained, tmp_path):
    tok, model = trained
    trainer = make_trainer(model, tok, tmp_path / "run")
    trainer.args.tune_mm_mlp_adapter = True  # what upstream's train() sets
    safe_save_model_for_hf_trainer(trainer, str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "mm_projector.bin"]
    state = torch.load(tmp_path / "run" / "mm_projector.bin", weights_only=True)
    assert set(state) == PROJECTOR_KEYS
    params = dict(model.named_parameters())
    for key, value in state.items():
        assert torch.equal(value, params[key].detach())

    safe_save_model_for_hf_trainer(trainer, str(tmp_path / "run" / "checkpoint-3"))
    assert set(torch.load(tmp_path / "run" / "mm_projector" / "checkpoint-3.bin", weights_only=True)) == PROJECTOR_KEYS


def test_safe_save_full_model_reloads(trained, tmp_path):
    tok, model = trained
    out = tmp_path / "llava-full"
    trainer = make_trainer(model, tok, out)
    safe_save_model_for_hf_trainer(trainer, str(out))
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.model", "tokenizer_config.json"} <= names
    assert "mm_projector.bin" not in names
    saved = load_file(out / "model.safetensors")
    state = model.state_dict()
    expected = {k for k in state if not k.startswith("model.vision_tower.")}  # frozen folder tower: left out
    assert PROJECTOR_KEYS <= set(saved)
    assert set(saved) == expected
    for key in saved:
        assert torch.equal(saved[key], state[key])

    _, reloaded, _, _ = load_pretrained_model(str(out), None, "llava-full", device="cpu")
    assert torch.equal(reloaded.get_model().mm_projector[0].weight, model.get_model().mm_projector[0].weight)


# ------------------------------------------------------------------------------------------------ embeddings


def test_smart_tokenizer_and_embedding_resize_mean_rows(tiny_checkpoint):
    tok, model, _, _ = load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny", device="cpu")
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    vocab = old_in.shape[0]
    assert vocab == len(tok)

    smart_tokenizer_and_embedding_resize(special_tokens_dict={"additional_special_tokens": ["<x_a>", "<x_b>"]},
                                         tokenizer=tok, model=model)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert len(tok) == vocab + 2 and new_in.shape == (vocab + 2, old_in.shape[1]) and new_out.shape[0] == vocab + 2
    assert torch.equal(new_in[:vocab], old_in) and torch.equal(new_out[:vocab], old_out)
    for new, old in ((new_in, old_in), (new_out, old_out)):
        for row in new[vocab:]:
            torch.testing.assert_close(row, old.mean(dim=0))
    assert tok.convert_tokens_to_ids("<x_b>") == vocab + 1

    smart_tokenizer_and_embedding_resize({"pad_token": "[PAD]"}, tok, model)  # positional, as upstream's callers
    assert tok.pad_token == "[PAD]" and model.get_input_embeddings().weight.shape[0] == vocab + 3
    smart_tokenizer_and_embedding_resize({"pad_token": "[PAD]"}, tok, model)  # nothing new: nothing changes
    assert model.get_input_embeddings().weight.shape[0] == vocab + 3
