"""PruMerge / PruMerge+ reduction: hand-worked cases, a plain per-token oracle of the published code, edge cases.

The oracle (``published_prumerge``) follows github.com/42Shawn/LLaVA-PruMerge ``clip_encoder.py`` at batch size 1:
numpy IQR (``outlier_dectection``), ``int(N * ratio)`` top-k, PruMerge+'s ``arange(0, N - 1, int(step / 3))``
raster filtered by a list comprehension, and a Python loop over centres whose "rest" set is the other centres plus
the complement (``x_others[:i]``, ``x_others[i+1:]``, ``non_topk``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llava.model.multimodal_encoder.prumerge import (
    PruMergeOutput,
    cls_attention,
    outlier_count,
    outlier_keep_count,
    plus_sample_mask,
    prumerge,
)

# --------------------------------------------------------------------------------------------------------------
# The oracle: the published algorithm for one image, written as a plain loop (never calls the code under test).
# --------------------------------------------------------------------------------------------------------------


def published_prumerge(features, keys, cls_attn, *, plus=False, budget=None, neighbors=32):
    """features [N, C], keys [N, Ck], cls_attn [N] (float32) -> (centre indices, tokens [M + 1, C])."""
    N = features.shape[0]
    if budget is None:
        attn_np = cls_attn.to(torch.float32).numpy().flatten()
        q1 = np.percentile(attn_np, 25)
        q3 = np.percentile(attn_np, 75)
        count = len(np.where(attn_np > q3 + 1.5 * (q3 - q1))[0])
        ratio = count / len(attn_np)
        k = max(1, int(N * ratio))  # the published code keeps int(N * ratio), possibly 0; we keep at least one
        idx = torch.topk(cls_attn, k, largest=True).indices.tolist()
        if plus:
            step_length = int(1 / max(ratio, 1 / N))
            stride = max(1, int(step_length / 3))
            arithmetic_sequence = list(range(0, N - 1, stride))
            idx = idx + [x for x in arithmetic_sequence if x not in idx]
    elif plus:  # the published training branch (if_adaptive=False), generalised from N = 576 to any N
        reduction_ratio = min(budget, N) / (2 * N)
        step_length = int(1 / reduction_ratio)
        idx = torch.topk(cls_attn, int(N * reduction_ratio), largest=True).indices.tolist()
        idx = idx + list(range(int(step_length / 2), N - 1, int(step_length)))  # repeats are not filtered
        if not idx:
            idx = [int(cls_attn.argmax())]
    else:
        idx = torch.topk(cls_attn, min(budget, N), largest=True).indices.tolist()
    # published complement_idx: zero the listed positions of arange(N), sort, drop as many entries as listed
    masked = list(range(N))
    for j in idx:
        masked[j] = 0
    compl = sorted(masked)[len(idx):]
    unit_keys = F.normalize(keys, p=2, dim=-1)
    tokens = []
    for i, centre in enumerate(idx):
        rest = idx[:i] + idx[i + 1 :] + compl
        cos_sim = unit_keys[rest] @ unit_keys[centre]
        cluster = torch.topk(cos_sim, min(neighbors, len(rest)), largest=True).indices
        members = torch.tensor(rest)[cluster]
        weighted = torch.sum(features[members] * cls_attn[members].unsqueeze(-1), dim=0)
        tokens.append(features[centre] + weighted)
    if compl:
        extra = torch.sum(features[compl] * cls_attn[compl].unsqueeze(-1), dim=0)
    else:
        extra = torch.zeros(features.shape[1])
    tokens.append(extra)
    return idx, torch.stack(tokens)


def random_inputs(seed, B, N, C=64, sharpness=2.0):
    """Features, keys and a softmax CLS attention with a realistic heavy right tail (written plainly here)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, N, C, generator=g)
    keys = torch.randn(B, N, C, generator=g)
    logits = sharpness * torch.randn(B, N + 1, generator=g)
    cls_attn = torch.softmax(logits, dim=-1)[:, 1:]
    return features, keys, cls_attn


