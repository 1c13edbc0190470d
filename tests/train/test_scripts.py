"""Training arguments, and every shipped training recipe (scripts/v1_5/*.sh, scripts/v1_6/*.sh, scripts/zero*.json)
parses."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from llava.train.args import DataArguments, ModelArguments, TrainingArguments, parse_args

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "scripts" / "v1_5").glob("*.sh")) + sorted((REPO / "scripts" / "v1_6").glob("*.sh"))
RECIPE_NAMES = {"v1_5/pretrain.sh", "v1_5/finetune.sh", "v1_5/finetune_lora.sh", "v1_5/finetune_task.sh",
                "v1_5/finetune_task_lora.sh", "v1_6/finetune_task_lora.sh"}
V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def recipe_id(script: Path) -> str:
    return f"{script.parent.name}/{script.name}"


def base_argv(tmp_path) -> list[str]:
    return ["--output_dir", str(tmp_path), "--use_cpu", "True", "--report_to", "none"]


def test_upstream_defaults_and_token_reduction_flags(tmp_path):
    model_args, data_args, training_args = parse_args(base_argv(tmp_path))
    assert (model_args.version, model_args.mm_vision_select_layer, model_args.mm_use_im_patch_token) == ("v0", -1, True)
    assert (data_args.image_aspect_ratio, training_args.model_max_length, training_args.lora_r) == ("square", 512, 64)
    assert training_args.remove_unused_columns is False and training_args.optim == "adamw_torch"
    assert model_args.token_reduction is None and model_args.mm_token_reduction is None

    for spelling in ("--token-reduction", "--token_reduction"):
        model_args, _, _ = parse_args(base_argv(tmp_path) + [spelling, "PruMerge_Plus", "--token-budget", "64"])
        assert model_args.mm_token_reduction == "prumerge+" and model_args.mm_token_budget == 64
    with pytest.raises(ValueError, match="unknown --token-reduction 'fastv'"):
        parse_args(base_argv(tmp_path) + ["--token-reduction", "fastv"])
    with pytest.raises(ValueError, match="unknown command-line arguments: --no_such_flag"):
        parse_args(base_argv(tmp_path) + ["--no_such_flag", "1"])


def test_upstream_evaluation_strategy_is_accepted(tmp_path):
    with pytest.warns(FutureWarning, match="--evaluation_strategy"):
        _, _, training_args = parse_args(base_argv(tmp_path) + ["--evaluation_strategy", "no"])
    assert training_args.eval_strategy.value == "no"


def test_upstream_finetune_task_lora_flags_parse_unchanged(tmp_path):
    """The option list of upstream LLaVA's scripts/v1_5/finetune_task_lora.sh (GPU-only values left out)."""
    upstream = [
        "--lora_enable", "True", "--lora_r", "128", "--lora_alpha", "256", "--mm_projector_lr", "2e-5",
        "--model_name_or_path", "liuhaotian/llava-v1.5-13b", "--version", "v1",
        "--data_path", "./playground/data/llava_v1_5_mix665k.json", "--image_folder", "./playground/data",
        "--vision_tower", "openai/clip-vit-large-patch14-336", "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad", "--group_by_modality_length", "True",
        "--output_dir", str(tmp_path), "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no",
        "--save_strategy", "steps", "--save_steps", "50000", "--save_total_limit", "1", "--learning_rate", "2e-4",
        "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        "--model_max_length", "2048", "--gradient_checkpointing", "True", "--dataloader_num_workers", "4",
        "--lazy_preprocess", "True", "--report_to", "none", "--use_cpu", "True",
    ]
    with pytest.warns(FutureWarning):
        model_args, data_args, training_args = parse_args(upstream)
    assert training_args.warmup_steps == 0.03 and training_args.activation_checkpointing is True
    assert model_args.mm_vision_select_layer == -2 and data_args.image_aspect_ratio == "pad"


def test_bad_lora_and_quantisation_values(tmp_path):
    with pytest.raises(ValueError, match="--bits"):
        parse_args(base_argv(tmp_path) + ["--bits", "3"])
    with pytest.raises(ValueError, match="--lora_bias"):
        parse_args(base_argv(tmp_path) + ["--lora_bias", "some"])


