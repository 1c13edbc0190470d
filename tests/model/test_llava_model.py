"""The LLaVA causal LM end to end on the tiny checkpoint: forward, loss, gradients, generation, batching, Mistral.

Oracles: greedy generation is checked against a plain loop that runs ``forward`` on the whole sequence (no cache)
and takes the argmax; batched generation against one prompt at a time.
"""

from __future__ import annotations

import pytest
import torch
from loading_helpers import reduction
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LlavaMistralConfig, LlavaMistralForCausalLM
from llava.model.token_reduction import TokenReduction

PROMPTS = [
    "USER: <image>\nWhat is this? ASSISTANT:",
    "USER: <image>\nDescribe the picture in many words, with the colours and the shapes. ASSISTANT:",
    "USER: <image>\nWhy? ASSISTANT:",
]


@pytest.fixture(scope="module")
def three_images(tiny_loaded, demo_image):
    _, model, image_processor, _ = tiny_loaded
    pixels = process_images([demo_image], image_processor, model.config)  # [1, 3, 336, 336]
    return torch.cat([pixels, pixels.flip(-1), pixels.flip(-2)], dim=0)  # [3, 3, 336, 336]


def greedy_oracle(model, prompt_ids: list[int], images, steps: int) -> list[int]:
    """Greedy decoding the slow way: full forward (no cache) on prompt + tokens so far, argmax of the last row."""
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([prompt_ids + tokens])
            logits = model(input_ids=ids, images=images, use_cache=False).logits
            tokens.append(int(logits[0, -1].argmax()))
    return tokens


@pytest.mark.parametrize("mode", ["none", "prumerge", "prumerge+"])
def test_batched_left_padded_generation_equals_one_at_a_time(tiny_loaded, three_images, mode):
    tokenizer, model, _, _ = tiny_loaded
    ids = [tokenizer_image_token(p, tokenizer) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # three different prompt lengths

    with reduction(model, mode):
        singles, single_counts = [], []
        for k, i in enumerate(ids):
            new = model.generate(torch.tensor([i]), images=three_images[k : k + 1], max_new_tokens=6, do_sample=False)
            singles.append(new[0].tolist())
            single_counts += model.last_visual_token_counts

        saved_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        finally:
            tokenizer.padding_side = saved_side
        assert batch["attention_mask"][:, 0].tolist().count(0) == 2  # two prompts are left-padded
        batched = model.generate(
            batch["input_ids"], images=three_images, attention_mask=batch["attention_mask"],
            max_new_tokens=6, do_sample=False,
        )
        assert model.last_visual_token_counts == single_counts

    assert batched.shape == (3, 6)  # only the new tokens
    assert batched.tolist() == singles
    # the checkpoint's config says "right" (training); generation must still pad the spliced prompts left
    assert model.config.tokenizer_padding_side == "right"
    if mode == "none":
        assert single_counts == [576, 576, 576]
    else:
        assert all(1 < c < 576 for c in single_counts)


@pytest.mark.parametrize("mode", ["none", "prumerge"])
def test_greedy_generate_matches_a_plain_forward_loop(tiny_loaded, three_images, mode):
    tokenizer, model, _, _ = tiny_loaded
    prompt = tokenizer_image_token(PROMPTS[0], tokenizer)
    with reduction(model, mode):
        expected = greedy_oracle(model, prompt, three_images[:1], steps=4)
        out = model.generate(
            torch.tensor([prompt]), images=three_images[:1], image_sizes=[(640, 480)], max_new_tokens=4,
            do_sample=False,
        )
    assert out.tolist() == [expected]


def test_generate_computes_the_logits_of_the_last_position_only(tiny_loaded, three_images):
    """The prefill of ``generate`` reads the lm_head on one row per prompt (``logits_to_keep=1``), not on every
    position: ``[B, T, V]`` float32 logits of a long anyres prompt would cost gigabytes for nothing. A plain
    forward still returns every position's logits."""
    tokenizer, model, _, _ = tiny_loaded
    prompt = torch.tensor([tokenizer_image_token(PROMPTS[1], tokenizer)] * 2)
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape))
    try:
        model.generate(prompt, images=three_images[:2], image_sizes=[(640, 480)] * 2, max_new_tokens=3,
                       do_sample=False)
        assert rows == [torch.Size([2, 1, model.config.hidden_size])] * 3  # prefill, then two decode steps
        rows.clear()
        with torch.no_grad():
            logits = model(input_ids=prompt, images=three_images[:2]).logits
    finally:
        handle.remove()
    assert logits.shape[:2] == (2, rows[0][1]) and rows[0][1] > prompt.shape[1]  # every position, image included


