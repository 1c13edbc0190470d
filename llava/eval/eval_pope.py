"""Score POPE yes/no answers per category (upstream's ``llava/eval/eval_pope.py``; no torch, and it
runs as ``python llava/eval/eval_pope.py`` with the package installed).

    python llava/eval/eval_pope.py \\
        --annotation-dir ./playground/data/eval/pope/coco \\
        --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \\
        --result-file ./playground/data/eval/pope/answers/llava-v1.5-13b.jsonl

``--annotation-dir`` holds ``coco_pope_<category>.json`` files (JSON lines with a ``label`` of "yes"/"no"); the
question file gives each question's ``category``. Answers are matched to questions by ``question_id``, in any
order, and every question must be answered once (a repeated, extra or missing id is an error). Within a category the
k-th question of the question file takes the annotation file's k-th label (the question file lists each category's
questions in its annotation file's order; where both give an ``image`` they must agree). An answer is "no" when its
first sentence (commas removed) has the word "no", "No" or "not"; otherwise "yes". "yes" is the positive class.
For each category prints the TP/FP/TN/FN counts, Accuracy, Precision, Recall, F1 score, Yes ratio and the line
``f1, acc, precision, recall, yes_ratio`` (3 decimals).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence

from llava.eval._answers import load_answers
from llava.eval._io import read_jsonl_lines

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


def _print_metrics(m: dict[str, float]) -> None:
    print("TP\tFP\tTN\tFN\t")
    print("{}\t{}\t{}\t{}".format(m["TP"], m["FP"], m["TN"], m["FN"]))
    print("Accuracy: {}".format(m["accuracy"]))
    print("Precision: {}".format(m["precision"]))
    print("Recall: {}".format(m["recall"]))
    print("F1 score: {}".format(m["f1"]))
    print("Yes ratio: {}".format(m["yes_ratio"]))
    print("%.3f, %.3f, %.3f, %.3f, %.3f" % (m["f1"], m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]))


def read_questions(question_file: str) -> list[tuple[int, dict]]:
    """``(line, question)`` of the question file; each needs a unique ``question_id`` and a ``category``."""
    rows = read_jsonl_lines(question_file, "question file")
    first_line: dict = {}
    for line, q in rows:
        for field in ("question_id", "category"):
            if field not in q:
                raise ValueError(f"{question_file}:{line}: no {field!r} field (each question needs question_id "
                                 "and category)")
        qid = q["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise ValueError(f"{question_file}:{line}: question_id {qid!r} is {type(qid).__name__}, "
                             "expected a string or an integer")
        if qid in first_line:
            raise ValueError(f"{question_file}:{line}: question_id {qid!r} repeats line {first_line[qid]}")
        first_line[qid] = line
    if not rows:
        raise ValueError(f"{question_file}: no questions (the question file is empty)")
    return rows


def read_labels(label_file: str) -> list[tuple[int, dict]]:
    """``(line, row)`` of an annotation file; each row needs a ``label``."""
    rows = read_jsonl_lines(label_file, "annotation file")
    for line, row in rows:
        if "label" not in row:
            raise ValueError(f"{label_file}:{line}: no 'label' field (\"yes\" or \"no\")")
    return rows


def _pair_labels(questions: list[tuple[int, dict]], labels: list[tuple[int, dict]], question_file: str,
                 label_file: str, category: str) -> list[str]:
    """The label of each question of ``category``: its k-th question takes the annotation file's k-th line."""
    if len(labels) != len(questions):
        raise ValueError(f"{label_file}: {len(labels)} labels but {question_file} has {len(questions)} questions of "
                         f"category {category!r} (the k-th question of a category takes the k-th label)")
    for (q_line, q), (l_line, row) in zip(questions, labels):
        q_image, l_image = q.get("image"), row.get("image")
        if isinstance(q_image, str) and isinstance(l_image, str) and \
                os.path.basename(q_image) != os.path.basename(l_image):
            raise ValueError(f"{question_file}:{q_line}: question_id {q['question_id']!r} (image {q_image!r}) does "
                             f"not match {label_file}:{l_line} (image {l_image!r}): the question file must list a "
                             "category's questions in its annotation file's order")
    return [row["label"] for _, row in labels]


def evaluate(annotation_dir: str, question_file: str, result_file: str) -> dict[str, dict[str, float]]:
    """Metrics per category (in sorted file order), printed as upstream prints them.

    Each answer is matched to its question by ``question_id`` (the answers may come in any order); the question
    file must be answered exactly: a repeated, extra or missing id is an error.
    """
    questions = read_questions(question_file)
    lines = {q["question_id"]: line for line, q in questions}
    answers = load_answers(result_file, lines, question_file, expected_lines=lines)
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(f"annotation directory not found: {annotation_dir}")
    files = sorted(os.listdir(annotation_dir))
    if not any(f.startswith(_PREFIX) and f.endswith(_SUFFIX) for f in files):
        raise ValueError(f"{annotation_dir}: no {_PREFIX}<category>{_SUFFIX} annotation files")
    results = {}
    for file in files:
        if not (file.startswith(_PREFIX) and file.endswith(_SUFFIX)):
            print(f"Skipping {file}")
            continue
        category = file[len(_PREFIX) : -len(_SUFFIX)]
        label_file = os.path.join(annotation_dir, file)
        cur_questions = [(line, q) for line, q in questions if q["category"] == category]
        labels = _pair_labels(cur_questions, read_labels(label_file), question_file, label_file, category)
        preds = [parse_yes_no(answers[q["question_id"]].text) for _, q in cur_questions]
        print("Category: {}, # samples: {}".format(category, len(cur_questions)))
        results[category] = pope_metrics(preds, labels)
        _print_metrics(results[category])
        print("====================================")
    unscored = Counter(q["category"] for _, q in questions if q["category"] not in results)
    for category, n in sorted(unscored.items(), key=lambda kv: str(kv[0])):
        print(f"warning: {n} questions of category {category!r} in {question_file} not scored: no "
              f"{_PREFIX}{category}{_SUFFIX} in {annotation_dir}", file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="POPE precision / recall / F1 per category.")
    parser.add_argument("--annotation-dir", type=str, required=True)
    parser.add_argument("--question-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    args = parser.parse_args(argv)
    try:
        evaluate(args.annotation_dir, args.question_file, args.result_file)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
