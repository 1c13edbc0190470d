"""Real training runs on the tiny checkpoint, in separate processes, then loading what they wrote.

* LoRA finetune, PruMerge on: ``torchrun --nproc_per_node=2`` + DeepSpeed ZeRO-3 (``scripts/zero3.json``, the
  PruMerge recipe's config) on the CPU (``--use_cpu True``), 2 steps of 2 samples per rank.
* LoRA finetune, PruMerge+: ``torchrun --nproc_per_node=2`` + plain DDP (``train.py``), a checkpoint per step.
* LLaVA-1.6 task LoRA on the tiny 1.6 checkpoint: anyres data, ``spatial_unpad``, the vision tower trained at its
  own learning rate (``--unfreeze_mm_vision_tower --mm_vision_tower_lr``), ``torchrun --nproc_per_node=2`` + ZeRO-3.
* Projector pretraining (``--tune_mm_mlp_adapter``): one process + DeepSpeed ZeRO-2 (``scripts/zero2.json``),
  then stage 2 from its ``mm_projector.bin``: 4-bit QLoRA (bitsandbytes), one process.

The first DeepSpeed run on a machine JIT-compiles DeepSpeed's shm_comm op (about a minute, cached in
~/.cache/torch_extensions); the timeouts allow for it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.train.model_setup import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = REPO / "playground" / "data" / "train_tiny"
PROMPT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. "
          "USER: <image>\nWhat is shown in this image? ASSISTANT:")
RUN_TIMEOUT_S = 480  # includes a cold DeepSpeed shm_comm JIT build (~60-120 s on 2 cores)
PROJECTOR_KEYS = {f"mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(threads: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", **extra)
    return env


def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` in the repo; fail with the end of its output when it fails. Returns the wall time."""
    start = time.monotonic()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=RUN_TIMEOUT_S, start_new_session=True)
        except subprocess.TimeoutExpired:
            pytest.fail(f"training run timed out after {RUN_TIMEOUT_S} s; log: {log}\n{log.read_text()[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"training run failed (exit {proc.returncode}); log: {log}\n{log.read_text()[-6000:]}")
    return time.monotonic() - start


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [float(entry["loss"]) for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def tiny_vicuna(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint's language model alone (model_type "llama", no mm_* keys): a pretraining base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava.model import LlavaLlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-vicuna")
    llava = LlavaLlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    c = llava.config
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                         rms_norm_eps=c.rms_norm_eps, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    lm = LlamaForCausalLM(config)
    lm.load_state_dict({k: v for k, v in llava.state_dict().items() if "mm_projector" not in k}, strict=True)
    lm.to(torch.float16).save_pretrained(out)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_checkpoint / name, out / name)
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoint, tiny_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "llava-tiny-prumerge-lora"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "llava/train/train_mem.py",
        "--deepspeed", "scripts/zero3.json", "--use_cpu", "True",
        "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--mm_projector_lr", "2e-5",
        "--model_name_or_path", str(tiny_checkpoint), "--version", "v1",
        "--data_path", str(TINY_DATA / "llava_tiny_finetune.json"), "--image_folder", str(TINY_DATA),
        "--vision_tower", str(tiny_clip), "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True", "--token-reduction", "prumerge",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "2e-4", "--logging_steps", "1", "--model_max_length", "256",
        "--activation_checkpointing", "True", "--save_strategy", "no", "--report_to", "none", "--seed", "7",
    ]
    wall = run_logged(cmd, run_env(threads=1), out.parent / "lora_run.log")
    print(f"2-process ZeRO-3 LoRA run: {wall:.1f} s")
    return out


@pytest.fixture(scope="module")
def ddp_run(tiny_checkpoint, tiny_clip, tmp_path_factory) -> Path:
    """Plain DDP (no DeepSpeed), ``train.py`` itself, PruMerge+, a checkpoint every step."""
    out = tmp_path_factory.mktemp("runs") / "llava-tiny-prumerge-plus-lora"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "llava/train/train.py", "--use_cpu", "True",
        "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
        "--model_name_or_path", str(tiny_checkpoint), "--version", "v1",
        "--data_path", str(TINY_DATA / "llava_tiny_finetune.json"), "--image_folder", str(TINY_DATA),
        "--vision_tower", str(tiny_clip), "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
        "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--token_reduction", "prumerge+",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "2e-4", "--logging_steps", "1", "--model_max_length", "256",
        "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none",
    ]
    wall = run_logged(cmd, run_env(threads=1), out.parent / "ddp_run.log")
    print(f"2-process DDP LoRA run: {wall:.1f} s")
    return out


