"""Turn merged VQAv2 answers into the EvalAI upload file.

    python scripts/convert_vqav2_for_submission.py --split llava_vqav2_mscoco_test-dev2015 --ckpt llava-v1.5-13b

Reads ``DIR/answers/SPLIT/CKPT/merge.jsonl`` and the full test question list ``DIR/llava_vqav2_mscoco_test2015.jsonl``;
writes ``DIR/answers_upload/SPLIT/CKPT.json``: ``[{"question_id", "answer"}, ...]`` for every test question, answers
normalised as the VQA server does; questions without an answer (the test-dev split is a subset) get "".
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
    parser.add_argument("--dir", type=str, default="./playground/data/eval/vqav2")
    parser.add_argument("--ckpt", type=str, required=True)
    parser.add_argument("--split", type=str, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    src = os.path.join(args.dir, "answers", args.split, args.ckpt, "merge.jsonl")
    test_split = os.path.join(args.dir, "llava_vqav2_mscoco_test2015.jsonl")
    dst = os.path.join(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")
    results = {r["question_id"]: r["text"] for r in read_jsonl(src, ("question_id", "text"), what="answers file")}
    questions = read_jsonl(test_split, ("question_id",))
    answered = sum(1 for q in questions if q["question_id"] in results)
    print(f"total results: {len(results)}, total split: {len(questions)}, answered: {answered}")
    processor = EvalAIAnswerProcessor()
    upload = [{"question_id": q["question_id"],
               "answer": processor(results[q["question_id"]]) if q["question_id"] in results else ""}
              for q in questions]
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(upload, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
