"""Small process-level helpers with upstream LLaVA's names, minus upstream's global side effects.

* :func:`build_logger` configures only the logger it names (upstream also redirected ``sys.stdout``/``sys.stderr``
  and attached its file handler to every logger in the process; this one does neither).
* :func:`disable_torch_init` no longer monkeypatches ``torch.nn.Linear``/``LayerNorm`` for the whole process; it
  returns a context manager that skips weight initialisation only inside its ``with`` block.
* :func:`pretty_print_semaphore` formats a worker's semaphore for status logs.
* :func:`violates_moderation` asks the OpenAI moderation endpoint whether a text is flagged. It makes a network call
  only when ``OPENAI_API_KEY`` is set (to ``$OPENAI_BASE_URL/moderations``, default ``https://api.openai.com/v1``);
  without a key, and on any network, HTTP or response-format error, it logs and returns False, as upstream did.
* ``server_error_msg`` and ``moderation_msg`` are upstream's user-facing messages, word for word.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import sys
import threading
from contextlib import AbstractContextManager
from typing import Any

from llava import constants

__all__ = ["build_logger", "disable_torch_init", "moderation_msg", "pretty_print_semaphore", "server_error_msg",
           "violates_moderation"]

server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."

_DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
_MODERATION_TIMEOUT_S = 5.0
_log = logging.getLogger(__name__)

_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
_MARK = "_llava_build_logger"  # attribute set on the handlers this module adds, so a second call replaces them


class _LazyDailyFileHandler(logging.handlers.TimedRotatingFileHandler):
    """Daily-rotating UTF-8 file handler that creates its folder and file only when the first record arrives."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename, when="D", utc=True, encoding="UTF-8", delay=True)

    def _open(self):  # noqa: ANN202 - signature fixed by logging.FileHandler
        os.makedirs(os.path.dirname(self.baseFilename) or ".", exist_ok=True)
        return super()._open()


def build_logger(logger_name: str, logger_filename: str | None) -> logging.Logger:
    """Configure and return ``logging.getLogger(logger_name)``.

    The logger gets level INFO, a stream handler on stderr and, when ``logger_filename`` is given, a daily-rotating
    file handler writing ``<llava.constants.LOGDIR>/<logger_filename>`` (LOGDIR read at call time; folder and file
    are created on the first record, never at import). It stops propagating to the root logger so lines are not
    printed twice. Calling it again for the same name replaces the handlers it added before. Nothing else in the
    process is touched (``sys.stdout``/``sys.stderr`` and other loggers stay as they are).
    """
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logger_filename:
        handlers.append(_LazyDailyFileHandler(os.path.join(constants.LOGDIR, logger_filename)))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def disable_torch_init() -> AbstractContextManager[None]:
    """Skip random weight initialisation while building a model, inside a ``with`` block only.

    ``with disable_torch_init(): model = Model(config)`` uses ``transformers.initialization.no_init_weights``: the
    ``torch.nn.init`` functions and ``PreTrainedModel.init_weights`` do nothing inside the block (parameters keep
    whatever memory they got) and are restored on exit, so the speed-up never leaks into other code.

    The upstream statement form ``disable_torch_init()`` (no ``with``) is accepted and changes nothing: in
    transformers 5, ``from_pretrained`` already skips initialising the weights it loads, which is what upstream's
    global patch of ``Linear``/``LayerNorm.reset_parameters`` was for.

    Returns:
        A context manager; it has no effect unless entered.
    """
    from transformers.initialization import no_init_weights

    return no_init_weights()


def pretty_print_semaphore(semaphore: asyncio.Semaphore | threading.Semaphore | Any | None) -> str:
    """``"Semaphore(value=N, locked=B)"`` for status logs, ``"None"`` when there is none."""
    if semaphore is None:
        return "None"
    value = getattr(semaphore, "_value", None)
    locked = semaphore.locked() if hasattr(semaphore, "locked") else value == 0
    return f"Semaphore(value={value}, locked={locked})"


def violates_moderation(text: str, timeout: float = _MODERATION_TIMEOUT_S) -> bool:
    """Whether the OpenAI moderation API flags ``text``.

    With ``OPENAI_API_KEY`` set, POSTs ``{"input": text}`` (newlines removed, as upstream) to
    ``<OPENAI_BASE_URL or https://api.openai.com/v1>/moderations`` with bearer auth and returns
    ``results[0].flagged``. Without a key it logs one INFO line and returns False. A connection failure, timeout,
    HTTP error status or unexpected response body is logged (WARNING) and gives False, like upstream.
    """
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        _log.info("OPENAI_API_KEY is not set; skipping the moderation check")
        return False
    import httpx

    base = (os.environ.get("OPENAI_BASE_URL") or _DEFAULT_OPENAI_BASE_URL).rstrip("/")
    url = f"{base}/moderations"
    try:
        response = httpx.post(url, json={"input": text.replace("\n", "")},
                              headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        response.raise_for_status()
        flagged = response.json()["results"][0]["flagged"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        _log.warning("moderation check against %s failed (%s: %s); treating the text as not flagged",
                     url, type(err).__name__, err)
        return False
    return bool(flagged)
