#!/bin/bash
# LLaVA-Bench (in-the-wild): answer. GPT-4 judging is not included (see the note at the end).
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

python -m llava.eval.model_vqa \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/llava-bench-in-the-wild/questions.jsonl" \
    --image-folder "$EVAL_DIR/llava-bench-in-the-wild/images" \
    --answers-file "$EVAL_DIR/llava-bench-in-the-wild/answers/$CKPT.jsonl" \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

mkdir -p "$EVAL_DIR/llava-bench-in-the-wild/reviews"

# Upstream then has GPT-4 review each answer against answers_gpt4.jsonl (llava/eval/eval_gpt_review_bench.py with
# llava/eval/table/rule.json) and averages the review scores (llava/eval/summarize_gpt_review.py). Those need the
# OpenAI API and upstream's judge prompts and are not part of this repository: run upstream's two scripts on
# "$EVAL_DIR/llava-bench-in-the-wild/answers/$CKPT.jsonl" to score it.
