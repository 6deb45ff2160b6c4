"""Converting fake-quantized layers to real int8/int4 layers with the trained scales, and back to float."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torchao.quantization import Int8Tensor, IntxUnpackedToInt8Tensor, MappingType, PerRow
from torchao.quantization.qat import FakeQuantizedLinear, IntxFakeQuantizeConfig
from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs
from torchao.utils import TorchAOBaseTensor
from transformers.pytorch_utils import Conv1D

from agent_lightning.quantization.fake_quantizers import (
    DynamicActivationFakeQuantizer,
    FakeQuantizedConv1D,
    fake_quantized_modules,
    linear_weight,
)
from agent_lightning.quantization.qat import prepare
from agent_lightning.quantization.recipe import QuantizationRecipe

__all__ = ["convert", "converted_modules", "dequantized_weight", "quantized_linear_bytes", "unprepare"]


def convert(
    model: nn.Module,
    recipe: QuantizationRecipe | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> nn.Module:
    """Replace fake-quantized layers by real int8 (or int4) layers, in place.

    Layers prepared for the fbgemm kernel become ``torch.ao.nn.quantized.dynamic.Linear`` (CPU; int8 GEMM, faster
    than fp32); the others become ``nn.Linear`` layers with a torchao quantized weight. Each layer is quantized
    with the scales its fake quantizer uses (frozen ones if :func:`freeze_ranges` ran, otherwise those of the current
    weight), so the result equals the fake-quantized forward up to float rounding.
    A model without fake-quantized layers (e.g. a float checkpoint) is prepared with ``recipe``, ``include`` and
    ``exclude`` first: that is post-training quantization with the same scheme.

    Returns:
        ``model`` (changed in place), for chaining.

    Raises:
        ValueError: an fbgemm layer is not on the CPU (move the model with ``model.cpu()`` first, or prepare with
            ``kernel="torchao"``).

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> convert(model)[0]  # no fake-quantized layers yet: post-training quantization with the default recipe
        DynamicQuantizedLinear(in_features=8, out_features=8, dtype=torch.qint8, qscheme=torch.per_channel_affine)
    """
    modules = fake_quantized_modules(model)
    if not modules:
        prepare(model, recipe, include, exclude)
        modules = fake_quantized_modules(model)
    for name, module in modules.items():
        if isinstance(module.activation_fake_quantizer, DynamicActivationFakeQuantizer):
            quantized = _fbgemm_linear(name, module)
        else:
            quantized = _torchao_linear(module)
        quantized.from_conv1d = isinstance(module, FakeQuantizedConv1D)  # so that unprepare rebuilds a Conv1D
        model.set_submodule(name, quantized)
    return model


def _weight_scales(module: FakeQuantizedLinear) -> tuple[Tensor, Tensor]:
    """The (frozen or current-weight) ``(scale, zero_point)`` the layer's weight fake quantizer uses."""
    quantizer = module.weight_fake_quantizer
    with torch.no_grad():
        if quantizer.config.is_dynamic or quantizer.scale is None:
            quantizer(linear_weight(module).detach())  # scales of the current weight, as the last forward used
    return quantizer.scale.detach(), quantizer.zero_point.detach()


def _fbgemm_linear(name: str, module: FakeQuantizedLinear) -> DynamicQuantizedLinear:
    weight = linear_weight(module).detach()
    if weight.device.type != "cpu":
        raise ValueError(
            f"Layer {name!r} is on {weight.device}, but the fbgemm int8 kernel runs on the CPU only. Call "
            "model.cpu() before convert(model), or quantize with kernel='torchao' for other devices."
        )
    scale, _ = _weight_scales(module)
    scale = scale.reshape(-1)
    with torch.no_grad():  # the integers training computed with: the fake-quantized weight over its scales
        values = torch.round(module.weight_fake_quantizer(weight).float() / scale.float()[:, None])
    scale = scale.double()
    with warnings.catch_warnings():
        # torch 2.13 announces that its quantized tensors (which fbgemm's packed int8 weights are built from) will be
        # removed in a future release (pytorch/pytorch#184982); documented in the module docstring.
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        quantized = torch._make_per_channel_quantized_tensor(
            values.to(torch.int8), scale, torch.zeros(weight.shape[0], dtype=torch.long), axis=0
        )
    linear = DynamicQuantizedLinear(module.in_features, module.out_features, module.bias is not None)
    bias = None if module.bias is None else module.bias.detach().float()
    linear.set_weight_bias(quantized, bias)
    return linear


