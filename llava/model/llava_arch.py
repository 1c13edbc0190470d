"""Mixins that turn a causal language model into LLaVA: vision tower + projector + token splicing.

``LlavaMetaModel`` goes in front of the base model (``LlamaModel``), ``LlavaMetaForCausalLM`` in front of
the causal-LM head class. Shapes: B images, N patches, C vision width, D LM width, T text length.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .._image_processing import get_anyres_image_grid_shape
from ..constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN, IMAGE_TOKEN_INDEX
from .anyres_layout import layout_anyres_image, unpad_image, validate_merge_type
from .multimodal_encoder.builder import build_vision_tower, vision_tower_name
from .multimodal_encoder.clip_encoder import CLIPVisionTower
from .multimodal_projector.builder import build_vision_projector
from .multimodal_splice import splice_image_features
from .token_reduction import resolve_token_reduction, split_budget

logger = logging.getLogger(__name__)


class LlavaMetaModel:
    """Adds ``vision_tower`` and ``mm_projector`` to a base language model built from a LLaVA config."""

    def __init__(self, config):
        super().__init__(config)
        if vision_tower_name(config):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in (config.mm_patch_merge_type or ""):
                # [D]: ends every row of an anyres image's grid; loaded from the checkpoint (model.image_newline)
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
        validate_merge_type(model_args.mm_patch_merge_type, "--mm_patch_merge_type")
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
        else:
            self.mm_projector.requires_grad_(True)
        if "unpad" in config.mm_patch_merge_type and getattr(self, "image_newline", None) is None:
            # a model that had no newline yet (e.g. LLaVA-1.5 trained on with spatial_unpad): upstream's init
            scale = config.hidden_size**-0.5
            self.image_newline = nn.Parameter(torch.randn(config.hidden_size, dtype=self.dtype) * scale)

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
        # The tower answers in the images' dtype (as upstream); callers such as lmms-eval send float16 pixels
        # whatever the model's dtype (float32 on CPU, bfloat16...), so the projector's dtype is met in _project.
        if isinstance(features, torch.Tensor):
            projector = self.get_model().mm_projector
            weight = next(projector.parameters(), None)
            return projector(features if weight is None else features.to(weight.dtype))
        return self._project(features)

    def _project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Projector on B tensors ``[n_i, C]`` at once -> B tensors ``[n_i, D]`` (in the projector's dtype)."""
        projector = self.get_model().mm_projector
        weight = next(projector.parameters(), None)
        lengths = [f.shape[0] for f in features]
        stacked = torch.cat(features, dim=0)  # [sum n_i, C]
        return list(projector(stacked if weight is None else stacked.to(weight.dtype)).split(lengths, dim=0))

    def _image_features_per_image(self, images, image_sizes=None) -> list[torch.Tensor]:
        """Encode a batch of images or anyres tile stacks into one ``[n_i, D]`` tensor per image.

        ``images`` is ``[B, 3, H, W]`` (one tile each, concatenated as upstream does), or, for anyres inputs,
        ``[B, T, 3, H, W]`` or a list of ``[T_i, 3, H, W]`` / ``[3, H, W]``: every tile is encoded (and reduced on
        its own CLS attention), then the image's tiles are laid out by ``mm_patch_merge_type``
        (``anyres_layout.layout_anyres_image``), which needs ``image_sizes`` (original ``(width, height)`` per
        image) for an anyres image with a spatial merge.

        Sets ``last_visual_token_counts`` (tokens per image the LM reads) and ``last_visual_patch_counts`` (the
        patches the tower encoded for it: tiles x N).
        """
        config = self.config
        merge_type = validate_merge_type(config.mm_patch_merge_type, "config key mm_patch_merge_type")
        tower = self.get_vision_tower()
        per_image_layout = not (isinstance(images, torch.Tensor) and images.dim() == 4)
        if per_image_layout:
            stacks = [im.unsqueeze(0) if im.dim() == 3 else im for im in images]
            tiles, tiles_per_image = torch.cat(stacks, dim=0), [s.shape[0] for s in stacks]
        else:
            tiles, tiles_per_image = images, [1] * images.shape[0]
        budgets = None
        if tower.token_reduction.enabled:
            budgets = [b for count in tiles_per_image for b in split_budget(tower.token_reduction.budget, count)]
        encoded = tower.encode(tiles, budgets)
        per_tile = self._project(encoded.tokens)

        spatial = per_image_layout and merge_type != "flat"
        if spatial and image_sizes is not None and len(image_sizes) != len(tiles_per_image):
            raise ValueError(f"{len(tiles_per_image)} images were given but {len(image_sizes)} image_sizes")
        newline = getattr(self.get_model(), "image_newline", None)
        out, cursor = [], 0
        for i, count in enumerate(tiles_per_image):
            span = slice(cursor, cursor + count)
            cursor += count
            if not spatial:
                out.append(torch.cat(per_tile[span], dim=0))
                continue
            grid_shape = image_size = None
            if count > 1:
                grid_shape, image_size = self._anyres_grid(i, image_sizes)
            out.append(layout_anyres_image(
                per_tile[span], None if encoded.kept is None else encoded.kept[span], merge_type=merge_type,
                patches_per_side=tower.num_patches_per_side, grid_shape=grid_shape, image_size=image_size,
                image_newline=newline, image_index=i,
            ))
        self.last_visual_token_counts = [int(f.shape[0]) for f in out]
        self.last_visual_patch_counts = [count * tower.num_patches for count in tiles_per_image]
        return out

    def _anyres_grid(self, image_index: int, image_sizes) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((nw, nh), (width, height))`` of image ``image_index``'s anyres tile grid, from config and image_sizes."""
        config = self.config
        aspect = config.image_aspect_ratio or ""
        if not aspect.startswith("anyres"):
            raise ValueError(
                f"mm_patch_merge_type {config.mm_patch_merge_type!r} lays out several tiles per image only for "
                f"image_aspect_ratio 'anyres' (config.json says {aspect!r})"
            )
        if image_sizes is None:
            raise ValueError(
                "this anyres model (config.json image_aspect_ratio 'anyres', mm_patch_merge_type "
                f"{config.mm_patch_merge_type!r}) needs image_sizes: pass image_sizes=[image.size for each image] to "
                "generate()/forward()"
            )
        size = tuple(int(v) for v in image_sizes[image_index])
        tile_px = self.get_vision_tower().config.image_size
        return get_anyres_image_grid_shape(size, config.image_grid_pinpoints, tile_px), size

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None,
        *, padding_side: str | None = None,
    ):
        """Embed the text and splice each image's visual tokens at its ``IMAGE_TOKEN_INDEX`` (-200).

        Args:
            input_ids: ``[B, T]`` with one -200 per image (left or right padded).
            position_ids / attention_mask / labels: ``[B, T]`` or None.
            images: ``[B_img, 3, H, W]``, ``[B_img, T, 3, H, W]`` or a list (anyres).
            image_sizes: original ``(w, h)`` per image; an anyres image with a spatial merge needs it.
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

        features = self._image_features_per_image(images, image_sizes)
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


__all__ = ["LlavaMetaModel", "LlavaMetaForCausalLM", "IMAGE_TOKEN_INDEX", "unpad_image"]
