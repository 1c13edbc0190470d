"""``load_pretrained_model``: every path upstream LLaVA users take, each written to disk first, then loaded.

Folders are built in the test from the tiny checkpoint: a plain Llama base LM ("vicuna-tiny"), a LoRA run
(real PEFT adapter + ``non_lora_trainables``), a projector-only pretraining run (``mm_projector.bin``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.builder import load_llava_config, load_pretrained_model

PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"
# peft 0.21 calls a transformers method that transformers 5.23 renamed; nothing to act on here
PEFT_RENAME_WARNING = "ignore:.*is_gradient_checkpointing.*:FutureWarning"
LM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "pad_token_id", "bos_token_id",
           "eos_token_id")


def load(path, base=None, name=None, **kwargs):
    path = Path(path)
    return load_pretrained_model(str(path), None if base is None else str(base), name or path.name,
                                 device="cpu", **kwargs)


def copy_checkpoint(src: Path, dst: Path, **config_updates) -> Path:
    shutil.copytree(src, dst)
    if config_updates:
        data = json.loads((dst / "config.json").read_text())
        data.update(config_updates)
        (dst / "config.json").write_text(json.dumps(data, indent=2))
    return dst


def perturb_(module: torch.nn.Module, seed: int, std: float = 0.3) -> dict[str, torch.Tensor]:
    """Fill every parameter of ``module`` with fresh random values; return copies of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint, demo_image):
    """Prompt ids ``[1, T]`` and pixels ``[1, 3, 336, 336]`` for the tiny checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = torch.tensor([tokenizer_image_token(PROMPT, tokenizer)])
    config = load_llava_config(tiny_checkpoint)
    processor = AutoImageProcessor.from_pretrained(config.mm_vision_tower, backend="pil")
    return ids, process_images([demo_image], processor, config)


def logits_of(model, inputs) -> torch.Tensor:
    ids, pixels = inputs
    with torch.no_grad():
        return model(input_ids=ids, images=pixels).logits


@pytest.fixture(scope="module")
def base_lm(tiny_checkpoint, tmp_path_factory) -> Path:
    """A plain Llama LM (no vision keys) holding the tiny checkpoint's language-model weights."""
    folder = tmp_path_factory.mktemp("bases") / "vicuna-tiny"
    data = json.loads((tiny_checkpoint / "config.json").read_text())
    weights = load_file(tiny_checkpoint / "model.safetensors")
    lm_weights = {k: v.float() for k, v in weights.items() if "mm_projector" not in k}
    model = LlamaForCausalLM(LlamaConfig(**{k: data[k] for k in LM_KEYS}))
    model.load_state_dict(lm_weights, strict=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- (a) full checkpoint


def test_full_fp16_checkpoint_loads_as_fp32_on_cpu(tiny_checkpoint, inputs, demo_image):
    data = json.loads((tiny_checkpoint / "config.json").read_text())
    assert data["model_type"] == "llava" and data["torch_dtype"] == "float16"
    file_weights = load_file(tiny_checkpoint / "model.safetensors")
    assert {v.dtype for v in file_weights.values()} == {torch.float16}

    tokenizer, model, image_processor, context_len = load(tiny_checkpoint)

    assert type(model) is LlavaLlamaForCausalLM and isinstance(model.config, LlavaConfig)
    assert not model.training
    assert context_len == 2048
    assert model.dtype == torch.float32
    tower = model.get_vision_tower()
    assert tower.is_loaded and tower.dtype == torch.float32
    state = model.state_dict()
    for name, value in file_weights.items():
        assert state[name].dtype == torch.float32
        assert torch.equal(state[name], value.float()), name
    assert image_processor.crop_size == {"height": 336, "width": 336}
    # no "not implemented for 'Half'": a forward and a generate run on the CPU
    ids, pixels = inputs
    new = model.generate(ids, images=process_images([demo_image], image_processor, model.config),
                         max_new_tokens=3, do_sample=False)
    assert new.shape == (1, 3)
    assert tokenizer.decode(new[0])  # decodes


def test_float16_pixels_on_a_float32_model(tiny_loaded, inputs):
    """lmms-eval casts pixels to float16 whatever the model's dtype: the projector must still get its dtype."""
    _, model, _, _ = tiny_loaded
    ids, pixels = inputs
    with torch.no_grad():
        expected = model(input_ids=ids, images=pixels).logits
        got = model(input_ids=ids, images=pixels.half()).logits
        got_bf16 = model(input_ids=ids, images=pixels.bfloat16()).logits
    assert got.dtype == torch.float32
    assert got.shape == expected.shape and got_bf16.shape == expected.shape
    assert (got[0, -1].argmax() == expected[0, -1].argmax()).item()


# ---------------------------------------------------------------- (b) LoRA + base


# "regex": the LM's attention only. "suffixes": what upstream's find_all_linear_names gives; PEFT then also
# wraps the (loaded) CLIP tower's q_proj / v_proj, and the adapter file carries weights for them.
LORA_TARGETS = {
    "regex": r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
    "suffixes": ["q_proj", "v_proj"],
}


def write_lora_run(tiny_checkpoint: Path, folder: Path, inputs, non_lora_format: str, targets: str = "regex"):
    """Write a LoRA run like upstream's train.py does; return (expected logits, saved projector)."""
    from peft import LoraConfig, get_peft_model

    _, model, _, _ = load(tiny_checkpoint)
    projector = perturb_(model.get_model().mm_projector, seed=11)
    lora_config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=LORA_TARGETS[targets]
    )
    peft_model = get_peft_model(model, lora_config)
    generator = torch.Generator().manual_seed(12)
    with torch.no_grad():
        # the CLIP tower's LoRA (suffixes) stays at its zero init: upstream's loader drops it (the tower is not
        # loaded when the adapter is merged), so it must not change the oracle
        lora_params = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n and "vision_tower" not in n]
        assert len(lora_params) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
        for _, param in lora_params:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.eval()
    expected = logits_of(peft_model, inputs)  # the un-merged PEFT model is the oracle
    with peft_model.disable_adapter():
        without_adapter = logits_of(peft_model, inputs)
    assert not torch.allclose(expected, without_adapter, atol=1e-3)  # the adapter matters

    peft_model.save_pretrained(folder)
    model.config.save_pretrained(folder)
    non_lora = {f"base_model.model.model.mm_projector.{k}": v.clone() for k, v in projector.items()}
    if non_lora_format == "bin":
        torch.save(non_lora, folder / "non_lora_trainables.bin")
    else:
        save_file(non_lora, folder / "non_lora_trainables.safetensors")
    assert (folder / "adapter_config.json").is_file()
    return expected, projector


