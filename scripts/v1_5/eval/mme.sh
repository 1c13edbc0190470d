#!/bin/bash
# MME: answer, convert to MME's per-category files, score with MME's eval_tool/calculation.py.
#
# Environment (all optional): MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA/projector-only runs),
# CKPT (the run's name in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+),
# TOKEN_BUDGET (fixed visual tokens per image), EVAL_DIR (default ./playground/data/eval).
# Extra arguments go to the answering script (e.g. --device cpu --max_new_tokens 16).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"  # MODEL_PATH, CKPT, EVAL_DIR, MODEL_ARGS

python -m llava.eval.model_vqa_loader \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/MME/llava_mme.jsonl" \
    --image-folder "$EVAL_DIR/MME/MME_Benchmark_release_version" \
    --answers-file "$EVAL_DIR/MME/answers/$CKPT.jsonl" \
    --temperature 0 \
    --conv-mode vicuna_v1 "$@"

REPO_ROOT="$(pwd)"
cd "$EVAL_DIR/MME"

# reads answers/$CKPT.jsonl and MME_Benchmark_release_version/, writes eval_tool/answers/$CKPT/
python "$REPO_ROOT/playground/data/eval/MME/convert_answer_to_mme.py" --experiment "$CKPT"

# eval_tool/ is MME's official evaluation tool (downloaded with the MME data, not part of this repository)
cd eval_tool

python calculation.py --results_dir "answers/$CKPT"
