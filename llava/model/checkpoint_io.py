"""Reading the small weight files LLaVA training writes beside a checkpoint.

``mm_projector.bin`` (pretraining) and ``non_lora_trainables.bin`` (LoRA runs) are torch pickles upstream;
they are read with ``weights_only=True`` (no code runs), and a ``.safetensors`` twin is preferred when present.
Every key must land on a parameter of the model: a file that does not fit is an error naming the keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

logger = logging.getLogger(__name__)


def read_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` or ``.bin`` state dict safely (``weights_only=True``), naming the file on error."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or non-tensor pickle: say which file
        raise ValueError(f"could not read weights from {path}: {err}") from err


def find_weight_file(folder: str | os.PathLike, stem: str) -> Path | None:
    """``folder/stem.safetensors`` if present, else ``folder/stem.bin``, else None."""
    for suffix in (".safetensors", ".bin"):
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def clean_non_lora_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT-prefixed keys -> model keys: drop a leading "base_model.", then a leading "model." when the keys
    start "model.model." (``base_model.model.model.mm_projector.0.weight`` -> ``model.mm_projector.0.weight``)."""
    state = {k.removeprefix("base_model."): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``state`` into ``model``'s matching parameters; every key must exist with the same shape."""
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} weights do not belong to this model, e.g. {unexpected[:3]}")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{source}: shape mismatch for {len(wrong)} weights, e.g. {wrong[:3]}")
    model.load_state_dict(state, strict=False)
    logger.info("loaded %d weights from %s", len(state), source)


def load_non_lora_trainables(model: torch.nn.Module, folder: str | os.PathLike) -> None:
    """Load ``non_lora_trainables.{safetensors,bin}`` from a LoRA checkpoint folder into ``model``."""
    file = find_weight_file(folder, "non_lora_trainables")
    if file is None:
        raise FileNotFoundError(
            f"{folder} has no non_lora_trainables.bin (nor .safetensors): the projector weights of a LoRA run "
            "are saved there"
        )
    load_into(model, clean_non_lora_keys(read_weight_file(file)), file)


def load_projector_weights(model: torch.nn.Module, folder: str | os.PathLike) -> None:
    """Load ``mm_projector.{safetensors,bin}`` (keys ``model.mm_projector.*``) into ``model``."""
    file = find_weight_file(folder, "mm_projector")
    if file is None:
        raise FileNotFoundError(f"{folder} has no mm_projector.bin (nor .safetensors), and no adapter_config.json")
    state = {k: v.to(model.dtype) for k, v in read_weight_file(file).items()}
    load_into(model, state, file)
