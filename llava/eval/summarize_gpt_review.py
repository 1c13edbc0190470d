"""Average GPT review files per category (upstream's ``llava/eval/summarize_gpt_review.py``, same arguments and
printout).

    python -m llava.eval.summarize_gpt_review \
        -f playground/data/eval/llava-bench-in-the-wild/reviews/llava-v1.5-13b.jsonl
    python -m llava.eval.summarize_gpt_review -d playground/data/eval/llava-bench-in-the-wild/reviews [-s 13b] [-v 0314]

Reads the review lines ``llava.eval.eval_gpt_review_bench`` writes (``tuple`` = [reference score, model score], or
``score`` for older review files) and prints, per file, its name, then per category (and ``all``) one line::

    llava_bench_conv 85.3 8.2 7.0

the relative score (mean model score / mean reference score x 100, the number LLaVA-Bench reports), then both mean
scores x 10, as upstream computes them (each mean rounded to 3 decimals first), then a row of ``=``.

Without ``-f``, the review files are the ``*.jsonl`` of ``-d`` whose names start with ``gpt4_text``, ``reviews_`` or
``review_`` (all of them when the folder's path contains "review"); ``-s`` keeps the files whose names contain
every given word, ``-v 0613`` the ones whose names contain "0613" (``-v 0314``: the others); ``-i`` leaves out
the given question ids.

A review whose scores could not be parsed (``tuple`` [-1, -1]) is not averaged in: the file's block says how many
and which, and the exit status is 1 (upstream averaged the -1s in, lowering every score). Exit status 2: no review
files, or a line that is not a review (the message names file and line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._io import read_jsonl_lines
from ._openai_judge import listed

__all__ = ["CategoryScore", "build_parser", "find_review_files", "main", "summarize_reviews"]

UNPARSED = [-1, -1]
SEPARATOR = "================================="


@dataclass(frozen=True)
class CategoryScore:
    """One category's summary; None where nothing could be averaged (no parsed review, or a zero reference)."""

    count: int
    relative: float | None  # round(mean2 / mean1 * 100, 1)
    score1: float | None  # round(mean1 * 10, 1): the reference answers
    score2: float | None  # round(mean2 * 10, 1): the model's answers


def _scores(row: dict, where: str) -> list[float]:
    value = row["tuple"] if "tuple" in row else row.get("score")
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
        raise ValueError(f"{where}: expected a 'tuple' (or 'score') of two numbers, got {value!r}")
    return [float(x) for x in value]


def summarize_reviews(rows: Iterable[tuple[str, dict]],
                      ignore: Iterable[Any] = ()) -> tuple[dict[str, CategoryScore], list[Any]]:
    """Per-category scores of ``(where, review)`` rows, and the question_ids whose scores were not parsed.

    Reviews with a ``category`` count in it and in ``"all"``; the others in ``"all"`` only. ``ignore``: question
    ids to leave out (compared as strings, so ``3`` and ``"3"`` both drop question 3).
    """
    ignored = {str(x) for x in ignore}
    by_category: dict[str, list[list[float]]] = {"all": []}
    unparsed = []
    for where, row in rows:
        if str(row.get("question_id")) in ignored:
            continue
        scores = _scores(row, where)
        category = row.get("category")
        if category is not None:
            by_category.setdefault(str(category), [])
        if scores == UNPARSED:
            unparsed.append(row.get("question_id"))
            continue
        by_category["all"].append(scores)
        if category is not None:
            by_category[str(category)].append(scores)
    return {k: _category_score(v) for k, v in sorted(by_category.items())}, unparsed


def _category_score(scores: list[list[float]]) -> CategoryScore:
    if not scores:
        return CategoryScore(0, None, None, None)
    mean1 = round(sum(s[0] for s in scores) / len(scores), 3)
    mean2 = round(sum(s[1] for s in scores) / len(scores), 3)
    relative = round(mean2 / mean1 * 100, 1) if mean1 != 0 else None
    return CategoryScore(len(scores), relative, round(mean1 * 10, 1), round(mean2 * 10, 1))


def find_review_files(args) -> list[tuple[str, str]]:
    """``(name, path)`` of each review file to summarize, sorted as upstream (by the name given or listed)."""
    if args.files:
        names = list(args.files)
    elif args.dir:
        if not os.path.isdir(args.dir):
            raise FileNotFoundError(f"review folder not found: {args.dir}")
        prefixes = ("gpt4_text", "reviews_", "review_")
        names = [x for x in os.listdir(args.dir)
                 if x.endswith(".jsonl") and (x.startswith(prefixes) or "review" in args.dir)]
    else:
        raise ValueError("give the review files with -f/--files, or their folder with -d/--dir")
    found = []
    for name in sorted(names):
        config = os.path.basename(name).replace("gpt4_text_", "").replace(".jsonl", "")
        if args.select and any(word not in config for word in args.select):
            continue
        version = "0613" if "0613" in config else "0314"
        if args.version is not None and args.version != version:
            continue
        found.append((config, os.path.join(args.dir, name) if args.dir else name))
    if not found:
        raise FileNotFoundError(f"no review files to summarize (files {args.files or []}, folder {args.dir!r}, "
                                f"select {args.select or []}, version {args.version!r})")
    return found


def _number(x: float | None) -> str:
    return "n/a" if x is None else str(x)


def summarize_files(args) -> int:
    """Print each file's block; returns how many reviews were left out as unparsable."""
    left_out = 0
    for config, path in find_review_files(args):
        rows = read_jsonl_lines(path, "review file")
        if not rows:
            raise ValueError(f"{path}: no reviews")
        table, unparsed = summarize_reviews(((f"{path}:{n}", row) for n, row in rows), args.ignore or ())
        print(config)
        for category, s in table.items():
            print(category, _number(s.relative), _number(s.score1), _number(s.score2))
        if unparsed:
            print(f"not counted: {len(unparsed)} review(s) whose scores could not be parsed (question_id "
                  f"{listed(unparsed)}); run llava.eval.eval_gpt_review_bench again to ask for them again")
            left_out += len(unparsed)
        print(SEPARATOR)
    return left_out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Average GPT review files per category.")
    parser.add_argument("-d", "--dir", default=None, help="folder of review files (and of the -f names)")
    parser.add_argument("-v", "--version", default=None, help="0314 or 0613: the judge version in the file names")
    parser.add_argument("-s", "--select", nargs="*", default=None, help="keep files whose names contain each word")
    parser.add_argument("-f", "--files", nargs="*", default=[], help="review files")
    parser.add_argument("-i", "--ignore", nargs="*", default=[], help="question ids to leave out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        left_out = summarize_files(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if left_out else 0


if __name__ == "__main__":
    sys.exit(main())
