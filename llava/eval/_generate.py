"""The model side shared by the benchmark scripts: arguments, loading, prompts, batched greedy/sampled generation.

Shapes: B prompts in a batch, T prompt length (after left padding), H = W = the processor's crop size.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..constants import IMAGE_TOKEN_INDEX
from ..conversation import conv_templates
from ..mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from ..model.builder import load_pretrained_model
from ..model.token_reduction import add_token_reduction_args
from .common import (
    add_image_tokens,
    check_at_least_one,
    check_conv_mode,
    check_device,
    check_quantization,
    configure_logging,
    default_device,
    run_cli,
)

logger = logging.getLogger(__name__)


# --- command line ---------------------------------------------------------------------------------------------


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    question_file: str,
    conv_mode: str,
    temperature: float = 0.2,
    max_new_tokens: int = 1024,
) -> argparse.ArgumentParser:
    """Upstream's shared arguments (same names and defaults), plus ``--device``, ``--load-8bit``/``--load-4bit``,
    ``--resume`` and the token-reduction flags."""
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--question-file", type=str, default=question_file)
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--conv-mode", type=str, default=conv_mode)
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=temperature)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--device", type=str, default=None, help="cuda | cpu | mps (default: the best available)")
    parser.add_argument("--load-8bit", action="store_true", help="quantise the language model to 8 bits (bitsandbytes)")
    parser.add_argument("--load-4bit", action="store_true", help="quantise the language model to 4 bits (bitsandbytes)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the partial answers a stopped run left beside --answers-file "
                             "(.NAME.partial): answer only the questions after them")
    add_token_reduction_args(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The checks that need no file and no model: ``--conv-mode``, ``--device``, ``--num_beams``,
    ``--max_new_tokens``, ``--load-8bit``/``--load-4bit``. Each failure is a ValueError naming the flag.

    ``args`` may lack the flags upstream did not have (``device``, ``load_8bit``, ...): their defaults apply.
    """
    check_conv_mode(args.conv_mode)
    check_device(getattr(args, "device", None))
    check_at_least_one("--num_beams", getattr(args, "num_beams", 1))
    check_at_least_one("--max_new_tokens", getattr(args, "max_new_tokens", 1))
    check_quantization(getattr(args, "load_8bit", False), getattr(args, "load_4bit", False))


def run_main(eval_model: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run ``eval_model``; a user's mistake prints ``error: ...`` and gives exit status 2."""
    args = parser.parse_args(argv)
    configure_logging()
    return run_cli(eval_model, args)


def plain_model_conv_mode(model_name: str, conv_mode: str) -> str:
    """Upstream's switch to the ``_mmtag`` template for a pretraining-only ("plain") checkpoint, where one exists."""
    if "plain" in model_name and "finetune" not in model_name.lower() and "mmtag" not in conv_mode:
        switched = conv_mode + "_mmtag"
        if switched in conv_templates:
            logger.warning("this looks like a plain (pretraining-only) model: using conv mode %s", switched)
            return switched
    return conv_mode


# --- model ----------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """What ``load_pretrained_model`` returns, with the name the answers files use as ``model_id``."""

    tokenizer: Any
    model: Any
    image_processor: Any
    model_name: str

    @property
    def token_reduction(self) -> str:
        return self.model.get_vision_tower().token_reduction.mode

    @property
    def anyres(self) -> bool:
        """True for a LLaVA-1.6 (anyres) model: its images are tiled, so the answers also record patch counts."""
        return str(getattr(self.model.config, "image_aspect_ratio", "") or "").startswith("anyres")


@dataclass
class VisualCounts:
    """One prompt's images as the model saw them (one entry per image; both empty for a text-only prompt).

    Attributes:
        tokens: the visual tokens the language model read per image (after reduction and, for LLaVA-1.6, the
            spatial layout with its row newlines): ``model.last_visual_token_counts``.
        patches: the patches the vision tower encoded per image (tiles x 576 for anyres, 2880 for a 672x672
            image): ``model.last_visual_patch_counts``.
    """

    tokens: list[int]
    patches: list[int]


def load_model(args, *, require_vision_tower: bool = True) -> LoadedModel:
    """Load ``args.model_path`` (``args.model_base``) on ``args.device`` with the requested token reduction.

    ``require_vision_tower=False`` also accepts a plain language model (``model_qa``'s text-only questions).
    """
    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path,
        args.model_base,
        model_name,
        load_8bit=getattr(args, "load_8bit", False),
        load_4bit=getattr(args, "load_4bit", False),
        device=getattr(args, "device", None) or default_device(),
        token_reduction=getattr(args, "token_reduction", None),
        token_budget=getattr(args, "token_budget", None),
    )
    if require_vision_tower and image_processor is None:
        raise ValueError(f"{args.model_path} is not a LLaVA checkpoint (it has no vision tower)")
    return LoadedModel(tokenizer, model, image_processor, model_name)


def build_prompt(conv_mode: str, question: str, with_image: bool, use_im_start_end: bool) -> str:
    """The full conversation prompt for one user turn (image token(s) first, as upstream), assistant to answer."""
    text = add_image_tokens(question, 1, use_im_start_end) if with_image else question
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def encode_prompt(prompt: str, tokenizer) -> torch.Tensor:
    """``[T]`` ids with -200 where the image goes."""
    return tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")


