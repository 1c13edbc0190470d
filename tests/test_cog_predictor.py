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


def test_cog_yaml_points_at_the_predictor():
    config = yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())
    module_file, class_name = config["predict"].split(":")
    assert (REPO_ROOT / module_file).is_file() and class_name == "Predictor"
    assert any(p.startswith("torch==") for p in config["build"]["python_packages"])
