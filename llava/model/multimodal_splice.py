"""Splice visual tokens into embedded text: a pure tensor function, no modules or configs.

Shape notation: B samples, T text length (padded), D language-model width, n_i tokens of image i,
T' the spliced, re-padded length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class SplicedInputs:
    """Spliced batch. ``inputs_embeds [B, T', D]``, ``attention_mask [B, T']`` (bool),
    ``position_ids [B, T']`` (long), ``labels [B, T']`` (long; IGNORE_INDEX at image tokens and padding)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor


def assign_images_to_samples(image_token_counts: list[int], num_images: int) -> list[list[int]]:
    """Decide which images (by index) fill which sample's ``<image>`` slots, in order.

    Images are consumed in batch order. Upstream's training collator also gives every text-only sample a
    placeholder image; those are accepted (and contribute no tokens) when ``num_images`` equals the number
    of ``<image>`` tokens plus the number of text-only samples.

    Returns:
        per sample, the list of image indices it uses, plus, for a text-only sample that was given a
        placeholder, that placeholder's index as the single element of a negative-coded entry ``-(i+1)``.
    Raises:
        ValueError: when the counts cannot be matched; the message gives both counts.
    """
    total = sum(image_token_counts)
    text_only = sum(1 for c in image_token_counts if c == 0)
    if num_images == total:
        with_placeholders = False
    elif num_images == total + text_only and text_only > 0:
        with_placeholders = True
    else:
        raise ValueError(
            f"the prompts contain {total} <image> tokens (per sample: {image_token_counts}) but {num_images} "
            f"images were given; each <image> in a prompt needs exactly one image"
        )
    plan: list[list[int]] = []
    cursor = 0
    for count in image_token_counts:
        if count == 0 and with_placeholders:
            plan.append([-(cursor + 1)])
            cursor += 1
            continue
        plan.append(list(range(cursor, cursor + count)))
        cursor += count
    return plan


def splice_image_features(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_features: list[torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_length: int | None = None,
    padding_side: str = "right",
    image_token_index: int = IMAGE_TOKEN_INDEX,
) -> SplicedInputs:
    """Replace each ``image_token_index`` in ``input_ids`` by the rows of the next image's features.

    Args:
        input_ids: ``[B, T]`` token ids, with ``image_token_index`` where images go; padded either side.
        attention_mask: ``[B, T]`` (1/True for real tokens) or None (no padding).
        labels: ``[B, T]`` or None (labels are then IGNORE_INDEX everywhere).
        image_features: images in batch order, image i ``[n_i, D]`` (n_i may differ per image).
        embed_tokens: the language model's input embedding, ``[B, T] -> [B, T, D]``.
        max_length: truncate each spliced sequence to this many tokens (None: no limit).
        padding_side: "right" or "left" for the re-padded batch.
    Returns:
        ``SplicedInputs`` with every sample's real tokens packed to one side and positions 0..len-1.
    Raises:
        ValueError: when the number of images does not match the ``<image>`` tokens (both counts given).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    batch, _ = input_ids.shape
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_image = (input_ids == image_token_index) & keep  # [B, T]
    counts = is_image.sum(dim=1).tolist()  # one host sync per batch
    plan = assign_images_to_samples(counts, len(image_features))

    # every -200 becomes a valid id before embedding, padded ones too (their rows are dropped below)
    safe_ids = torch.where(input_ids == image_token_index, torch.zeros_like(input_ids), input_ids)
    text_embeds = embed_tokens(safe_ids)  # [B, T, D]
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)

    seq_embeds: list[torch.Tensor] = []
    seq_labels: list[torch.Tensor] = []
    for b in range(batch):
        ids_b, emb_b, lab_b = input_ids[b][keep[b]], text_embeds[b][keep[b]], labels[b][keep[b]]
        image_pos = torch.nonzero(ids_b == image_token_index).flatten().tolist()
        parts_e: list[torch.Tensor] = []
        parts_l: list[torch.Tensor] = []
        start = 0
        for pos, image_index in zip(image_pos, plan[b]):
            feats = image_features[image_index].to(emb_b.dtype)  # [n_i, D]
            parts_e += [emb_b[start:pos], feats]
            parts_l += [lab_b[start:pos], lab_b.new_full((feats.shape[0],), IGNORE_INDEX)]
            start = pos + 1
        parts_e.append(emb_b[start:])
        parts_l.append(lab_b[start:])
        if plan[b] and plan[b][0] < 0:
            # A placeholder image for a text-only sample adds no tokens but stays in the graph, so every
            # rank's backward touches the projector (needed by ZeRO-3 / DDP with frozen-unused checks).
            parts_e.append(image_features[-plan[b][0] - 1][:0].to(emb_b.dtype))
        seq_embeds.append(torch.cat(parts_e, dim=0)[:max_length])
        seq_labels.append(torch.cat(parts_l, dim=0)[:max_length])

    return pad_sequences(seq_embeds, seq_labels, padding_side)


def pad_sequences(
    embeds: list[torch.Tensor], labels: list[torch.Tensor], padding_side: str = "right"
) -> SplicedInputs:
    """Pack per-sample ``[L_b, D]`` embeddings and ``[L_b]`` labels into a padded batch ``[B, max L_b, ...]``."""
    lengths = [e.shape[0] for e in embeds]
    batch, longest, width = len(embeds), max(lengths), embeds[0].shape[1]
    ref = embeds[0]
    out_embeds = ref.new_zeros(batch, longest, width)
    out_labels = labels[0].new_full((batch, longest), IGNORE_INDEX)
    out_mask = torch.zeros(batch, longest, dtype=torch.bool, device=ref.device)
    out_pos = torch.zeros(batch, longest, dtype=torch.long, device=ref.device)
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        span = slice(longest - length, longest) if padding_side == "left" else slice(0, length)
        out_embeds[b, span] = embeds[b]
        out_labels[b, span] = labels[b]
        out_mask[b, span] = True
        out_pos[b, span] = torch.arange(length, device=ref.device)
    return SplicedInputs(out_embeds, out_mask, out_pos, out_labels)
