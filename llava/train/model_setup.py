"""Building the model and tokenizer for a training run, step by step (upstream ``train()``'s model surgery).

Order matters and is upstream's: load the language model (quantised when ``--bits`` 4/8) -> freeze rules ->
input-gradient hook for activation checkpointing -> LoRA on every language-model Linear -> tokenizer -> vision
tower and projector (after LoRA, so LoRA never wraps CLIP or the projector; a LLaVA-1.6 checkpoint's finetuned
tower weights go over the ``mm_vision_tower`` folder's) -> which parts train.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers

from .._image_processing import parse_grid_pinpoints
from .._tokenization import load_tokenizer
from ..model.builder import LLAVA_MODEL_TYPES, load_llava_config, read_config_json
from ..model.checkpoint_io import (
    VISION_TOWER_PREFIX,
    checkpoint_weight_files,
    load_vision_tower_weights,
    read_prefixed_weights,
    vision_tower_state,
)
from ..model.language_model.llava_llama import LlavaLlamaForCausalLM
from ..model.token_reduction import resolve_token_reduction
from ..model.visual_token_count import VisualTokenBound
from .args import DataArguments, ModelArguments, TrainingArguments
from .param_gather import gathered_for_update, register_zero3_external_parameter

logger = logging.getLogger(__name__)

#: modules LoRA never wraps (find_all_linear_names), as upstream
MULTIMODAL_MODULE_KEYWORDS = ("mm_projector", "vision_tower", "vision_resampler")


def compute_dtype(training_args: TrainingArguments) -> torch.dtype:
    """float16 with ``--fp16``, bfloat16 with ``--bf16``, else float32."""
    if training_args.fp16:
        return torch.float16
    if training_args.bf16:
        return torch.bfloat16
    return torch.float32


def load_dtype(training_args: TrainingArguments) -> torch.dtype:
    """dtype the weights are loaded in: bfloat16 with ``--bf16``, else float32 (fp16 runs keep fp32 master weights)."""
    return torch.bfloat16 if training_args.bf16 else torch.float32


def quantization_kwargs(training_args: TrainingArguments) -> dict[str, Any]:
    """``from_pretrained`` kwargs that load the language model in 4 or 8 bits (``--bits``); {} for 16."""
    if training_args.bits not in (4, 8):
        return {}
    from transformers import BitsAndBytesConfig

    return {
        "device_map": {"": training_args.device},
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4,
            load_in_8bit=training_args.bits == 8,
            # transformers 5 matches these from the start of the module name (or as a suffix): the projector is
            # "model.mm_projector.0", so a bare "mm_projector" would not keep it out of quantisation.
            llm_int8_skip_modules=["model.mm_projector", "lm_head"],
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=compute_dtype(training_args),
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        ),
    }


def config_folder(name_or_path: str, cache_dir: str | None = None) -> Path | None:
    """The folder holding ``config.json`` of a local checkpoint or (downloaded or cached) hub checkpoint."""
    if (Path(name_or_path) / "config.json").is_file():
        return Path(name_or_path)
    from transformers.utils import cached_file

    try:
        file = cached_file(name_or_path, "config.json", cache_dir=cache_dir)
    except OSError:
        return None
    return Path(file).parent if file else None


def load_language_model(model_args: ModelArguments, training_args: TrainingArguments,
                        attn_implementation: str | None) -> Any:
    """Load ``--model_name_or_path``: a LLaVA class when ``--vision_tower`` is set, else a plain causal LM.

    The checkpoint's config picks the class (Llama or Mistral based); LLaVA-1.5 checkpoints (model_type
    "llava") load with their projector (and the CLIP tower named in their config, loaded later).
    """
    kwargs: dict[str, Any] = {"cache_dir": training_args.cache_dir, "dtype": load_dtype(training_args),
                              **quantization_kwargs(training_args)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    name = model_args.model_name_or_path
    if model_args.vision_tower is None:
        return transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs)
    folder = config_folder(name, training_args.cache_dir)
    if folder is None:  # no config.json to read: let from_pretrained report it, with the Llama-based class
        return LlavaLlamaForCausalLM.from_pretrained(name, **kwargs)
    config = load_llava_config(folder, require_vision_tower=False)
    model_class = LLAVA_MODEL_TYPES[config.model_type][1]
    return model_class.from_pretrained(name, config=config, **kwargs)


def find_all_linear_names(model: torch.nn.Module) -> list[str]:
    """Suffixes of every ``nn.Linear`` outside the projector / vision tower, minus ``lm_head``: LoRA's targets."""
    names = set()
    for name, module in model.named_modules():
        if any(keyword in name for keyword in MULTIMODAL_MODULE_KEYWORDS):
            continue
        if isinstance(module, torch.nn.Linear):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    return sorted(names)