# --------------------------------------------------------------------------------------------------------------
# Hand-worked example: N = 8, C = 2, neighbors = 2.
#   cls_attn a = [.02, .03, .05, .04, .06, .07, .08, .65] (sums to 1); features x_j = (j, 1);
#   keys are unit vectors at angles (degrees) 10, 90, 25, 190, 105, 260, 180, 0 for patches 0..7.
#   Sorted a: .02 .03 .04 .05 .06 .07 .08 .65 -> Q1 = .0375, Q3 = .0725, fence = .125 -> one outlier (patch 7).
#   Nearest two keys by angle: 7 -> {0, 2}; 0 -> {7, 2}; 2 -> {0, 7}; 4 -> {1, 6}; 6 -> {3, 4}; 5 -> {3, 6};
#   3 -> {6, 5}; 1 -> {4, 2}.
# --------------------------------------------------------------------------------------------------------------

HAND_ATTN = [0.02, 0.03, 0.05, 0.04, 0.06, 0.07, 0.08, 0.65]
HAND_ANGLES = [10.0, 90.0, 25.0, 190.0, 105.0, 260.0, 180.0, 0.0]


def hand_inputs():
    features = torch.tensor([[float(j), 1.0] for j in range(8)]).unsqueeze(0)  # [1, 8, 2]
    radians = torch.tensor(HAND_ANGLES) * math.pi / 180
    keys = torch.stack([torch.cos(radians), torch.sin(radians)], dim=-1).unsqueeze(0)  # [1, 8, 2]
    cls_attn = torch.tensor(HAND_ATTN).unsqueeze(0)  # [1, 8]
    return features, keys, cls_attn


def test_hand_worked_prumerge():
    out = prumerge(*hand_inputs(), neighbors=2)
    assert isinstance(out, PruMergeOutput)
    assert out.kept[0].tolist() == [7]
    assert out.counts == [2]
    expected = torch.tensor(
        [
            [7.10, 1.07],  # x7 + .02 x0 + .05 x2
            [1.32, 0.35],  # extra: sum over patches 0..6 of a_j x_j
        ]
    )
    torch.testing.assert_close(out.tokens[0], expected, atol=1e-6, rtol=0)


def test_hand_worked_prumerge_plus():
    # c = 1, ratio = 1/8, step = 8, stride = int(8 / 3) = 2 -> raster 0, 2, 4, 6 (none of them top-k)
    out = prumerge(*hand_inputs(), plus=True, neighbors=2)
    assert out.kept[0].tolist() == [7, 0, 2, 4, 6]
    expected = torch.tensor(
        [
            [7.10, 1.07],  # x7 + .02 x0 + .05 x2
            [4.65, 1.70],  # x0 + .65 x7 + .05 x2
            [6.55, 1.67],  # x2 + .02 x0 + .65 x7
            [4.51, 1.11],  # x4 + .03 x1 + .08 x6
            [6.36, 1.10],  # x6 + .04 x3 + .06 x4
            [0.50, 0.14],  # extra: .03 x1 + .04 x3 + .07 x5
        ]
    )
    torch.testing.assert_close(out.tokens[0], expected, atol=1e-6, rtol=0)


def test_hand_worked_budget():
    out = prumerge(*hand_inputs(), budget=3, neighbors=2)
    assert out.kept[0].tolist() == [7, 6, 5]
    expected = torch.tensor(
        [
            [7.10, 1.07],  # x7 + .02 x0 + .05 x2
            [6.36, 1.10],  # x6 + .04 x3 + .06 x4
            [5.60, 1.12],  # x5 + .04 x3 + .08 x6
            [0.49, 0.20],  # extra: .02 x0 + .03 x1 + .05 x2 + .04 x3 + .06 x4
        ]
    )
    torch.testing.assert_close(out.tokens[0], expected, atol=1e-6, rtol=0)


def test_hand_worked_budget_plus():
    # K = 4, N = 8: r = 4/16, top int(8 r) = 2 -> patches 7, 6; s = int(1/r) = 4, raster range(2, 7, 4) = 2, 6.
    # Centres [7, 6, 2, 6]: patch 6 twice (one repeat). Published complement: [0, 1, 3, 4, 5] without its one
    # smallest entry -> [1, 3, 4, 5]; patch 0 feeds nothing. Keys at angles 0:10 1:90 2:25 3:190 4:105 5:260
    # 6:180 7:0 degrees; each centre's 2 nearest among the other list positions and the complement.
    out = prumerge(*hand_inputs(), plus=True, budget=4, neighbors=2)
    assert out.kept[0].tolist() == [7, 6, 2, 6]
    expected = torch.tensor(
        [
            [7.13, 1.08],  # x7 + .05 x2 + .03 x1 (patch 0, the nearest, is not a candidate)
            [6.60, 1.12],  # x6 + .08 x6 (its repeated copy) + .04 x3
            [6.58, 1.68],  # x2 + .65 x7 + .03 x1
            [6.60, 1.12],  # the repeat: the same as the first copy
            [0.74, 0.20],  # extra: .03 x1 + .04 x3 + .06 x4 + .07 x5
        ]
    )
    torch.testing.assert_close(out.tokens[0], expected, atol=1e-6, rtol=0)


