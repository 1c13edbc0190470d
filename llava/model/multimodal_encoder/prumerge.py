"""PruMerge and PruMerge+ visual-token reduction: pure tensor functions.

Paper: "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models" (Shang, Cai, Xu, Lee, Yan;
arXiv 2403.15388). Published code: github.com/42Shawn/LLaVA-PruMerge, ``llava/model/multimodal_encoder/
clip_encoder.py`` (``outlier_dectection``, ``complement_idx``, ``token_prune_merge_advanced[_plus]``).

Notation: B images, N patch tokens (576 for CLIP ViT-L/14-336), C feature width, Ck key width (both 1024 there),
M_i centres kept for image i.

What one image goes through (``prumerge``):

1. ``cls_attn`` [N]: the CLS query's softmax attention over the 1+N keys of the layer after the selected one,
   CLS column dropped, not renormalised (``cls_attention``).
2. Keep count (adaptive mode): ``c`` = number of ``cls_attn`` values strictly above the upper IQR fence
   Q3 + 1.5 (Q3 - Q1), numpy-default linear percentiles, in float32 (``outlier_count``); the published top-k size
   is ``int(N * (c / N))`` in float64, which is ``c - 1`` for a few (N, c) pairs (never for N = 576); at least one
   patch is kept (``outlier_keep_count``).
3. Centres: the top-k patches by ``cls_attn``, in descending attention order. PruMerge+ adds the raster samples
   ``range(0, N - 1, max(1, int(int(1 / (c / N)) / 3)))`` not already chosen, ascending, after them
   (``plus_sample_mask``).
4. Each centre i: ``x_i' = x_i + sum_{j in NN(i)} a_j x_j`` where NN(i) are the ``neighbors`` (32) other patches,
   kept or not, whose L2-normalised keys have the highest cosine similarity with i's key; ``a`` = ``cls_attn``.
5. One extra token ``sum_{j not a centre} a_j x_j`` is appended: ``[M_i + 1, C]`` per image.

Differences from the published code (all invisible at batch size 1 on ordinary inputs):

- The keep count is computed per image; the published code pools the IQR over the whole batch (and its PruMerge+
  only runs at batch size 1). Here an image gives the same tokens alone or in any batch.
- Ties in ``cls_attn`` are broken by patch index (stable sort); ``torch.topk`` leaves that order unspecified.
- Degenerate inputs the published code crashes on, or answers with zero centres, keep at least one centre:
  no outliers, a raster stride of 0 (``int(step / 3) == 0`` -> 1), all raster samples already kept, any N (the
  published raster end is hard-coded to 575 = N - 1 for N = 576), ``neighbors >= N`` (clamped to N - 1).
- ``budget`` K replaces the IQR count by the published ``if_adaptive=False`` branches: PruMerge keeps the top K;
  PruMerge+ follows ``fixed_plus_plan`` (top ``int(N r)`` plus the raster ``range(int(s / 2), N - 1, s)``,
  r = K / (2N), s = int(1 / r), repeats kept, the published complement), the rule the PruMerge+ LoRA was most
  likely trained with. Unlike the published code it runs for any K and N (the published code requires the raster
  and the top-k to have the same length and hard-codes N - 1 = 575).

Gradients: the selection (sorting, IQR, neighbour search) runs under ``torch.no_grad()``; the gathers and weighted
sums keep gradients with respect to ``features`` and ``cls_attn`` (as in ToMe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "PruMergeOutput",
    "cls_attention",
    "outlier_count",
    "outlier_keep_count",
    "fixed_plus_plan",
    "plus_sample_mask",
    "prumerge",
]

#: neighbours merged into each centre in the published code (``torch.topk(cos_sim_matrix, k=int(32), ...)``).
DEFAULT_NEIGHBORS = 32


@dataclass(frozen=True)
class PruMergeOutput:
    """Result of ``prumerge`` for B images.

    Attributes:
        tokens: B tensors ``[M_i + 1, C]`` in the features' dtype: the merged centres in output order (top-k by
            CLS attention, descending; then PruMerge+'s raster samples, ascending patch index), then the extra
            token (the attention-weighted sum of the patches that are not centres; zeros when there are none).
        kept: B LongTensors ``[M_i]``: the centres' patch indices (0..N-1), in the same order as ``tokens``.
    """

    tokens: list[torch.Tensor]
    kept: list[torch.Tensor]

    @property
    def counts(self) -> list[int]:
        """Number of output tokens per image, ``M_i + 1`` (centres plus the extra token)."""
        return [int(t.shape[0]) for t in self.tokens]


def cls_attention(q_cls: torch.Tensor, keys_all: torch.Tensor) -> torch.Tensor:
    """The CLS query's attention over the patch tokens, as PruMerge scores them.

    ``softmax(q_cls . k^T * C^-0.5)`` over all 1+N keys (CLS included), then the CLS column is dropped; the rest is
    not renormalised. ``q_cls`` / ``keys_all`` are the ``q_proj`` / ``k_proj`` outputs (bias included, no head split,
    no HF query scaling) of the layer after the selected one.

    Computed in float32 whatever the input dtype (the published code runs in the model's dtype; in fp16/bf16 that
    only rounds the scores, creating ties), and returned in float32.

    Args:
        q_cls: ``[B, C]`` the CLS token's query.
        keys_all: ``[B, 1 + N, C]`` the keys, CLS first.

    Returns:
        ``[B, N]`` float32 attention of the CLS query on each patch.

    Raises:
        ValueError: when the shapes disagree (the message names the tensor and its shape).
    """
    if q_cls.dim() != 2:
        raise ValueError(f"q_cls must be [B, C], got q_cls of shape {list(q_cls.shape)}")
    B, C = q_cls.shape
    if keys_all.dim() != 3 or keys_all.shape[0] != B or keys_all.shape[2] != C or keys_all.shape[1] < 2:
        raise ValueError(
            f"keys_all must be [B, 1 + N, C] = [{B}, 1 + N, {C}] with N >= 1 (matching q_cls of shape {[B, C]}), "
            f"got keys_all of shape {list(keys_all.shape)}"
        )
    logits = torch.bmm(keys_all.float(), q_cls.float().unsqueeze(-1)).squeeze(-1) * C**-0.5  # [B, 1+N]
    return torch.softmax(logits, dim=-1)[:, 1:]  # [B, N]


def outlier_count(cls_attn: torch.Tensor) -> torch.Tensor:
    """Per image, the number of ``cls_attn`` values strictly above the upper IQR fence ``Q3 + 1.5 (Q3 - Q1)``.

    Q1 / Q3 are numpy's default ("linear") 25th / 75th percentiles, computed in float32 exactly as
    ``np.percentile`` (numpy >= 2) does on the float32 array the published ``outlier_dectection`` builds.
    Unlike the published code, each image gets its own quartiles (no pooling over the batch).

    Args:
        cls_attn: ``[B, N]`` CLS attention (any float dtype; cast to float32 first, as published).

    Returns:
        ``[B]`` int64 counts on ``cls_attn``'s device (no host sync).
    """
    with torch.no_grad():
        descending = torch.sort(cls_attn.detach().float(), dim=-1, descending=True).values  # [B, N]
        return _outlier_count_sorted(descending)


def _outlier_count_sorted(descending: torch.Tensor) -> torch.Tensor:
    """``outlier_count`` from the float32 attention already sorted in descending order along each row ``[B, N]``."""
    n = descending.shape[-1]

    def percentile(q: float) -> torch.Tensor:  # numpy "linear": index (n-1) q, lerp between neighbours
        virtual = (n - 1) * q
        lo = int(virtual)
        hi = min(lo + 1, n - 1)
        t = virtual - lo
        below, above = descending[:, n - 1 - lo], descending[:, n - 1 - hi]  # [B]: ascending[lo], ascending[hi]
        diff = above - below
        # numpy's _lerp: a + d t for t < 0.5, b - d (1 - t) otherwise (float32 arithmetic throughout)
        return below + diff * t if t < 0.5 else above - diff * (1.0 - t)

    q1, q3 = percentile(0.25), percentile(0.75)  # [B]
    fence = q3 + (q3 - q1) * 1.5  # [B]
    return (descending > fence.unsqueeze(-1)).sum(dim=-1)  # [B]


def _published_keep_and_step(counts: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From outlier counts c ``[B]``: the published top-k size and PruMerge+ step, both ``[B]`` int64.

    The published code computes ``ratio = c / n`` (a Python float), ``k = int(n * ratio)`` and
    ``step = int(1 / ratio)``. The same float64 expressions are evaluated here, on the counts' device (IEEE
    division and multiplication round as Python does), so no host sync; MPS has no float64, so there the counts
    take a trip through the CPU. Degenerate values are repaired: k >= 1 (no outliers, or ``int(n * ratio)``
    rounding 1 down to 0); c = 0 takes the step of c = 1 (the published code divides by zero).
    """
    c = (counts.cpu() if counts.device.type == "mps" else counts).double()  # [B]
    keep = torch.floor(n * (c / n)).long().clamp_(min=1)
    ratio = c.clamp(min=1.0) / n
    step = torch.floor(torch.ones_like(ratio) / ratio).long()
    return keep.to(counts.device), step.to(counts.device)


