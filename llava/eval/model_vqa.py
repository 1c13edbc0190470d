"""Answer a JSONL question file, one question at a time (upstream's ``llava.eval.model_vqa``).

    python -m llava.eval.model_vqa --model-path liuhaotian/llava-v1.5-13b \\
        --question-file ./playground/data/eval/mm-vet/llava-mm-vet.jsonl \\
        --image-folder ./playground/data/eval/mm-vet/images \\
        --answers-file ./playground/data/eval/mm-vet/answers/llava-v1.5-13b.jsonl \\
        --temperature 0 --conv-mode vicuna_v1 [--token-reduction prumerge+] [--num-chunks 8 --chunk-idx 0]

Questions: one JSON object per line, ``{"question_id", "image", "text"}``. Answers: one line per question, in
question order, ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}`` where ``metadata`` is
``{"visual_tokens": [n], "token_reduction": mode}``; for an anyres (LLaVA-1.6) model it also holds the patches the
tower encoded for the image, ``{"visual_tokens": [n], "patches": [2880], "token_reduction": mode}`` (a 672x672
image: 1 + 4 tiles of 576). Each image's original ``(width, height)`` goes to ``generate`` as ``image_sizes``.
Every ``question_id`` must be given once (a repeat is an error naming both lines, before the model loads).

Answers go, one flushed line at a time, to ``.NAME.partial`` beside ``--answers-file``, renamed to it after the
last one: the answers file appears only when every question is answered. A run that fails (a corrupt image) or is
killed keeps the partial file; rerun the same command with ``--resume`` to answer only the questions after its
complete lines (an incomplete last line is dropped with a warning). The result is the file an uninterrupted run
writes, in question order (the resumed lines keep their ``answer_id``). Without ``--resume`` a run starts afresh.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    load_model,
    pixel_values,
    run_main,
)
from ._io import (
    AtomicJsonlWriter,
    answer_record,
    check_images_exist,
    check_partial_model,
    get_chunk,
    image_path,
    read_questions,
    split_list,
    start_answers,
)

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "eval_model", "get_chunk", "load_questions", "main", "split_list"]

QUESTION_KEYS = ("question_id", "image", "text")


def load_questions(args) -> list[dict]:
    """This chunk's questions, each id given once and every image checked to exist (before any model is loaded)."""
    questions = read_questions(args.question_file, QUESTION_KEYS)
    questions = list(get_chunk(questions, args.num_chunks, args.chunk_idx))
    check_images_exist([(q["question_id"], image_path(args.image_folder, q["image"])) for q in questions],
                       args.question_file)
    return questions


def eval_model(args) -> None:
    """Answer this chunk of ``args.question_file`` into ``args.answers_file`` (with ``args.resume``: the questions
    its partial file has no answer for)."""
    check_args(args)
    questions = load_questions(args)
    partial = start_answers(args.answers_file, [q["question_id"] for q in questions], args.question_file,
                            resume=getattr(args, "resume", False))
    todo = [q for q in questions if q["question_id"] not in partial.done]
    loaded = load_model(args)
    check_partial_model(partial, loaded.model_name, loaded.token_reduction)
    gen = generation_kwargs(args, loaded.tokenizer)
    use_im_start_end = loaded.model.config.mm_use_im_start_end
    with AtomicJsonlWriter(args.answers_file, partial) as out:
        for line in tqdm(todo):
            qid, text = line["question_id"], line["text"]
            path = image_path(args.image_folder, line["image"])
            try:
                image = load_image(path)
            except (OSError, ValueError) as err:
                raise ValueError(f"question_id {qid!r}: {err}") from err
            prompt = build_prompt(args.conv_mode, text, True, use_im_start_end)
            images = pixel_values([image], loaded.image_processor, loaded.model.config)
            answers, counts = generate_answers(loaded, [encode_prompt(prompt, loaded.tokenizer)], images,
                                               [image.size], gen)
            out.write(answer_record(qid, text, answers[0], loaded.model_name,
                                    answer_metadata(counts[0], loaded.token_reduction, loaded.anyres)))
    logger.info("wrote %d answers to %s", out.total, args.answers_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer a JSONL question file with LLaVA (one question at a time).")
    return add_common_args(parser, question_file="tables/question.jsonl", conv_mode="llava_v1")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(eval_model, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
