"""Files on disk -> ``(tokenizer, model, image_processor, context_len)``.

What a folder holds is read from its files (``adapter_config.json``: LoRA; ``mm_projector.bin``: projector
only; ``mm_vision_tower`` in config.json: LLaVA) and upstream's model-name rules still apply, so scripts
written for upstream pick the same path:

* "llava" + "lora" in the name (or adapter files) with ``model_base``: base weights, ``non_lora_trainables``,
  then the PEFT adapter, merged.
* "llava" with ``model_base`` and no LoRA: base weights + ``mm_projector.bin``.
* "llava" alone: a full checkpoint.
* no "llava": a plain language model (optionally LoRA on ``model_base``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from .._tokenization import load_tokenizer
from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from .._image_processing import parse_grid_pinpoints
from .anyres_layout import validate_merge_type
from .checkpoint_io import (
    VISION_TOWER_PREFIX,
    check_safetensors_files,
    checkpoint_weight_files,
    load_into,
    load_vision_tower_weights,
    read_non_lora_trainables,
    read_prefixed_weights,
    read_projector_weights,
    vision_tower_state,
)
from .configuration_llava import LlavaConfig, LlavaMistralConfig
from .language_model.llava_llama import LlavaLlamaForCausalLM
from .language_model.llava_mistral import LlavaMistralForCausalLM
from .token_reduction import resolve_token_reduction

logger = logging.getLogger(__name__)

#: what ``device`` may be: cuda, cuda:N, cpu, mps (``--device`` on every entry point too)
DEVICE_PATTERN = re.compile(r"cuda(:\d+)?|cpu|mps")
#: the files a Llama (sentencepiece) tokenizer's vocabulary comes from: a local folder needs one of them
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model")
#: vocabularies of other tokenizer kinds (GPT-2 style BPE, WordPiece, tiktoken): such a folder is not checked
_OTHER_VOCAB_PATTERNS = ("vocab.*", "merges.txt", "*.model", "*.tiktoken")

#: from_pretrained arguments that also say where the tokenizer comes from
HUB_KWARGS = ("cache_dir", "revision", "local_files_only", "token", "subfolder")

#: config.json model_type -> (config class, model class). Released LLaVA-1.5 checkpoints say "llava".
LLAVA_MODEL_TYPES = {
    "llava": (LlavaConfig, LlavaLlamaForCausalLM),
    "llava_llama": (LlavaConfig, LlavaLlamaForCausalLM),
    "llama": (LlavaConfig, LlavaLlamaForCausalLM),
    "llava_mistral": (LlavaMistralConfig, LlavaMistralForCausalLM),
    "mistral": (LlavaMistralConfig, LlavaMistralForCausalLM),
}


@dataclass(frozen=True)
class DevicePlan:
    """Where and in which dtype the model goes."""

    device: str
    dtype: torch.dtype
    device_map: dict | str


def plan_device(device: str, device_map, torch_dtype=None) -> DevicePlan:
    """Resolve ``device`` ("cuda" | "cpu" | "mps", or "cuda:N") and the dtype that suits it.

    fp16 on CUDA/MPS, fp32 on CPU (CPU kernels for fp16 matmuls are missing or slow), unless ``torch_dtype``
    says otherwise. Asking for CUDA on a machine without it falls back to CPU with a warning.

    Raises:
        ValueError: a ``device`` that is none of those.
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device {device!r} is not one of cuda, cuda:N, cpu, mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: loading on the CPU in float32 instead")
        device = "cpu"
    if device == "mps" and not torch.backends.mps.is_available():
        logger.warning("MPS is not available: loading on the CPU in float32 instead")
        device = "cpu"
    if torch_dtype in (None, "auto"):
        dtype = torch.float32 if device == "cpu" else torch.float16
    else:
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        if device == "cpu" and dtype == torch.float16:
            logger.warning("float16 is not supported for CPU inference: using float32")
            dtype = torch.float32
    if device.startswith("cuda") and device_map == "auto" and device != "cuda":
        device_map = {"": device}
    if not device.startswith("cuda"):
        device_map = {"": device}
    return DevicePlan(device, dtype, device_map)


