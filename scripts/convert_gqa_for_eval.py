"""Turn merged GQA answers into the predictions file GQA's official ``eval.py`` reads.

    python scripts/convert_gqa_for_eval.py --src merge.jsonl --dst testdev_balanced_predictions.json

Each answer becomes ``{"questionId": question_id, "prediction": text}`` with trailing periods removed and lower-cased.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llava.eval._io import read_jsonl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=str, required=True)
    parser.add_argument("--dst", type=str, required=True)
    args = parser.parse_args(argv)
    rows = read_jsonl(args.src, ("question_id", "text"), what="answers file")
    predictions = [{"questionId": r["question_id"], "prediction": r["text"].rstrip(".").lower()} for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    with open(args.dst, "w", encoding="utf-8") as f:
        json.dump(predictions, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
