"""Command-line arguments of ``llava/train/train.py``: upstream LLaVA's three dataclasses, same names and defaults.

``transformers.HfArgumentParser`` turns every field into ``--field_name`` and also accepts ``--field-name``, so
``--token_reduction prumerge`` and ``--token-reduction prumerge`` both work. Upstream's shell scripts run unchanged:
``--evaluation_strategy`` and ``--warmup_ratio`` (removed from transformers 5) are still accepted here, as aliases
of ``--eval_strategy`` and a fractional ``--warmup_steps``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import transformers

from ..model.anyres_layout import validate_merge_type
from ..model.token_reduction import TOKEN_REDUCTION_MODES, validate_budget, validate_mode

LORA_BIAS_CHOICES = ("none", "all", "lora_only")
QUANT_TYPES = ("nf4", "fp4")
BITS_CHOICES = (4, 8, 16)
BAD_SAMPLE_POLICIES = ("error", "skip")


def _arg(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 - "help" is argparse's name
    """A dataclass field whose ``help`` is the field's documentation (shown by ``--help``)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ModelArguments:
    """Which model to start from and how its vision side is built."""

    model_name_or_path: str | None = _arg(
        "facebook/opt-125m",
        "Starting checkpoint: a Vicuna/Llama language model (pretraining, first finetune) or a LLaVA checkpoint "
        "(task finetuning, e.g. liuhaotian/llava-v1.5-7b for PruMerge's LoRA recipe).",
    )
    version: str | None = _arg(
        "v0",
        "Conversation template name from llava.conversation.conv_templates ('plain' for pretraining, 'v1' for "
        "LLaVA-1.5 finetuning). Unknown names fall back to vicuna_v1; 'v0'/'v0.5' also use vicuna_v1 (as upstream).",
    )
    freeze_backbone: bool = _arg(False, "Freeze the language model's base (model.model); train only what else is left.")
    tune_mm_mlp_adapter: bool = _arg(
        False, "Pretraining: train only the projector; the run saves mm_projector.bin instead of full weights."
    )
    vision_tower: str | None = _arg(
        None, "CLIP checkpoint (local folder or hub name); None trains a text-only language model."
    )
    mm_vision_select_layer: int | None = _arg(-1, "Which CLIP hidden state feeds the projector (LLaVA-1.5: -2).")
    pretrain_mm_mlp_adapter: str | None = _arg(
        None, "mm_projector.bin from a pretraining run, loaded into the projector before finetuning."
    )
    mm_projector_type: str | None = _arg(
        "linear", "Projector: 'linear', 'mlp{N}x_gelu' (LLaVA-1.5: mlp2x_gelu) or 'identity'."
    )
    mm_use_im_start_end: bool = _arg(False, "Wrap each <image> in <im_start>/<im_end> tokens (added to the tokenizer).")
    mm_use_im_patch_token: bool = _arg(
        True, "Add the <im_patch> token to the tokenizer (LLaVA-1.5 scripts pass False)."
    )
    mm_patch_merge_type: str | None = _arg(
        "flat",
        "How an anyres image's tiles are laid out for the LM: 'flat' (tiles concatenated), 'spatial' (the tile grid "
        "stitched) or 'spatial_unpad' (LLaVA-1.6: stitched, letterbox padding cut off, image_newline ending each "
        "row).",
    )
    unfreeze_mm_vision_tower: bool = _arg(
        False,
        "Train the CLIP tower too (LLaVA-1.6), at --mm_vision_tower_lr; its weights are then saved with the run. "
        "A starting checkpoint whose config says unfreeze_mm_vision_tower: true carries a finetuned tower, which "
        "is loaded (over mm_vision_tower's weights) with or without this flag.",
    )
    mm_vision_select_feature: str | None = _arg("patch", "'patch' drops CLIP's CLS token, 'cls_patch' keeps it.")
    token_reduction: str | None = _arg(
        None,
        "Visual-token reduction to train with: " + " | ".join(TOKEN_REDUCTION_MODES) + ". Default: the starting "
        "checkpoint's mm_token_reduction, else its name ('prumerge-plus' -> prumerge+), else prumerge. Recorded in "
        "the saved config as mm_token_reduction.",
    )
    token_budget: int | None = _arg(
        None, "Fixed number of visual tokens per image instead of PruMerge's adaptive count (saved as mm_token_budget)."
    )

    def __post_init__(self) -> None:
        if self.token_reduction is not None:
            self.token_reduction = validate_mode(self.token_reduction, "--token-reduction")
        self.token_budget = validate_budget(self.token_budget, "--token-budget")
        self.mm_patch_merge_type = validate_merge_type(self.mm_patch_merge_type, "--mm_patch_merge_type")

    # ``LlavaMetaModel.initialize_vision_modules`` reads the config-key spelling of the two reduction settings.
    @property
    def mm_token_reduction(self) -> str | None:
        return self.token_reduction

    @property
    def mm_token_budget(self) -> int | None:
        return self.token_budget


