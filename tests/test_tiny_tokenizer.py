"""Tests for llava.tools.tiny_tokenizer: released-layout folders that reload, fast and deterministically."""

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


def test_cli_builds_both_kinds(tmp_path):
    main([str(tmp_path / "sp"), "--vocab-size", "400"])
    main([str(tmp_path / "bpe"), "--kind", "bpe", "--vocab-size", "400"])
    assert (tmp_path / "sp" / "tokenizer.model").is_file()
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()
