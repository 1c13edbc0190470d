"""llava.model.cost_model: hand-worked values for a tiny shape, parameter counts of real modules, and FLOPs
against torch's own counter (``torch.utils.flop_counter.FlopCounterMode``) on tiny real forwards."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava.model import cost_model as cm

# h 8, i 12, L 2, a 2 heads, k 1 kv head, d 4, V 10
TINY = {"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 10, "head_dim": 4}


def test_prefill_flops_by_hand():
    lm = cm.LMShape.from_config(TINY)
    got = cm.lm_prefill_flops(lm, tokens=3, batch=2)
    # rows B T = 6; q, o are 8 wide (a d), k, v 4 wide (k d)
    assert got["attention_proj"] == 2 * (2 * 6 * 8 * (8 + 8 + 4 + 4))  # 2 layers x 2304
    assert got["attention_scores"] == 2 * (2 * 2 * 2 * 2 * 4 * 3 * 3)  # 2 layers x 2 matmuls x 2 B a d T^2 = 1152
    assert got["mlp"] == 2 * (3 * 2 * 6 * 8 * 12)  # 2 layers x 3456
    assert got["lm_head"] == 2 * 2 * 8 * 10  # one row per sequence: 320
    assert got["total"] == 4608 + 1152 + 6912 + 320 == 12992
    assert cm.lm_prefill_flops(lm, 3, 2, logits="all")["lm_head"] == 2 * 6 * 8 * 10  # every row: 960
    # causal: 6 of the 9 (query, key) pairs
    assert cm.lm_prefill_flops(lm, 3, 2, causal=True)["attention_scores"] == 2 * (2 * 2 * 2 * 2 * 4 * 6)


def test_decode_kv_and_weights_by_hand():
    lm = cm.LMShape.from_config(TINY)
    step = cm.lm_decode_flops(lm, context=5, batch=2)
    assert step["attention_scores"] == 2 * (2 * 2 * 2 * 2 * 4 * 6)  # one query against 5 + 1 keys
    assert step["attention_proj"] == 2 * (2 * 2 * 8 * 24)
    assert cm.kv_cache_bytes(lm, tokens=3, batch=2, dtype=torch.float16) == 2 * 2 * 2 * 3 * 1 * 4 * 2  # 192
    assert cm.kv_cache_bytes(lm, 3, 2, dtype="float32") == 384
    # embed 80 + 2 layers x (64 q + 2 x 32 k, v + 64 o + 288 mlp + 16 norms) + final norm 8 + lm_head 80
    assert cm.lm_parameters(lm) == 80 + 2 * (64 + 64 + 64 + 288 + 16) + 8 + 80 == 1160
    assert cm.lm_parameters(cm.LMShape.from_config({**TINY, "tie_word_embeddings": True})) == 1080


def test_presets_have_the_released_sizes():
    assert cm.lm_parameters(cm.VICUNA_7B) == 6_738_415_616  # Llama-2-7B / Vicuna-7B-v1.5
    assert cm.lm_parameters(cm.VICUNA_13B) == 13_015_864_320  # Llama-2-13B / Vicuna-13B-v1.5
    assert cm.vision_parameters(cm.CLIP_VIT_L_336) == 303_507_456  # CLIP ViT-L/14 at 336 px (577 positions)
    assert cm.CLIP_VIT_L_336.num_patches == 576 and cm.CLIP_VIT_L_336.layers_run == 23
    # fp16 KV cache of Vicuna-7B: 2 x 32 layers x 4096 x 2 bytes = 512 KiB per position
    assert cm.kv_cache_bytes(cm.VICUNA_7B, 1) == 512 * 1024


def test_text_length_for_a_flops_figure_round_trips():
    lm = cm.VICUNA_7B
    target = cm.lm_prefill_flops(lm, 576 + 100)["total"]
    assert cm.text_tokens_for_flops(lm, target, 576) == pytest.approx(100, abs=1e-6)
    with_tower = cm.llava_prefill_cost(lm, cm.CLIP_VIT_L_336, 576, 100).total
    assert cm.text_tokens_for_flops(lm, with_tower, 576, vision=cm.CLIP_VIT_L_336) == pytest.approx(100, abs=1e-6)


def test_text_length_for_a_flops_ratio_round_trips():
    lm = cm.VICUNA_7B
    ratio = cm.lm_prefill_flops(lm, 576 + 250)["total"] / cm.lm_prefill_flops(lm, 32 + 250)["total"]
    assert cm.text_tokens_for_ratio(lm, ratio, 576, 32) == pytest.approx(250, abs=1e-6)
    at_zero = cm.lm_prefill_flops(lm, 576)["total"] / cm.lm_prefill_flops(lm, 32)["total"]
    assert cm.text_tokens_for_ratio(lm, at_zero, 576, 32) == pytest.approx(0, abs=1e-6)
    # more than the ratio with no text at all, or not a reduction: no text length gives it
    assert math.isnan(cm.text_tokens_for_ratio(lm, at_zero * 1.01, 576, 32))
    assert math.isnan(cm.text_tokens_for_ratio(lm, 0.5, 576, 32))


def test_missing_config_key_is_named():
    with pytest.raises(ValueError, match="intermediate_size"):
        cm.LMShape.from_config({k: v for k, v in TINY.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="dtype"):
        cm.bytes_per_element("float7")


# ---------------------------------------------------------------------------------------------------------------
# Against real modules
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def _counted(fn) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_prefill_and_decode_flops_equal_torchs_count(tiny_llama):
    """Eager attention (the counter does not see CPU SDPA kernels); GQA with 2 kv heads; exact equality."""
    lm = cm.LMShape.from_config(tiny_llama.config)
    ids = torch.randint(0, 101, (3, 17), generator=torch.Generator().manual_seed(0))
    assert _counted(lambda: tiny_llama(input_ids=ids, use_cache=False)) == cm.lm_prefill_flops(
        lm, 17, 3, logits="all")["total"]
    assert _counted(lambda: tiny_llama(input_ids=ids, use_cache=False, logits_to_keep=1)) == cm.lm_prefill_flops(
        lm, 17, 3)["total"]

    import inspect

    from transformers import DynamicCache

    cache = DynamicCache()
    # transformers >= 5.24 names the argument ``cache`` (``past_key_values`` before)
    name = "cache" if "cache" in inspect.signature(type(tiny_llama).forward).parameters else "past_key_values"
    with torch.inference_mode():
        tiny_llama(input_ids=ids, use_cache=True, logits_to_keep=1, **{name: cache})
    kv = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv == cm.kv_cache_bytes(lm, 17, 3, dtype=torch.float32)
    step = torch.randint(0, 101, (3, 1))
    assert _counted(lambda: tiny_llama(input_ids=step, use_cache=True, logits_to_keep=1,
                                       **{name: cache})) == cm.lm_decode_flops(lm, 17, 3)["total"]
    assert sum(p.numel() for p in tiny_llama.parameters()) == cm.lm_parameters(lm)


def test_vision_tower_and_projector_flops_equal_torchs_count(tiny_clip):
    """The LLaVA tower as it runs (select layer -2 of the tiny 336 px / patch 14 CLIP) and the mlp2x_gelu
    projector; parameters as loaded."""
    from types import SimpleNamespace

    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.model.multimodal_projector.builder import build_vision_projector

    args = SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_token_reduction="none",
                           mm_token_budget=None)
    tower = CLIPVisionTower(str(tiny_clip), args)
    tower.vision_tower.set_attn_implementation("eager")  # the counter does not see CPU SDPA kernels
    shape = cm.VisionShape.from_config(tower.config, select_layer=-2)
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    assert _counted(lambda: tower.selected_hidden_states(pixels)) == cm.vision_flops(shape, images=2)["total"]
    assert sum(p.numel() for p in tower.vision_tower.parameters()) == cm.vision_parameters(shape)

    projector = build_vision_projector(SimpleNamespace(mm_projector_type="mlp2x_gelu", mm_hidden_size=shape.hidden_size,
                                                       hidden_size=40))
    features = torch.randn(37, shape.hidden_size)
    assert _counted(lambda: projector(features)) == cm.projector_flops(shape.hidden_size, 40, 37)
    assert sum(p.numel() for p in projector.parameters()) == cm.projector_parameters(shape.hidden_size, 40)
