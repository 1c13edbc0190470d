"""Answer a JSONL file of text-only questions (upstream's ``llava.eval.model_qa``), with a LLaVA checkpoint or a
plain causal LM.

    python -m llava.eval.model_qa --model-path lmsys/vicuna-13b-v1.5 \\
        --question-file playground/data/coco2014_val_qa_eval/qa90_questions.jsonl \\
        --answers-file answers/vicuna-13b.jsonl [--conv-mode vicuna_v1] [--temperature 0.7] \
        [--num-chunks 4 --chunk-idx 0]

``--model-name`` is upstream's name for ``--model-path``. Questions: one JSON object per line,
``{"question_id", "text"}`` (``category`` and any other field are read past; an ``image`` is not shown: use
``llava.eval.model_vqa`` for questions about images). Answers: one line per question, in question order,
``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}`` (upstream's fields, plus the
question as ``prompt`` like every other answers file here; ``metadata`` is ``{}``). The prompt is the question
as the user turn of ``--conv-mode`` (default ``vicuna_v1``, upstream's default conversation), the assistant's
turn left open. Sampling as upstream (temperature 0.7, up to 1024 new tokens) unless ``--temperature 0``.
The answers file appears only when every question is answered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tqdm import tqdm

from ..constants import DEFAULT_IMAGE_TOKEN
from ._generate import (
    add_common_args,
    build_prompt,
    check_conv_mode,
    encode_prompt,
    generate_answers,
    generation_kwargs,
    load_model,
    run_main,
)
from ._io import AtomicJsonlWriter, answer_record, get_chunk, read_jsonl

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "eval_model", "main"]

QUESTION_KEYS = ("question_id", "text")


def eval_model(args) -> None:
    """Answer this chunk of ``args.question_file`` into ``args.answers_file``."""
    if args.model_name:
        args.model_path = args.model_name
    check_conv_mode(args.conv_mode)
    questions = read_jsonl(args.question_file, QUESTION_KEYS)
    questions = list(get_chunk(questions, args.num_chunks, args.chunk_idx))
    for q in questions:
        where = f"{args.question_file}: question_id {q['question_id']!r}"
        if not isinstance(q["text"], str):
            raise ValueError(f"{where}: 'text' is not a string")
        if DEFAULT_IMAGE_TOKEN in q["text"]:
            raise ValueError(f"{where}: the text has an {DEFAULT_IMAGE_TOKEN} token, and model_qa shows no images "
                             "(use llava.eval.model_vqa with --image-folder)")
    loaded = load_model(args, require_vision_tower=False)
    gen = generation_kwargs(args, loaded.tokenizer)
    with AtomicJsonlWriter(args.answers_file) as out:
        for line in tqdm(questions):
            prompt = build_prompt(args.conv_mode, line["text"], False, False)
            answers, _ = generate_answers(loaded, [encode_prompt(prompt, loaded.tokenizer)], None, None, gen)
            out.write(answer_record(line["question_id"], line["text"], answers[0], loaded.model_name, {}))
    logger.info("wrote %d answers to %s", out.count, args.answers_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer a JSONL file of text-only questions.")
    add_common_args(parser, question_file="tables/question.jsonl", conv_mode="vicuna_v1", temperature=0.7)
    parser.add_argument("--model-name", type=str, default=None, help="upstream's name for --model-path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(eval_model, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
