"""PruMerge / PruMerge+ on LLaVA-1.6 anyres images: per-tile reduction, the layout's counts, budgets, batches, errors.

The expected counts are worked out here from the kept indices with plain loops (the layout rule of
``llava.model.anyres_layout``: centres at their grid positions, padding cut, a newline per row that keeps a token,
one extra token per tile whose area shows the image).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from loading_helpers import reduction
from upstream_anyres import best_resolution, unpad_bounds

from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.token_reduction import split_budget

PROMPTS = [
    "USER: <image>\nWhat is this? ASSISTANT:",
    "USER: <image>\nDescribe the picture in many words, with the colours and the shapes. ASSISTANT:",
    "USER: <image>\nWhy? ASSISTANT:",
]
SIZES = [(672, 672), (640, 300), (300, 700)]


def picture(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy(), "RGB")


@pytest.fixture(scope="module")
def images():
    return [picture(*size, seed=i) for i, size in enumerate(SIZES)]


def grid_of(size, pinpoints, tile=336):
    """(nw, nh) of upstream's select_best_resolution."""
    w, h = best_resolution(size, pinpoints)
    return w // tile, h // tile


def expected_count(kept: list[list[int]], size, grid, side=24) -> int:
    """Tokens the spatial_unpad layout gives for one image whose tiles kept these patch indices (+1 extra each)."""
    nw, nh = grid
    height, width = nh * side, nw * side
    r0, r1, c0, c1 = unpad_bounds(height, width, size)
    count = len(kept[0]) + 1
    rows = set()
    for g, tile_kept in enumerate(kept[1:]):
        tr, tc = divmod(g, nw)
        for p in tile_kept:
            y, x = tr * side + p // side, tc * side + p % side
            if r0 <= y < r1 and c0 <= x < c1:
                count += 1
                rows.add(y)
        shows = tr * side < r1 and (tr + 1) * side > r0 and tc * side < c1 and (tc + 1) * side > c0
        count += int(shows)
    return count + len(rows)


@pytest.mark.parametrize("mode", ["prumerge", "prumerge+"])
def test_each_tile_is_reduced_on_its_own_and_laid_out_in_place(tiny16_loaded, images, mode):
    tokenizer, model, processor, _ = tiny16_loaded
    tower = model.get_vision_tower()
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    with reduction(model, mode):
        for image in images:
            tiles = process_images([image], processor, model.config)[0]  # [1+T, 3, 336, 336]
            with torch.no_grad():
                model(input_ids=ids, images=[tiles], image_sizes=[image.size])
                alone = [tower.encode(tiles[t : t + 1]).kept[0].tolist() for t in range(tiles.shape[0])]
                together = [k.tolist() for k in tower.encode(tiles).kept]
            assert together == alone  # a tile's centres do not depend on its neighbours in the batch
            grid = grid_of(image.size, model.config.image_grid_pinpoints)
            assert tiles.shape[0] == 1 + grid[0] * grid[1]
            assert model.last_visual_token_counts == [expected_count(alone, image.size, grid)]
            assert model.last_visual_patch_counts == [tiles.shape[0] * 576]
            none_count = 576 + grid[1] * 24 * (grid[0] * 24 + 1)  # upper bound: unpadded rows never exceed this
            assert 5 < model.last_visual_token_counts[0] < none_count


def test_the_672_image_reports_2880_patches_and_fewer_tokens(tiny16_loaded, images):
    tokenizer, model, processor, _ = tiny16_loaded
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    tiles = process_images([images[0]], processor, model.config)
    counts = {}
    for mode in ("none", "prumerge", "prumerge+"):
        with reduction(model, mode), torch.no_grad():
            model(input_ids=ids, images=tiles, image_sizes=[images[0].size])
        counts[mode] = model.last_visual_token_counts[0]
        assert model.last_visual_patch_counts == [2880]
    assert counts["none"] == 576 + 48 * 49  # a square image: nothing to unpad, 48 rows of 48 + newline
    assert counts["prumerge"] < counts["prumerge+"] < counts["none"]