@pytest.mark.filterwarnings(PEFT_RENAME_WARNING)
@pytest.mark.parametrize(("non_lora_format", "targets"), [("bin", "regex"), ("safetensors", "regex"),
                                                           ("bin", "suffixes")])
def test_lora_checkpoint_with_base_is_merged(tiny_checkpoint, base_lm, inputs, tmp_path, non_lora_format, targets):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    expected, projector = write_lora_run(tiny_checkpoint, folder, inputs, non_lora_format, targets)
    if targets == "suffixes":
        assert any("vision_tower" in k for k in load_file(folder / "adapter_model.safetensors"))

    tokenizer, model, image_processor, _ = load(folder, base=base_lm)

    assert type(model) is LlavaLlamaForCausalLM  # merged and unwrapped
    assert not any("lora" in name for name in model.state_dict())
    assert image_processor is not None and len(tokenizer) == model.config.vocab_size
    for key, value in projector.items():
        assert torch.equal(model.get_model().mm_projector.state_dict()[key], value), key
    base_weights = load_file(base_lm / "model.safetensors")
    state = model.state_dict()
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight"):  # no LoRA there
        assert torch.equal(state[key], base_weights[key]), key
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[q_proj], base_weights[q_proj])  # the adapter was merged in
    torch.testing.assert_close(logits_of(model, inputs), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- (c) projector + base


def test_projector_only_checkpoint_with_base(tiny_checkpoint, base_lm, inputs, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-pretrain"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    generator = torch.Generator().manual_seed(5)
    # shapes of mlp2x_gelu from C=48 to D=64; saved in float16 as pretraining runs do
    saved = {
        "model.mm_projector.0.weight": torch.randn(64, 48, generator=generator).half(),
        "model.mm_projector.0.bias": torch.randn(64, generator=generator).half(),
        "model.mm_projector.2.weight": torch.randn(64, 64, generator=generator).half(),
        "model.mm_projector.2.bias": torch.randn(64, generator=generator).half(),
    }
    torch.save(saved, folder / "mm_projector.bin")

    _, model, image_processor, _ = load(folder, base=base_lm)

    assert image_processor is not None
    state = model.state_dict()
    for key, value in saved.items():
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], value.float()), key
    base_weights = load_file(base_lm / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.equal(state[key], base_weights[key]), key
    assert torch.isfinite(logits_of(model, inputs)).all()


def test_projector_file_with_foreign_keys_is_an_error(tiny_checkpoint, base_lm, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-pretrain"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    torch.save({"model.mm_projector.9.weight": torch.zeros(3)}, folder / "mm_projector.bin")
    with pytest.raises(ValueError, match=r"mm_projector\.bin.*do not belong.*mm_projector\.9\.weight"):
        load(folder, base=base_lm)


# ---------------------------------------------------------------- (d) plain language model


def test_plain_language_model(base_lm):
    data = json.loads((base_lm / "config.json").read_text())
    assert "mm_vision_tower" not in data and "llava" not in base_lm.name

    tokenizer, model, image_processor, context_len = load(base_lm)

    assert image_processor is None
    assert type(model) is LlamaForCausalLM
    assert context_len == 2048
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_multimodal_flag_forces_the_llava_path(base_lm):
    """lmms-eval passes multimodal=True: then a config without mm_vision_tower is an error, not a plain LM."""
    with pytest.raises(ValueError, match=r"config\.json: key mm_vision_tower is missing"):
        load(base_lm, multimodal=True)


# ---------------------------------------------------------------- (e) 8-bit / 4-bit on the CPU


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_loading_on_cpu_generates(tiny_checkpoint, inputs, bits):
    import bitsandbytes as bnb

    _, model, _, _ = load(tiny_checkpoint, load_8bit=bits == 8, load_4bit=bits == 4)

    q_proj = model.get_model().layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit)
    projector = model.get_model().mm_projector
    assert type(projector[0]) is torch.nn.Linear and projector[0].weight.dtype == torch.float32
    ids, pixels = inputs
    new = model.generate(ids, images=pixels, max_new_tokens=3, do_sample=False)
    assert new.shape == (1, 3)
    assert ((new >= 0) & (new < model.config.vocab_size)).all()


# ---------------------------------------------------------------- (f) lmms-eval kwargs, (g) flash-attn fallback


def test_lmms_eval_kwargs_are_honoured(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "tiny-mm-model")  # no "llava" in the name
    custom = load_llava_config(tiny_checkpoint)
    custom.tokenizer_model_max_length = 77

    _, model, image_processor, _ = load(
        folder, multimodal=True, device_map="cpu", attn_implementation="eager", torch_dtype="float32",
        overwrite_config={"tokenizer_padding_side": "left", "mm_vision_select_layer": -3},
        customized_config=custom,
    )

    assert image_processor is not None
    assert model.config._attn_implementation == "eager"
    assert model.dtype == torch.float32
    assert model.config.tokenizer_padding_side == "left"
    assert model.config.tokenizer_model_max_length == 77  # from customized_config
    assert model.get_vision_tower().select_layer == -3


def test_attn_implementation_and_dtype_kwargs(tiny_checkpoint):
    _, model, _, _ = load(tiny_checkpoint, attn_implementation="sdpa", torch_dtype="bfloat16")
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.bfloat16
    assert model.get_vision_tower().dtype == torch.bfloat16


def test_customized_config_as_a_json_path(tiny_checkpoint, tmp_path):
    data = json.loads((tiny_checkpoint / "config.json").read_text())
    data["tokenizer_model_max_length"] = 99
    custom = tmp_path / "custom_config.json"
    custom.write_text(json.dumps(data))
    _, model, _, _ = load(tiny_checkpoint, customized_config=str(custom))
    assert model.config.tokenizer_model_max_length == 99


@pytest.mark.parametrize("kwargs", [{"use_flash_attn": True}, {"use_flash_attention_2": True}])
def test_flash_attn_on_cpu_falls_back_to_sdpa(tiny_checkpoint, caplog, kwargs):
    caplog.set_level(logging.INFO, logger="llava")
    _, model, _, _ = load(tiny_checkpoint, **kwargs)
    assert model.config._attn_implementation == "sdpa"
    messages = [r.getMessage() for r in caplog.records if r.name == "llava.model.builder"]
    assert any("flash-attn" in m and "sdpa" in m for m in messages), messages


# ---------------------------------------------------------------- (h) token reduction from kwargs, config, name


def reduction_of(model):
    return model.get_vision_tower().token_reduction


def test_token_reduction_default_is_logged_once(tiny_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="llava")
    _, model, _, _ = load(tiny_checkpoint)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "prumerge", None, "default"
    )
    messages = [r.getMessage() for r in caplog.records if "token reduction" in r.getMessage()]
    assert len(messages) == 1, messages
    assert "prumerge" in messages[0] and "default" in messages[0]


