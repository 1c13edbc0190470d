# Sourced by the chunked benchmark scripts (vqav2, gqa, seed); needs MODEL_ARGS from _model_args.sh.
#
#   answer_in_chunks QUESTION_FILE IMAGE_FOLDER ANSWER_DIR [extra args for model_vqa_loader...]
#
# Runs llava.eval.model_vqa_loader once per visible GPU (CUDA_VISIBLE_DEVICES, default 0), in parallel, each on its
# chunk, writing ANSWER_DIR/<chunks>_<idx>.jsonl; waits for every chunk (under `set -e` a failed chunk stops the
# calling script before merging); then concatenates the chunks in order into ANSWER_DIR/merge.jsonl through a
# temporary file. Sets `output_file` to that merge.jsonl.
answer_in_chunks() {
    local question_file="$1" image_folder="$2" answer_dir="$3"
    shift 3
    local gpu_list="${CUDA_VISIBLE_DEVICES:-0}"
    local -a gpus pids=()
    IFS=',' read -ra gpus <<< "$gpu_list"
    local chunks=${#gpus[@]} idx pid

    for idx in $(seq 0 $((chunks-1))); do
        CUDA_VISIBLE_DEVICES=${gpus[$idx]} python -m llava.eval.model_vqa_loader \
            "${MODEL_ARGS[@]}" \
            --question-file "$question_file" \
            --image-folder "$image_folder" \
            --answers-file "$answer_dir/${chunks}_${idx}.jsonl" \
            --num-chunks "$chunks" \
            --chunk-idx "$idx" \
            --temperature 0 \
            --conv-mode vicuna_v1 "$@" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done

    output_file="$answer_dir/merge.jsonl"
    for idx in $(seq 0 $((chunks-1))); do
        cat "$answer_dir/${chunks}_${idx}.jsonl"
    done > "$output_file.tmp"
    mv "$output_file.tmp" "$output_file"
}
