"""Smoke test of the benchmark script: a quick run at tiny sizes prints the figures, returns them, writes the doc
and the PNGs to the folder given by --out (never to the repo's docs/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmarks" / "bench_token_reduction.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_token_reduction", SCRIPT)
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
