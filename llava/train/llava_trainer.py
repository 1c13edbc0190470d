"""``LLaVATrainer``: ``transformers.Trainer`` with LLaVA's sampler, projector learning rate and saving rules.

* ``--group_by_modality_length``: batches of image samples and of text-only samples, each grouped by length.
* ``--mm_projector_lr`` / ``--mm_vision_tower_lr``: the projector (with ``image_newline``) and the vision tower
  (``--unfreeze_mm_vision_tower``) get their own learning rates (parameter groups: decay / no decay x rest /
  projector / tower); the groups are logged at the start.
* ``tune_mm_mlp_adapter=True`` (pretraining): the weights saved are only ``mm_projector.bin`` (checkpoints also
  hold the Trainer's optimizer / scheduler / RNG states, so they resume).
* Full checkpoints leave out the CLIP weights of a frozen folder tower (a trained or finetuned one is saved under
  the released names) and save the tokenizer with its ``tokenizer.model``.
* LoRA ``checkpoint-N`` folders also get ``non_lora_trainables.bin`` and ``config.json``, so they load.
* Checkpoints are written under a temporary name and renamed when complete (``checkpoints``); resuming restores
  every trained weight, the LLaVA files included (``restore``).

The ZeRO-3 gathering helpers live in ``param_gather`` and are re-exported here under upstream's names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, rotate_checkpoints

from .checkpoints import TRAINER_STATE, clear_staging, publish_checkpoint, staging_folder

from .param_gather import (
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
)
from .sampler import (
    LengthGroupedSampler,
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)
from .restore import restore_full_weights, restore_non_lora_trainables, restore_projector
from .saving import (
    full_state_for_save,
    save_non_lora_trainables,
    save_projector,
    save_tokenizer_files,
    upstream_projector_copy,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LLaVATrainer",
    "LengthGroupedSampler",
    "get_length_grouped_indices",
    "get_mm_adapter_state_maybe_zero_3",
    "get_modality_length_grouped_indices",
    "get_peft_state_maybe_zero_3",
    "get_peft_state_non_lora_maybe_zero_3",
    "maybe_zero_3",
    "multimodal_param_groups",
    "parameter_part",
    "projector_param_groups",
    "split_to_even_chunks",
]


#: parts of the model that can get their own learning rate: (part, the TrainingArguments field holding it)
LR_PARTS = (("mm_projector", "mm_projector_lr"), ("vision_tower", "mm_vision_tower_lr"))


def parameter_part(name: str) -> str:
    """Which learning-rate part a parameter belongs to: "vision_tower", "mm_projector" (the projector and
    ``image_newline``, LLaVA-1.6's row-end token, which is initialised and trained with it) or "rest"."""
    if "vision_tower" in name:
        return "vision_tower"
    if "mm_projector" in name or name.endswith("image_newline"):
        return "mm_projector"
    return "rest"


def multimodal_param_groups(
    named_params: list[tuple[str, torch.nn.Parameter]],
    decay_names: set[str],
    weight_decay: float,
    part_lrs: dict[str, float],
) -> list[dict[str, Any]]:
    """Optimizer groups for the trainable parameters: (decay, no decay) for the rest, then for each part of
    ``part_lrs`` ("mm_projector", "vision_tower", see ``parameter_part``) at its own ``lr``.

    A part not in ``part_lrs`` stays with the rest (the run's learning rate). Empty groups are left out.
    """
    unknown = set(part_lrs) - {part for part, _ in LR_PARTS}
    if unknown:
        raise ValueError(f"unknown parameter parts {sorted(unknown)}; known: {[part for part, _ in LR_PARTS]}")

    def group_of(name: str) -> str:
        part = parameter_part(name)
        return part if part in part_lrs else "rest"

    groups = []
    for part in ("rest", *part_lrs):
        for decay in (True, False):
            params = [p for n, p in named_params
                      if p.requires_grad and group_of(n) == part and (n in decay_names) == decay]
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
            if part != "rest":
                group["lr"] = part_lrs[part]
            groups.append(group)
    return groups


def projector_param_groups(
    named_params: list[tuple[str, torch.nn.Parameter]],
    decay_names: set[str],
    weight_decay: float,
    projector_lr: float,
) -> list[dict[str, Any]]:
    """Optimizer groups for trainable parameters: (decay, no decay) x (rest, projector at ``projector_lr``)."""
    return multimodal_param_groups(named_params, decay_names, weight_decay, {"mm_projector": projector_lr})


def describe_param_groups(named_params: list[tuple[str, torch.nn.Parameter]], groups: list[dict[str, Any]],
                          default_lr: float) -> str:
    """``"rest: 12 tensors, lr 0.0002, weight decay 0.0; vision_tower: 40 tensors, lr 1e-06, ..."``, for the log."""
    names = {id(p): n for n, p in named_params}
    parts = []
    for group in groups:
        kinds = sorted({parameter_part(names[id(p)]) for p in group["params"]})
        parts.append(f"{'+'.join(kinds)}: {len(group['params'])} tensors, lr {group.get('lr', default_lr)}, "
                     f"weight decay {group['weight_decay']}")
    return "; ".join(parts)


class LLaVATrainer(Trainer):
    """``Trainer`` for LLaVA runs.

    Args (besides ``Trainer``'s):
        tune_mm_mlp_adapter: projector-only run: save ``mm_projector.bin`` instead of model weights.
        use_im_start_end: the run added ``<im_start>``/``<im_end>``: projector-only saves include the embeddings.
        tokenizer: accepted as an alias of ``processing_class`` (upstream passes ``tokenizer=``).
    """

    def __init__(self, *args: Any, tune_mm_mlp_adapter: bool = False, use_im_start_end: bool = False,
                 tokenizer: Any = None, **kwargs: Any) -> None:
        if tokenizer is not None:
            kwargs.setdefault("processing_class", tokenizer)
        self._staging_run_dir: str | None = None  # set while a checkpoint is written under its temporary name
        super().__init__(*args, **kwargs)
        self.tune_mm_mlp_adapter = tune_mm_mlp_adapter
        self.use_im_start_end = use_im_start_end

    # ------------------------------------------------------------------ sampling
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None or not has_length(dataset) or not getattr(self.args, "group_by_modality_length", False):
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=dataset.modality_lengths,
            seed=self.args.seed,
            group_by_modality=True,
        )

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        part_lrs = {part: getattr(self.args, flag) for part, flag in LR_PARTS
                    if getattr(self.args, flag, None) is not None}
        if self.optimizer is not None or not part_lrs:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        named = list(opt_model.named_parameters())
        groups = multimodal_param_groups(named, set(self.get_decay_parameter_names(opt_model)),
                                         self.args.weight_decay, part_lrs)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        clashing = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if clashing:
            flags = " / ".join(f"--{flag}" for part, flag in LR_PARTS if part in part_lrs)
            raise ValueError(f"{flags} cannot be combined with --optim {self.args.optim} "
                             f"(it builds its own parameter groups: {sorted(clashing)})")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        if self.args.should_log:
            logger.info("optimizer parameter groups: %s", describe_param_groups(named, groups, self.args.learning_rate))
        return self.optimizer

    # ------------------------------------------------------------------ saving
    def _save_checkpoint(self, model, trial, *args, **kwargs):
        """Write ``checkpoint-N`` under its temporary name (``checkpoints.staging_folder``), LLaVA's extras included,
        then rename it into place: a kill during the save leaves no ``checkpoint-N`` that looks whole.

        Every rank writes into the temporary folder (its RNG state, its DeepSpeed shards); after a barrier the
        saving process (``args.should_save``) renames it and rotates old checkpoints (``--save_total_limit``).
        """
        run_dir = self._get_output_dir(trial=trial)
        final = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = staging_folder(final)
        if self.args.should_save:
            clear_staging(final)
        self.accelerator.wait_for_everyone()
        staging.mkdir(parents=True, exist_ok=True)  # projector runs write no model files that would make it
        self._staging_run_dir = str(staging.parent)
        try:
            super()._save_checkpoint(model, trial, *args, **kwargs)  # into staging (see _get_output_dir)
        finally:
            self._staging_run_dir = None
        self._save_llava_extras(staging, final)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if not (staging / TRAINER_STATE).is_file():
                raise RuntimeError(f"the Trainer did not write {staging / TRAINER_STATE}: transformers may have "
                                   "changed where _save_checkpoint writes; not publishing a partial checkpoint")
            publish_checkpoint(staging, final)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            logger.info("saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        if self._staging_run_dir is not None:
            return self._staging_run_dir
        return super()._get_output_dir(trial)

    def _save_llava_extras(self, staging: Path, final: Path) -> None:
        """What LLaVA adds to a checkpoint, written into the temporary folder on every rank (ZeRO-3 gathers):
        ``non_lora_trainables.bin`` + ``config.json`` (LoRA), ``mm_projector.bin`` + ``config.json`` (projector
        runs, with upstream's copy in ``<run>/mm_projector/checkpoint-N.bin``). A best-model path the Trainer
        recorded under the temporary name is pointed at the final one."""
        should_save = self.args.should_save
        if self.tune_mm_mlp_adapter:
            save_projector(self.model, staging, use_im_start_end=self.use_im_start_end, is_main_process=should_save,
                           copy_to=upstream_projector_copy(final))
        elif _is_peft(self.model):
            save_non_lora_trainables(self.model, staging, is_main_process=should_save)
        if self.state.best_model_checkpoint == str(staging):
            self.state.best_model_checkpoint = str(final)
            if should_save:
                self.state.save_to_json(str(staging / TRAINER_STATE))

    # ------------------------------------------------------------------ resuming
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Restore the weights of a ``checkpoint-N`` (without DeepSpeed; see ``restore``): the adapter (by the
        Trainer) and ``non_lora_trainables.bin`` for LoRA runs, ``mm_projector.bin`` for projector runs, the model
        files (tower under the released names) for full runs."""
        target = self.model if model is None else model
        if self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.tune_mm_mlp_adapter:
            restore_projector(target, resume_from_checkpoint)
        elif _is_peft(target):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            restore_non_lora_trainables(target, resume_from_checkpoint)
        else:
            restore_full_weights(target, resume_from_checkpoint)
        logger.info("restored the model weights from %s", resume_from_checkpoint)
        return None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.tune_mm_mlp_adapter:
            return  # projector-only runs write mm_projector.bin (save_projector), never full weights
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None and not _is_peft(self.model):
            state_dict = self.model.state_dict()
        if state_dict is not None and not _is_peft(self.model):
            state_dict = full_state_for_save(self.model, state_dict)
        super()._save(output_dir, state_dict=state_dict)
        tokenizer = self.processing_class
        if self.args.should_save and tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            save_tokenizer_files(tokenizer, output_dir)


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
