"""Resuming a run: it ends where the uninterrupted run ends (LoRA, QLoRA, full finetuning, projector pretraining);
checkpoints become visible only when complete; ``--resume_from_checkpoint``; ``--seed``.

Every run is ``train()`` in this process on the tiny checkpoint: 4 steps of 2 samples (PruMerge at a budget of 16
tokens, to keep the steps short), a checkpoint every 2 steps. The finetuning data has 5 image samples of 8, so the
first two steps always train the projector: restoring it matters.
An interrupted run is stopped by a callback that raises right after ``checkpoint-2`` is saved: the run dies there,
as if killed, without its final save; the next run with the same command resumes from what is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from llava.train.checkpoints import missing_files, resolve_resume_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = REPO / "playground" / "data" / "train_tiny"
LORA = ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--version", "v1"]
#: per kind of run: its flags, its data, the checkpoint kind (llava.train.checkpoints) and the weight files to compare
KINDS = {
    "lora": (LORA, "llava_tiny_finetune.json", "lora", ("adapter_model.safetensors", "non_lora_trainables.bin")),
    "qlora": (["--bits", "4", *LORA], "llava_tiny_finetune.json", "lora",
              ("adapter_model.safetensors", "non_lora_trainables.bin")),
    "full": (["--version", "v1"], "llava_tiny_finetune.json", "full", ("model.safetensors",)),
    "projector": (["--tune_mm_mlp_adapter", "True", "--version", "plain"], "llava_tiny_pretrain.json", "projector",
                  ("mm_projector.bin",)),
}


class Interrupted(Exception):
    """Raised by InterruptAfterSave: the run stops dead where it was."""


class InterruptAfterSave(TrainerCallback):
    """Stop the run right after ``checkpoint-<step>`` is saved, as a kill would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"interrupted after the save of step {self.step}")


class StepLog(TrainerCallback):
    """The optimizer steps a run really takes (``global_step`` after each)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@contextlib.contextmanager
def checkpoint_log() -> Iterator[list[str]]:
    """Messages of ``llava.train.checkpoints`` (a handler of its own: ``train()`` resets the root logger)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("llava.train.checkpoints")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def run_argv(tiny_root: Path, kind: str, out: Path, *extra: str) -> list[str]:
    flags, data, _, _ = KINDS[kind]
    return ["--model_name_or_path", str(tiny_root / "llava-v1.5-tiny"),
            "--vision_tower", str(tiny_root / "clip-vit-tiny-patch14-336"), "--mm_projector_type", "mlp2x_gelu",
            "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad",
            "--data_path", str(TINY_DATA / data), "--image_folder", str(TINY_DATA), "--output_dir", str(out),
            "--max_steps", "4", "--per_device_train_batch_size", "2", "--token-budget", "16",
            "--learning_rate", "1e-3", "--lora_dropout", "0.1", "--model_max_length", "1024",
            "--save_strategy", "steps", "--save_steps", "2",
            "--logging_steps", "1", "--seed", "3", "--report_to", "none", "--use_cpu", "True", *flags, *extra]


def train_run(argv: list[str], *callbacks: TrainerCallback):
    from llava.train.train import train

    return train(argv=argv, callbacks=list(callbacks))


def interrupted_run(argv: list[str]) -> None:
    with pytest.raises(Interrupted):
        train_run(argv, InterruptAfterSave(2))


def weights(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        file = folder / name
        state = load_file(file) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)
        out.update({f"{name}:{k}": v.float() for k, v in state.items()})
    return out


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"largest difference {worst}"


def leave_leftovers(out: Path) -> tuple[Path, Path]:
    """What kills during saves leave: a ``checkpoint-3`` without trainer_state.json (an older version's half save)
    and a ``tmp-checkpoint-4`` (this version's temporary folder)."""
    half = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", half)
    (half / "trainer_state.json").unlink()
    staging = out / "tmp-checkpoint-4" / "checkpoint-4"
    shutil.copytree(out / "checkpoint-2", staging)
    (staging / "trainer_state.json").unlink()
    return half, staging.parent


@pytest.fixture(scope="module", params=list(KINDS))
def resumed(request, tiny_root, tmp_path_factory):
    """(kind, uninterrupted output, resumed output, steps the resumed run took, its checkpoint log)."""
    kind = request.param  # qlora needs bitsandbytes, a dependency of the train extra: no skip
    root = tmp_path_factory.mktemp(f"resume-{kind}")
    whole, stopped = root / "uninterrupted", root / "stopped"
    train_run(run_argv(tiny_root, kind, whole))
    interrupted_run(run_argv(tiny_root, kind, stopped))
    assert sorted(p.name for p in stopped.iterdir() if p.name != "mm_projector") == ["checkpoint-2"]  # no final save
    leave_leftovers(stopped)
    steps = StepLog()
    with checkpoint_log() as log:
        train_run(run_argv(tiny_root, kind, stopped), steps)
    return kind, whole, stopped, steps.steps, log


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(resumed, tiny_checkpoint):
    kind, whole, stopped, steps, log = resumed
    assert steps == [3, 4]  # it resumed after step 2: it did not start over
    files = KINDS[kind][3]
    start = {k: v.float() for k, v in load_file(tiny_checkpoint / "model.safetensors").items()}
    at_2 = weights(stopped / "checkpoint-2", files)
    projector = {k: v for k, v in at_2.items() if "mm_projector.0.weight" in k}
    assert len(projector) == 1 and all(not torch.equal(v, start["model.mm_projector.0.weight"])
                                       for v in projector.values())  # moved in steps 1-2: restoring it matters
    assert_same_weights(weights(whole, files), weights(stopped, files))  # the final save
    assert_same_weights(weights(whole / "checkpoint-4", files), weights(stopped / "checkpoint-4", files))
    assert missing_files(stopped / "checkpoint-4", KINDS[kind][2]) == []
    # the optimizer state came back too (Adam's moments after step 4 match)
    optimizer = [torch.load(run / "checkpoint-4" / "optimizer.pt", weights_only=True)["state"] for run in (whole,
                                                                                                          stopped)]
    assert optimizer[0].keys() == optimizer[1].keys()
    for key, state in optimizer[0].items():
        assert torch.allclose(state["exp_avg"], optimizer[1][key]["exp_avg"], atol=1e-7)


def test_resume_skips_incomplete_folders_and_says_what_it_used(resumed):
    kind, _, stopped, _, log = resumed
    text = "\n".join(log)
    assert f"resuming from {stopped / 'checkpoint-2'}" in text
    assert "ignoring 2 incomplete checkpoint folder(s)" in text
    assert "checkpoint-3 (no trainer_state.json)" in text and "tmp-checkpoint-4 (a save that did not finish)" in text
    assert not (stopped / "tmp-checkpoint-4").exists()  # cleared when step 4 was saved again
    if kind == "projector":
        assert (stopped / "mm_projector" / "checkpoint-4.bin").is_file()  # upstream's copy, outside the folder


# ---------------------------------------------------------------------------------------------- LoRA only
@pytest.fixture(scope="module")
def lora_runs(resumed):
    kind, whole, stopped, _, _ = resumed
    assert kind == "lora", "use with @pytest.mark.parametrize('resumed', ['lora'], indirect=True)"
    return whole, stopped


@pytest.mark.parametrize("resumed", ["lora"], indirect=True)
def test_choosing_the_checkpoint_to_resume_from(lora_runs, tmp_path):
    _, stopped = lora_runs  # checkpoint-2, checkpoint-3 (no trainer_state.json), checkpoint-4
    assert resolve_resume_checkpoint(stopped, None, "lora") == str(stopped / "checkpoint-4")
    assert resolve_resume_checkpoint(stopped, "true", "lora") == str(stopped / "checkpoint-4")
    assert resolve_resume_checkpoint(stopped, str(stopped / "checkpoint-2"), "lora") == str(stopped / "checkpoint-2")
    for start_over in ("False", "false"):
        assert resolve_resume_checkpoint(stopped, start_over, "lora") is None
    with pytest.raises(ValueError, match=r"checkpoint-3 is not a complete lora checkpoint: it has no "
                                         r"trainer_state.json"):
        resolve_resume_checkpoint(stopped, str(stopped / "checkpoint-3"), "lora")
    with pytest.raises(ValueError, match=r"checkpoint-2 is not a complete projector checkpoint: .*mm_projector.bin"):
        resolve_resume_checkpoint(stopped, str(stopped / "checkpoint-2"), "projector")
    with pytest.raises(ValueError, match=r"no-such-folder is not a complete lora checkpoint"):
        resolve_resume_checkpoint(stopped, str(tmp_path / "no-such-folder"), "lora")
    assert resolve_resume_checkpoint(tmp_path, None, "lora") is None  # nothing there: a fresh run
    with pytest.raises(ValueError, match="has no complete checkpoint-N folder"):
        resolve_resume_checkpoint(tmp_path, "True", "lora")


