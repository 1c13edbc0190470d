"""Turn MM-Vet answers into the ``{"v1_<question_id>": answer}`` JSON the MM-Vet grader reads.

    python scripts/convert_mmvet_for_eval.py --src answers/llava-v1.5-13b.jsonl --dst results/llava-v1.5-13b.json
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
    result = {f"v1_{r['question_id']}": r["text"] for r in rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    with open(args.dst, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
