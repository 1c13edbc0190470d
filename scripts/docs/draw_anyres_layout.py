#!/usr/bin/env python
"""Draw where PruMerge / PruMerge+ put one LLaVA-1.6 (anyres) image's visual tokens: ``docs/img/anyres_layout.png``.

    python scripts/docs/draw_anyres_layout.py                  # builds the tiny 1.6 checkpoint in a temporary folder
    python scripts/docs/draw_anyres_layout.py --model-path DIR --image photo.jpg --size 800x500 --out fig.png

The image (default ``assets/demo.png``, centre-cropped to the aspect of ``--size`` and resized to it, 800x500: a
letterboxed 2x2 grid, so unpadding shows) goes through the public path a LLaVA-1.6 model uses: ``process_images``
(base tile + grid tiles), ``CLIPVisionTower.encode(tiles, split_budget(...)).kept`` (each tile reduced on its own
CLS attention), ``get_anyres_image_grid_shape`` and ``unpad_bounds``. The figure shows, for ``prumerge``,
``prumerge+`` (adaptive) and ``prumerge+ --token-budget 640``, the kept centres on the base tile and on the
stitched tile grid, the letterbox padding that ``spatial_unpad`` cuts off (centres there are dropped), and the
rows that end with ``image_newline``.

The token count drawn is worked out here from the kept indices alone (centres inside the unpadded grid, one
newline per row that keeps a centre, one extra token per tile) and checked against what the model itself lays out
(``model.last_visual_token_counts`` after ``prepare_inputs_labels_for_multimodal``); a mismatch is an error.
The tiny checkpoint's CLIP is random (its CLS attention calibrated to a realistic spread), so *which* patches are
kept says nothing about a trained CLIP; *where* kept tokens go is exactly what the real models get.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable from a clean clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts" / "benchmarks"))  # bench_anyres's fit_image crops the same way

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.mm_utils import get_anyres_image_grid_shape, process_images, resize_and_pad_image  # noqa: E402
from llava.model.anyres_layout import unpad_bounds  # noqa: E402
from llava.model.token_reduction import TokenReduction, split_budget  # noqa: E402
from bench_anyres import fit_image  # noqa: E402

DEFAULT_IMAGE = REPO_ROOT / "assets" / "demo.png"
DEFAULT_OUT = REPO_ROOT / "docs" / "img" / "anyres_layout.png"
#: the figure's rows: (mode, --token-budget); the third row's budget is --budget
ROWS = (("prumerge", None), ("prumerge+", None), ("prumerge+", 640))


@dataclass(frozen=True)
class AnyresKept:
    """One image's reduced tiles, in the coordinates the layout uses.

    Attributes:
        size: the image's original ``(width, height)``.
        grid: ``(nw, nh)`` grid tiles across and down.
        side: patches per tile side (24 for CLIP ViT-L/14-336).
        bounds: ``(r0, r1, c0, c1)``: the stitched grid's rows and columns that show the image (``unpad_bounds``).
        kept: per tile (base first), the centres' patch indices ``[M_t]`` (numpy).
        extras: per tile, how many extra tokens follow its centres (1, or 0 when every patch is a centre).
    """

    size: tuple[int, int]
    grid: tuple[int, int]
    side: int
    bounds: tuple[int, int, int, int]
    kept: list[np.ndarray]
    extras: list[int]

    def grid_positions(self, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """Stitched-grid ``(rows, cols)`` of grid tile ``tile`` (1-based: tile 1 is the top-left grid tile)."""
        tile_row, tile_col = divmod(tile - 1, self.grid[0])
        k = self.kept[tile]
        return tile_row * self.side + k // self.side, tile_col * self.side + k % self.side

    def inside(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r0, r1, c0, c1 = self.bounds
        return (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)

    def summary(self) -> dict:
        """Counts of the spatial_unpad layout, from the kept indices alone."""
        r0, r1, c0, c1 = self.bounds
        inside = dropped = grid_extras = 0
        rows_with_tokens: set[int] = set()
        for tile in range(1, len(self.kept)):
            rows, cols = self.grid_positions(tile)
            keep = self.inside(rows, cols)
            inside += int(keep.sum())
            dropped += int((~keep).sum())
            rows_with_tokens.update(int(r) for r in rows[keep])
            tile_row, tile_col = divmod(tile - 1, self.grid[0])
            side = self.side
            overlaps = (tile_row * side < r1 and (tile_row + 1) * side > r0
                        and tile_col * side < c1 and (tile_col + 1) * side > c0)
            grid_extras += self.extras[tile] if overlaps else 0
        base = len(self.kept[0]) + self.extras[0]
        return {
            "base_centres": len(self.kept[0]), "base_tokens": base, "grid_centres": inside, "dropped": dropped,
            "newlines": len(rows_with_tokens), "empty_rows": (r1 - r0) - len(rows_with_tokens),
            "grid_extras": grid_extras, "rows_with_tokens": sorted(rows_with_tokens),
            "lm_tokens": base + inside + len(rows_with_tokens) + grid_extras,
        }


def kept_on_tiles(model, image_processor, image: Image.Image, mode: str, budget: int | None = None) -> AnyresKept:
    """Run the model's tower on ``image``'s anyres tiles with ``mode`` (and ``--token-budget`` ``budget``)."""
    config = model.config
    tower = model.get_vision_tower()
    tower.set_token_reduction(TokenReduction(mode, budget, source="flag"))
    tiles = process_images([image], image_processor, config)[0]  # [T, 3, 336, 336]
    grid = get_anyres_image_grid_shape(image.size, config.image_grid_pinpoints, tower.config.image_size)
    side = tower.num_patches_per_side
    with torch.inference_mode():
        out = tower.encode(tiles, split_budget(budget, tiles.shape[0]))
    return AnyresKept(
        size=image.size, grid=grid, side=side, bounds=unpad_bounds(grid[1] * side, grid[0] * side, image.size),
        kept=[k.cpu().numpy() for k in out.kept],
        extras=[int(t.shape[0] - k.numel()) for t, k in zip(out.tokens, out.kept)],
    )


def model_token_count(model, image_processor, image: Image.Image) -> int:
    """The visual tokens the model itself splices for ``image`` with its current setting (one image)."""
    pixels = process_images([image], image_processor, model.config)
    input_ids = torch.tensor([[1, IMAGE_TOKEN_INDEX]])
    with torch.inference_mode():
        model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, pixels, image_sizes=[image.size])
    return int(model.last_visual_token_counts[0])


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------

KEPT_EDGE = "#ff7f0e"
DROPPED = "#7f7f7f"
NEWLINE = "#9467bd"
VEIL = (1.0, 1.0, 1.0, 0.62)


def _veil(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """RGBA ``[H, W, 4]`` over the patch grid: a white veil everywhere but the kept patches."""
    overlay = np.empty(shape + (4,))
    overlay[:] = VEIL
    overlay[rows, cols, 3] = 0.0
    return overlay


def _outline(ax, rows, cols, colour, fill: bool = False) -> None:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    boxes = [Rectangle((c + 0.06, r + 0.06), 0.88, 0.88) for r, c in zip(rows, cols)]
    ax.add_collection(PatchCollection(boxes, facecolor=colour if fill else "none", edgecolor=colour,
                                      linewidth=0.7, alpha=0.9))


def _tile_lines(ax, across: int, down: int, side: int) -> None:
    for i in range(1, across):
        ax.axvline(i * side, color="white", linewidth=1.6)
    for j in range(1, down):
        ax.axhline(j * side, color="white", linewidth=1.6)


def _draw_base(ax, image: Image.Image, kept: AnyresKept) -> None:
    side = kept.side
    k = kept.kept[0]
    rows, cols = k // side, k % side
    ax.imshow(image.resize((side * 14, side * 14)), extent=(0, side, side, 0))
    ax.imshow(_veil((side, side), rows, cols), extent=(0, side, side, 0), interpolation="nearest")
    _outline(ax, rows, cols, KEPT_EDGE)
    ax.set_xlim(0, side)
    ax.set_ylim(side, 0)


def _draw_grid(ax, image: Image.Image, kept: AnyresKept) -> None:
    from matplotlib.patches import Rectangle

    side, (nw, nh) = kept.side, kept.grid
    height, width = nh * side, nw * side
    canvas = resize_and_pad_image(image, (nw * 14 * side, nh * 14 * side))
    rows = np.concatenate([kept.grid_positions(t)[0] for t in range(1, len(kept.kept))])
    cols = np.concatenate([kept.grid_positions(t)[1] for t in range(1, len(kept.kept))])
    keep = kept.inside(rows, cols)
    ax.imshow(canvas, extent=(0, width, height, 0))
    ax.imshow(_veil((height, width), rows[keep], cols[keep]), extent=(0, width, height, 0),
              interpolation="nearest")
    _outline(ax, rows[keep], cols[keep], KEPT_EDGE)
    _outline(ax, rows[~keep], cols[~keep], DROPPED, fill=True)
    r0, r1, c0, c1 = kept.bounds
    for x, y, w, h in ((0, 0, width, r0), (0, r1, width, height - r1), (0, 0, c0, height), (c1, 0, width - c1, height)):
        if w > 0 and h > 0:
            ax.add_patch(Rectangle((x, y), w, h, facecolor="none", edgecolor="#d62728", hatch="///", linewidth=0))
    for value in (r0, r1):
        if 0 < value < height:
            ax.axhline(value, color="#d62728", linestyle="--", linewidth=1.2)
    for value in (c0, c1):
        if 0 < value < width:
            ax.axvline(value, color="#d62728", linestyle="--", linewidth=1.2)
    _tile_lines(ax, nw, nh, side)
    with_tokens = set(kept.summary()["rows_with_tokens"])
    for row in range(r0, r1):  # the newline column, right of the grid
        if row in with_tokens:
            ax.add_patch(Rectangle((width + 0.3, row + 0.1), 1.2, 0.8, color=NEWLINE, linewidth=0))
        else:
            ax.add_patch(Rectangle((width + 0.3, row + 0.1), 1.2, 0.8, facecolor="none", edgecolor="#bbbbbb",
                                   linewidth=0.5))
    ax.set_xlim(0, width + 1.8)
    ax.set_ylim(height, 0)


def draw(image: Image.Image, layouts: dict, path: Path, checkpoint: str) -> None:
    """One row per setting (``layouts``: label -> AnyresKept): the base tile (left) and the stitched, letterboxed
    grid (right); save the PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    first = next(iter(layouts.values()))
    nw, nh = first.grid
    fig, axes = plt.subplots(len(layouts), 2, figsize=(10.5, 4.9 * len(layouts)),
                             gridspec_kw={"width_ratios": [1, nw + 1.8 / first.side]}, squeeze=False)
    for (mode, kept), (ax_base, ax_grid) in zip(layouts.items(), axes):
        s = kept.summary()
        _draw_base(ax_base, image, kept)
        _draw_grid(ax_grid, image, kept)
        ax_base.set_title(f"{mode}\nbase tile (whole image at 336x336): {s['base_centres']} centres\n+ "
                          f"{s['base_tokens'] - s['base_centres']} extra = {s['base_tokens']} tokens "
                          "(patch order, extra last)", fontsize=8.5)
        ax_grid.set_title(
            f"{mode}: {nw}x{nh} grid tiles ({nw * 336}x{nh * 336} canvas)\n{s['grid_centres']} centres kept, "
            f"{s['dropped']} in the padding dropped, {s['newlines']} newlines, {s['empty_rows']} empty rows vanish\n"
            f"+ {s['grid_extras']} extra tokens after the grid  ->  {s['lm_tokens']} LM tokens in all",
            fontsize=8.5)
        for ax in (ax_base, ax_grid):
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [
        Patch(facecolor="none", edgecolor=KEPT_EDGE, label="kept centre (one LM token)"),
        Patch(facecolor=DROPPED, edgecolor=DROPPED, label="centre in the padding: dropped by unpad"),
        Patch(facecolor="none", edgecolor="#d62728", hatch="///", label="letterbox padding cut off by unpad"),
        Patch(facecolor=NEWLINE, label="image_newline ends this row"),
        Patch(facecolor="none", edgecolor="#bbbbbb", label="row without a centre: vanishes"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Where reduced tokens go in LLaVA-1.6's spatial_unpad layout: one {image.size[0]}x{image.size[1]} "
                 f"image, {checkpoint}\n(random CLIP with calibrated CLS attention; white lines: 336 px tile "
                 "borders)", fontsize=10)
    fig.tight_layout(rect=(0, 0.045, 1, 0.965))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 800x500, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return width, height


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, default=None,
                   help="a LLaVA-1.6 checkpoint folder (default: build the tiny one in a temporary folder)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image file (default assets/demo.png)")
    p.add_argument("--size", type=_size, default=(800, 500), help="crop-and-resize the image to WxH (800x500)")
    p.add_argument("--budget", type=int, default=640,
                   help="--token-budget K of the third row, prumerge+ with a budget (default 640; 0: no third row)"),
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (docs/img/anyres_layout.png)")
    args = p.parse_args(argv)
    if not args.image.is_file():
        p.error(f"--image {args.image}: no such file")
    if args.model_path is not None and not (args.model_path / "config.json").is_file():
        p.error(f"--model-path {args.model_path}: no config.json there")
    if args.budget < 0:
        p.error("--budget must be >= 0")
    return args


