#!/bin/bash
# VizWiz test: answer, convert for the EvalAI upload.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

python -m llava.eval.model_vqa_loader \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/vizwiz/llava_test.jsonl" \
    --image-folder "$EVAL_DIR/vizwiz/test" \
    --answers-file "$EVAL_DIR/vizwiz/answers/$CKPT.jsonl" \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

python scripts/convert_vizwiz_for_submission.py \
    --annotation-file "$EVAL_DIR/vizwiz/llava_test.jsonl" \
    --result-file "$EVAL_DIR/vizwiz/answers/$CKPT.jsonl" \
    --result-upload-file "$EVAL_DIR/vizwiz/answers_upload/$CKPT.json"
