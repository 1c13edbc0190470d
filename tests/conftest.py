"""Shared fixtures: the tiny checkpoint is built once per test session, in the released layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGE = REPO_ROOT / "assets" / "demo.png"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Folder holding ``clip-vit-tiny-patch14-336/`` and ``llava-v1.5-tiny/`` (built by the real tool)."""
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    make_tiny_checkpoint(root)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_root) -> Path:
    """The tiny LLaVA-1.5 checkpoint folder (config.json model_type "llava", fp16 safetensors, tokenizer)."""
    return tiny_root / "llava-v1.5-tiny"


@pytest.fixture(scope="session")
def tiny_clip(tiny_root) -> Path:
    """The tiny full-CLIP checkpoint folder (336 px, patch 14: 576 patches)."""
    return tiny_root / "clip-vit-tiny-patch14-336"


@pytest.fixture(scope="session")
def tiny_loaded(tiny_checkpoint):
    """``load_pretrained_model`` on the tiny checkpoint, CPU fp32. Shared: tests must not modify it."""
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_checkpoint), None, "llava-v1.5-tiny", device="cpu")


@pytest.fixture(scope="session")
def demo_image():
    from PIL import Image

    return Image.open(DEMO_IMAGE).convert("RGB")


@pytest.fixture(scope="session")
def tiny16_root(tmp_path_factory) -> Path:
    """Folder holding a CLIP folder and ``llava-v1.6-vicuna-tiny/`` (the released LLaVA-1.6 layout)."""
    from llava.tools.make_tiny_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny16")
    make_tiny_checkpoint(root, layout="v1.6")
    return root


@pytest.fixture(scope="session")
def tiny16_checkpoint(tiny16_root) -> Path:
    """A tiny LLaVA-1.6 checkpoint: anyres, spatial_unpad, image_newline and the finetuned CLIP inside its
    model.safetensors (unfreeze_mm_vision_tower: true)."""
    return tiny16_root / "llava-v1.6-vicuna-tiny"


@pytest.fixture(scope="session")
def tiny16_loaded(tiny16_checkpoint):
    """``load_pretrained_model`` on the tiny LLaVA-1.6 checkpoint, CPU fp32, token reduction none. Shared:
    tests must not modify it (set a reduction on a model of their own)."""
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny16_checkpoint), None, "llava-v1.6-vicuna-tiny", device="cpu",
                                 token_reduction="none")
