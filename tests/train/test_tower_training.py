"""Training the vision tower (LLaVA-1.6's ``--unfreeze_mm_vision_tower``): its learning-rate group, how its weights
are named when saved, and a full (non-LoRA) finetune of the tiny LLaVA-1.6 checkpoint that saves and reloads them.

The LoRA + ZeRO-3 run on the same checkpoint is in ``test_train_runs.py``.
"""

from __future__ import annotations

import json

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.train.args import TrainingArguments
from llava.train.llava_trainer import LLaVATrainer
from llava.train.saving import full_state_for_save, release_tower_keys

TOWER = "model.vision_tower.vision_tower."
RELEASED = TOWER + "vision_model."


class _Parts(nn.Module):
    """Parameter names as a LLaVA model has them: LM, projector, image_newline, CLIP tower (weights and biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(4, 3)
        self.model.mm_projector = nn.Linear(3, 3)
        self.model.image_newline = nn.Parameter(torch.zeros(3))
        self.model.vision_tower = nn.Module()
        self.model.vision_tower.vision_tower = nn.Module()
        self.model.vision_tower.vision_tower.fc1 = nn.Linear(3, 3)
        self.lm_head = nn.Linear(3, 4, bias=False)


def optimizer_groups(tmp_path, **lrs) -> list[tuple[set[str], float, float]]:
    model = _Parts()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-4,
                             weight_decay=0.1, **lrs)
    optimizer = LLaVATrainer(model=model, args=args).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    return [({names[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


def test_vision_tower_and_projector_get_their_own_learning_rates(tmp_path):
    groups = optimizer_groups(tmp_path, mm_projector_lr=2e-5, mm_vision_tower_lr=2e-6)
    assert groups == [
        ({"model.embed_tokens.weight", "lm_head.weight"}, 1e-4, 0.1),
        ({"model.mm_projector.weight", "model.image_newline"}, 2e-5, 0.1),
        ({"model.mm_projector.bias"}, 2e-5, 0.0),
        ({"model.vision_tower.vision_tower.fc1.weight"}, 2e-6, 0.1),
        ({"model.vision_tower.vision_tower.fc1.bias"}, 2e-6, 0.0),
    ]
    # only the tower's rate given: the projector stays with the rest
    groups = optimizer_groups(tmp_path, mm_vision_tower_lr=3e-6)
    assert [(lr, len(names)) for names, lr, _ in groups] == [(1e-4, 4), (1e-4, 1), (3e-6, 1), (3e-6, 1)]
    assert "model.mm_projector.weight" in groups[0][0]


def test_tower_keys_are_saved_in_the_released_layout():
    state = {
        "base_model.model.model.vision_tower.vision_tower.encoder.layers.0.mlp.fc1.weight": torch.zeros(1),
        "base_model.model.model.vision_tower.vision_tower.vision_model.post_layernorm.bias": torch.zeros(1),
        "base_model.model.model.mm_projector.0.weight": torch.zeros(1),
        "base_model.model.model.image_newline": torch.zeros(1),
    }
    assert list(release_tower_keys(state)) == [
        "base_model.model.model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "base_model.model.model.vision_tower.vision_tower.vision_model.post_layernorm.bias",
        "base_model.model.model.mm_projector.0.weight",
        "base_model.model.model.image_newline",
    ]


def test_full_save_keeps_a_trained_or_finetuned_tower_and_drops_a_frozen_folder_tower():
    model = _Parts()
    model.config = type("Config", (), {"unfreeze_mm_vision_tower": False})()
    state = model.state_dict()
    tower_keys = {k for k in state if k.startswith(TOWER)}
    released = (set(state) - tower_keys) | {RELEASED + k[len(TOWER):] for k in tower_keys}
    assert set(full_state_for_save(model, state)) == released  # everything trainable: the tower is saved
    model.model.vision_tower.requires_grad_(False)
    assert set(full_state_for_save(model, state)) == set(state) - tower_keys
    model.config.unfreeze_mm_vision_tower = True  # frozen here, but finetuned before: kept
    assert set(full_state_for_save(model, state)) == released


# ---------------------------------------------------------------------------------------------- a full finetune
def test_full_finetune_saves_the_trained_tower_and_reloads_it(tiny16_root, tiny16_checkpoint, tiny_anyres_data,
                                                              tmp_path):
    """One process, no DeepSpeed, in this process: all weights train, the tower at its own rate."""
    from llava.train.train import train

    out = tmp_path / "llava-v1.6-tiny-full"
    train(argv=[
        "--model_name_or_path", str(tiny16_checkpoint), "--version", "v1",
        "--vision_tower", str(tiny16_root / "clip-vit-tiny-patch14-336"), "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--mm_use_im_start_end", "False",
        "--image_aspect_ratio", "anyres", "--mm_patch_merge_type", "spatial_unpad",
        "--unfreeze_mm_vision_tower", "True", "--mm_vision_tower_lr", "1e-3", "--token-reduction", "none",
        "--data_path", str(tiny_anyres_data / "anyres.json"), "--image_folder", str(tiny_anyres_data),
        "--output_dir", str(out),
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "1e-5",
        "--model_max_length", "4096", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True",
    ])
    weights = load_file(out / "model.safetensors")
    tower = {k: v for k, v in weights.items() if k.startswith(TOWER)}
    start = {k: v for k, v in load_file(tiny16_checkpoint / "model.safetensors").items() if k.startswith(TOWER)}
    assert set(tower) == set(start) and all(k.startswith(RELEASED) for k in tower)
    assert "model.image_newline" in weights
    key = RELEASED + "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tower[key], start[key].to(tower[key].dtype))  # trained
    config = json.loads((out / "config.json").read_text())
    assert config["unfreeze_mm_vision_tower"] is True and config["mm_vision_tower_lr"] == 1e-3
    assert config["image_grid_pinpoints"] == json.loads((tiny16_checkpoint / "config.json").read_text())[
        "image_grid_pinpoints"]  # taken from the starting checkpoint

    tokenizer, model, processor, _ = load_pretrained_model(str(out), None, "llava-v1.6-tiny-full", device="cpu",
                                                           token_reduction="none")
    loaded = model.get_vision_tower().vision_tower.state_dict()
    assert torch.equal(loaded["encoder.layers.0.self_attn.q_proj.weight"], tower[key].to(torch.float32))
    image = Image.open(tiny_anyres_data / "images" / "0.png").convert("RGB")
    prompt = "USER: <image>\nWhat colour is this picture? ASSISTANT:"
    input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    pixels = process_images([image], processor, model.config)
    new = model.generate(input_ids, images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=3)
    assert 1 <= new.shape[1] <= 3
