"""Chat with a LLaVA model about one image in the terminal.

    python -m llava.serve.cli --model-path liuhaotian/llava-v1.5-7b --image-file view.jpg [--token-reduction none]

Each line read from stdin is a user turn (the first one carries the image); the answer is streamed as it is
generated. An empty line or end of input ends the chat. After the first answer the visual-token count is printed
once: ``visual tokens: 576 -> N (mode)`` (patches the tower encoded -> tokens the language model read; an anyres
LLaVA-1.6 model tiles the image: ``2880 -> N`` for a 672x672 one). The image's original ``(width, height)`` goes
to ``generate`` as ``image_sizes`` on every turn.

A user's mistake is one ``error: ...`` line on stderr and exit status 2, before the model loads where it can be:
an unknown ``--conv-mode`` or ``--device``, ``--max-new-tokens`` below 1, both ``--load-8bit`` and
``--load-4bit``, an empty ``--image-file`` (``","``), a missing or unreadable image; then a checkpoint that cannot
be loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch
from transformers import StoppingCriteriaList, TextStreamer

from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from ..conv_mode import choose_conv_mode, stop_string
from ..conversation import conv_templates
from ..eval.common import (
    check_at_least_one,
    check_conv_mode,
    check_device,
    check_quantization,
    configure_logging,
    default_device,
    run_cli,
    split_image_files,
    visual_token_summary,
)
from ..mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)
from ..model.builder import load_pretrained_model
from ..model.token_reduction import add_token_reduction_args

logger = logging.getLogger("llava.serve.cli")


def check_args(args: argparse.Namespace) -> None:
    """The flags checked before anything is loaded (each failure a ValueError naming the flag and value).

    ``--image-file`` names one image; it is not split (a ``data:`` URI holds a comma), but an empty path in it
    read as a comma-separated list (``","``, ``"a.png,"``) is refused as ``run_llava`` refuses it.
    """
    check_conv_mode(args.conv_mode)
    check_device(args.device)
    check_at_least_one("--max-new-tokens", args.max_new_tokens)
    check_quantization(args.load_8bit, args.load_4bit)
    split_image_files(args.image_file, ",")


def chat(args: argparse.Namespace) -> None:
    """Load the model and image named by ``args``, then answer stdin lines until an empty line or EOF.

    Raises:
        FileNotFoundError / ValueError: a bad flag, image or model path (checked before the chat starts).
    """
    check_args(args)
    image = load_image(args.image_file)  # a bad image fails before the model is loaded
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit,
        device=args.device or default_device(), token_reduction=args.token_reduction, token_budget=args.token_budget,
    )
    if image_processor is None:
        raise ValueError(f"{args.model_path} has no vision tower: it cannot chat about an image")
    conv = conv_templates[choose_conv_mode(model_name, args.conv_mode)].copy()
    roles = ("user", "assistant") if "mpt" in model_name.lower() else conv.roles
    stop = stop_string(conv)

    tower = model.get_vision_tower()
    pixel_values = process_images([image], image_processor, model.config)
    if isinstance(pixel_values, list):
        pixel_values = [p.to(tower.device, dtype=tower.dtype) for p in pixel_values]
    else:
        pixel_values = pixel_values.to(tower.device, dtype=tower.dtype)
    image_token = DEFAULT_IMAGE_TOKEN
    if model.config.mm_use_im_start_end:
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN

    first_turn = True
    while True:
        try:
            text = input(f"{roles[0]}: ")
        except EOFError:
            text = ""
        if not text.strip():
            print("exit...")
            break
        conv.append_message(conv.roles[0], f"{image_token}\n{text}" if first_turn else text)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        input_ids = input_ids.unsqueeze(0).to(model.device)  # [1, T]

        print(f"{roles[1]}: ", end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        # generate() returns new tokens only, so the keyword search starts at generated token 0
        stopping = StoppingCriteriaList([KeywordsStoppingCriteria([stop], tokenizer, input_ids[:, :0])] if stop else [])
        with torch.inference_mode():
            output_ids = model.generate(
                input_ids,
                images=pixel_values,  # every turn: the first user message keeps its <image>
                image_sizes=[image.size],
                do_sample=args.temperature > 0,
                temperature=args.temperature if args.temperature > 0 else None,
                max_new_tokens=args.max_new_tokens,
                streamer=streamer,
                stopping_criteria=stopping,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        answer = tokenizer.decode(output_ids[0], skip_special_tokens=True)
        answer = answer.split(stop)[0].strip() if stop else answer.strip()
        conv.messages[-1][1] = answer
        if first_turn:
            print(f"visual tokens: {visual_token_summary(model)}")
            first_turn = False
        if args.debug:
            print("\n", {"prompt": prompt, "outputs": answer}, "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with a LLaVA model about an image.")
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, required=True)
    parser.add_argument("--device", type=str, default=None, help="cuda | cpu | mps (default: the best available)")
    parser.add_argument("--conv-mode", type=str, default=None)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--debug", action="store_true")
    add_token_reduction_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.INFO if args.debug else logging.WARNING)
    return run_cli(chat, args)


if __name__ == "__main__":
    sys.exit(main())
