"""Small pieces every inference entry point shares: prompt building, conversation choice, device choice."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)


def infer_conv_mode(model_name: str) -> str:
    """The conversation template upstream picks from a model's name (``llava-v1.5-7b`` -> "llava_v1")."""
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def choose_conv_mode(model_name: str, requested: str | None) -> str:
    """``requested`` when given (warning if it differs from the name's choice), else the inferred one."""
    inferred = infer_conv_mode(model_name)
    if requested and requested != inferred:
        logger.warning("the model name suggests conv mode %r; using --conv-mode %r as asked", inferred, requested)
        return requested
    return inferred


def add_image_tokens(query: str, num_images: int, use_im_start_end: bool) -> str:
    """Put the image token(s) in a user query as upstream's run_llava does.

    Each ``<image-placeholder>`` becomes an image token; with none, one token per image goes first, each followed
    by a newline (one image: ``"<image>\\n" + query``).

    Raises:
        ValueError: when the query's placeholders and the number of images disagree (both counts given).
    """
    token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if use_im_start_end else DEFAULT_IMAGE_TOKEN
    placeholders = query.count(IMAGE_PLACEHOLDER)
    if placeholders:
        if placeholders != num_images:
            raise ValueError(f"the query has {placeholders} {IMAGE_PLACEHOLDER} but {num_images} images were given")
        return query.replace(IMAGE_PLACEHOLDER, token)
    if DEFAULT_IMAGE_TOKEN in query:
        given = query.count(DEFAULT_IMAGE_TOKEN)
        if given != num_images:
            raise ValueError(f"the query has {given} {DEFAULT_IMAGE_TOKEN} tokens but {num_images} images were given")
        return query if not use_im_start_end else re.sub(re.escape(DEFAULT_IMAGE_TOKEN), token, query)
    return (token + "\n") * num_images + query


def default_device() -> str:
    """"cuda" when available, else "mps", else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def visual_token_summary(model) -> str:
    """``"576 -> 33 (prumerge)"`` for the last encoded batch (several images: ``"576 -> 33, 41 (prumerge)"``).

    The left side is the tower's patch count per image (per tile for anyres inputs).
    """
    tower = model.get_vision_tower()
    after = ", ".join(str(c) for c in model.last_visual_token_counts)
    return f"{tower.num_patches} -> {after} ({tower.token_reduction.mode})"


def configure_logging(level: int = logging.INFO) -> None:
    """Log this package at ``level`` (at INFO the loader logs the active token-reduction mode once); quiet HTTP
    clients."""
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("llava").setLevel(level)
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(job: Callable[[Any], Any], args: Any) -> int:
    """Run an entry point's ``job(args)``; a user's mistake (missing file, bad value, unreadable checkpoint) prints
    ``error: ...`` on stderr, without a traceback, and gives exit status 2."""
    try:
        job(args)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