def recipe_argv(script: Path, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the recipe with a stand-in ``deepspeed`` that records its arguments instead of training."""
    shim = tmp_path / "bin" / "deepspeed"
    shim.parent.mkdir(exist_ok=True)
    record = tmp_path / "argv.json"
    shim.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    shim.chmod(0o755)
    run_env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    subprocess.run(["bash", str(script)], cwd=REPO, env=run_env, check=True, timeout=60)
    return json.loads(record.read_text())


def test_all_recipes_are_shipped():
    assert {recipe_id(p) for p in RECIPES} >= RECIPE_NAMES


@pytest.mark.parametrize("script", RECIPES, ids=[recipe_id(p) for p in RECIPES])
def test_recipe_arguments_parse(script, tmp_path):
    argv = recipe_argv(script, tmp_path)
    assert argv[0] == "llava/train/train_mem.py"
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # argparse level only: building TrainingArguments would check for the recipe's GPU (bf16, tf32).
    namespace, rest = parser.parse_known_args(argv[1:])
    assert rest == []
    assert namespace.token_reduction == "prumerge"
    config = json.loads((REPO / namespace.deepspeed).read_text())
    assert config["train_micro_batch_size_per_gpu"] == "auto" and config["zero_optimization"]["stage"] in (2, 3)


def test_prumerge_plus_variant(tmp_path):
    argv = recipe_argv(REPO / "scripts" / "v1_5" / "finetune_task_lora.sh", tmp_path, {"PRUMERGE_PLUS": "1"})
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    namespace, _ = parser.parse_known_args(argv[1:])
    assert namespace.token_reduction == "prumerge+"
    assert namespace.token_budget == 144  # the published fixed-count training rule (docs/PruMerge.md)
    adaptive = recipe_argv(REPO / "scripts" / "v1_5" / "finetune_task_lora.sh", tmp_path,
                           {"PRUMERGE_PLUS": "1", "TOKEN_BUDGET": ""})
    assert "--token-budget" not in adaptive
    assert namespace.model_name_or_path == "liuhaotian/llava-v1.5-7b"
    lora = (namespace.lora_enable, namespace.lora_r, namespace.lora_alpha, namespace.mm_projector_lr)
    assert lora == (True, 128, 256, 2e-5)
    assert "prumerge-plus-lora" in namespace.output_dir  # the loader's name rule agrees with the config key


def test_llava_16_recipe_trains_as_16_was_trained(tmp_path):
    """scripts/v1_6/finetune_task_lora.sh: anyres tiles, spatial_unpad, the tower unfrozen at 2e-6."""
    argv = recipe_argv(REPO / "scripts" / "v1_6" / "finetune_task_lora.sh", tmp_path)
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    namespace, _ = parser.parse_known_args(argv[1:])
    assert namespace.model_name_or_path == "liuhaotian/llava-v1.6-vicuna-7b"
    assert (namespace.image_aspect_ratio, namespace.mm_patch_merge_type) == ("anyres", "spatial_unpad")
    assert namespace.unfreeze_mm_vision_tower is True and namespace.mm_vision_tower_lr == 2e-6
    assert namespace.model_max_length == 4096 and namespace.output_dir.endswith("llava-v1.6-vicuna-7b-prumerge-lora")
    assert [list(p) for p in ast.literal_eval(namespace.image_grid_pinpoints)] == V16_PINPOINTS
    argv = recipe_argv(REPO / "scripts" / "v1_6" / "finetune_task_lora.sh", tmp_path, {"PRUMERGE_PLUS": "1"})
    namespace, _ = parser.parse_known_args(argv[1:])
    assert namespace.token_reduction == "prumerge+" and "prumerge-plus-lora" in namespace.output_dir


def test_llava_16_training_flags(tmp_path):
    model_args, _, training_args = parse_args(base_argv(tmp_path) + [
        "--mm_patch_merge_type", "spatial_unpad", "--unfreeze_mm_vision_tower", "True",
        "--mm_vision_tower_lr", "2e-6"])
    assert model_args.mm_patch_merge_type == "spatial_unpad" and model_args.unfreeze_mm_vision_tower is True
    assert training_args.mm_vision_tower_lr == 2e-6
    model_args, _, training_args = parse_args(base_argv(tmp_path))  # upstream's defaults
    assert (model_args.mm_patch_merge_type, model_args.unfreeze_mm_vision_tower) == ("flat", False)
    assert training_args.mm_vision_tower_lr is None
    with pytest.raises(ValueError, match="--mm_patch_merge_type: unknown mm_patch_merge_type 'unpad'"):
        parse_args(base_argv(tmp_path) + ["--mm_patch_merge_type", "unpad"])
    with pytest.raises(ValueError, match="--mm_vision_tower_lr must not be negative"):
        parse_args(base_argv(tmp_path) + ["--mm_vision_tower_lr", "-1"])


def test_zero_configs():
    for name, stage in (("zero2.json", 2), ("zero3.json", 3), ("zero3_offload.json", 3)):
        config = json.loads((REPO / "scripts" / name).read_text())
        assert config["zero_optimization"]["stage"] == stage
        assert config["bf16"]["enabled"] == "auto" and config["train_batch_size"] == "auto"
    offload = json.loads((REPO / "scripts" / "zero3_offload.json").read_text())["zero_optimization"]
    assert offload["offload_param"]["device"] == "cpu" and offload["offload_optimizer"]["device"] == "cpu"
