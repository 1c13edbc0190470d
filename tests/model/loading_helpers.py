"""Helpers shared by the model and loader tests: load a folder on the CPU, copy a checkpoint with config changes,
perturb weights, run a forward, switch a shared model's token reduction for a block."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from llava.model.builder import load_pretrained_model
from llava.model.token_reduction import TokenReduction

PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"
# peft 0.21 calls a transformers method that transformers 5.23 renamed; nothing to act on here
PEFT_RENAME_WARNING = "ignore:.*is_gradient_checkpointing.*:FutureWarning"
LM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "pad_token_id", "bos_token_id",
           "eos_token_id")


def load(path, base=None, name=None, **kwargs):
    path = Path(path)
    return load_pretrained_model(str(path), None if base is None else str(base), name or path.name,
                                 device="cpu", **kwargs)


def copy_checkpoint(src: Path, dst: Path, **config_updates) -> Path:
    shutil.copytree(src, dst)
    if config_updates:
        data = json.loads((dst / "config.json").read_text())
        data.update(config_updates)
        (dst / "config.json").write_text(json.dumps(data, indent=2))
    return dst


def perturb_(module: torch.nn.Module, seed: int, std: float = 0.3) -> dict[str, torch.Tensor]:
    """Fill every parameter of ``module`` with fresh random values; return copies of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def logits_of(model, inputs) -> torch.Tensor:
    ids, pixels = inputs
    with torch.no_grad():
        return model(input_ids=ids, images=pixels).logits


@contextlib.contextmanager
def reduction(model, mode: str, budget: int | None = None, merge: str | None = None):
    """Switch the (shared) model's token reduction, and optionally its mm_patch_merge_type, restoring both after."""
    tower = model.get_vision_tower()
    before, merge_before = tower.token_reduction, model.config.mm_patch_merge_type
    tower.set_token_reduction(TokenReduction(mode, budget, "flag"))
    if merge is not None:
        model.config.mm_patch_merge_type = merge
    try:
        yield
    finally:
        tower.set_token_reduction(before)
        model.config.mm_patch_merge_type = merge_before
