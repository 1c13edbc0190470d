"""``load_pretrained_model``: every path upstream LLaVA users take, each written to disk first, then loaded.

Folders are built in the test from the tiny checkpoint: a plain Llama base LM ("vicuna-tiny"), a LoRA run
(real PEFT adapter + ``non_lora_trainables``), a projector-only pretraining run (``mm_projector.bin``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from loading_helpers import PEFT_RENAME_WARNING, copy_checkpoint, load, logits_of, perturb_
from transformers import LlamaForCausalLM

from llava.mm_utils import process_images
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.builder import load_llava_config, load_pretrained_model


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


# ---------------------------------------------------------------- devices, plain LM + LoRA, tokenizer


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


# ---------------------------------------------------------------- (h) other from_pretrained arguments


def test_unknown_kwargs_go_to_from_pretrained_as_upstream(tiny_checkpoint, tmp_path):
    """cache_dir / revision / local_files_only reach from_pretrained (and the tokenizer); a misspelt argument
    reaches it too and fails there, as upstream, instead of being dropped with a warning."""
    tokenizer, model, _, _ = load(tiny_checkpoint, cache_dir=str(tmp_path / "cache"), revision="main",
                                  local_files_only=True)
    assert model.config.mm_vision_tower and len(tokenizer) == model.config.vocab_size
    with pytest.raises(TypeError, match="unexpected keyword argument 'load_in_8bitt'"):
        load(tiny_checkpoint, load_in_8bitt=True)
    with pytest.raises(ValueError, match="trust_remote_code=True is refused"):
        load(tiny_checkpoint, trust_remote_code=True)
