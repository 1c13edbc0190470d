"""Turn VizWiz answers into the EvalAI upload file.

    python scripts/convert_vizwiz_for_submission.py --annotation-file llava_test.jsonl \
        --result-file answers/llava-v1.5-13b.jsonl --result-upload-file answers_upload/llava-v1.5-13b.json

Writes ``[{"image", "answer"}, ...]`` in question-file order, answers normalised as the VQA server does.
Every question must have an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llava.eval._io import read_jsonl
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    parser.add_argument("--result-upload-file", type=str, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {r["question_id"]: r["text"]
               for r in read_jsonl(args.result_file, ("question_id", "text"), what="answers file")}
    questions = read_jsonl(args.annotation_file, ("question_id", "image"))
    print(f"total results: {len(results)}, total split: {len(questions)}")
    missing = [q["question_id"] for q in questions if q["question_id"] not in results]
    if missing:
        print(f"error: {len(missing)} questions of {args.annotation_file} have no answer in {args.result_file}, "
              f"e.g. question_id {missing[0]!r}", file=sys.stderr)
        return 2
    processor = EvalAIAnswerProcessor()
    upload = [{"image": q["image"], "answer": processor(results[q["question_id"]])} for q in questions]
    os.makedirs(os.path.dirname(os.path.abspath(args.result_upload_file)), exist_ok=True)
    with open(args.result_upload_file, "w", encoding="utf-8") as f:
        json.dump(upload, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
