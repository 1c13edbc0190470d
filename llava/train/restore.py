"""Putting a ``checkpoint-N``'s weights back into the model when a run resumes (the inverse of ``saving``).

``transformers.Trainer`` restores the optimizer, scheduler, RNG states and step by itself; for the weights it only
knows full model files and PEFT adapters. What it would miss:

* LoRA runs: ``non_lora_trainables.bin`` (the projector, a trained tower, ``image_newline``), which the adapter
  does not hold: ``restore_non_lora_trainables``, after the Trainer has loaded the adapter.
* Projector runs: their checkpoints hold ``mm_projector.bin`` and no model file: ``restore_projector``.
* Full runs: the vision tower is saved under the released names (or left out when it is the frozen
  ``mm_vision_tower`` folder's): ``restore_full_weights``.

Each checks that every parameter the run trains is in the checkpoint and every weight in the checkpoint is a
parameter of the model, so a resumed run never silently restarts a part from its initial weights.

Under DeepSpeed none of this runs: the Trainer resumes from DeepSpeed's own checkpoint (``global_stepN/``), whose
module and optimizer states hold every trained weight, including the projector.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..model.checkpoint_io import checkpoint_weight_files, find_weight_file, load_into, read_weight_file
from .saving import VISION_TOWER_PREFIX, module_tower_keys

logger = logging.getLogger(__name__)


def _trained_names(model: torch.nn.Module, *, skip_lora: bool) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and not (skip_lora and "lora_" in n)}


def _require(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, *, skip_lora: bool) -> None:
    """Raise unless every trained (non-LoRA with ``skip_lora``) parameter of ``model`` is in ``state``."""
    missing = sorted(_trained_names(model, skip_lora=skip_lora) - set(state))
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} of the weights this run trains, e.g. {missing[:3]}: "
                         "resuming would restart them from their initial values")


def restore_non_lora_trainables(model: Any, folder: str | os.PathLike) -> None:
    """Load ``folder/non_lora_trainables.bin`` into a PEFT-wrapped LLaVA model (keys as saved:
    ``base_model.model.model.mm_projector.0.weight``, the tower under the released names).

    Raises:
        FileNotFoundError: the folder has no non_lora_trainables file.
        ValueError: a trained non-LoRA parameter is missing from it, or it holds weights the model does not have.
    """
    file = find_weight_file(folder, "non_lora_trainables")
    if file is None:
        raise FileNotFoundError(f"{folder} has no non_lora_trainables.bin: the projector of this LoRA run cannot "
                                "be restored")
    state = module_tower_keys(read_weight_file(file))
    _require(model, state, file, skip_lora=True)
    load_into(model, state, file)


def restore_projector(model: Any, folder: str | os.PathLike) -> None:
    """Load ``folder/mm_projector.bin`` (keys ``model.mm_projector.*``, maybe the embeddings and
    ``model.image_newline``) into a projector-only (``--tune_mm_mlp_adapter``) run's model.

    Raises:
        FileNotFoundError: the folder has no mm_projector file.
        ValueError: a trained parameter is missing from it, or it holds weights the model does not have.
    """
    file = find_weight_file(folder, "mm_projector")
    if file is None:
        raise FileNotFoundError(f"{folder} has no mm_projector.bin: this projector run cannot be resumed from it")
    state = read_weight_file(file)
    _require(model, state, file, skip_lora=False)
    load_into(model, state, file)


def restore_full_weights(model: Any, folder: str | os.PathLike) -> None:
    """Load a full run's checkpoint (``model.safetensors`` or its shards) into ``model``.

    The tower's weights are read back from the released names; when the checkpoint has none (a frozen
    ``mm_vision_tower`` folder tower, not saved), the model keeps the tower it was built with.

    Raises:
        FileNotFoundError: no model weight file in ``folder``.
        ValueError: weights that are not the model's, or model weights other than the frozen tower's missing.
    """
    files = checkpoint_weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} has no model weight file (model*.safetensors or pytorch_model*.bin)")
    own = model.state_dict()
    seen: set[str] = set()
    for file in files:
        state = module_tower_keys(read_weight_file(file))
        load_into(model, state, file)
        seen.update(state)
    missing = set(own) - seen
    tower_frozen = not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(VISION_TOWER_PREFIX))
    if tower_frozen:
        missing = {k for k in missing if not k.startswith(VISION_TOWER_PREFIX)}
    missing -= _tied_names(model)
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} weights of the model, e.g. {sorted(missing)[:3]}")


def _tied_names(model: Any) -> set[str]:
    """Parameters saved once under another name (tied embeddings), which a checkpoint may leave out."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return set(tied)