def outlier_keep_count(cls_attn: torch.Tensor) -> torch.Tensor:
    """Per image, PruMerge's adaptive number of top-k centres: ``max(1, int(N * (c / N)))``, c = ``outlier_count``.

    ``int(N * (c / N))`` is evaluated in float64 as published: it equals c for every c when N = 576, but is c - 1
    for a few (N, c) pairs (N = 49: c in {1, 2, 4, 8, 16, 27, 32}).

    Args:
        cls_attn: ``[B, N]`` CLS attention.

    Returns:
        ``[B]`` int64 on ``cls_attn``'s device, each in 1..N (no host sync).
    """
    keep, _ = _published_keep_and_step(outlier_count(cls_attn), cls_attn.shape[-1])
    return keep


def plus_sample_mask(counts: torch.Tensor, n: int, *, centred: bool = False) -> torch.Tensor:
    """PruMerge+'s spatially uniform raster samples, as a mask over the N patches.

    Image b samples ``range(start_b, N - 1, stride_b)``, where ``step_b = int(1 / (c_b / N))`` and
    ``stride_b = max(1, int(step_b / 3))``: the published ``torch.arange(0, 575, int(step_length / 3))`` with its
    hard-coded 575 generalised to N - 1 and its stride of 0 (a crash) raised to 1. ``start_b`` is 0, as in the
    project's specification and the published commit 1ca8b2b; ``centred=True`` starts at ``int(step_b / 6)``
    instead, as the published commit 9d6586e (the file the README links to) does. ``prumerge`` uses 0.

    Args:
        counts: ``[B]`` int64 outlier counts c_b (``outlier_count``); 0 is treated as 1.
        n: N, the number of patches.
        centred: start each raster at ``int(step_b / 6)`` instead of 0.

    Returns:
        ``[B, N]`` bool, True at the sampled patch indices (whether or not they are top-k centres already).
    """
    _, step = _published_keep_and_step(counts, n)
    step = step.unsqueeze(-1)  # [B, 1]
    stride = torch.div(step, 3, rounding_mode="floor").clamp(min=1)  # [B, 1]
    start = torch.div(step, 6, rounding_mode="floor") if centred else torch.zeros_like(step)  # [B, 1]
    position = torch.arange(n, device=counts.device).unsqueeze(0)  # [1, N]
    offset = position - start  # [B, N]
    return (offset >= 0) & (offset % stride == 0) & (position < n - 1)


