#!/usr/bin/env python
"""Benchmark LLaVA-1.6 (anyres) visual tokens and tower time; write the "LLaVA-1.6 (anyres)" section of
``docs/benchmarks.md`` and its plot ``docs/img/anyres_tokens.png``.

    python scripts/benchmarks/bench_anyres.py             # full run, CPU fp32, 2 threads (~6 min on 2 busy cores)
    python scripts/benchmarks/bench_anyres.py --quick     # one timed forward, no end-to-end rows (~1.5 min)

Two measurements:

1. **Visual tokens per image** the language model reads (``model.last_visual_token_counts`` after
   ``prepare_inputs_labels_for_multimodal``), for ``assets/demo.png`` cropped and resized to several aspect ratios,
   with no reduction, adaptive ``prumerge`` / ``prumerge+`` and ``--token-budget`` 640 / 320 / 160 (the budget is
   the image's total of centres, split over its tiles by ``split_budget``). Once in the released
   ``spatial_unpad`` layout, once in the peers' ``flat`` one (``overwrite_config={"mm_patch_merge_type": "flat"}``).
   The model is the tiny LLaVA-1.6 checkpoint (``make_tiny_checkpoint --layout v1.6``, built in a temporary folder
   unless ``--model-path`` names one): real 336 px / patch 14 tiles and 1.6 pinpoints, a random CLIP whose CLS
   attention is calibrated to a realistic spread. A random *full-size* CLIP attends almost uniformly, so its counts
   would say nothing; the tiny one's say how the layout adds up, not what a trained CLIP keeps.
2. **Time for one image's tiles** (a 672x672 image: base + 2x2 grid = 5 tiles) through a full-size random CLIP
   ViT-L/14-336 (303 M parameters) on this CPU: the 23-layer tower, the reduction alone on its hidden states,
   the layout alone, and (full runs) ``encode`` end to end with each mode.

The section sits between ``<!-- bench:anyres:begin -->`` / ``<!-- bench:anyres:end -->``; a run replaces it (or
appends it) and keeps the rest of the file. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable from a clean clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the token-reduction benchmark beside this script

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bench_files import replace_section, save_figure, write_text_atomic  # noqa: E402
from bench_timing import summary_ms, time_calls  # noqa: E402
from bench_token_reduction import TOWER_SIZES, build_tower, calibrate  # noqa: E402
from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.mm_utils import get_anyres_image_grid_shape, process_images  # noqa: E402
from llava.model.anyres_layout import layout_anyres_image, unpad_bounds  # noqa: E402
from llava.model.token_reduction import TokenReduction, split_budget  # noqa: E402
from token_reduction_report import fmt_ms, machine_info, md_table  # noqa: E402

SCRIPT = "scripts/benchmarks/bench_anyres.py"
DEMO_IMAGE = REPO_ROOT / "assets" / "demo.png"
#: label -> (width, height) of the image fed to process_images
SIZES = {"1:1": (672, 672), "3:1": (1008, 336), "1:3": (336, 1008), "4:3": (800, 600)}
BUDGETS = (640, 320, 160)
#: (mode, --token-budget) in table order
SETTINGS = ([("none", None), ("prumerge", None), ("prumerge+", None)]
            + [(mode, k) for mode in ("prumerge", "prumerge+") for k in BUDGETS])
LAYOUTS = ("spatial_unpad", "flat")
TIMING_IMAGE = (672, 672)  # base + 2x2 grid: 5 tiles
N_PATCHES = 576  # per tile: (336 / 14) ** 2
CLS_LOGIT_STD = 1.5  # the tiny checkpoint's calibration (make_tiny_checkpoint.calibrate_cls_attention)
BEGIN, END = "<!-- bench:anyres:begin -->", "<!-- bench:anyres:end -->"
PLOT = "img/anyres_tokens.png"


def setting_label(mode: str, budget: int | None) -> str:
    return mode if budget is None else f"{mode}, budget {budget}"


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop ``image`` to the aspect of ``size`` (width, height), then resize to it (no distortion)."""
    width, height = image.size
    target = size[0] / size[1]
    if width / height > target:
        new_width = round(height * target)
        left = (width - new_width) // 2
        image = image.crop((left, 0, left + new_width, height))
    else:
        new_height = round(width / target)
        top = (height - new_height) // 2
        image = image.crop((0, top, width, top + new_height))
    return image.resize(size, Image.BICUBIC)


