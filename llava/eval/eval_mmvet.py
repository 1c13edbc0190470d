"""MM-Vet: a GPT judge grades each answer against the ground truth, then the scores per capability (the grader of
the MM-Vet repository, ``mm-vet_evaluator.py``, as a command; same prompt, files and arithmetic).

    OPENAI_API_KEY=... python -m llava.eval.eval_mmvet --mmvet-path playground/data/eval/mm-vet \\
        --result-file playground/data/eval/mm-vet/results/llava-v1.5-13b.json [--num-run 5] [--use-sub-set]

Inputs: ``<mmvet-path>/mm-vet.json`` (``{"v1_0": {"question", "answer", "capability": [...], ...}}``; another
path with ``--metadata``) and the answers ``scripts/convert_mmvet_for_eval.py`` writes (``{"v1_0": "answer"}``);
MM-Vet's own ``--result_path DIR --model NAME`` (answers in ``DIR/NAME.json``) works too. ``--use-sub-set`` grades
only the ids of ``<mmvet-path>/bard_set.json``.

Each answer is graded ``--num-run`` times by MM-Vet's few-shot prompt (``llava/eval/table/mmvet_grader_prompt.txt``,
the benchmark's text) at temperature 0 with at most 3 new tokens; the reply's first word must be a number in
[0, 1]. Otherwise the judge is asked again with "Predict the correctness of the answer (digit): " appended, at
temperature 0.5, 1.0, 1.5 and 2.0; after 5 replies that are no score the grade is 0.0, MM-Vet's rule (such grades
are listed at the end).

Outputs, in the answers' folder (``--result-path``), named as MM-Vet names them:
``<model>_<judge>-grade-<n>runs.json`` (per sample: ``{"model": [...], "content": [...], "score": [...],
"answer": the graded answer}``), ``<model>_<judge>-cap-score-<n>runs.csv`` (per capability: rec, ocr, know, gen,
spat, math, then total, std over runs and the per-run totals) and ``...-cap-int-score-<n>runs.csv`` (per
combination of capabilities); both tables are printed too. Scores are the mean grade x 100, rounded to
``--decimal-places``.

Resuming: grades already in the grade file (or in the progress log an interrupted run left beside it) are kept
unless the answer they graded changed; a grade file from MM-Vet's own grader is picked up as it is. Exit status: 0
done; 1 the judge failed (grades so far are kept: run again to go on); 2 a user's mistake (no OPENAI_API_KEY, a
missing file, answers that do not cover the ids to grade).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._io import read_json
from ._openai_judge import (
    TABLE_DIR,
    Judge,
    JudgeError,
    ProgressLog,
    add_judge_args,
    listed,
    make_client,
    run_judged_cli,
    write_atomically,
)

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "capability_tables", "grade_answers", "grader_content", "main", "parse_grade"]

PROMPT_FILE = TABLE_DIR / "mmvet_grader_prompt.txt"
#: the MM-Vet grader's judge
DEFAULT_JUDGE_MODEL = "gpt-4-0613"
#: appended to the request after a reply that is not a score
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
#: replies asked for per grade (temperatures 0, 0.5, ..., 2.0) before it falls back to 0.0
MAX_ATTEMPTS = 5
TEMPERATURE_STEP = 0.5
MAX_NEW_TOKENS = 3
#: the order MM-Vet's tables report the capabilities in; others follow, most frequent first
CAPABILITY_ORDER = ("rec", "ocr", "know", "gen", "spat", "math")


# --- one grade ------------------------------------------------------------------------------------------------


def grader_content(prompt: str, question: str, ground_truth: str, prediction: str) -> str:
    """The grader's user message: the few-shot table, then this sample's row with the correctness left blank."""
    truth = ground_truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return prompt + "\n" + " | ".join([question, truth, prediction, ""])


def parse_grade(content: str) -> float | None:
    """The reply's first space-separated word as a score in [0, 1] (MM-Vet's rule), else None."""
    word = content.split(" ")[0].strip()
    try:
        score = float(word)
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


@dataclass(frozen=True)
class Grade:
    score: float
    content: str  # the last reply
    model: str
    fell_back: bool  # no reply was a score: 0.0 by MM-Vet's rule


def grade_one(judge: Judge, content: str) -> Grade:
    """Ask until a reply is a score (at most :data:`MAX_ATTEMPTS` replies)."""
    messages = [{"role": "user", "content": content}]
    temperature = 0.0
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            messages = [{"role": "user", "content": content + RETRY_SUFFIX}]
            temperature += TEMPERATURE_STEP
        reply = judge.complete(messages, temperature=temperature, max_tokens=MAX_NEW_TOKENS)
        score = parse_grade(reply.content)
        if score is not None:
            return Grade(score, reply.content, reply.model, False)
    return Grade(0.0, reply.content, reply.model, True)


# --- inputs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    id: str
    question: str
    answer: str  # the ground truth
    capabilities: tuple[str, ...]


def load_metadata(path) -> list[Sample]:
    data = read_json(path, "MM-Vet metadata (mm-vet.json)")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of samples (id -> question, answer, capability)")
    samples = []
    for sid, row in data.items():
        ok = (isinstance(row, dict) and isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)
              and isinstance(row.get("capability"), list) and row["capability"]
              and all(isinstance(c, str) for c in row["capability"]))
        if not ok:
            raise ValueError(f"{path}: sample {sid!r} needs 'question' and 'answer' strings and a 'capability' list")
        samples.append(Sample(sid, row["question"], row["answer"], tuple(dict.fromkeys(row["capability"]))))
    return samples


def load_predictions(path, samples: list[Sample], all_ids: set[str]) -> dict[str, str]:
    """The answers to grade; each sample must have one, and every answer must be an MM-Vet id."""
    results = read_json(path, "answers file (scripts/convert_mmvet_for_eval.py output)")
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object {{id: answer}}, got {type(results).__name__}")
    bad = [k for k, v in results.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{path}: the answers of {listed(bad)} are not strings")
    missing = [s.id for s in samples if s.id not in results]
    extra = [k for k in results if k not in all_ids]
    problems = []
    if missing:
        problems.append(f"no answer for {len(missing)} sample(s): {listed(missing)}")
    if extra:
        problems.append(f"{len(extra)} answer(s) with ids MM-Vet does not have: {listed(extra)}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return {s.id: results[s.id] for s in samples}


def load_sub_set(mmvet_path) -> set[str]:
    path = Path(mmvet_path) / "bard_set.json"
    ids = read_json(path, "MM-Vet sub set (bard_set.json)")
    if not isinstance(ids, (list, dict)):
        raise ValueError(f"{path}: expected a list (or object) of sample ids")
    return {str(x) for x in ids}


# --- grade file -----------------------------------------------------------------------------------------------


def _previous_grades(grade_file: Path, log: ProgressLog) -> dict[str, dict]:
    """id -> ``{"model", "content", "score", "answer"?}`` from the grade file, then the progress log's records."""
    grades: dict[str, dict] = {}
    if grade_file.is_file():
        data = read_json(grade_file, "grade file")
        if not isinstance(data, dict):
            raise ValueError(f"{grade_file}: expected a JSON object of grades")
        for sid, entry in data.items():
            if isinstance(entry, dict) and all(isinstance(entry.get(k), list) for k in ("model", "content", "score")):
                grades[sid] = {k: list(entry[k]) for k in ("model", "content", "score")}
                if isinstance(entry.get("answer"), str):
                    grades[sid]["answer"] = entry["answer"]
    for record in log.read():
        _put(grades, record)
    return grades


