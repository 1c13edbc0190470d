"""Loading LLaVA-1.6 checkpoints: full, LoRA + base, projector + base, 8-bit / 4-bit, and the errors of bad files.

The finetuned CLIP inside the checkpoint (``model.vision_tower.vision_tower.vision_model.*``) must be what runs,
``model.image_newline`` must be loaded, and a missing, extra or mis-shaped tower weight is an error naming it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from loading_helpers import LM_KEYS, PEFT_RENAME_WARNING, copy_checkpoint, load
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from llava._tokenization import load_tokenizer, save_tokenizer
from llava.mm_utils import process_images, tokenizer_image_token

TOWER = "model.vision_tower.vision_tower.vision_model."
PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"


def rewrite_weights(folder: Path, edit) -> None:
    file = folder / "model.safetensors"
    state = load_file(file)
    edit(state)
    save_file(state, file, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def wide_image():
    from PIL import Image

    generator = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(300, 640, 3, generator=generator) * 255).to(torch.uint8).numpy(), "RGB")


def run(model, tokenizer, image_processor, image):
    ids = torch.tensor([tokenizer_image_token(PROMPT, tokenizer)])
    pixels = process_images([image], image_processor, model.config)
    with torch.no_grad():
        return model(input_ids=ids, images=pixels, image_sizes=[image.size]).logits


def tower_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.get_vision_tower().vision_tower.state_dict().items() if k != "embeddings.position_ids"}


# ---------------------------------------------------------------- bad checkpoint files


def test_a_missing_tower_weight_is_named(tiny16_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny16_checkpoint, tmp_path / "llava-v1.6-vicuna-tiny")
    gone = TOWER + "encoder.layers.1.mlp.fc2.bias"
    rewrite_weights(folder, lambda s: s.pop(gone))
    with pytest.raises(ValueError, match=r"lacks 1 of its .* weights, e\.g\. " + gone.replace(".", r"\.")):
        load(folder)


def test_an_extra_tower_weight_is_named(tiny16_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny16_checkpoint, tmp_path / "llava-v1.6-vicuna-tiny")
    extra = TOWER + "encoder.layers.7.mlp.fc2.bias"
    rewrite_weights(folder, lambda s: s.__setitem__(extra, torch.zeros(4, dtype=torch.float16)))
    with pytest.raises(ValueError, match=r"1 vision tower weights match no parameter.*" + extra.replace(".", r"\.")):
        load(folder)


def test_a_mis_shaped_tower_weight_is_named(tiny16_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny16_checkpoint, tmp_path / "llava-v1.6-vicuna-tiny")
    key = TOWER + "post_layernorm.weight"
    rewrite_weights(folder, lambda s: s.__setitem__(key, torch.ones(7, dtype=torch.float16)))
    with pytest.raises(ValueError, match=r"shape mismatch.*post_layernorm\.weight: file \(7,\)"):
        load(folder)


def test_no_tower_weights_with_unfreeze_is_an_error(tiny16_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny16_checkpoint, tmp_path / "llava-v1.6-vicuna-tiny")
    rewrite_weights(folder, lambda s: [s.pop(k) for k in list(s) if k.startswith(TOWER)])
    with pytest.raises(ValueError, match="unfreeze_mm_vision_tower: true.*holds its weights"):
        load(folder)


def test_a_missing_image_newline_is_an_error(tiny16_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny16_checkpoint, tmp_path / "llava-v1.6-vicuna-tiny")
    rewrite_weights(folder, lambda s: s.pop("model.image_newline"))
    with pytest.raises(ValueError, match="'spatial_unpad' needs the weight model.image_newline"):
        load(folder)


@pytest.mark.parametrize(("updates", "message"), [
    ({"mm_patch_merge_type": "spatial_pad"},
     r"config\.json: key mm_patch_merge_type: unknown mm_patch_merge_type 'spatial_pad'; valid values are 'flat'"),
    ({"image_grid_pinpoints": [[336, 672], [672]]},
     r"config\.json: key image_grid_pinpoints \(needed by image_aspect_ratio 'anyres'\).*\[width, height\]"),
    ({"image_grid_pinpoints": "(336, 672"}, r"config\.json: key image_grid_pinpoints"),
])
def test_bad_config_values_name_the_key_value_and_file(tiny16_checkpoint, tmp_path, updates, message):
    folder = copy_checkpoint(tiny16_checkpoint, tmp_path / "llava-v1.6-vicuna-tiny", **updates)
    with pytest.raises(ValueError, match=message):
        load(folder)


def test_a_bad_overwrite_config_value_names_overwrite_config(tiny16_checkpoint):
    with pytest.raises(ValueError, match="overwrite_config: key mm_patch_merge_type.*'spatial_unpadded'"):
        load(tiny16_checkpoint, overwrite_config={"mm_patch_merge_type": "spatial_unpadded"})


# ---------------------------------------------------------------- other loading paths


@pytest.fixture(scope="module")
def base16_lm(tiny16_checkpoint, tmp_path_factory) -> Path:
    """A plain Llama LM (no vision keys) with the tiny 1.6 checkpoint's language-model weights."""
    folder = tmp_path_factory.mktemp("bases16") / "vicuna-tiny"
    data = json.loads((tiny16_checkpoint / "config.json").read_text())
    weights = load_file(tiny16_checkpoint / "model.safetensors")
    lm = {k: v.float() for k, v in weights.items()
          if not k.startswith(("model.mm_projector", "model.vision_tower", "model.image_newline"))}
    model = LlamaForCausalLM(LlamaConfig(**{k: data[k] for k in LM_KEYS}))
    model.load_state_dict(lm, strict=True)
    model.save_pretrained(folder)
    save_tokenizer(load_tokenizer(str(tiny16_checkpoint)), folder)
    return folder


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: (v.float() * (1 + scale * torch.randn(v.shape, generator=generator))).contiguous()
            for k, v in state.items()}


