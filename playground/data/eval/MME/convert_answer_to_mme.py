"""Turn LLaVA's MME answers into the per-category files MME's ``eval_tool/calculation.py`` reads.

Run from ``playground/data/eval/MME`` (as ``scripts/v1_5/eval/mme.sh`` does):

    python convert_answer_to_mme.py --experiment llava-v1.5-13b

Reads ``answers/EXPERIMENT.jsonl`` and the ground truth in ``MME_Benchmark_release_version/<category>/`` (either
``questions_answers_YN/*.txt`` beside ``images/``, or the ``.txt`` files in the category folder itself; each line
``question<TAB>answer``). Writes ``eval_tool/answers/EXPERIMENT/<category>.txt`` with one line per answer:
``image file<TAB>question<TAB>ground truth<TAB>model answer``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

DATA_DIR = "MME_Benchmark_release_version"
SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_NO = "Please answer yes or no."


def read_ground_truth(data_path: str) -> dict[tuple[str, str, str], str]:
    """``(category, question file name, question) -> "Yes"/"No"``."""
    truth = {}
    for category in sorted(os.listdir(data_path)):
        category_dir = os.path.join(data_path, category)
        if not os.path.isdir(category_dir):
            continue
        qa_dir = os.path.join(category_dir, "questions_answers_YN")
        if not os.path.isdir(os.path.join(category_dir, "images")):
            qa_dir = category_dir
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(qa_dir, name), encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 2:
                        raise ValueError(f"{os.path.join(qa_dir, name)}:{lineno}: expected 'question<TAB>answer'")
                    truth[(category, name, parts[0].strip())] = parts[1].strip()
    return truth


def mme_question(prompt: str, category: str, name: str, truth: dict) -> str:
    """The question as MME writes it: without LLaVA's short-answer line, ending in "Please answer yes or no."."""
    question = prompt.replace(SHORT_ANSWER, "").strip()
    if YES_NO not in question:
        question = f"{question} {YES_NO}"
        if (category, name, question) not in truth:  # a few MME questions have two spaces before it
            question = question.replace(f" {YES_NO}", f"  {YES_NO}")
    return question


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=str, required=True)
    args = parser.parse_args(argv)
    truth = read_ground_truth(DATA_DIR)
    out_dir = os.path.join("eval_tool", "answers", args.experiment)
    os.makedirs(out_dir, exist_ok=True)
    per_category = defaultdict(list)
    with open(os.path.join("answers", f"{args.experiment}.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                answer = json.loads(line)
                category = answer["question_id"].split("/")[0]
                name = os.path.splitext(answer["question_id"].split("/")[-1])[0] + ".txt"
                per_category[category].append((name, answer["prompt"], answer["text"]))
    for category, rows in per_category.items():
        with open(os.path.join(out_dir, f"{category}.txt"), "w", encoding="utf-8") as out:
            for name, prompt, text in rows:
                question = mme_question(prompt, category, name, truth)
                if (category, name, question) not in truth:
                    print(f"error: no ground truth for {category}/{name}: {question!r}", file=sys.stderr)
                    return 2
                # MME's calculation.py reads a model answer on one line
                out.write("\t".join((name, question, truth[(category, name, question)], text.replace("\n", " ")))
                          + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
