"""Make a tiny random LLaVA-1.5 (or LLaVA-1.6) checkpoint in the released layout, offline, in seconds.

    python -m llava.tools.make_tiny_checkpoint OUT_DIR                     # LLaVA-1.5 layout
    python -m llava.tools.make_tiny_checkpoint OUT_DIR --layout v1.6        # llava-v1.6-vicuna layout
    python -m llava.tools.make_tiny_checkpoint OUT_DIR --layout v1.6 --lm mistral   # llava-v1.6-mistral-7b's
    python -m llava.tools.make_tiny_checkpoint OUT_DIR --layout v1.6 --lm yi        # llava-v1.6-34b's

writes::

    OUT_DIR/clip-vit-tiny-patch14-336/   full CLIPModel (vision_model.* + text_model.*), 336 px, patch 14 -> 576
                                         patches, tiny width/depth, preprocessor_config.json (CLIP's 336 crop)
    OUT_DIR/llava-v1.5-tiny/             config.json (model_type "llava", mm_* keys, mm_vision_tower -> the CLIP
                                         folder), fp16 model.safetensors, generation_config.json, a sentencepiece
                                         Llama tokenizer trained on the spot

The geometry is CLIP ViT-L/14-336's (so PruMerge sees the real 24x24 grid); only widths and depths are small.

The LLaVA-1.6 layout (``--layout v1.6``) is that of the released llava-v1.6 checkpoints: ``image_aspect_ratio``
"anyres" with their ``image_grid_pinpoints``, ``mm_patch_merge_type`` "spatial_unpad", ``unfreeze_mm_vision_tower``
true (``mm_vision_tower_lr`` 2e-6), ``tokenizer_model_max_length`` 4096, and in model.safetensors the
``model.image_newline`` vector and the finetuned CLIP (``model.vision_tower.vision_tower.vision_model.*``): here the
CLIP folder's weights, perturbed, so a test can tell which of the two ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from .._tokenization import load_tokenizer
from ..model.checkpoint_io import VISION_TOWER_PREFIX
from ..model.configuration_llava import LlavaConfig, LlavaMistralConfig
from ..model.language_model.llava_llama import LlavaLlamaForCausalLM
from ..model.language_model.llava_mistral import LlavaMistralForCausalLM
from ..model.multimodal_encoder.clip_encoder import load_clip_vision_model
from ..model.token_reduction import add_token_reduction_args
from . import tiny_tokenizer

logger = logging.getLogger(__name__)

CLIP_DIRNAME = "clip-vit-tiny-patch14-336"
LLAVA_DIRNAME = "llava-v1.5-tiny"
# OpenAI CLIP normalisation, as in openai/clip-vit-large-patch14-336's preprocessor_config.json
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
#: the released llava-v1.6 checkpoints' image_grid_pinpoints (config.json)
V16_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
LAYOUTS = ("v1.5", "v1.6")
#: --lm: (tokenizer builder in tiny_tokenizer, config class, model class, model_type, default folder name)
LANGUAGE_MODELS = {
    "vicuna": ("build_sentencepiece_llama_tokenizer", LlavaConfig, LlavaLlamaForCausalLM, "llava", "vicuna"),
    "mistral": ("build_mistral_tokenizer", LlavaMistralConfig, LlavaMistralForCausalLM, "llava_mistral", "mistral"),
    "yi": ("build_yi_tokenizer", LlavaConfig, LlavaLlamaForCausalLM, "llava", "34b"),
}


def default_name(layout: str = "v1.5", lm: str = "vicuna") -> str:
    """The LLaVA folder's name: ``llava-v1.5-tiny``, ``llava-v1.6-vicuna-tiny``, ``llava-v1.6-mistral-tiny``,
    ``llava-v1.6-34b-tiny`` (upstream picks the conversation template from these names)."""
    if layout == "v1.5" and lm == "vicuna":
        return LLAVA_DIRNAME
    return f"llava-{layout}-{LANGUAGE_MODELS[lm][4]}-tiny"


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of the tiny models (the image geometry is fixed at 336 px / patch 14)."""

    vision_width: int = 48
    vision_layers: int = 3  # select layer -2 runs 2 layers; PruMerge reads q/k of the third
    vision_heads: int = 4
    text_width: int = 32  # CLIP's text tower (kept so the folder is a full CLIP checkpoint)
    lm_width: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_kv_heads: int = 2
    vocab_size: int = 1000


