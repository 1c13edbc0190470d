#!/bin/bash
# LLaVA-Bench (in-the-wild): answer, have a GPT judge review each answer against GPT-4's, print the scores.
#
# Data in $EVAL_DIR/llava-bench-in-the-wild (the dataset liuhaotian/llava-bench-in-the-wild): questions.jsonl,
# images/, context.jsonl, answers_gpt4.jsonl. Results: answers/$CKPT.jsonl, reviews/$CKPT.jsonl, then the relative
# score per category on stdout (llava.eval.summarize_gpt_review).
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# The judge: OPENAI_API_KEY (needed), OPENAI_BASE_URL (any chat-completions server, e.g. http://127.0.0.1:8000/v1;
# default OpenAI's API), JUDGE_MODEL (default gpt-4-0314, upstream's judge). ANSWER_ONLY=1 answers and stops there
# (no key needed). Missing data or a missing key is reported before anything runs.
# The review resumes: after a failure run the script again, and only the questions without a review of these very
# answers are sent to the judge (SKIP_ANSWER=1 reviews the existing answers file without answering again).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

BENCH="$EVAL_DIR/llava-bench-in-the-wild"
ANSWERS="$BENCH/answers/$CKPT.jsonl"
REVIEWS="$BENCH/reviews/$CKPT.jsonl"

missing=()
[ -f "$BENCH/questions.jsonl" ] || missing+=("$BENCH/questions.jsonl")
if [ "${SKIP_ANSWER:-0}" = 1 ]; then
    [ -f "$ANSWERS" ] || missing+=("$ANSWERS (SKIP_ANSWER=1 reviews an existing answers file)")
else
    [ -d "$BENCH/images" ] || missing+=("$BENCH/images/")
fi
if [ "${ANSWER_ONLY:-0}" != 1 ]; then
    [ -f "$BENCH/context.jsonl" ] || missing+=("$BENCH/context.jsonl")
    [ -f "$BENCH/answers_gpt4.jsonl" ] || missing+=("$BENCH/answers_gpt4.jsonl")
    [ -n "${OPENAI_API_KEY:-}" ] || missing+=("OPENAI_API_KEY is not set (the judge's API key; OPENAI_BASE_URL names another chat-completions server; ANSWER_ONLY=1 only answers)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "llavabench.sh: cannot run, missing:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    echo "(the data: huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild, into $BENCH)" >&2
    exit 2
fi

if [ "${SKIP_ANSWER:-0}" != 1 ]; then
    python -m llava.eval.model_vqa \
        "${MODEL_ARGS[@]}" \
        --question-file "$BENCH/questions.jsonl" \
        --image-folder "$BENCH/images" \
        --answers-file "$ANSWERS" \
        --temperature 0 \
        --conv-mode vicuna_v1 "$@"
fi

if [ "${ANSWER_ONLY:-0}" = 1 ]; then
    echo "llavabench.sh: answers in $ANSWERS; not reviewed (ANSWER_ONLY=1)" >&2
    exit 0
fi

JUDGE_ARGS=()
if [ -n "${JUDGE_MODEL:-}" ]; then JUDGE_ARGS+=(--judge-model "$JUDGE_MODEL"); fi

mkdir -p "$BENCH/reviews"

# the judge prompts are llava/eval/table/rule.json (the module's default --rule)
python -m llava.eval.eval_gpt_review_bench \
    --question "$BENCH/questions.jsonl" \
    --context "$BENCH/context.jsonl" \
    --answer-list \
        "$BENCH/answers_gpt4.jsonl" \
        "$ANSWERS" \
    --output "$REVIEWS" \
    "${JUDGE_ARGS[@]}"

python -m llava.eval.summarize_gpt_review -f "$REVIEWS"
