"""Score POPE yes/no answers per category (upstream's ``llava/eval/eval_pope.py``; no torch, and it
runs as ``python llava/eval/eval_pope.py`` with the package installed).

    python llava/eval/eval_pope.py \\
        --annotation-dir ./playground/data/eval/pope/coco \\
        --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \\
        --result-file ./playground/data/eval/pope/answers/llava-v1.5-13b.jsonl

``--annotation-dir`` holds ``coco_pope_<category>.json`` files (JSON lines with a ``label`` of "yes"/"no"); the
question file gives each question's ``category``. Within a category, answers are matched to labels in order (the
question file lists each category's questions in its annotation file's order). An answer is "no" when its first
sentence (commas removed) has the word "no", "No" or "not"; otherwise "yes". "yes" is the positive class.
For each category prints the TP/FP/TN/FN counts, Accuracy, Precision, Recall, F1 score, Yes ratio and the line
``f1, acc, precision, recall, yes_ratio`` (3 decimals).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from llava.eval._io import read_jsonl

_PREFIX, _SUFFIX = "coco_pope_", ".json"


def parse_yes_no(text: str) -> str:
    """"no" when the first sentence (commas removed) contains the word "No", "no" or "not"; else "yes"."""
    first_sentence = text.split(".")[0] if "." in text else text
    words = first_sentence.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Counts and rates with "yes" as the positive class; a rate whose denominator is 0 is reported as 0."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    pairs = list(zip((p == "yes" for p in preds), (label != "no" for label in labels)))
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    tn = sum(not p and not t for p, t in pairs)
    fn = sum(not p and t for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = len(pairs)
    return {
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": sum(p for p, _ in pairs) / total if total else 0.0,
    }


def eval_pope(answers: Sequence[dict], label_file: str) -> dict[str, float]:
    """Print and return the metrics of ``answers`` (in question order) against ``label_file``'s labels."""
    rows = read_jsonl(label_file)
    if any("label" not in row for row in rows):
        raise ValueError(f"{label_file}: every line needs a 'label' (\"yes\" or \"no\")")
    labels = [row["label"] for row in rows]
    if len(answers) != len(labels):
        raise ValueError(f"{label_file}: {len(labels)} labels but {len(answers)} answers for this category "
                         "(are the answers from a complete run?)")
    m = pope_metrics([parse_yes_no(a["text"]) for a in answers], labels)
    print("TP\tFP\tTN\tFN\t")
    print("{}\t{}\t{}\t{}".format(m["TP"], m["FP"], m["TN"], m["FN"]))
    print("Accuracy: {}".format(m["accuracy"]))
    print("Precision: {}".format(m["precision"]))
    print("Recall: {}".format(m["recall"]))
    print("F1 score: {}".format(m["f1"]))
    print("Yes ratio: {}".format(m["yes_ratio"]))
    print("%.3f, %.3f, %.3f, %.3f, %.3f" % (m["f1"], m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]))
    return m


def evaluate(annotation_dir: str, question_file: str, result_file: str) -> dict[str, dict[str, float]]:
    """Metrics per category (in sorted file order), printed as upstream prints them."""
    questions = {}
    for q in read_jsonl(question_file):
        if "question_id" not in q or "category" not in q:
            raise ValueError(f"{question_file}: every question needs 'question_id' and 'category', got {q}")
        questions[q["question_id"]] = q
    answers = read_jsonl(result_file)
    for answer in answers:
        if "question_id" not in answer or "text" not in answer:
            raise ValueError(f"{result_file}: every answer needs 'question_id' and 'text', got {answer}")
        if answer["question_id"] not in questions:
            raise ValueError(f"{result_file}: question_id {answer['question_id']!r} is not in {question_file}")
    results = {}
    for file in sorted(os.listdir(annotation_dir)):
        if not (file.startswith(_PREFIX) and file.endswith(_SUFFIX)):
            print(f"Skipping {file}")
            continue
        category = file[len(_PREFIX) : -len(_SUFFIX)]
        cur_answers = [a for a in answers if questions[a["question_id"]]["category"] == category]
        print("Category: {}, # samples: {}".format(category, len(cur_answers)))
        results[category] = eval_pope(cur_answers, os.path.join(annotation_dir, file))
        print("====================================")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="POPE precision / recall / F1 per category.")
    parser.add_argument("--annotation-dir", type=str, required=True)
    parser.add_argument("--question-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    args = parser.parse_args(argv)
    try:
        evaluate(args.annotation_dir, args.question_file, args.result_file)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
