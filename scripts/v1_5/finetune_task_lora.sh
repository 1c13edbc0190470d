#!/bin/bash
# Adapt the released LLaVA-1.5-7B to PruMerge with a LoRA, the visual-token reduction on, so the language model
# learns to read the reduced tokens (a shorter run than finetune_lora.sh, which trains the whole visual instruction
# stage on Vicuna as the released PruMerge checkpoints were).
#
#   bash scripts/v1_5/finetune_task_lora.sh                    # PruMerge  -> ./checkpoints/llava-v1.5-7b-prumerge-lora
#   PRUMERGE_PLUS=1 bash scripts/v1_5/finetune_task_lora.sh    # PruMerge+ -> ./checkpoints/llava-v1.5-7b-prumerge-plus-lora
#
# PruMerge+ trains with the published fixed-count rule (--token-budget 144: 72 top + 72 raster centres), the
# PruMerge repository's training branch; TOKEN_BUDGET= (empty) trains adaptive PruMerge+ instead.
#
# The run's config.json records mm_token_reduction, so evaluation picks the same mode. Evaluate with
# --model-path <output> --model-base liuhaotian/llava-v1.5-7b, or merge: scripts/merge_lora_weights.py.
# DATA_PATH / IMAGE_FOLDER / OUTPUT_DIR override the defaults.
set -euo pipefail

if [[ "${PRUMERGE_PLUS:-0}" == "1" ]]; then
    REDUCTION="prumerge+"
    BUDGET="${TOKEN_BUDGET-144}"
    RUN_NAME="llava-v1.5-7b-prumerge-plus-lora"
else
    REDUCTION="prumerge"
    BUDGET="${TOKEN_BUDGET-}"
    RUN_NAME="llava-v1.5-7b-prumerge-lora"
fi
BUDGET_ARGS=()
if [[ -n "${BUDGET}" ]]; then
    BUDGET_ARGS=(--token-budget "${BUDGET}")
fi

deepspeed llava/train/train_mem.py \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path liuhaotian/llava-v1.5-7b \
    --version v1 \
    --data_path "${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}" \
    --image_folder "${IMAGE_FOLDER:-./playground/data}" \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --token-reduction "${REDUCTION}" "${BUDGET_ARGS[@]}" \
    --bf16 True \
    --output_dir "${OUTPUT_DIR:-./checkpoints/${RUN_NAME}}" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --eval_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_steps 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --activation_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb
