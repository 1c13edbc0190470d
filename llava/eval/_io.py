"""Files in and out for the benchmark scripts: question files, sharding, image paths, atomic answer files.

No torch, no model: everything here can be used (and tested) without loading a checkpoint.

Errors are raised at this edge with the file, line and question_id in the message (DESIGN.md: "a user's mistake is
caught at the edge"); nothing is skipped silently.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: how many missing images an error message lists before it says "and N more"
_MAX_LISTED = 3


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
    rows = []
    for lineno, row in read_jsonl_lines(path, what):
        missing = [key for key in required if key not in row]
        if missing:
            path = os.path.expanduser(os.fspath(path))
            raise ValueError(f"{path}:{lineno}: missing key {missing[0]!r} (each line needs {', '.join(required)})")
        rows.append(row)
    return rows


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a syntax error names ``file:line:column``."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
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
    listed = "; ".join(f"{path} (question_id {qid!r})" for qid, path in missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise FileNotFoundError(
        f"{len(missing)} image file(s) of {os.fspath(question_file)} not found: {listed}{more}"
    )


# --- answers --------------------------------------------------------------------------------------------------


class AtomicJsonlWriter:
    """Write JSON lines to a hidden temporary file beside ``path``; rename it to ``path`` only on success.

    A run that fails midway leaves no answers file (or the previous complete one untouched) and removes its
    temporary file. Lines are flushed as they are written, so progress can be followed in the temporary file.

    Usage::

        with AtomicJsonlWriter(answers_file) as out:
            out.write({"question_id": 1, ...})
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = None
        self.count = 0

    def __enter__(self) -> AtomicJsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self.tmp_path, self.path)
        else:
            self.tmp_path.unlink(missing_ok=True)


def answer_record(question_id: Any, prompt: str, text: str, model_id: str, metadata: dict, **extra: Any) -> dict:
    """One answers-file line: upstream's fields (plus ``extra`` such as mmbench's ``round_id``) in upstream's order."""
    import shortuuid

    record = {"question_id": question_id, "prompt": prompt, "text": text}
    record.update(extra)
    record.update({"answer_id": shortuuid.uuid(), "model_id": model_id, "metadata": metadata})
    return record
