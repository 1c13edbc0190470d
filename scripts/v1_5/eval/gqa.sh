#!/bin/bash
# GQA testdev-balanced: answer in parallel chunks, merge, convert, score with GQA's official eval.py.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

SPLIT="llava_gqa_testdev_balanced"
GQADIR="$EVAL_DIR/gqa/data"

# One chunk per visible GPU, run in parallel, merged in order into $output_file (see _chunked_answers.sh).
source "$(dirname "${BASH_SOURCE[0]}")/_chunked_answers.sh"
answer_in_chunks "$EVAL_DIR/gqa/$SPLIT.jsonl" \
    "$EVAL_DIR/gqa/data/images" \
    "$EVAL_DIR/gqa/answers/$SPLIT/$CKPT" "$@"

python scripts/convert_gqa_for_eval.py --src "$output_file" --dst "$GQADIR/testdev_balanced_predictions.json"

# eval/eval.py is GQA's official evaluation script (downloaded with the GQA data, not part of this repository)
cd "$GQADIR"
python eval/eval.py --tier testdev_balanced
