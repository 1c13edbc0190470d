"""``load_pretrained_model``: which visual-token reduction a loaded model runs (kwargs > config > name > default),
logged once per load."""

from __future__ import annotations

import logging

import pytest
from loading_helpers import copy_checkpoint, load, logits_of

def reduction_of(model):
    return model.get_vision_tower().token_reduction


def test_token_reduction_default_is_logged_once(tiny_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="llava")
    _, model, _, _ = load(tiny_checkpoint)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "prumerge", None, "default"
    )
    messages = [r.getMessage() for r in caplog.records if "token reduction" in r.getMessage()]
    assert len(messages) == 1, messages
    assert "prumerge" in messages[0] and "default" in messages[0]


def test_token_reduction_kwargs(tiny_checkpoint, inputs, caplog):
    caplog.set_level(logging.INFO, logger="llava")
    _, model, _, _ = load(tiny_checkpoint, token_reduction="none")
    assert (reduction_of(model).mode, reduction_of(model).source) == ("none", "flag")
    assert model.config.mm_token_reduction == "none"

    _, model, _, _ = load(tiny_checkpoint, token_reduction="prumerge_plus", token_budget=8)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "prumerge+", 8, "flag"
    )
    logits_of(model, inputs)
    assert model.last_visual_token_counts == [9]  # 8 centres + the extra token
    messages = [r.getMessage() for r in caplog.records if "token reduction" in r.getMessage()]
    assert len(messages) == 2  # once per load


def test_token_reduction_config_keys(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-v1.5-tiny",
                             mm_token_reduction="prumerge+", mm_token_budget=16)
    _, model, _, _ = load(folder)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "prumerge+", 16, "config"
    )
    # the flag beats the config
    _, model, _, _ = load(folder, token_reduction="none", token_budget=4)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "none", 4, "flag"
    )


@pytest.mark.parametrize("name", ["llava-v1.5-tiny-prumerge-plus", "llava-v1.5-tiny-prumerge_plus-lora-merged"])
def test_token_reduction_checkpoint_name_rule(tiny_checkpoint, tmp_path, name):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / name)
    _, model, _, _ = load(folder, name=name.replace("-lora", ""))
    assert (reduction_of(model).mode, reduction_of(model).source) == ("prumerge+", "checkpoint name")


def test_token_reduction_config_beats_name_and_parents_do_not_count(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-tiny-prumerge-plus", mm_token_reduction="prumerge")
    _, model, _, _ = load(folder)
    assert (reduction_of(model).mode, reduction_of(model).source) == ("prumerge", "config")

    # a plain checkpoint that lives under a folder named like a PruMerge+ run is a plain checkpoint
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "prumerge-plus-runs" / "llava-v1.5-tiny")
    _, model, _, _ = load(folder)
    assert (reduction_of(model).mode, reduction_of(model).source) == ("prumerge", "default")


def test_unknown_token_reduction_kwarg(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"unknown --token-reduction 'fast'.*'none', 'prumerge', 'prumerge\+'"):
        load(tiny_checkpoint, token_reduction="fast")
    with pytest.raises(ValueError, match=r"--token-budget must be a positive integer or null, got 0"):
        load(tiny_checkpoint, token_budget=0)
