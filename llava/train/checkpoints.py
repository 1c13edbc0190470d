"""The ``checkpoint-N`` folders of a run: when one is complete, which one a run resumes from, how one is published.

A checkpoint is written under a temporary name, ``<output_dir>/tmp-checkpoint-N/checkpoint-N``, and renamed to
``<output_dir>/checkpoint-N`` only once everything is in it (the Trainer's files and LLaVA's extras), so a kill
during a save leaves a ``tmp-checkpoint-N`` folder, never a ``checkpoint-N`` that looks whole. transformers'
``get_last_checkpoint`` and checkpoint rotation only look at names ``checkpoint-N``: they never see the temporary
folders.

A folder is *complete* when it holds ``trainer_state.json`` (the Trainer writes it after the model, optimizer,
scheduler and RNG states) and the weights of its kind of run (``REQUIRED_FILES``): a LoRA run's adapter and
``non_lora_trainables.bin``, a projector run's ``mm_projector.bin``, a full run's model weights (or DeepSpeed's
engine checkpoint, when ZeRO-3 does not gather them).

``--resume_from_checkpoint``: unset resumes from the newest complete checkpoint when there is one (upstream's
behaviour); ``True`` requires one; ``False`` starts over; a path must be a complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

RunKind = Literal["lora", "projector", "full"]

CHECKPOINT_PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR
STAGING_PREFIX = "tmp-"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
_LEFTOVER_RE = re.compile(rf"^{STAGING_PREFIX}(old-)?{CHECKPOINT_PREFIX}-\d+$")

#: per kind of run, the files a complete checkpoint holds: each entry is a tuple of alternatives (any one will do)
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "lora": (("adapter_config.json",), ("adapter_model.safetensors", "adapter_model.bin"),
             ("non_lora_trainables.bin", "non_lora_trainables.safetensors"), ("config.json",)),
    "projector": (("mm_projector.bin", "mm_projector.safetensors"), ("config.json",)),
    "full": (("config.json",), ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                "pytorch_model.bin.index.json", "latest")),
}

#: values of --resume_from_checkpoint that mean "start over" / "the newest complete checkpoint, which must exist"
_START_OVER = frozenset({"false", "no", "0", "none"})
_NEWEST = frozenset({"true", "yes", "1"})


def run_kind(*, lora_enable: bool, tune_mm_mlp_adapter: bool) -> RunKind:
    """What the run's checkpoints hold: "lora" (adapter + non_lora_trainables), "projector" (mm_projector.bin;
    ``--tune_mm_mlp_adapter``) or "full" (the model weights)."""
    if lora_enable:
        return "lora"
    return "projector" if tune_mm_mlp_adapter else "full"


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """N of a folder named ``checkpoint-N``; None for any other name."""
    match = _CHECKPOINT_RE.match(Path(folder).name)
    return int(match.group(1)) if match else None


def staging_folder(final: str | os.PathLike) -> Path:
    """Where ``<run>/checkpoint-N`` is written before it is renamed: ``<run>/tmp-checkpoint-N/checkpoint-N``."""
    final = Path(final)
    return final.parent / f"{STAGING_PREFIX}{final.name}" / final.name


def missing_files(folder: str | os.PathLike, kind: RunKind) -> list[str]:
    """What ``folder`` lacks to be a complete checkpoint of a ``kind`` run (``[]``: complete). Alternatives are
    written ``a|b``."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["the folder itself"]
    needed = ((TRAINER_STATE,), *REQUIRED_FILES[kind])
    return ["|".join(names) for names in needed if not any((folder / name).exists() for name in names)]


@dataclass(frozen=True)
class RunCheckpoints:
    """The checkpoint folders of one output folder."""

    complete: list[tuple[int, Path]]  # (N, checkpoint-N), oldest first
    incomplete: list[tuple[Path, str]]  # (folder, why): checkpoint-N lacking files, tmp-* leftovers of a killed save


def scan_checkpoints(output_dir: str | os.PathLike, kind: RunKind) -> RunCheckpoints:
    """Sort the ``checkpoint-N`` and ``tmp-checkpoint-N`` folders of ``output_dir`` into complete and incomplete."""
    output_dir = Path(output_dir)
    complete, incomplete = [], []
    entries = sorted(output_dir.iterdir()) if output_dir.is_dir() else []
    for entry in entries:
        if not entry.is_dir():
            continue
        step = checkpoint_step(entry)
        if step is not None:
            lacking = missing_files(entry, kind)
            if lacking:
                incomplete.append((entry, f"no {', '.join(lacking)}"))
            else:
                complete.append((step, entry))
        elif _LEFTOVER_RE.match(entry.name):
            incomplete.append((entry, "a save that did not finish"))
    return RunCheckpoints(sorted(complete), incomplete)


def resolve_resume_checkpoint(output_dir: str | os.PathLike, requested: str | bool | None,
                              kind: RunKind) -> str | None:
    """The checkpoint a run resumes from (a path for ``Trainer.train(resume_from_checkpoint=...)``), or None.

    Args:
        output_dir: the run's ``--output_dir``.
        requested: ``--resume_from_checkpoint``: None (the newest complete checkpoint if any, else start over),
            "true" (the newest complete one, which must exist), "false" (start over) or a checkpoint folder.
        kind: what the run's checkpoints hold (``run_kind``).

    Incomplete folders are skipped with a warning naming them; the choice is logged.

    Raises:
        ValueError: a path that is not a complete checkpoint (naming it and what it lacks), or "true" without any
            complete checkpoint.
    """
    word = str(requested).strip().lower() if requested is not None else None
    if word in _START_OVER:
        logger.info("--resume_from_checkpoint %s: starting over, without looking for checkpoints in %s",
                    requested, output_dir)
        return None
    if word is not None and word not in _NEWEST:
        folder = Path(str(requested))
        lacking = missing_files(folder, kind)
        if lacking:
            raise ValueError(f"--resume_from_checkpoint {folder} is not a complete {kind} checkpoint: it has "
                             f"{'no ' + ', '.join(lacking)}")
        logger.info("resuming from %s (--resume_from_checkpoint)", folder)
        return str(folder)

    found = scan_checkpoints(output_dir, kind)
    if found.incomplete:
        logger.warning("ignoring %d incomplete checkpoint folder(s) in %s: %s", len(found.incomplete), output_dir,
                       "; ".join(f"{path.name} ({why})" for path, why in found.incomplete))
    if not found.complete:
        if word in _NEWEST:
            raise ValueError(f"--resume_from_checkpoint {requested}: {output_dir} has no complete checkpoint-N folder")
        return None
    step, newest = found.complete[-1]
    logger.info("resuming from %s, the newest complete checkpoint in %s (step %d)", newest, output_dir, step)
    return str(newest)


def publish_checkpoint(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the finished ``staging`` folder (``staging_folder(final)``) to ``final`` and remove its temporary
    parent. A ``final`` already there (a step saved again after resuming from an older checkpoint) is moved aside
    first and deleted after, so there is always one whole folder under either name."""
    staging, final = Path(staging), Path(final)
    replaced = None
    if final.exists():
        replaced = final.with_name(f"{STAGING_PREFIX}old-{final.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(staging, final)
    staging.parent.rmdir()
    if replaced is not None:
        shutil.rmtree(replaced)


def clear_staging(final: str | os.PathLike) -> None:
    """Remove what a killed earlier save of the same step left under the temporary name (before writing anew)."""
    parent = staging_folder(final).parent
    if parent.exists():
        logger.warning("removing %s, left by a save that did not finish", parent)
        shutil.rmtree(parent)

