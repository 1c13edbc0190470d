"""The anyres layout on small hand-made grids: tokens carry their identity, so every expected sequence is written out.

Each token has one feature (D = 1) holding a readable code: tile t, patch p -> 100 * t + p (the base is tile 0);
the newline is -1 and tile t's extra token 900 + t.
"""

from __future__ import annotations

import pytest
import torch
from upstream_anyres import grid_tokens

from llava.model.anyres_layout import (
    MERGE_TYPES,
    check_tile_count,
    layout_anyres_image,
    unpad_bounds,
    unpad_image,
    validate_merge_type,
)

NL = -1.0


def code(tile: int, patch: int) -> float:
    """tile 0 (base) patch 3 -> 3; grid tile 2 patch 5 -> 205."""
    return float(100 * tile + patch)


def full_tiles(num_tiles: int, side: int) -> list[torch.Tensor]:
    return [torch.tensor([[code(t, p)] for p in range(side * side)]) for t in range(num_tiles)]


def values(seq: torch.Tensor) -> list[float]:
    return seq[:, 0].tolist()


NEWLINE = torch.tensor([NL])


# --------------------------------------------------------------------------------------------- unpad arithmetic

def test_unpad_bounds_wide_image_cuts_rows():
    # grid 4 rows x 8 cols; image 16x2 (aspect 8 > 2): content rows int(2 * 8/16) = 1, padding (4 - 1) // 2 = 1
    assert unpad_bounds(4, 8, (16, 2)) == (1, 3, 0, 8)


def test_unpad_bounds_tall_image_cuts_columns():
    # grid 4 x 4; image 2x4 (aspect 0.5 < 1): content cols int(2 * 4/4) = 2, padding 1 each side
    assert unpad_bounds(4, 4, (2, 4)) == (0, 4, 1, 3)
    # aspect equal: nothing cut
    assert unpad_bounds(4, 8, (672, 336)) == (0, 4, 0, 8)


def test_unpad_image_on_a_tensor():
    grid = torch.arange(2 * 4 * 8, dtype=torch.float32).view(2, 4, 8)
    out = unpad_image(grid, (16, 2))
    assert out.shape == (2, 2, 8)
    torch.testing.assert_close(out, grid[:, 1:3, :])


def test_unpad_bounds_rejects_a_bad_size():
    with pytest.raises(ValueError, match="positive"):
        unpad_bounds(4, 4, (0, 3))


# --------------------------------------------------------------------------------------------- unreduced layouts

def test_flat_concatenates_tiles():
    tiles = full_tiles(3, 2)
    out = layout_anyres_image(tiles, None, merge_type="flat", patches_per_side=2)
    assert values(out) == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203]


def test_spatial_stitches_the_grid_in_raster_order():
    # grid 2 across, 1 down, tiles of 2x2 patches: stitched rows are (t1 p0, t1 p1, t2 p0, t2 p1), (t1 p2, ...)
    tiles = full_tiles(3, 2)
    out = layout_anyres_image(tiles, None, merge_type="spatial", patches_per_side=2, grid_shape=(2, 1))
    assert values(out) == [0, 1, 2, 3, 100, 101, 200, 201, 102, 103, 202, 203]


def test_spatial_unpad_without_padding_ends_every_row_with_a_newline():
    tiles = full_tiles(3, 2)
    out = layout_anyres_image(tiles, None, merge_type="spatial_unpad", patches_per_side=2, grid_shape=(2, 1),
                              image_size=(200, 100), image_newline=NEWLINE)
    assert values(out) == [0, 1, 2, 3, 100, 101, 200, 201, NL, 102, 103, 202, 203, NL]


def test_spatial_unpad_drops_the_padded_rows():
    # tiles of 4x4 patches, grid 2 across 1 down: 4 rows x 8 cols; a 16x2 image keeps rows 1 and 2
    side = 4
    tiles = full_tiles(3, side)
    out = layout_anyres_image(tiles, None, merge_type="spatial_unpad", patches_per_side=side, grid_shape=(2, 1),
                              image_size=(16, 2), image_newline=NEWLINE)
    row1 = [104, 105, 106, 107, 204, 205, 206, 207]
    row2 = [108, 109, 110, 111, 208, 209, 210, 211]
    assert values(out) == list(range(16)) + row1 + [NL] + row2 + [NL]


