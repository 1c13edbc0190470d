"""Score ScienceQA answers (upstream's ``llava/eval/eval_science_qa.py``; no torch, and it runs
as ``python llava/eval/eval_science_qa.py`` with the package installed).

    python llava/eval/eval_science_qa.py \\
        --base-dir ./playground/data/eval/scienceqa \\
        --result-file ./playground/data/eval/scienceqa/answers/llava-v1.5-13b.jsonl \\
        --output-file ./playground/data/eval/scienceqa/answers/llava-v1.5-13b_output.jsonl \\
        --output-result ./playground/data/eval/scienceqa/answers/llava-v1.5-13b_result.json

``--base-dir`` holds ScienceQA's ``problems.json`` ({id: {"choices": [...], "answer": index, ...}}) and
``pid_splits.json`` ({split: [id, ...]}). An answer's letter is read as: the whole answer if it is an option letter;
else its first character when followed by ". "; else X from a single "The answer is X." Anything else is "FAILED"
and counts as wrong. Answers are matched to problems by ``question_id`` (in any order); each problem of the split
must be answered once (upstream counted a missing answer as wrong; here a repeated, extra or missing id is an error
naming the file, line and id). Prints
``Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: xx.xx%`` (IMG: answers whose prompt has ``<image>``);
writes the per-problem analysis to ``--output-file`` and ``{acc, correct, count, results, outputs}`` to
``--output-result``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from llava.eval._answers import load_answers
from llava.eval._io import read_json

_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ScienceQA accuracy of a LLaVA answers file.")
    parser.add_argument("--base-dir", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    parser.add_argument("--output-file", type=str, required=True)
    parser.add_argument("--output-result", type=str, required=True)
    parser.add_argument("--split", type=str, default="test")
    parser.add_argument("--options", type=list, default=["A", "B", "C", "D", "E"],
                        help="option letters, written together (e.g. ABCDE)")
    return parser.parse_args(argv)


def convert_caps(results: Sequence[dict]) -> list[dict]:
    """Answers ``[{"question_id", "text", ...}]`` as caption records ``[{"image_id": int(question_id), "caption":
    text}]`` (upstream's helper for caption-style scoring)."""
    return [{"image_id": int(r["question_id"]), "caption": r["text"]} for r in results]


def parse_answer_letter(pred_text: str, options: Sequence[str]) -> str:
    """The option letter an answer gives, or "FAILED"."""
    if pred_text in options:
        return pred_text
    if len(pred_text) >= 3 and pred_text[0] in options and pred_text[1:3] == ". ":
        return pred_text[0]
    found = _THE_ANSWER_IS.findall(pred_text)
    return found[0] if len(found) == 1 else "FAILED"


def get_pred_idx(prediction: str, choices: Sequence, options: Sequence[str]) -> int:
    """The index of letter ``prediction`` among this problem's choices, or -1 (wrong) when it is not one."""
    if prediction in options[: len(choices)]:
        return list(options).index(prediction)
    return -1


def evaluate(base_dir: str, result_file: str, split: str = "test", options: Sequence[str] = "ABCDE"):
    """Score ``result_file`` on ``split``; return ``(results, sqa_results)`` as written to the output files."""
    options = list(options)
    splits = read_json(os.path.join(base_dir, "pid_splits.json"))
    if split not in splits:
        raise ValueError(f"{os.path.join(base_dir, 'pid_splits.json')}: no split {split!r} "
                         f"(found {', '.join(sorted(splits))})")
    problems = read_json(os.path.join(base_dir, "problems.json"))
    split_ids = list(dict.fromkeys(splits[split]))  # upstream keys the split's problems by id: a repeat counts once
    missing_problems = [pid for pid in split_ids if pid not in problems]
    if missing_problems:
        raise ValueError(f"{base_dir}/problems.json has no problem {missing_problems[0]!r} of split {split!r}")
    predictions = load_answers(result_file, split_ids,
                               f"split {split!r} of {os.path.join(base_dir, 'pid_splits.json')}")

    results: dict[str, list] = {"correct": [], "incorrect": []}
    sqa_results: dict = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for prob_id in split_ids:
        prob = problems[prob_id]
        pred = predictions[prob_id]
        answer = parse_answer_letter(pred.text, options)
        pred_idx = get_pred_idx(answer, prob["choices"], options)
        analysis = {
            "question_id": prob_id,
            "parsed_ans": answer,
            "ground_truth": options[prob["answer"]],
            "question": pred.prompt,
            "pred": pred.text,
            "is_multimodal": "<image>" in pred.prompt,
        }
        sqa_results["results"][prob_id] = pred_idx
        sqa_results["outputs"][prob_id] = pred.text
        results["correct" if pred_idx == prob["answer"] else "incorrect"].append(analysis)

    correct = len(results["correct"])
    total = correct + len(results["incorrect"])
    mm_correct = sum(1 for x in results["correct"] if x["is_multimodal"])
    mm_total = mm_correct + sum(1 for x in results["incorrect"] if x["is_multimodal"])
    accuracy = correct / total * 100 if total else 0.0
    img_accuracy = f"{mm_correct / mm_total * 100:.2f}%" if mm_total else "n/a"
    print(f"Total: {total}, Correct: {correct}, Accuracy: {accuracy:.2f}%, IMG-Accuracy: {img_accuracy}")
    sqa_results.update(acc=accuracy, correct=correct, count=total)
    return results, sqa_results


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args(argv)
    try:
        results, sqa_results = evaluate(args.base_dir, args.result_file, args.split, args.options)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, data in ((args.output_file, results), (args.output_result, sqa_results)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
