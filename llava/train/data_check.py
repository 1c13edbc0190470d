"""A fast pass over the training data before the model loads: which samples cannot train, and why.

Per sample (``check_sample``), the first problem found of:

* its image file is missing, or is not a readable image: PIL reads the header and ``verify()``s the file (a PNG's
  chunks and checksums, so a truncated or corrupted PNG is caught) without decoding the pixels. A JPEG whose
  compressed body is damaged passes this check; reading it during training still fails naming the sample;
* ``<image>`` in its text without an ``image`` field, an ``image`` without ``<image>`` in its text, or ``<image>``
  in more than one turn (each such turn gets an image token, and a sample has one image);
* a conversation the template cannot render, with no assistant turn, or with no supervised token (every label
  masked: a tokenization mismatch, see ``preprocess``);
* an answer truncated away: the first answer token falls at or past ``--model_max_length`` once the image tokens
  are spliced in, even with the fewest visual tokens the run can give the image (``VisualTokenBound.fewest``).
  Without a reduction that count is exact (CLIP ViT-L/14-336 "pad": 576; anyres ``spatial_unpad``: the base
  tile, the unpadded grid and its newlines), so every sample that would lose its answer is found. With a fixed
  ``--token-budget`` the base tile's centres are known; with adaptive PruMerge the count is only known when the
  tower runs, so only samples that lose their answer whatever PruMerge keeps are refused. A sample that keeps
  its answer with up to ``VisualTokenBound.most`` tokens per image is never tokenized twice (the byte bound).

The samples are tokenized exactly as the dataset does (``preprocess``), with the run's tokenizer and template,
when the cheap ``first_answer_bound`` (bytes, not tokens) cannot already show that the answer fits; the first
samples are always tokenized, until one is seen to have a supervised token. Tokenizing costs about a millisecond
a sample, the bound a few microseconds.
What is done with the problems is ``--bad_samples``: "error" (default) stops with the first few problems
(file:index:id) and their count; "skip" leaves them out of the dataset and logs how many. A data set in which no
sample has a supervised token is an error either way (it would train with loss 0). Structural mistakes in the
data file (not JSON, a sample without "conversations", an unknown speaker) stay errors, raised by ``load_samples``.

The pure checks are ``check_image``, ``check_sample`` and ``check_samples``; ``run_data_check`` splits the work
across the ranks of a distributed run and applies the policy; ``check_training_data`` is what ``train()`` calls.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..conversation import Conversation, SeparatorStyle
from ..model.visual_token_count import VisualTokenBound
from .args import BAD_SAMPLE_POLICIES
from .data import DataError, load_samples, require_image_settings
from .preprocess import SPEAKERS, ConversationError, move_image_to_front, preprocess, render_turns

logger = logging.getLogger(__name__)

#: how many problems an error message lists
LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class CheckSettings:
    """What the check needs to know of the run.

    Attributes:
        template: the run's conversation template.
        model_max_length: ``--model_max_length``: positions past it are cut off (after the image tokens).
        image_folder: ``--image_folder``.
        visual_tokens: the per-image bound; None for a text-only run.
        mm_use_im_start_end: each image also gets ``<im_start>``/``<im_end>`` (counted as one token each).
    """

    template: Conversation
    model_max_length: int
    image_folder: str | None = None
    visual_tokens: VisualTokenBound | None = None
    mm_use_im_start_end: bool = False


@dataclass(frozen=True)
class SampleProblem:
    """Why sample ``index`` (id ``sample_id``) of the data file cannot train; ``unsupervised``: it has no token to
    learn from (as opposed to, e.g., a bad image)."""

    index: int
    sample_id: Any
    reason: str
    unsupervised: bool = False

    def describe(self, data_path: str) -> str:
        """``"data.json:3:'img3': image file images/3.png does not exist"``."""
        return f"{data_path}:{self.index}:{self.sample_id!r}: {self.reason}"


def check_image(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` for a readable image file, ``(None, why)`` otherwise; no pixel is decoded."""
    try:
        with Image.open(path) as image:
            size = (int(image.size[0]), int(image.size[1]))
            image.verify()
    except FileNotFoundError:
        return None, f"image file {path} does not exist"
    except IsADirectoryError:
        return None, f"image path {path} is a directory"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return None, f"cannot read image {path}: {err or type(err).__name__}"
    return size, None


