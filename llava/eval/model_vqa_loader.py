"""Answer a JSONL question file with a torch DataLoader (upstream's ``llava.eval.model_vqa_loader``).

    python -m llava.eval.model_vqa_loader --model-path liuhaotian/llava-v1.5-13b \\
        --question-file ./playground/data/eval/textvqa/llava_textvqa_val_v051_ocr.jsonl \\
        --image-folder ./playground/data/eval/textvqa/train_images \\
        --answers-file ./playground/data/eval/textvqa/answers/llava-v1.5-13b.jsonl \\
        --temperature 0 --conv-mode vicuna_v1 [--batch-size 8] [--token-reduction none]

Same files as ``model_vqa`` (``--max_new_tokens`` defaults to 128 here, as upstream). Images are loaded and
preprocessed in ``--num-workers`` worker processes. ``--batch-size`` > 1 left-pads the prompts; with greedy
decoding (``--temperature 0``) every answer is the one the question gets alone. Anyres (LLaVA-1.6) images of
different aspect ratios give different tile counts: such a batch goes to ``generate`` as a list of per-image tile
stacks, with each image's original ``(width, height)`` in ``image_sizes``, in batch order.

A corrupt image found by a worker process is reported in the main process as one line naming the image file and
its question_id (exit status 2), after the answers of the batches before it are written. ``--resume`` continues a
stopped run's partial answers, as in ``model_vqa``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..mm_utils import load_image
from ._generate import (
    add_common_args,
    answer_metadata,
    build_prompt,
    check_args,
    encode_prompt,
    generate_answers,
    generation_kwargs,
    left_pad,
    load_model,
    pad_id,
    pixel_values,
    plain_model_conv_mode,
    run_main,
    stack_images,
)
from ._io import AtomicJsonlWriter, answer_record, check_partial_model, get_chunk, image_path, split_list, start_answers
from .model_vqa import load_questions

logger = logging.getLogger(__name__)

__all__ = ["CustomDataset", "SampleFailure", "build_parser", "checked_batches", "collate_fn", "create_data_loader",
           "eval_model", "get_chunk", "main", "split_list"]


class CustomDataset(Dataset):
    """Question ``i`` -> ``(input_ids [T], image tensor, (width, height))``."""

    def __init__(self, questions, image_folder, tokenizer, image_processor, model_config, conv_mode="llava_v1"):
        self.questions = questions
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.conv_mode = conv_mode

    def __getitem__(self, index: int):
        line = self.questions[index]
        try:
            image = load_image(image_path(self.image_folder, line["image"]))
        except (OSError, ValueError) as err:
            raise ValueError(f"question_id {line['question_id']!r}: {err}") from err
        prompt = build_prompt(self.conv_mode, line["text"], True, self.model_config.mm_use_im_start_end)
        image_tensor = pixel_values([image], self.image_processor, self.model_config)[0]
        return encode_prompt(prompt, self.tokenizer), image_tensor, image.size

    def __len__(self) -> int:
        return len(self.questions)


@dataclass(frozen=True)
class SampleFailure:
    """A question that could not be prepared (its image is unreadable), carried to the main process as data.

    A DataLoader worker's exception reaches the main process re-raised with the worker's whole traceback in its
    message; this carries the one-line message instead (raised by :func:`checked_batches`).
    """

    message: str


class _FailuresAsData(Dataset):
    """``dataset[i]``, or a :class:`SampleFailure` when preparing sample ``i`` raises ``OSError``/``ValueError``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except (OSError, ValueError) as err:
            return SampleFailure(str(err))

    def __len__(self) -> int:
        return len(self.dataset)


def collate_fn(batch, padding_value: int = 0):
    """Left-pad the prompts of a batch (a batch with a :class:`SampleFailure` collates to its first one).

    Returns:
        ``input_ids [B, T]``, ``attention_mask [B, T]``, images (``[B, 3, H, W]`` or a list for anyres) and the
        B image sizes.
    """
    failure = next((item for item in batch if isinstance(item, SampleFailure)), None)
    if failure is not None:
        return failure
    input_ids, image_tensors, image_sizes = zip(*batch)
    ids, mask = left_pad(input_ids, padding_value)
    return ids, mask, stack_images(image_tensors), list(image_sizes)


def create_data_loader(questions, image_folder, tokenizer, image_processor, model_config, batch_size=1,
                       num_workers=4, conv_mode="llava_v1") -> DataLoader:
    """A DataLoader over ``questions`` in order (no shuffling).

    A question whose image cannot be read yields a :class:`SampleFailure` in place of its batch; iterate through
    :func:`checked_batches` to have it raised as a ``ValueError`` in the main process.
    """
    check_batch_size(batch_size)
    dataset = _FailuresAsData(CustomDataset(questions, image_folder, tokenizer, image_processor, model_config,
                                            conv_mode))
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                      collate_fn=functools.partial(collate_fn, padding_value=pad_id(tokenizer)))


def checked_batches(loader: Iterable) -> Iterator:
    """The batches of ``loader``; a :class:`SampleFailure` is raised as ``ValueError`` (its one-line message)."""
    for batch in loader:
        if isinstance(batch, SampleFailure):
            raise ValueError(batch.message)
        yield batch


def check_batch_size(batch_size: int) -> None:
    """``--batch-size`` must be at least 1."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")


def check_loader_args(args) -> None:
    """``--batch-size`` and ``--num-workers`` (before any file is read or model loaded)."""
    check_batch_size(args.batch_size)
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {args.num_workers}")


def eval_model(args) -> None:
    """Answer this chunk of ``args.question_file`` into ``args.answers_file``, ``args.batch_size`` at a time
    (with ``args.resume``: the questions its partial file has no answer for)."""
    check_args(args)
    check_loader_args(args)
    questions = load_questions(args)
    partial = start_answers(args.answers_file, [q["question_id"] for q in questions], args.question_file,
                            resume=getattr(args, "resume", False))
    todo = [q for q in questions if q["question_id"] not in partial.done]
    loaded = load_model(args)
    check_partial_model(partial, loaded.model_name, loaded.token_reduction)
    conv_mode = plain_model_conv_mode(loaded.model_name, args.conv_mode)
    gen = generation_kwargs(args, loaded.tokenizer)
    loader = create_data_loader(todo, args.image_folder, loaded.tokenizer, loaded.image_processor,
                                loaded.model.config, batch_size=args.batch_size, num_workers=args.num_workers,
                                conv_mode=conv_mode)
    done = 0
    with AtomicJsonlWriter(args.answers_file, partial) as out, tqdm(total=len(todo)) as progress:
        for input_ids, attention_mask, images, image_sizes in checked_batches(loader):
            answers, counts = generate_answers(loaded, input_ids, images, image_sizes, gen, attention_mask)
            for line, answer, visual in zip(todo[done : done + len(answers)], answers, counts):
                out.write(answer_record(line["question_id"], line["text"], answer, loaded.model_name,
                                        answer_metadata(visual, loaded.token_reduction, loaded.anyres)))
            done += len(answers)
            progress.update(len(answers))
        if done != len(todo):  # the loader yields every question once; a mismatch would be a bug here
            raise AssertionError(f"answered {done} of {len(todo)} questions")
    logger.info("wrote %d answers to %s", out.total, args.answers_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer a JSONL question file with LLaVA (DataLoader, batches).")
    add_common_args(parser, question_file="tables/question.jsonl", conv_mode="llava_v1", max_new_tokens=128)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (left-padded)")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes (0: in-process)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(eval_model, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