def fixed_plus_plan(n: int, budget: int) -> tuple[int, list[int]]:
    """The published fixed-count PruMerge+ plan (``if_adaptive=False``) for ``--token-budget K``: host integers only.

    With ``r = K / (2 N)`` (Python floats, K clamped to N): the top ``int(N * r)`` patches by attention, then the
    raster ``range(int(s / 2), N - 1, s)`` with ``s = int(1 / r)``, kept whole (repeats of top patches included).
    K = 144, N = 576: r = 1/8, 72 top + 72 raster = 144 centres (also K = 64, 128, 192: exactly K). Where 1 / r
    is not an integer the raster is longer than the top-k, so the plan holds more than K centres (K = 160: 80 +
    82; K = 320: 160 + 192); the published code would crash there (its index tensor is sized 2 x top-k). A plan
    with no centre at all (K = 1) keeps the top patch.

    Returns:
        ``(n_top, raster)``: the number of top patches and the raster's patch indices (ascending).
    """
    ratio = min(budget, n) / (2 * n)
    n_top = int(n * ratio)
    step = int(1 / ratio)
    raster = list(range(int(step / 2), n - 1, step))
    if n_top + len(raster) == 0:
        n_top = 1
    return n_top, raster


def _fixed_plus_candidates(order: torch.Tensor, n_top: int, raster: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre list and the published complement for the fixed-count PruMerge+ rule.

    Args:
        order: ``[B, N]`` patch indices by descending attention.
    Returns:
        ``(centres [B, M], complement [B, N - M])``. The complement is the published ``complement_idx``: the
        non-centre patches in ascending order without their R smallest, R = the number of repeated entries in the
        centre list (the published function drops as many leading entries as the list is long).
    """
    B, N = order.shape
    device = order.device
    raster_t = torch.tensor(raster, dtype=torch.long, device=device).expand(B, len(raster))
    centres = torch.cat([order[:, :n_top], raster_t], dim=1)  # [B, M]
    listed = torch.zeros(B, N, dtype=torch.bool, device=device).scatter_(1, centres, True)  # [B, N]
    distinct = listed.sum(dim=1)  # [B]
    repeats = centres.shape[1] - distinct  # [B]
    position = torch.arange(N, device=device)
    ascending_rest = torch.where(listed, N + position, position).sort(dim=1).values  # complement first, ascending
    take = repeats.unsqueeze(1) + torch.arange(N - centres.shape[1], device=device)  # [B, N - M]
    return centres, ascending_rest.gather(1, take)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]``: ``[B, N, C]``, ``[B, P]`` -> ``[B, P, C]``, one ``index_select`` of whole rows when ``x``
    flattens to ``[B * N, C]`` without a copy (much faster on CPU than ``gather`` with an expanded index)."""
    B, N, C = x.shape
    if x.stride(2) == 1 and x.stride(0) == N * x.stride(1):
        offset = (torch.arange(B, device=index.device) * N).unsqueeze(-1)  # [B, 1]
        return x.reshape(B * N, C).index_select(0, (index + offset).flatten()).view(B, -1, C)
    return x[torch.arange(B, device=index.device).unsqueeze(-1), index]  # e.g. a [:, 1:] slice of the tower's


def _neighbour_search(
    keys: torch.Tensor, centres: torch.Tensor, n_neighbors: int, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Each centre's ``n_neighbors`` nearest patches by key cosine, as patch indices ``[B, P, n_neighbors]``.

    The one dense product is ``centre_keys @ keys^T`` ``[B, P, Ck] x [B, Ck, N]`` in float32; each column is scaled by
    ``1 / |k_j|`` only, which gives the cosine up to the factor ``1 / |k_i|``, the same along a row, so each row's
    top-k is the cosine one without writing a normalised copy of the keys.

    Args:
        keys: ``[B, N, Ck]`` the patches' keys.
        centres: ``[B, P]`` the centres' patch indices (rows may be padded with any patch index).
        n_neighbors: k, at most the number of candidates less one.
        candidates: None: every patch but the centre itself is a candidate (PruMerge, PruMerge+ adaptive). Else
            ``[B, N]`` an explicit candidate list whose first P positions are ``centres`` (the fixed-count
            PruMerge+ rule): centre i may pick any position but its own, so a repeated patch's other copy, and a
            patch listed twice can be picked twice; patches absent from the list are never picked.
    """
    B, P = centres.shape
    if n_neighbors == 0:
        return centres.new_empty(B, P, 0)
    all_keys = keys.detach().float()  # [B, N, Ck] (no copy in float32)
    inverse_norm = torch.linalg.vector_norm(all_keys, dim=-1).clamp_min(1e-12).reciprocal()  # [B, N]
    centre_keys = _gather_rows(all_keys, centres)  # [B, P, Ck]
    similarity = torch.bmm(centre_keys, all_keys.transpose(1, 2)).mul_(inverse_norm.unsqueeze(1))  # [B, P, N]
    if candidates is None:
        similarity.scatter_(-1, centres.unsqueeze(-1), float("-inf"))  # a centre is not its own neighbour
        return similarity.topk(n_neighbors, dim=-1, sorted=False).indices  # [B, P, k]
    similarity = similarity.gather(-1, candidates.unsqueeze(1).expand(B, P, candidates.shape[1]))  # [B, P, N]
    own = torch.arange(P, device=centres.device)
    similarity[:, own, own] = float("-inf")  # list position i is not its own neighbour; a repeated copy is
    picked = similarity.topk(n_neighbors, dim=-1, sorted=False).indices  # [B, P, k] list positions
    return candidates.gather(1, picked.flatten(1)).view_as(picked)  # patch indices, maybe repeated


def _merge(
    features: torch.Tensor,
    weights: torch.Tensor,
    centres: torch.Tensor,
    neighbours: torch.Tensor,
    pruned: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged centres and the extra token: the only differentiable step (w.r.t. ``features`` and ``weights``).

    ``merged[b, i] = x[b, centres[b, i]] + sum_j weights[b, j] x[b, j]`` over ``j in neighbours[b, i]`` (a patch
    listed twice counts twice), ``extra[b] = sum_{j: pruned[b, j]} weights[b, j] x[b, j]``. All of it is one
    ``embedding_bag``, a fused gather and weighted sum: per image, P bags of ``1 + k`` rows (the centre with weight
    1, its neighbours with their weights), then one bag of all N rows (weight 0 where not pruned), so each image's
    features are read from memory once, while they are hot. ``P (k + 1) C + N C`` multiply-adds per image, no
    ``[B, P, k, C]`` block and no ``[B, P, N]`` merge matrix in memory.

    Args:
        features: ``[B, N, C]``.
        weights: ``[B, N]`` the CLS attention, in the features' dtype.
        centres: ``[B, P]`` patch indices (rows may be padded: padded rows are merged like the others).
        neighbours: ``[B, P, k]`` patch indices, k >= 0.
        pruned: ``[B, N]`` bool, the patches summed into the extra token.

    Returns:
        ``(merged [B, P, C], extra [B, C])`` in the features' dtype.
    """
    B, N, C = features.shape
    P, k = neighbours.shape[1], neighbours.shape[2]
    device = features.device
    image_start = (torch.arange(B, device=device) * N).unsqueeze(-1)  # [B, 1] first row of image b in [B * N, C]
    bags = torch.cat([centres.unsqueeze(-1), neighbours], dim=-1).view(B, P * (1 + k))  # [B, P (1 + k)]
    rows = torch.cat([torch.arange(N, device=device).expand(B, N), bags], dim=1) + image_start  # [B, L]
    neighbour_weights = weights.gather(-1, neighbours.flatten(1)).view(B, P, k)  # [B, P, k]
    row_weights = torch.cat([  # [B, L], L = N + P (1 + k)
        weights.masked_fill(~pruned, 0.0),
        torch.cat([weights.new_ones(B, P, 1), neighbour_weights], dim=-1).view(B, P * (1 + k)),
    ], dim=1)
    L = rows.shape[1]
    bag_starts = torch.cat([torch.zeros(1, dtype=torch.long, device=device),
                            N + torch.arange(P, device=device) * (1 + k)])  # [1 + P]: the extra bag, then P
    offsets = (torch.arange(B, device=device) * L).unsqueeze(-1) + bag_starts  # [B, 1 + P]
    table = features.reshape(B * N, C)  # a view when features is contiguous (a slice [:, 1:] is copied once)
    out = torch.nn.functional.embedding_bag(
        rows.flatten(), table, offsets.flatten(), per_sample_weights=row_weights.flatten(), mode="sum"
    ).view(B, 1 + P, C)
    return out[:, 1:], out[:, 0]


def _invalid_attention(cls_attn: torch.Tensor) -> ValueError:
    return ValueError(
        f"cls_attn must hold finite, non-negative attention weights; "
        f"cls_attn of shape {list(cls_attn.shape)} contains NaN, inf or negative values"
    )


def _check_inputs(features: torch.Tensor, keys: torch.Tensor, cls_attn: torch.Tensor, budget, neighbors) -> None:
    """Raise ValueError/TypeError naming the tensor or argument and its shape/value (no host sync)."""
    if features.dim() != 3 or features.shape[1] < 1:
        raise ValueError(f"features must be [B, N, C] with N >= 1, got features of shape {list(features.shape)}")
    B, N, _ = features.shape
    if keys.dim() != 3 or keys.shape[:2] != features.shape[:2]:
        raise ValueError(
            f"keys must be [B, N, Ck] = [{B}, {N}, Ck] to match features of shape {list(features.shape)}, "
            f"got keys of shape {list(keys.shape)}"
        )
    if cls_attn.shape != features.shape[:2]:
        raise ValueError(
            f"cls_attn must be [B, N] = [{B}, {N}] to match features of shape {list(features.shape)}, "
            f"got cls_attn of shape {list(cls_attn.shape)}"
        )
    for name, tensor in (("features", features), ("keys", keys), ("cls_attn", cls_attn)):
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype} of shape {list(tensor.shape)}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget must be a positive int or None, got {budget!r}")
    if isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 0:
        raise ValueError(f"neighbors must be a non-negative int, got {neighbors!r}")


def prumerge(
    features: torch.Tensor,
    keys: torch.Tensor,
    cls_attn: torch.Tensor,
    *,
    plus: bool = False,
    budget: int | None = None,
    neighbors: int = DEFAULT_NEIGHBORS,
) -> PruMergeOutput:
    """Reduce each image's N patch tokens to M_i merged centres plus one extra token (PruMerge / PruMerge+).

    ``[B, N, C] -> B x [M_i + 1, C]``. At batch size 1 the centres and merged vectors are those of the published
    ``token_prune_merge_advanced`` (``plus=False``) / ``token_prune_merge_advanced_plus`` (``plus=True``); in a batch
    every image gets exactly what it would get alone. See the module docstring for the algorithm.

    Args:
        features: ``[B, N, C]`` patch features (the selected layer's output without CLS); the tokens are merged
            from these and keep their dtype.
        keys: ``[B, N, Ck]`` the patches' keys (``k_proj`` of the layer after the selected one, CLS row dropped);
            only their directions matter (cosine similarity, computed in float32).
        cls_attn: ``[B, N]`` CLS attention on each patch (``cls_attention``): finite, non-negative.
        plus: PruMerge+: add the spatially uniform raster samples as further centres.
        budget: None for PruMerge's adaptive (IQR outlier) count; else K. PruMerge: the top K patches (clamped to
            N), so ``K + 1`` tokens with the extra one. PruMerge+: the published fixed-count rule
            (``fixed_plus_plan``): about K centres (144 at K = 144), a patch that is both a top patch and a raster
            sample counted twice.
        neighbors: patches merged into each centre (published: 32); clamped to N - 1; 0 merges nothing.

    Returns:
        ``PruMergeOutput`` with ``tokens`` (B tensors ``[M_i + 1, C]``) and ``kept`` (B int64 ``[M_i]`` patch
        indices in output order), M_i >= 1.

    Raises:
        ValueError: shapes that disagree; ``cls_attn`` containing NaN, inf or negative values (checked at the
            single host sync below); a bad ``budget`` or ``neighbors``.
        TypeError: a non-floating-point input.

    Host syncs: exactly one per call (the per-image centre counts, which become shapes, read together with the
    ``cls_attn`` validity flag).
    """
    _check_inputs(features, keys, cls_attn, budget, neighbors)
    B, N, C = features.shape
    if B == 0:
        return PruMergeOutput(tokens=[], kept=[])
    device = features.device

    with torch.no_grad():
        attn = cls_attn.detach()
        invalid = (~torch.isfinite(attn)).any() | (attn < 0).any()  # [] bool, read at the sync below
        # descending attention; ties broken by patch index (stable), so the order never depends on the batch
        descending, order = torch.sort(attn.float(), dim=-1, descending=True, stable=True)  # [B, N] each

        if plus and budget is not None:  # the published fixed-count rule: its own centre list, with repeats
            n_top, raster = fixed_plus_plan(N, budget)
            centres, complement = _fixed_plus_candidates(order, n_top, raster)  # [B, P], [B, N - P]
            candidates = torch.cat([centres, complement], dim=1)  # [B, N]: the list positions, then the rest
            pruned = torch.zeros(B, N, dtype=torch.bool, device=device).scatter_(1, complement, True)
            P = centres.shape[1]
            n_centres = [P] * B  # known on the host
            if bool(invalid):  # the one host sync of this branch
                raise _invalid_attention(cls_attn)
        else:
            position = torch.arange(N, device=device)  # [N]
            rank = torch.empty_like(order).scatter_(-1, order, position.expand(B, N))  # [B, N] each patch's rank
            if budget is None:
                counts = _outlier_count_sorted(descending)  # [B]
                keep, _ = _published_keep_and_step(counts, N)  # [B]
                top = rank < keep.unsqueeze(-1)  # [B, N]
            else:  # plain PruMerge at a budget: the top K (the published if_adaptive=False branch)
                top = rank < min(budget, N)  # [B, N]
            if plus:  # output order: top-k by attention rank, then raster samples by patch index, then the rest
                samples = plus_sample_mask(counts, N) & ~top  # [B, N]
                centre = top | samples  # [B, N]
                sort_key = torch.where(top, rank, torch.where(samples, N + position, 2 * N + position))  # [B, N]
                out_order = sort_key.argsort(dim=-1)  # [B, N]
            else:  # the top-k by attention rank come first in ``order`` already
                centre, out_order = top, order
            synced = torch.cat([centre.sum(dim=-1), invalid.long().unsqueeze(0)]).tolist()  # the one host sync
            if synced[-1]:
                raise _invalid_attention(cls_attn)
            n_centres = synced[:-1]
            P = max(n_centres)
            centres = out_order[:, :P]  # [B, P] centres first; shorter rows padded with non-centres, sliced off
            candidates = None  # every other patch
            pruned = ~centre
        neighbours = _neighbour_search(keys, centres, min(neighbors, N - 1), candidates)  # [B, P, k]

    # Differentiable part (w.r.t. features and cls_attn): one gather-merge for every mode
    merged, extra = _merge(features, cls_attn.to(features.dtype), centres, neighbours, pruned)  # [B, P, C], [B, C]
    tokens = [torch.cat([merged[b, :n], extra[b : b + 1]], dim=0) for b, n in enumerate(n_centres)]  # [n + 1, C]
    kept = [centres[b, :n] for b, n in enumerate(n_centres)]  # [n] each
    return PruMergeOutput(tokens=tokens, kept=kept)
