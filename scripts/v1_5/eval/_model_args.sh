# Sourced by every benchmark script here: reads the environment, sets MODEL_PATH, CKPT, EVAL_DIR and the
# MODEL_ARGS array passed to the answering modules.
#   MODEL_PATH (default liuhaotian/llava-v1.5-13b), MODEL_BASE (LoRA / projector-only runs), CKPT (the run's name
#   in answer paths, default llava-v1.5-13b), TOKEN_REDUCTION (none | prumerge | prumerge+), TOKEN_BUDGET (fixed
#   visual tokens per image), EVAL_DIR (default ./playground/data/eval).
MODEL_PATH="${MODEL_PATH:-liuhaotian/llava-v1.5-13b}"
CKPT="${CKPT:-llava-v1.5-13b}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
MODEL_ARGS=(--model-path "$MODEL_PATH")
if [ -n "${MODEL_BASE:-}" ]; then MODEL_ARGS+=(--model-base "$MODEL_BASE"); fi
if [ -n "${TOKEN_REDUCTION:-}" ]; then MODEL_ARGS+=(--token-reduction "$TOKEN_REDUCTION"); fi
if [ -n "${TOKEN_BUDGET:-}" ]; then MODEL_ARGS+=(--token-budget "$TOKEN_BUDGET"); fi