def choose_attn_implementation(use_flash_attn: bool, attn_implementation: str | None, device: str) -> str:
    """"flash_attention_2" when asked for and usable, else "sdpa" (with a message saying why)."""
    wanted = attn_implementation or ("flash_attention_2" if use_flash_attn else "sdpa")
    if wanted != "flash_attention_2":
        return wanted
    if not device.startswith("cuda"):
        logger.warning("flash-attn needs a CUDA device (running on %s): using sdpa attention", device)
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        logger.warning("flash-attn is not installed (pip install 'llava[flash]' on a CUDA machine): using sdpa")
        return "sdpa"
    return wanted


def config_file(path: str | os.PathLike) -> Path:
    """``path/config.json``, or ``path`` itself when it is a file (a config .json given directly)."""
    return Path(path) if Path(path).is_file() else Path(path) / "config.json"


def read_config_json(path: str | os.PathLike) -> dict:
    """Read ``path/config.json`` (or the .json file ``path``) with errors that name the file."""
    file = config_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: {path} is not a model checkpoint folder")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object (the model's settings), got a {type(data).__name__}")
    return data


def load_llava_config(path: str | os.PathLike, *, require_vision_tower: bool = True):
    """Build the LLaVA config class matching ``path/config.json`` (model_type "llava" -> ``LlavaConfig``);
    ``path`` may also be the .json file itself.

    Raises:
        ValueError: unknown model_type, no ``mm_vision_tower``, or a local vision tower path that does not exist.
    """
    data = read_config_json(path)
    model_type = data.get("model_type", "llava")
    if "mistral" in " ".join(data.get("architectures") or []).lower():
        model_type = "llava_mistral"
    if model_type not in LLAVA_MODEL_TYPES:
        raise ValueError(
            f"{config_file(path)}: model_type {model_type!r} is not a LLaVA language model "
            f"(expected one of {', '.join(sorted(LLAVA_MODEL_TYPES))})"
        )
    config_class, _ = LLAVA_MODEL_TYPES[model_type]
    data["model_type"] = config_class.model_type
    if "mm_vision_tower" not in data and data.get("vision_tower"):
        data["mm_vision_tower"] = data["vision_tower"]
    if require_vision_tower:
        check_vision_tower(data.get("mm_vision_tower"), config_file(path))
    config = config_class.from_dict(data)
    validate_multimodal_config(config, str(config_file(path)))
    config._name_or_path = str(path)
    return config


def validate_multimodal_config(config, where: str) -> None:
    """Check ``mm_patch_merge_type`` and, for anyres models, ``image_grid_pinpoints``; errors name ``where``
    (the config.json file, or "overwrite_config") with the key and its value."""
    validate_merge_type(getattr(config, "mm_patch_merge_type", None), f"{where}: key mm_patch_merge_type")
    aspect = getattr(config, "image_aspect_ratio", None) or ""
    if aspect.startswith("anyres"):
        try:
            parse_grid_pinpoints(getattr(config, "image_grid_pinpoints", None))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: key image_grid_pinpoints (needed by image_aspect_ratio {aspect!r}): {err}"
                             ) from None


def check_vision_tower(tower: str | None, where: Path) -> None:
    """Fail early, naming the key and path, when the vision tower cannot be found."""
    if not tower:
        raise ValueError(f"{where}: key mm_vision_tower is missing, so this is not a LLaVA checkpoint")
    looks_local = os.path.isabs(tower) or tower.startswith((".", "~")) or tower.count("/") != 1
    if looks_local and not os.path.exists(os.path.expanduser(tower)):
        raise FileNotFoundError(f"{where}: mm_vision_tower={tower!r} does not exist")


def _model_kwargs(plan: DevicePlan, attn: str, load_8bit: bool, load_4bit: bool) -> dict:
    kwargs: dict = {"device_map": plan.device_map, "dtype": plan.dtype, "attn_implementation": attn}
    if load_8bit and load_4bit:
        raise ValueError("load_8bit and load_4bit exclude each other: pass one of them")
    if load_8bit or load_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("load_8bit/load_4bit need bitsandbytes: pip install 'llava[train]'")
        logger.info("quantising the language model to %s with bitsandbytes (projector and lm_head kept in %s)",
                    "8 bits" if load_8bit else "4 bits (nf4)", str(plan.dtype).removeprefix("torch."))
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_8bit,
            load_in_4bit=load_4bit,
            bnb_4bit_compute_dtype=plan.dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            # transformers 5 matches these from the start of the module name (or as a suffix), so the projector
            # is "model.mm_projector" ("mm_projector" alone would match nothing and the projector got quantised)
            llm_int8_skip_modules=["model.mm_projector", "lm_head"],
        )
    return kwargs


