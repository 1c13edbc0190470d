"""``CLIPVisionTower`` on the tiny full-CLIP checkpoint (336 px, patch 14: 576 patches, width 48, 3 layers).

Oracles: the full ``CLIPVisionModel`` run with ``output_hidden_states=True``; for PruMerge, the q/k outputs of
the last layer captured with forward hooks on the full model, scored with the published formula written out
here, then fed to ``prumerge``.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel

from llava.model import LlavaConfig
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_encoder.prumerge import prumerge
from llava.model.token_reduction import TokenReduction

WIDTH, LAYERS, PATCHES = 48, 3, 576


def tower_config(tiny_clip, **overrides) -> LlavaConfig:
    fields = dict(mm_vision_tower=str(tiny_clip), mm_token_reduction="none")
    fields.update(overrides)
    return LlavaConfig(**fields)


def make_tower(tiny_clip, **overrides) -> CLIPVisionTower:
    return build_vision_tower(tower_config(tiny_clip, **overrides))


@pytest.fixture(scope="module")
def full_clip(tiny_clip):
    return CLIPVisionModel.from_pretrained(tiny_clip).eval()


@pytest.fixture(scope="module")
def pixels(tiny_clip, demo_image):
    """``[2, 3, 336, 336]``: the demo image and its mirror image, as the tower's processor prepares them."""
    tower = make_tower(tiny_clip)
    one = tower.image_processor.preprocess(demo_image, return_tensors="pt")["pixel_values"]
    return torch.cat([one, one.flip(-1)], dim=0)


class CallCounter:
    """Forward hooks (in the test only) counting each module's calls and keeping its last input/output."""

    def __init__(self, modules):
        self.calls = [0] * len(modules)
        self.inputs: list = [None] * len(modules)
        self.outputs: list = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(module, args, output):
            self.calls[i] += 1
            self.inputs[i] = args[0].detach().clone()
            self.outputs[i] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def full_hidden_states(full_clip, pixels):
    with torch.no_grad():
        return full_clip(pixel_values=pixels, output_hidden_states=True).hidden_states  # 1 + LAYERS of [B, 577, C]


# ---------------------------------------------------------------- which layers run, what comes out


@pytest.mark.parametrize(("select_layer", "expected_calls"), [(-2, [1, 1, 0]), (-3, [1, 0, 0]), (-1, [1, 1, 1]),
                                                                (2, [1, 1, 0]), (0, [0, 0, 0])])
def test_runs_only_the_needed_layers_and_matches_the_full_model(tiny_clip, full_clip, pixels, select_layer,
                                                                 expected_calls):
    tower = make_tower(tiny_clip, mm_vision_select_layer=select_layer)
    layers = tower.vision_tower.encoder.layers
    counter = CallCounter(list(layers) + [tower.vision_tower.post_layernorm])
    try:
        with torch.no_grad():
            features = tower(pixels)
    finally:
        counter.remove()

    assert counter.calls == expected_calls + [0]  # never the post layernorm
    expected = full_hidden_states(full_clip, pixels)[select_layer][:, 1:]
    assert features.shape == (2, PATCHES, WIDTH)
    torch.testing.assert_close(features, expected)


def test_cls_patch_keeps_the_cls_token(tiny_clip, full_clip, pixels):
    tower = make_tower(tiny_clip, mm_vision_select_feature="cls_patch")
    with torch.no_grad():
        features = tower(pixels)
    assert features.shape == (2, 1 + PATCHES, WIDTH)
    torch.testing.assert_close(features, full_hidden_states(full_clip, pixels)[-2])


def test_properties_and_frozen_weights(tiny_clip):
    tower = make_tower(tiny_clip)
    assert tower.is_loaded
    assert (tower.hidden_size, tower.num_patches_per_side, tower.num_patches) == (WIDTH, 24, PATCHES)
    assert tower.dtype == torch.float32 and tower.device == torch.device("cpu")
    assert tower.image_processor.crop_size == {"height": 336, "width": 336}
    assert all(not p.requires_grad for p in tower.parameters())
    assert tower.dummy_feature.shape == (1, WIDTH)

    delayed = build_vision_tower(tower_config(tiny_clip), delay_load=True)
    assert not delayed.is_loaded and not list(delayed.parameters())
    assert (delayed.hidden_size, delayed.num_patches) == (WIDTH, PATCHES)  # from the config file alone
    delayed.load_model()
    assert delayed.is_loaded


