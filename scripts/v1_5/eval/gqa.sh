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

# One chunk per visible GPU, run in parallel; a failed chunk stops the script before merging.
gpu_list="${CUDA_VISIBLE_DEVICES:-0}"
IFS=',' read -ra GPULIST <<< "$gpu_list"
CHUNKS=${#GPULIST[@]}

pids=()
for IDX in $(seq 0 $((CHUNKS-1))); do
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} python -m llava.eval.model_vqa_loader \
        "${MODEL_ARGS[@]}" \
        --question-file "$EVAL_DIR/gqa/$SPLIT.jsonl" \
        --image-folder "$EVAL_DIR/gqa/data/images" \
        --answers-file "$EVAL_DIR/gqa/answers/$SPLIT/$CKPT/${CHUNKS}_${IDX}.jsonl" \
        --num-chunks "$CHUNKS" \
        --chunk-idx "$IDX" \
        --temperature 0 \
        --conv-mode vicuna_v1 "$@" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

output_file="$EVAL_DIR/gqa/answers/$SPLIT/$CKPT"/merge.jsonl
for IDX in $(seq 0 $((CHUNKS-1))); do
    cat "$EVAL_DIR/gqa/answers/$SPLIT/$CKPT"/${CHUNKS}_${IDX}.jsonl
done > "$output_file.tmp"
mv "$output_file.tmp" "$output_file"

python scripts/convert_gqa_for_eval.py --src "$output_file" --dst "$GQADIR/testdev_balanced_predictions.json"

# eval/eval.py is GQA's official evaluation script (downloaded with the GQA data, not part of this repository)
cd "$GQADIR"
python eval/eval.py --tier testdev_balanced
