"""Writing the benchmarks' outputs: ``docs/benchmarks.md`` sections and PNG plots, never half-written.

Every file goes to a temporary name in its folder first and is renamed over the target (``os.replace`` is atomic
on one filesystem), so a crash leaves the old file or the new one, never a mix. A benchmark owns the sections
between its own markers ``<!-- bench:NAME:begin -->`` ... ``<!-- bench:NAME:end -->``; ``replace_section`` swaps one
and keeps the rest of the file as it is.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

__all__ = ["file_mode", "find_section", "replace_section", "save_figure", "section_pattern", "write_text_atomic"]


def file_mode() -> int:
    """0o666 less the process umask: the mode an ordinary ``open(path, "w")`` would give (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    _atomic(path, write)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG to ``path`` through a temporary file and a rename."""
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def section_pattern(name: str) -> str:
    """Regex (use with ``re.S``) of section ``name`` from its begin marker to its end marker and one newline."""
    return rf"<!-- bench:{re.escape(name)}:begin -->\n.*?<!-- bench:{re.escape(name)}:end -->\n?"


def find_section(text: str, name: str) -> str | None:
    """Section ``name`` of ``text`` (markers included), or None."""
    found = re.search(section_pattern(name), text, flags=re.S)
    return found.group(0) if found else None


def replace_section(text: str, name: str, block: str) -> str:
    """``text`` with section ``name`` replaced by ``block`` in place, or ``block`` appended after a blank line when
    the section is not there yet (``block`` is the whole section, markers included)."""
    if find_section(text, name) is not None:
        return re.sub(section_pattern(name), lambda _: block, text, count=1, flags=re.S)
    return text.rstrip("\n") + "\n\n" + block if text.strip() else block