def _from_pretrained(model_class, path, **kwargs):
    """``from_pretrained`` with load errors turned into messages naming the checkpoint (a truncated or corrupt
    safetensors file: naming the file, checked first)."""
    from safetensors import SafetensorError

    check_safetensors_files(Path(path, kwargs.get("subfolder") or ""))
    try:
        return model_class.from_pretrained(path, **kwargs)
    except OSError as err:
        raise OSError(f"could not load model weights from {path}: {err}") from err
    except SafetensorError as err:
        raise ValueError(f"could not load model weights from {path}: {err}") from err


def check_tokenizer_files(folder: str | os.PathLike) -> None:
    """A local checkpoint folder must hold its tokenizer's vocabulary (a hub id is left to ``from_pretrained``).

    Without ``tokenizer.model`` and ``tokenizer.json``, transformers builds a Llama tokenizer with no vocabulary
    but its three special tokens (or asks to install sentencepiece), and every prompt becomes unknown tokens.

    Raises:
        FileNotFoundError: naming the folder and the missing file.
    """
    path = Path(folder)
    if not path.is_dir() or any((path / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        return
    if any(next(path.glob(pattern), None) is not None for pattern in _OTHER_VOCAB_PATTERNS):
        return  # a BPE / WordPiece / tiktoken tokenizer: its own files
    raise FileNotFoundError(
        f"{path} has no tokenizer.model (nor tokenizer.json): the tokenizer's vocabulary is missing; copy "
        "tokenizer.model from the model this checkpoint was trained from"
    )


def _load_tokenizer(folder: str, hub_kwargs: dict):
    """:func:`load_tokenizer` on a folder checked to hold a vocabulary."""
    check_tokenizer_files(Path(folder, hub_kwargs.get("subfolder") or ""))
    return load_tokenizer(folder, **hub_kwargs)


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map="auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    **kwargs,
):
    """Load a LLaVA (or plain LM) checkpoint the way upstream LLaVA does.

    Args:
        model_path: checkpoint folder (or hub name; this project cannot download, use a local copy).
        model_base: base LM for LoRA or projector-only checkpoints, else None.
        model_name: usually ``get_model_name_from_path(model_path)``; upstream's path choice reads it.
        load_8bit / load_4bit: quantise the LM with bitsandbytes.
        device_map / device: as upstream; CUDA falls back to CPU (fp32) when missing.
        use_flash_attn: flash-attention 2 when installed on CUDA, else sdpa with a message.
        **kwargs: ``multimodal`` (force the LLaVA path), ``attn_implementation``, ``torch_dtype``,
            ``customized_config`` (a config object to use, or a folder / config .json path),
            ``overwrite_config`` (dict of config updates), ``use_flash_attention_2`` (as ``use_flash_attn``),
            ``token_reduction`` / ``token_budget`` (override the checkpoint's visual-token reduction); any other
            keyword (``cache_dir``, ``revision``, ``local_files_only``, ...) goes to ``from_pretrained`` as upstream
            passes it (the hub ones to the tokenizer too); ``trust_remote_code=True`` is refused.
    Returns:
        ``(tokenizer, model, image_processor, context_len)``; ``image_processor`` is None for a plain LM.
    """
    multimodal = bool(kwargs.pop("multimodal", False))
    customized_config = kwargs.pop("customized_config", None)
    use_flash_attn = use_flash_attn or bool(kwargs.pop("use_flash_attention_2", False))  # lmms-eval's name
    overwrite_config = kwargs.pop("overwrite_config", None) or {}
    token_reduction = kwargs.pop("token_reduction", None)
    token_budget = kwargs.pop("token_budget", None)
    plan = plan_device(device, device_map, kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None))
    attn = choose_attn_implementation(use_flash_attn, kwargs.pop("attn_implementation", None), plan.device)
    if kwargs.get("trust_remote_code"):
        raise ValueError("load_pretrained_model: trust_remote_code=True is refused (no remote code runs here); "
                         "LLaVA's model classes are part of this package")
    kwargs.pop("trust_remote_code", None)
    model_kwargs = {**_model_kwargs(plan, attn, load_8bit, load_4bit), **kwargs}  # the rest go to from_pretrained
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    _check_local_path(model_path, "model_path")
    if model_base is not None:
        _check_local_path(model_base, "model_base")

    name = (model_name or "").lower()
    is_lora = "lora" in name or os.path.isfile(os.path.join(model_path, "adapter_config.json"))
    is_llava = multimodal or "llava" in name
    if not is_llava and os.path.isfile(os.path.join(model_path, "config.json")):
        is_llava = "mm_vision_tower" in read_config_json(model_path)

    tower_weights = None
    if is_llava:
        tokenizer, model, tower_weights = _load_llava(model_path, model_base, is_lora, customized_config,
                                                      overwrite_config, model_kwargs, hub_kwargs)
    else:
        tokenizer, model = _load_language_model(model_path, model_base, model_kwargs, hub_kwargs)

    image_processor = None
    if is_llava:
        image_processor = _prepare_vision(model, tokenizer, plan, tower_weights)
        reduction = resolve_token_reduction(
            flag_mode=token_reduction,
            flag_budget=token_budget,
            config_mode=model.config.mm_token_reduction,
            config_budget=model.config.mm_token_budget,
            # the folder's own name (and model_name), not its parents: "/work/prumerge_plus_runs/llava-v1.5-7b"
            # is a plain checkpoint that happens to live under such a folder
            checkpoint_name=f"{Path(model_path).name} {model_name}",
        )
        model.config.mm_token_reduction = reduction.mode
        model.config.mm_token_budget = reduction.budget
        model.get_vision_tower().set_token_reduction(reduction)
        logger.info("%s: %s", model_name or model_path, reduction.describe())

    context_len = getattr(model.config, "max_sequence_length", None) or 2048
    model.eval()
    return tokenizer, model, image_processor, context_len


