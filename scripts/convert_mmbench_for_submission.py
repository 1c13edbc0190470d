"""Turn MMBench answers into the ``.xlsx`` file the MMBench evaluation server takes.

    python scripts/convert_mmbench_for_submission.py --annotation-file mmbench_dev_20230712.tsv \
        --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 \
        --experiment llava-v1.5-13b

Reads ``RESULT_DIR/EXPERIMENT.jsonl``; writes ``UPLOAD_DIR/EXPERIMENT.xlsx``: the annotation table without the
hint, category, source, image, comment and l2-category columns, with a ``prediction`` column (7th, before ``answer``
in the dev split) holding each question's round-0 answer.
"""

from __future__ import annotations

import argparse
import os
import sys

from llava.eval._io import read_jsonl

DROPPED_COLUMNS = ["hint", "category", "source", "image", "comment", "l2-category"]


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-dir", type=str, required=True)
    parser.add_argument("--upload-dir", type=str, required=True)
    parser.add_argument("--experiment", type=str, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    import pandas as pd

    args = get_args(argv)
    df = pd.read_table(args.annotation_file)
    table = df.drop(columns=[c for c in DROPPED_COLUMNS if c in df.columns])
    table.insert(min(6, len(table.columns)), "prediction", None)
    result_file = os.path.join(args.result_dir, f"{args.experiment}.jsonl")
    for pred in read_jsonl(result_file, ("question_id", "text"), what="answers file"):
        if pred.get("round_id", 0) != 0:  # --all-rounds files: the submission takes the first (unrotated) round
            continue
        rows = table["index"] == pred["question_id"]
        if not rows.any():
            print(f"error: {result_file}: question_id {pred['question_id']!r} is not in {args.annotation_file}",
                  file=sys.stderr)
            return 2
        table.loc[rows, "prediction"] = pred["text"]
    missing = int(table["prediction"].isna().sum())
    if missing:
        print(f"warning: {missing} questions have no prediction", file=sys.stderr)
    os.makedirs(args.upload_dir, exist_ok=True)
    table.to_excel(os.path.join(args.upload_dir, f"{args.experiment}.xlsx"), index=False, engine="openpyxl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
