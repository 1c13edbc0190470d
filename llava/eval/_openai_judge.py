"""What the GPT-judged benchmarks share: the chat-completions judge, resumable output files, the CLI edge.

The judge goes through the ``openai`` client (``pip install "llava[eval]"``), which reads ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL`` from the environment, so any server that speaks the chat-completions protocol can judge
(``OPENAI_BASE_URL=http://127.0.0.1:8000/v1`` for a local vLLM or llama.cpp server). Transient failures
(connection errors, timeouts, 408/409/429/5xx) are retried by the client with exponential backoff (0.5 s doubling
up to 8 s, or the server's ``Retry-After``), ``--max-retries`` times.

Progress is kept in a hidden log beside the output (``.<output name>.progress.jsonl``), one fsync'ed line per
finished judgement; the output file itself appears (by rename) only when every item is judged, so a run that stops
leaves either no output or the previous complete one, and the next run with the same arguments picks up from the
log. No torch, no model.

Exit statuses of the judged CLIs: 0 done; 1 the judge failed (after its retries) or gave replies that could not be
parsed (the message says which and that rerunning retries them); 2 a user's mistake (no API key, a missing file, a
bad line), reported on one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _io

logger = logging.getLogger(__name__)

#: attempts after the first one for a transient failure (the ``openai`` client's ``max_retries``)
DEFAULT_MAX_RETRIES = 6
#: seconds one request may take before it counts as a (retried) timeout
DEFAULT_TIMEOUT = 120.0
#: how many ids a message lists before it says "and N more"
MAX_LISTED = 5

TABLE_DIR = Path(__file__).resolve().parent / "table"


class MissingApiKeyError(ValueError):
    """``OPENAI_API_KEY`` is not set (a user's mistake: exit status 2)."""


class JudgeError(RuntimeError):
    """The judge did not answer (after the client's retries), or answered with something that is not a reply."""


class UnparsableRepliesError(RuntimeError):
    """Some judge replies could not be parsed; the output was written, with the upstream marker for them."""


def listed(items: Sequence[Any]) -> str:
    """``"a, b, c, d, e and 2 more"``: ``_io.listed`` with this module's longer lists."""
    return _io.listed(items, most=MAX_LISTED)


# --- the judge ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeReply:
    content: str  # the first choice's message content ("" when the server sent none)
    model: str  # the model the server says answered


class Judge:
    """One chat-completions model behind an ``openai.OpenAI`` client.

    Args:
        model: the model name sent with each request (``--judge-model``).
        client: an ``openai.OpenAI`` (or anything with its ``chat.completions.create``); see :func:`make_client`.
    """

    def __init__(self, model: str, client: Any) -> None:
        self.model = model
        self.client = client

    def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int) -> JudgeReply:
        """Send one request; transient failures are retried by the client.

        Raises:
            JudgeError: the request failed for good (the message has the server's status and text, and the URL).
        """
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens
            )
        except openai.APIStatusError as err:
            raise JudgeError(f"the judge at {self.client.base_url} answered HTTP {err.status_code}: "
                             f"{_one_line(err.message)}") from None
        except openai.APIError as err:  # connection errors and timeouts, after the retries
            raise JudgeError(f"the judge at {self.client.base_url} could not be reached: {_one_line(str(err))}"
                             ) from None
        if not response.choices:
            raise JudgeError(f"the judge at {self.client.base_url} sent a reply without choices")
        content = response.choices[0].message.content
        return JudgeReply(content=content or "", model=response.model or self.model)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def make_client(max_retries: int = DEFAULT_MAX_RETRIES, timeout: float = DEFAULT_TIMEOUT):
    """An ``openai.OpenAI`` client for ``OPENAI_BASE_URL`` (default: OpenAI's API) with ``OPENAI_API_KEY``.

    Raises:
        MissingApiKeyError: ``OPENAI_API_KEY`` is unset or empty.
        ImportError: ``openai`` is not installed (with the pip hint).
    """
    if not os.environ.get("OPENAI_API_KEY"):
        raise MissingApiKeyError(
            "OPENAI_API_KEY is not set: the judge needs an API key for OpenAI, or for any chat-completions server "
            "named by OPENAI_BASE_URL (e.g. OPENAI_BASE_URL=http://127.0.0.1:8000/v1)")
    try:
        import openai
    except ImportError as err:
        raise ImportError('the GPT-judged benchmarks need the openai client: pip install "llava[eval]" '
                          "(or pip install openai)") from err
    return openai.OpenAI(max_retries=max_retries, timeout=timeout)


def add_judge_args(parser: argparse.ArgumentParser, *, judge_model: str, aliases: Sequence[str] = ()) -> None:
    """``--judge-model`` (also spelled as each of ``aliases``), ``--max-retries`` and ``--timeout``."""
    parser.add_argument("--judge-model", *aliases, dest="judge_model", type=str, default=judge_model,
                        help=f"the chat-completions model that judges (default: {judge_model}, as the benchmark)")
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                        help="retries of a request after a connection error, timeout, 408, 409, 429 or 5xx")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request")


# --- files ----------------------------------------------------------------------------------------------------


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ProgressLog:
    """An append-only JSONL log of finished judgements beside ``output`` (``.<name>.progress.jsonl``).

    Each :meth:`append` is flushed and fsync'ed, so a crash loses at most the line being written; :meth:`read`
    drops such a cut last line (with a warning). :meth:`remove` once the output file is complete.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        output = Path(os.path.expanduser(os.fspath(output)))
        self.path = output.with_name(f".{output.name}.progress.jsonl")
        self._file = None

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        records = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):  # the last line, without its newline: a write cut by a crash
                    logger.warning("%s:%d: dropping a line cut short by an interrupted run", self.path, lineno)
                    continue
                raise ValueError(f"{self.path}:{lineno}: not valid JSON (delete this progress file to start over)"
                                 ) from None
            records.append(record)
        return records

    def append(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


# --- command line ---------------------------------------------------------------------------------------------


def configure_logging() -> None:
    """Log this package at INFO on stderr; keep the HTTP clients quiet."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("llava").setLevel(logging.INFO)
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_judged_cli(job: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
                   argv: Iterable[str] | None) -> int:
    """Parse ``argv`` and run ``job``, mapping failures to one ``error: ...`` line on stderr and an exit status."""
    args = parser.parse_args(None if argv is None else list(argv))
    configure_logging()
    try:
        job(args)
    except (MissingApiKeyError, OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (JudgeError, UnparsableRepliesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
