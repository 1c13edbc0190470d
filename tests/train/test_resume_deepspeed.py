"""Resuming a DeepSpeed run, as users run the task-LoRA recipe: ``train_mem.py`` + ZeRO-3 in its own process.

Under DeepSpeed the Trainer restores the weights from DeepSpeed's engine checkpoint (``global_stepN/``), not from
the adapter files; this checks that the projector, which LoRA runs also train (``non_lora_trainables.bin``), comes
back with it. Three runs of one command and seed, with a constant learning rate (so that a 2-step run followed by
a resumed third step is the same run as 3 uninterrupted steps):

* "whole": 3 steps, a checkpoint at step 2;
* "stopped": 2 steps, a checkpoint at step 2, then the same command with ``--max_steps 3``, which resumes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_runs import TINY_DATA, free_port, run_env, run_logged


def zero3_lora_cmd(checkpoint: Path, clip: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "llava/train/train_mem.py", "--deepspeed", "scripts/zero3.json", "--use_cpu", "True",
        "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--mm_projector_lr", "1e-3",
        "--model_name_or_path", str(checkpoint), "--version", "v1",
        "--data_path", str(TINY_DATA / "llava_tiny_finetune.json"), "--image_folder", str(TINY_DATA),
        "--vision_tower", str(clip), "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
        "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--token-budget", "16",
        "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1",
        "--model_max_length", "1024", "--save_strategy", "steps", "--save_steps", "2", "--seed", "11",
        "--report_to", "none",
    ]


def single_process_env() -> dict[str, str]:
    return run_env(threads=2, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))


@pytest.fixture(scope="module")
def zero3_runs(tiny_checkpoint, tiny_clip, tmp_path_factory) -> tuple[Path, Path, str]:
    """(uninterrupted output, resumed output, the resumed run's log)."""
    root = tmp_path_factory.mktemp("resume-zero3")
    whole, stopped = root / "whole", root / "stopped"
    run_logged(zero3_lora_cmd(tiny_checkpoint, tiny_clip, whole, 3), single_process_env(), root / "whole.log")
    run_logged(zero3_lora_cmd(tiny_checkpoint, tiny_clip, stopped, 2), single_process_env(), root / "first.log")
    for leftover in ("adapter_model.safetensors", "non_lora_trainables.bin", "trainer_state.json"):
        (stopped / leftover).unlink()  # the final save of the 2-step run: only checkpoint-2 should matter
    shutil.rmtree(stopped / "runs", ignore_errors=True)
    log = root / "resumed.log"
    run_logged(zero3_lora_cmd(tiny_checkpoint, tiny_clip, stopped, 3), single_process_env(), log)
    return whole, stopped, log.read_text()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    state = {f"adapter:{k}": v.float() for k, v in load_file(folder / "adapter_model.safetensors").items()}
    extra = torch.load(folder / "non_lora_trainables.bin", weights_only=True)
    state.update({f"extra:{k}": v.float() for k, v in extra.items()})
    return state


def test_a_resumed_zero3_lora_run_ends_where_the_uninterrupted_run_ends(zero3_runs, tiny_checkpoint):
    whole, stopped, log = zero3_runs
    assert f"resuming from {stopped / 'checkpoint-2'}" in log
    assert (stopped / "checkpoint-2" / "latest").is_file()  # DeepSpeed's engine checkpoint is what resumed
    steps = [e["step"] for e in json.loads((stopped / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert steps == [1, 2, 3]  # steps 1-2 from checkpoint-2's history, then only step 3 was trained
    mine, theirs = _weights(whole), _weights(stopped)
    assert mine.keys() == theirs.keys() and any("mm_projector" in k for k in mine)
    start = load_file(tiny_checkpoint / "model.safetensors")["model.mm_projector.0.weight"].float()
    projector = next(v for k, v in mine.items() if k.endswith("mm_projector.0.weight"))
    assert not torch.allclose(projector, start)  # it trained: restarting it from the start would show
    worst = max((mine[k] - theirs[k]).abs().max().item() for k in mine)
    assert worst <= 1e-5, f"largest difference {worst}"
