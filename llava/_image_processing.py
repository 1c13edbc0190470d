"""Image helpers behind ``llava.mm_utils``: loading with checks, square padding and "anyres" tiling.

Sizes follow PIL: ``(width, height)``. Grid pinpoints are upstream's ``image_grid_pinpoints``: a list of
``[width, height]`` pairs (LLaVA-1.6 ships a symmetric set such as ``[[336, 672], [672, 336], [672, 672], ...]``), or
the same list written as a string, parsed with :func:`ast.literal_eval` (never ``eval``).
"""

from __future__ import annotations

import ast
import base64
import binascii
import logging
import math
import os
from collections.abc import Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:  # torch is imported where tensors are made, so image loading stays light (conversation.py)
    import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_DOWNLOAD_TIMEOUT_S = 10.0  # per network operation (connect, each read)
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # a URL's body, in total
DEFAULT_DOWNLOAD_TIME_LIMIT_S = 60.0  # a URL's whole download, however the bytes trickle in

Resolution = tuple[int, int]  # (width, height)


class ImageTooLargeError(ValueError):
    """An image whose header announces more pixels than allowed (raised before decoding)."""


# --- loading --------------------------------------------------------------------------------------------------


def _describe(source: str) -> str:
    """A short name for error messages (base64 payloads are cut)."""
    return source if len(source) <= 80 else source[:60] + f"... ({len(source)} chars)"


def _open_checked(data: BytesIO | str, name: str, max_pixels: int | None, *, decode: bool = True) -> Image.Image:
    """Open lazily (header only), refuse oversized images, then decode (unless ``decode=False``: the header-only
    image, whose ``size`` is known and whose pixels are not). Raises ValueError naming ``name``."""
    try:
        image = Image.open(data)
    except Image.DecompressionBombError as err:
        raise ValueError(f"image {name} is too large to decode safely: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {name}: not a decodable image ({err})") from err
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"image {name} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels"
        )
    if not decode:
        return image
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        image.close()
        raise ValueError(f"cannot decode image {name} ({width}x{height}): {err}") from err
    return image


def _base64_bytes(image: str) -> BytesIO:
    """The bytes of a base64 string or ``data:image/...;base64,`` URI; ValueError naming it when not base64."""
    payload = image.split(",", 1)[1] if image.startswith("data:") else image
    try:
        return BytesIO(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"image {_describe(image)} is not valid base64: {err}") from err


def image_size_from_base64(image: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of a base64 image read from its header alone (no pixel is decoded).

    Raises:
        ValueError: not valid base64, not an image, or more than ``max_pixels`` pixels (as ``load_image_from_base64``).
    """
    with _open_checked(_base64_bytes(image), f"<base64 {_describe(image)}>", max_pixels, decode=False) as header:
        return int(header.size[0]), int(header.size[1])


def load_image_from_base64(image: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a base64 string (optionally a ``data:image/...;base64,`` URI) into a PIL image (mode unchanged).

    Raises:
        ValueError: not valid base64, not an image, or more than ``max_pixels`` pixels.
    """
    return _open_checked(_base64_bytes(image), f"<base64 {_describe(image)}>", max_pixels)


def download_bytes(
    url: str,
    *,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
    max_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
    time_limit: float | None = DEFAULT_DOWNLOAD_TIME_LIMIT_S,
) -> bytes:
    """GET ``url`` (redirects followed), streaming, and give up past ``max_bytes`` bytes or ``time_limit`` seconds.

    ``timeout`` bounds each network operation (connect, one read); ``time_limit`` bounds the whole download, so a
    server that trickles a byte at a time cannot hold the caller. ``None`` turns a limit off.

    Raises:
        ValueError: the request failed, the server answered an error status, or a limit was passed; the message
            names the URL.
    """
    import time

    import httpx

    started = time.monotonic()

    def check_time() -> None:
        if time_limit is not None and time.monotonic() - started > time_limit:
            raise ValueError(f"cannot download image {url}: it took longer than the limit of {time_limit:g} s")

    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            response.raise_for_status()
            announced = response.headers.get("content-length")
            if max_bytes is not None and announced and announced.isdigit() and int(announced) > max_bytes:
                raise ValueError(f"cannot download image {url}: it is {int(announced)} bytes, over the limit of "
                                 f"{max_bytes} bytes")
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ValueError(f"cannot download image {url}: it is over the limit of {max_bytes} bytes")
                chunks.append(chunk)
                check_time()
            check_time()
    except httpx.HTTPError as err:
        raise ValueError(f"cannot download image {url}: {err}") from err
    return b"".join(chunks)


def load_image(
    image_file: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
    max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
    download_time_limit: float | None = DEFAULT_DOWNLOAD_TIME_LIMIT_S,
) -> Image.Image:
    """Load one image as RGB from a local path, an http(s) URL, a ``data:`` URI or a bare base64 string.

    The header is read first and images of more than ``max_pixels`` pixels (``None``: no limit of ours; PIL's own
    ``Image.MAX_IMAGE_PIXELS`` guard still applies) are refused before any pixel data is decoded. A URL is
    downloaded by :func:`download_bytes`: ``timeout`` seconds per network operation, at most
    ``max_download_bytes`` bytes (64 MiB) and ``download_time_limit`` seconds (60 s) in all.

    Raises:
        FileNotFoundError: a path that does not exist (and is not base64 either).
        ValueError: a download that fails or passes a limit, data that is not a decodable image, or an oversized
            image; the message names the file.
    """
    source = os.fspath(image_file)
    if source.startswith(("http://", "https://")):
        raw = download_bytes(source, timeout=timeout, max_bytes=max_download_bytes, time_limit=download_time_limit)
        image = _open_checked(BytesIO(raw), source, max_pixels)
    elif source.startswith("data:"):
        image = load_image_from_base64(source, max_pixels)
    elif os.path.exists(source):
        if os.path.isdir(source):
            raise ValueError(f"image path {source} is a directory, not an image file")
        image = _open_checked(source, source, max_pixels)
    else:
        try:
            raw = base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            raise FileNotFoundError(f"image file not found: {source}")
        try:
            image = _open_checked(BytesIO(raw), f"<base64 {_describe(source)}>", max_pixels)
        except ImageTooLargeError:
            raise
        except ValueError as err:
            raise FileNotFoundError(f"image file not found (and not a base64 image): {_describe(source)}") from err
    return image if image.mode == "RGB" else image.convert("RGB")


def load_images(image_files: Sequence[str | os.PathLike], **kwargs: Any) -> list[Image.Image]:
    """:func:`load_image` for each entry, in order (keyword arguments are passed through)."""
    return [load_image(f, **kwargs) for f in image_files]


# --- square padding -------------------------------------------------------------------------------------------


def expand2square(pil_img: Image.Image, background_color: Any) -> Image.Image:
    """Pad ``pil_img`` to a square of side max(W, H), centred, filling with ``background_color``.

    The image is centred with the remainder going right/bottom (offset ``(side - W) // 2``); a square image is
    returned as is. Output: PIL image of size (S, S), same mode.
    """
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    canvas = Image.new(pil_img.mode, (side, side), background_color)
    canvas.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return canvas


# --- anyres ---------------------------------------------------------------------------------------------------


def parse_grid_pinpoints(grid_pinpoints: Any) -> list[Resolution]:
    """``image_grid_pinpoints`` (list or its string form) as a list of ``(width, height)`` tuples."""
    value = grid_pinpoints
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} is not a list of [width, height] pairs") from err
    try:
        pairs = [(int(w), int(h)) for w, h in value]
    except (TypeError, ValueError) as err:
        raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} is not a list of [width, height] pairs") from err
    if not pairs or any(w <= 0 or h <= 0 for w, h in pairs):
        raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} must hold positive [width, height] pairs")
    return pairs