def _load(model_path: Path):
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    _, model, image_processor, _ = load_pretrained_model(str(model_path), None, get_model_name_from_path(
        str(model_path)), device="cpu", token_reduction="none")
    aspect = model.config.image_aspect_ratio or ""
    if not aspect.startswith("anyres") or model.config.mm_patch_merge_type != "spatial_unpad":
        raise ValueError(f"{model_path}: not a LLaVA-1.6 layout (image_aspect_ratio {aspect!r}, mm_patch_merge_type "
                         f"{model.config.mm_patch_merge_type!r}; expected anyres + spatial_unpad)")
    return model, image_processor


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    image = fit_image(Image.open(args.image).convert("RGB"), args.size)
    with tempfile.TemporaryDirectory(prefix="anyres_layout_") as tmp:
        model_path = args.model_path
        if model_path is None:
            from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

            model_path = make_tiny_checkpoint(tmp, layout="v1.6")
        model, image_processor = _load(model_path)
        layouts, counts = {}, {}
        rows = [(mode, args.budget if budget is not None else None) for mode, budget in ROWS]
        for mode, budget in (r for r in rows if r[1] != 0):
            label = mode if budget is None else f"{mode} --token-budget {budget}"
            kept = kept_on_tiles(model, image_processor, image, mode, budget)
            ours, theirs = kept.summary()["lm_tokens"], model_token_count(model, image_processor, image)
            if ours != theirs:
                raise RuntimeError(f"{label}: {ours} tokens counted from the kept indices, but the model laid out "
                                   f"{theirs}; the drawing would not show what the model reads")
            layouts[label], counts[label] = kept, ours
        name = "tiny LLaVA-1.6 checkpoint" if args.model_path is None else model_path.name
        draw(image, layouts, args.out, name)
    for mode, kept in layouts.items():
        s = kept.summary()
        print(f"{mode}: grid {kept.grid[0]}x{kept.grid[1]}, unpad rows {kept.bounds[0]}:{kept.bounds[1]} cols "
              f"{kept.bounds[2]}:{kept.bounds[3]}; base {s['base_tokens']} + grid {s['grid_centres']} centres "
              f"({s['dropped']} dropped) + {s['newlines']} newlines + {s['grid_extras']} extras = {s['lm_tokens']}")
    print(f"wrote {args.out}")
    return {"layouts": layouts, "counts": counts, "out": args.out}


if __name__ == "__main__":
    main()
