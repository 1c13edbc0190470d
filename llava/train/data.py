"""The training data: a JSON list of conversations with optional images, and the collator that batches them.

Data file format (upstream LLaVA's)::

    [{"id": "000001", "image": "coco/train2017/000001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]},
     {"id": "000002", "conversations": [...]}]                  # text-only sample

Mistakes in the data are errors that name the data file, the sample index and its id: the structure of every
sample is checked when the data file is read (``load_samples``), and ``data_check`` looks for samples that cannot
train (bad images, ``<image>`` mismatches, no answer within ``--model_max_length``) before the model loads; the
samples it leaves out with ``--bad_samples skip`` are passed to the dataset as ``exclude``. Images are decoded
when their sample is read.

Shapes: T tokens, B samples, H = W = the image processor's crop size, 1+t the views of an anyres image (the whole
image resized, then its t tiles).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from ..conversation import Conversation, conv_templates
from ..mm_utils import process_images
from .preprocess import ConversationError, check_turns, move_image_to_front, preprocess

logger = logging.getLogger(__name__)

#: word count an image adds to a sample's length for the length-grouped sampler (upstream's constant).
IMAGE_LENGTH_WORDS = 128


class DataError(ValueError):
    """A sample that cannot be used; the message names the data file, the sample index and its id."""


def load_samples(data_path: str | os.PathLike) -> list[dict]:
    """Read the data file (a JSON list of objects) and check every sample's structure.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: invalid JSON (with line and column), not a list, or a sample that is not an object, has no
            "conversations", has a turn with an unknown "from", or a non-string "image".
    """
    if data_path is None:
        raise ValueError("--data_path is required: the JSON file of training conversations")
    path = os.fspath(data_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training data file {path} does not exist (--data_path)")
    try:
        with open(path, encoding="utf-8") as f:
            samples = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(samples, list):
        raise DataError(f"{path} must hold a JSON list of samples, got a {type(samples).__name__}")
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise DataError(f"{path}: sample {index} is a {type(sample).__name__}, not an object")
        where = describe_sample(path, index, sample)
        if "conversations" not in sample:
            raise DataError(f"{where} has no 'conversations'")
        try:
            check_turns(sample["conversations"])
        except ConversationError as err:
            raise DataError(f"{where}: {err}") from None
        if "image" in sample and not isinstance(sample["image"], str):
            raise DataError(f"{where}: 'image' must be a file path string, got {type(sample['image']).__name__}")
    return samples


def require_image_settings(data_path: str, samples: Sequence[dict], *, multimodal: bool,
                           image_folder: str | None) -> None:
    """Raise DataError when the data has image samples but the run has no vision tower or no ``--image_folder``."""
    if not any("image" in s for s in samples):
        return
    if not multimodal:
        raise DataError(f"{data_path} has samples with images but the model has no vision tower (--vision_tower)")
    if not image_folder:
        raise DataError(f"{data_path} has samples with images: pass the folder they are in (--image_folder)")


def describe_sample(data_path: str, index: int, sample: dict) -> str:
    """``"data.json: sample 3 (id '000004')"``: how errors name a sample."""
    return f"{data_path}: sample {index} (id {sample.get('id')!r})"


def _crop_size(image_processor: Any) -> tuple[int, int]:
    """(height, width) of the processor's output images."""
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    height = size["height"] if isinstance(size, dict) else getattr(size, "height", None)
    width = size["width"] if isinstance(size, dict) else getattr(size, "width", None)
    if height is None or width is None:
        raise ValueError(f"cannot tell the output size of image processor {type(image_processor).__name__}")
    return int(height), int(width)