def _check_local_path(path: str, what: str) -> None:
    if os.path.exists(path):
        return
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    # "org/name": a hub id. from_pretrained will try the hub (and say so if offline).


@dataclass
class _TowerWeights:
    """A finetuned vision tower's weights found in a checkpoint (LLaVA-1.6), and where they came from."""

    state: dict
    source: str


def _load_llava(model_path, model_base, is_lora, customized_config, overwrite_config, model_kwargs, hub_kwargs):
    """Build the LLaVA model from its files; return ``(tokenizer, model, tower weights or None)``.

    The vision tower itself is loaded afterwards (``_prepare_vision``); its finetuned weights are read here,
    with the LoRA / projector file that may carry them.
    """
    if is_lora and model_base is None:
        raise ValueError(
            f"{model_path} is a LoRA checkpoint (adapter weights only): pass the base LM with --model-base "
            "(e.g. lmsys/vicuna-7b-v1.5)"
        )
    if customized_config is None:
        config = load_llava_config(model_path)
    elif isinstance(customized_config, (str, os.PathLike)):  # lmms-eval model_args give a path: folder or .json
        config = load_llava_config(customized_config)
    else:
        config = customized_config
    for key, value in overwrite_config.items():
        setattr(config, key, value)
    if overwrite_config:
        validate_multimodal_config(config, "overwrite_config")
    if overwrite_config.get("mm_vision_tower"):
        check_vision_tower(config.mm_vision_tower, Path(model_path) / "config.json")
    model_class = LLAVA_MODEL_TYPES[config.model_type][1]

    weights_folder = model_path if model_base is None else model_base
    tokenizer = _load_tokenizer(weights_folder, hub_kwargs)
    if model_base is not None:
        logger.info("loading the base LM from %s", model_base)
    model, info = _from_pretrained(model_class, weights_folder, config=config, output_loading_info=True,
                                   **model_kwargs)
    missing = set(info.get("missing_keys", ()))
    extra_state, extra_file = _read_extra_weights(model, model_path, model_base, is_lora)
    own_state = {k: v for k, v in extra_state.items() if not k.startswith(VISION_TOWER_PREFIX)}
    if extra_file is not None:
        load_into(model, own_state, extra_file)
    missing -= set(own_state)
    if getattr(model.get_model(), "image_newline", None) is not None and "model.image_newline" in missing:
        where = weights_folder if extra_file is None else f"{weights_folder} nor {extra_file}"
        raise ValueError(
            f"mm_patch_merge_type {config.mm_patch_merge_type!r} needs the weight model.image_newline, and neither "
            f"{where} holds it: is this a LLaVA-1.6 checkpoint?"
        )
    tower = _tower_weights(config, weights_folder, extra_state, extra_file,
                           projector_only=model_base is not None and not is_lora)
    if is_lora:
        model = _merge_lora(model, model_path)
    return tokenizer, model, tower


