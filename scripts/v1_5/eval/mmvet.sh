#!/bin/bash
# MM-Vet: answer, convert for the MM-Vet grader, and grade with a GPT judge when OPENAI_API_KEY is set.
#
# Data in $EVAL_DIR/mm-vet: llava-mm-vet.jsonl, images/ and, for grading here, mm-vet.json (from mm-vet.zip).
# Results: answers/$CKPT.jsonl, results/$CKPT.json (the file the MM-Vet grader reads), and when graded
# results/${CKPT}_<judge>-grade-1runs.json and results/${CKPT}_<judge>-cap-score-1runs.csv (scores per capability,
# also printed).
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# The judge: OPENAI_API_KEY (without it the script stops after converting, and says so), OPENAI_BASE_URL (any
# chat-completions server; default OpenAI's API), JUDGE_MODEL (default gpt-4-0613, the MM-Vet grader's), NUM_RUN
# (gradings per answer, default 1; the MM-Vet paper uses 5). Grading resumes: run llava.eval.eval_mmvet again.
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

BENCH="$EVAL_DIR/mm-vet"

if [ -n "${OPENAI_API_KEY:-}" ] && [ ! -f "$BENCH/mm-vet.json" ]; then  # fail before answering, not after
    echo "mmvet.sh: cannot grade, missing: $BENCH/mm-vet.json (unzip mm-vet.zip into $BENCH)" >&2
    exit 2
fi

python -m llava.eval.model_vqa \
    "${MODEL_ARGS[@]}" \
    --question-file "$BENCH/llava-mm-vet.jsonl" \
    --image-folder "$BENCH/images" \
    --answers-file "$BENCH/answers/$CKPT.jsonl" \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

mkdir -p "$BENCH/results"

python scripts/convert_mmvet_for_eval.py \
    --src "$BENCH/answers/$CKPT.jsonl" \
    --dst "$BENCH/results/$CKPT.json"

if [ -z "${OPENAI_API_KEY:-}" ]; then
    echo "mmvet.sh: $BENCH/results/$CKPT.json is ready but not graded: OPENAI_API_KEY is not set (set it, and" \
         "OPENAI_BASE_URL for another chat-completions server, to grade with llava.eval.eval_mmvet; or submit the" \
         "file to the MM-Vet online evaluator)" >&2
    exit 0
fi

JUDGE_ARGS=()
if [ -n "${JUDGE_MODEL:-}" ]; then JUDGE_ARGS+=(--judge-model "$JUDGE_MODEL"); fi

python -m llava.eval.eval_mmvet \
    --mmvet-path "$BENCH" \
    --result-file "$BENCH/results/$CKPT.json" \
    --num-run "${NUM_RUN:-1}" \
    "${JUDGE_ARGS[@]}"
