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


def read_non_lora_trainables(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Path]:
    """``non_lora_trainables.{safetensors,bin}`` of a LoRA checkpoint folder, keys cleaned to model keys; and the file.

    Raises:
        FileNotFoundError: the folder has neither file.
    """
    file = find_weight_file(folder, "non_lora_trainables")
    if file is None:
        raise FileNotFoundError(
            f"{folder} has no non_lora_trainables.bin (nor .safetensors): the projector weights of a LoRA run "
            "are saved there"
        )
    return clean_non_lora_keys(read_weight_file(file)), file


def read_projector_weights(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Path]:
    """``mm_projector.{safetensors,bin}`` (keys ``model.mm_projector.*``, maybe ``model.image_newline``); and the file.

    Raises:
        FileNotFoundError: the folder has neither file.
    """
    file = find_weight_file(folder, "mm_projector")
    if file is None:
        raise FileNotFoundError(f"{folder} has no mm_projector.bin (nor .safetensors), and no adapter_config.json")
    return read_weight_file(file), file


#: where a finetuned vision tower's weights sit in a LLaVA checkpoint (LLaVA-1.6: unfreeze_mm_vision_tower), and
#: the CLIPModel-layout infix upstream's transformers 4.x wrote after it (transformers 5's CLIPVisionModel has none)
VISION_TOWER_PREFIX = "model.vision_tower.vision_tower."
_CLIP_VISION_INFIX = "vision_model."
#: buffers older transformers saved with the weights; not parameters, so they are skipped when present
_SKIPPED_TOWER_KEYS = frozenset({"embeddings.position_ids"})


def checkpoint_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The model weight files of a checkpoint folder: safetensors shards (or the single file), else .bin ones."""
    folder = Path(folder)
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    return []


def check_safetensors_files(folder: str | os.PathLike) -> None:
    """Read the header of each ``*.safetensors`` weight file of a local checkpoint folder (a hub id is skipped).

    A truncated or corrupt file fails deep inside ``from_pretrained`` with a message that names no file; this
    check names it, before anything is loaded.

    Raises:
        ValueError: naming the file and what safetensors said.
    """
    from safetensors import safe_open

    if not Path(folder).is_dir():
        return
    for file in Path(folder).glob("*.safetensors"):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError (any header problem) or OSError: say which file
            raise ValueError(f"{file} is not a readable safetensors file ({err}): it is truncated or corrupt, "
                             "copy or download it again") from None


def read_prefixed_weights(files: list[Path], prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose key starts with ``prefix`` in ``files`` (safetensors read lazily, key by key)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    for key in handle.keys():
                        if key.startswith(prefix):
                            found[key] = handle.get_tensor(key)
            except Exception as err:
                raise ValueError(f"could not read weights from {file}: {err}") from err
        else:
            found.update({k: v for k, v in read_weight_file(file).items() if k.startswith(prefix)})
    return found


def vision_tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys ``model.vision_tower.vision_tower[.vision_model].X`` -> the tower model's keys ``X``."""
    out = {}
    for key, value in state.items():
        if not key.startswith(VISION_TOWER_PREFIX):
            continue
        name = key[len(VISION_TOWER_PREFIX):].removeprefix(_CLIP_VISION_INFIX)
        if name not in _SKIPPED_TOWER_KEYS:
            out[name] = value
    return out


def load_vision_tower_weights(tower_model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a finetuned CLIP tower's weights (keys as ``vision_tower_state`` gives them) into ``tower_model``.

    Every parameter of the tower must be given, with its shape, and every given weight must be a parameter:
    a missing, extra or mis-shaped weight is a ValueError naming it and ``source``.
    """
    own = {k: v for k, v in tower_model.state_dict().items() if k not in _SKIPPED_TOWER_KEYS}
    full = {VISION_TOWER_PREFIX + _CLIP_VISION_INFIX + k for k in own}
    missing = sorted(VISION_TOWER_PREFIX + _CLIP_VISION_INFIX + k for k in own if k not in state)
    extra = sorted(VISION_TOWER_PREFIX + _CLIP_VISION_INFIX + k for k in state if k not in own)
    if missing:
        raise ValueError(f"{source}: the finetuned vision tower (unfreeze_mm_vision_tower) lacks {len(missing)} of "
                         f"its {len(full)} weights, e.g. {', '.join(missing[:3])}")
    if extra:
        raise ValueError(f"{source}: {len(extra)} vision tower weights match no parameter of the CLIP tower "
                         f"{type(tower_model).__name__}, e.g. {', '.join(extra[:3])}")
    wrong = [f"{VISION_TOWER_PREFIX}{_CLIP_VISION_INFIX}{k}: file {tuple(v.shape)} vs tower {tuple(own[k].shape)}"
             for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{source}: shape mismatch for {len(wrong)} vision tower weights, e.g. {'; '.join(wrong[:3])}")
    tower_model.load_state_dict(state, strict=False)
    logger.info("loaded the finetuned vision tower (%d weights) from %s", len(state), source)