def test_token_reduction_kwargs(tiny_checkpoint, inputs, caplog):
    caplog.set_level(logging.INFO, logger="llava")
    _, model, _, _ = load(tiny_checkpoint, token_reduction="none")
    assert (reduction_of(model).mode, reduction_of(model).source) == ("none", "flag")
    assert model.config.mm_token_reduction == "none"

    _, model, _, _ = load(tiny_checkpoint, token_reduction="prumerge_plus", token_budget=8)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "prumerge+", 8, "flag"
    )
    logits_of(model, inputs)
    assert model.last_visual_token_counts == [9]  # 8 centres + the extra token
    messages = [r.getMessage() for r in caplog.records if "token reduction" in r.getMessage()]
    assert len(messages) == 2  # once per load


def test_token_reduction_config_keys(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-v1.5-tiny",
                             mm_token_reduction="prumerge+", mm_token_budget=16)
    _, model, _, _ = load(folder)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "prumerge+", 16, "config"
    )
    # the flag beats the config
    _, model, _, _ = load(folder, token_reduction="none", token_budget=4)
    assert (reduction_of(model).mode, reduction_of(model).budget, reduction_of(model).source) == (
        "none", 4, "flag"
    )


@pytest.mark.parametrize("name", ["llava-v1.5-tiny-prumerge-plus", "llava-v1.5-tiny-prumerge_plus-lora-merged"])
def test_token_reduction_checkpoint_name_rule(tiny_checkpoint, tmp_path, name):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / name)
    _, model, _, _ = load(folder, name=name.replace("-lora", ""))
    assert (reduction_of(model).mode, reduction_of(model).source) == ("prumerge+", "checkpoint name")


