"""What a training run writes, in the layout ``llava.model.builder.load_pretrained_model`` reads.

* LoRA runs (``--lora_enable``): the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``),
  ``non_lora_trainables.bin`` (the other trained weights, keys ``base_model.model.model.mm_projector.0.weight``;
  with ``--unfreeze_mm_vision_tower`` also the tower, ``base_model.model.model.vision_tower.vision_tower.
  vision_model.*``; and LLaVA-1.6's ``image_newline``, trained or not) and ``config.json`` (written last: a
  folder without it is not a finished checkpoint).
* Projector-only runs (``--tune_mm_mlp_adapter``): ``mm_projector.bin`` (keys ``model.mm_projector.*``, and
  ``model.image_newline`` for the "unpad" layouts) and ``config.json``; for ``checkpoint-N`` folders, also
  ``<run>/mm_projector/checkpoint-N.bin`` as upstream, and the Trainer's optimizer / scheduler / RNG states and
  ``trainer_state.json``, so that they resume (``llava/train/restore.py``).
* Full runs: ``model.safetensors`` + ``config.json`` + the tokenizer, without the CLIP weights when the tower is
  the ``mm_vision_tower`` folder's (frozen, config ``unfreeze_mm_vision_tower`` false: they are loaded from there);
  a trained or finetuned tower is saved as ``model.vision_tower.vision_tower.vision_model.*``.

Tower keys are written as released LLaVA-1.6 checkpoints have them (``...vision_tower.vision_tower.vision_model.X``,
the CLIPModel layout of transformers 4): transformers 5's ``CLIPVisionModel`` has no ``vision_model`` level, so
``release_tower_keys`` puts it back.

Files written here go to a temporary name first and are renamed into place. Every function that reads
parameters must be called on all ranks (ZeRO-3 gathers are collective); only ``is_main_process`` writes.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..mm_utils import save_tokenizer
from .param_gather import (
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
)

logger = logging.getLogger(__name__)

VISION_TOWER_PREFIX = "model.vision_tower."
#: the tower model inside CLIPVisionTower, and the CLIPModel level released checkpoints name after it
_TOWER_MODEL = "vision_tower.vision_tower."
_CLIP_VISION_LEVEL = "vision_model."


def release_tower_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename vision tower keys to the released layout: ``[prefix]vision_tower.vision_tower.X`` ->
    ``[prefix]vision_tower.vision_tower.vision_model.X`` (keys already in it, and other keys, unchanged)."""
    out = {}
    for key, value in state.items():
        head, found, tail = key.partition(_TOWER_MODEL)
        if found and not tail.startswith(_CLIP_VISION_LEVEL):
            key = f"{head}{_TOWER_MODEL}{_CLIP_VISION_LEVEL}{tail}"
        out[key] = value
    return out


def module_tower_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``release_tower_keys``: ``[prefix]vision_tower.vision_tower.vision_model.X`` ->
    ``[prefix]vision_tower.vision_tower.X``, the names of transformers 5's ``CLIPVisionModel`` inside the model."""
    out = {}
    for key, value in state.items():
        head, found, tail = key.partition(_TOWER_MODEL)
        if found and tail.startswith(_CLIP_VISION_LEVEL):
            key = f"{head}{_TOWER_MODEL}{tail[len(_CLIP_VISION_LEVEL):]}"
        out[key] = value
    return out


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path.tmp``, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_config(config: Any, output_dir: str | os.PathLike) -> None:
    """``config.save_pretrained`` into a temporary folder, then ``config.json`` renamed into ``output_dir``.

    A ``quantization_config`` (a ``--bits 4/8`` run) is left out: these configs go with adapter or projector
    weights that are applied to a full-precision base model, which the loader would otherwise quantise.
    """
    if getattr(config, "quantization_config", None) is not None:
        config = copy.deepcopy(config)
        del config.quantization_config
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = output_dir / ".config.tmp"
    tmp_dir.mkdir(exist_ok=True)
    try:
        config.save_pretrained(tmp_dir)
        os.replace(tmp_dir / "config.json", output_dir / "config.json")
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()


def projector_keys(use_im_start_end: bool = False) -> list[str]:
    """Names of what a projector-only run trains: the projector (and the embeddings when it adds tokens)."""
    keys = ["mm_projector", "vision_resampler", "image_newline"]
    if use_im_start_end:
        keys += ["embed_tokens", "embed_in"]
    return keys


