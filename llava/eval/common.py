"""Small pieces every inference entry point shares: prompt building, conversation choice, device choice, and the
checks of their flags (each a ``ValueError`` naming the flag and the value, raised before any model is loaded)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from ..conv_mode import choose_conv_mode, infer_conv_mode  # noqa: F401 (re-exported from their old home)
from ..conversation import conv_templates
from ..model.builder import DEVICE_PATTERN

logger = logging.getLogger(__name__)


# --- checks of the command-line flags -------------------------------------------------------------------------


def check_conv_mode(conv_mode: str | None) -> str | None:
    """``conv_mode`` if it names a template (or is None: chosen from the model name), else ValueError listing the
    valid ones."""
    if conv_mode is not None and conv_mode not in conv_templates:
        raise ValueError(f"unknown --conv-mode {conv_mode!r}; valid modes are {', '.join(sorted(conv_templates))}")
    return conv_mode


def check_device(device: str | None) -> str | None:
    """``device`` if it is cuda, cuda:N, cpu or mps (or None: the best available), else ValueError."""
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"unknown --device {device!r}; expected cuda, cuda:N, cpu or mps")
    return device


def check_at_least_one(flag: str, value: int) -> int:
    """``value`` if it is at least 1 (``--num_beams``, ``--max_new_tokens``), else ValueError naming ``flag``."""
    if value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")
    return value


def check_quantization(load_8bit: bool, load_4bit: bool) -> None:
    """At most one of ``--load-8bit`` and ``--load-4bit``."""
    if load_8bit and load_4bit:
        raise ValueError("--load-8bit and --load-4bit exclude each other: pass one of them")


def split_image_files(value: str, sep: str = ",") -> list[str]:
    """The image paths of ``--image-file`` (``"a.jpg,b.jpg"``), split on ``sep``.

    Raises:
        ValueError: an empty path in the list (``","``, ``"a.jpg,"``, ``""``), naming the flag, the value and its
            position.
    """
    files = value.split(sep) if sep else [value]
    for position, name in enumerate(files, start=1):
        if not name.strip():
            where = f"path {position} of {len(files)} is empty" if len(files) > 1 else "the path is empty"
            raise ValueError(f"--image-file {value!r}: {where} (paths are separated by {sep!r})")
    return files


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

    The left side is the patches the tower encoded for the image (anyres: tiles x 576, ``"2880 -> 212"`` for a
    672x672 LLaVA-1.6 image), the right side the visual tokens the language model read (after reduction and, for
    LLaVA-1.6, the spatial layout with its row newlines). Images with different patch counts are listed in pairs:
    ``"576 -> 33, 2880 -> 212 (prumerge)"``.
    """
    tower = model.get_vision_tower()
    after = list(model.last_visual_token_counts)
    before = list(getattr(model, "last_visual_patch_counts", None) or [tower.num_patches] * len(after))
    if len(set(before)) <= 1:
        text = f"{before[0] if before else tower.num_patches} -> {', '.join(str(c) for c in after)}"
    else:
        text = ", ".join(f"{b} -> {a}" for b, a in zip(before, after))
    return f"{text} ({tower.token_reduction.mode})"


def configure_logging(level: int = logging.INFO) -> None:
    """Log this package at ``level`` (at INFO the loader logs the active token-reduction mode once); quiet HTTP
    clients."""
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("llava").setLevel(level)
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(job: Callable[[Any], Any], args: Any) -> int:
    """Run an entry point's ``job(args)``; a user's mistake (bad flag, missing file, unreadable image or checkpoint,
    a missing optional package: ``ValueError``, ``OSError``, ``ImportError``, each raised with a one-line message
    naming the flag, file or field) prints ``error: ...`` on stderr, without a traceback, and gives exit status 2."""
    try:
        job(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