def test_text_only_generate(tiny_loaded):
    tokenizer, model, _, _ = tiny_loaded
    prompt = tokenizer_image_token("USER: Tell me a story. ASSISTANT:", tokenizer)
    assert IMAGE_TOKEN_INDEX not in prompt
    expected = greedy_oracle(model, prompt, None, steps=4)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)
    assert out.tolist() == [expected]
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=4,
        do_sample=False,
    )
    assert out.tolist() == [expected]


def test_generate_with_beams(tiny_loaded, three_images):
    tokenizer, model, _, _ = tiny_loaded
    prompt = torch.tensor([tokenizer_image_token(PROMPTS[1], tokenizer)])
    out = model.generate(
        prompt, images=three_images[:1], image_sizes=[(640, 480)], max_new_tokens=5, do_sample=False, num_beams=2,
    )
    assert out.dim() == 2 and out.shape[0] == 1 and 1 <= out.shape[1] <= 5
    assert (out >= 0).all() and (out < model.config.vocab_size).all()


@pytest.fixture()
def trainable_model(tiny_checkpoint):
    """A private copy (gradients are written into it)."""
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(tiny_checkpoint), None, "llava-v1.5-tiny", device="cpu"
    )
    return tokenizer, model, image_processor


@pytest.mark.parametrize("mode", ["none", "prumerge"])
def test_forward_with_labels_gives_finite_loss_and_projector_gradients(trainable_model, demo_image, mode):
    tokenizer, model, image_processor = trainable_model
    model.train()
    model.get_vision_tower().set_token_reduction(TokenReduction(mode))
    pixels = process_images([demo_image, demo_image.rotate(90)], image_processor, model.config)
    texts = ["USER: <image>\nWhat is it? ASSISTANT: A cat.", "USER: <image>\nAnd this? ASSISTANT: A longer answer."]
    ids = [tokenizer_image_token(t, tokenizer) for t in texts]
    longest = max(len(i) for i in ids)
    input_ids = torch.full((2, longest), tokenizer.pad_token_id)
    mask = torch.zeros(2, longest, dtype=torch.long)
    for b, i in enumerate(ids):
        input_ids[b, : len(i)] = torch.tensor(i)
        mask[b, : len(i)] = 1
    labels = torch.where(mask.bool() & (input_ids != IMAGE_TOKEN_INDEX), input_ids, IGNORE_INDEX)

    out = model(input_ids=input_ids, attention_mask=mask, labels=labels, images=pixels)
    assert torch.isfinite(out.loss)
    out.loss.backward()

    projector_grads = [p.grad for p in model.get_model().mm_projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in projector_grads)
    assert all(g.abs().sum() > 0 for g in projector_grads)
    # the CLIP tower is frozen
    assert all(p.grad is None for p in model.get_vision_tower().parameters())


def test_forward_accepts_newer_kwargs(tiny_loaded, three_images):
    tokenizer, model, _, _ = tiny_loaded
    ids = torch.tensor([tokenizer_image_token(PROMPTS[0], tokenizer)])
    with torch.no_grad():
        full = model(input_ids=ids, images=three_images[:1], return_dict=True).logits
        last = model(
            input_ids=ids, images=three_images[:1], logits_to_keep=1, cache_position=None, return_dict=True
        ).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, -1], full[:, -1])


# ---------------------------------------------------------------- Mistral