def test_spatial_unpad_matches_upstreams_view_permute_transcription():
    """Upstream 1.2.2's tensor code (transcribed in upstream_anyres.py) on a 2 x 3 grid with real widths."""
    side, dim, nw, nh = 3, 5, 3, 2
    generator = torch.Generator().manual_seed(0)
    tiles = [torch.randn(side * side, dim, generator=generator) for _ in range(1 + nw * nh)]
    newline = torch.randn(dim, generator=generator)
    size = (700, 300)
    ours = layout_anyres_image(tiles, None, merge_type="spatial_unpad", patches_per_side=side, grid_shape=(nw, nh),
                               image_size=size, image_newline=newline)

    expected = torch.cat((tiles[0], grid_tokens(torch.stack(tiles[1:]), nw, nh, side, size, newline)), dim=0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)

    spatial = layout_anyres_image(tiles, None, merge_type="spatial", patches_per_side=side, grid_shape=(nw, nh))
    plain = torch.stack(tiles[1:]).view(nh, nw, side, side, dim).permute(0, 2, 1, 3, 4).contiguous().flatten(0, 3)
    torch.testing.assert_close(spatial, torch.cat((tiles[0], plain)), rtol=0, atol=0)


def test_one_tile_gets_a_newline_only_with_unpad():
    tiles = full_tiles(1, 2)
    unpad = layout_anyres_image(tiles, None, merge_type="spatial_unpad", patches_per_side=2, image_newline=NEWLINE)
    assert values(unpad) == [0, 1, 2, 3, NL]
    spatial = layout_anyres_image(tiles, None, merge_type="spatial", patches_per_side=2)
    assert values(spatial) == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------- reduced layouts

def reduced_tile(tile: int, kept: list[int], extra: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[code(tile, p)] for p in kept] + ([[900.0 + tile]] if extra else [])
    return torch.tensor(rows), torch.tensor(kept, dtype=torch.long)


def test_reduced_tokens_keep_their_place_newlines_per_kept_row_extras_after_the_grid():
    # 4x4 patches per tile, grid 2 across 1 down (4 rows x 8 cols), image 16x2: rows 1-2 survive unpadding
    pairs = [
        reduced_tile(0, [9, 2, 14]),  # base: in attention order; laid out by patch index
        reduced_tile(1, [5, 0, 11]),  # tile 1: p0 row 0 (padding), p5 row 1 col 1, p11 row 2 col 3
        reduced_tile(2, [4, 10]),  # tile 2: p4 row 1 col 4, p10 row 2 col 6
    ]
    tokens, kept = zip(*pairs)
    out = layout_anyres_image(list(tokens), list(kept), merge_type="spatial_unpad", patches_per_side=4,
                              grid_shape=(2, 1), image_size=(16, 2), image_newline=NEWLINE)
    assert values(out) == [2, 9, 14, 900,  # base centres by patch index, then the base's extra token
                           105, 204, NL,  # stitched row 1: (1, 1) from tile 1, (1, 4) from tile 2
                           111, 210, NL,  # stitched row 2: (2, 3), (2, 6); tile 1's p0 was in the padding
                           901, 902]  # the grid tiles' extra tokens, in tile order


def test_rows_without_kept_tokens_disappear():
    pairs = [reduced_tile(0, [0]), reduced_tile(1, [0]), reduced_tile(2, [3])]  # rows 0 and 1 of a 2x2-patch grid
    tokens, kept = zip(*pairs)
    out = layout_anyres_image(list(tokens), list(kept), merge_type="spatial_unpad", patches_per_side=2,
                              grid_shape=(1, 2), image_size=(100, 200), image_newline=NEWLINE)
    # grid 1 across, 2 down: 4 rows x 2 cols; tile 1 p0 -> row 0, tile 2 p3 -> row 3; rows 1, 2 keep nothing
    assert values(out) == [0, 900, 100, NL, 203, NL, 901, 902]