class LazySupervisedDataset(Dataset):
    """Samples tokenized on access: ``{"input_ids": [T], "labels": [T], "image"?, "image_size"?}``.

    ``image`` is ``[3, H, W]``, or ``[1+t, 3, H, W]`` with ``image_aspect_ratio`` "anyres"; ``image_size`` is the
    original image's ``(width, height)`` (an anyres model lays out its tiles by it; the crop size for the zero image).

    Args:
        data_path: the JSON data file.
        tokenizer: the run's tokenizer.
        data_args: ``DataArguments`` (image_folder, image_aspect_ratio, image_grid_pinpoints, is_multimodal).
        template: the conversation template (``conversation_for_version(--version)``); default vicuna_v1.
        image_processor: the vision tower's processor; required when the data has images.
        mm_use_im_start_end: wrap ``<image>`` in ``<im_start>``/``<im_end>``.
        samples: the data file's samples when already read (``load_samples``); read from ``data_path`` if None.
        exclude: indices (in the data file) of samples to leave out (``--bad_samples skip``). Errors still name
            a sample by its index in the file.

    When the model is multimodal (``data_args.is_multimodal``), a text-only sample gets an all-zero image, as
    upstream does: every batch then runs the vision tower, and the model adds no tokens for it.
    """

    def __init__(
        self,
        data_path: str,
        tokenizer: Any,
        data_args: Any,
        *,
        template: Conversation | None = None,
        image_processor: Any = None,
        mm_use_im_start_end: bool = False,
        samples: list[dict] | None = None,
        exclude: Collection[int] = (),
    ) -> None:
        super().__init__()
        self.data_path = os.fspath(data_path)
        all_samples = samples if samples is not None else load_samples(self.data_path)
        excluded = set(exclude)
        #: the position in the data file of each kept sample
        self.indices = [i for i in range(len(all_samples)) if i not in excluded]
        self.samples = [all_samples[i] for i in self.indices]
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.template = template if template is not None else conv_templates["vicuna_v1"]
        self.image_processor = image_processor
        self.mm_use_im_start_end = mm_use_im_start_end
        require_image_settings(self.data_path, self.samples, multimodal=image_processor is not None,
                               image_folder=data_args.image_folder)
        if len(self.indices) < len(all_samples):
            logger.warning("%s: %d of %d samples left out (--bad_samples skip)", self.data_path,
                           len(all_samples) - len(self.indices), len(all_samples))
        logger.info("%s: %d samples (%d with an image)", self.data_path, len(self.samples),
                    sum("image" in s for s in self.samples))

    # upstream's attribute name
    @property
    def list_data_dict(self) -> list[dict]:
        return self.samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Per sample: words in all turns, plus IMAGE_LENGTH_WORDS when it has an image."""
        return [self._words(s) + (IMAGE_LENGTH_WORDS if "image" in s else 0) for s in self.samples]

    @property
    def modality_lengths(self) -> list[int]:
        """Per sample: words in all turns, positive with an image and negative without (for the sampler)."""
        return [self._words(s) if "image" in s else -self._words(s) for s in self.samples]

    @staticmethod
    def _words(sample: dict) -> int:
        return sum(len(turn["value"].split()) for turn in sample["conversations"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        where = describe_sample(self.data_path, self.indices[index], sample)
        turns = sample["conversations"]
        image = image_size = None
        if "image" in sample:
            image, image_size = self._load_image(sample["image"], where)
            turns = move_image_to_front(turns, mm_use_im_start_end=self.mm_use_im_start_end,
                                        mmtag="mmtag" in self.template.version)
        elif any(DEFAULT_IMAGE_TOKEN in turn["value"] for turn in turns):
            raise DataError(f"{where}: the text mentions {DEFAULT_IMAGE_TOKEN} but the sample has no 'image'")
        try:
            tokens = preprocess(turns, self.tokenizer, self.template, where=where)
        except ConversationError as err:
            raise DataError(f"{where}: {err}") from None
        item = {"input_ids": tokens.input_ids, "labels": tokens.labels}
        if image is not None:
            item["image"], item["image_size"] = image, image_size
        elif self.data_args.is_multimodal:
            height, width = _crop_size(self.image_processor)
            item["image"], item["image_size"] = torch.zeros(3, height, width), (width, height)
        return item

    def _load_image(self, relative_path: str, where: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """Open ``image_folder/relative_path`` as RGB and preprocess it by ``image_aspect_ratio``.

        Returns:
            the pixels (``[3, H, W]``, or ``[1+t, 3, H, W]`` for anyres) and the image's ``(width, height)``.
        """
        path = os.path.join(self.data_args.image_folder, relative_path)
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"{where}: image file {path} does not exist") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise DataError(f"{where}: cannot read image {path}: {err}") from None
        pixels = process_images([image], self.image_processor, self.data_args)
        return pixels[0], image.size


@dataclass
class DataCollatorForSupervisedDataset:
    """Pad a list of samples into a batch.

    Returns ``input_ids [B, T]`` (padded with ``pad_token_id``), ``labels [B, T]`` (IGNORE_INDEX padding),
    ``attention_mask [B, T]`` (True on real tokens), all cut to ``tokenizer.model_max_length``, ``images``:
    ``[B, 3, H, W]`` when every sample has one ``[3, H, W]`` image, else a list of B tensors (anyres: ``[1+t_i, 3,
    H, W]``, and ``[3, H, W]`` zero images for text-only samples), and ``image_sizes``: B ``(width, height)``.
    """

    tokenizer: Any

    def __call__(self, instances: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set one (train.py uses <unk> for v1)")
        max_len = self.tokenizer.model_max_length
        lengths = [min(len(x["input_ids"]), max_len) for x in instances]
        longest = max(lengths)
        input_ids = torch.full((len(instances), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(instances), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(instances), longest), dtype=torch.bool)
        for b, (x, n) in enumerate(zip(instances, lengths)):
            input_ids[b, :n] = x["input_ids"][:n]
            labels[b, :n] = x["labels"][:n]
            attention_mask[b, :n] = True
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if "image" in instances[0]:
            images = [x["image"] for x in instances]
            single_views = all(im.dim() == 3 and im.shape == images[0].shape for im in images)
            batch["images"] = torch.stack(images) if single_views else images
            if all("image_size" in x for x in instances):
                batch["image_sizes"] = [tuple(x["image_size"]) for x in instances]
        return batch


def make_supervised_data_module(tokenizer: Any, data_args: Any, **dataset_kwargs: Any) -> dict[str, Any]:
    """``{"train_dataset", "eval_dataset": None, "data_collator"}`` for ``LLaVATrainer(**module)``."""
    dataset = LazySupervisedDataset(data_args.data_path, tokenizer, data_args, **dataset_kwargs)
    collator = DataCollatorForSupervisedDataset(tokenizer)
    return {"train_dataset": dataset, "eval_dataset": None, "data_collator": collator}
