"""Ask a LLaVA model one question about one or more images.

    python -m llava.eval.run_llava --model-path liuhaotian/llava-v1.5-7b \\
        --image-file view.jpg --query "What are the things I should be cautious about when I visit here?"

Several images: ``--image-file a.jpg,b.jpg`` (split on ``--sep``), placed with ``<image-placeholder>`` in the
query or, without one, all in front of it. Prints the answer, then ``visual tokens: 576 -> N (<mode>)``: the
patches the tower encoded per image and the visual tokens the language model read (an anyres LLaVA-1.6 model
tiles each image: ``2880 -> N`` for a 672x672 one, ``1728 -> N`` for a 336x672 one; images with different patch
counts are listed in pairs). Each image's original ``(width, height)`` goes to ``generate`` as ``image_sizes``.
``eval_model(args)`` keeps upstream's Python entry point (``args`` may be any object with the same fields).

A user's mistake is one ``error: ...`` line on stderr and exit status 2, before the model loads where it can be:
an unknown ``--conv-mode`` or ``--device``, ``--num_beams`` or ``--max_new_tokens`` below 1, an empty path in
``--image-file`` (``","``), a missing or unreadable image; then a checkpoint that cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from ..constants import IMAGE_TOKEN_INDEX
from ..conv_mode import choose_conv_mode
from ..conversation import conv_templates
from ..mm_utils import get_model_name_from_path, load_images, process_images, tokenizer_image_token
from ..model.builder import load_pretrained_model
from ..model.token_reduction import add_token_reduction_args
from .common import (
    add_image_tokens,
    check_at_least_one,
    check_conv_mode,
    check_device,
    configure_logging,
    default_device,
    run_cli,
    split_image_files,
    visual_token_summary,
)

logger = logging.getLogger(__name__)


def image_parser(args) -> list[str]:
    """The image files named by ``args.image_file``, split on ``args.sep`` (an empty one is a ValueError)."""
    return split_image_files(args.image_file, getattr(args, "sep", ","))


def check_args(args) -> None:
    """The flags checked before anything is loaded: ``--conv-mode``, ``--device``, ``--num_beams``,
    ``--max_new_tokens`` (``args`` may lack those upstream did not have)."""
    check_conv_mode(getattr(args, "conv_mode", None))
    check_device(getattr(args, "device", None))
    check_at_least_one("--num_beams", getattr(args, "num_beams", 1))
    check_at_least_one("--max_new_tokens", getattr(args, "max_new_tokens", 512))


def eval_model(args) -> str:
    """Load the model named by ``args``, answer ``args.query`` about ``args.image_file``; print and return it."""
    check_args(args)
    images = load_images(image_parser(args))  # a bad image fails before the model is loaded
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        getattr(args, "model_base", None),
        model_name,
        device=getattr(args, "device", None) or default_device(),
        token_reduction=getattr(args, "token_reduction", None),
        token_budget=getattr(args, "token_budget", None),
    )
    query = add_image_tokens(args.query, len(images), model.config.mm_use_im_start_end)
    conv = conv_templates[choose_conv_mode(model_name, getattr(args, "conv_mode", None))].copy()
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()

    images_tensor = process_images(images, image_processor, model.config)
    if isinstance(images_tensor, list):
        images_tensor = [t.to(model.device, dtype=model.dtype) for t in images_tensor]
    else:
        images_tensor = images_tensor.to(model.device, dtype=model.dtype)
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    temperature = getattr(args, "temperature", 0.2)
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids.to(model.device),
            images=images_tensor,
            image_sizes=[image.size for image in images],
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=getattr(args, "top_p", None),
            num_beams=getattr(args, "num_beams", 1),
            max_new_tokens=getattr(args, "max_new_tokens", 512),
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    answer = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    print(answer)
    print(f"visual tokens: {visual_token_summary(model)}")
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer one question about one or more images with LLaVA.")
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, required=True)
    parser.add_argument("--query", type=str, required=True)
    parser.add_argument("--conv-mode", type=str, default=None)
    parser.add_argument("--sep", type=str, default=",")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--device", type=str, default=None, help="cuda | cpu | mps (default: the best available)")
    add_token_reduction_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    return run_cli(eval_model, args)


if __name__ == "__main__":
    sys.exit(main())
