"""LLaVA-Bench (in-the-wild): a GPT judge scores two answers to each question (upstream's
``llava/eval/eval_gpt_review_bench.py``, same arguments and review format).

    OPENAI_API_KEY=... python -m llava.eval.eval_gpt_review_bench \\
        --question playground/data/eval/llava-bench-in-the-wild/questions.jsonl \\
        --context playground/data/eval/llava-bench-in-the-wild/context.jsonl \\
        --rule llava/eval/table/rule.json \\
        --answer-list playground/data/eval/llava-bench-in-the-wild/answers_gpt4.jsonl \\
                      playground/data/eval/llava-bench-in-the-wild/answers/llava-v1.5-13b.jsonl \\
        --output playground/data/eval/llava-bench-in-the-wild/reviews/llava-v1.5-13b.jsonl

Inputs: questions ``{"question_id", "image", "text", "category"}`` (category ``conv``, ``detail`` or ``complex``,
judged with the rule ``llava_bench_<category>`` of ``--rule``; default: the rule file shipped in this package);
context ``{"image", "caption"}``, one line per image (a list of caption sentences is joined with newlines as
upstream; a single string is used as it is); two answer files ``{"question_id", "text", "answer_id"}`` (the
reference answers first, the model's second).

Output: one line per question, in question order, ``{"id", "question_id", "answer1_id", "answer2_id",
"category", "content", "tuple", "judge_request_sha256"}``: ``content`` is the judge's review and ``tuple`` the two
scores of its first line (``[score1, score2]``), or ``[-1, -1]`` when that line is not two numbers (logged, and
counted at the end). ``llava.eval.summarize_gpt_review`` averages them.

Each review line also records ``judge_request_sha256``, the SHA-256 of what was sent (judge model, temperature,
max tokens, messages). Resuming: a review already in ``--output`` (or in the progress log an interrupted run left
beside it) is kept when this run would send the judge the very same request (for a review line without the hash,
written by upstream's script: when its question_id, category and both answer_ids are this run's) and its scores
were parsed; every other question is sent to the judge. So after a failure, run the same command again (answering
again first is fine: a greedy re-run gives the same texts, and only new answer_ids).

Exit status: 0 all reviewed and parsed; 1 the judge failed (the reviews made so far are kept for the next run), or
some reviews could not be parsed (the output is written with ``[-1, -1]`` for them; rerunning asks again for those
only); 2 a user's mistake (no OPENAI_API_KEY, a missing file, a bad line, answers that do not match the questions).

Deliberate differences from upstream: answers are paired with questions by ``question_id`` (upstream pairs lines by
position), and every question must be answered exactly once in each file; the score line may also be separated by
several spaces or a comma and may follow blank lines (upstream gives ``[-1, -1]`` then); ``answer2_id`` falls back
to the question_id as ``answer1_id`` does; the judge model, retries and timeout are flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._answers import match_answers, read_answers
from ._io import read_json, read_jsonl_lines
from ._openai_judge import (
    TABLE_DIR,
    Judge,
    JudgeError,
    ProgressLog,
    UnparsableRepliesError,
    add_judge_args,
    listed,
    make_client,
    run_judged_cli,
    write_atomically,
)

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "judge_content", "main", "parse_score", "review_answers"]

DEFAULT_RULE_FILE = TABLE_DIR / "rule.json"
#: upstream's review settings
DEFAULT_JUDGE_MODEL = "gpt-4-0314"
DEFAULT_TEMPERATURE = 0.2
SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
#: the tuple upstream writes for a review whose first line is not two numbers
UNPARSED = [-1, -1]


# --- the judge's request and reply ----------------------------------------------------------------------------


def judge_content(context: str, question: str, answer1: str, answer2: str, role: str, prompt: str) -> str:
    """The user message the judge reads: context, question, both answers, then the rule's instructions.

    This layout is the benchmark's (it is what the published scores were judged from); keep it byte for byte.
    """
    sections = [
        f"[Context]\n{context}",
        f"[Question]\n{question}",
        f"[{role} 1]\n{answer1}",
        f"[End of {role} 1]",
        f"[{role} 2]\n{answer2}",
        f"[End of {role} 2]",
        f"[System]\n{prompt}",
    ]
    return "\n\n".join(sections) + "\n\n"


def parse_score(review: str) -> list[float] | None:
    """The two scores on the first non-blank line of a review (``"8 9"``, ``"8, 9"``, ``"8.5  7"``), else None."""
    lines = review.strip().split("\n")
    fields = lines[0].replace(",", " ").split()
    if len(fields) != 2:
        return None
    try:
        scores = [float(x) for x in fields]
    except ValueError:
        return None
    return scores if all(math.isfinite(s) for s in scores) else None


# --- inputs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One question to review, with everything the judge is sent and the review line's fixed fields."""

    fields: dict[str, Any]  # id, question_id, answer1_id, answer2_id, category
    content: str


