"""CPU copies of selected parameters, gathering them first when DeepSpeed ZeRO-3 has partitioned them.

Under ZeRO-3 every rank holds only a shard of each parameter (``param.ds_id`` is set); reading it needs a
collective gather, so these functions must be called on **every** rank, even when only rank 0 writes the
result. Without ZeRO-3 they are plain ``detach().cpu().clone()`` copies.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import torch

logger = logging.getLogger(__name__)

NamedParams = Iterable[tuple[str, torch.nn.Parameter]]


def maybe_zero_3(param: torch.Tensor, ignore_status: bool = False, name: str | None = None) -> torch.Tensor:
    """A full CPU copy of ``param``, gathered from its ZeRO-3 shards when it is partitioned.

    Args:
        param: a parameter (ZeRO-3 partitioned or not).
        ignore_status: do not warn about a partitioned parameter that is not available (the normal case when
            saving outside a forward pass).
        name: the parameter's name, for that warning.
    """
    if not hasattr(param, "ds_id"):
        return param.detach().cpu().clone()
    from deepspeed import zero
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if param.ds_status == ZeroParamStatus.NOT_AVAILABLE and not ignore_status:
        logger.warning("%s: ZeRO-3 parameter is not available (status %s); gathering it", name, param.ds_status)
    with zero.GatheredParameters([param]):
        return param.data.detach().cpu().clone()


def _gather(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: maybe_zero_3(p, ignore_status=True, name=name) for name, p in params.items()}


def get_peft_state_maybe_zero_3(named_params: NamedParams, bias: str) -> dict[str, torch.Tensor]:
    """The LoRA weights (names containing ``lora_``) and, per ``bias``, biases.

    Args:
        named_params: ``model.named_parameters()`` of the PEFT model.
        bias: "none" (LoRA weights only), "all" (plus every bias) or "lora_only" (plus the biases of the
            layers that carry LoRA weights).
    Raises:
        ValueError: an unknown ``bias``.
    """
    named = dict(named_params)
    if bias == "none":
        selected = {k: t for k, t in named.items() if "lora_" in k}
    elif bias == "all":
        selected = {k: t for k, t in named.items() if "lora_" in k or "bias" in k}
    elif bias == "lora_only":
        selected = {k: t for k, t in named.items() if "lora_" in k}
        lora_layer_biases = {k.split("lora_")[0] + "bias" for k in selected}
        selected.update({k: t for k, t in named.items() if k in lora_layer_biases})
    else:
        raise ValueError(f"lora bias must be 'none', 'all' or 'lora_only', got {bias!r}")
    return _gather(selected)


def get_peft_state_non_lora_maybe_zero_3(
    named_params: NamedParams, require_grad_only: bool = True
) -> dict[str, torch.Tensor]:
    """Every non-LoRA parameter that is trained (with ``require_grad_only``): the projector in LLaVA's LoRA runs.

    Keys keep the PEFT model's names (``base_model.model.model.mm_projector.0.weight``), as upstream's
    ``non_lora_trainables.bin`` has them.
    """
    selected = {k: t for k, t in named_params if "lora_" not in k and (t.requires_grad or not require_grad_only)}
    return _gather(selected)


def get_mm_adapter_state_maybe_zero_3(
    named_params: NamedParams, keys_to_match: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Parameters whose name contains any of ``keys_to_match`` (``["mm_projector"]`` for mm_projector.bin)."""
    keys = list(keys_to_match)
    return _gather({k: t for k, t in named_params if any(key in k for key in keys)})


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is a DeepSpeed ZeRO-3 partitioned parameter (each rank holds a shard)."""
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered_for_update(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Inside: ``params`` at full size, for reading and writing. Under ZeRO-3 they are gathered and rank 0's values
    are partitioned back on exit (every rank must enter, with the same parameters); otherwise nothing happens."""
    partitioned = [p for p in params if is_zero3_partitioned(p)]
    if not partitioned:
        yield
        return
    from deepspeed import zero

    with zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


def register_zero3_external_parameter(module: torch.nn.Module, param: torch.nn.Parameter) -> None:
    """Tell ZeRO-3 that ``module``'s forward reads ``param``, which another module owns (gathered with ``module``'s
    own parameters). Nothing happens without ZeRO-3 (a ``--deepspeed`` config of stage 3)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not (is_zero3_partitioned(param) or is_deepspeed_zero3_enabled()):
        return
    from deepspeed import zero

    zero.register_external_parameter(module, param)
