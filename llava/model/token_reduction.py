"""Which visual-token reduction a model runs: the one place that decides it.

Precedence (DESIGN.md): command-line flag > config key (``mm_token_reduction`` / ``mm_token_budget``) >
checkpoint-name rule ("prumerge-plus"/"prumerge_plus" in the name -> "prumerge+") > default "prumerge".
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: mode name -> (uses PruMerge merging, adds PruMerge+'s spatially uniform samples)
TOKEN_REDUCTION_MODES: dict[str, tuple[bool, bool]] = {
    "none": (False, False),
    "prumerge": (True, False),
    "prumerge+": (True, True),
}
DEFAULT_TOKEN_REDUCTION = "prumerge"


@dataclass(frozen=True)
class TokenReduction:
    """A resolved reduction setting.

    Attributes:
        mode: one of ``TOKEN_REDUCTION_MODES``.
        budget: fixed number of visual tokens per image, or None for PruMerge's adaptive count.
        source: where the mode came from ("flag", "config", "checkpoint name", "default").
    """

    mode: str
    budget: int | None = None
    source: str = "default"

    @property
    def enabled(self) -> bool:
        return TOKEN_REDUCTION_MODES[self.mode][0]

    @property
    def plus(self) -> bool:
        return TOKEN_REDUCTION_MODES[self.mode][1]

    def describe(self) -> str:
        budget = "adaptive" if self.budget is None else f"budget {self.budget}"
        if not self.enabled:
            return f"token reduction: none (all visual tokens, from {self.source})"
        return f"token reduction: {self.mode} ({budget}, from {self.source})"


def validate_mode(mode: str, where: str = "token reduction mode") -> str:
    """Return ``mode`` normalised (lower case, "prumerge_plus"/"prumerge-plus" -> "prumerge+").

    Raises:
        ValueError: naming ``where`` and listing the valid modes when ``mode`` is unknown.
    """
    normalised = str(mode).strip().lower().replace("prumerge_plus", "prumerge+").replace("prumerge-plus", "prumerge+")
    if normalised not in TOKEN_REDUCTION_MODES:
        valid = ", ".join(repr(m) for m in TOKEN_REDUCTION_MODES)
        raise ValueError(f"unknown {where} {mode!r}; valid modes are {valid}")
    return normalised


def validate_budget(budget: int | str | None, where: str = "token budget") -> int | None:
    """Return ``budget`` as a positive int or None; raise ValueError naming ``where`` otherwise."""
    if budget is None or (isinstance(budget, str) and budget.strip().lower() in ("", "none", "null")):
        return None
    try:
        value = int(budget)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a positive integer or null, got {budget!r}") from None
    if value < 1 or isinstance(budget, bool):
        raise ValueError(f"{where} must be a positive integer or null, got {budget!r}")
    return value


def mode_from_checkpoint_name(name: str | None) -> str | None:
    """The checkpoint-name rule: "prumerge+" for names with "prumerge-plus"/"prumerge_plus", else None."""
    lowered = (name or "").lower()
    if "prumerge-plus" in lowered or "prumerge_plus" in lowered:
        return "prumerge+"
    return None


def resolve_token_reduction(
    flag_mode: str | None = None,
    flag_budget: int | None = None,
    config_mode: str | None = None,
    config_budget: int | None = None,
    checkpoint_name: str | None = None,
) -> TokenReduction:
    """Decide the reduction mode and budget from every source, by precedence.

    Args:
        flag_mode / flag_budget: values given on a command line or by a caller (None: not given).
        config_mode / config_budget: ``mm_token_reduction`` / ``mm_token_budget`` from config.json.
        checkpoint_name: the model path or name, for the "prumerge-plus" name rule.
    """
    budget = validate_budget(flag_budget, "--token-budget")
    if budget is None:
        budget = validate_budget(config_budget, "config key mm_token_budget")
    if flag_mode is not None:
        return TokenReduction(validate_mode(flag_mode, "--token-reduction"), budget, "flag")
    if config_mode is not None:
        return TokenReduction(validate_mode(config_mode, "config key mm_token_reduction"), budget, "config")
    named = mode_from_checkpoint_name(checkpoint_name)
    if named is not None:
        return TokenReduction(named, budget, "checkpoint name")
    return TokenReduction(DEFAULT_TOKEN_REDUCTION, budget, "default")


def _arg_type(validate, flag: str):
    def parse(value: str):
        try:
            return validate(value, flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = flag
    return parse


def add_token_reduction_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--token-reduction`` and ``--token-budget`` to an entry point's parser (defaults: not given)."""
    parser.add_argument(
        "--token-reduction",
        type=_arg_type(validate_mode, "--token-reduction"),
        default=None,
        help="visual token reduction: none | prumerge | prumerge+ (default: the checkpoint's config, else its name)",
    )
    parser.add_argument(
        "--token-budget",
        type=_arg_type(validate_budget, "--token-budget"),
        default=None,
        help="fixed number of visual tokens per image instead of the adaptive count",
    )
    return parser


def split_budget(budget: int | None, num_tiles: int) -> list[int | None]:
    """Divide one image's ``--token-budget`` over its anyres tiles: the rule ``--token-budget`` follows on LLaVA-1.6.

    Every tile gets ``budget // num_tiles`` centres (at least 1) and the base (tile 0) also takes the remainder, so
    the centres add up to ``budget`` (when ``budget >= num_tiles``). Each tile adds its extra token on top, and the
    spatial layout its row newlines. ``None`` (adaptive) stays None for every tile.

    >>> split_budget(640, 5), split_budget(144, 1)
    ([128, 128, 128, 128, 128], [144])
    >>> split_budget(321, 5)
    [65, 64, 64, 64, 64]
    """
    if budget is None:
        return [None] * num_tiles
    share = max(1, budget // num_tiles)
    return [max(share, budget - share * (num_tiles - 1))] + [share] * (num_tiles - 1)
