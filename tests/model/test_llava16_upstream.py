"""LLaVA-1.6 with ``--token-reduction none`` equals upstream 1.2.2's pipeline, computed here independently.

The oracle uses only transformers' ``CLIPVisionModel`` and ``LlamaForCausalLM``, the checkpoint's safetensors read
by hand, and upstream's anyres arithmetic written out plainly in upstream_anyres.py (best resolution, view /
permute / unpad / newline) and here (splicing). ``process_images`` is shared (it is pinned against upstream elsewhere).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from upstream_anyres import best_resolution, grid_tokens

from llava.mm_utils import process_images, tokenizer_image_token

PROMPT = "A chat between a curious human and an artificial intelligence assistant. USER: <image>\nWhat is it? ASSISTANT:"
TOWER = "model.vision_tower.vision_tower.vision_model."
LM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "pad_token_id", "bos_token_id",
           "eos_token_id")


def picture(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


class UpstreamOracle:
    """Upstream LLaVA 1.2.2's LLaVA-1.6 forward, from the checkpoint's files."""

    def __init__(self, folder):
        self.config = json.loads((folder / "config.json").read_text())
        weights = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
        vision_config = CLIPVisionConfig.from_pretrained(self.config["mm_vision_tower"])
        self.clip = CLIPVisionModel(vision_config).eval()
        clip_state = {k[len(TOWER):]: v for k, v in weights.items() if k.startswith(TOWER)}
        missing, unexpected = self.clip.load_state_dict(clip_state, strict=False)
        assert not unexpected and set(missing) <= {"embeddings.position_ids"}
        self.proj = [weights[f"model.mm_projector.{i}.{p}"] for i in (0, 2) for p in ("weight", "bias")]
        self.newline = weights["model.image_newline"]
        self.lm = LlamaForCausalLM(LlamaConfig(**{k: self.config[k] for k in LM_KEYS})).eval()
        lm_state = {k: v for k, v in weights.items() if k.startswith(("model.layers.", "model.embed_tokens",
                                                                       "model.norm", "lm_head"))}
        self.lm.load_state_dict(lm_state, strict=True)
        self.side = vision_config.image_size // vision_config.patch_size
        self.tile = vision_config.image_size

    def image_tokens(self, tiles, size):
        with torch.no_grad():
            hidden = self.clip(pixel_values=tiles, output_hidden_states=True).hidden_states[-2][:, 1:]
            w0, b0, w2, b2 = self.proj
            feats = torch.nn.functional.gelu(hidden @ w0.T + b0) @ w2.T + b2  # [T, 576, D]
        w, h = best_resolution(size, self.config["image_grid_pinpoints"])
        grid = grid_tokens(feats[1:], w // self.tile, h // self.tile, self.side, size, self.newline)
        return torch.cat((feats[0], grid), dim=0)

    def logits(self, ids, tiles, size):
        at = ids.index(-200)
        embed = self.lm.get_input_embeddings()
        visual = self.image_tokens(tiles, size)
        with torch.no_grad():
            embeds = torch.cat([embed(torch.tensor(ids[:at])), visual, embed(torch.tensor(ids[at + 1:]))])
            return self.lm(inputs_embeds=embeds[None]).logits[0], visual.shape[0]


SIZES = [(672, 672), (500, 300), (300, 700), (1000, 250)]


@pytest.fixture(scope="module")
def oracle(tiny16_checkpoint):
    return UpstreamOracle(tiny16_checkpoint)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_logits_equal_upstreams_pipeline(tiny16_loaded, oracle, size):
    tokenizer, model, image_processor, _ = tiny16_loaded
    image = picture(*size, seed=size[0])
    tiles = process_images([image], image_processor, model.config)  # [1, 1+T, 3, 336, 336]
    ids = tokenizer_image_token(PROMPT, tokenizer)
    expected, visual = oracle.logits(ids, tiles[0], image.size)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids]), images=tiles, image_sizes=[image.size]).logits[0]
    assert model.last_visual_token_counts == [visual]
    assert model.last_visual_patch_counts == [tiles.shape[1] * 576]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=2e-4)


def test_batch_of_mixed_aspect_ratios_equals_upstream_per_image(tiny16_loaded, oracle):
    """A list input (different tile counts) in one batch, right-padded as in training."""
    tokenizer, model, image_processor, _ = tiny16_loaded
    images = [picture(*s, seed=i) for i, s in enumerate(SIZES)]
    pixels = process_images(images, image_processor, model.config)
    assert isinstance(pixels, list) and len({p.shape[0] for p in pixels}) > 1
    ids = tokenizer_image_token(PROMPT, tokenizer)
    batch = torch.tensor([ids] * len(images))
    with torch.no_grad():
        got = model(input_ids=batch, images=pixels, image_sizes=[im.size for im in images]).logits
    for b, (image, tiles) in enumerate(zip(images, pixels)):
        expected, visual = oracle.logits(ids, tiles, image.size)
        torch.testing.assert_close(got[b, : expected.shape[0]], expected, atol=2e-4, rtol=2e-4)
        assert model.last_visual_token_counts[b] == visual


def test_the_checkpoints_finetuned_tower_runs_not_the_folders(tiny16_loaded, tiny16_checkpoint):
    _, model, _, _ = tiny16_loaded
    weights = load_file(tiny16_checkpoint / "model.safetensors")
    tower = model.get_vision_tower().vision_tower
    folder = CLIPVisionModel.from_pretrained(model.config.mm_vision_tower)
    state = tower.state_dict()
    tower_keys = [k for k in weights if k.startswith(TOWER)]
    assert len(tower_keys) == len([k for k in state if k != "embeddings.position_ids"])
    for key in tower_keys:
        name = key[len(TOWER):]
        assert torch.equal(state[name], weights[key].float()), name
    differing = [k for k, v in folder.state_dict().items() if k in state and not torch.equal(v, state[k])]
    assert len(differing) > len(tower_keys) // 2
    newline = model.get_model().image_newline
    assert torch.equal(newline.detach(), weights["model.image_newline"].float())
    assert model.config.tokenizer_model_max_length == 4096
