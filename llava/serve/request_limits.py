"""What one request to a model worker may cost, checked before any image is decoded.

Pure functions (no worker state): the body size limit while the body arrives (:func:`read_json_object`), the
request's pixel budget from the image headers (:func:`image_sizes_within_budget`), and the context a request needs
(:func:`serving_context_len`, :func:`visual_token_upper_bound`). ``llava.serve.model_worker`` applies them and
turns each refusal into an ``error_code`` 1 stream object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from .._image_processing import image_size_from_base64
from ..model.visual_token_count import VisualTokenBound

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_IMAGES = 8
DEFAULT_MAX_TOTAL_PIXELS = 64_000_000


def image_sizes_within_budget(images_b64: Sequence[str], max_total_pixels: int | None) -> list[tuple[int, int]]:
    """The ``(width, height)`` of each base64 image, read from its header only, held to the request's pixel budget.

    ``image_size_from_base64`` raises the errors ``load_image_from_base64`` would (not base64, not an image, over
    the per-image limit) without decoding any pixel.

    Raises:
        ValueError: a bad image, or more than ``max_total_pixels`` pixels in all (``None``: no budget).
    """
    sizes = [image_size_from_base64(b64) for b64 in images_b64]
    total = sum(w * h for w, h in sizes)
    if max_total_pixels is not None and total > max_total_pixels:
        raise ValueError(f"the request's {len(sizes)} images have {total} pixels in all ("
                         + ", ".join(f"{w}x{h}" for w, h in sizes)
                         + f"), over this worker's limit of {max_total_pixels} pixels per request")
    return sizes


def serving_context_len(context_len: int, config) -> int:
    """The context the worker fits prompt + visual tokens + answer into.

    ``load_pretrained_model`` gives ``max_sequence_length`` or upstream's 2048; LLaVA-1.6 checkpoints have no
    ``max_sequence_length`` but were trained (and truncate their inputs) at ``tokenizer_model_max_length`` 4096, and
    one unreduced 672x672 image alone reads 2928 visual tokens. So the larger of the two, the trained length
    capped at ``max_position_embeddings`` when the config gives it (LLaVA-1.5: 2048 either way, unchanged).
    """
    trained = getattr(config, "tokenizer_model_max_length", None)
    if not trained:
        return context_len
    positions = getattr(config, "max_position_embeddings", None)
    extended = min(int(trained), int(positions)) if positions else int(trained)
    return max(int(context_len), extended)


def visual_token_upper_bound(image_sizes: Sequence[Sequence[int]], config, tower) -> int:
    """An upper bound of the visual tokens the language model reads for images of these ``(width, height)``,
    known before any image is decoded: the sum of ``VisualTokenBound.from_model(config, tower).most``.

    The tiles are those ``process_images`` makes: one per image, or for an anyres model the base tile plus the
    tiles of the pinpoint canvas the image is fitted to. Per tile: the tower's N patches (576), plus PruMerge's
    extra token when a reduction runs (its centres are at most ``max(N, the tile's share of --token-budget)``).
    Per anyres image with ``spatial_unpad``: plus one ``image_newline`` per row of the stitched tile grid
    (``nh * 24`` rows before the padding is cut). Unreduced, a 672x672 LLaVA-1.6 image gives exactly
    5 * 576 + 48 = 2928, more than its 2880 patches; a 500x300 one reads 1560 tokens against the bound
    3 * 576 + 24 = 1752.

    Raises:
        ValueError: an image the anyres model cannot lay out (naming its size).
    """
    bound = VisualTokenBound.from_model(config, tower)
    total = 0
    for size in image_sizes:
        try:
            total += bound.most(tuple(size))
        except (TypeError, ValueError, AttributeError, ZeroDivisionError) as err:
            raise ValueError(f"cannot lay out an image of {size[0]}x{size[1]} for this anyres model: {err}") from err
    return total


async def read_json_object(request: Request, max_bytes: int | None) -> dict[str, Any] | str:
    """The request body as a JSON object, or why not (too large, not JSON, not an object) as a string.

    A body announcing more than ``max_bytes`` is refused without being read; one that passes the limit while
    arriving is refused there (the rest is not kept).
    """
    announced = request.headers.get("content-length", "")
    if max_bytes is not None and announced.isdigit() and int(announced) > max_bytes:
        return f"the request body is {int(announced)} bytes, over this worker's limit of {max_bytes} bytes"
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            return f"the request body is over this worker's limit of {max_bytes} bytes"
        chunks.append(chunk)
    try:
        params = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"the request body is not valid JSON: {err}"
    if not isinstance(params, dict):
        return f"the request body must be a JSON object, not {type(params).__name__}"
    return params
