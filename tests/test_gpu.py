"""CUDA paths: fp16 loading, bf16/fp16 PruMerge, flash-attn choice. Marked ``gpu``; they skip on machines without
CUDA (everything they exercise also runs on the CPU in the rest of the suite, in fp32)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_fp16_load_and_generate_on_cuda(tiny_checkpoint, demo_image):
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny",
                                                           device="cuda")
    assert model.dtype == torch.float16 and model.device.type == "cuda"
    assert model.get_vision_tower().dtype == torch.float16
    pixels = process_images([demo_image], processor, model.config).to("cuda", torch.float16)
    ids = tokenizer_image_token("USER: <image>\nWhat? ASSISTANT:", tokenizer, return_tensors="pt")[None].cuda()
    out = model.generate(ids, images=pixels, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4)
    assert 1 < model.last_visual_token_counts[0] < 576


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("plus", [False, True])
def test_prumerge_on_cuda_matches_cpu_fp32(dtype, plus):
    from llava.model.multimodal_encoder.prumerge import prumerge

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(4, 576, 64, generator=gen)
    keys = torch.randn(4, 576, 64, generator=gen)
    attn = torch.softmax(torch.randn(4, 576, generator=gen) * 1.5, dim=-1)
    ref = prumerge(features, keys, attn, plus=plus)
    got = prumerge(features.cuda().to(dtype), keys.cuda().to(dtype), attn.cuda(), plus=plus)
    for r_kept, g_kept, r_tok, g_tok in zip(ref.kept, got.kept, ref.tokens, got.tokens):
        assert torch.equal(r_kept, g_kept.cpu())
        torch.testing.assert_close(g_tok.float().cpu(), r_tok, atol=0.1, rtol=0.05)


def test_flash_attention_choice_on_cuda():
    from llava.model.builder import choose_attn_implementation

    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert choose_attn_implementation(True, None, "cuda") == expected
