"""How many visual tokens the language model reads for one image, known before the image is decoded (from its
``(width, height)`` alone): the training data check (``llava.train.data_check``) refuses samples whose answer the
fewest possible tokens already push past ``--model_max_length``, and the model worker
(``llava.serve.request_limits``) checks a request's context against the most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._image_processing import get_anyres_image_grid_shape
from .anyres_layout import unpad_bounds
from .multimodal_encoder.prumerge import fixed_plus_plan
from .token_reduction import split_budget


@dataclass(frozen=True)
class VisualTokenBound:
    """How many visual tokens the language model reads for one image of a given ``(width, height)``, known before
    the tower runs: ``fewest`` (exact without a reduction) and ``most``.

    Attributes:
        patches_per_side: the tower's patch grid side (CLIP ViT-L/14-336: 24, so N = 576 patches per tile).
        tile_size: the tower's input side in pixels (336), the anyres tile size.
        reduction: the token-reduction mode ("prumerge", "prumerge+"), None when none runs. A reduction adds one
            merged-complement token per tile to its centres.
        budget: ``--token-budget`` (the image's centres, split over its tiles as ``split_budget``); None: adaptive.
        cls_kept: ``mm_vision_select_feature cls_patch``: one more token per tile.
        grid_pinpoints: anyres canvases ``[[width, height], ...]``; None for one tile per image ("pad", "square").
        unpad: ``mm_patch_merge_type`` "spatial_unpad" on an anyres model: the letterbox padding of the stitched
            grid is cut and every grid row ends with an ``image_newline``. Without ``grid_pinpoints`` it changes
            nothing: a one-tile ("pad") batch is laid out flat, without newlines.
    """

    patches_per_side: int
    tile_size: int
    reduction: str | None = None
    budget: int | None = None
    cls_kept: bool = False
    grid_pinpoints: Sequence[Sequence[int]] | None = None
    unpad: bool = False

    def _grid(self, image_size: tuple[int, int] | None) -> tuple[int, int]:
        """``(across, down)`` grid tiles of the image's anyres canvas; ``(0, 0)`` without anyres."""
        if self.grid_pinpoints is None:
            return 0, 0
        if image_size is None:
            raise ValueError("an anyres count needs the image's (width, height)")
        across, down = get_anyres_image_grid_shape(tuple(image_size), self.grid_pinpoints, self.tile_size)
        return int(across), int(down)

    def _centres(self, share: int | None) -> int:
        """The fewest centres a reduced tile keeps: an adaptive count can be as low as 0 (as far as is known before
        the tower runs), a fixed one is its plan's."""
        if share is None:
            return 0
        if self.reduction == "prumerge+":
            n_top, raster = fixed_plus_plan(self.patches_per_side ** 2, share)
            return n_top + len(raster)
        return min(share, self.patches_per_side ** 2)

    def fewest(self, image_size: tuple[int, int] | None) -> int:
        """The fewest visual tokens the model can read for the image: exact without a reduction (the unpadded grid
        and its newlines included); with one, the base tile's centres and extra token only (the grid tiles' may all
        fall in the padding)."""
        n, side = self.patches_per_side ** 2, self.patches_per_side
        across, down = self._grid(image_size)
        tiles, cls = 1 + across * down, int(self.cls_kept)
        if self.reduction:
            return self._centres(split_budget(self.budget, tiles)[0]) + 1 + cls
        if not (self.unpad and across):
            return tiles * (n + cls)
        r0, r1, c0, c1 = unpad_bounds(down * side, across * side, image_size)
        return n + (r1 - r0) * (c1 - c0 + 1) + tiles * cls

    @classmethod
    def from_model(cls, config: Any, tower: Any) -> VisualTokenBound:
        """The count of a loaded model: its ``config`` (``image_aspect_ratio``, ``image_grid_pinpoints``,
        ``mm_patch_merge_type``) and its ``CLIPVisionTower`` (grid, ``token_reduction``, ``select_feature``)."""
        aspect = getattr(config, "image_aspect_ratio", None)
        anyres = isinstance(aspect, str) and aspect.startswith("anyres")
        reduction = tower.token_reduction
        return cls(
            patches_per_side=tower.num_patches_per_side,
            tile_size=tower.config.image_size,
            reduction=reduction.mode if reduction.enabled else None,
            budget=reduction.budget,
            cls_kept=tower.select_feature == "cls_patch",
            grid_pinpoints=config.image_grid_pinpoints if anyres else None,
            unpad=anyres and "unpad" in (getattr(config, "mm_patch_merge_type", None) or ""),
        )

    def most(self, image_size: tuple[int, int] | None) -> int:
        """An upper bound: every tile's N patches (or its budget share, when larger) plus its extra tokens, and
        with ``unpad`` one newline per row of the stitched grid before the padding is cut."""
        n = self.patches_per_side ** 2
        across, down = self._grid(image_size)
        tiles = 1 + across * down
        per_tile = int(self.cls_kept) + int(bool(self.reduction))
        total = sum(max(n, share or 0) + per_tile for share in split_budget(self.budget if self.reduction else None,
                                                                             tiles))
        return total + (down * self.patches_per_side if self.unpad and across else 0)
