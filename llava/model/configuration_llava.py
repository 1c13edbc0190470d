"""Configuration classes for LLaVA language models.

Every multimodal key a LLaVA checkpoint's ``config.json`` may carry is declared here once, with the
LLaVA-1.5 default, so the rest of the package reads ``config.mm_vision_select_layer`` and never guesses
a default at the call site. Keys a checkpoint carries that are not declared (upstream wrote a few ad hoc
ones over time) are kept as plain attributes by transformers and saved back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig, MistralConfig


@dataclass(kw_only=True, repr=False)
class LlavaMultimodalFields:
    """The ``mm_*`` and related keys of a LLaVA checkpoint's config.json, with LLaVA-1.5 defaults."""

    mm_vision_tower: str | None = None
    """Local folder or hub name of the CLIP vision tower (upstream also accepts the key ``vision_tower``)."""
    mm_hidden_size: int | None = None
    """Width C of the vision features fed to the projector (1024 for CLIP ViT-L/14)."""
    mm_projector_type: str = "linear"
    """"linear", "mlp{N}x_gelu" (LLaVA-1.5 uses mlp2x_gelu) or "identity"."""
    mm_vision_select_layer: int = -2
    """Which CLIP hidden state feeds the projector: -2 is the penultimate layer's output."""
    mm_vision_select_feature: str = "patch"
    """"patch" drops the CLS token, "cls_patch" keeps it."""
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    image_aspect_ratio: str = "pad"
    """"pad" (LLaVA-1.5), "anyres" (tiles by ``image_grid_pinpoints``) or anything else for plain resize/crop."""
    image_grid_pinpoints: list | str | None = None
    mm_patch_merge_type: str = "flat"
    tokenizer_model_max_length: int | None = None
    """Embedded sequences are truncated to this length (None: no truncation)."""
    tokenizer_padding_side: str = "right"
    use_mm_proj: bool = True
    tune_mm_mlp_adapter: bool = False
    freeze_mm_mlp_adapter: bool = False
    unfreeze_mm_vision_tower: bool = False
    """LLaVA-1.6: the CLIP tower was finetuned; its weights are in the checkpoint (``model.vision_tower.*``)."""
    mm_vision_tower_lr: float | None = None
    """Learning rate of the vision tower when it is trained (LLaVA-1.6: 2e-6); None: the run's learning rate."""
    mm_token_reduction: str | None = None
    """"none" | "prumerge" | "prumerge+"; None means "decide from the checkpoint name" (see token_reduction.py)."""
    mm_token_budget: int | None = None
    """A fixed number of visual tokens per image instead of PruMerge's adaptive (IQR) count."""


class LlavaConfig(LlamaConfig, LlavaMultimodalFields):
    """LLaVA on a Llama language model. Released checkpoints say ``model_type: "llava"``; the loader maps them here."""

    model_type = "llava_llama"


class LlavaMistralConfig(MistralConfig, LlavaMultimodalFields):
    """LLaVA on a Mistral language model."""

    model_type = "llava_mistral"
