"""Train LLaVA: projector pretraining, full or LoRA finetuning, with PruMerge token reduction in the tower.

Run it the way upstream LLaVA's recipes do (``scripts/v1_5/*.sh``)::

    deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero3.json \\
        --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \\
        --model_name_or_path liuhaotian/llava-v1.5-7b --version v1 \\
        --data_path data.json --image_folder images/ --vision_tower openai/clip-vit-large-patch14-336 \\
        --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --image_aspect_ratio pad \\
        --token-reduction prumerge --bf16 True --output_dir ./checkpoints/llava-v1.5-7b-prumerge-lora ...

    torchrun --nproc_per_node=2 llava/train/train.py --use_cpu True ...      # CPU, plain DDP (tests)

LLaVA-1.6 checkpoints train as 1.6 was trained (``scripts/v1_6/finetune_task_lora.sh``): ``--image_aspect_ratio
anyres --mm_patch_merge_type spatial_unpad --unfreeze_mm_vision_tower True --mm_vision_tower_lr 2e-6``; the
checkpoint's finetuned CLIP weights are loaded over ``mm_vision_tower``'s (``model_setup.setup_vision``).

What is written to ``--output_dir`` is described in ``llava/train/saving.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import torch
import transformers

from llava.model.builder import choose_attn_implementation
from llava.train.args import DataArguments, ModelArguments, TrainingArguments, parse_args
from llava.train.checkpoints import resolve_resume_checkpoint, run_kind
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, make_supervised_data_module
from llava.train.data_check import CheckSettings, check_training_data
from llava.train.llava_trainer import (
    LLaVATrainer,
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
)
from llava.train.model_setup import (
    build_model_and_tokenizer,
    find_all_linear_names,
    load_run_tokenizer,
    smart_tokenizer_and_embedding_resize,
    visual_token_bound,
)
from llava.train.preprocess import conversation_for_version
from llava.train import upstream_api
from llava.train.upstream_api import (
    _mask_targets,
    _tokenize_fn,
    preprocess,
    preprocess_llama_2,
    preprocess_mpt,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
    rank0_print,
    safe_save_model_for_hf_trainer,
)
from llava.train.saving import save_lora_checkpoint, save_projector

logger = logging.getLogger(__name__)

__all__ = [  # upstream's train.py names, for scripts that import them from here
    "DataArguments",
    "DataCollatorForSupervisedDataset",
    "LazySupervisedDataset",
    "ModelArguments",
    "TrainingArguments",
    "find_all_linear_names",
    "get_mm_adapter_state_maybe_zero_3",
    "get_peft_state_maybe_zero_3",
    "get_peft_state_non_lora_maybe_zero_3",
    "main",
    "make_supervised_data_module",
    "maybe_zero_3",
    "smart_tokenizer_and_embedding_resize",
    "train",
    *upstream_api.__all__,  # preprocess, preprocess_v1, ..., rank0_print, safe_save_model_for_hf_trainer
]


def _configure_logging(training_args: TrainingArguments) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("llava").setLevel(level)


def save_trained_model(trainer: LLaVATrainer, model, training_args: TrainingArguments, *,
                       tune_mm_mlp_adapter: bool, use_im_start_end: bool) -> None:
    """The end-of-run save: LoRA adapter + non_lora_trainables, projector only, or the full model."""
    output_dir = training_args.output_dir
    if training_args.lora_enable:
        save_lora_checkpoint(model, output_dir, lora_bias=training_args.lora_bias,
                             is_main_process=training_args.should_save)
    elif tune_mm_mlp_adapter:
        save_projector(model, output_dir, use_im_start_end=use_im_start_end, is_main_process=training_args.should_save)
    else:
        trainer.save_model(output_dir)


def seed_run(training_args: TrainingArguments) -> None:
    """Seed python, numpy and torch from ``--seed`` (``--full_determinism``: also deterministic kernels), before
    anything random happens: the weights the run creates (LoRA, a new projector) then follow the seed."""
    if training_args.full_determinism:
        transformers.enable_full_determinism(training_args.seed)
    else:
        transformers.set_seed(training_args.seed)


def train(attn_implementation: str | None = None, argv: Sequence[str] | None = None,
          callbacks: Sequence[transformers.TrainerCallback] | None = None) -> LLaVATrainer:
    """Parse the command line (``argv``, default ``sys.argv[1:]``), train, save; returns the trainer.

    Order: seed (``--seed``) -> tokenizer -> data check (``data_check``, before the model loads; ``--bad_samples``)
    -> model -> Trainer -> resume (``--resume_from_checkpoint``; by default the newest complete ``checkpoint-N``
    in ``--output_dir``, see ``checkpoints``) -> train -> save.

    Args:
        attn_implementation: "flash_attention_2" (``train_mem.py``), "sdpa", "eager" or None (transformers'
            default). flash-attn falls back to sdpa, with a message, when it cannot run here.
        callbacks: extra ``transformers.TrainerCallback``s for the Trainer.
    """
    model_args, data_args, training_args = parse_args(list(argv) if argv is not None else None)
    _configure_logging(training_args)
    seed_run(training_args)
    if attn_implementation is not None:
        attn_implementation = choose_attn_implementation(False, attn_implementation, str(training_args.device))

    tokenizer = load_run_tokenizer(model_args, training_args)
    template = conversation_for_version(model_args.version)
    samples, excluded = check_training_data(data_args.data_path, tokenizer, CheckSettings(
        template=template, model_max_length=training_args.model_max_length, image_folder=data_args.image_folder,
        visual_tokens=visual_token_bound(model_args, data_args, training_args),
        mm_use_im_start_end=model_args.mm_use_im_start_end,
    ), data_args.bad_samples)
    model, tokenizer, image_processor = build_model_and_tokenizer(
        model_args, data_args, training_args, attn_implementation, tokenizer=tokenizer
    )
    data_args.is_multimodal = image_processor is not None
    data_module = make_supervised_data_module(
        tokenizer, data_args, template=template, image_processor=image_processor,
        mm_use_im_start_end=model_args.mm_use_im_start_end, samples=samples, exclude=excluded,
    )
    trainer = LLaVATrainer(
        model=model,
        processing_class=tokenizer,
        args=training_args,
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
        use_im_start_end=model_args.mm_use_im_start_end,
        callbacks=list(callbacks) if callbacks else None,
        **data_module,
    )
    kind = run_kind(lora_enable=training_args.lora_enable, tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter)
    checkpoint = resolve_resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint, kind)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    model.config.use_cache = True
    save_trained_model(trainer, model, training_args, tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
                       use_im_start_end=model_args.mm_use_im_start_end)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return trainer


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (sdpa attention; ``train_mem.py`` asks for flash-attention 2)."""
    train(argv=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
