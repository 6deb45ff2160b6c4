"""QAT building blocks: prepare keeps parameters; convert reproduces the fake-quantized forward (fbgemm, torchao)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torchao.quantization import Int8Tensor, IntxUnpackedToInt8Tensor
from torchao.quantization.qat import FakeQuantizedLinear

from agent_lightning.deployment.onnx_layers import _dynamic_quantize
from agent_lightning.quantization import (
    DynamicActivationFakeQuantizer,
    QuantizationRecipe,
    convert,
    converted_modules,
    dequantized_weight,
    fake_quantized_modules,
    freeze_ranges,
    prepare,
    quantized_linear_bytes,
    unprepare,
    weight_error,
)


class _Blocks(nn.Module):
    """Two transformer-like blocks of linears plus a head; ``forward`` takes keyword inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)) for _ in range(2))
        self.head = nn.Linear(64, 5)

    def forward(self, hidden: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        for layer in self.layers:
            hidden = hidden + layer(hidden)
        return self.head(hidden * scale)


@pytest.fixture
def model() -> _Blocks:
    torch.manual_seed(0)
    return _Blocks()


def test_prepare_keeps_parameters_keys_and_signature(model):
    parameters = {name: p for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    names = prepare(model)
    assert names == ["layers.0.0", "layers.0.2", "layers.1.0", "layers.1.2"]  # the head stays float
    assert set(fake_quantized_modules(model)) == set(names)
    assert type(model.head) is nn.Linear
    assert list(model.state_dict()) == keys
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert model(torch.randn(2, 3, 64), scale=0.5).shape == (2, 3, 5)


def _converted_type(module: nn.Module) -> type:
    return type(module) if isinstance(module, DynamicQuantizedLinear) else type(module.weight)


@pytest.mark.parametrize(
    ("recipe", "weight_type", "tolerance"),
    [
        # fbgemm: the fake quantizer picks the kernel's own activation qparams, so the outputs agree to float rounding
        (QuantizationRecipe(), DynamicQuantizedLinear, 1e-5),
        # torchao int8 x int8: its float rounding can move an activation across a rounding boundary (one int8 step)
        (QuantizationRecipe(kernel="torchao"), Int8Tensor, 5e-3),
        (QuantizationRecipe(weights="int4"), IntxUnpackedToInt8Tensor, 1e-6),
        (QuantizationRecipe(activations="none"), IntxUnpackedToInt8Tensor, 1e-6),
        (QuantizationRecipe(weights="int4", activations="none", group_size=16), IntxUnpackedToInt8Tensor, 1e-6),
    ],
)
@pytest.mark.parametrize("frozen", [False, True])
def test_convert_equals_the_fake_quantized_forward(model, recipe, weight_type, tolerance, frozen):
    inputs = torch.randn(4, 7, 64)
    reference = model(inputs)
    prepare(model, recipe)
    if frozen:
        freeze_ranges(model)
        with torch.no_grad():  # weights move after the freeze; the grid must not
            model.layers[0][0].weight.mul_(1.25)
    fake_quantized = model(inputs)
    assert not torch.allclose(fake_quantized, reference, atol=1e-4)  # quantization really happens
    convert(model)
    assert not fake_quantized_modules(model)
    assert set(converted_modules(model)) == {"layers.0.0", "layers.0.2", "layers.1.0", "layers.1.2"}
    assert all(_converted_type(m) is weight_type for m in converted_modules(model).values())
    converted = model(inputs)
    torch.testing.assert_close(converted, fake_quantized, rtol=0, atol=tolerance)
    assert ((converted - fake_quantized).abs() <= 1e-5).float().mean() >= 0.95


@pytest.mark.parametrize("kernel", ["fbgemm", "torchao"])
def test_zeros_stay_exactly_zero(model, kernel):
    with torch.no_grad():
        for module in (model.layers[0][0], model.layers[1][2]):
            module.weight[torch.rand_like(module.weight) < 0.5] = 0.0
    pruned = {name: m.weight == 0 for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    prepare(model, QuantizationRecipe(kernel=kernel))
    simulated = {name: m.weight_fake_quantizer(m.weight).detach() for name, m in fake_quantized_modules(model).items()}
    convert(model)
    for name, module in converted_modules(model).items():
        weight = dequantized_weight(module)
        assert torch.all(weight[pruned[name]] == 0), name  # symmetric scale: a pruned weight stays exactly zero
        assert torch.equal(weight, simulated[name]), name  # same grid as training: same zeros, same values


def test_convert_without_prepare_is_post_training_quantization(model):
    inputs = torch.randn(2, 5, 64)
    expected = prepare(copy.deepcopy(model))
    convert(model)
    assert list(converted_modules(model)) == expected
    assert model(inputs).shape == (2, 5, 5)


@pytest.mark.parametrize("kernel", ["fbgemm", "torchao"])
def test_quantized_bytes_and_weight_error(model, kernel):
    prepare(model, QuantizationRecipe(kernel=kernel))
    error = weight_error(model.layers[0][0])
    assert 0 < error < 0.02  # int8 per-channel: well under 2 % relative L2
    convert(model)
    sizes = list(quantized_linear_bytes(model))
    assert len(sizes) == 4
    for name, fp32, stored in sizes:
        rows, columns = model.get_submodule(name).weight().shape if kernel == "fbgemm" else (None, None)
        if kernel == "fbgemm":  # int8 data plus a float64 scale and an int64 zero point per row, as serialized
            assert stored == rows * columns + rows * 16
        else:  # int8 data plus a float32 scale per row (torchao)
            assert fp32 / stored > 3.5


@pytest.mark.parametrize("kernel", ["fbgemm", "torchao"])
def test_unprepare_gives_plain_float_layers(model, kernel):
    prepare(model, QuantizationRecipe(kernel=kernel))
    dequantized = {name: dequantized_weight(m) for name, m in converted_modules(convert(model)).items()}
    assert set(unprepare(model).values()) == {"converted"}
    assert not converted_modules(model) and not fake_quantized_modules(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is nn.Linear and type(m.weight) is nn.Parameter for m in linears)
    for name, weight in dequantized.items():
        assert torch.equal(model.get_submodule(name).weight, weight), name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": "int3"}, r"weights='int3' is not supported; use 'int8' \(per-channel\) or 'int4'"),
        ({"activations": "int4"}, r"activations='int4' is not supported.*QuantizationRecipe\(weights='int8'"),
        ({"group_size": 48}, "group_size=48 must be a power of two"),
        ({"kernel": "onednn"}, r"kernel='onednn' is not supported; use 'auto', 'fbgemm'"),
        (
            {"kernel": "fbgemm", "weights": "int4"},
            r"int8 activations only.*QuantizationRecipe\(weights='int4', activations"
            r"='int8', kernel='torchao'\)",
        ),
    ],
)
def test_bad_recipes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizationRecipe(**kwargs)


def test_group_size_must_divide_the_layers(model):
    with pytest.raises(ValueError, match=r"group_size=128 does not divide the 64 inputs of layer 'layers.0.0'"):
        prepare(model, QuantizationRecipe(weights="int4", group_size=128))
    assert not fake_quantized_modules(model)  # checked before any swap


def test_only_linear_layers(model):
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    model.layers[0][0] = NonDynamicallyQuantizableLinear(64, 128)  # as nn.MultiheadAttention.out_proj
    with pytest.raises(
        ValueError, match=r"QAT quantizes nn.Linear \(and GPT-2 style Conv1D\) layers; 'layers.0.0' is NonDyn"
    ):
        prepare(model, include=["layers.0.0", "layers.0.2"])  # named explicitly: refused
    prepared = prepare(model)  # among the default targets: left out, the linear layers are quantized
    assert "layers.0.0" not in prepared and prepared
    assert isinstance(model.get_submodule(prepared[0]), FakeQuantizedLinear)
    assert type(model.layers[0][0]) is NonDynamicallyQuantizableLinear


def test_onnxruntime_kernel_fake_quantizes_activations_as_dynamic_quantize_linear():
    """kernel='onnxruntime': 8-bit activations over [0, 255], as the ONNX export's DynamicQuantizeLinear computes."""
    torch.manual_seed(1)
    x = torch.randn(3, 9, 32) * 4 + 1
    model = nn.Sequential(nn.Linear(32, 16))
    prepare(model, QuantizationRecipe(kernel="onnxruntime"), include=["0"])
    quantizer = model[0].activation_fake_quantizer
    assert quantizer.full_range and quantizer.quant_max == 255
    simulated = quantizer(x)
    assert quantizer.scale == pytest.approx(float(x.max() - min(float(x.min()), 0.0)) / 255, rel=1e-6)
    assert 128 < ((simulated - simulated.min()) / quantizer.scale).round().unique().numel() <= 256
    quantized, scale, zero_point = _dynamic_quantize(x)
    torch.testing.assert_close(simulated, (quantized - zero_point) * scale, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"kernel='onnxruntime' runs int8 weights with int8 activations only"):
        QuantizationRecipe(weights="int4", kernel="onnxruntime")


def test_fbgemm_activation_fake_quantizer_matches_the_kernel():
    """Default recipe: activations are fake-quantized per tensor to the kernel's 7-bit grid, with its qparams."""
    torch.manual_seed(1)
    linear = nn.Linear(32, 16)
    x = torch.randn(3, 9, 32) * 4 + 1
    model = nn.Sequential(linear)
    prepare(model, include=["0"])
    quantizer = model[0].activation_fake_quantizer
    assert isinstance(quantizer, DynamicActivationFakeQuantizer)
    simulated = quantizer(x)
    levels = ((simulated - simulated.min()) / quantizer.scale).round()
    assert levels.unique().numel() <= 128  # 7-bit: fbgemm's reduce_range
    assert quantizer.scale == pytest.approx(float(x.max() - min(float(x.min()), 0.0)) / 127, rel=1e-6)
    x.requires_grad_(True)
    quantizer(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through inside the range
    expected = model(x.detach())
    convert(model)
    assert isinstance(model[0], DynamicQuantizedLinear)
    torch.testing.assert_close(model(x.detach()), expected, rtol=0, atol=1e-5)


def test_fbgemm_kernel_refuses_non_cpu_weights(model):
    prepare(model)
    with torch.device("meta"):
        model.layers[0][0].weight = nn.Parameter(torch.empty(128, 64))
    with pytest.raises(ValueError, match=r"'layers.0.0' is on meta.*CPU only.*model.cpu\(\).*kernel='torchao'"):
        convert(model)
