"""Smoke tests of the benchmark scripts: a quick run at tiny sizes prints the figures, returns them, writes the doc
and the PNGs to the folder given by --out (never to the repo's docs/); and scripts/gpu_check.sh without a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmarks" / "bench_token_reduction.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(path: Path = SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script()


def test_quick_run_at_tiny_sizes(bench, tmp_path, capsys):
    result = bench.main(["--quick", "--out", str(tmp_path), "--batch-sizes", "1,2", "--dim", "32",
                         "--tower", "tiny", "--images", "48", "--threads", "1"])
    printed = capsys.readouterr().out

    # figures: op vs loop for both modes at each batch size, checked against the loop inside the script
    rows = result["op"]["rows"]
    assert {(r["batch"], r["mode"]) for r in rows} == {(b, m) for b in (1, 2) for m in ("prumerge", "prumerge+")}
    assert all(r["op"]["median"] > 0 and r["loop"]["median"] > 0 and r["speedup"] > 0 for r in rows)
    assert all(r["max_abs_diff"] < 1e-3 for r in rows)
    # the tower: four variants at batch 1; the reduced variants give fewer tokens than the 576 patches
    (entry,) = result["tower"]["batches"]
    assert len(entry["forward"]) == 4
    assert all(1 < c < 576 for mode in ("prumerge", "prumerge+") for c in entry["counts"][mode])
    # kept counts: PruMerge+ keeps more than PruMerge; budgets give exactly K + 1 tokens
    stats = result["kept"]["stats"]
    assert 1 < stats["prumerge"]["mean"] < stats["prumerge+"]["mean"] < 576
    assert [row["prumerge"]["tokens"] for row in result["kept"]["budgets"]] == [65, 129, 193]

    doc = tmp_path / "benchmarks.md"
    assert result["doc"] == doc
    text = doc.read_text()
    for needed in ("## CPU figures", "## GPU figures", "--device cuda --dtype float16", "### 1.", "### 2.", "### 3.",
                   "img/token_reduction_speed.png", "img/token_reduction_kept.png"):
        assert needed in text, needed
    for name in ("token_reduction_speed.png", "token_reduction_kept.png"):
        png = tmp_path / "img" / name
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes left nothing behind
    assert "| B | mode |" in printed and "speed-up" in printed


def test_rerun_keeps_the_other_devices_block(bench, tmp_path):
    doc = tmp_path / "benchmarks.md"
    gpu_block = "<!-- bench:gpu:begin -->\n## GPU figures\n\nfigures from a GPU run\n<!-- bench:gpu:end -->\n"
    bench.write_doc(doc, "gpu", gpu_block)
    with doc.open("a") as fh:  # a section another script (bench_anyres.py) owns
        fh.write("\n<!-- bench:anyres:begin -->\n## LLaVA-1.6\n\nanyres figures\n<!-- bench:anyres:end -->\n")
    bench.write_doc(doc, "cpu", "<!-- bench:cpu:begin -->\n## CPU figures\n\nnew\n<!-- bench:cpu:end -->\n")
    text = doc.read_text()
    assert "figures from a GPU run" in text and "new" in text
    assert text.count("anyres figures") == 1
    assert text.startswith("# Benchmarks")
    assert text.index("## CPU figures") < text.index("## GPU figures")


def test_fp16_on_cpu_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--dtype", "float16"])
    assert "float16" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# bench_end_to_end.py (--smoke: tiny widths at 7B / 13B depths) and scripts/gpu_check.sh
# ---------------------------------------------------------------------------------------------------------------

E2E_SCRIPT = REPO_ROOT / "scripts" / "benchmarks" / "bench_end_to_end.py"
GPU_CHECK = REPO_ROOT / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def e2e():
    return load_script(E2E_SCRIPT)


def _check_smoke_run(result, out):
    rows = {(r["geometry"], r["lm_name"], r["batch"], r["label"]): r for r in result["rows"]}
    assert ("1.5", "tiny-7b", 2, "prumerge") in rows and ("1.6", "tiny-7b", 1, "prumerge K=160") in rows
    text = 87  # text positions per prompt
    assert rows["1.5", "tiny-7b", 1, "none"]["positions"] == 576 + text
    assert rows["1.6", "tiny-7b", 1, "none"]["visual_tokens"] == [2928]  # 576 + 48 x (48 + 1), spatial_unpad
    assert rows["1.5", "tiny-7b", 1, "prumerge K=64"]["visual_tokens"] == [65]
    for r in rows.values():
        assert r["full_layers"] in (32, 40) and r["built_layers"] < r["full_layers"]  # extrapolated
        assert r["kv_bytes"] == r["kv_bytes_analytic"] > 0
        assert r["same_first_token"], r["label"]  # generate's first token = the standalone prefill's
        assert r["ttft"]["median"] > 0 and r["lm"]["median"] > 0 and r["decode_step"]["median"] > 0
        assert r["mode"] == "none" or 1 < max(r["visual_tokens"]) < 576 * r["tiles"]
    evaluation = result["eval"]
    assert set(evaluation["modes"]) == {"none", "prumerge", "prumerge+"} and evaluation["identical"]
    for mode in evaluation["modes"].values():
        assert set(mode["runs"]) == {1, 2} and mode["identical"]
        assert mode["runs"][1]["answers"] == mode["runs"][2]["answers"] and len(mode["runs"][1]["answers"]) == 4
    assert max(evaluation["modes"]["none"]["runs"][1]["visual_tokens"]) == 576
    assert max(evaluation["modes"]["prumerge"]["runs"][1]["visual_tokens"]) < 576
    assert [t["kind"] for t in result["targets"]] == ["speedup", "ttft", "reduction", "eval"]
    doc = (out / "benchmarks.md").read_text()
    assert doc.count("<!-- bench:e2e:begin -->") == 1 and "<!-- bench:e2e_cuda:begin -->" in doc
    for needed in ("### Time to first token", "### Decode and memory", "### Against the published figures",
                   "### Targets", "9.3", "extrapolated"):
        assert needed in doc, needed
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in result["plots"])


def test_end_to_end_smoke_run_keeps_other_sections(e2e, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:cpu:begin -->\nop figures\n<!-- bench:cpu:end -->\n")
    result = e2e.main(["--smoke", "--out", str(tmp_path), "--no-profile", "--save-results",
                       str(tmp_path / "results.json")])
    _check_smoke_run(result, tmp_path)
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "op figures" in text
    # a rerun from the saved figures replaces the section in place
    e2e.main(["--render", str(tmp_path / "results.json"), "--out", str(tmp_path)])
    assert doc.read_text().count("<!-- bench:e2e:begin -->") == 1 and "op figures" in doc.read_text()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_end_to_end_smoke_run_on_cuda(e2e, tmp_path):
    result = e2e.main(["--smoke", "--device", "cuda", "--dtype", "float16", "--lm-layers", "2", "--out",
                       str(tmp_path), "--no-profile"])
    _check_smoke_run(result, tmp_path)
    assert "<!-- bench:e2e_cuda_float16_sdpa:begin -->" in (tmp_path / "benchmarks.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: gpu_check.sh would run")
def test_gpu_check_says_there_is_no_gpu_and_stops(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no nvidia-smi
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "no GPU here" in done.stderr and not done.stdout
    fake = tmp_path / "bin"  # an nvidia-smi that answers, but torch sees no CUDA
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: pretend'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env["PATH"] = f"{fake}:/usr/bin:/bin"
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "torch.cuda.is_available() is False" in done.stderr
