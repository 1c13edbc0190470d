"""Smoke tests of the LLaVA-1.6 documentation scripts: the anyres benchmark's token counting and report, and the
layout figure (``scripts/benchmarks/bench_anyres.py``, ``scripts/docs/draw_anyres_layout.py``), on the tiny 1.6
checkpoint; nothing is written to the repo's docs/."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "scripts" / "benchmarks" / "bench_anyres.py"
DRAW = REPO_ROOT / "scripts" / "docs" / "draw_anyres_layout.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_anyres")


@pytest.fixture(scope="module")
def draw():
    return load_script(DRAW, "draw_anyres_layout")


@pytest.fixture(scope="module")
def image_800x600(bench, demo_image):
    return bench.fit_image(demo_image, (800, 600))


def test_counts_follow_the_upstream_rule(bench, tiny16_checkpoint, image_800x600):
    # 800x600 on the 1.6 pinpoints: the 672x672 canvas keeps the most pixels (scale 0.84 -> 672x504), so a 2x2
    # grid of 336 px tiles = 48x48 patches. The image is wider than the canvas, so unpad keeps int(600 * 48 / 800)
    # rows and all 48 columns; each kept row ends with image_newline; the base tile's 576 patches come first.
    rows, cols = int(600 * 48 / 800), 48
    assert rows == 36
    model, processor = bench.load_model(tiny16_checkpoint, "spatial_unpad")
    assert bench.count_tokens(model, processor, image_800x600, "none") == 576 + rows * (cols + 1)
    reduced = bench.count_tokens(model, processor, image_800x600, "prumerge")
    # at least one base centre and its extra token, plus the extra token of each of the 4 grid tiles
    assert 1 + 1 + 4 <= reduced < 576 + rows * (cols + 1)

    flat, processor = bench.load_model(tiny16_checkpoint, "flat")
    assert bench.count_tokens(flat, processor, image_800x600, "none") == 5 * 576  # 5 tiles concatenated
    # plain PruMerge at --token-budget 640 over 5 tiles: 128 centres + 1 extra token per tile
    assert bench.count_tokens(flat, processor, image_800x600, "prumerge", 640) == 5 * (128 + 1)


def test_report_and_section_rewrite(bench, tmp_path):
    sizes = {"4:3": (800, 600)}
    counts = {
        "sizes": sizes,
        "facts": {"4:3": {"grid": (2, 2), "tiles": 5, "rows": 36, "cols": 48, "height": 48, "width": 48}},
        "counts": {layout: {("4:3", m, b): 100 + i for i, (m, b) in enumerate(bench.SETTINGS)}
                   for layout in bench.LAYOUTS},
    }
    args = Namespace(command="python scripts/benchmarks/bench_anyres.py --quick", quick=True, reduce_calls=3)
    info = {"date": "today", "cpu": "cpu", "torch": "t", "transformers": "tf", "python": "3", "threads": 2}
    section = bench.render_section(args, info, counts, None, bench.PLOT)
    assert section.startswith(bench.BEGIN) and section.rstrip().endswith(bench.END)
    assert "## LLaVA-1.6 (anyres)" in section and "| `prumerge+, budget 160` |" in section

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:cpu:begin -->\nCPU figures\n<!-- bench:cpu:end -->\n")
    bench.write_section(doc, section)
    bench.write_section(doc, section.replace("today", "tomorrow"))  # a re-run replaces its own section only
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "CPU figures" in text
    assert text.count(bench.BEGIN) == 1 and "tomorrow" in text and "today" not in text

    bench.plot_tokens(counts, tmp_path / bench.PLOT)
    assert (tmp_path / bench.PLOT).read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.rglob("*.tmp"))


def test_layout_figure(draw, tiny16_checkpoint, tmp_path, capsys):
    out = tmp_path / "layout.png"
    result = draw.main(["--model-path", str(tiny16_checkpoint), "--budget", "0", "--out", str(out)])
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert set(result["counts"]) == {"prumerge", "prumerge+"}  # --budget 0: no third row
    # the script checked its own count against the model's; here: 800x500 letterboxes a 2x2 grid
    kept = result["layouts"]["prumerge"]
    assert kept.grid == (2, 2) and kept.bounds == (9, 39, 0, 48)  # int(500 * 48 / 800) = 30 rows, 9 cut each side
    summary = kept.summary()
    assert summary["lm_tokens"] == (summary["base_tokens"] + summary["grid_centres"] + summary["newlines"]
                                    + summary["grid_extras"])
    assert "wrote" in capsys.readouterr().out


def test_fit_image_keeps_the_aspect(draw):
    image = Image.new("RGB", (640, 480))
    assert draw.fit_image(image, (800, 500)).size == (800, 500)
    assert draw.fit_image(image, (336, 1008)).size == (336, 1008)