def test_token_reduction_config_beats_name_and_parents_do_not_count(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-tiny-prumerge-plus", mm_token_reduction="prumerge")
    _, model, _, _ = load(folder)
    assert (reduction_of(model).mode, reduction_of(model).source) == ("prumerge", "config")

    # a plain checkpoint that lives under a folder named like a PruMerge+ run is a plain checkpoint
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "prumerge-plus-runs" / "llava-v1.5-tiny")
    _, model, _, _ = load(folder)
    assert (reduction_of(model).mode, reduction_of(model).source) == ("prumerge", "default")


def test_unknown_token_reduction_kwarg(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"unknown --token-reduction 'fast'.*'none', 'prumerge', 'prumerge\+'"):
        load(tiny_checkpoint, token_reduction="fast")
    with pytest.raises(ValueError, match=r"--token-budget must be a positive integer or null, got 0"):
        load(tiny_checkpoint, token_budget=0)


# ---------------------------------------------------------------- bad input


def test_missing_model_path(tiny_checkpoint, tmp_path):
    missing = tmp_path / "llava-v1.5-7b-nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"model_path '{missing}' does not exist")):
        load(missing)
    with pytest.raises(FileNotFoundError, match="model_base '/no/such/vicuna' does not exist"):
        load(tiny_checkpoint, base="/no/such/vicuna", name="llava-v1.5-tiny-lora")