def make_clip(out_dir: Path, sizes: TinySizes, seed: int) -> Path:
    """Write a random full CLIP checkpoint with ViT-L/14-336 geometry to ``out_dir``; return it."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": sizes.text_width,
            "intermediate_size": 2 * sizes.text_width,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 512,
            "max_position_embeddings": 77,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": sizes.vision_width,
            "intermediate_size": 4 * sizes.vision_width,
            "num_hidden_layers": sizes.vision_layers,
            "num_attention_heads": sizes.vision_heads,
            "image_size": 336,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        },
        projection_dim=32,
    )
    model = CLIPModel(config)
    calibrate_cls_attention(model)
    model.save_pretrained(out_dir)
    CLIPImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    ).save_pretrained(out_dir)
    _edit_json(out_dir / "preprocessor_config.json", image_processor_type="CLIPImageProcessor")
    return out_dir


@torch.no_grad()
def calibrate_cls_attention(model: CLIPModel, target_logit_std: float = 1.5) -> float:
    """Scale the last layer's ``q_proj`` so the CLS attention logits have ``target_logit_std``; return the scale.

    A randomly initialised CLIP attends almost uniformly, so PruMerge's IQR rule finds next to no outliers,
    while trained CLIP ViT-L/14-336 is peaked (PruMerge keeps ~32 of 576 patches, PruMerge+ ~144). The logits
    are linear in q, so one scale, measured on seeded random pixels, sets their spread; 1.5 makes the bundled
    demo image keep 36 (PruMerge) and 144 (PruMerge+) tokens. Layer -1's q only feeds the CLS attention.
    """
    vision = model.vision_model
    generator = torch.Generator().manual_seed(1234)
    pixels = torch.randn(4, 3, 336, 336, generator=generator)
    hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # [B, 1+N, C]
    layer = vision.encoder.layers[-1]
    normed = layer.layer_norm1(hidden)
    q_cls = layer.self_attn.q_proj(normed[:, 0])  # [B, C]
    keys = layer.self_attn.k_proj(normed[:, 1:])  # [B, N, C]
    logits = torch.einsum("bc,bnc->bn", q_cls, keys) * hidden.shape[-1] ** -0.5
    scale = target_logit_std / logits.std(dim=1).mean().item()
    layer.self_attn.q_proj.weight.mul_(scale)
    layer.self_attn.q_proj.bias.mul_(scale)
    return scale


def make_llava(
    out_dir: Path,
    clip_dir: Path,
    sizes: TinySizes,
    seed: int,
    projector_type: str = "mlp2x_gelu",
    token_reduction: str | None = None,
    token_budget: int | None = None,
    layout: str = "v1.5",
    lm: str = "vicuna",
) -> Path:
    """Write a random LLaVA checkpoint (``layout`` "v1.5" or "v1.6") whose ``mm_vision_tower`` is ``clip_dir``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    builder_name, config_class, model_class, model_type, _ = LANGUAGE_MODELS[lm]
    getattr(tiny_tokenizer, builder_name)(out_dir, vocab_size=sizes.vocab_size)
    tokenizer = load_tokenizer(str(out_dir))
    v16 = layout == "v1.6"
    torch.manual_seed(seed + 1)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=sizes.lm_width,
        intermediate_size=2 * sizes.lm_width,
        num_hidden_layers=sizes.lm_layers,
        num_attention_heads=sizes.lm_heads,
        num_key_value_heads=sizes.lm_kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        mm_vision_tower=str(clip_dir.resolve()),
        mm_hidden_size=sizes.vision_width,
        mm_projector_type=projector_type,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="anyres" if v16 else "pad",
        image_grid_pinpoints=V16_GRID_PINPOINTS if v16 else None,
        mm_patch_merge_type="spatial_unpad" if v16 else "flat",
        unfreeze_mm_vision_tower=v16,
        mm_vision_tower_lr=2e-6 if v16 else None,
        tokenizer_model_max_length=4096 if v16 else 2048,
        tokenizer_padding_side="right",
        use_mm_proj=True,
        mm_token_reduction=token_reduction,
        mm_token_budget=token_budget,
    )
    model = model_class(config)
    with torch.no_grad():  # a larger init than 0.02 so that the random LM's greedy tokens are not all ties
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
        newline = getattr(model.get_model(), "image_newline", None)
        if newline is not None:  # upstream initialises it as randn * D^-0.5; larger here, so it shows in the logits
            newline.normal_(0.0, 0.2)
    model.to(torch.float16).save_pretrained(out_dir)
    if v16:
        add_finetuned_tower(out_dir / "model.safetensors", clip_dir, seed)
    # As the released LLaVA files have it: model_type "llava" (or "llava_mistral"), torch_dtype float16.
    _edit_json(out_dir / "config.json", model_type=model_type, architectures=[model_class.__name__],
               torch_dtype="float16")
    return out_dir