def apply_lora(model: Any, training_args: TrainingArguments) -> Any:
    """Wrap ``model`` with LoRA adapters (``--lora_r``, ``--lora_alpha``, ...); returns the PEFT model."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("--lora_enable needs peft: pip install 'llava[train]'") from err
    if training_args.lora_weight_path:
        logger.warning("--lora_weight_path is ignored (as upstream): the adapter starts from scratch")
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=find_all_linear_names(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if training_args.bits == 16 and (training_args.bf16 or training_args.fp16):
        model.to(compute_dtype(training_args))
    return get_peft_model(model, config)


def smart_tokenizer_and_embedding_resize(special_tokens_dict: dict[str, Any], tokenizer: Any, model: Any) -> None:
    """Add special tokens and grow the embeddings; new rows start at the mean of the old ones (as upstream).

    Args:
        special_tokens_dict: ``tokenizer.add_special_tokens``'s argument, e.g. ``{"pad_token": "[PAD]"}``
            (upstream's parameter name: callers pass ``special_tokens_dict=``).
        tokenizer: grows by the tokens it did not have yet.
        model: its input and output embeddings go from ``[V, D]`` to ``[len(tokenizer), D]``.
    """
    added = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    if added > 0:
        for matrix in (model.get_input_embeddings().weight.data, model.get_output_embeddings().weight.data):
            matrix[-added:] = matrix[:-added].mean(dim=0, keepdim=True)


def configure_padding(tokenizer: Any, model: Any, version: str | None) -> None:
    """Upstream's pad-token rule: ``v0`` adds ``[PAD]`` when missing; every other version pads with ``<unk>``."""
    if version == "v0":
        if tokenizer.pad_token is None:
            smart_tokenizer_and_embedding_resize(special_tokens_dict={"pad_token": "[PAD]"}, tokenizer=tokenizer,
                                                 model=model)
        return
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.pad_token is None:
        logger.warning("the tokenizer has neither an unk nor a pad token: padding with %s", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token


def resolve_image_settings(config: Any, model_args: ModelArguments, data_args: DataArguments) -> None:
    """Settle ``data_args.image_grid_pinpoints`` before the vision modules are built.

    With ``image_aspect_ratio`` "anyres": ``--image_grid_pinpoints``, else the starting checkpoint's, parsed to a
    list of ``[width, height]`` (as released configs hold it). A LLaVA starting checkpoint trained with another
    ``image_aspect_ratio`` / ``mm_patch_merge_type`` than the run asks for is warned about (LLaVA-1.6's are
    "anyres" / "spatial_unpad"; upstream's defaults are "square" / "flat").

    Raises:
        ValueError: "anyres" without pinpoints anywhere, or pinpoints that are not (width, height) pairs.
    """
    data_args.image_grid_pinpoints = grid_pinpoints_for_run(
        data_args, getattr(config, "image_grid_pinpoints", None), model_args.model_name_or_path)

    if not getattr(config, "mm_vision_tower", None):
        return  # not a LLaVA checkpoint: nothing to compare with
    for flag, key, value in (("--image_aspect_ratio", "image_aspect_ratio", data_args.image_aspect_ratio),
                             ("--mm_patch_merge_type", "mm_patch_merge_type", model_args.mm_patch_merge_type)):
        before = getattr(config, key, None)
        if before is not None and before != value:
            logger.warning("%s was trained with %s %r; this run uses %s %r", model_args.model_name_or_path, key,
                           before, flag, value)


def grid_pinpoints_for_run(data_args: DataArguments, checkpoint_pinpoints: Any,
                           checkpoint: str | None) -> list[list[int]] | None:
    """The run's anyres canvases, ``[[width, height], ...]``: ``--image_grid_pinpoints``, else (with
    ``image_aspect_ratio`` "anyres") the starting checkpoint's ``checkpoint_pinpoints``; None when neither.

    Raises:
        ValueError: "anyres" without pinpoints anywhere, or pinpoints that are not (width, height) pairs.
    """
    aspect = data_args.image_aspect_ratio or ""
    pinpoints = data_args.image_grid_pinpoints
    if aspect.startswith("anyres") and pinpoints is None:
        pinpoints = checkpoint_pinpoints
        if pinpoints is None:
            raise ValueError(f"--image_aspect_ratio {aspect} needs --image_grid_pinpoints (the starting checkpoint "
                             f"{checkpoint} has none), e.g. LLaVA-1.6's "
                             "'[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]'")
    if pinpoints is None:
        return None
    try:
        return [list(pair) for pair in parse_grid_pinpoints(pinpoints)]
    except ValueError as err:
        raise ValueError(f"--image_grid_pinpoints: {err}") from None


def starting_config(name_or_path: str, cache_dir: str | None = None) -> dict[str, Any]:
    """The starting checkpoint's ``config.json`` as a dict ({} when it has none), read before the model loads,
    through ``builder.read_config_json`` (its errors name the file)."""
    folder = config_folder(name_or_path, cache_dir)
    return {} if folder is None else read_config_json(folder)


def visual_token_bound(model_args: ModelArguments, data_args: DataArguments,
                       training_args: TrainingArguments) -> VisualTokenBound | None:
    """How many visual tokens per image the data check counts (``llava.model.visual_token_count.VisualTokenBound``), from the vision
    tower's config and the run's image settings, without loading a model; None for text-only runs."""
    if model_args.vision_tower is None:
        return None
    from transformers import CLIPVisionConfig

    tower = CLIPVisionConfig.from_pretrained(model_args.vision_tower, cache_dir=training_args.cache_dir)
    start = starting_config(model_args.model_name_or_path, training_args.cache_dir)
    reduction = resolve_token_reduction(
        flag_mode=model_args.token_reduction, flag_budget=model_args.token_budget,
        config_mode=start.get("mm_token_reduction"), config_budget=start.get("mm_token_budget"),
        checkpoint_name=model_args.model_name_or_path)
    anyres = (data_args.image_aspect_ratio or "").startswith("anyres")
    pinpoints = None
    if anyres:
        pinpoints = grid_pinpoints_for_run(data_args, start.get("image_grid_pinpoints"),
                                           model_args.model_name_or_path)
    return VisualTokenBound(
        patches_per_side=tower.image_size // tower.patch_size,
        tile_size=tower.image_size,
        reduction=reduction.mode if reduction.enabled else None,
        budget=reduction.budget,
        cls_kept=model_args.mm_vision_select_feature == "cls_patch",
        grid_pinpoints=pinpoints,
        unpad=anyres and "unpad" in (model_args.mm_patch_merge_type or ""),
    )


def load_finetuned_tower(tower: Any, checkpoint: str, cache_dir: str | None = None) -> None:
    """Overlay the finetuned CLIP weights a LLaVA-1.6 checkpoint carries (``model.vision_tower.vision_tower.*``)
    on ``tower``, built from ``mm_vision_tower``. Under ZeRO-3 the tower is gathered for it (call on every rank).

    Raises:
        ValueError: the checkpoint has no tower weights, or they do not fit the tower (missing, extra, mis-shaped).
    """
    folder = config_folder(checkpoint, cache_dir)
    files = checkpoint_weight_files(folder) if folder is not None else []
    state = vision_tower_state(read_prefixed_weights(files, VISION_TOWER_PREFIX))
    if not state:
        raise ValueError(
            f"{checkpoint}: config.json says unfreeze_mm_vision_tower: true (a finetuned vision tower), but its "
            f"weight files ({', '.join(f.name for f in files) or 'none found'}) hold no {VISION_TOWER_PREFIX}* weights"
        )
    with gathered_for_update(list(tower.vision_tower.parameters())):
        load_vision_tower_weights(tower.vision_tower, state, str(folder))


def setup_vision(model: Any, tokenizer: Any, model_args: ModelArguments, data_args: DataArguments,
                 training_args: TrainingArguments) -> Any:
    """Load the vision tower and projector, record the multimodal settings in the config, set what trains.

    The tower is built from ``mm_vision_tower``; when the starting checkpoint's config says
    ``unfreeze_mm_vision_tower: true`` (LLaVA-1.6), the checkpoint's finetuned tower weights go over it. With
    ``--unfreeze_mm_vision_tower`` the tower trains (not LoRA-wrapped: all its weights), at ``--mm_vision_tower_lr``.
    ``image_newline`` (the "unpad" layouts): see ``trains_image_newline``.

    Returns:
        the tower's image processor.
    """
    config = model.config
    finetuned_tower = bool(getattr(config, "unfreeze_mm_vision_tower", False))
    train_tower = model_args.unfreeze_mm_vision_tower
    if train_tower and model_args.tune_mm_mlp_adapter:
        raise ValueError("--unfreeze_mm_vision_tower cannot be combined with --tune_mm_mlp_adapter (a projector-only "
                         "run saves only mm_projector.bin)")
    if training_args.mm_vision_tower_lr is not None and not train_tower:
        logger.warning("--mm_vision_tower_lr has no effect without --unfreeze_mm_vision_tower True")
    resolve_image_settings(config, model_args, data_args)

    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp or None)
    tower = model.get_vision_tower()
    if finetuned_tower:
        load_finetuned_tower(tower, model_args.model_name_or_path, training_args.cache_dir)
    tower.to(dtype=compute_dtype(training_args), device=training_args.device)
    if training_args.should_log:
        logger.info("vision tower %s%s: %s", tower.vision_tower_name,
                    " + the checkpoint's finetuned weights" if finetuned_tower else "",
                    tower.token_reduction.describe())

    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.image_grid_pinpoints = data_args.image_grid_pinpoints
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = tokenizer.model_max_length
    config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    config.mm_projector_lr = training_args.mm_projector_lr
    # true when the saved weights carry a tower of their own: trained here, or finetuned before and kept
    config.unfreeze_mm_vision_tower = finetuned_tower or train_tower
    if train_tower:
        config.mm_vision_tower_lr = training_args.mm_vision_tower_lr

    projector = model.get_model().mm_projector
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
    projector.requires_grad_(not training_args.freeze_mm_mlp_adapter)
    newline = getattr(model.get_model(), "image_newline", None)
    if newline is not None:
        # read in the LM's forward, outside the module that owns it: ZeRO-3 must gather it there
        register_zero3_external_parameter(_unwrapped(model), newline)
        newline.requires_grad_(trains_image_newline(model_args, training_args))
        unpad = "unpad" in (config.mm_patch_merge_type or "")
        if newline.requires_grad and unpad and training_args.deepspeed and tower.token_reduction.enabled:
            logger.warning(
                "image_newline trains in this DeepSpeed run with %s on: a step where PruMerge keeps no grid row of "
                "any image on one rank leaves it without a gradient there, and ZeRO then waits for it (a hang); "
                "--token-reduction none avoids it", tower.token_reduction.mode)
    if train_tower:
        tower.vision_tower.requires_grad_(True)
    if training_args.bits in (4, 8):
        projector.to(dtype=compute_dtype(training_args), device=training_args.device)
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    return tower.image_processor


def trains_image_newline(model_args: ModelArguments, training_args: TrainingArguments) -> bool:
    """Whether LLaVA-1.6's ``image_newline`` trains: as upstream, in full finetuning (every weight) and in projector
    pretraining (it is new, like the projector), not in LoRA runs (PEFT freezes it and upstream unfreezes only the
    projector; ZeRO-3 LoRA runs with PruMerge need that too, see ``setup_vision``'s warning) nor with
    ``--freeze_mm_mlp_adapter``."""
    return not (training_args.lora_enable or training_args.freeze_mm_mlp_adapter)


def _unwrapped(model: Any) -> Any:
    """The LLaVA model inside a PEFT wrapper (or ``model`` itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def cast_for_kbit(model: Any, training_args: TrainingArguments) -> None:
    """After 4/8-bit loading: LoRA layers in bf16 (with --bf16), norms in fp32, bf16 lm_head/embeddings."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
            if training_args.bf16 and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (ZeRO-3 partitioned parameters counted at full size)."""
    def numel(p: torch.nn.Parameter) -> int:
        return p.ds_numel if hasattr(p, "ds_numel") else p.numel()

    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


def ensure_deepspeed_comm(training_args: TrainingArguments) -> None:
    """Initialise ``deepspeed.comm`` on the existing process group before ZeRO-3 builds the model.

    On GPUs, accelerate does this when the training arguments are set up. With ``--use_cpu True`` (DeepSpeed's
    CPU path) it does not, and ZeRO-3's ``zero.Init`` would then see a world of one process.
    """
    if not training_args.deepspeed or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    import deepspeed

    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def load_run_tokenizer(model_args: ModelArguments, training_args: TrainingArguments) -> Any:
    """The starting checkpoint's tokenizer as the run uses it (``--model_max_length``, right padding), before the
    model: the data check tokenizes with it. ``build_model_and_tokenizer`` adds the run's special tokens."""
    return load_tokenizer(model_args.model_name_or_path, cache_dir=training_args.cache_dir,
                          model_max_length=training_args.model_max_length, padding_side="right")


def build_model_and_tokenizer(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    attn_implementation: str | None,
    tokenizer: Any = None,
) -> tuple[Any, Any, Any]:
    """Everything before the Trainer: ``(model, tokenizer, image_processor or None)``.

    Args:
        tokenizer: the run's tokenizer when already loaded (``load_run_tokenizer``); loaded here when None.
    """
    ensure_deepspeed_comm(training_args)
    model = load_language_model(model_args, training_args, attn_implementation)
    model.config.use_cache = False
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(training_args.activation_checkpointing)
        )
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = apply_lora(model, training_args)

    if tokenizer is None:
        tokenizer = load_run_tokenizer(model_args, training_args)
    configure_padding(tokenizer, model, model_args.version)

    image_processor = None
    if model_args.vision_tower is not None:
        image_processor = setup_vision(model, tokenizer, model_args, data_args, training_args)
    if training_args.bits in (4, 8):
        cast_for_kbit(model, training_args)
    if training_args.should_log:
        trainable, total = count_parameters(model)
        logger.info("parameters: %d trainable of %d (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    return model, tokenizer, image_processor