def test_config_without_vision_tower(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-broken")
    data = json.loads((folder / "config.json").read_text())
    del data["mm_vision_tower"]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        load(folder)
    assert str(folder / "config.json") in str(info.value)
    assert "mm_vision_tower is missing" in str(info.value)


def test_vision_tower_pointing_at_a_missing_folder(tiny_checkpoint, tmp_path):
    gone = tmp_path / "gone" / "clip-vit-large-patch14-336"
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-moved", mm_vision_tower=str(gone))
    with pytest.raises(FileNotFoundError) as info:
        load(folder)
    assert "mm_vision_tower" in str(info.value) and str(gone) in str(info.value)
    assert str(folder / "config.json") in str(info.value)


def test_invalid_json_config(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llava-badjson")
    (folder / "config.json").write_text('{\n  "model_type": "llava",\n  "hidden_size": 64,,\n}\n')
    with pytest.raises(ValueError) as info:
        load(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and "line 3" in message, message


def test_corrupt_non_lora_trainables(tiny_checkpoint, base_lm, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    (folder / "non_lora_trainables.bin").write_bytes(b"this is not a torch pickle")
    with pytest.raises(ValueError) as info:
        load(folder, base=base_lm)
    assert str(folder / "non_lora_trainables.bin") in str(info.value)


def test_lora_without_non_lora_trainables(tiny_checkpoint, base_lm, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match="non_lora_trainables"):
        load(folder, base=base_lm)


def test_lora_without_model_base(tiny_checkpoint, tmp_path):
    folder = tmp_path / "llava-v1.5-tiny-lora"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint / "config.json", folder / "config.json")
    with pytest.raises(ValueError, match=r"LoRA checkpoint .*--model-base"):
        load(folder)


def test_config_without_weights(tiny_checkpoint, tmp_path):
    folder = tmp_path / "llava-no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny_checkpoint / name, folder / name)
    with pytest.raises(OSError, match=re.escape(f"could not load model weights from {folder}")):
        load(folder)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_default_cuda_device_falls_back_to_cpu_float32(tiny_checkpoint, caplog):
    caplog.set_level(logging.WARNING, logger="llava")
    _, model, _, _ = load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny")  # device="cuda"
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert any("CUDA is not available" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings(PEFT_RENAME_WARNING)
def test_lora_on_a_plain_language_model(base_lm, tmp_path):
    """No "llava" in the name: a plain LM with its LoRA adapter merged (upstream's last branch)."""
    from peft import LoraConfig, get_peft_model

    tokenizer, model, _, _ = load(base_lm)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.eval()
    ids = tokenizer("A plain prompt", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    folder = tmp_path / "vicuna-tiny-lora"
    peft_model.save_pretrained(folder)

    _, merged, image_processor, _ = load(folder, base=base_lm)

    assert image_processor is None and type(merged) is LlamaForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_loader_tokenizes_like_the_sentencepiece_model(tiny_checkpoint):
    """config.json says model_type "llava": the tokenizer must still be the declared Llama one, giving the ids of
    the checkpoint's own sentencepiece model (AutoTokenizer alone would give '<s> T he' for 'The')."""
    import sentencepiece as spm

    tokenizer, _, _, _ = load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny", device="cpu")
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint / "tokenizer.model"))
    for text in ("The cat", "USER: What is the color of the dog? ASSISTANT:", "A chat between a curious user"):
        assert tokenizer(text).input_ids == [sp.bos_id(), *sp.encode(text)]