def test_fixed_plus_at_144_is_the_published_72_plus_72():
    from llava.model.multimodal_encoder.prumerge import fixed_plus_plan

    n_top, raster = fixed_plus_plan(576, 144)
    assert n_top == 72 and raster == list(range(4, 575, 8)) and len(raster) == 72
    # where 1 / r is not an integer the raster is longer than the top-k: K = 160 -> s = int(7.2) = 7 -> 82 samples
    n_top, raster = fixed_plus_plan(576, 160)
    assert (n_top, len(raster), raster[:2]) == (80, 82, [3, 10])
    assert [len(r) + t for t, r in (fixed_plus_plan(576, k) for k in (64, 128, 192, 320))] == [64, 128, 192, 352]
    assert fixed_plus_plan(100, 1) == (1, [])  # nothing planned: the top patch is kept
    features, keys, cls_attn = random_inputs(seed=144, B=3, N=576)
    # image 1: every raster sample is also a top patch (distinct values: tie order is unspecified in topk)
    cls_attn[1, 4:575:8] = cls_attn[1].max() * 2 + torch.arange(72) * 1e-4
    out = prumerge(features, keys, cls_attn, plus=True, budget=144)
    assert out.counts == [145, 145, 145]
    for b in range(3):
        idx, tokens = published_prumerge(features[b], keys[b], cls_attn[b], plus=True, budget=144)
        assert out.kept[b].tolist() == idx
        torch.testing.assert_close(out.tokens[b], tokens, atol=1e-4, rtol=1e-4)
    assert len(set(out.kept[1].tolist())) == 72  # all 72 raster samples repeat a top patch


def test_hand_worked_all_neighbours_and_none():
    features, keys, cls_attn = hand_inputs()
    everyone = prumerge(features, keys, cls_attn, neighbors=100)  # clamped to N - 1 = 7
    torch.testing.assert_close(everyone.tokens[0][0], torch.tensor([8.32, 1.35]), atol=1e-6, rtol=0)
    nobody = prumerge(features, keys, cls_attn, neighbors=0)
    torch.testing.assert_close(nobody.tokens[0][0], torch.tensor([7.0, 1.0]), atol=0, rtol=0)


def test_hand_worked_gradients():
    features, keys, cls_attn = hand_inputs()
    features.requires_grad_(True)
    cls_attn.requires_grad_(True)
    out = prumerge(features, keys, cls_attn, neighbors=2)
    torch.stack(out.tokens).sum().backward()
    # d/dx_j of (x7 + a0 x0 + a2 x2) + sum_{j != 7} a_j x_j, per coordinate
    expected = torch.tensor([0.04, 0.03, 0.10, 0.04, 0.06, 0.07, 0.08, 1.0])
    torch.testing.assert_close(features.grad[0], expected.unsqueeze(-1).expand(8, 2), atol=1e-6, rtol=0)
    # d/da_j: x0 and x2 twice (neighbour and pruned), others once, the centre not at all; coordinates summed
    expected_attn = torch.tensor([2 * 1.0, 2.0, 2 * 3.0, 4.0, 5.0, 6.0, 7.0, 0.0])
    torch.testing.assert_close(cls_attn.grad[0], expected_attn, atol=1e-6, rtol=0)
    assert keys.grad is None