def write_lora_run(model, folder: Path, non_lora: dict[str, torch.Tensor]) -> None:
    """An adapter on the LM's attention (random, so it shows) plus ``non_lora_trainables.bin``, as train.py writes."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"))
    generator = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(folder)
    model.config.save_pretrained(folder)
    torch.save({f"base_model.model.{k}": v for k, v in non_lora.items()}, folder / "non_lora_trainables.bin")


@pytest.mark.filterwarnings(PEFT_RENAME_WARNING)
def test_lora_on_a_plain_base_takes_tower_and_newline_from_non_lora_trainables(tiny16_checkpoint, base16_lm,
                                                                                tmp_path, wide_image):
    _, source, _, _ = load(tiny16_checkpoint, token_reduction="none")
    weights = load_file(tiny16_checkpoint / "model.safetensors")
    tower = perturbed({k: v for k, v in weights.items() if k.startswith(TOWER)}, seed=4)
    newline = {"model.image_newline": torch.randn(64, generator=torch.Generator().manual_seed(5))}
    projector = perturbed({k: v for k, v in weights.items() if "mm_projector" in k}, seed=6)
    folder = tmp_path / "llava-v1.6-vicuna-tiny-task-lora"
    write_lora_run(source, folder, {**tower, **newline, **projector})

    tokenizer, model, processor, _ = load(folder, base=base16_lm, token_reduction="none")

    state = tower_state(model)
    for key, value in tower.items():
        assert torch.equal(state[key[len(TOWER):]], value), key
    assert torch.equal(model.get_model().image_newline.detach(), newline["model.image_newline"])
    for key, value in projector.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not any("lora" in k for k in model.state_dict())
    assert torch.isfinite(run(model, tokenizer, processor, wide_image)).all()


@pytest.mark.filterwarnings(PEFT_RENAME_WARNING)
def test_task_lora_on_the_16_checkpoint_keeps_its_tower(tiny16_checkpoint, tmp_path, wide_image):
    """The usual 1.6 task LoRA: the base is the 1.6 checkpoint, non_lora_trainables holds only the projector."""
    _, source, _, _ = load(tiny16_checkpoint, token_reduction="none")
    expected_tower = tower_state(source)
    weights = load_file(tiny16_checkpoint / "model.safetensors")
    projector = perturbed({k: v for k, v in weights.items() if "mm_projector" in k}, seed=8)
    folder = tmp_path / "llava-v1.6-vicuna-tiny-lora"
    write_lora_run(source, folder, projector)

    tokenizer, model, processor, _ = load(folder, base=tiny16_checkpoint, token_reduction="none")

    state = tower_state(model)
    assert state.keys() == expected_tower.keys()
    assert all(torch.equal(state[k], v) for k, v in expected_tower.items())
    assert torch.equal(model.get_model().image_newline.detach(), weights["model.image_newline"].float())
    assert torch.isfinite(run(model, tokenizer, processor, wide_image)).all()


def test_projector_with_base(tiny16_checkpoint, base16_lm, tmp_path, wide_image):
    """1.6 pretraining output: the projector (and image_newline) beside the config; the tower is the folder's."""
    from transformers import CLIPVisionModel

    folder = tmp_path / "llava-v1.6-vicuna-tiny-pretrain"
    folder.mkdir()
    shutil.copyfile(tiny16_checkpoint / "config.json", folder / "config.json")
    weights = load_file(tiny16_checkpoint / "model.safetensors")
    saved = {k: v for k, v in weights.items() if "mm_projector" in k or k == "model.image_newline"}
    torch.save(saved, folder / "mm_projector.bin")

    tokenizer, model, processor, _ = load(folder, base=base16_lm, token_reduction="none")

    folder_tower = CLIPVisionModel.from_pretrained(model.config.mm_vision_tower).state_dict()
    assert all(torch.equal(v, folder_tower[k]) for k, v in tower_state(model).items())
    assert torch.equal(model.get_model().image_newline.detach(), saved["model.image_newline"].float())
    assert torch.isfinite(run(model, tokenizer, processor, wide_image)).all()

    torch.save({k: v for k, v in saved.items() if "mm_projector" in k}, folder / "mm_projector.bin")
    with pytest.raises(ValueError, match=r"needs the weight model\.image_newline.*mm_projector\.bin"):
        load(folder, base=base16_lm)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_16_loading_runs_the_finetuned_tower(tiny16_checkpoint, tiny16_loaded, wide_image, bits):
    import bitsandbytes as bnb

    tokenizer, model, processor, _ = load(tiny16_checkpoint, load_8bit=bits == 8, load_4bit=bits == 4,
                                          token_reduction="none")
    assert isinstance(model.get_model().layers[0].self_attn.q_proj,
                      bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit)
    reference = tower_state(tiny16_loaded[1])
    state = tower_state(model)
    assert all(torch.equal(state[k], v) for k, v in reference.items())  # the tower is not quantised
    assert type(model.get_vision_tower().vision_tower.encoder.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert model.get_model().image_newline.dtype == torch.float32
    ids = torch.tensor([tokenizer_image_token(PROMPT, tokenizer)])
    pixels = process_images([wide_image], processor, model.config)
    new = model.generate(ids, images=pixels, image_sizes=[wide_image.size], max_new_tokens=3, do_sample=False)
    assert new.shape == (1, 3)


@pytest.mark.filterwarnings(PEFT_RENAME_WARNING)
def test_merge_lora_weights_keeps_the_finetuned_tower(tiny16_checkpoint, tmp_path, wide_image):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "merge_lora_weights", Path(__file__).resolve().parents[2] / "scripts" / "merge_lora_weights.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    _, source, _, _ = load(tiny16_checkpoint, token_reduction="none")
    expected_tower = tower_state(source)
    weights = load_file(tiny16_checkpoint / "model.safetensors")
    write_lora_run(source, tmp_path / "llava-v1.6-vicuna-tiny-lora",
                   {k: v for k, v in weights.items() if "mm_projector" in k})
    merged = merge.merge_lora(str(tmp_path / "llava-v1.6-vicuna-tiny-lora"), str(tiny16_checkpoint),
                              str(tmp_path / "llava-v1.6-vicuna-tiny-merged"), "float32")
    saved = load_file(merged / "model.safetensors")
    assert sum(k.startswith(TOWER) for k in saved) == len(expected_tower)
    tokenizer, model, processor, _ = load(merged, token_reduction="none")
    assert all(torch.equal(tower_state(model)[k], v) for k, v in expected_tower.items())
    assert torch.isfinite(run(model, tokenizer, processor, wide_image)).all()