def _image_turns(turns: Sequence[dict]) -> int:
    return sum(DEFAULT_IMAGE_TOKEN in turn["value"] for turn in turns)


def _without_leading_answer(turns: Sequence[dict]) -> Sequence[dict]:
    """The turns ``render_turns`` renders: a leading assistant turn is dropped."""
    return turns[1:] if turns and SPEAKERS[turns[0]["from"]] == 1 else turns


def first_answer_bound(turns: Sequence[dict], template: Conversation, per_image: int) -> int:
    """An upper bound of the position of a conversation's first answer token, without tokenizing.

    Every token of a sentencepiece or byte-level BPE tokenizer covers at least one byte of its text, so the prompt
    before the first answer (``"<system> USER: <question> ASSISTANT:"``; ``"<image>"`` for the plain template)
    takes at most its UTF-8 byte count, plus BOS and two per text chunk (a word-start marker), plus ``per_image``
    for each image in it.
    """
    if template.sep_style == SeparatorStyle.PLAIN:
        prefix = DEFAULT_IMAGE_TOKEN
    else:
        conv = template.copy()
        conv.messages = []
        conv.append_message(conv.roles[0], _without_leading_answer(turns)[0]["value"])
        conv.append_message(conv.roles[1], None)
        prefix = conv.get_prompt()
    images = prefix.count(DEFAULT_IMAGE_TOKEN)
    text_bytes = len(prefix.replace(DEFAULT_IMAGE_TOKEN, "").encode("utf-8"))
    return 1 + text_bytes + 2 * (images + 1) + images * per_image


def check_sample(sample: dict, tokenizer: Any, settings: CheckSettings, *,
                 tokenize: bool = True) -> tuple[str, bool] | None:
    """The first problem of one sample (structure already checked by ``load_samples``), as ``(reason,
    unsupervised)``; None when it can train.

    Args:
        tokenize: tokenize the sample as the dataset does even when ``first_answer_bound`` already shows that its
            answer fits (``check_samples`` does so until one sample is seen to have a supervised token). Without
            tokenizing, a sample whose labels a tokenization mismatch masks entirely is not seen (the dataset
            warns about it when it reads the sample).
    """
    turns = sample["conversations"]
    tagged = _image_turns(turns)
    image_size = None
    if "image" in sample:
        path = os.path.join(settings.image_folder or "", sample["image"])
        image_size, why = check_image(path)
        if why is not None:
            return why, False
        if tagged == 0:
            return f"has an 'image' but no {DEFAULT_IMAGE_TOKEN} in its text", False
        if tagged > 1:
            return f"{DEFAULT_IMAGE_TOKEN} appears in {tagged} turns, but a sample has one image", False
        turns = move_image_to_front(turns, mmtag="mmtag" in settings.template.version)
    elif tagged:
        return f"its text mentions {DEFAULT_IMAGE_TOKEN} but the sample has no 'image'", False

    if not any(SPEAKERS[turn["from"]] == 1 for turn in _without_leading_answer(turns)):
        return "the conversation has no assistant ('gpt') turn", True
    try:
        render_turns(settings.template, turns)
    except ConversationError as err:
        return f"the conversation cannot be rendered: {err}", True
    fewest = most = 0  # visual tokens per image (the image token itself excluded below)
    if "image" in sample and settings.visual_tokens is not None:
        wrap = 2 if settings.mm_use_im_start_end else 0
        fewest = settings.visual_tokens.fewest(image_size) + wrap
        most = settings.visual_tokens.most(image_size) + wrap
    if not tokenize and first_answer_bound(turns, settings.template, most) < settings.model_max_length:
        return None

    try:
        tokens = preprocess(turns, tokenizer, settings.template)
    except ConversationError as err:
        return f"the conversation cannot be rendered: {err}", True
    supervised = (tokens.labels != IGNORE_INDEX).nonzero()
    if supervised.numel() == 0:
        return "no supervised token (every label is masked: the prompt does not tokenize as its parts)", True
    first = int(supervised[0])
    images_before = int((tokens.input_ids[:first] == IMAGE_TOKEN_INDEX).sum())
    position = first + images_before * (fewest - 1) if fewest else first
    if position >= settings.model_max_length:
        return (f"the answer is truncated away: its first token is at position {position} (with {fewest} tokens "
                f"per image, the fewest this run can give it), --model_max_length is "
                f"{settings.model_max_length}"), True
    return None