def tiny_mistral_config(tiny_clip) -> LlavaMistralConfig:
    return LlavaMistralConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=None,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        mm_vision_tower=str(tiny_clip),
        mm_hidden_size=48,
        mm_projector_type="mlp2x_gelu",
        mm_token_reduction="none",
    )


def test_llava_mistral_builds_saves_and_reloads_through_auto_classes(tiny_clip, tmp_path):
    torch.manual_seed(0)
    model = LlavaMistralForCausalLM(tiny_mistral_config(tiny_clip)).eval()
    assert [n for n, _ in model.get_model().mm_projector.named_parameters()] == [
        "0.weight", "0.bias", "2.weight", "2.bias"
    ]
    model.get_model().get_vision_tower().load_model()
    model.save_pretrained(tmp_path / "llava-mistral-tiny")

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "llava-mistral-tiny").eval()
    assert type(reloaded) is LlavaMistralForCausalLM
    assert reloaded.config.model_type == "llava_mistral"
    assert reloaded.config.mm_projector_type == "mlp2x_gelu" and reloaded.config.mm_hidden_size == 48
    reloaded.get_vision_tower().load_model()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)

    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[1, 17, IMAGE_TOKEN_INDEX, 18, 19]])
    with torch.no_grad():
        expected = model(input_ids=ids, images=pixels).logits
        logits = reloaded(input_ids=ids, images=pixels).logits
    assert logits.shape == (1, 4 + 576, 1000)  # 4 text tokens + 576 patches (reduction "none")
    torch.testing.assert_close(logits, expected)
    new = reloaded.generate(ids, images=pixels, max_new_tokens=3, do_sample=False)
    assert new.shape == (1, 3)


def test_llava_mistral_through_load_pretrained_model(tiny_clip, tiny_checkpoint, tmp_path):
    from llava.model.builder import load_pretrained_model

    torch.manual_seed(0)
    model = LlavaMistralForCausalLM(tiny_mistral_config(tiny_clip)).eval()
    folder = tmp_path / "llava-v1.6-mistral-tiny"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(folder)

    _, loaded, image_processor, _ = load_pretrained_model(str(folder), None, folder.name, device="cpu")

    assert type(loaded) is LlavaMistralForCausalLM and image_processor is not None
    assert loaded.get_vision_tower().token_reduction.mode == "none"  # from the config key
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[1, 17, IMAGE_TOKEN_INDEX, 18, 19]])
    model.get_vision_tower().load_model()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, images=pixels).logits,
                                   model(input_ids=ids, images=pixels).logits)


def test_training_batch_with_a_text_only_sample_and_its_placeholder_image(trainable_model, demo_image):
    """Upstream's collator stacks a placeholder image for each text-only sample: images = <image>s + text-only."""
    tokenizer, model, image_processor = trainable_model
    model.train()
    pixels = process_images([demo_image], image_processor, model.config)
    placeholder = torch.zeros_like(pixels)
    with_image = tokenizer_image_token("USER: <image>\nWhat is it? ASSISTANT: A cat.", tokenizer)
    text_only = tokenizer_image_token("USER: Say hi. ASSISTANT: Hi.", tokenizer)
    longest = max(len(with_image), len(text_only))
    input_ids = torch.full((2, longest), tokenizer.pad_token_id)
    mask = torch.zeros(2, longest, dtype=torch.long)
    for b, ids in enumerate([text_only, with_image]):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
    labels = torch.where(mask.bool() & (input_ids != IMAGE_TOKEN_INDEX), input_ids, IGNORE_INDEX)

    # images in sample order: the text-only sample's placeholder first, then the real image
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels, images=torch.cat([placeholder, pixels]))
    assert torch.isfinite(out.loss)
    n_visual = model.last_visual_token_counts[1]
    assert out.logits.shape[1] == len(with_image) - 1 + n_visual  # the placeholder adds no tokens
    out.loss.backward()
    assert all(p.grad is not None for p in model.get_model().mm_projector.parameters())

    with pytest.raises(ValueError, match=r"1 <image> tokens .* 3 images were given"):
        model(input_ids=input_ids, attention_mask=mask, images=torch.cat([placeholder, pixels, pixels]))