def pixel_values(images: Sequence, image_processor, model_config) -> list[torch.Tensor]:
    """One preprocessed tensor per PIL image (``[3, H, W]``, or ``[tiles, 3, H, W]`` for anyres)."""
    processed = process_images(list(images), image_processor, model_config)
    return list(processed)


def pad_id(tokenizer) -> int:
    """The id used for left padding and for finished rows (pad, else eos, else 0)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def left_pad(sequences: Sequence[torch.Tensor], padding_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors.

    Returns:
        ``input_ids [B, T]`` and ``attention_mask [B, T]`` (1 on real tokens, 0 on padding).
    """
    longest = max(s.shape[0] for s in sequences)
    input_ids = torch.full((len(sequences), longest), padding_value, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, longest - seq.shape[0] :] = seq
        attention_mask[row, longest - seq.shape[0] :] = 1
    return input_ids, attention_mask


def stack_images(tensors: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """``[B, ...]`` when every image gives the same shape (always, for "pad"), else the list (anyres)."""
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(list(tensors), dim=0)
    return list(tensors)


def generation_kwargs(args, tokenizer) -> dict[str, Any]:
    """``generate`` arguments from upstream's flags: sampling only when ``temperature > 0`` (greedy otherwise)."""
    temperature = float(getattr(args, "temperature", 0.2))
    kwargs: dict[str, Any] = {
        "do_sample": temperature > 0,
        "num_beams": getattr(args, "num_beams", 1),
        "max_new_tokens": getattr(args, "max_new_tokens", 1024),
        "use_cache": True,
        "pad_token_id": pad_id(tokenizer),
    }
    if temperature > 0:
        kwargs["temperature"] = temperature
        kwargs["top_p"] = getattr(args, "top_p", None)
    else:  # greedy: override any sampling defaults in the checkpoint's generation_config
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def generate_answers(
    loaded: LoadedModel,
    input_ids: Sequence[torch.Tensor] | torch.Tensor,
    images: Sequence[torch.Tensor] | torch.Tensor | None,
    image_sizes: Sequence[tuple[int, int]] | None,
    gen_kwargs: dict[str, Any],
    attention_mask: torch.Tensor | None = None,
) -> tuple[list[str], list[VisualCounts]]:
    """Answer a batch of prompts (one image each, or none at all).

    Args:
        input_ids: B id tensors ``[T_i]`` (left-padded here), or ``[B, T]`` already left-padded with
            ``attention_mask``.
        images: B preprocessed images (``[B, 3, H, W]``, ``[B, tiles, 3, H, W]`` or a list of ``[3, H, W]`` /
            ``[tiles_i, 3, H, W]``), or None for text-only prompts.
        image_sizes: the B ORIGINAL ``(width, height)`` (PIL's ``image.size`` before any preprocessing), in the
            order of ``images``; an anyres (LLaVA-1.6) model needs them to lay out each image's tiles.
    Returns:
        The B decoded answers (stripped) and, per prompt, the :class:`VisualCounts` of its image (empty lists
        without image).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    if not isinstance(input_ids, torch.Tensor):
        input_ids, attention_mask = left_pad(input_ids, pad_id(tokenizer))
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    batch = input_ids.shape[0]
    kwargs = dict(gen_kwargs)
    if images is not None:
        if isinstance(images, torch.Tensor):
            images = images.to(device=model.device, dtype=model.dtype)
        else:
            images = stack_images([im.to(device=model.device, dtype=model.dtype) for im in images])
        if image_sizes is not None and len(image_sizes) != batch:  # one image per prompt, sizes in the same order
            raise AssertionError(f"expected {batch} image sizes, got {len(image_sizes)}")
        kwargs.update(images=images, image_sizes=[tuple(s) for s in image_sizes] if image_sizes is not None else None)
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids.to(model.device), attention_mask=attention_mask.to(model.device), **kwargs
        )
    texts = [t.strip() for t in tokenizer.batch_decode(output_ids, skip_special_tokens=True)]
    if images is None:
        return texts, [VisualCounts([], []) for _ in range(batch)]
    counts = list(model.last_visual_token_counts)
    patches = list(getattr(model, "last_visual_patch_counts", None) or
                   [model.get_vision_tower().num_patches] * len(counts))
    if len(counts) != batch or len(patches) != batch:  # one image per prompt: anything else is a bug upstream
        raise AssertionError(f"expected {batch} visual token counts, got {len(counts)} (and {len(patches)} patch "
                             "counts)")
    return texts, [VisualCounts([int(c)], [int(p)]) for c, p in zip(counts, patches)]


def answer_metadata(visual: VisualCounts, mode: str, with_patches: bool = False) -> dict[str, Any]:
    """Upstream's (empty) metadata plus the visual tokens per image and the reduction mode.

    ``with_patches`` (anyres models, :attr:`LoadedModel.anyres`) adds ``"patches"``, the patches the tower encoded
    per image (tiles x 576), between them: ``{"visual_tokens": [212], "patches": [2880], "token_reduction":
    "prumerge"}``. Other models' answers go without it (every image there is the tower's 576 patches).
    """
    metadata: dict[str, Any] = {"visual_tokens": list(visual.tokens)}
    if with_patches:
        metadata["patches"] = list(visual.patches)
    metadata["token_reduction"] = mode
    return metadata
