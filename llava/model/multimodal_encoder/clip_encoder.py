"""The CLIP vision tower: pixels in, visual tokens out, reduced by PruMerge/PruMerge+ when enabled.

Only the encoder layers whose output is read are run: up to ``mm_vision_select_layer`` (23 of 24 layers for
LLaVA-1.5's -2). When a reduction is on, the CLS token's attention over the patches is computed from the
*next* layer's ``layer_norm1`` -> ``q_proj`` (CLS row only) / ``k_proj`` applied to the selected hidden
states: exactly what the published PruMerge read off that layer with forward hooks, without running it.

Shape notation: B images (or anyres tiles), N patches (576 for ViT-L/14-336), C vision width (1024).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoImageProcessor, CLIPVisionConfig, CLIPVisionModel

from ..token_reduction import TokenReduction, resolve_token_reduction
from .prumerge import cls_attention, prumerge

logger = logging.getLogger(__name__)

SELECT_FEATURES = ("patch", "cls_patch")


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_load_report():
    """Drop transformers' printed load report (a full CLIP checkpoint's text weights show as UNEXPECTED);
    the caller checks the loading info itself."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    report_logger.addFilter(report_filter)
    try:
        yield
    finally:
        report_logger.removeFilter(report_filter)


def load_clip_vision_model(name: str, device_map=None) -> CLIPVisionModel:
    """Load the vision half of a CLIP checkpoint (vision-only or full CLIPModel layout), checking every weight.

    Raises:
        ValueError: when vision weights are missing from the checkpoint (a wrong folder), naming a few.
    """
    with _quiet_load_report():
        model, info = CLIPVisionModel.from_pretrained(name, device_map=device_map, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(
            f"mm_vision_tower={name!r}: {len(missing)} vision weights are missing from the checkpoint "
            f"(e.g. {', '.join(missing[:3])}); is this a CLIP checkpoint?"
        )
    return model


@dataclass(frozen=True)
class TowerOutput:
    """What the tower gives for B images or tiles.

    Attributes:
        tokens: B tensors ``[n_t, C]``: all N patches (raster order) without reduction, else the merged centres
            then the extra token.
        kept: None without reduction, else B LongTensors ``[M_t]``: the centres' patch indices, row for row.
    """

    tokens: list[torch.Tensor]
    kept: list[torch.Tensor] | None


def _setting(args, name: str, default):
    """Read ``name`` from a LlavaConfig or a training ModelArguments (which declare different subsets)."""
    value = getattr(args, name, None)
    return default if value is None else value


class CLIPVisionTower(nn.Module):
    """CLIP vision encoder with the LLaVA feature selection and optional PruMerge token reduction.

    Args:
        vision_tower: local folder or hub name of a CLIP (vision or full) checkpoint.
        args: a LlavaConfig or training ModelArguments: ``mm_vision_select_layer``, ``mm_vision_select_feature``,
            ``mm_token_reduction``, ``mm_token_budget`` are read from it.
        delay_load: build without touching the disk; call ``load_model()`` later (how checkpoints are loaded).
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = int(_setting(args, "mm_vision_select_layer", -2))
        self.select_feature = _setting(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"mm_vision_select_feature {self.select_feature!r} is not one of {', '.join(SELECT_FEATURES)}"
            )
        self.token_reduction: TokenReduction = resolve_token_reduction(
            config_mode=getattr(args, "mm_token_reduction", None),
            config_budget=getattr(args, "mm_token_budget", None),
            checkpoint_name=getattr(args, "_name_or_path", None),
        )
        self._cfg_only: CLIPVisionConfig | None = None
        # A model built by from_pretrained always delays: its __init__ runs under a meta-device context, and a
        # finetuned tower's weights (LLaVA-1.6: unfreeze_mm_vision_tower) come from the checkpoint afterwards.
        if not delay_load:
            self.load_model()

    # ------------------------------------------------------------------ loading
    def load_model(self, device_map=None) -> None:
        """Load the image processor and the CLIP weights (frozen). A second call does nothing."""
        if self.is_loaded:
            logger.debug("%s is already loaded; load_model() skipped", self.vision_tower_name)
            return
        name = self.vision_tower_name
        try:
            # The PIL backend is the slow CLIPImageProcessor LLaVA-1.5 was trained with (and needs no torchvision).
            self.image_processor = AutoImageProcessor.from_pretrained(name, backend="pil")
            self.vision_tower = load_clip_vision_model(name, device_map=device_map)
        except OSError as err:
            where = "local folder" if os.path.isdir(name) else "hub name (no hub access here? use a local copy)"
            raise OSError(f"could not load the vision tower mm_vision_tower={name!r} ({where}): {err}") from err
        self.vision_tower.requires_grad_(False)
        self._check_select_layer()
        self.is_loaded = True

    def _check_select_layer(self) -> None:
        num_layers = self.config.num_hidden_layers
        if not -(num_layers + 1) <= self.select_layer <= num_layers:
            raise ValueError(
                f"mm_vision_select_layer={self.select_layer} is out of range for a {num_layers}-layer vision tower"
            )

    def set_token_reduction(self, reduction: TokenReduction) -> None:
        """Switch the reduction mode (the builder calls this with the resolved setting)."""
        self.token_reduction = reduction

    # ------------------------------------------------------------------ forward
    @property
    def num_layers_to_run(self) -> int:
        """How many encoder layers produce the selected hidden state (23 for select_layer -2 of 24)."""
        num_layers = self.config.num_hidden_layers
        return self.select_layer if self.select_layer >= 0 else num_layers + 1 + self.select_layer

    def selected_hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run embeddings and only the needed encoder layers.

        Args:
            pixel_values: ``[B, 3, H, W]``.
        Returns:
            ``[B, 1+N, C]``: the hidden state ``hidden_states[select_layer]`` of the full model (CLS first).
        """
        model = self.vision_tower
        hidden = model.pre_layrnorm(model.embeddings(pixel_values))  # [B, 1+N, C]
        for layer in model.encoder.layers[: self.num_layers_to_run]:
            hidden = layer(hidden, None)
        return hidden

    def feature_select(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, 1+N, C]`` -> ``[B, N, C]`` ("patch") or unchanged ("cls_patch")."""
        return hidden[:, 1:] if self.select_feature == "patch" else hidden

    def reduce(self, hidden: torch.Tensor, budgets: Sequence[int | None] | None = None) -> TowerOutput:
        """PruMerge(+) on the selected hidden states.

        Args:
            hidden: ``[B, 1+N, C]`` selected hidden states (CLS first).
            budgets: per image or tile, a fixed number of centres (None: adaptive); default: the mode's budget.
        Returns:
            ``TowerOutput`` with B tensors ``[n_i, C]`` (merge centres then the extra token) and their centres'
            patch indices.
        """
        layers = self.vision_tower.encoder.layers
        if self.num_layers_to_run >= len(layers):
            raise ValueError(
                f"{self.token_reduction.mode} needs the encoder layer after mm_vision_select_layer="
                f"{self.select_layer}, and this {len(layers)}-layer tower has none; use --token-reduction none"
            )
        if self.select_feature != "patch":
            raise ValueError(f"{self.token_reduction.mode} works on patch features; mm_vision_select_feature is "
                             f"{self.select_feature!r}")
        next_layer = layers[self.num_layers_to_run]
        normed = next_layer.layer_norm1(hidden)  # [B, 1+N, C]
        keys = next_layer.self_attn.k_proj(normed)  # [B, 1+N, C]
        q_cls = next_layer.self_attn.q_proj(normed[:, 0])  # [B, C]: the CLS query row only
        attn = cls_attention(q_cls, keys)  # [B, N]
        if budgets is None:
            budgets = [self.token_reduction.budget] * hidden.shape[0]
        tokens: list[torch.Tensor | None] = [None] * hidden.shape[0]
        kept: list[torch.Tensor | None] = [None] * hidden.shape[0]
        for budget in dict.fromkeys(budgets):  # one call per distinct budget (anyres: at most a few)
            rows = [i for i, b in enumerate(budgets) if b == budget]
            index = torch.tensor(rows, device=hidden.device)
            out = prumerge(hidden[index, 1:], keys[index, 1:], attn[index], plus=self.token_reduction.plus,
                           budget=budget)
            for row, t, k in zip(rows, out.tokens, out.kept):
                tokens[row], kept[row] = t, k
        return TowerOutput(tokens, kept)

    def encode(self, images: torch.Tensor, budgets: Sequence[int | None] | None = None) -> TowerOutput:
        """Encode ``[B, 3, H, W]`` images or tiles, each reduced on its own CLS attention when reduction is on.

        Args:
            images: ``[B, 3, H, W]``.
            budgets: per image or tile, the fixed centre count (None: adaptive); default: the mode's budget.
        Returns:
            ``TowerOutput``: tokens in the images' dtype, with the kept patch indices when reduced.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be [B, 3, H, W]; got shape {tuple(images.shape)}")
        hidden = self.selected_hidden_states(images.to(device=self.device, dtype=self.dtype))
        if not self.token_reduction.enabled:
            return TowerOutput(list(self.feature_select(hidden).to(images.dtype)), None)
        out = self.reduce(hidden, budgets)
        return TowerOutput([t.to(images.dtype) for t in out.tokens], out.kept)

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Encode images into visual tokens.

        Args:
            images: ``[B, 3, H, W]``; or anyres tiles as ``[B, T, 3, H, W]`` or a list of ``[T_i, 3, H, W]``
                / ``[3, H, W]`` tensors (every tile is encoded and reduced on its own).
        Returns:
            ``[B, N, C]`` for a 4-D input without reduction (as upstream); otherwise a list with one
            ``[n_t, C]`` tensor per image or tile, in input order.
        """
        if isinstance(images, (list, tuple)) or images.dim() == 5:
            tiles = [t.unsqueeze(0) if t.dim() == 3 else t for t in images]
            out = self.forward(torch.cat(tiles, dim=0))
            return list(out) if isinstance(out, torch.Tensor) else out
        if images.dim() != 4:
            raise ValueError(f"images must be [B, 3, H, W], [B, T, 3, H, W] or a list; got shape {tuple(images.shape)}")
        hidden = self.selected_hidden_states(images.to(device=self.device, dtype=self.dtype))
        if not self.token_reduction.enabled:
            return self.feature_select(hidden).to(images.dtype)
        return [t.to(images.dtype) for t in self.reduce(hidden).tokens]

    # ------------------------------------------------------------------ properties
    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        if self.is_loaded:
            return self.vision_tower.config
        if self._cfg_only is None:
            self._cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)
        return self._cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2