def check_samples(samples: Sequence[dict], indices: Sequence[int], tokenizer: Any,
                  settings: CheckSettings) -> list[SampleProblem]:
    """``check_sample`` for ``samples[i]``, i in ``indices``: the problems found, in index order.

    Samples are tokenized until one is seen to have a supervised token; after that, only those whose answer
    ``first_answer_bound`` cannot place within ``--model_max_length`` (a fast pass: tokenizing is what costs).
    """
    problems = []
    confirmed = False
    for index in indices:
        sample = samples[index]
        found = check_sample(sample, tokenizer, settings, tokenize=not confirmed)
        if found is not None:
            problems.append(SampleProblem(index, sample.get("id"), *found))
        else:
            confirmed = True
    return problems


def excluded_samples(problems: Sequence[SampleProblem], num_samples: int, data_path: str, policy: str) -> set[int]:
    """Apply ``--bad_samples``: the indices to leave out ("skip"), or a DataError ("error", or nothing left).

    Raises:
        DataError: problems under "error" (the first LISTED_PROBLEMS, file:index:id, and the count); no sample
            left to train; or no sample with a supervised token.
    """
    if policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"--bad_samples must be one of {BAD_SAMPLE_POLICIES}, got {policy!r}")
    unsupervised = sum(p.unsupervised for p in problems)
    listing = "\n".join(f"  {p.describe(data_path)}" for p in problems[:LISTED_PROBLEMS])
    if len(problems) > LISTED_PROBLEMS:
        listing += f"\n  ... and {len(problems) - LISTED_PROBLEMS} more"
    if num_samples == 0:
        raise DataError(f"{data_path} holds no samples")
    if unsupervised == num_samples:
        raise DataError(f"no sample of {data_path} has a supervised token (an assistant answer within "
                        f"--model_max_length): training would run with loss 0\n{listing}")
    if not problems:
        return set()
    if policy == "error":
        raise DataError(f"{len(problems)} of the {num_samples} samples of {data_path} cannot train (pass "
                        f"--bad_samples skip to leave them out):\n{listing}")
    if len(problems) == num_samples:
        raise DataError(f"every sample of {data_path} has a problem, nothing is left to train on:\n{listing}")
    logger.warning("--bad_samples skip: leaving out %d of the %d samples of %s:\n%s", len(problems), num_samples,
                   data_path, listing)
    return {p.index for p in problems}


def run_data_check(samples: Sequence[dict], data_path: str, tokenizer: Any, settings: CheckSettings,
                   policy: str) -> set[int]:
    """Check every sample and apply ``--bad_samples`` (``excluded_samples``); returns the indices to leave out.

    In a distributed run (``torch.distributed`` initialised) each rank checks every world_size-th sample and the
    problems are gathered, so every rank gets the same answer for a share of the time.
    """
    started = time.monotonic()
    rank, world = 0, 1
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    problems = check_samples(samples, range(rank, len(samples), world), tokenizer, settings)
    if distributed and world > 1:
        gathered: list[list[SampleProblem] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, problems)
        problems = sorted((p for part in gathered for p in part or []), key=lambda p: p.index)
    logger.info("data check of %s: %d samples, %d with problems (%.1f s)", data_path, len(samples), len(problems),
                time.monotonic() - started)
    return excluded_samples(problems, len(samples), data_path, policy)


def check_training_data(data_path: str | None, tokenizer: Any, settings: CheckSettings,
                        policy: str) -> tuple[list[dict], set[int]]:
    """Read ``--data_path`` and check it (``run_data_check``): ``(samples, indices to leave out)``, for
    ``LazySupervisedDataset(samples=..., exclude=...)``.

    Raises:
        DataError: see ``load_samples``, ``require_image_settings`` and ``excluded_samples``.
    """
    samples = load_samples(data_path)
    require_image_settings(str(data_path), samples, multimodal=settings.visual_tokens is not None,
                           image_folder=settings.image_folder)
    return samples, run_data_check(samples, str(data_path), tokenizer, settings, policy)
