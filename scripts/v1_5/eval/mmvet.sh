#!/bin/bash
# MM-Vet: answer, convert for the MM-Vet (GPT-4 graded) evaluator.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

python -m llava.eval.model_vqa \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/mm-vet/llava-mm-vet.jsonl" \
    --image-folder "$EVAL_DIR/mm-vet/images" \
    --answers-file "$EVAL_DIR/mm-vet/answers/$CKPT.jsonl" \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

mkdir -p "$EVAL_DIR/mm-vet/results"

python scripts/convert_mmvet_for_eval.py \
    --src "$EVAL_DIR/mm-vet/answers/$CKPT.jsonl" \
    --dst "$EVAL_DIR/mm-vet/results/$CKPT.json"
