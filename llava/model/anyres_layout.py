"""Lay out one anyres (LLaVA-1.6) image's tile tokens as the language model reads them: a pure tensor function.

Nothing here knows CLIP, the LM or configs: tensors and kept patch indices in, one ``[n_i, D]`` sequence out.

Notation: T tiles of one image (tile 0 is the whole image resized, the "base"; tiles 1..T-1 the grid, raster
order), ``s`` patches per tile side (24 for CLIP ViT-L/14-336), P = s*s patches per tile, D the LM width,
``(nw, nh)`` the grid's tiles across and down, so the stitched grid is ``[nh*s, nw*s]`` patches.

Merge types (``mm_patch_merge_type``), as upstream LLaVA 1.2.2 lays out an unreduced image:

* ``flat``: the tiles' tokens concatenated, tile by tile.
* ``spatial``: the base's P tokens, then the grid tiles stitched into one ``[nh*s, nw*s]`` grid read in raster
  order.
* ``spatial_unpad``: as ``spatial``, then the rows (or columns) that only show the letterbox padding added by
  ``resize_and_pad_image`` are cut off (``unpad_image``), and ``image_newline`` ends every remaining row:
  ``rows * (cols + 1)`` grid tokens. An image with one tile gets ``base + [image_newline]``.

With token reduction (PruMerge / PruMerge+), each tile brings M_t merged centres at known patch indices plus one
extra token (the attention-weighted sum of its pruned patches). The layout keeps every centre at its place:

* base centres: in raster order of their patch index, then the base's extra token;
* grid centres: at ``(row, col)`` of the stitched grid (tile ``g`` = ``(g // nw, g % nw)``, patch ``p`` =
  ``(p // s, p % s)`` inside it), read in raster order of the stitched grid (a repeated centre, which the
  fixed-count PruMerge+ rule can produce, stays twice, in its kept order);
* ``unpad``: centres whose position lies in the cut-off padding are dropped, as upstream drops those patches;
* every stitched row that keeps at least one centre ends with ``image_newline``; a row that keeps none
  disappears entirely (no lone newline: a newline marks the end of a row of content, and an empty row has none);
* the grid tiles' extra tokens follow the grid, one per tile in tile order; a tile lying wholly in the padding
  (possible only with unusual ``image_grid_pinpoints``) contributes no extra token under ``unpad``.

Without reduction these rules give exactly upstream's sequence (every position is kept, rows keep their
newline), which the tests check against a plain transcription of upstream's view/permute code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: ``mm_patch_merge_type`` values upstream LLaVA 1.2.2 runs.
MERGE_TYPES = ("flat", "spatial", "spatial_unpad")


def validate_merge_type(value: str | None, where: str = "mm_patch_merge_type") -> str:
    """Return ``value`` (None -> "flat"); raise ValueError naming ``where`` and listing the valid values."""
    if value is None:
        return "flat"
    if value not in MERGE_TYPES:
        raise ValueError(f"{where}: unknown mm_patch_merge_type {value!r}; valid values are "
                         f"{', '.join(repr(m) for m in MERGE_TYPES)}")
    return value


def unpad_bounds(height: int, width: int, original_size: Sequence[int]) -> tuple[int, int, int, int]:
    """The rows ``[r0, r1)`` and columns ``[c0, c1)`` of a ``[height, width]`` padded grid that show the image.

    ``original_size`` is the image's ``(width, height)`` before ``resize_and_pad_image`` letterboxed it (aspect
    kept, centred). Same arithmetic as upstream's ``unpad_image``: the longer relative side fills the grid; on the
    other, ``int(original * scale)`` cells are content and ``(size - that) // 2`` are cut from each side.
    """
    original_width, original_height = int(original_size[0]), int(original_size[1])
    if original_width <= 0 or original_height <= 0:
        raise ValueError(f"image size must be a positive (width, height), got {tuple(original_size)}")
    if original_width / original_height > width / height:
        new_height = int(original_height * (width / original_width))
        padding = (height - new_height) // 2
        return padding, height - padding, 0, width
    new_width = int(original_width * (height / original_height))
    padding = (width - new_width) // 2
    return 0, height, padding, width - padding


def unpad_image(tensor: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
    """Cut the letterbox padding off a ``[C, H, W]`` grid: ``[C, H', W']`` (upstream's ``unpad_image``)."""
    r0, r1, c0, c1 = unpad_bounds(tensor.shape[1], tensor.shape[2], original_size)
    return tensor[:, r0:r1, c0:c1]


def check_tile_count(num_tiles: int, grid_shape: Sequence[int], image_index: int = 0) -> None:
    """An anyres image must bring ``1 + nw * nh`` tiles (base + grid); raise ValueError naming both otherwise."""
    nw, nh = int(grid_shape[0]), int(grid_shape[1])
    if num_tiles != 1 + nw * nh:
        raise ValueError(
            f"image {image_index}: {num_tiles} tiles were given, but its image_size and image_grid_pinpoints give a "
            f"{nw}x{nh} grid, i.e. 1 + {nw * nh} tiles; pass the image_sizes of the images process_images tiled"
        )


def layout_anyres_image(
    tile_tokens: Sequence[torch.Tensor],
    tile_kept: Sequence[torch.Tensor] | None,
    *,
    merge_type: str,
    patches_per_side: int,
    grid_shape: Sequence[int] | None = None,
    image_size: Sequence[int] | None = None,
    image_newline: torch.Tensor | None = None,
    image_index: int = 0,
) -> torch.Tensor:
    """One image's tiles -> its ``[n_i, D]`` visual-token sequence (rules in the module docstring).

    Args:
        tile_tokens: T tensors. Unreduced: ``[P, D]`` each, patches in raster order. Reduced: ``[M_t + E_t, D]``,
            the M_t centres (in any order) then E_t in {0, 1} extra tokens.
        tile_kept: None (unreduced), or T LongTensors ``[M_t]``: the centres' patch indices (0..P-1), row for row.
        merge_type: one of ``MERGE_TYPES``.
        patches_per_side: s (24 for CLIP ViT-L/14-336).
        grid_shape: ``(nw, nh)`` tiles across and down (``get_anyres_image_grid_shape``); needed when T > 1 and
            the merge is spatial.
        image_size: the image's original ``(width, height)``; needed for ``unpad`` with T > 1.
        image_newline: ``[D]``; needed for ``unpad``.
        image_index: the image's index in the batch, for error messages.
    Returns:
        ``[n_i, D]`` in the tokens' dtype.
    """
    merge_type = validate_merge_type(merge_type)
    if merge_type == "flat":
        return torch.cat(list(tile_tokens), dim=0)
    unpad = merge_type == "spatial_unpad"
    if unpad and image_newline is None:
        raise ValueError("mm_patch_merge_type 'spatial_unpad' needs the model's image_newline")
    side = int(patches_per_side)
    reduced = tile_kept is not None
    base = tile_tokens[0]
    newline = None if image_newline is None else image_newline.to(device=base.device, dtype=base.dtype)[None]
    base_seq = _ordered_base(base, tile_kept[0] if reduced else None)
    if len(tile_tokens) == 1:
        return torch.cat([base_seq, newline], dim=0) if unpad else base_seq
    if grid_shape is None:
        raise ValueError(f"image {image_index}: an anyres image with {len(tile_tokens)} tiles needs its grid shape "
                         "(the image_sizes argument)")
    check_tile_count(len(tile_tokens), grid_shape, image_index)
    if unpad and image_size is None:
        raise ValueError(f"image {image_index}: mm_patch_merge_type 'spatial_unpad' needs the image's original size "
                         "(the image_sizes argument)")
    nw, nh = int(grid_shape[0]), int(grid_shape[1])
    height, width = nh * side, nw * side
    bounds = unpad_bounds(height, width, image_size) if unpad else (0, height, 0, width)

    grid = tile_tokens[1:]
    if reduced:
        positions = [_grid_positions(kept, g, nw, side) for g, kept in enumerate(tile_kept[1:])]
        centres = torch.cat([t[: k.numel()] for t, k in zip(grid, tile_kept[1:])], dim=0)  # [sum M_t, D]
        rows = torch.cat([p[0] for p in positions])
        cols = torch.cat([p[1] for p in positions])
    else:
        for g, t in enumerate(grid):
            if t.shape[0] != side * side:
                raise ValueError(f"image {image_index}: grid tile {g + 1} has {t.shape[0]} tokens, expected "
                                 f"{side}x{side} = {side * side}")
        centres = _stitch(torch.stack(list(grid), dim=0), nh, nw, side)  # [H*W, D], raster order of the grid
        flat = torch.arange(height * width, device=base.device)
        rows, cols = flat // width, flat % width
    grid_seq = _raster_with_newlines(centres, rows, cols, bounds, width, newline if unpad else None)
    parts = [base_seq, grid_seq]
    if unpad:  # keeps image_newline in the graph even when no row kept a token: every rank's backward reaches it
        parts.append(newline[:0])
    if reduced:
        r0, r1, c0, c1 = bounds
        for g, (t, k) in enumerate(zip(grid, tile_kept[1:])):
            extra = t[k.numel():]
            if extra.shape[0] == 0:
                continue
            tile_r, tile_c = divmod(g, nw)
            overlaps = (tile_r * side < r1 and (tile_r + 1) * side > r0
                        and tile_c * side < c1 and (tile_c + 1) * side > c0)
            if overlaps:
                parts.append(extra)
    return torch.cat(parts, dim=0)


def _ordered_base(base: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """The base tile's tokens: unreduced as given; reduced: centres by patch index, then the extra token(s)."""
    if kept is None:
        return base
    order = torch.sort(kept.to(base.device), stable=True).indices
    return torch.cat([base[: kept.numel()][order], base[kept.numel():]], dim=0)


def _grid_positions(kept: torch.Tensor, tile: int, nw: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stitched-grid ``(rows, cols)`` ``[M]`` of grid tile ``tile``'s (0-based) centres at patch indices ``kept``."""
    tile_r, tile_c = divmod(tile, nw)
    return tile_r * side + kept // side, tile_c * side + kept % side


def _stitch(grid: torch.Tensor, nh: int, nw: int, side: int) -> torch.Tensor:
    """``[nh*nw, s*s, D]`` grid tiles -> ``[nh*s * nw*s, D]`` in raster order of the stitched grid."""
    dim = grid.shape[-1]
    return grid.view(nh, nw, side, side, dim).permute(0, 2, 1, 3, 4).reshape(nh * side * nw * side, dim)


def _raster_with_newlines(
    tokens: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    bounds: tuple[int, int, int, int],
    width: int,
    newline: torch.Tensor | None,
) -> torch.Tensor:
    """Tokens at ``(rows, cols)`` ``[M]`` inside ``bounds`` in raster order, each non-empty row ended by ``newline``.

    Args:
        tokens: ``[M, D]``.
        newline: ``[1, D]``, or None for no newlines.
    Returns:
        ``[m + R, D]``: the m tokens inside the bounds, plus one newline per non-empty row (R of them; 0 without).
    """
    r0, r1, c0, c1 = bounds
    inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    rows, cols, tokens = rows[inside], cols[inside], tokens[inside]  # one host sync: the kept count is a shape
    order = torch.sort(rows * width + cols, stable=True).indices
    rows, tokens = rows[order], tokens[order]
    if newline is None or tokens.shape[0] == 0:
        return tokens
    starts_row = torch.ones_like(rows, dtype=torch.bool)
    starts_row[1:] = rows[1:] != rows[:-1]
    row_rank = torch.cumsum(starts_row.long(), dim=0) - 1  # [m]: which non-empty row each token is in
    num_rows = int(row_rank[-1]) + 1
    count = tokens.shape[0]
    out = tokens.new_empty(count + num_rows, tokens.shape[1])
    token_slot = torch.arange(count, device=tokens.device) + row_rank
    ends_row = torch.ones_like(starts_row)
    ends_row[:-1] = starts_row[1:]
    out[token_slot] = tokens
    out[token_slot[ends_row] + 1] = newline.expand(num_rows, -1)
    return out


__all__ = [
    "MERGE_TYPES",
    "check_tile_count",
    "layout_anyres_image",
    "unpad_bounds",
    "unpad_image",
    "validate_merge_type",
]
