#!/bin/bash
# SEED-Bench: answer in parallel chunks, merge, score per question type and write the upload file.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

# One chunk per visible GPU, run in parallel, merged in order into $output_file (see _chunked_answers.sh).
source "$(dirname "${BASH_SOURCE[0]}")/_chunked_answers.sh"
answer_in_chunks "$EVAL_DIR/seed_bench/llava-seed-bench.jsonl" \
    "$EVAL_DIR/seed_bench" \
    "$EVAL_DIR/seed_bench/answers/$CKPT" "$@"

python scripts/convert_seed_for_submission.py \
    --annotation-file "$EVAL_DIR/seed_bench/SEED-Bench.json" \
    --result-file "$output_file" \
    --result-upload-file "$EVAL_DIR/seed_bench/answers_upload/$CKPT.jsonl"