def select_best_resolution(original_size: Resolution, possible_resolutions: Sequence[Sequence[int]]) -> Resolution:
    """Pick the canvas that keeps the most of the image's pixels, then wastes the fewest.

    For each candidate (W, H) the image is scaled by min(W / w, H / h); the effective resolution is the scaled
    area capped at the original area, the waste is W * H minus it. Highest effective resolution wins, ties go to
    the lower waste, remaining ties to the earlier candidate.

    Args:
        original_size: (width, height) of the image.
        possible_resolutions: candidate (width, height) pairs.
    Returns:
        The chosen (width, height).
    """
    orig_w, orig_h = original_size
    best: Resolution | None = None
    best_key = (-1, 0)
    for width, height in possible_resolutions:
        scale = min(width / orig_w, height / orig_h)
        effective = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
        wasted = width * height - effective
        key = (effective, -wasted)
        if key > best_key:
            best, best_key = (int(width), int(height)), key
    if best is None:
        raise ValueError("possible_resolutions is empty")
    return best


def resize_and_pad_image(image: Image.Image, target_resolution: Resolution) -> Image.Image:
    """Resize (aspect kept, PIL's default resampling) to fit ``target_resolution`` and centre on black.

    Returns an RGB image of exactly ``target_resolution`` (width, height).
    """
    orig_w, orig_h = image.size
    target_w, target_h = target_resolution
    scale_w, scale_h = target_w / orig_w, target_h / orig_h
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(orig_h * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(orig_w * scale_h), target_w), target_h
    resized = image.resize((new_w, new_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Cut ``image`` into ``patch_size`` squares in row-major order (top row left to right first)."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def get_anyres_image_grid_shape(image_size: Resolution, grid_pinpoints: Any, patch_size: int) -> tuple[int, int]:
    """(tiles across, tiles down) that :func:`process_anyres_image` produces for an image of ``image_size``."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def _size_entry(size: Any, key: str) -> int | None:
    return size.get(key) if size is not None else None


def process_anyres_image(image: Image.Image, processor: Any, grid_pinpoints: Any) -> torch.Tensor:
    """Tile an image for "anyres": the whole image first, then the tiles of its best-fitting canvas.

    The image is resized-and-padded to the best pinpoint, cut into ``crop_size`` tiles (row-major); the whole image
    resized to the processor's square input comes first. Each view goes through ``processor.preprocess``.

    Returns:
        ``[1 + n_tiles, 3, H, W]`` float tensor (H = W = crop size, 336 for CLIP ViT-L/14-336).
    """
    best = select_best_resolution(image.size, parse_grid_pinpoints(grid_pinpoints))
    crop = processor.crop_size
    tile = _size_entry(crop, "height") or _size_entry(processor.size, "shortest_edge")
    base_side = _size_entry(processor.size, "shortest_edge") or tile
    tiles = divide_to_patches(resize_and_pad_image(image, best), tile)
    views = [image.resize((base_side, base_side))] + tiles
    import torch

    return torch.stack([processor.preprocess(v, return_tensors="pt")["pixel_values"][0] for v in views], dim=0)
