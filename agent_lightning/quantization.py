"""Quantization-aware training and int8 conversion of linear layers, on torchao.

A :class:`QuantizationRecipe` names the scheme (int8 or int4 weights, int8 dynamic or float activations);
:func:`prepare` swaps the targeted ``nn.Linear`` layers for torchao ``FakeQuantizedLinear`` (same ``weight`` and
``bias`` parameters, same ``state_dict`` keys), :func:`freeze_ranges` fixes the weight scales, and :func:`convert`
replaces each fake-quantized layer by a plain ``nn.Linear`` whose weight is a torchao quantized tensor built **with
the scales the fake quantizer used**, so the converted layer computes what training simulated (up to float
rounding in the int8 kernel).

Schemes and the CPU path of the converted model (measured facts in ``../shared/notes/cpu-compression-facts.md``):

==================  =====================================  =========================================================
recipe              fake quantization in training          converted weight (torchao)
==================  =====================================  =========================================================
int8 / int8         per-channel symmetric int8 weights,    ``Int8Tensor``: int8 x int8 matmul, 4x smaller weights;
                    per-token asymmetric int8 activations  **not fast here**: see the speed note below
int4 / int8         per-group symmetric int4 weights,      ``IntxUnpackedToInt8Tensor`` with int8 per-token
                    per-token int8 activations             activations (4x smaller weights; no fast CPU kernel)
int8 or int4 / none weights only                           ``IntxUnpackedToInt8Tensor``, weight-only (smaller, not
                                                           faster)
==================  =====================================  =========================================================

Speed note (measured in ``benchmarks/results/qat_banking77.md``, torch 2.13 + torchao 0.18 on a 2-core x86 CPU
without AMX): torchao's CPU int8 matmul falls back to int32 arithmetic, so the converted MiniLM is 11-20x *slower*
than fp32, eager and under ``torch.compile`` alike, while ``torch.ao``'s fbgemm dynamic int8 linear is 0.57x. The
converted model is exact and small, but a fast CPU artefact needs a different kernel (open work, issue 4).

Zero stays zero: weights use a symmetric scale (zero point 0), so pruned weights remain exactly zero after
fake-quantization and conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torchao.quantization import (
    Int8Tensor,
    IntxUnpackedToInt8Tensor,
    MappingType,
    PerRow,
    quantize_,
)
from torchao.quantization.qat import FakeQuantizedLinear, IntxFakeQuantizeConfig, QATConfig
from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs
from torchao.utils import TorchAOBaseTensor

from agent_lightning.targets import select_modules

__all__ = [
    "QuantizationRecipe",
    "convert",
    "converted_modules",
    "fake_quantized_modules",
    "freeze_ranges",
    "frozen_scales",
    "load_frozen_scales",
    "prepare",
    "quantized_linear_bytes",
    "unprepare",
    "weight_error",
]

Weights = Literal["int8", "int4"]
Activations = Literal["int8", "none"]


@dataclass(frozen=True)
class QuantizationRecipe:
    """What to quantize and how.

    Attributes:
        weights: ``"int8"`` (symmetric, one scale per output channel) or ``"int4"`` (symmetric, one scale per
            ``group_size`` input weights of each output channel).
        activations: ``"int8"`` (dynamic: asymmetric, one scale and zero point per token, computed at run time,
            exactly what torchao's int8 CPU kernel does) or ``"none"`` (weight-only).
        group_size: inputs per scale for ``weights="int4"``; must divide every targeted layer's input width.

    Raises:
        ValueError: an unknown choice or a bad group size, with the corrected call.

    Example:
        >>> QuantizationRecipe()  # int8 weights, int8 dynamic activations
        QuantizationRecipe(weights='int8', activations='int8', group_size=32)
        >>> QuantizationRecipe(weights="int4", group_size=64)
        QuantizationRecipe(weights='int4', activations='int8', group_size=64)
    """

    weights: Weights = "int8"
    activations: Activations = "int8"
    group_size: int = 32

    def __post_init__(self) -> None:
        if self.weights not in ("int8", "int4"):
            raise ValueError(
                f"weights={self.weights!r} is not supported; use 'int8' (per-channel) or 'int4' (per-group), e.g. "
                f"QuantizationRecipe(weights='int8')."
            )
        if self.activations not in ("int8", "none"):
            raise ValueError(
                f"activations={self.activations!r} is not supported; use 'int8' (dynamic per-token) or 'none' "
                f"(weight-only), e.g. QuantizationRecipe(weights={self.weights!r}, activations='int8')."
            )
        size = self.group_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size & (size - 1):
            raise ValueError(
                f"group_size={size!r} must be a power of two >= 2 (inputs per int4 scale), e.g. group_size=32."
            )

    def fake_quantize_configs(self) -> tuple[IntxFakeQuantizeConfig | None, IntxFakeQuantizeConfig]:
        """``(activation_config, weight_config)`` for torchao's ``QATConfig``."""
        if self.weights == "int8":
            weight = IntxFakeQuantizeConfig(torch.int8, granularity="per_channel", is_symmetric=True)
        else:
            weight = IntxFakeQuantizeConfig(torch.int4, group_size=self.group_size, is_symmetric=True)
        activation = None
        if self.activations == "int8":
            activation = IntxFakeQuantizeConfig(torch.int8, granularity="per_token", is_symmetric=False)
        return activation, weight

    def check_layer(self, name: str, module: nn.Module) -> None:
        """Raise ``ValueError`` unless this recipe can quantize ``module`` (an ``nn.Linear`` whose width fits)."""
        if type(module) is not nn.Linear and not isinstance(module, FakeQuantizedLinear):
            raise ValueError(
                f"QAT quantizes nn.Linear layers; {name!r} is {type(module).__name__}. Exclude it "
                f"(exclude=['{name}']) or pick nn.Linear layers with include=[...]."
            )
        if self.weights == "int4" and module.in_features % self.group_size:
            raise ValueError(
                f"group_size={self.group_size} does not divide the {module.in_features} inputs of layer {name!r}. "
                f"Use a group_size that divides {module.in_features} (e.g. {_largest_power_of_two(module.in_features)})"
                f" or exclude=['{name}']."
            )


def prepare(
    model: nn.Module,
    recipe: QuantizationRecipe | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """Swap the targeted ``nn.Linear`` layers of ``model`` for fake-quantized ones, in place.

    The new modules are ``nn.Linear`` subclasses that hold the *same* ``weight``/``bias`` parameters (optimizers,
    pruning masks and ``state_dict`` keys are unaffected). ``forward`` signatures do not change.

    Args:
        model: any module.
        recipe: the scheme; default int8 weights and int8 dynamic activations.
        include: glob patterns over module names (default: the transformer blocks' linear layers).
        exclude: glob patterns removed from the targets.

    Returns:
        The names of the fake-quantized layers.

    Raises:
        ValueError: nothing matches, a target is not ``nn.Linear``, or the group size does not fit a layer.

    Example:
        >>> prepare(agent, QuantizationRecipe(weights="int8"))  # doctest: +SKIP
        ['model.bert.encoder.layer.0.attention.self.query', ...]
    """
    recipe = recipe or QuantizationRecipe()
    targets = select_modules(model, include, exclude, argument="QuantizationAwareTraining(include=...)")
    for name, module in targets.items():
        recipe.check_layer(name, module)
    todo = {id(m) for m in targets.values() if not isinstance(m, FakeQuantizedLinear)}
    activation, weight = recipe.fake_quantize_configs()
    config = QATConfig(activation_config=activation, weight_config=weight, step="prepare")
    quantize_(model, config, filter_fn=lambda module, fqn: id(module) in todo)
    for module in fake_quantized_modules(model).values():  # each layer gets its own (freezable) config object
        module.weight_fake_quantizer.config = dataclasses.replace(module.weight_fake_quantizer.config)
    return list(targets)


def fake_quantized_modules(model: nn.Module) -> dict[str, FakeQuantizedLinear]:
    """The fake-quantized linear layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)}


def converted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` whose weight is a torchao quantized tensor (the result of :func:`convert`)."""
    return {name: m for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), TorchAOBaseTensor)}


