"""Read a model's answers file for scoring, and match its answers to the benchmark's questions by id.

Every scorer goes through here, so that an answer is paired with its label by ``question_id`` (never by its place in
the file) and a file that cannot be scored as it stands is refused with a message naming the file, the line and the
id, instead of a traceback or a wrong number:

* :func:`read_answers` checks each line: a JSON object with a ``question_id`` (a string or an integer), ``text`` and
  ``prompt`` strings (upstream's answer files always carry the prompt); a file with no answers is refused too.
* :func:`match_answers` checks the answers' ids against the ids the benchmark expects: a repeated id, an id the
  benchmark does not have (extra) and an id with no answer (missing) are each named.
* :func:`load_answers` does both and returns the answers keyed by ``question_id``.

No torch: the scorers run without the model stack.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llava.eval._io import listed, read_jsonl_lines

class AnswersError(ValueError):
    """An answers file that cannot be scored; the message names the file, the line and the id."""


@dataclass(frozen=True)
class Answer:
    """One checked line of an answers file."""

    line: int
    question_id: Any
    text: str
    prompt: str
    row: dict
    key: Hashable = None  # what the answer is matched by (``question_id`` unless the scorer says otherwise)


def describe_question_id(key: Any) -> str:
    return f"question_id {key!r}"


def read_answers(
    path: str | os.PathLike,
    key: Callable[[Answer], Hashable] | None = None,
    what: str = "result file",
    fields: tuple[str, ...] = ("text", "prompt"),
) -> list[Answer]:
    """The answers of a JSONL answers file, in file order, each line checked.

    Args:
        key: what an answer is matched by, computed from the checked answer (default: its ``question_id``); a
            ``ValueError`` it raises is reported with the file, line and id.
        fields: the string fields every line must have (a reference answers file, e.g. LLaVA-Bench's GPT-4
            answers, has no ``prompt``: its Answer gets ``""``).
    Raises:
        FileNotFoundError: no such file.
        AnswersError: a line that is not a JSON object, has no ``question_id`` (or one that is not a string or an
            integer), has ``text`` or ``prompt`` missing or not a string (``null`` included); a file with no answers.
    """
    path = os.path.expanduser(os.fspath(path))
    try:
        rows = read_jsonl_lines(path, what)
    except ValueError as err:
        raise AnswersError(str(err)) from None
    if not rows:
        raise AnswersError(f"{path}: no answers (the {what} is empty)")
    answers = []
    for line, row in rows:
        where = f"{path}:{line}"
        if "question_id" not in row:
            raise AnswersError(f"{where}: no 'question_id' field")
        qid = row["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise AnswersError(f"{where}: question_id {qid!r} is {type(qid).__name__}, expected a string or an integer")
        for field in fields:
            if field not in row:
                raise AnswersError(f"{where}: question_id {qid!r}: no {field!r} field")
            if not isinstance(row[field], str):
                got = "null" if row[field] is None else f"{type(row[field]).__name__} {row[field]!r}"
                raise AnswersError(f"{where}: question_id {qid!r}: {field!r} is {got}, expected a string")
        answer = Answer(line=line, question_id=qid, text=row.get("text", ""), prompt=row.get("prompt", ""), row=row,
                        key=qid)
        if key is not None:
            try:
                answer = Answer(line, qid, answer.text, answer.prompt, row, key(answer))
            except ValueError as err:
                raise AnswersError(f"{where}: question_id {qid!r}: {err}") from None
        answers.append(answer)
    return answers


def match_answers(
    answers: list[Answer],
    expected: Iterable[Hashable],
    path: str | os.PathLike,
    expected_file: str | os.PathLike,
    expected_lines: Mapping[Hashable, int] | None = None,
    describe: Callable[[Hashable], str] = describe_question_id,
) -> dict[Hashable, Answer]:
    """Check that ``answers`` (of ``path``) answer each of ``expected`` (the ids of ``expected_file``) once.

    An id listed n times in ``expected`` takes n answers (a mapping gives its keys, once each). ``expected_lines``
    gives an id's line in ``expected_file`` for the "missing" message.

    Returns:
        the answers keyed by :attr:`Answer.key` (for a key expected more than once, the last of its answers).
    Raises:
        AnswersError: naming each repeated id (both lines), each extra id (its line) and each missing id (its
            line in ``expected_file`` when known).
    """
    path = os.path.expanduser(os.fspath(path))
    want = Counter(list(expected))  # a mapping counts as its keys, once each
    seen: dict[Hashable, list[int]] = {}
    for answer in answers:
        seen.setdefault(answer.key, []).append(answer.line)
    repeated = [f"line {lines[want[k] or 1]} repeats {describe(k)} of line {lines[0]}"
                for k, lines in seen.items() if k in want and len(lines) > want[k]]
    if repeated:
        raise AnswersError(f"{path}: {len(repeated)} repeated id(s): {listed(repeated, sep='; ')}")
    extra = [f"line {lines[0]}: {describe(k)}" for k, lines in seen.items() if k not in want]
    missing = []
    for k, n in want.items():
        if len(seen.get(k, ())) < n:
            at = f" (line {expected_lines[k]})" if expected_lines and k in expected_lines else ""
            missing.append(f"{describe(k)}{at}")
    problems = []
    if extra:
        problems.append(f"{len(extra)} answer(s) for ids that are not in {expected_file}: {listed(extra, sep='; ')}")
    if missing:
        problems.append(f"no answer for {len(missing)} id(s) of {expected_file}: {listed(missing, sep='; ')}")
    if problems:
        hint = " (is it the answers file of a complete run on these questions?)"
        if extra and missing and {str(k) for k in seen if k not in want} & {str(k) for k in want if k not in seen}:
            hint = ' (ids are compared with their JSON type: 1 and "1" differ)'
        raise AnswersError(f"{path}: " + "; and ".join(problems) + hint)
    return {answer.key: answer for answer in answers}


def load_answers(
    path: str | os.PathLike,
    expected: Iterable[Hashable],
    expected_file: str | os.PathLike,
    expected_lines: Mapping[Hashable, int] | None = None,
    what: str = "result file",
) -> dict[Hashable, Answer]:
    """:func:`read_answers` then :func:`match_answers` on ``question_id``: the answers keyed by ``question_id``."""
    answers = read_answers(path, what=what)
    return match_answers(answers, expected, path, expected_file, expected_lines)
