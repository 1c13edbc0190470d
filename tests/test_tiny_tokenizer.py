"""Tests for llava.tools.tiny_tokenizer: released-layout folders (Vicuna, Mistral, Yi, BPE) that reload, fast and
deterministically."""

from __future__ import annotations

import json
import time

import pytest

from llava.tools.tiny_tokenizer import build_bpe_tokenizer, build_sentencepiece_llama_tokenizer, main


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sp")
    start = time.perf_counter()
    build_sentencepiece_llama_tokenizer(folder, vocab_size=1000)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"building took {elapsed:.1f}s"
    return folder


def test_sentencepiece_folder_layout(sp_dir):
    assert sorted(p.name for p in sp_dir.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    config = json.loads((sp_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert config["legacy"] is False and config["add_bos_token"] is True and config["add_eos_token"] is False
    assert config["pad_token"] == "<unk>" and config["model_max_length"] == 4096
    assert config["bos_token"]["content"] == "<s>" and config["eos_token"]["content"] == "</s>"
    special = json.loads((sp_dir / "special_tokens_map.json").read_text())
    assert special["unk_token"]["content"] == "<unk>" and special["pad_token"] == "<unk>"


def test_sentencepiece_reloads_with_llama_ids(sp_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sp_dir))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert len(tok) == 1000
    ids = tok("USER: What is the color of the cat in the image? ASSISTANT:").input_ids
    assert ids[0] == 1 and 0 not in ids
    words = ["▁What", "▁is", "▁the", "▁color", "▁cat", "▁dog", "▁image", "▁USER", "▁ASSISTANT", "▁describe"]
    assert all(w in tok.get_vocab() for w in words), [w for w in words if w not in tok.get_vocab()]
    assert tok.decode(tok("The dog is white.").input_ids, skip_special_tokens=True) == "The dog is white."


def test_sentencepiece_is_deterministic(sp_dir, tmp_path):
    build_sentencepiece_llama_tokenizer(tmp_path, vocab_size=1000)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (sp_dir / name).read_bytes()


def test_sentencepiece_options(tmp_path):
    build_sentencepiece_llama_tokenizer(tmp_path, vocab_size=2000, pad_token=None, model_max_length=2048)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["pad_token"] is None and config["model_max_length"] == 2048
    assert "pad_token" not in json.loads((tmp_path / "special_tokens_map.json").read_text())
    with pytest.raises(ValueError, match="vocab_size"):
        build_sentencepiece_llama_tokenizer(tmp_path, vocab_size=50)


def test_bpe_reloads_and_is_deterministic(tmp_path):
    from transformers import AutoTokenizer

    build_bpe_tokenizer(tmp_path / "a", vocab_size=600)
    build_bpe_tokenizer(tmp_path / "b", vocab_size=600)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert not (tmp_path / "a" / "tokenizer.model").exists()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("What is the color of the cat?").input_ids
    assert ids[0] == 1 and 0 not in ids and 2 not in ids
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["▁What", "▁is"]


def test_cli_builds_every_kind(tmp_path):
    main([str(tmp_path / "sp"), "--vocab-size", "400"])
    main([str(tmp_path / "bpe"), "--kind", "bpe", "--vocab-size", "400"])
    main([str(tmp_path / "mistral"), "--kind", "mistral", "--vocab-size", "400"])
    main([str(tmp_path / "yi"), "--kind", "yi", "--vocab-size", "400"])
    assert (tmp_path / "sp" / "tokenizer.model").is_file()
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "mistral" / "tokenizer_config.json").read_text())["legacy"] is True
    assert json.loads((tmp_path / "yi" / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


# --- llava-v1.6-mistral-7b and llava-v1.6-34b layouts ---------------------------------------------------------


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    from llava.tools.tiny_tokenizer import build_mistral_tokenizer

    folder = tmp_path_factory.mktemp("tiny_mistral")
    build_mistral_tokenizer(folder, vocab_size=1000)
    return folder


@pytest.fixture(scope="module")
def yi_dir(tmp_path_factory):
    from llava.tools.tiny_tokenizer import build_yi_tokenizer

    folder = tmp_path_factory.mktemp("tiny_yi")
    build_yi_tokenizer(folder, vocab_size=1000)
    return folder


def test_mistral_folder_layout(mistral_dir):
    assert sorted(p.name for p in mistral_dir.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    config = json.loads((mistral_dir / "tokenizer_config.json").read_text())
    # Mistral-7B-Instruct-v0.2's declarations (legacy: true), with LLaVA's training-time pad and length.
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is True
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert (config["bos_token"], config["eos_token"], config["unk_token"], config["pad_token"]) == (
        "<s>", "</s>", "<unk>", "<unk>")
    assert [v["content"] for v in config["added_tokens_decoder"].values()] == ["<unk>", "<s>", "</s>"]
    assert config["model_max_length"] == 4096


def test_mistral_reloads_with_its_ids(mistral_dir):
    import sentencepiece as spm

    from llava._tokenization import load_tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(mistral_dir / "tokenizer.model"))
    assert sp.get_piece_size() == 1000 and [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.encode(" What", out_type=str) == ["▁", "▁What"]  # the dummy prefix is on, as in Mistral's model
    tok = load_tokenizer(str(mistral_dir))
    assert type(tok).__name__ == "LlamaTokenizer" and len(tok) == 1000
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert tok("[INST] What is shown in this image? [/INST]").input_ids[0] == 1
    assert "▁[/" in tok.get_vocab() and "INST" in tok.get_vocab()  # template markup is in the corpus


def test_yi_folder_layout(yi_dir):
    config = json.loads((yi_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is True
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert (config["bos_token"], config["eos_token"], config["unk_token"], config["pad_token"]) == (
        "<|startoftext|>", "<|im_end|>", "<unk>", "<unk>")
    assert {k: v["content"] for k, v in config["added_tokens_decoder"].items()} == {
        "0": "<unk>", "1": "<|startoftext|>", "2": "<|endoftext|>", "6": "<|im_start|>", "7": "<|im_end|>"}
    special = json.loads((yi_dir / "special_tokens_map.json").read_text())
    assert special["eos_token"]["content"] == "<|im_end|>" and special["bos_token"]["content"] == "<|startoftext|>"


def test_yi_reloads_with_its_ids(yi_dir):
    import sentencepiece as spm

    from llava._tokenization import load_tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(yi_dir / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in (0, 1, 2, 6, 7, 8)] == [
        "<unk>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>"]
    # One piece each, and no dummy-prefix "▁" (Yi's normaliser).
    assert sp.encode("<|im_start|>user\n<|im_end|>", out_type=str) == ["<|im_start|>", "user", "<0x0A>", "<|im_end|>"]
    tok = load_tokenizer(str(yi_dir))
    assert type(tok).__name__ == "LlamaTokenizer" and len(tok) == 1000
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 7, 0)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [6, 7]
    assert tok("").input_ids == []  # no BOS added
    assert tok.decode([6, 7, 1, 2], skip_special_tokens=True) == ""


def test_mistral_and_yi_are_deterministic_and_checked(mistral_dir, yi_dir, tmp_path):
    from llava.tools.tiny_tokenizer import build_mistral_tokenizer, build_yi_tokenizer

    build_mistral_tokenizer(tmp_path / "m", vocab_size=1000)
    build_yi_tokenizer(tmp_path / "y", vocab_size=1000)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "m" / name).read_bytes() == (mistral_dir / name).read_bytes()
        assert (tmp_path / "y" / name).read_bytes() == (yi_dir / name).read_bytes()
    for builder in (build_mistral_tokenizer, build_yi_tokenizer):
        with pytest.raises(ValueError, match="vocab_size"):
            builder(tmp_path / "small", vocab_size=100)


@pytest.mark.parametrize("vocab_size", [512, 2000])
def test_mistral_and_yi_vocab_sizes(tmp_path, vocab_size):
    from llava._tokenization import load_tokenizer
    from llava.tools.tiny_tokenizer import build_mistral_tokenizer, build_yi_tokenizer

    build_mistral_tokenizer(tmp_path / "m", vocab_size=vocab_size)
    build_yi_tokenizer(tmp_path / "y", vocab_size=vocab_size)
    assert len(load_tokenizer(str(tmp_path / "m"))) == vocab_size
    assert len(load_tokenizer(str(tmp_path / "y"))) == vocab_size
