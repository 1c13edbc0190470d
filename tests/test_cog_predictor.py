"""predict.py: the Cog predictor streams an answer from the tiny checkpoint through the real Cog types."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGE = REPO_ROOT / "assets" / "demo.png"


def _load_predictor_module():
    spec = importlib.util.spec_from_file_location("llava_cog_predict", REPO_ROOT / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predictor_streams_an_answer(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("LLAVA_MODEL_PATH", str(tiny_checkpoint))
    monkeypatch.setenv("LLAVA_DEVICE", "cpu")
    monkeypatch.setenv("LLAVA_TOKEN_REDUCTION", "prumerge+")
    module = _load_predictor_module()
    predictor = module.Predictor()
    predictor.setup()
    chunks = list(predictor.predict(image=module.Path(DEMO_IMAGE), prompt="What is this?", top_p=1.0,
                                    temperature=0.0, max_tokens=8))
    assert chunks and all(isinstance(c, str) for c in chunks)
    assert "".join(chunks).strip()
    assert predictor.model.get_vision_tower().token_reduction.mode == "prumerge+"
    assert 36 < predictor.model.last_visual_token_counts[0] < 576


def test_predictor_on_llava16_passes_the_image_size(tiny16_checkpoint, tiny16_loaded, monkeypatch, tmp_path):
    """An anyres checkpoint: the 672x672 image is tiled 1 + 2x2 (2880 patches) and laid out by its own size."""
    import torch
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    image_file = tmp_path / "square.png"
    image = Image.new("RGB", (672, 672), (200, 40, 40))
    image.paste((250, 250, 0), (100, 80, 300, 400))
    image.save(image_file)
    monkeypatch.setenv("LLAVA_MODEL_PATH", str(tiny16_checkpoint))
    monkeypatch.setenv("LLAVA_DEVICE", "cpu")
    monkeypatch.setenv("LLAVA_TOKEN_REDUCTION", "none")
    module = _load_predictor_module()
    predictor = module.Predictor()
    predictor.setup()
    chunks = list(predictor.predict(image=module.Path(image_file), prompt="What is this?", top_p=1.0,
                                    temperature=0.0, max_tokens=6))
    assert predictor.model.last_visual_patch_counts == [2880]
    assert predictor.model.last_visual_token_counts == [576 + 48 * 49]  # base + 48 rows of 48 patches + newline

    tokenizer, model, image_processor, _ = tiny16_loaded  # the same weights, unreduced: the same greedy answer
    conv = conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is this?")
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(input_ids.unsqueeze(0), images=process_images([image], image_processor, model.config),
                             image_sizes=[image.size], do_sample=False, max_new_tokens=6,
                             pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0], skip_special_tokens=True).split("</s>")[0]
    streamed = "".join(chunks)
    cut = min(t.find("\ufffd") if "\ufffd" in t else len(t) for t in (streamed, expected))  # byte-token pieces
    assert streamed[:cut].strip() == expected[:cut].strip()


def test_cog_yaml_points_at_the_predictor():
    config = yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())
    module_file, class_name = config["predict"].split(":")
    assert (REPO_ROOT / module_file).is_file() and class_name == "Predictor"
    assert any(p.startswith("torch==") for p in config["build"]["python_packages"])