@pytest.mark.parametrize("mode", ["prumerge", "prumerge+"])
@pytest.mark.parametrize("budget", [640, 320, 160])
def test_a_budget_is_the_images_total_split_over_its_tiles(tiny16_loaded, images, mode, budget):
    """With the peers' flat layout every centre stays: budget + one extra token per tile."""
    tokenizer, model, processor, _ = tiny16_loaded
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    tiles = process_images([images[0]], processor, model.config)
    with reduction(model, mode, budget, merge="flat"), torch.no_grad():
        model(input_ids=ids, images=tiles, image_sizes=[images[0].size])
        kept = model.get_vision_tower().encode(tiles[0], split_budget(budget, 5)).kept
    assert [k.numel() for k in kept] == [budget // 5] * 5
    assert model.last_visual_token_counts == [budget + 5]


def test_split_budget_gives_the_remainder_to_the_base():
    assert split_budget(640, 5) == [128] * 5
    assert split_budget(322, 5) == [66, 64, 64, 64, 64]
    assert split_budget(144, 1) == [144]
    assert split_budget(3, 5) == [1] * 5  # every tile keeps at least one centre
    assert split_budget(None, 3) == [None] * 3


def test_peers_flat_layout_is_selectable_through_overwrite_config(tiny16_checkpoint, images):
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(
        str(tiny16_checkpoint), None, "llava-v1.6-vicuna-tiny", device="cpu", token_reduction="prumerge",
        overwrite_config={"mm_patch_merge_type": "flat"})
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    tiles = process_images([images[1]], processor, model.config)
    with torch.no_grad():
        model(input_ids=ids, images=tiles, image_sizes=[images[1].size])
        per_tile = [t.shape[0] for t in model.get_vision_tower().encode(tiles[0]).tokens]
    assert model.last_visual_token_counts == [sum(per_tile)]  # no unpadding, no newlines


@pytest.mark.parametrize("mode", ["none", "prumerge", "prumerge+"])
def test_batched_generation_over_mixed_aspect_ratios_equals_one_at_a_time(tiny16_loaded, images, mode):
    tokenizer, model, processor, _ = tiny16_loaded
    ids = [tokenizer_image_token(p, tokenizer) for p in PROMPTS]
    with reduction(model, mode):
        singles, counts = [], []
        for prompt_ids, image in zip(ids, images):
            pixels = process_images([image], processor, model.config)
            new = model.generate(torch.tensor([prompt_ids]), images=pixels, image_sizes=[image.size],
                                 max_new_tokens=5, do_sample=False)
            singles.append(new[0].tolist())
            counts += model.last_visual_token_counts
        saved = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        finally:
            tokenizer.padding_side = saved
        pixels = process_images(images, processor, model.config)
        assert isinstance(pixels, list)  # 5, 3 and 3 tiles: process_images cannot stack them
        batched = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], images=pixels,
                                 image_sizes=[im.size for im in images], max_new_tokens=5, do_sample=False)
        assert model.last_visual_token_counts == counts
    assert batched.tolist() == singles
    assert len(set(counts)) == 3


# ---------------------------------------------------------------- bad input


def test_an_anyres_image_without_image_sizes_is_a_clear_error(tiny16_loaded, images):
    tokenizer, model, processor, _ = tiny16_loaded
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    tiles = process_images([images[0]], processor, model.config)
    with pytest.raises(ValueError, match=r"image_aspect_ratio 'anyres'.*needs image_sizes"):
        model.generate(ids, images=tiles, max_new_tokens=2)


def test_image_sizes_that_disagree_with_the_tiles_are_an_error(tiny16_loaded, images):
    tokenizer, model, processor, _ = tiny16_loaded
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    tiles = process_images([images[0]], processor, model.config)  # 672x672: 1 + 4 tiles
    with pytest.raises(ValueError, match=r"image 0: 5 tiles were given.*2x1 grid, i.e. 1 \+ 2 tiles"):
        model.generate(ids, images=tiles, image_sizes=[(640, 300)], max_new_tokens=2)
    with pytest.raises(ValueError, match="1 images were given but 2 image_sizes"):
        model.generate(ids, images=tiles, image_sizes=[(672, 672), (3, 3)], max_new_tokens=2)
