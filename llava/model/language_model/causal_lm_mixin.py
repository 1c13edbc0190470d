"""``forward`` and ``generate`` shared by every LLaVA causal LM (Llama, Mistral): images in, text out."""

from __future__ import annotations

import functools
import inspect

import torch

from ..llava_arch import LlavaMetaForCausalLM


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The KV-cache argument of the transformers causal LM behind ``model_class``: "cache" or "past_key_values"."""
    for base in model_class.__mro__:
        if base.__module__.startswith("transformers.") and "forward" in vars(base):
            return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return "past_key_values"


class LlavaCausalLMMixin(LlavaMetaForCausalLM):
    """Put first in the bases, before the transformers causal-LM class it extends."""

    #: visual tokens per image of the last encoded batch (after any reduction); read by eval and serving.
    last_visual_token_counts: list[int]
    #: patches the tower encoded per image of the last batch (tiles x N): the count before reduction and layout.
    last_visual_patch_counts: list[int]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        images: torch.FloatTensor | list | None = None,
        image_sizes: list | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Causal-LM forward; when ``images`` are given, they are encoded and spliced at the -200 tokens first.

        Args:
            input_ids: ``[B, T]`` (may contain IMAGE_TOKEN_INDEX), or None with ``inputs_embeds [B, T, D]``.
            images: see ``prepare_inputs_labels_for_multimodal``.
            logits_to_keep: compute the logits of the last this many positions only (0: all, ``[B, T, V]``).
                Named in the signature so that ``generate`` passes 1: the prefill then computes ``[B, 1, V]``
                logits, not ``[B, T, V]`` (a 2,928-token LLaVA-1.6 prompt at B = 8 would otherwise hold 3 GB of
                float32 logits for one used row each).
            **kwargs: passed on (``cache_position``, ... from newer transformers).
        """
        if inputs_embeds is None and images is not None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
                )
            )
        for name, value in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states),
                            ("return_dict", return_dict)):
            if value is not None:
                kwargs[name] = value
        if past_key_values is not None:
            # transformers >= 5.24 names the argument ``cache`` (``past_key_values`` is deprecated there)
            kwargs.setdefault(_cache_argument(type(self)), past_key_values)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: torch.Tensor | list | None = None,
        image_sizes: list | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Generate from a prompt with images; returns only the new tokens ``[B, new]``.

        Args:
            inputs: ``[B, T]`` prompt ids from ``tokenizer_image_token`` (left-padded for batches, with
                ``attention_mask=`` in kwargs).
            images: ``[B_img, 3, H, W]`` or an anyres list; one per -200 in the prompts.
            **kwargs: any ``transformers`` generation argument (``do_sample``, ``max_new_tokens``, ...).
        """
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("pass the prompt as `inputs` token ids, not `inputs_embeds`")
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:
            raise ValueError("generate() needs the prompt token ids as `inputs`")
        if images is not None:
            # Always left-padded here, whatever config.tokenizer_padding_side says (LLaVA-1.5 checkpoints say
            # "right", for training): generation appends after the last position, so every prompt must end there.
            (_, position_ids, attention_mask, _, inputs_embeds, _) = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes,
                padding_side="left",
            )
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        if inputs_embeds is None:  # a one-token prompt: nothing to splice
            inputs_embeds = self.get_model().embed_tokens(inputs)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