def add_finetuned_tower(weights_file: Path, clip_dir: Path, seed: int, noise: float = 0.05) -> None:
    """Store a "finetuned" copy of ``clip_dir``'s vision weights in ``weights_file``, as LLaVA-1.6 releases do.

    The copy is the folder's weights times ``1 + noise * N(0, 1)`` elementwise, under
    ``model.vision_tower.vision_tower.vision_model.*`` (the CLIPModel key layout upstream wrote), in float16.
    """
    vision = load_clip_vision_model(str(clip_dir))
    generator = torch.Generator().manual_seed(seed + 7)
    state = load_file(str(weights_file))
    for key, value in vision.state_dict().items():
        if key == "embeddings.position_ids":
            continue
        jitter = 1 + noise * torch.randn(value.shape, generator=generator)
        state[f"{VISION_TOWER_PREFIX}vision_model.{key}"] = (value.float() * jitter).to(torch.float16).contiguous()
    save_file(state, str(weights_file), metadata={"format": "pt"})


def _edit_json(path: Path, **updates) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_tiny_checkpoint(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sizes: TinySizes = TinySizes(),
    projector_type: str = "mlp2x_gelu",
    token_reduction: str | None = None,
    token_budget: int | None = None,
    name: str | None = None,
    layout: str = "v1.5",
    lm: str = "vicuna",
) -> Path:
    """Build the CLIP folder and the LLaVA folder under ``out_dir``; return the LLaVA folder.

    ``layout`` "v1.5" or "v1.6", ``lm`` "vicuna", "mistral" or "yi" (see the module docstring); ``name``
    defaults to ``default_name(layout, lm)``.

    Each folder is written to a temporary sibling and renamed into place, so an interrupted run never leaves
    a half-written checkpoint. Existing folders are replaced.
    """
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    clip_dir = _build_atomically(root / CLIP_DIRNAME, lambda tmp: make_clip(tmp, sizes, seed))
    name = name or default_name(layout, lm)
    return _build_atomically(
        root / name,
        lambda tmp: make_llava(tmp, clip_dir, sizes, seed, projector_type, token_reduction, token_budget, layout, lm),
    )


def _build_atomically(final: Path, build) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write the CLIP and LLaVA checkpoints into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projector-type", default="mlp2x_gelu")
    add_token_reduction_args(parser)  # written into config.json as mm_token_reduction / mm_token_budget
    parser.add_argument("--layout", choices=LAYOUTS, default="v1.5", help="released layout to imitate")
    parser.add_argument("--lm", choices=sorted(LANGUAGE_MODELS), default="vicuna",
                        help="language model kind: vicuna (Llama), mistral (llava-v1.6-mistral-7b), yi (llava-v1.6-34b)")
    parser.add_argument("--name", default=None, help="name of the LLaVA folder (default: llava-<layout>-<lm>-tiny)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = make_tiny_checkpoint(
        args.out_dir,
        seed=args.seed,
        projector_type=args.projector_type,
        token_reduction=args.token_reduction,
        token_budget=args.token_budget,
        name=args.name,
        layout=args.layout,
        lm=args.lm,
    )
    logger.info("tiny LLaVA checkpoint written to %s", path)
    print(path)


if __name__ == "__main__":
    main()
