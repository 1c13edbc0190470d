"""Inputs and the baseline of ``bench_token_reduction.py``: synthetic CLS attention, and the published PruMerge
algorithm (github.com/42Shawn/LLaVA-PruMerge, ``token_prune_merge_advanced[_plus]``) rewritten as the per-token loop
the vectorised ``prumerge()`` is timed against. The IQR count is per image, so both do the same work.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from token_reduction_report import NEIGHBORS


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def synthetic_attention(batch: int, n: int, std, generator: torch.Generator) -> torch.Tensor:
    """CLS attention ``[B, N]``: ``softmax(std_b * z)`` over 1 + N Gaussian logits ``z ~ N(0, 1)``, CLS dropped.

    ``std`` is a float or a ``[B]`` tensor (one spread per image). The IQR rule keeps about 27 / 32 / 36 / 45 / 63
    patches of 576 for std 0.6 / 0.7 / 0.8 / 1.0 / 1.5; PruMerge's published average is ~32, hence 0.75 by default.
    """
    logits = torch.randn(batch, n + 1, generator=generator)
    std = torch.as_tensor(std, dtype=torch.float32)
    return torch.softmax(logits * (std.unsqueeze(-1) if std.dim() else std), dim=-1)[:, 1:]


def op_inputs(batch: int, n: int, dim: int, std: float, seed: int, device, dtype):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, dim, generator=g)
    keys = torch.randn(batch, n, dim, generator=g)
    attn = synthetic_attention(batch, n, std, g)  # float32, as cls_attention returns
    return features.to(device, dtype), keys.to(device, dtype), attn.to(device)


# ----------------------------------------------------------------------------------------------------------------
# The baseline: the published algorithm as a per-token loop (per-image IQR count, so the work matches the op's)
# ----------------------------------------------------------------------------------------------------------------


def _complement(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Ascending patch indices not in ``idx`` (the published ``complement_idx``: scatter 0s, sort, drop)."""
    masked = torch.scatter(torch.arange(n, device=idx.device), 0, idx, 0)
    return torch.sort(masked).values[idx.numel():]


def published_loop(features: torch.Tensor, keys: torch.Tensor, cls_attn: torch.Tensor, plus: bool) -> list:
    """``[B, N, C]`` -> B tensors ``[k_b + 1, C]``, one image and one kept token at a time, as published.

    Per image: numpy IQR on the host, top-k, (PruMerge+) the raster filtered by ``x not in idx``; then for every kept
    token: concatenate the other kept tokens and the pruned ones (features, attention, normalised keys), cosine to
    all of them, top-32, attention-weighted sum added to the token. Finally the extra token of the pruned patches.
    """
    B, N, C = features.shape
    out = []
    for b in range(B):
        attn = cls_attn[b]
        attn_np = attn.to(torch.float32).cpu().numpy()
        q1, q3 = np.percentile(attn_np, 25), np.percentile(attn_np, 75)
        ratio = len(np.where(attn_np > q3 + 1.5 * (q3 - q1))[0]) / N
        idx = torch.topk(attn, max(1, int(N * ratio)), largest=True).indices
        if plus:
            step = int(1 / max(ratio, 1 / N))
            sequence = torch.arange(0, N - 1, max(1, int(step / 3)), device=attn.device)
            filtered = torch.tensor([x for x in sequence if x not in idx], dtype=torch.long, device=attn.device)
            idx = torch.cat([idx, filtered])
        compl = _complement(idx, N)
        x_kept, a_kept = features[b, idx], attn[idx].to(features.dtype)
        k_kept = F.normalize(keys[b, idx], p=2, dim=-1)
        x_pruned, a_pruned = features[b, compl], attn[compl].to(features.dtype)
        k_pruned = F.normalize(keys[b, compl], p=2, dim=-1)
        updated = torch.zeros_like(x_kept)
        for i in range(idx.numel()):
            rest_x = torch.cat([x_kept[:i], x_kept[i + 1 :], x_pruned])
            rest_a = torch.cat([a_kept[:i], a_kept[i + 1 :], a_pruned])
            rest_k = torch.cat([k_kept[:i], k_kept[i + 1 :], k_pruned])
            cos = rest_k @ k_kept[i]
            cluster = torch.topk(cos, min(NEIGHBORS, cos.numel()), largest=True).indices
            updated[i] = x_kept[i] + torch.sum(rest_x[cluster] * rest_a[cluster].unsqueeze(-1), dim=0)
        extra = torch.sum(x_pruned * a_pruned.unsqueeze(-1), dim=0, keepdim=True)
        out.append(torch.cat([updated, extra]))
    return out