@pytest.mark.parametrize("resumed", ["lora"], indirect=True)
def test_resume_from_checkpoint_path_and_false_on_the_command_line(lora_runs, tiny_root, tmp_path):
    _, stopped = lora_runs
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    steps = StepLog()
    train_run(run_argv(tiny_root, "lora", run, "--resume_from_checkpoint", "False", "--max_steps", "1"), steps)
    assert steps.steps == [1]  # started over although checkpoint-4 is there
    steps = StepLog()
    train_run(run_argv(tiny_root, "lora", run, "--resume_from_checkpoint", str(stopped / "checkpoint-2")), steps)
    assert steps.steps == [3, 4]  # from the folder named, not the newest
    with pytest.raises(ValueError, match="checkpoint-3 is not a complete lora checkpoint"):
        train_run(run_argv(tiny_root, "lora", run, "--resume_from_checkpoint", str(run / "checkpoint-3")))


@pytest.mark.parametrize("resumed", ["lora"], indirect=True)
def test_the_same_seed_gives_the_same_adapter_and_another_seed_another(lora_runs, tiny_root, tmp_path):
    whole, stopped = lora_runs  # two runs of one command and seed, each in a fresh train() call
    files = ("adapter_model.safetensors",)
    assert_same_weights(weights(whole / "checkpoint-2", files), weights(stopped / "checkpoint-2", files))
    other = tmp_path / "seed-4"
    interrupted_run(run_argv(tiny_root, "lora", other, "--seed", "4"))
    mine, theirs = weights(whole / "checkpoint-2", files), weights(other / "checkpoint-2", files)
    assert all(not torch.equal(mine[k], theirs[k]) for k in mine if "lora_A" in k)  # another initialisation


class Killed(BaseException):
    """The process dying in the middle of writing a checkpoint."""


@pytest.mark.parametrize("resumed", ["lora"], indirect=True)
def test_a_kill_during_a_save_leaves_no_checkpoint_that_looks_whole(lora_runs, tiny_root, tmp_path, monkeypatch):
    """Every file the save writes with torch.save (optimizer, scheduler, RNG state, non_lora_trainables) is a moment
    a kill can happen: at each, no visible checkpoint-N may lack a file. The run is killed while the RNG state of
    step 2 is written; the next run finds nothing complete, starts over, and ends as the uninterrupted run."""
    whole, _ = lora_runs
    out = tmp_path / "run"
    moments: list[tuple[str, list[str]]] = []
    real_save = torch.save

    def save_or_die(obj, file, *args, **kwargs):
        moments.append((str(file), [p.name for p in out.glob("checkpoint-*") if missing_files(p, "lora")]))
        if str(file).endswith("rng_state.pth"):
            raise Killed(str(file))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_or_die)
    with pytest.raises(Killed):
        train_run(run_argv(tiny_root, "lora", out))
    monkeypatch.undo()
    written = [Path(f).name for f, _ in moments]
    assert "optimizer.pt" in written and written[-1] == "rng_state.pth"
    assert all(incomplete == [] for _, incomplete in moments), moments
    assert not (out / "checkpoint-2").exists()
    assert (out / "tmp-checkpoint-2" / "checkpoint-2" / "optimizer.pt").is_file()  # half written, under its temp name

    steps = StepLog()
    with checkpoint_log() as log:
        train_run(run_argv(tiny_root, "lora", out), steps)
    assert steps.steps == [1, 2, 3, 4]
    assert any("tmp-checkpoint-2 (a save that did not finish)" in m for m in log)
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    files = KINDS["lora"][3]
    assert_same_weights(weights(whole, files), weights(out, files))
