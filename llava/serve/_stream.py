"""The wire format of generation streams: JSON objects, each followed by one NUL byte (upstream LLaVA's format).

Only the standard library is used, so clients can import this without the server dependencies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

NUL = b"\0"

#: error codes carried in stream objects (upstream's values)
ERROR_NONE = 0
ERROR_GENERATION = 1  # the worker could not generate: bad request, bad image, out of memory, ...
ERROR_NO_WORKER = 2  # the controller knows no worker for the model
ERROR_WORKER_UNREACHABLE = 3  # the controller could not reach the worker, or it broke off


def encode_stream_object(obj: dict[str, Any]) -> bytes:
    """One stream object: its JSON, then NUL."""
    return json.dumps(obj).encode("utf-8") + NUL


def error_object(text: str, error_code: int) -> dict[str, Any]:
    return {"text": text, "error_code": error_code}


class NulSplitter:
    """Cut a byte stream into NUL-terminated records, whatever the chunk boundaries are."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete records (without their NUL) that ``chunk`` finishes; empty records are dropped."""
        *records, self._pending = (self._pending + chunk).split(NUL)
        return [r for r in records if r]

    @property
    def pending(self) -> bytes:
        """Bytes received after the last NUL (an unfinished record)."""
        return self._pending


def iter_stream_objects(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Decode a byte stream (e.g. ``response.iter_bytes()``) into its objects.

    Raises:
        ValueError: a record that is not a JSON object, or bytes left without a closing NUL.
    """
    splitter = NulSplitter()
    for chunk in chunks:
        for record in splitter.feed(chunk):
            yield _decode(record)
    if splitter.pending.strip():
        raise ValueError(f"stream ended inside an object: {splitter.pending[:80]!r}")


async def aiter_stream_records(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Complete records of an async byte stream, each with its NUL, for relaying unchanged.

    Raises:
        ValueError: bytes left without a closing NUL when the stream ends (the sender broke off).
    """
    splitter = NulSplitter()
    async for chunk in chunks:
        for record in splitter.feed(chunk):
            yield record + NUL
    if splitter.pending.strip():
        raise ValueError(f"stream ended inside an object: {splitter.pending[:80]!r}")


def _decode(record: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(record.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"stream record is not JSON: {record[:80]!r} ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"stream record is not a JSON object: {record[:80]!r}")
    return obj
