"""Score TextVQA answers (upstream's ``llava.eval.eval_textvqa``).

    python -m llava.eval.eval_textvqa \\
        --annotation-file ./playground/data/eval/textvqa/TextVQA_0.5.1_val.json \\
        --result-file ./playground/data/eval/textvqa/answers/llava-v1.5-13b.jsonl

Each answer is matched to its annotation by ``(question_id, question)``: LLaVA's TextVQA question file uses the
image id as ``question_id``, and the question is read back from the answer's ``prompt`` (its first line, before the
"Reference OCR token: ..." line). Answers may come in any order; each annotation must be answered once (a repeated,
extra or missing pair, a ``text`` that is not a string, a missing ``prompt`` and an empty file are errors naming the
file, line and id). Prints the file's name, then ``Samples: N`` and ``Accuracy: xx.xx%``.
``--result-dir`` scores every ``.jsonl`` file in a folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from llava.eval._answers import match_answers, read_answers
from llava.eval._io import read_json
from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator

_OCR_PREFIX_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TextVQA accuracy of LLaVA answer files.")
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-file", type=str)
    parser.add_argument("--result-dir", type=str)
    return parser.parse_args(argv)


def prompt_processor(prompt: str) -> str:
    """The (lower-cased) question inside an answer's ``prompt``, for the prompt styles LLaVA's files use.

    * ``"OCR tokens: ... Question: <q> Short answer:"``
    * three lines with a ``"Reference OCR token: ..."`` line: the other leading line is the question
    * two lines (question, then the answer-format instruction): the first line

    Raises:
        ValueError: any other layout.
    """
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_PREFIX_PROMPT.search(prompt)
        if match is None:
            raise ValueError(f"cannot find 'Question: ... Short answer:' in prompt {prompt!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot find the question in prompt {prompt!r} (expected 2 lines, or 3 with OCR tokens)")
    return question.lower()


def _describe(key: tuple) -> str:
    return f"question_id {key[0]!r} with question {key[1]!r}"


def read_annotations(annotation_file: str) -> list[tuple[tuple, dict]]:
    """``((image_id, lower-cased question), annotation)`` for each entry of TextVQA's ``{"data": [...]}``."""
    data = read_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{annotation_file}: expected TextVQA's {{'data': [...]}} layout")
    entries = []
    for i, a in enumerate(data["data"]):
        missing = [f for f in ("image_id", "question", "answers") if not isinstance(a, dict) or f not in a]
        if missing:
            raise ValueError(f"{annotation_file}: data[{i}] has no {missing[0]!r}")
        if not isinstance(a["question"], str) or not isinstance(a["image_id"], (str, int)):
            raise ValueError(f"{annotation_file}: data[{i}]: expected a string question and image_id")
        entries.append(((a["image_id"], a["question"].lower()), a))
    return entries


def eval_single(annotation_file: str, result_file: str) -> float:
    """Print and return the accuracy (in %) of one answers file.

    Each answer is matched to its annotation by ``(question_id, question from its prompt)``, in any order; every
    annotation must be answered once (a repeated, extra or missing pair is an error naming the file, line and id).
    """
    experiment_name = os.path.splitext(os.path.basename(result_file))[0]
    print(experiment_name)
    entries = read_annotations(annotation_file)
    annotations = dict(entries)  # as upstream: an (image, question) pair listed twice is scored on its last entry
    answers = read_answers(result_file, key=lambda a: (a.question_id, prompt_processor(a.prompt)))
    match_answers(answers, [k for k, _ in entries], result_file, annotation_file, describe=_describe)
    pred_list = [{"pred_answer": a.text, "gt_answers": annotations[a.key]["answers"]} for a in answers]
    accuracy = 100.0 * TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
    print("Samples: {}\nAccuracy: {:.2f}%\n".format(len(pred_list), accuracy))
    return accuracy


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args(argv)
    if args.result_file is None and args.result_dir is None:
        print("error: give --result-file or --result-dir", file=sys.stderr)
        return 2
    try:
        if args.result_file is not None:
            eval_single(args.annotation_file, args.result_file)
        if args.result_dir is not None:
            for result_file in sorted(os.listdir(args.result_dir)):
                if not result_file.endswith(".jsonl"):
                    print(f"Skipping {result_file}")
                    continue
                eval_single(args.annotation_file, os.path.join(args.result_dir, result_file))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
