"""What ``bench_end_to_end.py`` measures: the plan (geometry x LM x batch size x settings), the model (the package's
``LlavaLlamaForCausalLM`` with Vicuna layer shapes and a random CLIP ViT-L/14-336 loaded from a folder) and its
inputs (views of ``assets/demo.png`` and a prompt of Vicuna's length).

Notation: B prompts (one image each), T text positions per prompt, tiles 1 (LLaVA-1.5) or 5 (LLaVA-1.6 at 672x672).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from PIL import Image

from bench_anyres import BUDGETS as ANYRES_BUDGETS
from bench_anyres import fit_image
from bench_token_reduction import calibrate
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import cost_model
from llava.model.token_reduction import TokenReduction
from token_reduction_report import BUDGETS as V15_BUDGETS

if TYPE_CHECKING:
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_IMAGE = REPO_ROOT / "assets" / "demo.png"
#: decoder shapes: Vicuna-7B / 13B v1.5, and tiny widths with the same depths for --smoke
LM_SIZES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    "tiny-7b": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=32, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=1000),
    "tiny-13b": dict(hidden_size=80, intermediate_size=216, num_hidden_layers=40, num_attention_heads=5,
                     num_key_value_heads=5, vocab_size=1000),
}
LM_NAMES = {"7b": "Vicuna-7B", "13b": "Vicuna-13B", "tiny-7b": "tiny (7B depth)", "tiny-13b": "tiny (13B depth)"}
GEOMETRIES = ("1.5", "1.6")
#: --token-budget settings per geometry (PruMerge's top K, what peers compare at); for 1.6 the image's total
BUDGETS = {"1.5": tuple(V15_BUDGETS), "1.6": tuple(ANYRES_BUDGETS)}
ANYRES_SIZE = (672, 672)  # base + 2x2 grid: 5 tiles
#: text positions of the prompt: the vicuna_v1 system prompt + "USER: <image>\n<one-line question> ASSISTANT:" in
#: Vicuna's tokenizer, so 576 + 87 = 663 positions for LLaVA-1.5 without reduction
TEXT_TOKENS = 87
TEXT_BEFORE_IMAGE = 35
CLS_LOGIT_STD = 0.75  # the starting point of the calibration (bench_token_reduction.py's)
#: adaptive PruMerge's mean count on LLaVA-1.5 images in the paper (~32 of 576, 5.5 %): what the calibration aims at
PRUMERGE_TARGET_COUNT = 32

Setting = tuple[str, "int | None"]  # (mode, --token-budget)


def setting_label(mode: str, budget: int | None) -> str:
    """``"prumerge"`` or ``"prumerge K=64"``: how a setting is named in the tables."""
    return mode if budget is None else f"{mode} K={budget}"


def settings_for(geometry: str, budgets: bool = True) -> tuple[Setting, ...]:
    """none, prumerge, prumerge+ (adaptive), then PruMerge at each of the geometry's budgets when ``budgets``."""
    adaptive = (("none", None), ("prumerge", None), ("prumerge+", None))
    return adaptive + (tuple(("prumerge", k) for k in BUDGETS[geometry]) if budgets else ())


@dataclass(frozen=True)
class Group:
    """One geometry x LM x batch size and the settings measured on it (the tower is timed once per group)."""

    geometry: str
    lm: str
    batch: int
    settings: tuple[Setting, ...]


