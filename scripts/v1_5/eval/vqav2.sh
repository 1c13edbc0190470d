#!/bin/bash
# VQAv2 test-dev: answer in parallel chunks, merge, convert for the EvalAI upload.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

SPLIT="llava_vqav2_mscoco_test-dev2015"

# One chunk per visible GPU, run in parallel, merged in order into $output_file (see _chunked_answers.sh).
source "$(dirname "${BASH_SOURCE[0]}")/_chunked_answers.sh"
answer_in_chunks "$EVAL_DIR/vqav2/$SPLIT.jsonl" \
    "$EVAL_DIR/vqav2/test2015" \
    "$EVAL_DIR/vqav2/answers/$SPLIT/$CKPT" "$@"

python scripts/convert_vqav2_for_submission.py --dir "$EVAL_DIR/vqav2" --split "$SPLIT" --ckpt "$CKPT"
