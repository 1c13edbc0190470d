"""LLaVA-1.5 with PruMerge / PruMerge+ visual token reduction.

``from llava import LlavaLlamaForCausalLM`` works as upstream; the model (and transformers) is imported only
when first asked for, so ``llava.constants`` / ``llava.conversation`` stay cheap to import.
"""

__all__ = ["LlavaLlamaForCausalLM"]


def __getattr__(name: str):
    if name == "LlavaLlamaForCausalLM":
        from .model import LlavaLlamaForCausalLM

        return LlavaLlamaForCausalLM
    raise AttributeError(f"module 'llava' has no attribute {name!r}")
