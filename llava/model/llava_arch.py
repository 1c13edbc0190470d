"""Mixins that turn a causal language model into LLaVA: vision tower + projector + token splicing.

``LlavaMetaModel`` goes in front of the base model (``LlamaModel``), ``LlavaMetaForCausalLM`` in front of
the causal-LM head class. Shapes: B images, N patches, C vision width, D LM width, T text length.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN, IMAGE_TOKEN_INDEX
from .multimodal_encoder.builder import build_vision_tower, vision_tower_name
from .multimodal_encoder.clip_encoder import CLIPVisionTower
from .multimodal_projector.builder import build_vision_projector
from .multimodal_splice import splice_image_features
from .token_reduction import resolve_token_reduction

logger = logging.getLogger(__name__)


class LlavaMetaModel:
    """Adds ``vision_tower`` and ``mm_projector`` to a base language model built from a LLaVA config."""

    def __init__(self, config):
        super().__init__(config)
        if vision_tower_name(config):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in (config.mm_patch_merge_type or ""):
                self.image_newline = nn.Parameter(torch.empty(config.hidden_size))

    def get_vision_tower(self) -> CLIPVisionTower | None:
        tower = getattr(self, "vision_tower", None)
        if isinstance(tower, list):  # upstream keeps it in a list under FSDP so it is not wrapped
            tower = tower[0]
        return tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Attach (or load) the vision tower and projector for training, recording the choices in the config.

        Reads from ``model_args``: vision_tower, mm_vision_select_layer, mm_vision_select_feature,
        pretrain_mm_mlp_adapter, mm_patch_merge_type, mm_projector_type, and, when present,
        mm_token_reduction / mm_token_budget.
        """
        config = self.config
        config.mm_vision_tower = model_args.vision_tower
        config.mm_vision_select_layer = model_args.mm_vision_select_layer
        config.mm_vision_select_feature = model_args.mm_vision_select_feature
        config.mm_patch_merge_type = model_args.mm_patch_merge_type
        config.mm_projector_type = model_args.mm_projector_type or "linear"
        for key in ("mm_token_reduction", "mm_token_budget"):
            if getattr(model_args, key, None) is not None:
                setattr(config, key, getattr(model_args, key))

        tower = self.get_vision_tower()
        if tower is None:
            tower = build_vision_tower(model_args)
            self.vision_tower = [tower] if fsdp else tower
        else:
            tower.load_model()
        tower.set_token_reduction(
            resolve_token_reduction(config_mode=config.mm_token_reduction, config_budget=config.mm_token_budget,
                                    checkpoint_name=getattr(model_args, "model_name_or_path", None))
        )
        config.mm_token_reduction = tower.token_reduction.mode
        config.use_mm_proj = True
        config.mm_hidden_size = tower.hidden_size

        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(config)
            if "unpad" in config.mm_patch_merge_type:
                scale = config.hidden_size**-0.5
                self.image_newline = nn.Parameter(torch.randn(config.hidden_size, dtype=self.dtype) * scale)
        else:
            self.mm_projector.requires_grad_(True)

        if model_args.pretrain_mm_mlp_adapter is not None:
            weights = torch.load(model_args.pretrain_mm_mlp_adapter, map_location="cpu", weights_only=True)
            prefix = "mm_projector."
            own = {k.split(prefix, 1)[1]: v for k, v in weights.items() if prefix in k}
            self.mm_projector.load_state_dict(own, strict=True)


