"""The web demo's conversation log, in upstream LLaVA's format: one JSON record per line, one file per day.

Files, under the log folder (``$LLAVA_LOGDIR``, else :data:`llava.constants.LOGDIR`, i.e. the working directory)::

    <LOGDIR>/2026-11-03-conv.json                          # local date of the record
    <LOGDIR>/serve_images/2026-11-03/<md5 of pixels>.jpg   # each image a chat record names, saved once

Records (``tstamp``/``start``/``finish`` are Unix seconds rounded to 4 places; ``state`` is
:meth:`llava.conversation.Conversation.dict`, so image turns appear as their text; ``ip`` is the browser's address):

* after an answer: ``{"tstamp", "type": "chat", "model", "start", "finish", "state", "images": [md5, ...], "ip"}``
* a vote: ``{"tstamp", "type": "upvote" | "downvote" | "flag", "model", "state", "ip"}``

Concurrent users (threads of one server, or several servers sharing the folder) never interleave or cut records:
each line is one ``write`` on a file opened with ``O_APPEND``, under a lock within the process. Images are written
to a temporary name and renamed, and an image already there is not written again. Logging never breaks a chat:
:meth:`ConversationLog.log_chat` and :meth:`ConversationLog.log_vote` log a failure (full disk, no permission) and
return False. A :class:`ConversationLog` built with ``logdir=None`` writes nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .. import constants

logger = logging.getLogger("llava.serve.gradio_web_server")

#: environment variable naming the log folder (overrides llava.constants.LOGDIR)
LOGDIR_ENV = "LLAVA_LOGDIR"
#: the record types a vote button writes
VOTE_TYPES = ("upvote", "downvote", "flag")
#: images with more pixels than this are not saved (their hash is still recorded). The demo's images are already
#: shrunk for display (long side at most 1344 px), so only a caller passing raw images can reach it.
MAX_SAVED_IMAGE_PIXELS = 64_000_000


def default_logdir() -> str:
    """The log folder: ``$LLAVA_LOGDIR`` when set and not empty, else ``llava.constants.LOGDIR`` (read at call time)."""
    return os.environ.get(LOGDIR_ENV) or constants.LOGDIR


def _day(when: datetime.datetime) -> str:
    return f"{when.year}-{when.month:02d}-{when.day:02d}"


def conv_log_filename(logdir: str | os.PathLike, when: datetime.datetime) -> str:
    """``<logdir>/<YYYY-MM-DD>-conv.json`` for the day of ``when`` (upstream's name)."""
    return os.path.join(logdir, f"{_day(when)}-conv.json")


def image_filename(logdir: str | os.PathLike, digest: str, when: datetime.datetime) -> str:
    """``<logdir>/serve_images/<YYYY-MM-DD>/<digest>.jpg`` (upstream's layout)."""
    return os.path.join(logdir, "serve_images", _day(when), f"{digest}.jpg")


def image_digest(image: Image.Image) -> str:
    """The md5 of the image's pixel bytes (upstream's image name: equal pixels, equal name)."""
    return hashlib.md5(image.tobytes(), usedforsecurity=False).hexdigest()


def vote_record(vote_type: str, model: str | None, state: dict[str, Any], ip: str | None,
                tstamp: float) -> dict[str, Any]:
    """One vote line. Raises ``ValueError`` for a ``vote_type`` not in :data:`VOTE_TYPES`."""
    if vote_type not in VOTE_TYPES:
        raise ValueError(f"vote type must be one of {VOTE_TYPES}, got {vote_type!r}")
    return {"tstamp": round(tstamp, 4), "type": vote_type, "model": model, "state": state, "ip": ip}


def chat_record(model: str | None, start: float, finish: float, state: dict[str, Any], images: Sequence[str],
                ip: str | None) -> dict[str, Any]:
    """One line written after an answer: when it started and finished, the conversation and its image hashes."""
    return {"tstamp": round(finish, 4), "type": "chat", "model": model, "start": round(start, 4),
            "finish": round(finish, 4), "state": state, "images": list(images), "ip": ip}


class ConversationLog:
    """Where the demo writes its chat and vote records and the images they mention.

    Args:
        logdir: the log folder (created on the first record), or None to write nothing at all.
        max_image_pixels: images larger than this are not saved.
    """

    def __init__(self, logdir: str | os.PathLike | None, *, max_image_pixels: int = MAX_SAVED_IMAGE_PIXELS) -> None:
        self.logdir = None if logdir is None else Path(logdir)
        self.max_image_pixels = max_image_pixels
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.logdir is not None

    def __repr__(self) -> str:
        return f"ConversationLog({str(self.logdir) if self.enabled else None!r})"

    # --- writing ------------------------------------------------------------------------------------------------

    def append(self, record: dict[str, Any], when: datetime.datetime) -> Path:
        """Append ``record`` as one JSON line to the day's file; returns the file. Raises OSError / TypeError."""
        assert self.logdir is not None, "append on a disabled ConversationLog"
        path = Path(conv_log_filename(self.logdir, when))
        data = (json.dumps(record) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:  # a regular file takes the whole line in one write; loop only for safety
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return path

    def save_images(self, images: Sequence[Image.Image], when: datetime.datetime) -> list[str]:
        """Save each image as ``serve_images/<day>/<md5>.jpg`` unless it is already there; returns the hashes."""
        assert self.logdir is not None, "save_images on a disabled ConversationLog"
        digests = []
        for image in images:
            digest = image_digest(image)
            digests.append(digest)
            path = Path(image_filename(self.logdir, digest, when))
            if path.is_file():
                continue
            if image.width * image.height > self.max_image_pixels:
                logger.warning("conversation log: image %s (%dx%d) is over %d pixels, not saved", digest,
                               image.width, image.height, self.max_image_pixels)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    image.convert("RGB").save(out, format="JPEG")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return digests

    # --- what the demo calls: never raises for I/O trouble ----------------------------------------------------

    def log_vote(self, vote_type: str, model: str | None, state: dict[str, Any], ip: str | None) -> bool:
        """Record a vote; False (and an error in the server log) when it could not be written or logging is off."""
        tstamp = time.time()
        record = vote_record(vote_type, model, state, ip, tstamp)
        if not self.enabled:
            return False
        try:
            self.append(record, datetime.datetime.fromtimestamp(tstamp))
        except (OSError, TypeError, ValueError) as err:
            logger.error("conversation log: cannot record the %s in %s: %s", vote_type, self.logdir, err)
            return False
        return True

    def log_chat(self, model: str | None, start: float, finish: float, state: dict[str, Any],
                 images: Sequence[Image.Image], ip: str | None) -> bool:
        """Save the conversation's images and record the answer; False (logged) on failure or when logging is off."""
        if not self.enabled:
            return False
        when = datetime.datetime.now()
        try:
            digests = self.save_images(images, when)
            self.append(chat_record(model, start, finish, state, digests, ip), when)
        except (OSError, TypeError, ValueError) as err:
            logger.error("conversation log: cannot record the answer in %s: %s", self.logdir, err)
            return False
        return True
