"""Command-line pieces shared by the benchmark scripts: list arguments, the device / dtype checks, the command
line to print beside the figures."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

import torch

__all__ = ["check_device", "command_line", "name_list", "positive_ints"]


def positive_ints(text: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``; an argparse ``type`` (raises ``ArgumentTypeError`` on anything but positive ints)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a comma-separated, non-empty subset of ``choices``."""
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values or any(v not in choices for v in values):
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}")
        return values
    return parse


def check_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn ``args.device`` into a ``torch.device`` and refuse what would give misleading figures: a device other
    than cpu / cuda, CUDA where torch sees none, float16 on a CPU (emulated there). Exits through
    ``parser.error`` (status 2) with the reason. Reads ``args.dtype`` (a name); sets ``args.dtype_t``."""
    try:
        args.device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine (no GPU or a CPU-only torch)")
    if args.device.type == "cpu" and args.dtype == "float16":
        parser.error("--dtype float16 on --device cpu is refused: CPU fp16 matmuls are emulated (many times slower "
                     "than fp32) and the figures would mislead; use --dtype float32 on CPU, or --device cuda "
                     "--dtype float16")
    args.dtype_t = getattr(torch, args.dtype)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run, as printed in the docs: ``python SCRIPT ARGS...``."""
    shown = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", script] + [shlex.quote(a) for a in shown])
