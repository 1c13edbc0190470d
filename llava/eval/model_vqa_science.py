"""Answer ScienceQA in LLaVA's conversation format (upstream's ``llava.eval.model_vqa_science``).

    python -m llava.eval.model_vqa_science --model-path liuhaotian/llava-v1.5-13b \\
        --question-file ./playground/data/eval/scienceqa/llava_test_CQM-A.json \\
        --image-folder ./playground/data/eval/scienceqa/images/test \\
        --answers-file ./playground/data/eval/scienceqa/answers/llava-v1.5-13b.jsonl \\
        --single-pred-prompt --temperature 0 --conv-mode vicuna_v1

Questions: a JSON list of ``{"id", "image"?, "conversations": [{"from": "human", "value": "...<image>..."}, ...]}``;
the first turn is the question (its ``<image>`` is removed and put back in front when the sample has an image).
Samples without ``image`` are asked as text only (``metadata.visual_tokens`` is then ``[]``). Metadata as in
``model_vqa`` (anyres models also record ``patches`` per image).
``--single-pred-prompt`` appends "Answer with the option's letter from the given choices directly."
Every sample ``id`` must be given once (a repeat is an error naming both samples, before the model loads).
``--resume`` continues a stopped run's partial answers (keyed by ``question_id``, the sample's ``id``), as in
``model_vqa``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tqdm import tqdm

from ..constants import DEFAULT_IMAGE_TOKEN
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
    check_unique_ids,
    get_chunk,
    image_path,
    read_json,
    split_list,
    start_answers,
)

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "eval_model", "get_chunk", "load_questions", "main", "split_list"]

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def load_questions(args) -> list[dict]:
    """This chunk of the question list, validated (each ``id`` given once), with every image checked to exist."""
    questions = read_json(args.question_file)
    where = os.path.expanduser(args.question_file)
    if not isinstance(questions, list):
        raise ValueError(f"{where}: expected a JSON list of samples, got {type(questions).__name__}")
    for i, sample in enumerate(questions):
        ok = isinstance(sample, dict) and "id" in sample and isinstance(sample.get("conversations"), list)
        ok = ok and bool(sample["conversations"]) and isinstance(sample["conversations"][0], dict)
        if not ok or "value" not in sample["conversations"][0]:
            name = sample.get("id", "?") if isinstance(sample, dict) else "?"
            raise ValueError(f"{where}: sample {i} (id {name!r}) needs 'id' and conversations[0]['value']")
    check_unique_ids(((f"{where}: sample {i}", sample["id"]) for i, sample in enumerate(questions)), "id")
    questions = list(get_chunk(questions, args.num_chunks, args.chunk_idx))
    check_images_exist([(q["id"], image_path(args.image_folder, q["image"])) for q in questions if "image" in q],
                       args.question_file)
    return questions


def eval_model(args) -> None:
    """Answer this chunk of ``args.question_file`` into ``args.answers_file`` (with ``args.resume``: the samples
    its partial file has no answer for)."""
    check_args(args)
    questions = load_questions(args)
    partial = start_answers(args.answers_file, [q["id"] for q in questions], args.question_file,
                            resume=getattr(args, "resume", False))
    todo = [q for q in questions if q["id"] not in partial.done]
    loaded = load_model(args)
    check_partial_model(partial, loaded.model_name, loaded.token_reduction)
    gen = generation_kwargs(args, loaded.tokenizer)
    use_im_start_end = loaded.model.config.mm_use_im_start_end
    with AtomicJsonlWriter(args.answers_file, partial) as out:
        for line in tqdm(todo):
            qid = line["id"]
            qs = line["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            has_image = "image" in line
            if args.single_pred_prompt:
                qs = qs + "\n" + SINGLE_PRED_PROMPT
            cur_prompt = f"{DEFAULT_IMAGE_TOKEN}\n{qs}" if has_image else qs
            images = sizes = None
            if has_image:
                try:
                    image = load_image(image_path(args.image_folder, line["image"]))
                except (OSError, ValueError) as err:
                    raise ValueError(f"question id {qid!r}: {err}") from err
                images, sizes = pixel_values([image], loaded.image_processor, loaded.model.config), [image.size]
            prompt = build_prompt(args.conv_mode, qs, has_image, use_im_start_end)
            answers, counts = generate_answers(loaded, [encode_prompt(prompt, loaded.tokenizer)], images, sizes, gen)
            text = answers[0]
            if args.answer_prompter:  # second pass: ask for the answer after the model's reasoning
                reasoning = text
                follow_up = encode_prompt(prompt + reasoning + " ###\nANSWER:", loaded.tokenizer)
                short = dict(gen, max_new_tokens=64)
                answers, _ = generate_answers(loaded, [follow_up], images, sizes, short)
                text = reasoning + "\n The answer is " + answers[0]
            out.write(answer_record(qid, cur_prompt, text, loaded.model_name,
                                    answer_metadata(counts[0], loaded.token_reduction, loaded.anyres)))
    logger.info("wrote %d answers to %s", out.total, args.answers_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer ScienceQA (LLaVA conversation JSON) with LLaVA.")
    add_common_args(parser, question_file="tables/question.json", conv_mode="llava_v0")
    parser.add_argument("--answer-prompter", action="store_true", help="ask again for the answer after reasoning")
    parser.add_argument("--single-pred-prompt", action="store_true",
                        help=f"append {SINGLE_PRED_PROMPT!r} to each question")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(eval_model, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
