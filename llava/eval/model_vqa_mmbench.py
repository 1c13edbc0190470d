"""Answer MMBench / MMBench-CN (upstream's ``llava.eval.model_vqa_mmbench``).

    python -m llava.eval.model_vqa_mmbench --model-path liuhaotian/llava-v1.5-13b \\
        --question-file ./playground/data/eval/mmbench/mmbench_dev_20230712.tsv \\
        --answers-file ./playground/data/eval/mmbench/answers/mmbench_dev_20230712/llava-v1.5-13b.jsonl \\
        --single-pred-prompt --temperature 0 --conv-mode vicuna_v1 [--lang cn] [--all-rounds]

Questions: MMBench's TSV (columns ``index``, ``question``, ``hint``, ``image`` as base64, options ``A``-``D``;
options stop at the first empty one). The prompt is ``hint\\nquestion\\nA. ...\\nB. ...``. ``--all-rounds`` asks
each question once per option, rotating the option texts under fixed letters (CircularEval). Answers carry
upstream's ``round_id``, ``options`` and ``option_char``. Every ``index`` must be given once (a repeat is an error
naming both lines, before the model loads).

``--resume`` continues a stopped run's partial answers as in ``model_vqa``; an answer is identified by
``(question_id, round_id)``, so a run stopped between two rounds of a question goes on with the next round.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from ..mm_utils import load_image_from_base64
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
    plain_model_conv_mode,
    run_main,
)
from ._io import (
    AtomicJsonlWriter,
    answer_record,
    check_partial_model,
    check_unique_ids,
    get_chunk,
    split_list,
    start_answers,
)

logger = logging.getLogger(__name__)

__all__ = ["all_options", "build_parser", "eval_model", "get_chunk", "get_options", "is_none", "load_questions",
           "main", "split_list"]

all_options = ["A", "B", "C", "D"]
SINGLE_PRED_PROMPT = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
REQUIRED_COLUMNS = ("index", "question", "image")


def is_none(value: Any) -> bool:
    """True for an empty cell: None, NaN, or the strings "nan" / "none" (any case)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("nan", "none", "")


def get_options(row: dict, options: Sequence[str] = all_options) -> list[str]:
    """The option texts of a row, in order, up to the first empty (or absent) one."""
    parsed = []
    for option in options:
        value = row.get(option)
        if is_none(value):
            break
        parsed.append(str(value))
    return parsed


def _question_id(value: Any) -> Any:
    """MMBench indices are integers; keep them ints in the answers (the submission converter matches on them)."""
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def load_questions(args) -> list[dict]:
    """This chunk's rows as dicts (all cells read as text), each with an image and options, each index once."""
    import pandas as pd

    path = os.path.expanduser(args.question_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"question file not found: {path}")
    try:
        df = pd.read_table(path, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable TSV file ({err})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r} (found {', '.join(map(str, df.columns))})")
    rows = df.to_dict("records")
    for lineno, row in enumerate(rows, start=2):  # line 1 is the header
        if is_none(row["image"]):
            raise ValueError(f"{path}:{lineno}: question index {row['index']} has no image")
        if len(get_options(row)) == 0:
            raise ValueError(f"{path}:{lineno}: question index {row['index']} has no options (column A is empty)")
    check_unique_ids(((f"{path}:{lineno}", _question_id(row["index"])) for lineno, row in enumerate(rows, start=2)),
                     "index")
    return list(get_chunk(rows, args.num_chunks, args.chunk_idx))


def build_question(row: dict, options: Sequence[str]) -> str:
    """``hint\\nquestion\\nA. opt\\nB. opt...`` (no hint line when the hint is empty)."""
    question = str(row["question"])
    hint = row.get("hint")
    if not is_none(hint):
        question = str(hint) + "\n" + question
    for letter, option in zip(all_options, options):
        question = question + "\n" + letter + ". " + option
    return question


def rounds_of(row: dict, all_rounds: bool) -> range:
    """The ``round_id`` values a row is asked in: one per option with ``--all-rounds``, else round 0 only."""
    return range(len(get_options(row)) if all_rounds else 1)


def rotated(items: Sequence[str], times: int) -> list[str]:
    """``items`` rotated left ``times`` times: round ``r`` shows option ``r`` under letter A."""
    return list(items[times:]) + list(items[:times])


def answer_key(record: dict) -> tuple[Any, Any]:
    """What an mmbench answer is resumed by: ``(question_id, round_id)``."""
    return record["question_id"], record["round_id"]


def eval_model(args) -> None:
    """Answer this chunk of ``args.question_file`` into ``args.answers_file`` (with ``args.resume``: the rounds
    its partial file has no answer for)."""
    check_args(args)
    if args.lang not in SINGLE_PRED_PROMPT:
        raise ValueError(f"--lang must be one of {', '.join(SINGLE_PRED_PROMPT)}, got {args.lang!r}")
    questions = load_questions(args)
    expected = [(_question_id(row["index"]), r) for row in questions for r in rounds_of(row, args.all_rounds)]
    partial = start_answers(args.answers_file, expected, args.question_file, resume=getattr(args, "resume", False),
                            key=answer_key)
    loaded = load_model(args)
    check_partial_model(partial, loaded.model_name, loaded.token_reduction)
    conv_mode = plain_model_conv_mode(loaded.model_name, args.conv_mode)
    gen = generation_kwargs(args, loaded.tokenizer)
    use_im_start_end = loaded.model.config.mm_use_im_start_end
    with AtomicJsonlWriter(args.answers_file, partial) as out:
        for row in tqdm(questions):
            qid = _question_id(row["index"])
            todo = [r for r in rounds_of(row, args.all_rounds) if (qid, r) not in partial.done]
            if not todo:
                continue
            try:
                image = load_image_from_base64(row["image"]).convert("RGB")
            except ValueError as err:
                raise ValueError(f"question index {qid}: {err}") from err
            images = pixel_values([image], loaded.image_processor, loaded.model.config)
            for round_idx in todo:  # each round: the same letters over rotated option texts
                options = rotated(get_options(row), round_idx)
                option_chars = rotated(all_options[: len(options)], round_idx)
                question = build_question(row, options)
                qs = question + "\n" + SINGLE_PRED_PROMPT[args.lang] if args.single_pred_prompt else question
                prompt = build_prompt(conv_mode, qs, True, use_im_start_end)
                answers, counts = generate_answers(loaded, [encode_prompt(prompt, loaded.tokenizer)], images,
                                                   [image.size], gen)
                out.write(answer_record(qid, question, answers[0], loaded.model_name,
                                        answer_metadata(counts[0], loaded.token_reduction, loaded.anyres),
                                        round_id=round_idx, options=options, option_char=option_chars))
    logger.info("wrote %d answers to %s", out.total, args.answers_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer MMBench (TSV with base64 images) with LLaVA.")
    add_common_args(parser, question_file="tables/question.jsonl", conv_mode="llava_v1")
    parser.add_argument("--all-rounds", action="store_true", help="one round per option, options rotated")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    parser.add_argument("--lang", type=str, default="en", help="en | cn (language of --single-pred-prompt)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(eval_model, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