def _read_extra_weights(model, model_path, model_base, is_lora) -> tuple[dict, Path | None]:
    """The weights a LoRA run (``non_lora_trainables``) or a pretraining run (``mm_projector``) saved beside it."""
    if model_base is None:
        return {}, None
    if not is_lora:
        state, file = read_projector_weights(model_path)
        return {k: v.to(model.dtype) for k, v in state.items()}, file
    if model.lm_head.weight.shape[0] != model.config.vocab_size:  # the LoRA run added tokens
        model.resize_token_embeddings(model.config.vocab_size)
    return read_non_lora_trainables(model_path)


def _tower_weights(config, weights_folder, extra_state, extra_file, *, projector_only: bool) -> _TowerWeights | None:
    """The finetuned tower weights of a checkpoint whose config says ``unfreeze_mm_vision_tower: true``.

    Read from the model's weight files, then the LoRA run's ``non_lora_trainables`` / ``mm_projector`` file on top.
    A full or LoRA checkpoint without any is an error; a projector checkpoint (pretraining never trains the tower)
    runs the ``mm_vision_tower`` folder's weights.
    """
    if not config.unfreeze_mm_vision_tower:
        return None
    state = vision_tower_state(read_prefixed_weights(checkpoint_weight_files(weights_folder), VISION_TOWER_PREFIX))
    sources = [str(weights_folder)] if state else []
    from_extra = vision_tower_state(extra_state)
    if from_extra:
        state.update(from_extra)
        sources.append(str(extra_file))
    if state:
        return _TowerWeights(state, " + ".join(sources))
    if projector_only:
        logger.info("unfreeze_mm_vision_tower: no tower weights beside the projector; running %s's weights",
                    config.mm_vision_tower)
        return None
    where = str(weights_folder) if extra_file is None else f"{weights_folder} nor {extra_file}"
    raise ValueError(
        f"config.json says unfreeze_mm_vision_tower: true (a finetuned vision tower), but neither {where} holds its "
        f"weights ({VISION_TOWER_PREFIX}vision_model.*)"
    )


def _merge_lora(model, model_path: str):
    try:
        from peft import PeftModel
    except ImportError as err:
        raise ImportError("LoRA checkpoints need peft: pip install 'llava[train]'") from err
    logger.info("loading the LoRA adapter from %s and merging it", model_path)
    model = PeftModel.from_pretrained(model, model_path)
    return model.merge_and_unload()


def _load_language_model(model_path, model_base, model_kwargs, hub_kwargs):
    """A plain causal LM (no vision), optionally a LoRA on ``model_base``."""
    if model_base is None:
        return _load_tokenizer(model_path, hub_kwargs), _from_pretrained(AutoModelForCausalLM, model_path,
                                                                          **model_kwargs)
    tokenizer = _load_tokenizer(model_base, hub_kwargs)
    model = _from_pretrained(AutoModelForCausalLM, model_base, **model_kwargs)
    return tokenizer, _merge_lora(model, model_path)


def _prepare_vision(model, tokenizer, plan: DevicePlan, tower_weights: _TowerWeights | None = None):
    """Add LLaVA's optional image tokens, load the CLIP tower next to the LM; return its image processor."""
    config = model.config
    added = 0
    if config.mm_use_im_patch_token:
        added += tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if config.mm_use_im_start_end:
        added += tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    if added and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    tower = model.get_vision_tower()
    if tower is None:
        raise ValueError(f"{config._name_or_path}: the config names no vision tower (mm_vision_tower)")
    check_safetensors_files(os.path.expanduser(tower.vision_tower_name))
    tower.load_model(device_map=plan.device_map if plan.device.startswith("cuda") else None)
    if tower_weights is not None:  # LLaVA-1.6: the checkpoint's finetuned CLIP, not mm_vision_tower's
        load_vision_tower_weights(tower.vision_tower, tower_weights.state, tower_weights.source)
    tower.to(device=plan.device, dtype=plan.dtype)
    return tower.image_processor