class LlavaMetaForCausalLM:
    """Encodes images and splices them into the text; the causal-LM class supplies ``get_model()``."""

    def get_model(self) -> LlavaMetaModel:
        raise NotImplementedError

    def get_vision_tower(self) -> CLIPVisionTower | None:
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Vision tower, then projector.

        Args:
            images: ``[B, 3, H, W]``.
        Returns:
            ``[B, N, D]`` without token reduction (as upstream), else B tensors ``[n_i, D]``.
        """
        features = self.get_model().get_vision_tower()(images)
        projector = self.get_model().mm_projector
        # The tower answers in the images' dtype (as upstream); callers such as lmms-eval send float16 pixels
        # whatever the model's dtype (float32 on CPU, bfloat16...), so meet the projector's dtype here.
        weight = next(projector.parameters(), None)
        if isinstance(features, torch.Tensor):
            return projector(features if weight is None else features.to(weight.dtype))
        lengths = [f.shape[0] for f in features]
        stacked = torch.cat(features, dim=0)  # [sum n_i, C]
        return list(projector(stacked if weight is None else stacked.to(weight.dtype)).split(lengths, dim=0))

    def _image_features_per_image(self, images) -> list[torch.Tensor]:
        """Encode a batch of images or anyres tile stacks into one ``[n_i, D]`` tensor per image.

        ``images`` is ``[B, 3, H, W]``, ``[B, T, 3, H, W]`` or a list of ``[T_i, 3, H, W]`` / ``[3, H, W]``.
        Tiles of one image are encoded (and reduced) separately, then concatenated ("flat" merge).
        """
        merge_type = self.config.mm_patch_merge_type
        if merge_type != "flat":
            raise NotImplementedError(
                f"mm_patch_merge_type {merge_type!r} (LLaVA-1.6 spatial merging) is not supported; use 'flat'"
            )
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            tiles, tiles_per_image = images, [1] * images.shape[0]
        else:
            stacks = [im.unsqueeze(0) if im.dim() == 3 else im for im in images]
            tiles, tiles_per_image = torch.cat(stacks, dim=0), [s.shape[0] for s in stacks]
        per_tile = self.encode_images(tiles)
        per_tile = list(per_tile) if isinstance(per_tile, torch.Tensor) else per_tile
        self.last_visual_token_counts = []
        out, cursor = [], 0
        for count in tiles_per_image:
            out.append(torch.cat(per_tile[cursor : cursor + count], dim=0))
            self.last_visual_token_counts.append(int(out[-1].shape[0]))
            cursor += count
        return out

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None,
        *, padding_side: str | None = None,
    ):
        """Embed the text and splice each image's visual tokens at its ``IMAGE_TOKEN_INDEX`` (-200).

        Args:
            input_ids: ``[B, T]`` with one -200 per image (left or right padded).
            position_ids / attention_mask / labels: ``[B, T]`` or None.
            images: ``[B_img, 3, H, W]``, ``[B_img, T, 3, H, W]`` or a list (anyres).
            image_sizes: original ``(w, h)`` per image (kept for API compatibility; "flat" merge ignores it).
            padding_side: "left" / "right" for the re-padded batch; None: ``config.tokenizer_padding_side``
                (``generate`` passes "left": new tokens are appended on the right, so prompts must end there).
        Returns:
            ``(None, position_ids, attention_mask, past_key_values, inputs_embeds [B, T', D], labels)``, or the
            inputs unchanged (``inputs_embeds=None``) when there is nothing to splice. ``position_ids`` /
            ``attention_mask`` / ``labels`` come back None when they were given as None.
        """
        tower = self.get_vision_tower()
        one_text_token = input_ids.shape[1] == 1 and not bool((input_ids == IMAGE_TOKEN_INDEX).any())
        if tower is None or images is None or one_text_token:  # a decoding step: nothing to splice
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        features = self._image_features_per_image(images)
        spliced = splice_image_features(
            input_ids,
            attention_mask,
            labels,
            features,
            self.get_model().embed_tokens,
            max_length=self.config.tokenizer_model_max_length,
            padding_side=padding_side or self.config.tokenizer_padding_side,
        )
        new_mask = None
        if attention_mask is not None:
            new_mask = spliced.attention_mask.to(attention_mask.dtype)
        new_positions = None if position_ids is None else spliced.position_ids
        new_labels = None if labels is None else spliced.labels
        return None, new_positions, new_mask, past_key_values, spliced.inputs_embeds, new_labels

    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """Add ``<im_patch>`` / ``<im_start>``, ``<im_end>`` tokens when the run asks for them (training only)."""
        if model_args.mm_use_im_patch_token:
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))
        if not model_args.mm_use_im_start_end:
            return
        added = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        self.resize_token_embeddings(len(tokenizer))
        if added > 0:
            for matrix in (self.get_input_embeddings().weight.data, self.get_output_embeddings().weight.data):
                matrix[-added:] = matrix[:-added].mean(dim=0, keepdim=True)
        if model_args.tune_mm_mlp_adapter:
            self.get_input_embeddings().requires_grad_(True)
            self.get_output_embeddings().requires_grad_(False)
        if model_args.pretrain_mm_mlp_adapter:
            weights = torch.load(model_args.pretrain_mm_mlp_adapter, map_location="cpu", weights_only=True)
            embed = weights.get("model.embed_tokens.weight")
            if embed is not None:
                matrix = self.get_input_embeddings().weight.data
                if embed.shape == matrix.shape:
                    matrix[-added:] = embed[-added:]
                elif embed.shape[0] == added:
                    matrix[-added:] = embed
                else:
                    raise ValueError(
                        f"{model_args.pretrain_mm_mlp_adapter}: model.embed_tokens.weight has shape "
                        f"{tuple(embed.shape)}; expected {tuple(matrix.shape)} or ({added}, {matrix.shape[1]})"
                    )


__all__ = ["LlavaMetaModel", "LlavaMetaForCausalLM", "IMAGE_TOKEN_INDEX"]