def test_cls_attention_literal():
    q_cls = torch.tensor([[1.0, 0.0]])  # [1, 2]
    keys_all = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]]])  # [1, 1 + 2, 2]
    # logits [0, 2, 0] / sqrt(2): softmax = [1, e^sqrt2, 1] / (2 + e^sqrt2), CLS column dropped
    e = math.exp(math.sqrt(2.0))
    expected = torch.tensor([[e / (2 + e), 1 / (2 + e)]])
    got = cls_attention(q_cls, keys_all)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    half = cls_attention(q_cls.half(), keys_all.half())
    torch.testing.assert_close(half, expected, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# The keep count.
# --------------------------------------------------------------------------------------------------------------


def numpy_outlier_count(row):
    attn_np = row.to(torch.float32).numpy().flatten()
    q1, q3 = np.percentile(attn_np, 25), np.percentile(attn_np, 75)
    return int((attn_np > q3 + 1.5 * (q3 - q1)).sum())


@pytest.mark.parametrize("N", [7, 49, 100, 576])
def test_outlier_count_matches_numpy(N):
    _, _, cls_attn = random_inputs(seed=N, B=16, N=N)
    got = outlier_count(cls_attn).tolist()
    assert got == [numpy_outlier_count(row) for row in cls_attn]
    half = cls_attn.half()
    assert outlier_count(half).tolist() == [numpy_outlier_count(row) for row in half]


def test_keep_count_reproduces_float_rounding():
    # published k = int(N * (c / N)): for N = 49, c = 2 gives int(1.9999999999999998) = 1
    assert int(49 * (2 / 49)) == 1
    cls_attn = torch.full((1, 49), 0.01)
    cls_attn[0, 10] = cls_attn[0, 20] = 0.5
    assert outlier_count(cls_attn).tolist() == [2]
    assert outlier_keep_count(cls_attn).tolist() == [1]
    out = prumerge(torch.randn(1, 49, 4), torch.randn(1, 49, 4), cls_attn)
    assert out.kept[0].tolist() == [10]
    # never for N = 576
    assert all(int(576 * (c / 576)) == c for c in range(577))


@pytest.mark.parametrize("n", [49, 100, 729])
def test_keep_count_follows_python_floats_for_every_count(n):
    # c large equal values among n - c small equal ones: while c < n / 4, Q1 = Q3 = the small value -> c outliers
    counts = range(1, (n - 1) // 4)
    cls_attn = torch.stack([torch.where(torch.arange(n) < c, 0.5, 0.001) for c in counts])
    assert outlier_count(cls_attn).tolist() == list(counts)
    assert outlier_keep_count(cls_attn).tolist() == [max(1, int(n * (c / n))) for c in counts]


def test_keep_count_is_at_least_one():
    assert outlier_keep_count(torch.full((3, 576), 1 / 576)).tolist() == [1, 1, 1]


# --------------------------------------------------------------------------------------------------------------
# Against the oracle.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("seed,N", [(0, 576), (1, 576), (2, 576), (3, 49), (4, 100), (5, 100)])
def test_matches_published_at_batch_size_one(seed, N, plus):
    features, keys, cls_attn = random_inputs(seed, B=1, N=N)
    assert numpy_outlier_count(cls_attn[0]) > 0  # the published code needs outliers (it divides by the ratio)
    out = prumerge(features, keys, cls_attn, plus=plus)
    idx, tokens = published_prumerge(features[0], keys[0], cls_attn[0], plus=plus)
    assert out.kept[0].tolist() == idx
    torch.testing.assert_close(out.tokens[0], tokens, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("budget", [1, 64, 128, 192])
def test_matches_oracle_with_budget(budget, plus):
    features, keys, cls_attn = random_inputs(seed=budget, B=1, N=576)
    out = prumerge(features, keys, cls_attn, plus=plus, budget=budget)
    idx, tokens = published_prumerge(features[0], keys[0], cls_attn[0], plus=plus, budget=budget)
    assert out.kept[0].tolist() == idx
    assert out.counts == [len(idx) + 1]
    if not plus:
        assert out.counts == [budget + 1]
    torch.testing.assert_close(out.tokens[0], tokens, atol=1e-4, rtol=1e-4)


def test_small_grid_with_few_neighbours_matches_oracle():
    features, keys, cls_attn = random_inputs(seed=7, B=1, N=16, C=8)
    for plus in (False, True):
        out = prumerge(features, keys, cls_attn, plus=plus, neighbors=32)  # 32 > N - 1 = 15
        idx, tokens = published_prumerge(features[0], keys[0], cls_attn[0], plus=plus, neighbors=32)
        assert out.kept[0].tolist() == idx
        torch.testing.assert_close(out.tokens[0], tokens, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Batches, dtypes, edge cases.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plus,budget", [(False, None), (True, None), (False, 50), (True, 50)])
def test_batch_invariance(plus, budget):
    features, keys, cls_attn = random_inputs(seed=11, B=4, N=576)
    cls_attn[2] = 1 / 576  # one image without outliers (all ties)
    batched = prumerge(features, keys, cls_attn, plus=plus, budget=budget)
    for b in range(4):
        alone = prumerge(features[b : b + 1], keys[b : b + 1], cls_attn[b : b + 1], plus=plus, budget=budget)
        assert batched.kept[b].tolist() == alone.kept[0].tolist()
        torch.testing.assert_close(batched.tokens[b], alone.tokens[0], atol=1e-5, rtol=1e-5)
    if budget is None:
        assert len(set(batched.counts)) > 1  # the images really do differ in length


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_fp32(dtype):
    features, keys, cls_attn = random_inputs(seed=21, B=2, N=576)
    reference = prumerge(features, keys, cls_attn, plus=True)
    low = prumerge(features.to(dtype), keys.to(dtype), cls_attn, plus=True)
    assert [k.tolist() for k in low.kept] == [k.tolist() for k in reference.kept]
    for got, want in zip(low.tokens, reference.tokens):
        assert got.dtype == dtype and got.shape == want.shape
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)
    everything_low = prumerge(features.to(dtype), keys.to(dtype), cls_attn.to(dtype))
    assert all(torch.isfinite(t).all() and t.dtype == dtype for t in everything_low.tokens)
    assert all(1 <= n - 1 <= 576 for n in everything_low.counts)


def test_no_outliers_keeps_one_centre():
    features, keys, _ = random_inputs(seed=3, B=1, N=576)
    flat = torch.full((1, 576), 1 / 576)
    out = prumerge(features, keys, flat)
    assert out.kept[0].tolist() == [0]  # ties broken by patch index
    # PruMerge+ with c = 0 uses c = 1: step 576, stride 192 -> raster 0 (already kept), 192, 384
    out_plus = prumerge(features, keys, flat, plus=True)
    assert out_plus.kept[0].tolist() == [0, 192, 384]


def test_plus_sample_mask_strides():
    n = 576
    counts = torch.tensor([0, 1, 36, 100, 288, 576])
    mask = plus_sample_mask(counts, n)
    rows = [torch.nonzero(row).flatten().tolist() for row in mask]
    assert rows[0] == rows[1] == [0, 192, 384]  # step 576, stride 192
    assert rows[2] == list(range(0, 575, 5))  # step 16, stride 5
    assert rows[3] == list(range(0, 575, 1))  # step int(5.76) = 5, stride 1
    assert rows[4] == list(range(0, 575, 1))  # step 2, stride int(2 / 3) = 0 (published crash) -> 1
    assert rows[5] == list(range(0, 575, 1))  # step 1
    centred = plus_sample_mask(torch.tensor([36]), n, centred=True)  # latest commit: arange(int(16/6), 575, 5)
    assert torch.nonzero(centred[0]).flatten().tolist() == list(range(2, 575, 5))
    assert plus_sample_mask(torch.tensor([4]), 49)[0].nonzero().flatten().tolist() == list(range(0, 48, 4))


@pytest.mark.parametrize("n", [49, 100, 196, 576, 729])
def test_plus_sample_mask_follows_python_floats_for_every_count(n):
    counts = torch.arange(1, n + 1)
    mask = plus_sample_mask(counts, n)
    for c, row in zip(counts.tolist(), mask):
        stride = max(1, int(int(1 / (c / n)) / 3))
        assert torch.nonzero(row).flatten().tolist() == list(range(0, n - 1, stride)), c


def test_budget_at_least_n_keeps_everything():
    features, keys, cls_attn = random_inputs(seed=5, B=2, N=49)
    out = prumerge(features, keys, cls_attn, budget=1000)
    for b in range(2):
        assert out.kept[b].tolist() == torch.argsort(cls_attn[b], descending=True).tolist()
        assert out.counts[b] == 50
        torch.testing.assert_close(out.tokens[b][-1], torch.zeros(64), atol=0, rtol=0)  # nothing was pruned
    out_plus = prumerge(features, keys, cls_attn, plus=True, budget=1000)  # clamped to N: r = 1/2
    for b in range(2):  # top int(49 / 2) = 24, then the raster range(1, 48, 2)
        top = torch.argsort(cls_attn[b], descending=True)[:24].tolist()
        assert out_plus.kept[b].tolist() == top + list(range(1, 48, 2))


def test_budget_one():
    features, keys, cls_attn = random_inputs(seed=6, B=3, N=100)
    for plus in (False, True):
        out = prumerge(features, keys, cls_attn, plus=plus, budget=1)
        assert [k.tolist() for k in out.kept] == [[int(cls_attn[b].argmax())] for b in range(3)]
        assert out.counts == [2, 2, 2]


def test_single_patch():
    features = torch.randn(2, 1, 4)
    out = prumerge(features, torch.randn(2, 1, 4), torch.ones(2, 1), plus=True)
    assert [k.tolist() for k in out.kept] == [[0], [0]]
    for b in range(2):
        torch.testing.assert_close(out.tokens[b], torch.cat([features[b], torch.zeros(1, 4)]))


def test_gradient_flows_to_features():
    features, keys, cls_attn = random_inputs(seed=8, B=2, N=576)
    features.requires_grad_(True)
    out = prumerge(features, keys, cls_attn, plus=True)
    sum(t.sum() for t in out.tokens).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert (features.grad.abs().sum(-1) > 0).all()  # every patch feeds a centre, a neighbour sum or the extra


@pytest.mark.parametrize("plus", [False, True])
def test_gradients_match_oracle_with_budget(plus):
    # the fixed-count rules against autograd through the oracle's own gathers and sums (its selection is topk only)
    features, keys, cls_attn = random_inputs(seed=31, B=2, N=576)
    cls_attn[1, 4:575:16] = cls_attn[1].max() * 2 + torch.arange(36) * 1e-4  # PruMerge+: 36 repeated centres
    g = torch.Generator().manual_seed(32)
    ours_x, ours_a = features.clone().requires_grad_(True), cls_attn.clone().requires_grad_(True)
    out = prumerge(ours_x, keys, ours_a, plus=plus, budget=144)
    cotangents = [torch.randn(t.shape, generator=g) for t in out.tokens]
    sum((t * c).sum() for t, c in zip(out.tokens, cotangents)).backward()
    oracle_x, oracle_a = features.clone().requires_grad_(True), cls_attn.clone().requires_grad_(True)
    loss = 0.0
    for b in range(2):
        idx, tokens = published_prumerge(oracle_x[b], keys[b], oracle_a[b], plus=plus, budget=144)
        assert out.kept[b].tolist() == idx
        loss = loss + (tokens * cotangents[b]).sum()
    loss.backward()
    torch.testing.assert_close(ours_x.grad, oracle_x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_a.grad, oracle_a.grad, atol=1e-4, rtol=1e-4)


def test_strided_inputs_as_the_tower_passes_them():
    # the tower passes hidden[:, 1:] and keys[:, 1:], views that are not contiguous
    features, keys, cls_attn = random_inputs(seed=33, B=3, N=577)
    for plus, budget in ((False, None), (True, None), (True, 144)):
        sliced = prumerge(features[:, 1:], keys[:, 1:], cls_attn[:, 1:], plus=plus, budget=budget)
        dense = prumerge(features[:, 1:].contiguous(), keys[:, 1:].contiguous(), cls_attn[:, 1:].contiguous(),
                         plus=plus, budget=budget)
        assert [k.tolist() for k in sliced.kept] == [k.tolist() for k in dense.kept]
        for got, want in zip(sliced.tokens, dense.tokens):
            torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------------------------


def test_shape_errors_name_the_tensor():
    features, keys, cls_attn = random_inputs(seed=9, B=2, N=16, C=8)
    with pytest.raises(ValueError, match=r"keys .*\[2, 15, 8\]"):
        prumerge(features, keys[:, :15], cls_attn)
    with pytest.raises(ValueError, match=r"cls_attn .*\[1, 16\]"):
        prumerge(features, keys, cls_attn[:1])
    with pytest.raises(ValueError, match=r"features .*\[16, 8\]"):
        prumerge(features[0], keys, cls_attn)
    with pytest.raises(ValueError, match=r"keys_all .*\[2, 17, 4\]"):
        cls_attention(torch.randn(2, 8), torch.randn(2, 17, 4))
    with pytest.raises(TypeError, match="cls_attn"):
        prumerge(features, keys, torch.ones(2, 16, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_invalid_attention_values(bad):
    features, keys, cls_attn = random_inputs(seed=10, B=2, N=16, C=8)
    cls_attn[1, 3] = bad
    with pytest.raises(ValueError, match=r"cls_attn of shape \[2, 16\]"):
        prumerge(features, keys, cls_attn)


@pytest.mark.parametrize("kwargs", [{"budget": 0}, {"budget": True}, {"budget": 2.5}, {"neighbors": -1}])
def test_bad_arguments(kwargs):
    features, keys, cls_attn = random_inputs(seed=12, B=1, N=16, C=8)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        prumerge(features, keys, cls_attn, **kwargs)