def test_a_repeated_centre_stays_twice_in_kept_order():
    tokens = [torch.tensor([[0.0], [900.0]]), torch.tensor([[101.0], [101.5], [901.0]])]
    kept = [torch.tensor([0]), torch.tensor([1, 1])]
    out = layout_anyres_image(tokens, kept, merge_type="spatial", patches_per_side=2, grid_shape=(1, 1))
    assert values(out) == [0, 900, 101, 101.5, 901]


def test_a_tile_wholly_in_the_padding_gives_no_extra_token():
    # grid 1 across, 3 down (6 rows x 2 cols of 2x2 tiles); an image 4x2 (aspect 2 > 1/3): content rows
    # int(2 * 2/4) = 1, padding (6 - 1) // 2 = 2 -> rows 2 and 3 (tile 2) survive; tiles 1 and 3 are all padding
    pairs = [reduced_tile(0, [1]), reduced_tile(1, [0]), reduced_tile(2, [1]), reduced_tile(3, [2])]
    tokens, kept = zip(*pairs)
    out = layout_anyres_image(list(tokens), list(kept), merge_type="spatial_unpad", patches_per_side=2,
                              grid_shape=(1, 3), image_size=(4, 2), image_newline=NEWLINE)
    assert values(out) == [1, 900, 201, NL, 902]


def test_keeping_every_patch_equals_the_unreduced_layout():
    side, dim = 3, 4
    generator = torch.Generator().manual_seed(1)
    tiles = [torch.randn(side * side, dim, generator=generator) for _ in range(7)]
    newline = torch.randn(dim, generator=generator)
    for merge, size in (("spatial_unpad", (900, 500)), ("spatial_unpad", (300, 800)), ("spatial", (10, 10))):
        # every patch kept, listed in a shuffled order, no extra token
        perms = [torch.randperm(side * side, generator=generator) for _ in tiles]
        reduced = [t[p] for t, p in zip(tiles, perms)]
        kwargs = dict(merge_type=merge, patches_per_side=side, grid_shape=(3, 2), image_size=size,
                      image_newline=newline)
        torch.testing.assert_close(layout_anyres_image(reduced, perms, **kwargs),
                                   layout_anyres_image(tiles, None, **kwargs), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- bad input

def test_unknown_merge_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match="config.json: key mm_patch_merge_type.*'spatial_pad'.*'flat', 'spatial'"):
        validate_merge_type("spatial_pad", "config.json: key mm_patch_merge_type")
    assert validate_merge_type(None) == "flat"
    assert set(MERGE_TYPES) == {"flat", "spatial", "spatial_unpad"}


def test_tile_count_must_match_the_grid():
    check_tile_count(5, (2, 2))
    with pytest.raises(ValueError, match=r"image 3: 4 tiles were given.*2x2 grid, i.e. 1 \+ 4 tiles"):
        check_tile_count(4, (2, 2), image_index=3)
    with pytest.raises(ValueError, match="4 tiles were given"):
        layout_anyres_image(full_tiles(4, 2), None, merge_type="spatial", patches_per_side=2, grid_shape=(2, 2))


def test_missing_grid_or_size_or_newline_is_an_error():
    tiles = full_tiles(3, 2)
    with pytest.raises(ValueError, match="needs its grid shape"):
        layout_anyres_image(tiles, None, merge_type="spatial", patches_per_side=2)
    with pytest.raises(ValueError, match="needs the image's original size"):
        layout_anyres_image(tiles, None, merge_type="spatial_unpad", patches_per_side=2, grid_shape=(2, 1),
                            image_newline=NEWLINE)
    with pytest.raises(ValueError, match="image_newline"):
        layout_anyres_image(tiles, None, merge_type="spatial_unpad", patches_per_side=2, grid_shape=(2, 1),
                            image_size=(2, 1))
