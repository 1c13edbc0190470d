"""Image preprocessing, prompt tokenization around ``<image>``, and generation stopping (upstream LLaVA's API).

Shapes: B images, T tokens, H = W = the processor's crop size (336 for CLIP ViT-L/14-336).

``tokenizer_image_token`` reproduces the ids LLaVA-1.5 and LLaVA-1.6 (Vicuna, Mistral and Yi tokenizers) were
trained with, also on transformers 5 where the sentencepiece ``tokenizer.model`` of released checkpoints is loaded as
a ``tokenizers``-backed class that tokenizes text after ``<image>`` differently (see ``llava._tokenization``). Save
such tokenizers with :func:`save_tokenizer` (not ``tokenizer.save_pretrained`` alone, which drops ``tokenizer.model``
in transformers 5) so that reloaded checkpoints keep the same ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria

from llava._image_processing import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    load_image,
    load_image_from_base64,
    load_images,
    parse_grid_pinpoints,
    process_anyres_image,
    resize_and_pad_image,
    select_best_resolution,
)
from llava._tokenization import adds_bos_token, encode_text, save_tokenizer
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "KeywordsStoppingCriteria",
    "divide_to_patches",
    "expand2square",
    "get_anyres_image_grid_shape",
    "get_model_name_from_path",
    "load_image",
    "load_image_from_base64",
    "load_images",
    "parse_grid_pinpoints",
    "process_anyres_image",
    "process_images",
    "resize_and_pad_image",
    "save_tokenizer",
    "select_best_resolution",
    "tokenizer_image_token",
]


def process_images(
    images: Sequence[Image.Image], image_processor: Any, model_cfg: Any
) -> torch.Tensor | list[torch.Tensor]:
    """Turn PIL images into pixel values the way ``model_cfg.image_aspect_ratio`` asks.

    * ``"pad"``: pad each image to a square filled with the processor's mean colour
      (``tuple(int(m * 255) for m in image_mean)``), then preprocess: ``[3, H, W]`` each.
    * ``"anyres"`` (or any name starting with it): :func:`process_anyres_image` with
      ``model_cfg.image_grid_pinpoints``: ``[1 + n_tiles_i, 3, H, W]`` each.
    * anything else (``None``, ``"square"``...): the processor on the whole list, returned as is: ``[B, 3, H, W]``.

    Args:
        images: B RGB PIL images.
        image_processor: a CLIP-style image processor (``preprocess``, ``image_mean``, ``crop_size``, ``size``).
        model_cfg: any object with ``image_aspect_ratio`` (and ``image_grid_pinpoints`` for anyres); a model config
            or an argparse namespace.
    Returns:
        ``[B, ...]`` stacked tensor when every image gives the same shape, else a list of B tensors.
    """
    mode = getattr(model_cfg, "image_aspect_ratio", None)  # model_cfg may be a config or a plain namespace
    if mode == "pad":
        background = tuple(int(m * 255) for m in image_processor.image_mean)
        processed = [
            image_processor.preprocess(expand2square(image, background), return_tensors="pt")["pixel_values"][0]
            for image in images
        ]
    elif isinstance(mode, str) and mode.startswith("anyres"):
        pinpoints = model_cfg.image_grid_pinpoints
        processed = [process_anyres_image(image, image_processor, pinpoints) for image in images]
    else:
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if processed and all(p.shape == processed[0].shape for p in processed):
        return torch.stack(processed, dim=0)
    return processed


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Tokenize ``prompt`` with ``image_token_index`` in place of each ``"<image>"``.

    The prompt is split on ``"<image>"``; each text chunk is tokenized on its own without special tokens (for
    sentencepiece Llama-class tokenizers, Mistral's and Yi's included, exactly as the slow tokenizer the checkpoint
    was trained with), one BOS goes in front if the tokenizer adds one (Vicuna, Mistral; not Yi), and
    ``image_token_index`` goes between chunks. No EOS is added.

    Args:
        prompt: text with zero or more ``"<image>"``.
        tokenizer: a Hugging Face tokenizer.
        image_token_index: id put where each image goes (-200, never a real vocabulary id).
        return_tensors: ``None`` for a list, ``"pt"`` for a 1-D ``torch.long`` tensor.
    Returns:
        ``[T]`` ids (list or LongTensor).
    """
    if return_tensors not in (None, "pt"):
        raise ValueError(f"Unsupported tensor type: {return_tensors!r} (use None or 'pt')")
    input_ids: list[int] = [tokenizer.bos_token_id] if adds_bos_token(tokenizer) else []
    for i, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(encode_text(tokenizer, chunk))
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    return input_ids


