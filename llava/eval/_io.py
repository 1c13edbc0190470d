"""Files in and out for the benchmark scripts: question files, sharding, image paths, atomic and resumable
answer files.

No torch, no model: everything here can be used (and tested) without loading a checkpoint.

Errors are raised at this edge with the file, line and question_id in the message (DESIGN.md: "a user's mistake is
caught at the edge"); nothing is skipped silently.

Answers files. A run writes its answers, one flushed line at a time, to ``.{name}.partial`` beside the answers
file and renames it to the answers file after the last one (:class:`AtomicJsonlWriter`). A run that fails or is
killed keeps that one partial file; the same command with ``--resume`` (:func:`start_answers`) keeps its complete
lines, drops an incomplete last line (with a warning), answers only the questions after them and renames as usual.
The partial lines must be the first answers of this run in question order (same question file, same chunk): the
finished file then holds the answers in question order, line for line what an uninterrupted run writes (the
resumed lines keep their own ``answer_id``; with sampling, their text is the earlier run's).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: how many items (ids, files) an error message lists before it says "and N more"
MAX_LISTED = 3


def listed(items: Iterable[Any], *, sep: str = ", ", most: int = MAX_LISTED) -> str:
    """The first ``most`` items joined by ``sep``, then ``" and N more"``: ``"a, b, c and 2 more"``."""
    items = [str(x) for x in items]
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return sep.join(items[:most]) + more


# --- sharding -------------------------------------------------------------------------------------------------


def split_list(lst: Sequence[T], n: int) -> list[Sequence[T]]:
    """Split ``lst`` into consecutive chunks of ``ceil(len(lst) / n)`` items (upstream's rule).

    The last chunk may be shorter, and there may be fewer than ``n`` chunks (5 items in 4 chunks: 2, 2, 1).
    """
    if n < 1:
        raise ValueError(f"--num-chunks must be at least 1, got {n}")
    if len(lst) == 0:
        return []
    size = math.ceil(len(lst) / n)
    return [lst[i : i + size] for i in range(0, len(lst), size)]


def get_chunk(lst: Sequence[T], n: int, k: int) -> Sequence[T]:
    """Chunk ``k`` of ``split_list(lst, n)``; an empty slice when the ceil rule leaves chunk ``k`` empty.

    Upstream raises IndexError there; an empty chunk lets the parallel scripts merge all shards as usual.

    Raises:
        ValueError: ``k`` outside ``[0, n)``.
    """
    if not 0 <= k < n:
        raise ValueError(f"--chunk-idx must be in [0, {n}) for --num-chunks {n}, got {k}")
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else lst[0:0]


# --- question files -------------------------------------------------------------------------------------------


def read_jsonl_lines(path: str | os.PathLike, what: str = "file") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (numbers count from 1, blank lines too).

    Raises:
        FileNotFoundError: no such file (the message says which ``what`` it is).
        ValueError: a line that is not valid JSON or not an object; the message gives ``file:line``.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def _check_required(path: str, lineno: int, row: dict[str, Any], required: tuple[str, ...]) -> None:
    missing = [key for key in required if key not in row]
    if missing:
        raise ValueError(f"{path}:{lineno}: missing key {missing[0]!r} (each line needs {', '.join(required)})")


def read_jsonl(
    path: str | os.PathLike, required: Iterable[str] = (), what: str = "question file"
) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; blank lines are skipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not valid JSON, not an object, or lacks a ``required`` key; the message gives
            ``file:line``.
    """
    required = tuple(required)
    where = os.path.expanduser(os.fspath(path))
    rows = []
    for lineno, row in read_jsonl_lines(path, what):
        _check_required(where, lineno, row, required)
        rows.append(row)
    return rows


def check_unique_ids(ids: Iterable[tuple[str, Any]], name: str = "question_id") -> None:
    """Fail at the first id seen twice (answers are matched by id, so a repeated one cannot be scored or resumed).

    Args:
        ids: ``(where, id)`` pairs in file order; ``where`` locates the id, e.g. ``"q.jsonl:5"``.
        name: the id's field, for the message.
    Raises:
        ValueError: ``"q.jsonl:5: question_id 3 is repeated (first at q.jsonl:2)"``; also for an id that is not a
            string or a number.
    """
    first: dict[Any, str] = {}
    for where, value in ids:
        try:
            seen_at = first.get(value)
        except TypeError:  # a list or an object: not usable as an id
            raise ValueError(f"{where}: {name} {value!r} is a {type(value).__name__}, expected a string or a "
                             "number") from None
        if seen_at is not None:
            raise ValueError(f"{where}: {name} {value!r} is repeated (first at {seen_at})")
        first[value] = where


def read_questions(
    path: str | os.PathLike, required: Iterable[str], id_key: str = "question_id"
) -> list[dict[str, Any]]:
    """A JSONL question file: every line an object with the ``required`` keys, every ``id_key`` given once.

    Raises:
        FileNotFoundError: no such file.
        ValueError: as :func:`read_jsonl`, and a repeated id (``file:line`` of the repeat and of the first one).
    """
    required = tuple(required)
    where = os.path.expanduser(os.fspath(path))
    lines = read_jsonl_lines(path, "question file")
    for lineno, row in lines:
        _check_required(where, lineno, row, required)
    check_unique_ids(((f"{where}:{lineno}", row[id_key]) for lineno, row in lines), id_key)
    return [row for _, row in lines]


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file; a missing file names ``what`` it is, a syntax error names ``file:line:column``."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None


# --- images ---------------------------------------------------------------------------------------------------


def image_path(image_folder: str, image_file: str) -> str:
    """Where a question's image lies: ``image_folder/image_file`` (an absolute ``image_file`` wins, as upstream)."""
    return os.path.join(os.path.expanduser(image_folder or ""), image_file)


def check_images_exist(items: Sequence[tuple[Any, str]], question_file: str | os.PathLike) -> None:
    """Fail before any model is loaded when an image is missing.

    Args:
        items: ``(question_id, image path)`` pairs.
        question_file: named in the message.
    Raises:
        FileNotFoundError: naming the first missing image file and its question_id (and how many more are missing).
    """
    missing = [(qid, path) for qid, path in items if not os.path.isfile(path)]
    if not missing:
        return
    names = listed((f"{path} (question_id {qid!r})" for qid, path in missing), sep="; ")
    raise FileNotFoundError(
        f"{len(missing)} image file(s) of {os.fspath(question_file)} not found: {names}"
    )


# --- answers --------------------------------------------------------------------------------------------------


def partial_answers_path(answers_file: str | os.PathLike) -> Path:
    """Where a run keeps its answers until the last one is written: ``.{name}.partial`` beside the answers file.

    The name depends only on the answers file, so the next run with ``--resume`` finds it.
    """
    path = Path(os.path.expanduser(os.fspath(answers_file)))
    return path.with_name(f".{path.name}.partial")


def check_answers_path(answers_file: str | os.PathLike) -> Path:
    """Check (before any model is loaded) that the answers can be written to ``answers_file``; create its folder.

    Returns:
        The expanded path.
    Raises:
        ValueError: the path is a folder, or its folder cannot be created (a file stands in the way).
        PermissionError: the folder is not writable.
    """
    path = Path(os.path.expanduser(os.fspath(answers_file)))
    if path.is_dir():
        raise ValueError(f"--answers-file {path} is a folder: give the path of the .jsonl file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--answers-file {path}: {path.parent} is not a folder (a file is in the way)") from None
    except OSError as err:
        raise ValueError(f"--answers-file {path}: cannot create the folder {path.parent} ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--answers-file {path}: the folder {path.parent} is not writable")
    return path


def question_id_key(record: dict[str, Any]) -> Hashable:
    """What an answer of ``model_vqa``, ``model_vqa_loader`` and ``model_vqa_science`` is resumed by."""
    return record["question_id"]


@dataclass(frozen=True)
class PartialAnswers:
    """The complete lines of a partial answers file (what a stopped run finished), in file order.

    Attributes:
        path: the partial file.
        records: its answers, one per complete line.
        lines: the line number of each record.
        keys: each record's key (``question_id``; ``(question_id, round_id)`` for mmbench).
        size: bytes up to the end of the last complete line: where the next answer is appended.
    """

    path: Path
    records: tuple[dict[str, Any], ...] = ()
    lines: tuple[int, ...] = ()
    keys: tuple[Hashable, ...] = ()
    size: int = 0

    @functools.cached_property
    def done(self) -> frozenset:
        """The keys already answered."""
        return frozenset(self.keys)


def read_partial_answers(
    path: str | os.PathLike, key: Callable[[dict[str, Any]], Hashable] = question_id_key
) -> PartialAnswers:
    """Read a partial answers file (none there: nothing answered yet).

    A line is complete when it ends with a newline; a last line without one (the run was killed while writing it)
    is dropped with a warning and answered again.

    Raises:
        ValueError: a complete line that is not a JSON object or has no key, naming ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        return PartialAnswers(path)
    data = path.read_bytes()
    size = data.rfind(b"\n") + 1
    if size < len(data):
        logger.warning("%s:%d: dropped an incomplete last line (the run stopped while writing it)", path,
                       data.count(b"\n", 0, size) + 1)
    records, lines, keys = [], [], []
    for lineno, raw in enumerate(data[:size].splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            record_key = key(record)
        except (ValueError, KeyError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{where}: not an answer line ({err}): delete {path} or run without --resume") from None
        records.append(record)
        lines.append(lineno)
        keys.append(record_key)
    return PartialAnswers(path, tuple(records), tuple(lines), tuple(keys), size)


def check_partial_is_prefix(partial: PartialAnswers, expected: Sequence[Hashable], question_file: str) -> None:
    """The partial answers must be the first answers of this run, in order: what a stopped run of the same
    questions (same file, same chunk) leaves. Anything else would give an answers file an uninterrupted run
    never writes.

    Raises:
        ValueError: naming the partial file's line, the id there and the id the question file has in its place.
    """
    if len(partial.keys) > len(expected):
        where = f"{partial.path}:{partial.lines[len(expected)]}"
        raise ValueError(f"{where}: more answers than this chunk of {question_file} has questions "
                         f"({len(expected)}): delete {partial.path} or run without --resume")
    for line, got, want in zip(partial.lines, partial.keys, expected):
        if got != want:
            raise ValueError(
                f"{partial.path}:{line}: answer for {_describe_key(got)} where {question_file} has "
                f"{_describe_key(want)}: these partial answers are from other questions (or another chunk); "
                f"delete {partial.path} or run without --resume")


def check_partial_model(partial: PartialAnswers, model_id: str, token_reduction: str) -> None:
    """Resumed answers must come from the same model (``model_id``) and token reduction as the rest of the run.

    Raises:
        ValueError: naming the partial file's line and both values.
    """
    for line, record in zip(partial.lines, partial.records):
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        for field, got, want in (("model_id", record.get("model_id"), model_id),
                                 ("token_reduction", metadata.get("token_reduction"), token_reduction)):
            if got != want:
                raise ValueError(f"{partial.path}:{line}: {field} {got!r}, but this run has {want!r}: delete "
                                 f"{partial.path} or run without --resume")


def _describe_key(key: Hashable) -> str:
    if isinstance(key, tuple):  # mmbench: (question_id, round_id)
        return f"question_id {key[0]!r} round_id {key[1]!r}"
    return f"question_id {key!r}"


def start_answers(
    answers_file: str | os.PathLike,
    expected: Sequence[Hashable],
    question_file: str | os.PathLike,
    *,
    resume: bool,
    key: Callable[[dict[str, Any]], Hashable] = question_id_key,
) -> PartialAnswers:
    """Before the model loads: check the answers path and, with ``resume``, what its partial file holds.

    Args:
        expected: the keys of this run's questions, in question order.
        resume: continue the partial file (``--resume``); without it an existing one is replaced (with a warning).
    Returns:
        The answers to keep (none without ``resume``); give it to :class:`AtomicJsonlWriter`.
    Raises:
        ValueError / PermissionError: see :func:`check_answers_path`, :func:`read_partial_answers` and
            :func:`check_partial_is_prefix`.
    """
    path = check_answers_path(answers_file)
    partial_file = partial_answers_path(path)
    if not resume:
        if partial_file.exists():
            logger.warning("replacing the partial answers of an earlier run in %s (pass --resume to continue them)",
                           partial_file)
        return PartialAnswers(partial_file)
    partial = read_partial_answers(partial_file, key)
    check_partial_is_prefix(partial, expected, os.fspath(question_file))
    if not partial_file.exists():
        logger.info("--resume: no partial answers in %s; answering all %d questions", partial_file, len(expected))
    else:
        logger.info("--resume: %d of %d answers are in %s; answering the remaining %d", len(partial.keys),
                    len(expected), partial_file, len(expected) - len(partial.keys))
    return partial


class AtomicJsonlWriter:
    """Write JSON lines to ``.{name}.partial`` beside ``path``; rename it to ``path`` when the run succeeds.

    Each line is flushed as it is written, so a run that is killed or fails midway keeps what it finished in the
    partial file (and leaves a previous complete answers file untouched); a rerun with ``resume`` (see
    :func:`start_answers`) appends the rest after the kept lines. A failed run that wrote nothing leaves no file.

    Usage::

        with AtomicJsonlWriter(answers_file) as out:
            out.write({"question_id": 1, ...})
    """

    def __init__(self, path: str | os.PathLike, resume: PartialAnswers | None = None) -> None:
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.tmp_path = partial_answers_path(self.path)
        self._keep_bytes = resume.size if resume is not None else 0
        self.resumed = len(resume.records) if resume is not None else 0
        self._file = None
        self.count = 0

    def __enter__(self) -> AtomicJsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._keep_bytes and self.tmp_path.is_file():
            os.truncate(self.tmp_path, self._keep_bytes)  # drop an incomplete last line
            self._file = open(self.tmp_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        else:
            self._file = open(self.tmp_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1

    @property
    def total(self) -> int:
        """Answers in the file: the resumed ones and this run's."""
        return self.resumed + self.count

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self.tmp_path, self.path)
        elif self.total == 0:
            self.tmp_path.unlink(missing_ok=True)
        else:
            logger.warning("stopped after %d answers; they are kept in %s: rerun with --resume to answer the rest",
                           self.total, self.tmp_path)


def answer_record(question_id: Any, prompt: str, text: str, model_id: str, metadata: dict, **extra: Any) -> dict:
    """One answers-file line: upstream's fields (plus ``extra`` such as mmbench's ``round_id``) in upstream's order."""
    import shortuuid

    record = {"question_id": question_id, "prompt": prompt, "text": text}
    record.update(extra)
    record.update({"answer_id": shortuuid.uuid(), "model_id": model_id, "metadata": metadata})
    return record
