"""Score TextVQA answers (upstream's ``llava.eval.eval_textvqa``).

    python -m llava.eval.eval_textvqa \\
        --annotation-file ./playground/data/eval/textvqa/TextVQA_0.5.1_val.json \\
        --result-file ./playground/data/eval/textvqa/answers/llava-v1.5-13b.jsonl

Each answer is matched to its annotation by ``(question_id, question)``: LLaVA's TextVQA question file uses the
image id as ``question_id``, and the question is read back from the answer's ``prompt`` (its first line, before the
"Reference OCR token: ..." line). Prints the file's name, then ``Samples: N`` and ``Accuracy: xx.xx%``.
``--result-dir`` scores every ``.jsonl`` file in a folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from llava.eval._io import read_json, read_jsonl
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


def eval_single(annotation_file: str, result_file: str) -> float:
    """Print and return the accuracy (in %) of one answers file."""
    experiment_name = os.path.splitext(os.path.basename(result_file))[0]
    print(experiment_name)
    data = read_json(annotation_file)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{annotation_file}: expected TextVQA's {{'data': [...]}} layout")
    annotations = {(a["image_id"], a["question"].lower()): a for a in data["data"]}
    pred_list = []
    for result in read_jsonl(result_file, ("question_id", "prompt", "text"), what="result file"):
        key = (result["question_id"], prompt_processor(result["prompt"]))
        if key not in annotations:
            raise ValueError(f"{result_file}: no annotation for question_id {key[0]!r} with question {key[1]!r}")
        pred_list.append({"pred_answer": result["text"], "gt_answers": annotations[key]["answers"]})
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
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