def freeze_ranges(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """Fix every fake-quantized layer's weight scale at the value its current weight gives.

    From now on the weight grid no longer follows the weights, and :func:`convert` uses the same scales, so the
    converted model is the model that was trained. Activation ranges stay dynamic: the int8 kernel computes them per
    token at run time, during training and after conversion alike.

    Returns:
        ``{layer name: (scale, zero_point)}``, as :func:`frozen_scales` would.
    """
    with torch.no_grad():
        for module in fake_quantized_modules(model).values():
            quantizer = module.weight_fake_quantizer
            quantizer.config = dataclasses.replace(quantizer.config, is_dynamic=True)
            quantizer(module.weight)  # recompute the scale from the current weight
            quantizer.config = dataclasses.replace(quantizer.config, is_dynamic=False)
    return frozen_scales(model)


def frozen_scales(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer name: (scale, zero_point)}`` of the layers whose weight ranges are frozen (CPU tensors)."""
    return {
        name: (m.weight_fake_quantizer.scale.detach().cpu(), m.weight_fake_quantizer.zero_point.detach().cpu())
        for name, m in fake_quantized_modules(model).items()
        if not m.weight_fake_quantizer.config.is_dynamic
    }


def load_frozen_scales(model: nn.Module, scales: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Freeze the named layers' weight ranges at the given ``(scale, zero_point)`` (e.g. from a checkpoint).

    Raises:
        ValueError: a name is not a fake-quantized layer of ``model``.
    """
    modules = fake_quantized_modules(model)
    missing = sorted(set(scales) - set(modules))
    if missing:
        raise ValueError(
            f"Frozen quantization ranges name layers that are not fake-quantized in this model: {missing[:3]}. "
            "Prepare the model with the same recipe and targets as the run that froze them."
        )
    for name, (scale, zero_point) in scales.items():
        quantizer = modules[name].weight_fake_quantizer
        device = modules[name].weight.device
        quantizer.scale, quantizer.zero_point = scale.to(device), zero_point.to(device)
        quantizer.config = dataclasses.replace(quantizer.config, is_dynamic=False)


def weight_error(module: FakeQuantizedLinear) -> float:
    """Relative L2 error ``||q(W) - W|| / ||W||`` of a layer's fake-quantized weight (0 for an all-zero weight)."""
    with torch.no_grad():
        weight = module.weight.detach()
        norm = weight.float().norm()
        if norm == 0:
            return 0.0
        return float((module.weight_fake_quantizer(weight).float() - weight.float()).norm() / norm)


def convert(
    model: nn.Module,
    recipe: QuantizationRecipe | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> nn.Module:
    """Replace fake-quantized layers by ``nn.Linear`` layers with torchao quantized weights, in place.

    Each layer is quantized with the scales its fake quantizer uses (frozen ones if :func:`freeze_ranges` ran,
    otherwise those of the current weight), so the result equals the fake-quantized forward up to float rounding.
    A model without fake-quantized layers (e.g. a float checkpoint) is prepared with ``recipe``, ``include`` and
    ``exclude`` first: that is post-training quantization with the same scheme.

    For int8 activations and weights the result runs torchao's int8 kernel (see the speed note in the module
    docstring: exact and 4x smaller, not yet faster on this CPU).

    Returns:
        ``model`` (changed in place), for chaining.

    Example:
        >>> agent = Agent.load_from_checkpoint("qat.ckpt")  # doctest: +SKIP
        >>> convert(agent)  # doctest: +SKIP
    """
    modules = fake_quantized_modules(model)
    if not modules:
        prepare(model, recipe, include, exclude)
        modules = fake_quantized_modules(model)
    for name, module in modules.items():
        model.set_submodule(name, _converted_linear(module))
    return model


def _converted_linear(module: FakeQuantizedLinear) -> nn.Linear:
    quantizer = module.weight_fake_quantizer
    config: IntxFakeQuantizeConfig = quantizer.config
    weight = module.weight.detach()
    with torch.no_grad():
        if config.is_dynamic or quantizer.scale is None:
            quantizer(weight)  # scales of the current weight, as the last training forward used
        scale, zero_point = quantizer.scale.detach(), quantizer.zero_point.detach()
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


def unprepare(model: nn.Module) -> dict[str, str]:
    """Turn fake-quantized and converted layers back into plain float ``nn.Linear`` layers, in place.

    Fake-quantized layers keep their float parameters; converted layers get their dequantized weights. Used to
    load a float checkpoint into a model that was quantized (e.g. ``Trainer.test(ckpt_path=...)`` after a fit that
    converted the model).

    Returns:
        ``{layer name: "fake_quant" | "converted"}`` for the layers that were changed.
    """
    changed: dict[str, str] = {}
    for name, module in list(fake_quantized_modules(model).items()):
        model.set_submodule(name, module.to_linear())
        changed[name] = "fake_quant"
    for name, module in list(converted_modules(model).items()):
        weight = module.weight.dequantize()
        linear = nn.Linear(module.in_features, module.out_features, module.bias is not None, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        model.set_submodule(name, linear)
        changed[name] = "converted"
    return changed


def quantized_linear_bytes(model: nn.Module) -> Iterator[tuple[str, int, int]]:
    """``(name, float32 bytes, quantized bytes)`` of each converted layer's weight.

    Quantized bytes count what the tensor really stores: its integer data (torchao keeps int4 values unpacked, one
    byte each, in ``IntxUnpackedToInt8Tensor``) plus scales and zero points.
    """
    for name, module in converted_modules(model).items():
        weight = module.weight
        inner_names, _ = weight.__tensor_flatten__()
        stored = sum(getattr(weight, n).numel() * getattr(weight, n).element_size() for n in inner_names)
        yield name, weight.numel() * 4, stored


def _largest_power_of_two(width: int) -> int:
    return width & -width
