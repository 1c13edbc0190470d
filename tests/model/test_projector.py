"""``build_vision_projector``: parameter names and shapes are the checkpoint contract (``model.mm_projector.*``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llava.model.multimodal_projector.builder import build_vision_projector

C, D = 12, 20


def config(projector_type):
    return SimpleNamespace(mm_projector_type=projector_type, mm_hidden_size=C, hidden_size=D)


def shapes(module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def test_linear():
    projector = build_vision_projector(config("linear"))
    assert shapes(projector) == {"weight": (D, C), "bias": (D,)}
    assert build_vision_projector(config(None)).weight.shape == (D, C)  # missing type: linear (upstream default)


def test_mlp2x_gelu_is_linear_gelu_linear():
    projector = build_vision_projector(config("mlp2x_gelu"))
    assert shapes(projector) == {"0.weight": (D, C), "0.bias": (D,), "2.weight": (D, D), "2.bias": (D,)}
    assert isinstance(projector[1], torch.nn.GELU)
    x = torch.randn(3, C)
    with torch.no_grad():
        expected = torch.nn.functional.gelu(x @ projector[0].weight.T + projector[0].bias)
        expected = expected @ projector[2].weight.T + projector[2].bias
        torch.testing.assert_close(projector(x), expected)


def test_mlp3x_gelu():
    projector = build_vision_projector(config("mlp3x_gelu"))
    assert shapes(projector) == {
        "0.weight": (D, C), "0.bias": (D,), "2.weight": (D, D), "2.bias": (D,), "4.weight": (D, D), "4.bias": (D,),
    }
    assert [type(m).__name__ for m in projector] == ["Linear", "GELU", "Linear", "GELU", "Linear"]


def test_mlp1x_gelu_is_one_linear():
    assert shapes(build_vision_projector(config("mlp1x_gelu"))) == {"0.weight": (D, C), "0.bias": (D,)}


def test_identity():
    projector = build_vision_projector(config("identity"))
    assert shapes(projector) == {}
    x = torch.randn(2, 5, C)
    assert projector(x) is x
    assert projector.config == {"mm_projector_type": "identity"}


def test_projector_keys_in_a_model_state_dict(tiny_loaded):
    _, model, _, _ = tiny_loaded
    keys = [k for k in model.state_dict() if "mm_projector" in k]
    assert keys == ["model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
                    "model.mm_projector.2.bias"]


@pytest.mark.parametrize("bad", ["conv", "mlp2x_relu", "mlpx_gelu", "Linear"])
def test_unknown_type_lists_the_valid_types(bad):
    with pytest.raises(ValueError) as info:
        build_vision_projector(config(bad))
    message = str(info.value)
    assert repr(bad) in message
    assert "linear" in message and "mlp{N}x_gelu" in message and "identity" in message


def test_zero_depth_mlp():
    with pytest.raises(ValueError, match="mlp0x_gelu.*at least one layer"):
        build_vision_projector(config("mlp0x_gelu"))