def _put(grades: dict[str, dict], record: dict) -> None:
    """Set run ``record["run"]`` of sample ``record["id"]`` (a grade of another answer resets the sample)."""
    sid, run = record["id"], record["run"]
    entry = grades.get(sid)
    if entry is None or ("answer" in entry and entry["answer"] != record["answer"]):
        entry = grades[sid] = {"model": [], "content": [], "score": []}
    entry["answer"] = record["answer"]
    for key in ("model", "content", "score"):
        values = entry[key]
        if run < len(values):
            values[run] = record[key]
        elif run == len(values):
            values.append(record[key])
        # a run beyond the next one cannot happen (runs are graded in order); ignore it if a log was edited


def _runs_done(entry: dict | None, prediction: str) -> int:
    if entry is None or ("answer" in entry and entry["answer"] != prediction):
        return 0
    return min(len(entry["model"]), len(entry["content"]), len(entry["score"]))


# --- tables ---------------------------------------------------------------------------------------------------


def _columns(samples: list[Sample]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The capability columns (MM-Vet's order), and the capability combinations (most frequent first)."""
    freq: dict[str, int] = {}
    combos: dict[tuple[str, ...], int] = {}
    for s in samples:
        for c in s.capabilities:
            freq[c] = freq.get(c, 0) + 1
    rank = {c: i for i, c in enumerate(CAPABILITY_ORDER)}
    others = sorted((c for c in freq if c not in rank), key=lambda c: -freq[c])
    caps = [c for c in CAPABILITY_ORDER if c in freq] + others
    order = {c: i for i, c in enumerate(caps)}
    for s in samples:
        combo = tuple(sorted(s.capabilities, key=order.__getitem__))
        combos[combo] = combos.get(combo, 0) + 1
    return caps, sorted(combos, key=lambda k: -combos[k])


def capability_tables(samples: list[Sample], scores: dict[str, list[float]], num_run: int,
                      decimals: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """MM-Vet's two score rows: per capability and per combination of capabilities.

    Each value is the mean over runs of (sum of the grades of the samples with that capability / their count x 100),
    rounded to ``decimals``; ``std`` is the population standard deviation of the per-run totals, ``runs`` the
    per-run totals (as a string, as MM-Vet writes it).
    """
    caps, combos = _columns(samples)

    def score(members: list[Sample]) -> tuple[float, list[float]]:
        per_run = [sum(scores[s.id][i] for s in members) / len(members) * 100 for i in range(num_run)]
        return round(sum(per_run) / num_run, decimals), per_run

    row1: dict[str, Any] = {c: score([s for s in samples if c in s.capabilities])[0] for c in caps}
    total, per_run = score(samples)
    mean = sum(per_run) / num_run
    std = round(math.sqrt(sum((x - mean) ** 2 for x in per_run) / num_run), decimals)
    runs = "[" + ", ".join(str(round(x, decimals)) for x in per_run) + "]"
    row1.update(total=total, std=std, runs=runs)
    row2: dict[str, Any] = {"_".join(k): score([s for s in samples if set(s.capabilities) == set(k)])[0]
                            for k in combos}
    row2.update(total=total, std=std, runs=runs)
    return row1, row2


def _csv(model: str, row: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([""] + list(row))
    writer.writerow([model] + [row[k] for k in row])
    return out.getvalue()


def _aligned(row: dict[str, Any]) -> str:
    widths = [max(len(str(k)), len(str(v))) for k, v in row.items()]
    head = "  ".join(str(k).rjust(w) for k, w in zip(row, widths))
    values = "  ".join(str(v).rjust(w) for v, w in zip(row.values(), widths))
    return f"{head}\n{values}"


# --- the run --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    results: Path
    model: str
    grade: Path
    cap_score: Path
    cap_int_score: Path


def resolve_paths(args) -> Paths:
    if args.result_file:
        results = Path(os.path.expanduser(args.result_file))
        model = args.model or results.stem
        folder = Path(os.path.expanduser(args.result_path)) if args.result_path else results.parent
    elif args.result_path and args.model:
        folder = Path(os.path.expanduser(args.result_path))
        model, results = args.model, folder / f"{args.model}.json"
    else:
        raise ValueError("give the answers with --result-file, or MM-Vet's --result_path and --model")
    judge, n = args.judge_model, args.num_run
    sub = "bardset_" if args.use_sub_set else ""
    return Paths(results, model, folder / f"{model}_{judge}-grade-{n}runs.json",
                 folder / f"{model}_{sub}{judge}-cap-score-{n}runs.csv",
                 folder / f"{model}_{sub}{judge}-cap-int-score-{n}runs.csv")


def grade_answers(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """Grade ``args``' answers (resuming), write the grade file and both tables; returns the two table rows."""
    if args.num_run < 1:
        raise ValueError(f"--num-run must be at least 1, got {args.num_run}")
    if not args.mmvet_path and not args.metadata:
        raise ValueError("give the MM-Vet folder with --mmvet-path (or mm-vet.json with --metadata)")
    paths = resolve_paths(args)
    samples = load_metadata(args.metadata or Path(os.path.expanduser(args.mmvet_path)) / "mm-vet.json")
    all_ids = {s.id for s in samples}
    if args.use_sub_set:
        sub_set = load_sub_set(os.path.expanduser(args.mmvet_path or os.path.dirname(args.metadata)))
        samples = [s for s in samples if s.id in sub_set]
    predictions = load_predictions(paths.results, samples, all_ids)
    prompt = PROMPT_FILE.read_text(encoding="utf-8")

    log = ProgressLog(paths.grade)
    grades = _previous_grades(paths.grade, log)
    judge = None
    asked = 0
    try:
        for run in range(args.num_run):  # run by run, as MM-Vet: a stopped run leaves whole runs behind it
            for n, s in enumerate(samples, start=1):
                if _runs_done(grades.get(s.id), predictions[s.id]) > run:
                    continue
                if judge is None:  # only now: a run with nothing left to grade needs no key
                    judge = Judge(args.judge_model, make_client(args.max_retries, args.timeout))
                grade = grade_one(judge, grader_content(prompt, s.question, s.answer, predictions[s.id]))
                if grade.fell_back:
                    logger.warning("%s (run %d): no reply was a score in [0, 1] (last %r): 0.0", s.id, run + 1,
                                   grade.content)
                record = {"id": s.id, "run": run, "model": grade.model, "content": grade.content,
                          "score": grade.score, "answer": predictions[s.id]}
                log.append(record)
                _put(grades, record)
                asked += 1
                logger.info("[run %d, %d/%d] %s: %s", run + 1, n, len(samples), s.id, grade.score)
    except JudgeError as err:
        raise JudgeError(f"{err}; the {asked} grade(s) made so far are kept in {log.path}: run the same command "
                         "again to go on") from None
    finally:
        log.close()

    # every sample graded: the grade file (all samples graded so far, MM-Vet's format), then the tables
    ordered = {sid: grades[sid] for sid in [s.id for s in samples] + sorted(set(grades) - {s.id for s in samples})
               if sid in grades}
    write_atomically(paths.grade, json.dumps(ordered, indent=4) + "\n")
    log.remove()
    scores = {s.id: [float(x) for x in grades[s.id]["score"][: args.num_run]] for s in samples}
    row1, row2 = capability_tables(samples, scores, args.num_run, args.decimal_places)
    write_atomically(paths.cap_score, _csv(paths.model, row1))
    write_atomically(paths.cap_int_score, _csv(paths.model, row2))

    fell_back = [f"{s.id} (run {i + 1})" for s in samples for i in range(args.num_run)
                 if parse_grade(str(grades[s.id]["content"][i])) is None and float(grades[s.id]["score"][i]) == 0.0]
    print(f"MM-Vet scores of {paths.model} (graded by {args.judge_model}, {args.num_run} run(s), "
          f"{len(samples)} samples; {asked} grade(s) asked now)")
    print(_aligned(row1))
    print()
    print(_aligned(row2))
    if fell_back:
        print(f"graded 0.0 after {MAX_ATTEMPTS} replies that were not a score (MM-Vet's rule): {len(fell_back)}: "
              f"{listed(fell_back)}")
    logger.info("wrote %s, %s and %s", paths.grade, paths.cap_score, paths.cap_int_score)
    return row1, row2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MM-Vet: grade answers with a GPT judge, score per capability.")
    parser.add_argument("--mmvet-path", "--mmvet_path", dest="mmvet_path", default=None,
                        help="the unzipped mm-vet folder (mm-vet.json, bard_set.json)")
    parser.add_argument("--metadata", default=None, help="mm-vet.json, when it is not in --mmvet-path")
    parser.add_argument("--result-file", default=None, help="the answers {id: answer} (convert_mmvet_for_eval.py)")
    parser.add_argument("--result-path", "--result_path", dest="result_path", default=None,
                        help="where the grades and tables go (default: the answers' folder)")
    parser.add_argument("--model", default=None,
                        help="the run's name in the output names (default: the answers' file name); with "
                        "--result_path and no --result-file, the answers are <result_path>/<model>.json")
    parser.add_argument("--num-run", "--num_run", dest="num_run", type=int, default=1,
                        help="gradings per answer (the MM-Vet paper uses 5)")
    parser.add_argument("--decimal-places", "--decimal_places", dest="decimal_places", type=int, default=1)
    parser.add_argument("--use-sub-set", "--use_sub_set", dest="use_sub_set", action="store_true",
                        help="grade only the ids of bard_set.json")
    add_judge_args(parser, judge_model=DEFAULT_JUDGE_MODEL, aliases=("--gpt_model",))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_judged_cli(grade_answers, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