def test_gradients_flow_to_the_pixels_not_the_weights(tiny_clip, pixels):
    """No hard-wired no_grad: the frozen tower still passes gradients through (e.g. for saliency)."""
    tower = make_tower(tiny_clip)
    px = pixels[:1].clone().requires_grad_(True)
    tower(px).sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())


# ---------------------------------------------------------------- PruMerge inside the tower


def published_cls_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q_CLS . k^T . C^-0.5) over all 1 + N keys, CLS column dropped. q, k: ``[1 + N, C]`` -> ``[N]``."""
    channels = q.shape[-1]
    scores = (k @ q[0]) / channels**0.5  # [1 + N]
    return torch.softmax(scores, dim=0)[1:]


@pytest.mark.parametrize(("mode", "budget"), [("prumerge", None), ("prumerge+", None), ("prumerge", 7),
                                              ("prumerge+", 20)])
def test_prumerge_in_the_tower_equals_the_published_hook_recipe(tiny_clip, full_clip, pixels, mode, budget):
    # the oracle: the full model's last layer q/k, captured by hooks, as the published code does
    last = full_clip.encoder.layers[-1].self_attn
    oracle_hooks = CallCounter([last.q_proj, last.k_proj])
    try:
        hidden = full_hidden_states(full_clip, pixels)[-2]  # [B, 577, C]
    finally:
        oracle_hooks.remove()
    q_all, k_all = oracle_hooks.outputs  # [B, 577, C] each
    expected = []
    for b in range(pixels.shape[0]):  # batch size 1 each, as published
        attn = published_cls_attention(q_all[b], k_all[b])  # [576]
        assert attn.shape == (PATCHES,)
        out = prumerge(hidden[b : b + 1, 1:], k_all[b : b + 1, 1:], attn.unsqueeze(0), plus=mode == "prumerge+",
                       budget=budget)
        expected.append(out.tokens[0])

    tower = make_tower(tiny_clip)
    tower.set_token_reduction(TokenReduction(mode, budget))
    tower_last = tower.vision_tower.encoder.layers[-1]
    counter = CallCounter([*tower.vision_tower.encoder.layers, tower_last.self_attn.q_proj,
                           tower_last.self_attn.v_proj, tower_last.self_attn.k_proj])
    try:
        with torch.no_grad():
            tokens = tower(pixels)
    finally:
        counter.remove()

    # layers 0 and 1 run; of layer 2 only layer_norm1 -> k_proj (all tokens) and q_proj (the CLS row)
    assert counter.calls == [1, 1, 0, 1, 0, 1]
    assert counter.inputs[3].shape == (2, WIDTH)  # q_proj sees only the CLS row
    assert isinstance(tokens, list) and len(tokens) == 2
    for got, want in zip(tokens, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if budget is not None:
        assert [t.shape[0] for t in tokens] == [budget + 1, budget + 1]
    else:
        assert all(1 < t.shape[0] < PATCHES for t in tokens)


def test_batch_gives_each_image_what_it_gets_alone(tiny_clip, pixels):
    tower = make_tower(tiny_clip, mm_token_reduction="prumerge")
    with torch.no_grad():
        batched = tower(pixels)
        alone = [tower(pixels[b : b + 1])[0] for b in range(2)]
    for got, want in zip(batched, alone):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- anyres tiles


@pytest.mark.parametrize("mode", ["none", "prumerge"])
def test_anyres_tiles_are_encoded_and_reduced_one_by_one(tiny_clip, pixels, mode):
    tower = make_tower(tiny_clip, mm_token_reduction=mode)
    a, b = pixels[0], pixels[1]
    with torch.no_grad():
        alone = {name: tower(t.unsqueeze(0))[0] for name, t in (("a", a), ("b", b))}
        as_list = tower([torch.stack([a, b]), a])  # image 0: 2 tiles, image 1: a single [3, H, W]
        as_5d = tower(torch.stack([torch.stack([b, a]), torch.stack([a, a])]))  # [2, 2, 3, H, W]
    assert isinstance(as_list, list) and len(as_list) == 3
    for got, name in zip(as_list, "aba"):
        torch.testing.assert_close(got, alone[name], rtol=1e-5, atol=1e-5)
    assert isinstance(as_5d, list) and len(as_5d) == 4
    for got, name in zip(as_5d, "baaa"):
        torch.testing.assert_close(got, alone[name], rtol=1e-5, atol=1e-5)
    if mode == "none":
        assert all(t.shape == (PATCHES, WIDTH) for t in as_list)


def test_wrong_image_rank_is_an_error(tiny_clip, pixels):
    tower = make_tower(tiny_clip)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\].*got shape \(3, 336, 336\)"):
        tower(pixels[0])


# ---------------------------------------------------------------- loading


def test_full_clip_checkpoint_loads_every_vision_weight(tiny_clip, capfd):
    file_weights = load_file(tiny_clip / "model.safetensors")
    assert any(k.startswith("text_model.") for k in file_weights)  # a full CLIPModel layout
    tower = make_tower(tiny_clip)
    state = tower.vision_tower.state_dict()
    vision_keys = {k.removeprefix("vision_model.") for k in file_weights if k.startswith("vision_model.")}
    assert set(state) == vision_keys
    for key, value in state.items():
        assert torch.equal(value, file_weights[f"vision_model.{key}"]), key
    captured = capfd.readouterr()
    assert "UNEXPECTED" not in captured.out + captured.err  # the text weights' load report is quieted


def test_clip_checkpoint_missing_vision_weights_is_an_error(tiny_clip, tmp_path):
    broken = tmp_path / "clip-broken"
    shutil.copytree(tiny_clip, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["vision_model.encoder.layers.1.mlp.fc1.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 vision weights are missing.*encoder\.layers\.1\.mlp\.fc1\.weight"):
        make_tower(broken)


def test_bad_select_layer_and_feature(tiny_clip):
    with pytest.raises(ValueError, match=r"mm_vision_select_layer=-5 is out of range for a 3-layer vision tower"):
        make_tower(tiny_clip, mm_vision_select_layer=-5)
    with pytest.raises(ValueError, match=r"mm_vision_select_layer=4 is out of range"):
        make_tower(tiny_clip, mm_vision_select_layer=4)
    with pytest.raises(ValueError, match=r"mm_vision_select_feature 'cls' is not one of patch, cls_patch"):
        make_tower(tiny_clip, mm_vision_select_feature="cls")


def test_reduction_needs_a_next_layer_and_patch_features(tiny_clip, pixels):
    tower = make_tower(tiny_clip, mm_vision_select_layer=-1, mm_token_reduction="prumerge")
    with pytest.raises(ValueError, match=r"needs the encoder layer after mm_vision_select_layer=-1.*none"):
        tower(pixels)
    tower = make_tower(tiny_clip, mm_vision_select_feature="cls_patch", mm_token_reduction="prumerge")
    with pytest.raises(ValueError, match=r"prumerge works on patch features.*'cls_patch'"):
        tower(pixels)


def test_build_vision_tower_errors_and_old_key(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="no mm_vision_tower"):
        build_vision_tower(LlavaConfig())
    missing = tmp_path / "nowhere" / "clip"
    with pytest.raises(ValueError) as info:
        build_vision_tower(LlavaConfig(mm_vision_tower=str(missing)))
    assert "mm_vision_tower" in str(info.value) and str(missing) in str(info.value)

    class ModelArguments:  # upstream training arguments name it vision_tower
        vision_tower = str(tiny_clip)
        mm_vision_select_layer = -2
        mm_vision_select_feature = "patch"

    tower = build_vision_tower(ModelArguments(), delay_load=True)
    assert tower.vision_tower_name == str(tiny_clip)


def test_tower_folder_without_weights_names_the_key(tiny_clip, tmp_path):
    empty = tmp_path / "clip-empty"
    empty.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(tiny_clip / name, empty / name)
    with pytest.raises(OSError, match=re.escape(f"mm_vision_tower='{empty}' (local folder)")):
        make_tower(empty)
