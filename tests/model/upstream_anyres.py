"""Upstream LLaVA 1.2.2's anyres arithmetic, transcribed plainly for the tests' oracles (never the code under test):
``select_best_resolution``, ``unpad_image``'s cut, and the spatial_unpad view / permute / newline of the grid tiles.
"""

from __future__ import annotations

import torch


def best_resolution(size, pinpoints) -> tuple[int, int]:
    """The pinpoint ``(w, h)`` an image of ``size`` is fitted to: largest effective resolution, then least waste."""
    width, height = size
    best, best_fit, least_waste = None, 0, float("inf")
    for w, h in pinpoints:
        scale = min(w / width, h / height)
        fit = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - fit
        if fit > best_fit or (fit == best_fit and waste < least_waste):
            best, best_fit, least_waste = (w, h), fit, waste
    return best


def unpad_bounds(cur_h: int, cur_w: int, size) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` upstream's ``unpad_image`` keeps of a ``[cur_h, cur_w]`` grid."""
    width, height = size
    if width / height > cur_w / cur_h:
        pad = (cur_h - int(height * (cur_w / width))) // 2
        return pad, cur_h - pad, 0, cur_w
    pad = (cur_w - int(width * (cur_h / height))) // 2
    return 0, cur_h, pad, cur_w - pad


def grid_tokens(grid: torch.Tensor, nw: int, nh: int, side: int, size, newline: torch.Tensor) -> torch.Tensor:
    """spatial_unpad of the grid tiles ``[nw*nh, side*side, D]``: stitch, cut the padding, end rows with ``newline``."""
    feature = grid.view(nh, nw, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
    feature = feature.flatten(1, 2).flatten(2, 3)  # [D, nh*side, nw*side]
    r0, r1, c0, c1 = unpad_bounds(feature.shape[1], feature.shape[2], size)
    feature = feature[:, r0:r1, c0:c1]
    feature = torch.cat((feature, newline[:, None, None].expand(*feature.shape[:-1], 1)), dim=-1)
    return feature.flatten(1, 2).transpose(0, 1)
