#!/bin/bash
# Adapt the released LLaVA-1.6 (LLaVA-NeXT) Vicuna-7B to PruMerge with a LoRA, the way 1.6 itself was trained:
# anyres tiles laid out "spatial_unpad", and the CLIP tower unfrozen at its own small learning rate (2e-6).
#
#   bash scripts/v1_6/finetune_task_lora.sh                    # PruMerge  -> ./checkpoints/llava-v1.6-vicuna-7b-prumerge-lora
#   PRUMERGE_PLUS=1 bash scripts/v1_6/finetune_task_lora.sh    # PruMerge+ -> ./checkpoints/llava-v1.6-vicuna-7b-prumerge-plus-lora
#
# The run's non_lora_trainables.bin holds the trained tower (model.vision_tower.vision_tower.vision_model.*, as the
# released checkpoints name it), the projector and image_newline; config.json records mm_token_reduction,
# unfreeze_mm_vision_tower and the anyres settings. Evaluate with --model-path <output>
# --model-base liuhaotian/llava-v1.6-vicuna-7b. DATA_PATH / IMAGE_FOLDER / OUTPUT_DIR override the defaults.
set -euo pipefail

if [[ "${PRUMERGE_PLUS:-0}" == "1" ]]; then
    REDUCTION="prumerge+"
    RUN_NAME="llava-v1.6-vicuna-7b-prumerge-plus-lora"
else
    REDUCTION="prumerge"
    RUN_NAME="llava-v1.6-vicuna-7b-prumerge-lora"
fi

deepspeed llava/train/train_mem.py \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path liuhaotian/llava-v1.6-vicuna-7b \
    --version v1 \
    --data_path "${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}" \
    --image_folder "${IMAGE_FOLDER:-./playground/data}" \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres \
    --image_grid_pinpoints "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]" \
    --mm_patch_merge_type spatial_unpad \
    --unfreeze_mm_vision_tower True \
    --mm_vision_tower_lr 2e-6 \
    --group_by_modality_length True \
    --token-reduction "${REDUCTION}" \
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
    --model_max_length 4096 \
    --activation_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb
