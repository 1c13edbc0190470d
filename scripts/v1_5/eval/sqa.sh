#!/bin/bash
# ScienceQA-IMG (test): answer with the single-letter prompt, score.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

python -m llava.eval.model_vqa_science \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/scienceqa/llava_test_CQM-A.json" \
    --image-folder "$EVAL_DIR/scienceqa/images/test" \
    --answers-file "$EVAL_DIR/scienceqa/answers/$CKPT.jsonl" \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

python llava/eval/eval_science_qa.py \
    --base-dir "$EVAL_DIR/scienceqa" \
    --result-file "$EVAL_DIR/scienceqa/answers/$CKPT.jsonl" \
    --output-file "$EVAL_DIR/scienceqa/answers/${CKPT}_output.jsonl" \
    --output-result "$EVAL_DIR/scienceqa/answers/${CKPT}_result.json"
