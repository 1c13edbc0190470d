"""Length-grouped sampling, optionally keeping image and text-only samples in separate batches.

``group_by_modality_length`` (LLaVA-1.5 finetuning) orders the data so that each global batch ("megabatch" of
``world_size * batch_size`` samples) holds samples of one modality and similar length; each rank's share of a
megabatch gets about the same number of words. The order is the same on every rank: it depends only on the
lengths, the seed and the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` (longest first) into ``num_chunks`` chunks of equal count and similar total length.

    Each index goes to the chunk with the smallest total so far; a chunk that is full takes no more. When the
    count does not divide evenly, indices are dealt round-robin instead.
    """
    if len(indices) % num_chunks != 0:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        target = totals.index(min(totals))
        chunks[target].append(index)
        totals[target] += lengths[index]
        if len(chunks[target]) == per_chunk:
            totals[target] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """Shuffle, cut into megabatches of ``world_size * batch_size``, sort each by length (longest first), and
    split each into ``world_size`` even chunks; returns the flattened order."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    size = world_size * batch_size
    megabatches = [sorted(indices[i : i + size], key=lambda k: lengths[k], reverse=True)
                   for i in range(0, len(indices), size)]
    return [i for mb in megabatches for chunk in split_to_even_chunks(mb, lengths, world_size) for i in chunk]


def get_modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """Like ``get_length_grouped_indices`` per modality; ``lengths`` > 0 for image samples, < 0 for text-only.

    Full megabatches of either modality are shuffled together; the two leftover partial megabatches are joined
    and go last.

    Raises:
        ValueError: a zero length (a sample without words).
    """
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero (a sample has no words)")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    image_idx = [i for i, x in enumerate(lengths) if x > 0]
    text_idx = [i for i, x in enumerate(lengths) if x < 0]
    image_order = [image_idx[i] for i in get_length_grouped_indices(
        [lengths[i] for i in image_idx], batch_size, world_size, generator)]
    text_order = [text_idx[i] for i in get_length_grouped_indices(
        [-lengths[i] for i in text_idx], batch_size, world_size, generator)]
    size = world_size * batch_size
    image_mbs = [image_order[i : i + size] for i in range(0, len(image_order), size)]
    text_mbs = [text_order[i : i + size] for i in range(0, len(text_order), size)]
    leftover = image_mbs[-1] + text_mbs[-1]
    megabatches = image_mbs[:-1] + text_mbs[:-1]
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in order]
    if leftover:
        megabatches.append(sorted(leftover))
    return [i for mb in megabatches for i in mb]


class LengthGroupedSampler(Sampler[int]):
    """Yields dataset indices grouped by (modality and) length; the same order on every rank.

    Args:
        batch_size: per-device batch size.
        world_size: number of ranks times gradient-accumulation steps (samples of one optimizer step).
        lengths: per-sample lengths (signed by modality when ``group_by_modality``).
        seed: base seed; epoch ``e`` uses ``seed + e`` (``set_epoch``).
        group_by_modality: keep image and text-only samples in separate megabatches.
    """

    def __init__(
        self,
        batch_size: int,
        world_size: int,
        lengths: Sequence[int],
        seed: int = 0,
        group_by_modality: bool = False,
    ) -> None:
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs the per-sample lengths")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.seed = seed
        self.epoch = 0
        self.group_by_modality = group_by_modality

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        group = get_modality_length_grouped_indices if self.group_by_modality else get_length_grouped_indices
        lengths = self.lengths if self.group_by_modality else [abs(x) for x in self.lengths]
        return iter(group(lengths, self.batch_size, self.world_size, generator))