def upstream_projector_copy(checkpoint: str | os.PathLike) -> Path | None:
    """Where upstream wrote the projector of a ``<run>/checkpoint-N`` folder: ``<run>/mm_projector/checkpoint-N.bin``
    (``save_projector(copy_to=...)``); None for a folder not named ``checkpoint-N``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.name.startswith("checkpoint-"):
        return None
    return checkpoint.parent / "mm_projector" / f"{checkpoint.name}.bin"


def save_projector(model: Any, output_dir: str | os.PathLike, *, use_im_start_end: bool = False,
                   is_main_process: bool = True, copy_to: str | os.PathLike | None = None) -> None:
    """Write ``mm_projector.bin`` (and ``config.json``) for a ``--tune_mm_mlp_adapter`` run.

    Args:
        copy_to: a second file to write the same weights to: for ``checkpoint-N``, the trainer passes
            ``upstream_projector_copy`` of it (upstream's layout).
    """
    state = get_mm_adapter_state_maybe_zero_3(model.named_parameters(), projector_keys(use_im_start_end))
    if not is_main_process:
        return
    output_dir = Path(output_dir)
    atomic_torch_save(state, output_dir / "mm_projector.bin")
    if copy_to is not None:
        atomic_torch_save(state, copy_to)
    save_config(model.config, output_dir)
    logger.info("saved %d projector tensors to %s", len(state), output_dir / "mm_projector.bin")


def save_lora_checkpoint(model: Any, output_dir: str | os.PathLike, *, lora_bias: str = "none",
                         is_main_process: bool = True) -> None:
    """Write the LoRA adapter, ``non_lora_trainables.bin`` and ``config.json`` of a PEFT-wrapped LLaVA model."""
    lora_state = get_peft_state_maybe_zero_3(model.named_parameters(), lora_bias)
    non_lora_state = non_lora_state_to_save(model)
    if not is_main_process:
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, state_dict=lora_state)
    logger.info("saved the LoRA adapter (%d tensors) to %s", len(lora_state), output_dir)
    _write_non_lora(non_lora_state, model.config, Path(output_dir))


def save_non_lora_trainables(model: Any, output_dir: str | os.PathLike, *, is_main_process: bool = True) -> None:
    """Write ``non_lora_trainables.bin`` and then ``config.json`` beside a LoRA adapter (also in checkpoint-N
    folders, which upstream left without them, so that they load like the final output)."""
    non_lora_state = non_lora_state_to_save(model)
    if is_main_process:
        _write_non_lora(non_lora_state, model.config, Path(output_dir))


def non_lora_state_to_save(model: Any) -> dict[str, torch.Tensor]:
    """Every trained non-LoRA parameter, plus LLaVA-1.6's ``image_newline`` even when it stays frozen (LoRA runs),
    so the run's folder holds every multimodal weight its layout needs. Call on every rank (ZeRO-3 gathers)."""
    state = get_peft_state_non_lora_maybe_zero_3(model.named_parameters())
    state.update(get_mm_adapter_state_maybe_zero_3(
        ((n, p) for n, p in model.named_parameters() if n.endswith("image_newline") and n not in state),
        ["image_newline"]))
    return state


def _write_non_lora(state: dict[str, torch.Tensor], config: Any, output_dir: Path) -> None:
    state = release_tower_keys(state)
    atomic_torch_save(state, output_dir / "non_lora_trainables.bin")
    save_config(config, output_dir)  # last: a folder without config.json is not a finished checkpoint
    logger.info("saved %d non-LoRA trained tensors and config.json to %s", len(state), output_dir)


def full_state_for_save(model: Any, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full run's ``state_dict`` as it is saved: the CLIP weights left out when the tower is the
    ``mm_vision_tower`` folder's (frozen, and the config does not say ``unfreeze_mm_vision_tower``), else kept
    under the released names (``release_tower_keys``)."""
    tower_trained = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(VISION_TOWER_PREFIX))
    if tower_trained or getattr(model.config, "unfreeze_mm_vision_tower", False):
        return release_tower_keys(state_dict)
    return {k: v for k, v in state_dict.items() if not k.startswith(VISION_TOWER_PREFIX)}



def save_tokenizer_files(tokenizer: Any, output_dir: str | os.PathLike) -> None:
    """Save the tokenizer so that it reloads with the ids it trained with (``tokenizer.model`` kept, see mm_utils)."""
    save_tokenizer(tokenizer, output_dir)
