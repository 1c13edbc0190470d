"""LLaVA on Mistral."""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, MistralForCausalLM, MistralModel

from ..configuration_llava import LlavaMistralConfig
from ..llava_arch import LlavaMetaModel
from .causal_lm_mixin import LlavaCausalLMMixin


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig

    def __init__(self, config: LlavaMistralConfig):
        super().__init__(config)


class LlavaMistralForCausalLM(LlavaCausalLMMixin, MistralForCausalLM):
    config_class = LlavaMistralConfig
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\."]

    def __init__(self, config: LlavaMistralConfig):
        super(MistralForCausalLM, self).__init__(config)
        self.model = LlavaMistralModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.last_visual_token_counts = []
        self.last_visual_patch_counts = []
        self.post_init()

    def get_model(self) -> LlavaMistralModel:
        return self.model


AutoConfig.register("llava_mistral", LlavaMistralConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMistralConfig, LlavaMistralForCausalLM, exist_ok=True)
