#!/bin/bash
# MMBench-CN dev: answer with the Chinese single-letter prompt, convert to the server's .xlsx.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

SPLIT="mmbench_dev_cn_20231003"

python -m llava.eval.model_vqa_mmbench \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/mmbench_cn/$SPLIT.tsv" \
    --answers-file "$EVAL_DIR/mmbench_cn/answers/$SPLIT/$CKPT.jsonl" \
    --lang cn \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

mkdir -p "$EVAL_DIR/mmbench_cn/answers_upload/$SPLIT"

python scripts/convert_mmbench_for_submission.py \
    --annotation-file "$EVAL_DIR/mmbench_cn/$SPLIT.tsv" \
    --result-dir "$EVAL_DIR/mmbench_cn/answers/$SPLIT" \
    --upload-dir "$EVAL_DIR/mmbench_cn/answers_upload/$SPLIT" \
    --experiment "$CKPT"