def _check_id(qid: Any, where: str) -> None:
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise ValueError(f"{where}: question_id {qid!r} is {type(qid).__name__}, expected an integer or a string")


def _text_field(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise ValueError(f"{where}: no {key!r} field")
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: {key!r} is {type(row[key]).__name__}, expected a string")
    return row[key]


def load_rules(path) -> dict[str, dict[str, str]]:
    rules = read_json(path, "rule file")
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: expected a JSON object of rules, got {type(rules).__name__}")
    for name, rule in rules.items():
        if not isinstance(rule, dict) or not all(isinstance(rule.get(k), str) for k in ("role", "prompt")):
            raise ValueError(f"{path}: rule {name!r} needs string fields 'role' and 'prompt'")
    return rules


def load_questions(path) -> list[tuple[str, dict]]:
    """``(where, question)`` per line; every field checked, ids unique."""
    questions, seen = [], {}
    for lineno, row in read_jsonl_lines(path, "question file"):
        where = f"{path}:{lineno}"
        if "question_id" not in row:
            raise ValueError(f"{where}: no 'question_id' field")
        qid = row["question_id"]
        _check_id(qid, where)
        for key in ("image", "text", "category"):
            _text_field(row, key, f"{where}: question_id {qid!r}")
        if qid in seen:
            raise ValueError(f"{where}: question_id {qid!r} repeats line {seen[qid]}")
        seen[qid] = lineno
        questions.append((where, row))
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def load_contexts(path) -> dict[str, str]:
    """image -> the caption text the judge reads (a list of sentences joined with newlines)."""
    contexts = {}
    for lineno, row in read_jsonl_lines(path, "context file"):
        where = f"{path}:{lineno}"
        image = _text_field(row, "image", where)
        caption = row.get("caption")
        if isinstance(caption, list) and all(isinstance(c, str) for c in caption):
            caption = "\n".join(caption)
        elif not isinstance(caption, str):
            raise ValueError(f"{where}: image {image!r}: 'caption' must be a string or a list of strings")
        contexts[image] = caption
    return contexts


def load_answers(path, questions: list[tuple[str, dict]], question_file) -> dict[Any, dict]:
    """question_id -> answer row, after checking that each question is answered exactly once (and nothing else)
    and that each answer has a ``text`` (``_answers.read_answers`` / ``match_answers``)."""
    expected = [q["question_id"] for _, q in questions]
    lines = {q["question_id"]: int(where.rsplit(":", 1)[1]) for where, q in questions}
    answers = read_answers(path, what="answers file", fields=("text",))
    matched = match_answers(answers, expected, path, question_file, lines)
    return {qid: answer.row for qid, answer in matched.items()}


def build_items(args) -> list[Item]:
    """Check every input, then the review request and fixed fields of each question, in question order."""
    if len(args.answer_list) != 2:
        raise ValueError(f"--answer-list takes two answer files (reference, then model), got {len(args.answer_list)}")
    questions = load_questions(args.question)
    contexts = load_contexts(args.context)
    rules = load_rules(args.rule)
    answers1 = load_answers(args.answer_list[0], questions, args.question)
    answers2 = load_answers(args.answer_list[1], questions, args.question)
    items = []
    for idx, (where, q) in enumerate(questions):
        qid = q["question_id"]
        category = "llava_bench_" + q["category"]
        if category not in rules:
            known = sorted(k for k in rules if k.startswith("llava_bench_")) or sorted(rules)
            raise ValueError(f"{where}: question_id {qid!r}: category {q['category']!r} has no rule {category!r} in "
                             f"{args.rule} (it has {', '.join(known)})")
        if q["image"] not in contexts:
            raise ValueError(f"{where}: question_id {qid!r}: image {q['image']!r} has no line in {args.context}")
        a1, a2 = answers1[qid], answers2[qid]
        rule = rules[category]
        fields = {"id": idx + 1, "question_id": qid, "answer1_id": a1.get("answer_id", qid),
                  "answer2_id": a2.get("answer_id", qid), "category": category}
        content = judge_content(contexts[q["image"]], q["text"], a1["text"], a2["text"], rule["role"], rule["prompt"])
        items.append(Item(fields, content))
    return items


def previous_reviews(output, log: ProgressLog) -> dict[Any, dict]:
    """question_id -> review from an earlier run: the output file, then the progress log (newer, wins)."""
    rows = []
    try:
        rows = [row for _, row in read_jsonl_lines(output, "review file")]
    except FileNotFoundError:
        pass
    rows += log.read()
    return {row["question_id"]: row for row in rows if "question_id" in row}


def request_hash(body: dict) -> str:
    """SHA-256 of a chat-completions request body (key order does not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _reusable(previous: dict | None, fields: dict, sha: str) -> bool:
    """Whether an earlier review answers this very request (or, without a recorded hash, these very answers)."""
    if previous is None or not isinstance(previous.get("content"), str):
        return False
    scores = previous.get("tuple")
    if not (isinstance(scores, list) and len(scores) == 2 and scores != UNPARSED):
        return False
    if "judge_request_sha256" in previous:
        return previous["judge_request_sha256"] == sha
    return all(previous.get(k) == fields[k] for k in ("question_id", "answer1_id", "answer2_id", "category"))


# --- the run --------------------------------------------------------------------------------------------------


def review_answers(args) -> list[dict]:
    """Review every question of ``args.question`` into ``args.output``; returns the review lines."""
    items = build_items(args)
    log = ProgressLog(args.output)
    previous = previous_reviews(args.output, log)
    judge = None
    reviews, unparsed, reused = [], [], 0
    try:
        for n, item in enumerate(items, start=1):
            qid = item.fields["question_id"]
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": item.content}]
            sha = request_hash({"model": args.judge_model, "messages": messages, "temperature": args.temperature,
                                "max_tokens": args.max_tokens})
            old = previous.get(qid)
            if _reusable(old, item.fields, sha):
                reviews.append({**item.fields, "content": old["content"], "tuple": old["tuple"],
                                "judge_request_sha256": old.get("judge_request_sha256", sha)})
                reused += 1
                continue
            if judge is None:  # only now: a run with nothing left to ask needs no key
                judge = Judge(args.judge_model, make_client(args.max_retries, args.timeout))
            reply = judge.complete(messages, temperature=args.temperature, max_tokens=args.max_tokens)
            scores = parse_score(reply.content)
            if scores is None:
                first = reply.content.strip().split("\n")[0][:80]
                logger.warning("question_id %r: the review's first line is not two scores (%r): tuple [-1, -1]",
                               qid, first)
                unparsed.append(qid)
                scores = list(UNPARSED)
            review = {**item.fields, "content": reply.content, "tuple": scores, "judge_request_sha256": sha}
            log.append(review)
            reviews.append(review)
            logger.info("[%d/%d] question_id %r (%s): %s", n, len(items), qid, item.fields["category"], scores)
    except JudgeError as err:
        kept = len(reviews) - reused
        raise JudgeError(f"{err} (question_id {item.fields['question_id']!r}); {kept} new review(s) are kept in "
                         f"{log.path}: run the same command again to go on") from None
    finally:
        log.close()
    write_atomically(args.output, "".join(_json_line(r) for r in reviews))
    log.remove()
    logger.info("wrote %d reviews to %s (%d asked now, %d kept from an earlier run)", len(reviews), args.output,
                len(reviews) - reused, reused)
    if unparsed:
        raise UnparsableRepliesError(
            f"{len(unparsed)} of {len(reviews)} review(s) in {args.output} do not start with two scores "
            f"(question_id {listed(unparsed)}): their tuple is [-1, -1]; run the same command again to ask for "
            "those reviews again")
    return reviews


def _json_line(row: dict) -> str:
    return json.dumps(row) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="LLaVA-Bench: a GPT judge reviews two answer files.")
    parser.add_argument("-q", "--question", required=True, help="questions JSONL")
    parser.add_argument("-c", "--context", required=True, help="context JSONL (image captions)")
    parser.add_argument("-a", "--answer-list", nargs="+", default=[], help="two answers JSONL: reference, model")
    parser.add_argument("-r", "--rule", default=str(DEFAULT_RULE_FILE), help="judge prompts per category")
    parser.add_argument("-o", "--output", required=True, help="reviews JSONL")
    parser.add_argument("--max-tokens", type=int, default=1024, help="maximum number of tokens produced in the output")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    add_judge_args(parser, judge_model=DEFAULT_JUDGE_MODEL)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_judged_cli(review_answers, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
