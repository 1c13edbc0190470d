"""Analytic cost of a LLaVA forward: FLOPs, KV-cache bytes and weight bytes, from the model's shape alone.

Pure functions of shapes and counts (no tensors, no I/O), so a cost can be put beside a measurement or a paper's
figure for any LLaVA config. A shape comes from a transformers config object or a plain dict
(``LMShape.from_config`` / ``VisionShape.from_config``), or from the presets ``VICUNA_7B``, ``VICUNA_13B`` and
``CLIP_VIT_L_336``.

Notation: B sequences in the batch, T positions per sequence (visual + text, after the splice), h LM width,
i MLP width, a attention heads, k key/value heads, d head width (h / a), L decoder layers, V vocabulary;
for the tower: C width, I MLP width, S = 1 + N tokens (CLS + N patches), P patch side in pixels, L_v layers run.

**Counting rule.** One multiply-add is 2 FLOPs: a ``[m, n] x [n, p]`` matmul is ``2 m n p``. Only matmuls (and
the patch convolution) are counted: norms, rotary embeddings, softmax, activations and residual adds are O(B T h)
each, under 0.1 % of a 7B prefill at any length here, and left out (``torch.utils.flop_counter`` leaves them out
too, which is what the unit tests compare against).

**LM prefill** (``lm_prefill_flops``), per layer, for Llama / Vicuna (SwiGLU MLP, no biases)::

    q_proj, o_proj        2 . 2 B T h (a d)
    k_proj, v_proj        2 . 2 B T h (k d)
    scores Q K^T, A V     2 . 2 B a T^2 d        the quadratic term: 4 B a d T^2
    gate, up, down        3 . 2 B T h i
    lm_head               2 B h V x (1 row per sequence: ``logits="last"``, what generation computes;
                                     T rows: ``logits="all"``, what a training forward / ``logits_to_keep=0`` does)

The quadratic term counts the full T x T square, which is what an eager or SDPA-math kernel multiplies (a causal
mask is added, not skipped); ``causal=True`` counts only the T (T + 1) / 2 pairs a causal flash kernel visits.
So a 7B prefill costs ``L (8 B T h^2 + 6 B T h i + 4 B h T^2) + 2 B h V``, about 12.9 GFLOPs per position plus
0.5 MFLOPs x T per position for the square (h = 4096, i = 11008, L = 32).

**Decode** (``lm_decode_flops``): one new position per sequence against ``context`` cached ones: the same
linear terms with T = 1, the scores over ``context + 1`` keys (4 B a d (context + 1) per layer) and the lm_head
for that one row.

**Vision tower** (``vision_flops``, CLIP ViT): the patch convolution ``2 B N (3 P^2) C`` and, per layer run,
``4 . 2 B S C^2`` (q, k, v, out), ``4 B C S^2`` (scores and A V over all heads), ``2 . 2 B S C I`` (fc1, fc2).
LLaVA-1.5 runs 23 of CLIP ViT-L/14-336's 24 layers (select layer -2); an anyres image is B = tiles.

**Projector** (``projector_flops``): ``mlp2x_gelu`` is ``2 M C h + 2 M h h`` for M visual tokens in all,
``linear`` ``2 M C h``. **Reduction** (``reduction_flops``) is an estimate, not a unit-tested count: next layer's
``k_proj`` over S tokens and ``q_proj`` of the CLS row, the CLS attention row, each centre's key against the N
keys (neighbour ranking) and the merge of 32 neighbours per centre.

**Memory.** KV cache (``kv_cache_bytes``): ``2 L B T k d x bytes per element`` (keys and values of every layer).
Weights (``*_parameters`` x bytes per element): the LM's embeddings ``V h``, per layer ``h (a d) + 2 h (k d) +
(a d) h + 3 h i + 2 h`` (+ biases when the config has them), the final norm ``h`` and an untied lm_head ``V h``;
CLIP's patch convolution (no bias), class and position embeddings, pre-LayerNorm, all its layers (the whole tower is
loaded even when one layer is never run) and post-LayerNorm; the projector's weights and biases.

**Inverse questions.** At batch 1 the LM prefill is exactly ``F(T) = a T^2 + b T + c`` (``a = 4 L a d``,
``b = L (2 h (2 a d + 2 k d) + 6 h i)``, ``c = 2 h V``), so the text length behind a published FLOPs figure
(``text_tokens_for_flops``) or behind a published FLOPs ratio of two visual-token counts at the same text length
(``text_tokens_for_ratio``) is the root of a quadratic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "CLIP_VIT_L_336", "VICUNA_7B", "VICUNA_13B", "LMShape", "VisionShape", "LlavaPrefillCost", "bytes_per_element",
    "kv_cache_bytes", "llava_prefill_cost", "lm_decode_flops", "lm_parameters", "lm_prefill_flops",
    "projector_flops", "projector_parameters", "reduction_flops", "text_tokens_for_flops", "text_tokens_for_ratio",
    "vision_flops",
    "vision_parameters",
]

_MISSING = object()


def _field(config: Any, name: str, default: Any = _MISSING) -> Any:
    """``config[name]`` (dict) or ``config.name`` (config object); a required key that is absent raises."""
    value = config.get(name, _MISSING) if isinstance(config, Mapping) else getattr(config, name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            kind = "dict" if isinstance(config, Mapping) else type(config).__name__
            raise ValueError(f"the config ({kind}) has no {name!r}: it is needed for the cost model")
        return default
    return value


@dataclass(frozen=True)
class LMShape:
    """A decoder-only language model's shape (Llama / Vicuna / Mistral layout: SwiGLU MLP, RMSNorm, GQA).

    Attributes:
        hidden_size: h.   intermediate_size: i.   num_layers: L.   num_heads: a.   num_kv_heads: k (GQA; = a for
        Vicuna).   vocab_size: V.   head_dim: d (h / a unless the config says otherwise).
        tie_word_embeddings: the lm_head shares the embedding matrix (not counted twice in the weights).
        attention_bias / mlp_bias: biases on the attention / MLP projections (Llama: none).
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: Any) -> LMShape:
        """From a transformers config (``LlamaConfig``, ``LlavaConfig``, ...) or a dict with the same keys:
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size, and optionally
        num_key_value_heads, head_dim, tie_word_embeddings, attention_bias, mlp_bias."""
        hidden = int(_field(config, "hidden_size"))
        heads = int(_field(config, "num_attention_heads"))
        return cls(
            hidden_size=hidden,
            intermediate_size=int(_field(config, "intermediate_size")),
            num_layers=int(_field(config, "num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(_field(config, "num_key_value_heads", heads)),
            vocab_size=int(_field(config, "vocab_size")),
            head_dim=int(_field(config, "head_dim", hidden // heads)),
            tie_word_embeddings=bool(_field(config, "tie_word_embeddings", False)),
            attention_bias=bool(_field(config, "attention_bias", False)),
            mlp_bias=bool(_field(config, "mlp_bias", False)),
        )

    def with_layers(self, num_layers: int) -> LMShape:
        """The same shape with ``num_layers`` decoder layers (a benchmark's truncated model)."""
        return replace(self, num_layers=num_layers)


@dataclass(frozen=True)
class VisionShape:
    """A CLIP ViT vision tower's shape and how many of its layers LLaVA runs.

    Attributes:
        hidden_size: C.   intermediate_size: I.   num_layers: all layers (all are loaded).   num_heads.
        image_size / patch_size: pixels; N = (image_size / patch_size)^2 patches, S = N + 1 tokens.
        select_layer: LLaVA's ``mm_vision_select_layer`` (-2: the penultimate layer's output, so L - 1 layers run).
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    select_layer: int = -2

    @classmethod
    def from_config(cls, config: Any, select_layer: int = -2) -> VisionShape:
        """From a ``CLIPVisionConfig`` or a dict with its keys (hidden_size, intermediate_size, num_hidden_layers,
        num_attention_heads, image_size, patch_size, optionally num_channels)."""
        return cls(
            hidden_size=int(_field(config, "hidden_size")),
            intermediate_size=int(_field(config, "intermediate_size")),
            num_layers=int(_field(config, "num_hidden_layers")),
            num_heads=int(_field(config, "num_attention_heads")),
            image_size=int(_field(config, "image_size")),
            patch_size=int(_field(config, "patch_size")),
            num_channels=int(_field(config, "num_channels", 3)),
            select_layer=select_layer,
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def layers_run(self) -> int:
        """Encoder layers that produce the selected hidden state (23 of 24 for select layer -2)."""
        return self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer


#: lmsys/vicuna-7b-v1.5 (LLaVA-1.5-7B's language model)
VICUNA_7B = LMShape(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
                    vocab_size=32000, head_dim=128)
#: lmsys/vicuna-13b-v1.5 (LLaVA-1.5-13B's language model)
VICUNA_13B = LMShape(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40,
                     vocab_size=32000, head_dim=128)
#: openai/clip-vit-large-patch14-336 (LLaVA-1.5's tower; 23 of 24 layers run)
CLIP_VIT_L_336 = VisionShape(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, image_size=336,
                             patch_size=14)

_DTYPE_BYTES = {
    "float32": 4.0, "fp32": 4.0, "float": 4.0, "float16": 2.0, "fp16": 2.0, "half": 2.0, "bfloat16": 2.0,
    "bf16": 2.0, "int8": 1.0, "float8_e4m3fn": 1.0, "float8_e5m2": 1.0, "int4": 0.5, "nf4": 0.5,
}


def bytes_per_element(dtype: Any) -> float:
    """Bytes per element of ``dtype``: a ``torch.dtype``, a name ("float16", "bf16", "int4", ...) or a number."""
    if isinstance(dtype, (int, float)) and not isinstance(dtype, bool):
        return float(dtype)
    name = str(dtype).replace("torch.", "").lower()
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; expected a torch dtype, one of {sorted(_DTYPE_BYTES)} or bytes")
    return _DTYPE_BYTES[name]


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


# ----------------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------------


def lm_prefill_flops(lm: LMShape, tokens: int, batch: int = 1, *, logits: str = "last",
                     causal: bool = False) -> dict[str, int]:
    """FLOPs of one prefill forward of ``batch`` sequences of ``tokens`` positions (formula: module docstring).

    Args:
        logits: "last" (the lm_head on one row per sequence, as generation computes it) or "all" (every row).
        causal: count only the causal half of the T x T square (flash kernels); default the full square.
    Returns:
        ``{"attention_proj", "attention_scores", "mlp", "lm_head", "total"}`` in FLOPs (Python ints when
        ``causal`` is False, so tests can compare exactly).
    """
    _check_counts(tokens=tokens, batch=batch)
    if logits not in ("last", "all"):
        raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
    h, i, layers = lm.hidden_size, lm.intermediate_size, lm.num_layers
    q_width, kv_width = lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim
    rows = batch * tokens
    proj = 2 * rows * h * (2 * q_width + 2 * kv_width)  # q, o + k, v
    pairs = tokens * (tokens + 1) // 2 if causal else tokens * tokens
    scores = 2 * 2 * batch * lm.num_heads * lm.head_dim * pairs  # Q K^T and A V
    mlp = 3 * 2 * rows * h * i
    head_rows = batch * (tokens if logits == "all" else min(tokens, 1))
    parts = {"attention_proj": layers * proj, "attention_scores": layers * scores, "mlp": layers * mlp,
             "lm_head": 2 * head_rows * h * lm.vocab_size}
    parts["total"] = sum(parts.values())
    return parts


def lm_decode_flops(lm: LMShape, context: int, batch: int = 1) -> dict[str, int]:
    """FLOPs of one decoding step: one new position per sequence attending to ``context`` cached positions."""
    _check_counts(context=context, batch=batch)
    h, i, layers = lm.hidden_size, lm.intermediate_size, lm.num_layers
    q_width, kv_width = lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim
    parts = {
        "attention_proj": layers * 2 * batch * h * (2 * q_width + 2 * kv_width),
        "attention_scores": layers * 2 * 2 * batch * lm.num_heads * lm.head_dim * (context + 1),
        "mlp": layers * 3 * 2 * batch * h * i,
        "lm_head": 2 * batch * h * lm.vocab_size,
    }
    parts["total"] = sum(parts.values())
    return parts


def vision_flops(vision: VisionShape, images: int = 1) -> dict[str, int]:
    """FLOPs of the tower on ``images`` images (or anyres tiles), up to the selected layer.

    Returns:
        ``{"patch_embed", "attention_proj", "attention_scores", "mlp", "total"}``.
    """
    _check_counts(images=images)
    c, n = vision.hidden_size, vision.num_patches
    s = n + 1
    layers = vision.layers_run
    parts = {
        "patch_embed": 2 * images * n * c * vision.num_channels * vision.patch_size**2,
        "attention_proj": layers * 4 * 2 * images * s * c * c,
        "attention_scores": layers * 2 * 2 * images * s * s * c,
        "mlp": layers * 2 * 2 * images * s * c * vision.intermediate_size,
    }
    parts["total"] = sum(parts.values())
    return parts


def reduction_flops(vision: VisionShape, centres: int, images: int = 1, neighbors: int = 32) -> int:
    """Estimated FLOPs of PruMerge(+) on ``images`` images keeping ``centres`` centres each (see module docstring)."""
    _check_counts(centres=centres, images=images)
    c, n = vision.hidden_size, vision.num_patches
    s = n + 1
    per_image = (2 * s * c * c  # next layer's k_proj over CLS + patches
                 + 2 * c * c  # q_proj of the CLS row
                 + 2 * s * c  # the CLS attention row
                 + 2 * centres * n * c  # each centre's key against every key (neighbour ranking)
                 + 2 * centres * min(neighbors, n) * c)  # weighted sum of the neighbours into each centre
    return images * per_image


def projector_flops(in_dim: int, out_dim: int, tokens: int, projector_type: str = "mlp2x_gelu") -> int:
    """FLOPs of the projector on ``tokens`` visual tokens in all: ``linear`` or ``mlp{N}x_gelu``."""
    _check_counts(tokens=tokens)
    depth = _projector_depth(projector_type)
    if depth == 0:
        return 0
    return 2 * tokens * in_dim * out_dim + (depth - 1) * 2 * tokens * out_dim * out_dim


def _projector_depth(projector_type: str) -> int:
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    if projector_type.startswith("mlp") and projector_type.endswith("x_gelu"):
        return int(projector_type[3:-len("x_gelu")])
    raise ValueError(f"unknown projector type {projector_type!r}: linear, mlp{{N}}x_gelu or identity")


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------


def kv_cache_bytes(lm: LMShape, tokens: int, batch: int = 1, dtype: Any = "float16") -> float:
    """Bytes of the keys and values of every layer for ``batch`` sequences of ``tokens`` positions."""
    _check_counts(tokens=tokens, batch=batch)
    return 2 * lm.num_layers * batch * tokens * lm.num_kv_heads * lm.head_dim * bytes_per_element(dtype)


def lm_parameters(lm: LMShape) -> int:
    """Parameters of the language model (embeddings, layers, final norm, lm_head unless tied)."""
    h, i = lm.hidden_size, lm.intermediate_size
    q_width, kv_width = lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim
    per_layer = h * q_width + 2 * h * kv_width + q_width * h + 3 * h * i + 2 * h
    if lm.attention_bias:
        per_layer += q_width + 2 * kv_width + h
    if lm.mlp_bias:
        per_layer += 2 * i + h
    embed = lm.vocab_size * h
    return embed + lm.num_layers * per_layer + h + (0 if lm.tie_word_embeddings else embed)


def vision_parameters(vision: VisionShape) -> int:
    """Parameters of the CLIP vision model as loaded (every layer, the post-LayerNorm included)."""
    c, inter = vision.hidden_size, vision.intermediate_size
    embeddings = vision.num_channels * vision.patch_size**2 * c + c + (vision.num_patches + 1) * c
    per_layer = 4 * (c * c + c) + (c * inter + inter) + (inter * c + c) + 2 * 2 * c
    return embeddings + 2 * c + vision.num_layers * per_layer + 2 * c


def projector_parameters(in_dim: int, out_dim: int, projector_type: str = "mlp2x_gelu") -> int:
    depth = _projector_depth(projector_type)
    if depth == 0:
        return 0
    return (in_dim * out_dim + out_dim) + (depth - 1) * (out_dim * out_dim + out_dim)


# ----------------------------------------------------------------------------------------------------------------
# A whole LLaVA prefill, and the prompt length a FLOPs figure implies
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlavaPrefillCost:
    """Cost of the first token for ``batch`` prompts with one image each (all FLOPs; bytes at ``dtype``)."""

    vision: int
    reduction: int
    projector: int
    lm: int
    kv_cache_bytes: float
    weight_bytes: float

    @property
    def total(self) -> int:
        return self.vision + self.reduction + self.projector + self.lm


def llava_prefill_cost(lm: LMShape, vision: VisionShape | None, visual_tokens: int, text_tokens: int, *,
                       batch: int = 1, tiles: int = 1, centres: int | None = None, dtype: Any = "float16",
                       projector_type: str = "mlp2x_gelu", logits: str = "last") -> LlavaPrefillCost:
    """FLOPs and bytes of LLaVA's first token: tower, reduction, projector and LM prefill.

    Args:
        visual_tokens: tokens the LM reads per image (576 for LLaVA-1.5 without reduction; with reduction the
            merged tokens; for LLaVA-1.6 the laid-out count with its newlines).
        text_tokens: text positions per prompt (the ``<image>`` placeholder not counted).
        tiles: tower inputs per image (anyres: 1 + grid tiles).
        centres: centres kept per tile when a reduction runs (adds ``reduction_flops``), None for no reduction.
        vision: None leaves the tower (and the projector, reduction) out: the LM alone.
    """
    tokens = visual_tokens + text_tokens
    lm_flops = lm_prefill_flops(lm, tokens, batch, logits=logits)["total"]
    weights = lm_parameters(lm)
    tower = reduce = project = 0
    if vision is not None:
        tower = vision_flops(vision, batch * tiles)["total"]
        reduce = 0 if centres is None else reduction_flops(vision, centres, batch * tiles)
        project = projector_flops(vision.hidden_size, lm.hidden_size, batch * visual_tokens, projector_type)
        weights += vision_parameters(vision) + projector_parameters(vision.hidden_size, lm.hidden_size,
                                                                    projector_type)
    return LlavaPrefillCost(vision=tower, reduction=reduce, projector=project, lm=lm_flops,
                            kv_cache_bytes=kv_cache_bytes(lm, tokens, batch, dtype),
                            weight_bytes=weights * bytes_per_element(dtype))


def _prefill_quadratic(lm: LMShape, logits: str) -> tuple[float, float, float]:
    """``(a, b, c)`` with ``lm_prefill_flops(lm, T)["total"] == a T^2 + b T + c`` exactly, at batch 1."""
    h, q_width, kv_width = lm.hidden_size, lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim
    a = lm.num_layers * 4 * lm.num_heads * lm.head_dim
    b = lm.num_layers * (2 * h * (2 * q_width + 2 * kv_width) + 6 * h * lm.intermediate_size)
    head = 2 * h * lm.vocab_size
    return (a, b + head, 0) if logits == "all" else (a, b, head)


def text_tokens_for_flops(lm: LMShape, flops: float, visual_tokens: int, *, vision: VisionShape | None = None,
                          logits: str = "last") -> float:
    """The text length t for which ``llava_prefill_cost(lm, vision, visual_tokens, t).total`` equals ``flops``
    (batch 1, one image, no reduction cost): the positive root of the prefill's quadratic in T = visual + t.

    Returns a float (the exact root; negative when even ``visual_tokens`` alone cost more than ``flops``).
    """
    fixed = 0.0
    if vision is not None:
        fixed = vision_flops(vision)["total"] + projector_flops(vision.hidden_size, lm.hidden_size, visual_tokens)
    a, b, c = _prefill_quadratic(lm, logits)
    c -= flops - fixed
    total_tokens = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return total_tokens - visual_tokens


def text_tokens_for_ratio(lm: LMShape, ratio: float, visual_tokens: int, reduced_tokens: int, *,
                          logits: str = "last") -> float:
    """The text length t, the same in both prompts, at which the LM prefill FLOPs ratio
    ``prefill(visual_tokens + t) / prefill(reduced_tokens + t)`` equals ``ratio`` (batch 1).

    With ``F(T) = a T^2 + b T + c`` (``lm_prefill_flops``), t is the root of
    ``F(v + t) - ratio F(r + t) = 0``; the ratio falls from ``F(v) / F(r)`` at t = 0 towards 1 as t grows, so
    there is one root t >= 0 when ``1 < ratio <= F(v) / F(r)``. Returns it as a float, or NaN when no text length
    gives ``ratio``.
    """
    if ratio <= 1 or visual_tokens <= reduced_tokens:
        return math.nan
    a, b, c = _prefill_quadratic(lm, logits)
    v, r = visual_tokens, reduced_tokens
    qa = (1 - ratio) * a  # < 0
    qb = 2 * a * v + b - ratio * (2 * a * r + b)
    qc = (a * v * v + b * v + c) - ratio * (a * r * r + b * r + c)  # F(v) - ratio F(r): >= 0 iff a root t >= 0
    if qc < 0:
        return math.nan
    return (-qb - math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
