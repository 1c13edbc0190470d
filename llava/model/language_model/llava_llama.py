"""LLaVA on Llama / Vicuna: the class released LLaVA-1.5 checkpoints name in ``architectures``."""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, LlamaModel

from ..configuration_llava import LlavaConfig
from ..llava_arch import LlavaMetaModel
from .causal_lm_mixin import LlavaCausalLMMixin


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig

    def __init__(self, config: LlavaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlavaCausalLMMixin, LlamaForCausalLM):
    """``LlamaForCausalLM`` whose base model carries the vision tower and projector (weights ``model.*``)."""

    config_class = LlavaConfig
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\."]  # CLIP weights come from mm_vision_tower

    def __init__(self, config: LlavaConfig):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.last_visual_token_counts = []
        self.last_visual_patch_counts = []
        self.post_init()

    def get_model(self) -> LlavaLlamaModel:
        return self.model


AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM, exist_ok=True)