def get_model_name_from_path(model_path: str | os.PathLike) -> str:
    """Name a model by its folder: ``".../llava-v1.5-7b/"`` -> ``"llava-v1.5-7b"``.

    A ``checkpoint-N`` folder is named with its parent: ``".../run/checkpoint-500"`` -> ``"run_checkpoint-500"``.
    Upstream's loader picks its branch from this name ("llava", "lora"), so the rule must not change.
    """
    parts = os.fspath(model_path).strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence once its generated text contains one of ``keywords``.

    A row is done when its newly generated ids (after the prompt's ``input_ids.shape[1]`` tokens) end with a
    keyword's ids, or when the decoded text of its last few generated tokens (as many as the longest keyword has
    ids) contains a keyword. Tokens of the prompt never count.

    ``__call__`` returns a ``[B]`` bool tensor, not upstream's plain ``all(rows)`` bool: transformers 5's
    ``generate`` combines criteria per row (``is_done | criterion(...)``, then ``unfinished & ~is_done``), so each row
    stops on its own and finished rows stay finished. At batch size 1 the 1-element tensor is truthy exactly when
    upstream's bool was True, so upstream-style ``if criteria(ids, scores):`` callers keep working.
    :meth:`call_for_batch` is upstream's single-row check and returns a plain bool.
    """

    def __init__(self, keywords: Sequence[str], tokenizer: Any, input_ids: torch.Tensor) -> None:
        """
        Args:
            keywords: stop strings, e.g. ``["</s>"]`` or ``["###"]``.
            tokenizer: the tokenizer used for the prompt.
            input_ids: ``[B, T0]`` prompt ids; only tokens after position T0 are searched.
        """
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = [torch.tensor(encode_text(tokenizer, k), dtype=torch.long) for k in self.keywords]
        self.keyword_ids = [ids for ids in self.keyword_ids if ids.numel() > 0]
        self.max_keyword_len = max((ids.numel() for ids in self.keyword_ids), default=1)
        self.start_len = input_ids.shape[1]

    def call_for_batch(self, output_ids: torch.LongTensor, scores: torch.FloatTensor | None = None,
                       **kwargs: Any) -> bool:
        """Upstream's single-row check: ``output_ids`` ``[1, T]`` (or ``[T]``) -> True when the row may stop."""
        row = output_ids.reshape(1, -1) if output_ids.dim() == 1 else output_ids
        if row.shape[0] != 1:
            raise ValueError(f"call_for_batch takes one row, got shape {tuple(output_ids.shape)}")
        generated = row.shape[1] - self.start_len
        if generated <= 0:
            return False
        for ids in self.keyword_ids:
            n = ids.numel()
            if n <= generated and bool((row[0, -n:] == ids.to(row.device)).all()):
                return True
        window = min(generated, self.max_keyword_len)
        text = self.tokenizer.batch_decode(row[:, -window:], skip_special_tokens=True)[0]
        return any(k in text for k in self.keywords)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """``input_ids`` ``[B, T]`` (prompt + generated so far) -> ``[B]`` bool, True where the row may stop."""
        batch, total = input_ids.shape
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        generated = total - self.start_len
        if generated <= 0:
            return done
        for ids in self.keyword_ids:
            n = ids.numel()
            if n <= generated:
                done |= (input_ids[:, -n:] == ids.to(input_ids.device)).all(dim=1)
        window = min(generated, self.max_keyword_len)
        texts = self.tokenizer.batch_decode(input_ids[:, -window:], skip_special_tokens=True)
        hits = [any(k in text for k in self.keywords) for text in texts]
        return done | torch.tensor(hits, dtype=torch.bool, device=input_ids.device)
