"""LLaVA models. Importing this registers ``llava_llama`` / ``llava_mistral`` with the transformers Auto classes."""

from .configuration_llava import LlavaConfig, LlavaMistralConfig
from .language_model.llava_llama import LlavaLlamaForCausalLM, LlavaLlamaModel
from .language_model.llava_mistral import LlavaMistralForCausalLM, LlavaMistralModel

__all__ = [
    "LlavaConfig",
    "LlavaMistralConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
    "LlavaMistralForCausalLM",
    "LlavaMistralModel",
]
