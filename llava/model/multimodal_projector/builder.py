"""The projector from vision features [*, C] to language-model embeddings [*, D].

Parameter names are the checkpoint contract: ``mm_projector.weight`` for "linear", ``mm_projector.{0,2,...}``
for "mlp{N}x_gelu" (Linear, GELU, Linear, ...), nothing for "identity".
"""

from __future__ import annotations

import re

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu", "identity")


class IdentityMap(nn.Module):
    """Projector for ``mm_projector_type="identity"``: features pass through unchanged."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self) -> dict:
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """Build the projector named by ``config.mm_projector_type``.

    Args:
        config: anything with ``mm_projector_type``, ``mm_hidden_size`` (C) and ``hidden_size`` (D).
    Returns:
        a module mapping ``[..., C]`` to ``[..., D]``.
    Raises:
        ValueError: for an unknown projector type, listing the valid ones.
    """
    projector_type = config.mm_projector_type or "linear"
    if projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = _MLP_GELU.match(projector_type)
    if match:
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"mm_projector_type {projector_type!r}: the MLP needs at least one layer")
        layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(f"unknown mm_projector_type {projector_type!r}; valid types are {', '.join(PROJECTOR_TYPES)}")
