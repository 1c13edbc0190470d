"""``load_pretrained_model`` on bad input: every mistake is an error naming the key, path, file or line."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from loading_helpers import copy_checkpoint, load

from llava.model.builder import load_pretrained_model


def test_missing_model_path(tiny_checkpoint, tmp_path):
    missing = tmp_path / "llava-v1.5-7b-nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"model_path '{missing}' does not exist")):
        load(missing)
    with pytest.raises(FileNotFoundError, match="model_base '/no/such/vicuna' does not exist"):
        load(tiny_checkpoint, base="/no/such/vicuna", name="llava-v1.5-tiny-lora")


def test_config_without_vision_tower(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-broken")
    data = json.loads((folder / "config.json").read_text())
    del data["mm_vision_tower"]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        load(folder)
    assert str(folder / "config.json") in str(info.value)
    assert "mm_vision_tower is missing" in str(info.value)


def test_vision_tower_pointing_at_a_missing_folder(tiny_checkpoint, tmp_path):
    gone = tmp_path / "gone" / "clip-vit-large-patch14-336"
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-moved", mm_vision_tower=str(gone))
    with pytest.raises(FileNotFoundError) as info:
        load(folder)
    assert "mm_vision_tower" in str(info.value) and str(gone) in str(info.value)
    assert str(folder / "config.json") in str(info.value)


def test_invalid_json_config(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-badjson")
    (folder / "config.json").write_text('{\n  "model_type": "llava",\n  "hidden_size": 64,,\n}\n')
    with pytest.raises(ValueError) as info:
        load(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and "line 3" in message, message


def test_corrupt_non_lora_trainables(tiny_checkpoint, base_lm, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    (folder / "non_lora_trainables.bin").write_bytes(b"this is not a torch pickle")
    with pytest.raises(ValueError) as info:
        load(folder, base=base_lm)
    assert str(folder / "non_lora_trainables.bin") in str(info.value)


def test_lora_without_non_lora_trainables(tiny_checkpoint, base_lm, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match="non_lora_trainables"):
        load(folder, base=base_lm)


def test_lora_without_model_base(tiny_checkpoint, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    with pytest.raises(ValueError, match=r"LoRA checkpoint .*--model-base"):
        load(folder)


def test_config_without_weights(tiny_checkpoint, tmp_path):
    folder = tmp_path / "llava-no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny_checkpoint / name, folder / name)
    with pytest.raises(OSError, match=re.escape(f"could not load model weights from {folder}")):
        load(folder)


@pytest.mark.parametrize("text, kind", [("[]", "list"), ('"x"', "str"), ("3", "int")])
def test_config_that_is_not_an_object(tiny_checkpoint, tmp_path, text, kind):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-notobject")
    (folder / "config.json").write_text(text + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'config.json'} must hold a JSON object (the model's "
                                                   f"settings), got a {kind}")):
        load(folder)
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'config.json'} must hold a JSON object")):
        load(folder, name="plain-lm")  # no "llava" in the name: the config is read to tell


def test_truncated_safetensors_names_the_file(tiny_checkpoint, tiny_clip, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-truncated")
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    with pytest.raises(ValueError, match=re.escape(f"{weights} is not a readable safetensors file")):
        load(folder)
    # the vision tower's own checkpoint too
    clip = Path(shutil.copytree(tiny_clip, tmp_path / "clip-truncated"))
    os.truncate(clip / "model.safetensors", 1000)
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-tower-truncated", mm_vision_tower=str(clip))
    with pytest.raises(ValueError, match=re.escape(f"{clip / 'model.safetensors'} is not a readable safetensors")):
        load(folder)


def test_missing_tokenizer_model_names_the_folder(tiny_checkpoint, base_lm, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-notokenizer")
    (folder / "tokenizer.model").unlink()
    assert not (folder / "tokenizer.json").exists()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{folder} has no tokenizer.model (nor tokenizer.json)")):
        load(folder)
    # a base LM folder (projector-only checkpoints read the tokenizer there) is checked the same way
    base = Path(shutil.copytree(base_lm, tmp_path / "vicuna-notokenizer"))
    for name in ("tokenizer.json", "tokenizer.model"):
        (base / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{base} has no tokenizer.model")):
        load(base, name="vicuna-notokenizer")


def test_unknown_device_and_two_quantizations(tiny_checkpoint):
    with pytest.raises(ValueError, match=re.escape("device 'tpu' is not one of cuda, cuda:N, cpu, mps")):
        load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny", device="tpu")
    with pytest.raises(ValueError, match="load_8bit and load_4bit exclude each other"):
        load(tiny_checkpoint, load_8bit=True, load_4bit=True)