@dataclass
class DataArguments:
    """Where the training conversations and images are, and how images are shaped."""

    data_path: str | None = _arg(None, "JSON list of {id, image?, conversations: [{from: human|gpt, value}]}.")
    lazy_preprocess: bool = _arg(False, "Accepted for upstream compatibility; samples are always tokenized lazily.")
    is_multimodal: bool = _arg(False, "Set automatically when the model has a vision tower.")
    image_folder: str | None = _arg(None, "Folder the samples' 'image' paths are relative to.")
    image_aspect_ratio: str = _arg(
        "square", "'pad' (LLaVA-1.5: pad to a square with the CLIP mean colour), 'anyres' (tiles) or 'square'."
    )
    image_grid_pinpoints: str | None = _arg(
        None,
        "Canvas sizes (width, height) for 'anyres', e.g. '[(336, 672), (672, 336), (672, 672), (1008, 336), "
        "(336, 1008)]' (LLaVA-1.6's); default: the starting checkpoint's image_grid_pinpoints.",
    )
    bad_samples: str = _arg(
        "error",
        "What to do with samples the data check (run before the model loads, llava/train/data_check.py) finds "
        "unusable: a missing or unreadable image, <image> in the text without an 'image' field or the reverse, no "
        "assistant turn, or an answer truncated away at --model_max_length (images counted at an upper bound of "
        "their visual tokens). 'error' (default): stop, listing the first problems as file:index:id and their "
        "count; 'skip': leave them out of the data set and log how many. A data set without any supervised token "
        "is an error either way.",
    )

    def __post_init__(self) -> None:
        if self.bad_samples not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"--bad_samples must be one of {BAD_SAMPLE_POLICIES}, got {self.bad_samples!r}")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """``transformers.TrainingArguments`` plus LLaVA's LoRA / quantisation / projector options (upstream defaults)."""

    cache_dir: str | None = _arg(None, "Hugging Face cache folder for downloaded checkpoints.")
    optim: str = _arg("adamw_torch", "Optimizer name (transformers' OptimizerNames).")
    remove_unused_columns: bool = _arg(False, "Must stay False: the collator's 'images' is not a text column.")
    freeze_mm_mlp_adapter: bool = _arg(False, "Keep the projector frozen.")
    mpt_attn_impl: str | None = _arg("triton", "Accepted for upstream compatibility (MPT models are not supported).")
    model_max_length: int = _arg(
        512, "Maximum sequence length (tokens, before images are spliced in); longer samples are truncated."
    )
    double_quant: bool = _arg(True, "bitsandbytes 4-bit: quantise the quantisation constants too.")
    quant_type: str = _arg("nf4", "bitsandbytes 4-bit data type: 'nf4' or 'fp4'.")
    bits: int = _arg(16, "16: no quantisation; 4 or 8: load the language model with bitsandbytes (QLoRA).")
    lora_enable: bool = _arg(False, "Train LoRA adapters on every Linear of the language model (not lm_head).")
    lora_r: int = _arg(64, "LoRA rank (PruMerge / LLaVA-1.5 LoRA recipes: 128).")
    lora_alpha: int = _arg(16, "LoRA alpha (recipes: 256).")
    lora_dropout: float = _arg(0.05, "Dropout on the LoRA input.")
    lora_weight_path: str = _arg("", "Accepted for upstream compatibility; unused (as upstream).")
    lora_bias: str = _arg("none", "Which biases train with LoRA: 'none', 'all' or 'lora_only'.")
    mm_projector_lr: float | None = _arg(
        None, "Learning rate for the projector (and image_newline) (None: --learning_rate)."
    )
    mm_vision_tower_lr: float | None = _arg(
        None, "Learning rate for the vision tower with --unfreeze_mm_vision_tower (LLaVA-1.6: 2e-6; None: "
        "--learning_rate)."
    )
    group_by_modality_length: bool = _arg(
        False, "Batch image and text-only samples separately, each grouped by length (LLaVA-1.5 finetuning)."
    )
    resume_from_checkpoint: str | None = _arg(
        None,
        "Which checkpoint to resume from. Unset: the newest complete checkpoint-N in --output_dir, if any "
        "(upstream's behaviour); True: the same, and it must exist; False: start over; a checkpoint-N folder: that "
        "one, which must be complete. Incomplete folders (tmp-checkpoint-N of a save that was killed, a "
        "checkpoint-N lacking trainer_state.json or the run's weights) are skipped with a warning.",
    )
    evaluation_strategy: str | None = _arg(None, "Deprecated alias of --eval_strategy (upstream's scripts pass it).")
    warmup_ratio: float | None = _arg(
        None, "Deprecated alias of a fractional --warmup_steps (upstream's scripts pass --warmup_ratio 0.03)."
    )

    def __post_init__(self) -> None:
        if self.evaluation_strategy is not None:
            warnings.warn("--evaluation_strategy is deprecated: use --eval_strategy", FutureWarning, stacklevel=2)
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            warnings.warn("--warmup_ratio is deprecated: use --warmup_steps with a value below 1", FutureWarning,
                          stacklevel=2)
            if self.warmup_steps:
                raise ValueError("pass --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        if self.bits not in BITS_CHOICES:
            raise ValueError(f"--bits must be one of {BITS_CHOICES}, got {self.bits}")
        if self.lora_bias not in LORA_BIAS_CHOICES:
            raise ValueError(f"--lora_bias must be one of {LORA_BIAS_CHOICES}, got {self.lora_bias!r}")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"--quant_type must be one of {QUANT_TYPES}, got {self.quant_type!r}")
        for flag in ("mm_projector_lr", "mm_vision_tower_lr"):
            value = getattr(self, flag)
            if value is not None and value < 0:
                raise ValueError(f"--{flag} must not be negative, got {value}")
        if self.model_max_length < 1:
            raise ValueError(f"--model_max_length must be positive, got {self.model_max_length}")
        super().__post_init__()


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse a command line (``sys.argv[1:]`` when None) into the three argument groups.

    Raises:
        ValueError: for unknown arguments (naming them) or invalid values.
    """
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args, rest = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if rest:
        raise ValueError(f"unknown command-line arguments: {' '.join(rest)}")
    return model_args, data_args, training_args
