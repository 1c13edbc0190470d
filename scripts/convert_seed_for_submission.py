"""Score SEED-Bench answers per question type and write the upload file.

    python scripts/convert_seed_for_submission.py --annotation-file SEED-Bench.json \
        --result-file answers/llava-v1.5-13b/merge.jsonl --result-upload-file answers_upload/llava-v1.5-13b.jsonl

An answer is correct when its text equals the question's answer letter. Prints the accuracy of each question type,
``Total accuracy: xx.xx%``, then ``image accuracy`` and ``video accuracy``; writes one
``{"question_id", "prediction"}`` line per annotated question. Every annotated question must have an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llava.eval._io import read_json, read_jsonl


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    parser.add_argument("--result-upload-file", type=str, required=True)
    return parser.parse_args(argv)


def _lookup(results: dict, question_id):
    """Answers may carry the id as an int or as the annotation's string."""
    if question_id in results:
        return results[question_id]
    text = str(question_id)
    return results.get(int(text) if text.isdigit() else text)


def accuracy_by_type(data: dict, results: dict, data_type: str | None = None) -> tuple[dict[str, float], float]:
    """Accuracy (%) per question type name and overall, over questions of ``data_type`` ("image"/"video"/all)."""
    names = {type_id: name for name, type_id in data["question_type"].items()}
    counts: dict = {}
    correct: dict = {}
    for question in data["questions"]:
        if data_type is not None and question.get("data_type") != data_type:
            continue
        type_id = question["question_type_id"]
        counts[type_id] = counts.get(type_id, 0) + 1
        row = _lookup(results, question["question_id"])
        correct[type_id] = correct.get(type_id, 0) + int(row is not None and row["text"] == question["answer"])
    per_type = {names.get(t, str(t)): correct[t] / counts[t] * 100 for t in sorted(counts)}
    total = sum(counts.values())
    return per_type, (sum(correct.values()) / total * 100 if total else 0.0)


def main(argv=None) -> int:
    args = get_args(argv)
    data = read_json(args.annotation_file)
    results = {r["question_id"]: r for r in read_jsonl(args.result_file, ("question_id", "text"), what="answers file")}
    missing = [q["question_id"] for q in data["questions"] if _lookup(results, q["question_id"]) is None]
    if missing:
        print(f"error: {len(missing)} questions of {args.annotation_file} have no answer in {args.result_file}, "
              f"e.g. question_id {missing[0]!r}", file=sys.stderr)
        return 2
    per_type, total = accuracy_by_type(data, results)
    for name, accuracy in per_type.items():
        print(f"{name}: {accuracy:.2f}%")
    print(f"Total accuracy: {total:.2f}%")
    for data_type in ("image", "video"):
        if any(q.get("data_type") == data_type for q in data["questions"]):
            print(f"{data_type} accuracy: {accuracy_by_type(data, results, data_type)[1]:.2f}%")
    os.makedirs(os.path.dirname(os.path.abspath(args.result_upload_file)), exist_ok=True)
    with open(args.result_upload_file, "w", encoding="utf-8") as f:
        for question in data["questions"]:
            row = _lookup(results, question["question_id"])
            f.write(json.dumps({"question_id": question["question_id"], "prediction": row["text"]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
