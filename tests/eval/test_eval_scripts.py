"""scripts/v1_5/eval/*.sh: each parses, names only code that exists, passes the token-reduction settings through,
runs its chunks in parallel and merges them in order; pope.sh runs end to end on the tiny checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "v1_5" / "eval"
BENCHMARKS = ["vqav2", "gqa", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed",
              "llavabench", "mmvet"]
# run after `cd` into the benchmark's data folder; they come with the benchmark's own data, not with this repository
EXTERNAL_TOOLS = {"gqa": {"eval/eval.py"}, "mme": {"calculation.py"}}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_script_parses_and_references_existing_code(name):
    script = SCRIPTS / f"{name}.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    modules = re.findall(r"python -m ([\w.]+)", code)
    files = re.findall(r"python \"?([\w$/{}.-]+\.py)", code)
    assert modules or files
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"{name}.sh runs missing module {module}"
    for file in files:
        if file in EXTERNAL_TOOLS.get(name, ()):
            continue
        path = REPO / file.replace("$REPO_ROOT/", "")
        assert path.is_file(), f"{name}.sh runs missing file {file}"
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/_model_args.sh"' in code  # the shared environment handling
    if "answer_in_chunks " in code:  # the chunked runner passes MODEL_ARGS on (test_shared_chunked_runner)
        assert 'source "$(dirname "${BASH_SOURCE[0]}")/_chunked_answers.sh"' in code
    else:
        assert "\"${MODEL_ARGS[@]}\"" in code


def test_shared_chunked_runner():
    shared = SCRIPTS / "_chunked_answers.sh"
    assert subprocess.run(["bash", "-n", str(shared)]).returncode == 0
    code = shared.read_text()
    assert "\"${MODEL_ARGS[@]}\"" in code
    for module in re.findall(r"python -m ([\w.]+)", code):
        assert importlib.util.find_spec(module) is not None


def test_shared_model_args_pass_the_reduction_flags():
    shared = SCRIPTS / "_model_args.sh"
    assert subprocess.run(["bash", "-n", str(shared)]).returncode == 0
    probe = (f'TOKEN_REDUCTION=prumerge+ TOKEN_BUDGET=64 MODEL_BASE=/b source "{shared}"; '
             'printf "%s|" "${MODEL_ARGS[@]}" "$CKPT"')
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out == "--model-path|liuhaotian/llava-v1.5-13b|--model-base|/b|--token-reduction|prumerge+|--token-budget|64|llava-v1.5-13b|"


FAKE_PYTHON = """#!/bin/bash
# records its calls; as an answering script, writes one line naming its GPU to --answers-file
echo "$CUDA_VISIBLE_DEVICES|$*" >> "$FAKE_LOG"
if [ "$1" = "-m" ]; then
    prev=""
    for arg in "$@"; do
        if [ "$prev" = "--answers-file" ]; then
            mkdir -p "$(dirname "$arg")"
            echo "{\\"gpu\\": \\"$CUDA_VISIBLE_DEVICES\\"}" > "$arg"
        fi
        prev="$arg"
    done
    if [ "${FAKE_FAIL_GPU:-}" = "$CUDA_VISIBLE_DEVICES" ]; then exit 3; fi
fi
exit 0
"""


@pytest.fixture
def fake_python(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return bin_dir


def _run_script(name, env_extra, fake_bin, tmp_path):
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "EVAL_DIR": str(tmp_path / "eval"), "CKPT": "tiny-run", "MODEL_PATH": "/ckpt/llava-v1.5-tiny", **env_extra}
    result = subprocess.run(["bash", str(SCRIPTS / f"{name}.sh")], cwd=REPO, env=env, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_chunked_script_runs_one_chunk_per_gpu_and_merges_in_order(fake_python, tmp_path):
    result, calls = _run_script("vqav2", {"CUDA_VISIBLE_DEVICES": "3,5", "TOKEN_REDUCTION": "prumerge+",
                                          "TOKEN_BUDGET": "64"}, fake_python, tmp_path)
    assert result.returncode == 0, result.stderr
    answering = sorted(c for c in calls if "-m llava.eval.model_vqa_loader" in c)
    assert [c.split("|")[0] for c in answering] == ["3", "5"]
    for idx, call in enumerate(answering):
        args = call.split("|")[1]
        assert "--model-path /ckpt/llava-v1.5-tiny --token-reduction prumerge+ --token-budget 64" in args
        assert f"--num-chunks 2 --chunk-idx {idx}" in args and "--temperature 0 --conv-mode vicuna_v1" in args
        assert f"answers/llava_vqav2_mscoco_test-dev2015/tiny-run/2_{idx}.jsonl" in args
    merged = tmp_path / "eval" / "vqav2" / "answers" / "llava_vqav2_mscoco_test-dev2015" / "tiny-run" / "merge.jsonl"
    assert [json.loads(x)["gpu"] for x in merged.read_text().splitlines()] == ["3", "5"]
    assert calls[-1].endswith(f"scripts/convert_vqav2_for_submission.py --dir {tmp_path}/eval/vqav2 "
                              "--split llava_vqav2_mscoco_test-dev2015 --ckpt tiny-run")


def test_chunked_script_stops_before_merging_when_a_chunk_fails(fake_python, tmp_path):
    result, calls = _run_script("seed", {"CUDA_VISIBLE_DEVICES": "0,1", "FAKE_FAIL_GPU": "1"}, fake_python, tmp_path)
    assert result.returncode == 3
    assert not (tmp_path / "eval" / "seed_bench" / "answers" / "tiny-run" / "merge.jsonl").exists()
    assert not any("convert_seed_for_submission" in c for c in calls)
    # no reduction flags unless asked for
    assert all("--token-reduction" not in c and "--token-budget" not in c for c in calls)


def test_pope_script_end_to_end_on_the_tiny_checkpoint(tiny_checkpoint, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(REPO / "playground" / "data" / "eval" / "pope", eval_dir / "pope")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "EVAL_DIR": str(eval_dir),
           "MODEL_PATH": str(tiny_checkpoint), "CKPT": "tiny", "TOKEN_REDUCTION": "none"}
    result = subprocess.run(["bash", str(SCRIPTS / "pope.sh"), "--device", "cpu", "--max_new_tokens", "2",
                             "--num-workers", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "token reduction: none" in result.stderr
    assert "Category: adversarial, # samples: 2" in result.stdout
    assert "Category: random, # samples: 2" in result.stdout
    rows = [json.loads(x) for x in (eval_dir / "pope" / "answers" / "tiny.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    assert all(r["metadata"] == {"visual_tokens": [576], "token_reduction": "none"} for r in rows)