def _torchao_linear(module: FakeQuantizedLinear) -> nn.Linear:
    quantizer = module.weight_fake_quantizer
    config: IntxFakeQuantizeConfig = quantizer.config
    weight = linear_weight(module).detach()
    scale, zero_point = _weight_scales(module)
    with torch.no_grad():
        int8_activations = module.activation_fake_quantizer is not None
        if config.dtype == torch.int8 and int8_activations:
            quantized = Int8Tensor.from_hp(
                weight,
                granularity=PerRow(),
                scale=scale.reshape(weight.shape[0], 1).float(),
                act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow(), mapping_type=MappingType.ASYMMETRIC),
            )
        else:
            group = weight.shape[1] if config.dtype == torch.int8 else config.granularity.group_size
            blocks = (weight.shape[0], weight.shape[1] // group)
            quantized = IntxUnpackedToInt8Tensor.from_hp(
                weight,
                (1, group),
                config.dtype,
                mapping_type=MappingType.SYMMETRIC,
                activation_quantization="int8_asym_per_token" if int8_activations else None,
                intx_choose_qparams_algorithm=None,
                custom_scale=scale.reshape(blocks).float(),
                custom_zero_point=zero_point.reshape(blocks).to(torch.int8),
            )
    linear = module.to_linear()
    linear.weight = nn.Parameter(quantized, requires_grad=False)
    return linear


def converted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The int8/int4 layers of ``model`` (the result of :func:`convert`): fbgemm dynamic quantized linears and
    linears whose weight is a torchao quantized tensor."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, DynamicQuantizedLinear) or isinstance(getattr(m, "weight", None), TorchAOBaseTensor)
    }


def unprepare(model: nn.Module) -> dict[str, str]:
    """Turn fake-quantized and converted layers back into plain float ``nn.Linear`` (or GPT-2 ``Conv1D``) layers,
    in place.

    Fake-quantized layers keep their float parameters; converted layers get their dequantized weights. Used to
    load a float checkpoint into a model that was quantized (e.g. ``Trainer.test(ckpt_path=...)`` after a fit that
    converted the model).

    Returns:
        ``{layer name: "fake_quant" | "converted"}`` for the layers that were changed.
    """
    changed: dict[str, str] = {}
    for name, module in list(fake_quantized_modules(model).items()):
        model.set_submodule(name, module.to_conv1d() if isinstance(module, FakeQuantizedConv1D) else module.to_linear())
        changed[name] = "fake_quant"
    for name, module in list(converted_modules(model).items()):
        weight, bias = _dequantized(module)
        if getattr(module, "from_conv1d", False):  # GPT-2 style: weight stored (in_features, out_features)
            plain: nn.Module = Conv1D(module.out_features, module.in_features).to(weight.device)
            weight = weight.t()
        else:
            plain = nn.Linear(module.in_features, module.out_features, bias is not None, device=weight.device)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if bias is not None:
                plain.bias.copy_(bias)
        model.set_submodule(name, plain)
        changed[name] = "converted"
    return changed


def _dequantized(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """Float ``(weight, bias)`` of a converted layer."""
    if isinstance(module, DynamicQuantizedLinear):
        return module.weight().dequantize(), module.bias()
    return module.weight.dequantize(), module.bias


def dequantized_weight(module: nn.Module) -> Tensor:
    """The float weight a layer computes with: dequantized for converted layers, the parameter otherwise.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = model[0].weight[:, :4].zero_()  # pruned weights
        >>> bool((dequantized_weight(convert(model)[0])[:, :4] == 0).all())  # zero stays zero
        True
    """
    if isinstance(module, DynamicQuantizedLinear) or isinstance(getattr(module, "weight", None), TorchAOBaseTensor):
        return _dequantized(module)[0]
    return module.weight.detach()


def quantized_linear_bytes(model: nn.Module) -> Iterator[tuple[str, int, int]]:
    """``(name, float32 bytes, quantized bytes)`` of each converted layer's weight.

    Quantized bytes count what the tensor really stores: its integer data (torchao keeps int4 values unpacked, one
    byte each, in ``IntxUnpackedToInt8Tensor``) plus scales and zero points (as stored: fbgemm's per-channel
    scales and zero points are 8 bytes each).
    """
    for name, module in converted_modules(model).items():
        if isinstance(module, DynamicQuantizedLinear):
            weight = module.weight()
            scales, zero_points = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
            stored = weight.numel() + sum(t.numel() * t.element_size() for t in (scales, zero_points))
            yield name, weight.numel() * 4, stored
            continue
        weight = module.weight
        inner_names, _ = weight.__tensor_flatten__()
        stored = sum(getattr(weight, n).numel() * getattr(weight, n).element_size() for n in inner_names)
        yield name, weight.numel() * 4, stored