#: LLaVA-1.6 run: the rates are far apart so that the tower's own group shows in how far its weights moved
V16_LR, V16_PROJECTOR_LR, V16_TOWER_LR = 2e-4, 2e-5, 1e-3


@pytest.fixture(scope="module")
def v16_lora_run(tiny16_root, tiny16_checkpoint, tiny_anyres_data, tmp_path_factory) -> Path:
    """Task LoRA of the tiny LLaVA-1.6 checkpoint as 1.6 was trained: the tower unfrozen at its own rate.
    ``--image_grid_pinpoints`` is left out: the checkpoint's are used."""
    out = tmp_path_factory.mktemp("runs") / "llava-v1.6-tiny-anyres-lora"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "llava/train/train_mem.py",
        "--deepspeed", "scripts/zero3.json", "--use_cpu", "True",
        "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--mm_projector_lr", str(V16_PROJECTOR_LR),
        "--model_name_or_path", str(tiny16_checkpoint), "--version", "v1",
        "--data_path", str(tiny_anyres_data / "anyres.json"), "--image_folder", str(tiny_anyres_data),
        "--vision_tower", str(tiny16_root / "clip-vit-tiny-patch14-336"), "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "anyres", "--mm_patch_merge_type", "spatial_unpad",
        "--unfreeze_mm_vision_tower", "True", "--mm_vision_tower_lr", str(V16_TOWER_LR),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", str(V16_LR), "--logging_steps", "1", "--model_max_length", "2048",
        "--activation_checkpointing", "True", "--save_strategy", "no", "--report_to", "none", "--seed", "7",
    ]
    wall = run_logged(cmd, run_env(threads=1), out.parent / "v16_lora_run.log")
    print(f"2-process ZeRO-3 LLaVA-1.6 LoRA run (tower unfrozen): {wall:.1f} s")
    return out


