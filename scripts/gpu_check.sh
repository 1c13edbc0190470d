#!/usr/bin/env bash
# One command for the GPU checks, meant to finish in under 5 minutes on one CUDA GPU:
#
#   bash scripts/gpu_check.sh                # from anywhere; .venv/bin/python if there, else python3
#   PYTHON=/path/to/python bash scripts/gpu_check.sh
#
#   1. pytest -m gpu: tests/test_gpu.py and the CUDA smoke run of bench_end_to_end.py (tests/test_bench_scripts.py)
#   2. scripts/benchmarks/bench_token_reduction.py --device cuda --dtype float16 --quick
#        -> the "GPU figures" section of docs/benchmarks.md, docs/img/token_reduction_*_cuda.png
#   3. scripts/benchmarks/bench_end_to_end.py --device cuda --quick, float16 + sdpa, full depth
#        -> section <!-- bench:e2e_cuda_float16_sdpa -->, docs/img/end_to_end_*_cuda_float16.png
#   4. the same in bfloat16 + sdpa, LLaVA-1.5 on Vicuna-7B only, no eval -> e2e_cuda_bfloat16_sdpa
#   5. float16 + flash_attention_2, LLaVA-1.5 on Vicuna-7B only, when flash_attn is installed -> e2e_cuda_float16_...
# scripts/benchmarks/bench_anyres.py has no CUDA mode (its figures are CPU fp32 by design): not run here.
#
# Without a GPU (no nvidia-smi, no device it can see, or a torch without CUDA) it says so and exits 2 at once,
# having run nothing. A step that fails or runs past its limit is reported; the others still run; the exit status
# is then 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "gpu_check: $*" >&2
    exit 2
}

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

command -v nvidia-smi >/dev/null 2>&1 ||
    fail "no GPU here: nvidia-smi is not on PATH (no NVIDIA driver). Nothing was run."
gpus="$(nvidia-smi -L 2>&1)" || fail "nvidia-smi sees no usable GPU: ${gpus:-no output}. Nothing was run."
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    fail "torch.cuda.is_available() is False for $PY (a CPU-only torch build, a driver mismatch, or" \
        "CUDA_VISIBLE_DEVICES hiding the GPU). Nothing was run."
flash=0
if "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("flash_attn") else 1)'; then
    flash=1
fi

echo "gpu_check: $gpus"
failed=()
started=$SECONDS

# step NAME LIMIT_S COMMAND...: run COMMAND under a time limit, record a failure without stopping
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if ((rc != 0)); then
        if ((rc == 124 || rc == 137)); then
            echo "gpu_check: $name ran past its ${limit} s limit" >&2
        else
            echo "gpu_check: $name failed (exit $rc)" >&2
        fi
        failed+=("$name")
    fi
    echo "   $name: $((SECONDS - t0)) s"
}

E2E=scripts/benchmarks/bench_end_to_end.py
step "pytest -m gpu" 60 "$PY" -m pytest -q -m gpu tests
step "bench_token_reduction (cuda, float16, quick)" 60 \
    "$PY" scripts/benchmarks/bench_token_reduction.py --device cuda --dtype float16 --quick
step "bench_end_to_end (cuda, float16, sdpa, quick)" 120 "$PY" $E2E --device cuda --dtype float16 --attn sdpa --quick
step "bench_end_to_end (cuda, bfloat16, sdpa, LLaVA-1.5 7B)" 40 \
    "$PY" $E2E --device cuda --dtype bfloat16 --attn sdpa --quick --geometries 1.5 --lms 7b --skip-eval
if ((flash)); then
    step "bench_end_to_end (cuda, float16, flash_attention_2, LLaVA-1.5 7B)" 40 \
        "$PY" $E2E --device cuda --dtype float16 --attn flash_attention_2 --quick --geometries 1.5 --lms 7b --skip-eval
else
    echo "== flash_attention_2: skipped (flash_attn is not installed: pip install 'llava[flash]' on this machine)"
fi

echo "gpu_check: done in $((SECONDS - started)) s; sections written to docs/benchmarks.md"
if ((${#failed[@]})); then
    printf 'gpu_check: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
