"""Fixtures of the loader tests: prompt inputs for the tiny checkpoint, and a plain Llama base LM folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from loading_helpers import LM_KEYS, PROMPT
from safetensors.torch import load_file
from transformers import AutoImageProcessor, LlamaConfig, LlamaForCausalLM

from llava._tokenization import load_tokenizer, save_tokenizer
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_llava_config


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint, demo_image):
    """Prompt ids ``[1, T]`` and pixels ``[1, 3, 336, 336]`` for the tiny checkpoint."""
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    ids = torch.tensor([tokenizer_image_token(PROMPT, tokenizer)])
    config = load_llava_config(tiny_checkpoint)
    processor = AutoImageProcessor.from_pretrained(config.mm_vision_tower, backend="pil")
    return ids, process_images([demo_image], processor, config)


@pytest.fixture(scope="module")
def base_lm(tiny_checkpoint, tmp_path_factory) -> Path:
    """A plain Llama LM (no vision keys) holding the tiny checkpoint's language-model weights."""
    folder = tmp_path_factory.mktemp("bases") / "vicuna-tiny"
    data = json.loads((tiny_checkpoint / "config.json").read_text())
    weights = load_file(tiny_checkpoint / "model.safetensors")
    lm_weights = {k: v.float() for k, v in weights.items() if "mm_projector" not in k}
    model = LlamaForCausalLM(LlamaConfig(**{k: data[k] for k in LM_KEYS}))
    model.load_state_dict(lm_weights, strict=True)
    model.save_pretrained(folder)
    save_tokenizer(load_tokenizer(str(tiny_checkpoint)), folder)
    return folder