def make_plan(args: argparse.Namespace) -> list[Group]:
    """The groups to measure, ordered so each LM is built once (``--smoke``: the tiny shapes of the same depths).

    ``--smoke``: a few settings of each kind. ``--quick`` on a CPU: every setting at batch 1 on 7B (1.5 and 1.6),
    the adaptive ones at batch 8 (1.5), 13B adaptive at batch 1 (1.5). Otherwise every setting at every batch size
    (``--batch-sizes`` for 1.5, ``--anyres-batch-sizes`` for 1.6: 1 on a CPU, where a batch of 8 is 40 tower
    tiles, ~1 min a call); a CUDA ``--quick`` runs 13B at batch 1 only.
    """
    if args.smoke:
        plan = [Group("1.5", "7b", 1, (("none", None), ("prumerge", None), ("prumerge+", None), ("prumerge", 64))),
                Group("1.5", "7b", 2, (("none", None), ("prumerge", None))),
                Group("1.6", "7b", 1, (("none", None), ("prumerge", 160))),
                Group("1.5", "13b", 1, (("none", None), ("prumerge+", None)))]
    elif args.quick and args.device.type == "cpu":
        plan = [Group("1.5", "7b", 1, settings_for("1.5")),
                Group("1.5", "7b", 8, settings_for("1.5", budgets=False)),
                Group("1.6", "7b", 1, settings_for("1.6")),
                Group("1.5", "13b", 1, settings_for("1.5", budgets=False))]
    else:
        plan = []
        for lm in ("7b", "13b"):
            for geometry in GEOMETRIES:
                sizes = args.batch_sizes if geometry == "1.5" else args.anyres_batch_sizes
                if args.quick and lm == "13b":
                    sizes = [1]
                plan += [Group(geometry, lm, b, settings_for(geometry)) for b in sizes]
    prefix = "tiny-" if args.smoke else ""
    return [Group(g.geometry, prefix + g.lm, g.batch, g.settings) for g in plan
            if g.geometry in args.geometries and g.lm in args.lms]


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build parameters directly in ``dtype`` (a 7B model built in fp32 and cast would need twice the memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_llava(lm: str, layers: int, clip_dir: Path, args: argparse.Namespace,
                tower: CLIPVisionTower | None = None) -> LlavaLlamaForCausalLM:
    """``LlavaLlamaForCausalLM`` with ``layers`` decoder layers of ``LM_SIZES[lm]``, random weights, the released
    LLaVA-1.6 settings (anyres, ``spatial_unpad``; a ``[B, 3, 336, 336]`` batch takes LLaVA-1.5's path), on
    ``args.device`` in ``args.dtype_t``. ``tower``: a loaded ``CLIPVisionTower`` to share; None loads one from
    ``clip_dir`` through ``CLIPVisionTower.load_model``."""
    from transformers import CLIPVisionConfig

    from llava.model.configuration_llava import LlavaConfig
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.tools.make_tiny_checkpoint import V16_GRID_PINPOINTS

    shape = {k: v for k, v in LM_SIZES[lm].items() if k != "num_hidden_layers"}
    config = LlavaConfig(
        **shape, num_hidden_layers=layers, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, mm_vision_tower=str(clip_dir),
        mm_hidden_size=CLIPVisionConfig.from_pretrained(clip_dir).hidden_size, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", image_aspect_ratio="anyres",
        image_grid_pinpoints=V16_GRID_PINPOINTS, mm_patch_merge_type="spatial_unpad", tokenizer_model_max_length=4096,
        tokenizer_padding_side="left", mm_token_reduction="none", attn_implementation=args.attn)
    torch.manual_seed(args.seed + 1)
    with torch.device(args.device), default_dtype(args.dtype_t):
        model = LlavaLlamaForCausalLM(config)
    with torch.no_grad():  # declared empty: the checkpoint would fill it (upstream's init scale)
        model.get_model().image_newline.normal_(0.0, config.hidden_size ** -0.5)
    if tower is None:
        tower = model.get_vision_tower()
        tower.load_model()
        tower.to(device=args.device, dtype=args.dtype_t)
    else:
        model.get_model().vision_tower = tower
    return model.eval()


def _adaptive_count(tower: CLIPVisionTower, hidden: torch.Tensor) -> float:
    """Mean centres adaptive PruMerge keeps per image of ``hidden`` ``[B, 1+N, C]``."""
    previous = tower.token_reduction
    tower.set_token_reduction(TokenReduction("prumerge", source="flag"))
    try:
        kept = tower.reduce(hidden).kept
    finally:
        tower.set_token_reduction(previous)
    return sum(len(k) for k in kept) / len(kept)


def calibrate_tower(tower: CLIPVisionTower, pixels: torch.Tensor, target: float = PRUMERGE_TARGET_COUNT) -> float:
    """Scale the next layer's ``q_proj`` so adaptive PruMerge keeps about ``target`` centres per image of
    ``pixels`` ``[B, 3, 336, 336]``, the paper's mean on real images (a random CLIP attends almost uniformly, and
    the count of the IQR rule then depends on how peaked the random logits happen to be: 1 to 130+). Start from
    CLS logits of std ``CLS_LOGIT_STD``, then bisect the scale (log-space; the count grows with it). Returns the
    total scale."""
    q_proj = tower.vision_tower.encoder.layers[tower.num_layers_to_run].self_attn.q_proj

    def rescale(factor: float) -> None:
        q_proj.weight.mul_(factor)
        q_proj.bias.mul_(factor)

    with torch.inference_mode():
        hidden = tower.selected_hidden_states(pixels)
    with torch.no_grad():
        scale = calibrate(tower, hidden, CLS_LOGIT_STD)
        low, high, current = 1e-3, 1e3, 1.0  # factors on top of ``scale``; ``current`` is applied
        for _ in range(40):
            middle = (low * high) ** 0.5
            rescale(middle / current)
            current = middle
            with torch.inference_mode():
                count = _adaptive_count(tower, hidden)
            if abs(count - target) <= 0.5 or high / low < 1.001:
                break
            if count > target:
                high = middle
            else:
                low = middle
    return scale * current


def layers_to_build(args: argparse.Namespace, lm: str) -> int:
    """``--lm-layers`` if given; else 1 (``--quick``, ``--smoke``) or 2 on a CPU; on CUDA the full depth when it
    fits in the free memory (else the most layers that do), leaving room for a batch-8 LLaVA-1.6 KV cache."""
    full = LM_SIZES[lm]["num_hidden_layers"]
    if args.lm_layers:
        return min(args.lm_layers, full)
    if args.device.type != "cuda":
        return 1 if (args.quick or args.smoke) else 2
    shape = cost_model.LMShape.from_config(LM_SIZES[lm])
    itemsize = args.dtype_t.itemsize
    per_layer = cost_model.lm_parameters(shape.with_layers(1)) - cost_model.lm_parameters(shape.with_layers(0))
    fixed = cost_model.lm_parameters(shape.with_layers(0)) + cost_model.vision_parameters(cost_model.CLIP_VIT_L_336)
    free, _ = torch.cuda.mem_get_info(args.device)
    kv_per_layer = cost_model.kv_cache_bytes(shape.with_layers(1), 3100, 8, args.dtype_t)  # 8 x ~3000 positions
    fits = int((0.85 * free - fixed * itemsize - 4 * 2**30) // (per_layer * itemsize + kv_per_layer))
    return max(1, min(full, fits))


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def demo_images(n: int, size: tuple[int, int] | None = None) -> list[Image.Image]:
    """``n`` views of ``assets/demo.png`` (the whole image, then square crops sliding over it), so a batch's images
    differ and PruMerge keeps different counts; each fitted to ``size`` (width, height) when given."""
    source = Image.open(DEMO_IMAGE).convert("RGB")
    width, height = source.size
    side = int(0.75 * min(width, height))
    images = [source]
    for k in range(1, n):
        x = (width - side) * (k % 4) // 3
        y = (height - side) * ((k // 4) % 2)
        images.append(source.crop((x, y, x + side, y + side)))
    return [im if size is None else fit_image(im, size) for im in images[:n]]


def make_inputs(model: LlavaLlamaForCausalLM, geometry: str, batch: int, text_tokens: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """One prompt per image, on the model's device.

    The pixels are random (one generator per image): a random CLIP sees no content in a photo, and on one its CLS
    logits are so skewed that the IQR rule keeps ~130 of 576 patches whatever the query's scale, while on noise
    ``calibrate_tower`` can set the count to the paper's ~32.

    Returns:
        ``input_ids [B, T + 1]`` (T random text ids, ``<s>`` first, one -200 after ``TEXT_BEFORE_IMAGE``), an
        all-ones ``attention_mask [B, T + 1]``, pixels (``[B, 3, 336, 336]`` for 1.5; ``[B, 5, 3, 336, 336]`` for
        1.6, a 672x672 image's base + 2x2 tiles) in the model's dtype, and the images' (width, height).
    """
    side = model.get_vision_tower().config.image_size
    shape = (5, 3, side, side) if geometry == "1.6" else (3, side, side)
    pixels = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1000 + i))
                          for i in range(batch)]).to(device=model.device, dtype=model.dtype)
    sizes = [ANYRES_SIZE if geometry == "1.6" else (side, side)] * batch
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, model.config.vocab_size, (text_tokens,), generator=g)
    text[0] = 1  # <s>
    before = min(TEXT_BEFORE_IMAGE, text_tokens)
    row = torch.cat([text[:before], torch.tensor([IMAGE_TOKEN_INDEX]), text[before:]])
    input_ids = row.expand(batch, -1).contiguous().to(model.device)
    return input_ids, torch.ones_like(input_ids), pixels, sizes