# ----------------------------------------------------------------------------------------------------------------
# 1. tokens per image
# ----------------------------------------------------------------------------------------------------------------


def load_model(model_path: Path, merge_type: str):
    """``load_pretrained_model`` on CPU fp32 with ``mm_patch_merge_type`` set to ``merge_type``."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    _, model, image_processor, _ = load_pretrained_model(
        str(model_path), None, get_model_name_from_path(str(model_path)), device="cpu", token_reduction="none",
        overwrite_config={"mm_patch_merge_type": merge_type})
    return model, image_processor


def count_tokens(model, image_processor, image: Image.Image, mode: str, budget: int | None = None,
                 pixels=None) -> int:
    """Visual tokens the LM reads for ``image`` with ``mode`` / ``--token-budget budget``: what
    ``model.last_visual_token_counts`` holds after the model spliced the image into a one-token prompt.
    ``pixels``: ``process_images([image], ...)`` when already computed."""
    model.get_vision_tower().set_token_reduction(TokenReduction(mode, budget, source="flag"))
    if pixels is None:
        pixels = process_images([image], image_processor, model.config)
    input_ids = torch.tensor([[1, IMAGE_TOKEN_INDEX]])
    with torch.inference_mode():
        model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, pixels, image_sizes=[image.size])
    return int(model.last_visual_token_counts[0])


def grid_facts(config, size: tuple[int, int], tile_px: int = 336, side: int = 24) -> dict:
    """Tiles, grid shape and the unpadded grid (rows x cols of patches) of an image of ``size``."""
    nw, nh = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, tile_px)
    r0, r1, c0, c1 = unpad_bounds(nh * side, nw * side, size)
    return {"grid": (nw, nh), "tiles": 1 + nw * nh, "rows": r1 - r0, "cols": c1 - c0, "height": nh * side,
            "width": nw * side}


def bench_counts(model_path: Path, sizes: dict, image_file: Path) -> dict:
    source = Image.open(image_file).convert("RGB")
    images = {label: fit_image(source, size) for label, size in sizes.items()}
    counts = {layout: {} for layout in LAYOUTS}
    facts = {}
    steps = len(LAYOUTS) * len(sizes) * len(SETTINGS)
    with tqdm(total=steps, desc="1/2 tokens per image (tiny 1.6 checkpoint)", file=sys.stderr) as bar:
        for layout in LAYOUTS:
            model, image_processor = load_model(model_path, layout)
            for label, image in images.items():
                facts[label] = grid_facts(model.config, image.size)
                pixels = process_images([image], image_processor, model.config)
                for mode, budget in SETTINGS:
                    bar.set_postfix_str(f"{layout}, {label}, {setting_label(mode, budget)}")
                    counts[layout][(label, mode, budget)] = count_tokens(model, image_processor, image, mode, budget,
                                                                         pixels)
                    bar.update()
            del model
    return {"counts": counts, "facts": facts, "sizes": dict(sizes)}


# ----------------------------------------------------------------------------------------------------------------
# 2. time for one image's tiles, full-size CLIP
# ----------------------------------------------------------------------------------------------------------------


def anyres_tiles(image_processor, size: tuple[int, int], pinpoints) -> torch.Tensor:
    """``[T, 3, 336, 336]``: the demo image at ``size`` tiled by ``process_images`` as a 1.6 model tiles it."""
    image = fit_image(Image.open(DEMO_IMAGE).convert("RGB"), size)
    config = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=pinpoints)
    return process_images([image], image_processor, config)[0]


def bench_timing(args) -> dict:
    from llava.tools.make_tiny_checkpoint import V16_GRID_PINPOINTS

    device, dtype = torch.device("cpu"), torch.float32
    results = {"size": args.tower, "image": TIMING_IMAGE}
    with tempfile.TemporaryDirectory(prefix="bench_anyres_clip_") as tmp, torch.inference_mode():
        t0 = time.perf_counter()
        tower = build_tower(args.tower, Path(tmp), args.seed, device, dtype)
        results["build_s"] = time.perf_counter() - t0
        results["params_m"] = sum(p.numel() for p in tower.vision_tower.parameters()) / 1e6
        results["layers"] = (tower.num_layers_to_run, tower.config.num_hidden_layers)
        results["attn_implementation"] = tower.vision_tower.config._attn_implementation
        tiles = anyres_tiles(tower.image_processor, TIMING_IMAGE, V16_GRID_PINPOINTS)
        results["tiles"] = tiles.shape[0]
        grid = get_anyres_image_grid_shape(TIMING_IMAGE, V16_GRID_PINPOINTS, 336)
        side = tower.num_patches_per_side
        newline = torch.randn(tower.hidden_size, generator=torch.Generator().manual_seed(args.seed))

        def encode(mode):
            def run():
                tower.set_token_reduction(TokenReduction(mode))
                return tower.encode(tiles)
            return run

        forwards = ["none"] + ([] if args.quick else ["prumerge", "prumerge+"])
        total = (0 if args.quick else 1) + args.rounds * len(forwards) + 2
        bar = tqdm(total=total, desc=f"2/2 {args.tower} tower, {tiles.shape[0]} tiles", file=sys.stderr)
        times = {name: [] for name in forwards}
        if not args.quick:  # the warm-up forward
            bar.set_postfix_str("warm-up")
            encode("none")()
            bar.update()
        hidden = None
        reductions = {setting_label(m, b): (m, b) for m, b in (("prumerge", None), ("prumerge+", None),
                                                                ("prumerge", 640), ("prumerge+", 640))}
        reduce_times = {label: [] for label in reductions}

        def reduce_with(mode, budget):
            tower.set_token_reduction(TokenReduction(mode, budget))
            return tower.reduce(hidden, split_budget(budget, tiles.shape[0]))

        for r in range(args.rounds):
            for name in forwards[r % len(forwards):] + forwards[: r % len(forwards)]:
                bar.set_postfix_str(f"round {r + 1}, encode {name}")
                times[name] += time_calls(encode(name), device, 1, warmup=0)
                bar.update()
                if name != "none":
                    continue
                if hidden is None:
                    hidden = tower.selected_hidden_states(tiles)  # [T, 1+N, C]
                    results["scale"] = calibrate(tower, hidden, CLS_LOGIT_STD)
                    for mode, budget in reductions.values():
                        time_calls(lambda: reduce_with(mode, budget), device, 0, warmup=2, warmup_s=0.3)
                for label, (mode, budget) in reductions.items():  # right after a forward: the same load
                    reduce_times[label] += time_calls(lambda: reduce_with(mode, budget), device, args.reduce_calls,
                                                      warmup=0)
        bar.set_postfix_str("layout")
        results["kept_tokens"] = {label: [t.shape[0] for t in reduce_with(m, b).tokens]
                                  for label, (m, b) in reductions.items()}
        layout_times, layout_tokens = {}, {}
        for label, mode in (("none", "none"), ("prumerge+", "prumerge+")):
            if mode == "none":
                tokens, kept = list(tower.feature_select(hidden)), None
            else:
                out = reduce_with(mode, None)
                tokens, kept = out.tokens, out.kept

            def lay_out():
                return layout_anyres_image(tokens, kept, merge_type="spatial_unpad", patches_per_side=side,
                                           grid_shape=grid, image_size=TIMING_IMAGE, image_newline=newline)

            layout_tokens[label] = lay_out().shape[0]
            layout_times[label] = time_calls(lay_out, device, 5 * args.reduce_calls, warmup=3)
            bar.update()
        bar.close()
    results["forward"] = {name: summary_ms(t) for name, t in times.items()}
    results["reduce"] = {label: summary_ms(t) for label, t in reduce_times.items()}
    results["layout"] = {label: summary_ms(t) for label, t in layout_times.items()}
    results["layout_tokens"] = layout_tokens
    results["rounds"] = args.rounds
    results["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return results


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def plot_tokens(counts: dict, path: Path) -> None:
    """Grouped bars: tokens per image by setting, one bar per aspect ratio, one panel per layout (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = counts["sizes"]
    fig, axes = plt.subplots(1, len(LAYOUTS), figsize=(15, 4.8), sharey=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    xs = np.arange(len(SETTINGS))
    width = 0.8 / len(sizes)
    for ax, layout in zip(axes, LAYOUTS):
        for i, (label, size) in enumerate(sizes.items()):
            values = [counts["counts"][layout][(label, m, b)] for m, b in SETTINGS]
            tiles = counts["facts"][label]["tiles"]
            ax.bar(xs + (i - (len(sizes) - 1) / 2) * width, values, width, color=colours[i % len(colours)],
                   label=f"{_size_name(label, size)}, {tiles} tiles")
        ax.axhline(576, color="grey", linestyle=":", linewidth=1, label="576: one LLaVA-1.5 image (one tile)")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([setting_label(m, b).replace(", budget ", "\nK=") for m, b in SETTINGS], fontsize=7.5)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.set_title(f"{layout}" + (" (released 1.6 layout: unpad + newlines)" if layout == "spatial_unpad"
                                    else " (peers: tiles concatenated)"), fontsize=10)
    axes[0].set_ylabel("visual tokens per image (LM input)")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("LLaVA-1.6 visual tokens per image: tiny 1.6 checkpoint (calibrated random CLIP), assets/demo.png "
                 "cropped to each aspect", fontsize=10)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _size_name(label: str, size: tuple[int, int]) -> str:
    plain = f"{size[0]}x{size[1]}"
    return plain if label == plain else f"{label} {plain}"


def _counts_table(counts: dict, layout: str) -> str:
    sizes, facts = counts["sizes"], counts["facts"]
    header = ["setting"] + [_size_name(label, size) for label, size in sizes.items()]
    rows = []
    for mode, budget in SETTINGS:
        cells = []
        for label in sizes:
            value = counts["counts"][layout][(label, mode, budget)]
            tiles = facts[label]["tiles"]
            cells.append(f"**{value}**" if mode == "none" else f"{value} ({100.0 * value / (tiles * 576):.0f} %)")
        rows.append([f"`{setting_label(mode, budget)}`"] + cells)
    return md_table(header, rows)


def render_section(args, info: dict, counts: dict, timing: dict | None, image: str) -> str:
    sizes, facts = counts["sizes"], counts["facts"]
    out = [BEGIN, "## LLaVA-1.6 (anyres)", ""]
    out += [
        f"Written by `{SCRIPT}` (this section only; re-running it replaces this section and keeps the rest of "
        "the file).", "",
        f"- date: {info['date']}", f"- CPU: {info['cpu']}",
        f"- torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}; "
        f"`torch.set_num_threads({info['threads']})`; device cpu, dtype float32",
    ]
    if "load" in info:
        out.append(f"- load average when the run started: {info['load']} (the cores are shared with other jobs)")
    out += [f"- reproduce: `{args.command}`" + (" (quick mode: one timed forward, no end-to-end rows)"
                                               if args.quick else ""), ""]

    out += ["### Visual tokens per image", ""]
    grids = "; ".join(
        f"{_size_name(label, (w, h))}: {facts[label]['grid'][0]}x{facts[label]['grid'][1]} grid on a "
        f"{facts[label]['width'] * 14}x{facts[label]['height'] * 14} canvas, {facts[label]['tiles']} tiles, "
        f"unpadded grid {facts[label]['rows']}x{facts[label]['cols']} patches"
        for label, (w, h) in sizes.items())
    out += [
        "What the language model reads for one image (`model.last_visual_token_counts` after "
        "`prepare_inputs_labels_for_multimodal`), `assets/demo.png` centre-cropped to each aspect and resized. "
        f"{grids}. Percentages are of the patches the tower encoded (tiles x 576). `budget K` is `--token-budget K`: "
        "K centres for the whole image, split evenly over its tiles (`split_budget`, remainder to the base tile); "
        "each tile adds its extra token.", "",
        "**Where the counts come from.** The tiny LLaVA-1.6 checkpoint (`make_tiny_checkpoint --layout v1.6`: real "
        "336 px / patch 14 tiles, the released `image_grid_pinpoints`, a random tiny CLIP whose last-layer "
        "`q_proj` is scaled so the CLS logits have std 1.5). A random *full-size* CLIP attends almost uniformly "
        "and would keep next to nothing, so the full-size tower below is used for time only. The adaptive counts "
        "therefore show how the layout adds up, not what a trained CLIP ViT-L keeps (~32 / ~144 per 336 px tile on "
        "LLaVA-1.5 images); the `none` and budget rows depend on the layout rule alone, apart from which centres "
        "land in the padding.", "",
        "`spatial_unpad` (the released 1.6 layout, what this project runs): base tile, then the stitched grid with "
        "the letterbox padding cut off and an `image_newline` after every row that keeps a token, then one extra "
        "token per grid tile. Without reduction that is 576 + rows x (cols + 1).", "",
        _counts_table(counts, "spatial_unpad"),
        "`flat` (`overwrite_config={\"mm_patch_merge_type\": \"flat\"}`, the convention of the papers that prune "
        "LLaVA-1.6 per tile): the tiles' tokens concatenated, no unpadding, no newlines: tiles x 576 without "
        "reduction; with a budget, `prumerge` gives exactly K + tiles, `prumerge+` the published fixed-count rule "
        "per tile (top int(N r) plus a raster of stride int(1/r), r = K_tile / 2N), exactly K_tile centres when "
        "1/r is an integer (K_tile = 64, 128, 144, 192), a few more otherwise (K_tile = 160: 80 + 82; 80: 40 + 41).",
        "",
        _counts_table(counts, "flat"),
        f"![tokens per image]({image})", "",
        "Reading the two tables: for the same centres, `spatial_unpad` = `flat` - the centres that lie in the "
        "cut-off padding + one newline per grid row that keeps a centre (+ nothing for rows that keep none). An "
        "image that fills its canvas (1:1, 3:1, 1:3 here) loses nothing, so it gets its `flat` count plus at most "
        "one newline per grid row; a letterboxed one (4:3: a 2x2 grid of 48 rows of which 36 show the image) "
        "loses every centre kept in the black bars, and with this tiny CLIP the uniform black patches draw much "
        "of the CLS attention, so its grid centres are mostly there: `--token-budget K` then yields far fewer "
        "than K tokens. `docs/img/anyres_layout.png` (`scripts/docs/draw_anyres_layout.py`) shows it tile by tile.",
        "",
    ]

    out += ["### Tower + reduction time, one image", ""]
    if timing is None:
        out += ["Skipped in this run (`--skip-timing`).", ""]
    else:
        fwd = timing["forward"]["none"]
        w, h = timing["image"]
        size_words = "full size" if timing["size"] == "vit-l-336" else "tiny smoke-test widths"
        out += [
            f"A {w}x{h} image: base + 2x2 grid = {timing['tiles']} tiles `[{timing['tiles']}, 3, 336, 336]` in one "
            f"`CLIPVisionTower.encode` call. CLIP ViT-L/14-336 geometry ({size_words}: "
            f"{timing['params_m']:.0f} M parameters, {timing['layers'][1]} layers of which {timing['layers'][0]} run), "
            f"**random weights** (time does not depend on them), float32, attention "
            f"`{timing['attn_implementation']}`, `torch.inference_mode()`, the demo image's real tiles as pixels. "
            f"The layer after the selected one has its `q_proj` scaled (x{timing.get('scale', float('nan')):.3g}) "
            f"so the CLS logits have std {CLS_LOGIT_STD}, as in the tiny checkpoint, so the reduction does a "
            "realistic amount of work (tokens per tile in the last column). "
            + ("Quick mode: one forward, with no warm-up. " if args.quick else
               f"One warm-up forward, then {timing['rounds']} rounds of the forwards (order rotated). ")
            + f"Reduction and layout are timed alone ({args.reduce_calls} calls right after every `none` forward; "
            "the layout 5x that), on the forward's hidden states; % is of the `none` forward's median.", "",
        ]
        rows = [["`encode`, none: 23 layers x 5 tiles", fmt_ms(fwd), fwd["n"], "100 %", "576 x 5"]]
        for label, stats in timing["reduce"].items():
            tokens = "/".join(str(t) for t in timing["kept_tokens"][label])
            rows.append([f"`reduce` alone: {label}", fmt_ms(stats), stats["n"],
                         f"{100.0 * stats['median'] / fwd['median']:.2f} %", tokens])
        for label, stats in timing["layout"].items():
            rows.append([f"`layout_anyres_image` alone, spatial_unpad: {label}", fmt_ms(stats), stats["n"],
                         f"{100.0 * stats['median'] / fwd['median']:.3f} %",
                         f"{timing['layout_tokens'][label]} in all"])
        for name, stats in timing["forward"].items():
            if name == "none":
                continue
            rows.append([f"`encode` end to end, {name}", fmt_ms(stats), stats["n"],
                         f"{100.0 * stats['median'] / fwd['median']:.1f} %", "see `reduce` row"])
        out += [md_table(["step", "ms (min-max)", "calls", "% of none", "tokens per tile"], rows)]
        worst = max(100.0 * st["median"] / fwd["median"] for st in timing["reduce"].values())
        out += [
            f"Per tile that is {fwd['median'] / timing['tiles'] / 1e3:.2f} s: the tower's time grows with the tile "
            f"count (5 tiles for this image, 4 for 3:1 or 1:3, 1 for LLaVA-1.5), and the reduction alone adds at "
            f"most {worst:.2f} % of the forward. "
            + ("" if args.quick else
               "The end-to-end rows are two forwards each on shared cores: their difference from `none` is mostly "
               "load from other jobs (the `reduce` rows give the reduction's own cost). ")
            + ("A tile with 576 `prumerge+` tokens is one whose IQR count c is above 96 (N / c < 6) for "
               "PruMerge+'s raster stride int(int(N / c) / 3) to fall to 1: every patch becomes a centre and there is "
               "no extra token. " if N_PATCHES in timing["kept_tokens"].get("prumerge+", []) else "")
            + (f"1-minute load average after the timing: {timing['load_after']:.2f}." if timing.get("load_after")
               is not None else ""), "",
        ]
    out.append(END)
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the anyres section of ``path`` (or append it), keeping everything else; atomically."""
    write_text_atomic(path, replace_section(path.read_text() if path.exists() else "", "anyres", section))


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _sizes(text: str) -> dict:
    sizes = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT[,WIDTHxHEIGHT...], got {item!r}") from None
        if width < 1 or height < 1:
            raise argparse.ArgumentTypeError(f"expected positive sizes, got {item!r}")
        sizes[item] = (width, height)
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one timed forward and no end-to-end rows (~1.5 min on CPU)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs",
                   help="folder for benchmarks.md and img/anyres_tokens.png (default: the repo's docs/)")
    p.add_argument("--model-path", type=Path, default=None,
                   help="a tiny LLaVA-1.6 checkpoint folder (default: build one in a temporary folder)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="image sizes for the token counts (default 672x672,1008x336,336x1008,800x600)")
    p.add_argument("--tower", choices=sorted(TOWER_SIZES), default="vit-l-336",
                   help="tower for the timing: vit-l-336 (full size) or tiny (smoke tests)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds of the forwards (default 2; --quick 1)")
    p.add_argument("--skip-timing", action="store_true", help="token counts only")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.model_path is not None and not (args.model_path / "config.json").is_file():
        p.error(f"--model-path {args.model_path}: no config.json there")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.sizes = args.sizes or dict(SIZES)
    args.reduce_calls = 3 if args.quick else 5
    shown = list(argv) if argv is not None else sys.argv[1:]
    args.command = " ".join(["python", SCRIPT] + [shlex.quote(a) for a in shown])
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"), torch.float32, args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_anyres_") as tmp:
        model_path = args.model_path
        if model_path is None:
            from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

            model_path = make_tiny_checkpoint(tmp, layout="v1.6")
        counts = bench_counts(model_path, args.sizes, DEMO_IMAGE)
    timing = None if args.skip_timing else bench_timing(args)

    plot_tokens(counts, args.out / PLOT)
    section = render_section(args, info, counts, timing, PLOT)
    doc = args.out / "benchmarks.md"
    write_section(doc, section)
    elapsed = time.perf_counter() - started
    print(section)
    print(f"wrote {doc} and {args.out / PLOT} in {elapsed:.0f} s")
    return {"info": info, "counts": counts, "timing": timing, "doc": doc, "plot": args.out / PLOT,
            "elapsed_s": elapsed}


if __name__ == "__main__":
    main()