@pytest.fixture(scope="module")
def pretrain_run(tiny_vicuna, tiny_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "llava-tiny-pretrain"
    cmd = [
        sys.executable, "llava/train/train_mem.py",
        "--deepspeed", "scripts/zero2.json", "--use_cpu", "True",
        "--model_name_or_path", str(tiny_vicuna), "--version", "plain",
        "--data_path", str(TINY_DATA / "llava_tiny_pretrain.json"), "--image_folder", str(TINY_DATA),
        "--vision_tower", str(tiny_clip), "--mm_projector_type", "mlp2x_gelu", "--tune_mm_mlp_adapter", "True",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--model_max_length", "128",
        "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none",
    ]
    env = run_env(threads=2, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(free_port()))
    wall = run_logged(cmd, env, out.parent / "pretrain_run.log")
    print(f"1-process ZeRO-2 projector pretraining run: {wall:.1f} s")
    return out


@pytest.fixture(scope="module")
def qlora_run(tiny_vicuna, tiny_clip, pretrain_run, tmp_path_factory) -> Path:
    """Stage 2 after ``pretrain_run``: QLoRA (4-bit) from the language model + the pretrained projector, one
    process without DeepSpeed. ``--mm_projector_lr 0`` keeps the projector as loaded, so it can be compared."""
    out = tmp_path_factory.mktemp("runs") / "llava-tiny-qlora"
    cmd = [
        sys.executable, "llava/train/train_mem.py", "--use_cpu", "True",
        "--bits", "4", "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--mm_projector_lr", "0",
        "--model_name_or_path", str(tiny_vicuna), "--version", "v1",
        "--data_path", str(TINY_DATA / "llava_tiny_finetune.json"), "--image_folder", str(TINY_DATA),
        "--vision_tower", str(tiny_clip), "--pretrain_mm_mlp_adapter", str(pretrain_run / "mm_projector.bin"),
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad", "--output_dir", str(out), "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--learning_rate", "2e-4", "--logging_steps", "1",
        "--model_max_length", "256", "--activation_checkpointing", "True", "--save_strategy", "no",
        "--report_to", "none",
    ]
    wall = run_logged(cmd, run_env(threads=2), out.parent / "qlora_run.log")
    print(f"1-process 4-bit QLoRA run: {wall:.1f} s")
    return out


def image_inputs(tokenizer, image_processor, config):
    image = Image.open(TINY_DATA / "images" / "red_circle.png").convert("RGB")
    pixels = process_images([image], image_processor, config)
    return tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt")[None], pixels


# ---------------------------------------------------------------------------------------------- LoRA run
def test_lora_run_writes_the_lora_checkpoint_layout(lora_run):
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "non_lora_trainables.bin"):
        assert (lora_run / name).is_file(), name
    config = json.loads((lora_run / "config.json").read_text())
    assert config["mm_token_reduction"] == "prumerge"
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["mm_vision_select_layer"] == -2
    assert config["image_aspect_ratio"] == "pad" and config["tokenizer_model_max_length"] == 256

    losses = logged_losses(lora_run)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)

    non_lora = torch.load(lora_run / "non_lora_trainables.bin", weights_only=True)
    assert set(non_lora) == {f"base_model.model.model.{k}" for k in PROJECTOR_KEYS}
    assert non_lora["base_model.model.model.mm_projector.0.weight"].shape == (64, 48)  # gathered, not a ZeRO-3 shard
    adapter = load_file(lora_run / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert not any("vision_tower" in k or "mm_projector" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # it trained


def test_lora_checkpoint_loads_and_generates_with_an_image(lora_run, tiny_checkpoint):
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    _, model, image_processor, _ = load_pretrained_model(
        str(lora_run), str(tiny_checkpoint), "llava-tiny-prumerge-lora", device="cpu"
    )
    assert model.config.mm_token_reduction == "prumerge"
    trained = torch.load(lora_run / "non_lora_trainables.bin", weights_only=True)
    state = model.state_dict()
    for key in PROJECTOR_KEYS:
        loaded = state[f"model.{key}"]
        assert torch.equal(loaded, trained[f"base_model.model.model.{key}"].to(loaded.dtype))

    input_ids, pixels = image_inputs(tokenizer, image_processor, model.config)
    new_tokens = model.generate(input_ids, images=pixels, do_sample=False, max_new_tokens=6)
    assert new_tokens.shape[0] == 1 and 1 <= new_tokens.shape[1] <= 6
    assert 1 <= model.last_visual_token_counts[0] < 576  # PruMerge reduced the 576 patches


def test_merge_lora_weights_gives_the_same_greedy_tokens(lora_run, tiny_checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "scripts" / "merge_lora_weights.py")
    merge_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge_script)
    merged = tmp_path / "llava-tiny-prumerge-merged"
    merge_script.main(["--model-path", str(lora_run), "--model-base", str(tiny_checkpoint),
                       "--save-model-path", str(merged), "--save-dtype", "float32"])

    weights = load_file(merged / "model.safetensors")
    assert {f"model.{k}" for k in PROJECTOR_KEYS} <= set(weights)
    assert not any(k.startswith("model.vision_tower.") for k in weights)  # CLIP comes from mm_vision_tower
    assert not any("lora" in k for k in weights)
    assert json.loads((merged / "config.json").read_text())["mm_token_reduction"] == "prumerge"
    assert (merged / "tokenizer.model").is_file()

    tokenizer = load_tokenizer(str(tiny_checkpoint))
    outputs = []
    for path, base, name in ((lora_run, tiny_checkpoint, "llava-tiny-prumerge-lora"),
                             (merged, None, "llava-tiny-prumerge-merged")):
        _, model, image_processor, _ = load_pretrained_model(str(path), base and str(base), name, device="cpu")
        input_ids, pixels = image_inputs(tokenizer, image_processor, model.config)
        outputs.append(model.generate(input_ids, images=pixels, do_sample=False, max_new_tokens=8))
    assert outputs[0].tolist() == outputs[1].tolist()

    base_state = load_file(tiny_checkpoint / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[key], base_state[key].float())  # the LoRA delta is merged in


def test_ddp_run_records_prumerge_plus_and_writes_checkpoints(ddp_run, tiny_checkpoint):
    config = json.loads((ddp_run / "config.json").read_text())
    assert config["mm_token_reduction"] == "prumerge+"
    assert all(math.isfinite(x) for x in logged_losses(ddp_run))
    for step in (1, 2):
        checkpoint = ddp_run / f"checkpoint-{step}"
        assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
        assert (checkpoint / "tokenizer.model").is_file()  # the tokenizer is saved so that it reloads as trained
        assert (checkpoint / "non_lora_trainables.bin").is_file() and (checkpoint / "config.json").is_file()
    non_lora = torch.load(ddp_run / "non_lora_trainables.bin", weights_only=True)
    assert set(non_lora) == {f"base_model.model.model.{k}" for k in PROJECTOR_KEYS}

    checkpoint = ddp_run / "checkpoint-1"  # loads like the final output, by upstream's name rule
    _, model, image_processor, _ = load_pretrained_model(
        str(checkpoint), str(tiny_checkpoint), get_model_name_from_path(str(checkpoint)), device="cpu"
    )
    assert model.config.mm_token_reduction == "prumerge+"
    input_ids, pixels = image_inputs(load_tokenizer(str(tiny_checkpoint)), image_processor, model.config)
    assert model.generate(input_ids, images=pixels, do_sample=False, max_new_tokens=4).shape[1] >= 1


# ---------------------------------------------------------------------------------------------- LLaVA-1.6 LoRA run
def tower_weights(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{CLIP parameter name: fp32 tensor}`` of the tower weights under ``prefix`` (+ ``vision_model.``)."""
    return {k[len(prefix):].removeprefix("vision_model."): v.float() for k, v in state.items() if k.startswith(prefix)}


def max_change(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> float:
    return max((after[k] - before[k].float()).abs().max().item() for k in after)


def test_v16_lora_run_trains_the_tower_at_its_own_rate_and_saves_it(v16_lora_run, tiny16_root, tiny16_checkpoint):
    config = json.loads((v16_lora_run / "config.json").read_text())
    start_config = json.loads((tiny16_checkpoint / "config.json").read_text())
    assert config["unfreeze_mm_vision_tower"] is True and config["mm_vision_tower_lr"] == V16_TOWER_LR
    assert config["mm_patch_merge_type"] == "spatial_unpad" and config["image_aspect_ratio"] == "anyres"
    assert config["image_grid_pinpoints"] == start_config["image_grid_pinpoints"]
    losses = logged_losses(v16_lora_run)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)

    non_lora = torch.load(v16_lora_run / "non_lora_trainables.bin", weights_only=True)
    prefix = "base_model.model.model.vision_tower.vision_tower."
    start_state = load_file(tiny16_checkpoint / "model.safetensors")
    start = tower_weights(start_state, "model.vision_tower.vision_tower.")
    trained = tower_weights(non_lora, prefix)
    tower_keys = {k for k in non_lora if k.startswith(prefix)}
    assert tower_keys and all(k.startswith(prefix + "vision_model.") for k in tower_keys)  # the released names
    assert set(trained) == set(start)  # every tower weight, gathered from the ZeRO-3 shards at full size
    assert all(trained[k].shape == start[k].shape for k in start)
    assert set(non_lora) - tower_keys == {f"base_model.model.model.{k}" for k in PROJECTOR_KEYS} | {
        "base_model.model.model.image_newline"}
    folder = tower_weights(load_file(tiny16_root / "clip-vit-tiny-patch14-336" / "model.safetensors"), "vision_model.")
    key = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[key], start[key]) and not torch.equal(trained[key], folder[key])

    # Adam moves a weight by about lr per step (linear decay: lr, then lr/2), so the largest change tells the rate
    # each part trained at: the tower's 1e-3, not the projector's 2e-5 or the run's 2e-4.
    tower_change = max_change(trained, start)
    assert V16_TOWER_LR * 0.5 < tower_change < V16_TOWER_LR * 1.6
    projector = {k: non_lora[f"base_model.model.model.{k}"] for k in PROJECTOR_KEYS}
    projector_change = max_change(projector, {k: start_state[f"model.{k}"] for k in projector})
    assert 0 < projector_change < V16_PROJECTOR_LR * 1.6
    log = (v16_lora_run.parent / "v16_lora_run.log").read_text()
    assert re.search(rf"optimizer parameter groups: .*vision_tower: \d+ tensors, lr {V16_TOWER_LR}", log)  # as logged
    # saved although LoRA runs keep it frozen (as upstream): the folder holds every weight of its layout
    assert torch.equal(non_lora["base_model.model.model.image_newline"], start_state["model.image_newline"].float())


def test_v16_lora_run_loads_with_the_trained_tower_and_answers(v16_lora_run, tiny16_checkpoint, tiny_anyres_data):
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(v16_lora_run), str(tiny16_checkpoint), "llava-v1.6-tiny-anyres-lora", device="cpu"
    )
    non_lora = torch.load(v16_lora_run / "non_lora_trainables.bin", weights_only=True)
    saved = tower_weights(non_lora, "base_model.model.model.vision_tower.vision_tower.")
    loaded = model.get_vision_tower().vision_tower.state_dict()
    for name, value in saved.items():
        assert torch.equal(loaded[name], value.to(loaded[name].dtype)), name
    newline = model.get_model().image_newline
    assert torch.equal(newline, non_lora["base_model.model.model.image_newline"].to(newline.dtype))

    image = Image.open(tiny_anyres_data / "images" / "0.png").convert("RGB")  # 1200x300: three grid tiles
    pixels = process_images([image], image_processor, model.config)
    assert pixels.shape == (1, 4, 3, 336, 336)
    input_ids = tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt")[None]
    new_tokens = model.generate(input_ids, images=pixels, image_sizes=[image.size], do_sample=False,
                                max_new_tokens=6)
    assert new_tokens.shape[0] == 1 and 1 <= new_tokens.shape[1] <= 6


# ---------------------------------------------------------------------------------------------- pretraining
def test_projector_pretraining_writes_mm_projector_bin_the_loader_reads(pretrain_run, tiny_vicuna):
    projector = torch.load(pretrain_run / "mm_projector.bin", weights_only=True)
    assert set(projector) == {f"model.{k}" for k in PROJECTOR_KEYS}
    assert (pretrain_run / "checkpoint-2" / "mm_projector.bin").is_file()
    assert (pretrain_run / "mm_projector" / "checkpoint-2.bin").is_file()  # upstream's per-checkpoint copy
    assert not list(pretrain_run.glob("*.safetensors"))  # projector-only: no full weights
    config = json.loads((pretrain_run / "config.json").read_text())
    assert config["tune_mm_mlp_adapter"] is True and config["mm_token_reduction"] == "prumerge"
    losses = logged_losses(pretrain_run)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)

    # "llava" in the name, a base and no "lora": base language model + mm_projector.bin
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(pretrain_run), str(tiny_vicuna), "llava-tiny-pretrain", device="cpu"
    )
    state = model.state_dict()
    for key, value in projector.items():
        assert torch.equal(state[key], value.to(state[key].dtype))
    input_ids, pixels = image_inputs(load_tokenizer(str(tiny_vicuna)), image_processor, model.config)
    assert model.generate(input_ids, images=pixels, do_sample=False, max_new_tokens=4).shape[1] >= 1


def test_qlora_finetune_from_the_pretrained_projector(qlora_run, pretrain_run, tiny_vicuna):
    config = json.loads((qlora_run / "config.json").read_text())
    assert "quantization_config" not in config  # the adapter goes on a full-precision base
    assert all(math.isfinite(x) for x in logged_losses(qlora_run))
    pretrained = torch.load(pretrain_run / "mm_projector.bin", weights_only=True)
    non_lora = torch.load(qlora_run / "non_lora_trainables.bin", weights_only=True)
    assert set(non_lora) == {f"base_model.model.{k}" for k in pretrained}
    for key, value in pretrained.items():  # --pretrain_mm_mlp_adapter was loaded (and kept: projector lr 0)
        assert torch.equal(non_lora[f"base_model.model.{key}"], value)
    adapter = load_file(qlora_run / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)

    _, model, image_processor, _ = load_pretrained_model(str(qlora_run), str(tiny_vicuna), "llava-tiny-qlora",
                                                         device="cpu")
    input_ids, pixels = image_inputs(load_tokenizer(str(tiny_vicuna)), image_processor, model.config)
    assert model.generate(input_ids, images=pixels, do_sample=False, max_new_tokens=4).shape[1] >= 1
