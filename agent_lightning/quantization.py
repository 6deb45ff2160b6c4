"""Quantization-aware training and int8 conversion of linear layers, on torchao and torch.ao's fbgemm kernel.

A :class:`QuantizationRecipe` names the scheme (int8 or int4 weights, int8 dynamic or float activations) and the
kernel the converted model will run; :func:`prepare` swaps the targeted ``nn.Linear`` layers for torchao
``FakeQuantizedLinear`` (same ``weight`` and ``bias`` parameters, same ``state_dict`` keys) whose fake quantization
matches that kernel, :func:`freeze_ranges` fixes the weight scales, and :func:`convert` replaces each fake-quantized
layer by a real quantized layer built **with the scales the fake quantizer used**, so the converted layer computes
what training simulated (up to rounding ties and float accumulation order).

Schemes (measured in ``benchmarks/results/qat_banking77.md``):

- **int8 weights + int8 activations, kernel "auto"/"fbgemm" (default)**: per-channel symmetric int8 weights and
  per-tensor asymmetric 7-bit dynamic activations in training; converted to ``torch.ao.nn.quantized.dynamic.Linear``
  (fbgemm/x86 int8 GEMM, CPU only): 4x smaller linear weights and faster than fp32 on CPU. torch 2.13 marks its
  quantized tensors, which this module is built from, as deprecated (pytorch/pytorch#184982); when they go, this
  path moves to their replacement and the torchao kernel stays available.
- **int8 + int8, kernel "torchao"**: per-token asymmetric int8 activations; converted to a torchao ``Int8Tensor``
  weight (any device). On the measured 2-core x86 CPU torchao's int8 matmul falls back to int32 arithmetic and is
  11-20x *slower* than fp32, eagerly and under ``torch.compile``.
- **int4 weights** (per-group symmetric) with int8 per-token activations, or **weight-only** (``activations="none"``):
  converted to torchao ``IntxUnpackedToInt8Tensor`` weights (smaller; no fast CPU kernel).

The fbgemm path reproduces the kernel bit for bit where it matters: the kernel quantizes each call's input as one
tensor to ``[0, 127]`` (``reduce_range``) with scale and zero point from ``torch._choose_qparams_per_tensor``, so the
training-time activation fake quantizer (:class:`DynamicActivationFakeQuantizer`) calls that same routine and
``torch.fake_quantize_per_tensor_affine``; weights use torchao's per-channel fake quantizer and are converted with
its scales.

Zero stays zero: weights use a symmetric scale (zero point 0), so pruned weights remain exactly zero after
fake-quantization and conversion.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torchao.quantization import (
    Int8Tensor,
    IntxUnpackedToInt8Tensor,
    MappingType,
    PerRow,
    quantize_,
)
from torchao.quantization.qat import FakeQuantizedLinear, IntxFakeQuantizeConfig, QATConfig
from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase
from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs
from torchao.utils import TorchAOBaseTensor
from transformers.pytorch_utils import Conv1D

from agent_lightning.targets import select_modules

__all__ = [
    "DynamicActivationFakeQuantizer",
    "FakeQuantizedConv1D",
    "QuantizationRecipe",
    "convert",
    "converted_modules",
    "dequantized_weight",
    "fake_quantized_modules",
    "freeze_ranges",
    "frozen_scales",
    "load_frozen_scales",
    "prepare",
    "quantization_targets",
    "quantized_linear_bytes",
    "unprepare",
    "weight_error",
]

Weights = Literal["int8", "int4"]
Activations = Literal["int8", "none"]
Kernel = Literal["auto", "fbgemm", "torchao"]


@dataclass(frozen=True)
class QuantizationRecipe:
    """What to quantize and how.

    Attributes:
        weights: ``"int8"`` (symmetric, one scale per output channel) or ``"int4"`` (symmetric, one scale per
            ``group_size`` input weights of each output channel).
        activations: ``"int8"`` (dynamic: asymmetric, computed at run time from each input, as the int8 kernel
            does) or ``"none"`` (weight-only).
        group_size: inputs per scale for ``weights="int4"``; must divide every targeted layer's input width.
        kernel: the int8 kernel the converted model runs, which the fake quantization matches: ``"fbgemm"``
            (``torch.ao`` dynamic quantized linear, fast on x86 CPUs, CPU only; int8 weights and activations only),
            ``"torchao"`` (torchao quantized tensors, any device, every scheme) or ``"auto"`` (fbgemm where it
            applies, else torchao).

    Raises:
        ValueError: an unknown choice or a bad group size, with the corrected call.

    Example:
        >>> QuantizationRecipe()  # int8 weights, int8 dynamic activations
        QuantizationRecipe(weights='int8', activations='int8', group_size=32, kernel='auto')
        >>> QuantizationRecipe(weights="int4", group_size=64).backend
        'torchao'
    """

    weights: Weights = "int8"
    activations: Activations = "int8"
    group_size: int = 32
    kernel: Kernel = "auto"

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
        if self.kernel not in ("auto", "fbgemm", "torchao"):
            raise ValueError(
                f"kernel={self.kernel!r} is not supported; use 'auto', 'fbgemm' (fast int8 on x86 CPUs) or 'torchao', "
                "e.g. QuantizationRecipe(kernel='auto')."
            )
        if self.kernel == "fbgemm" and (self.weights, self.activations) != ("int8", "int8"):
            raise ValueError(
                f"kernel='fbgemm' runs int8 weights with int8 activations only, not weights={self.weights!r}, "
                f"activations={self.activations!r}. Use QuantizationRecipe(weights={self.weights!r}, "
                f"activations={self.activations!r}, kernel='torchao') or QuantizationRecipe(kernel='fbgemm')."
            )

    @property
    def backend(self) -> Literal["fbgemm", "torchao"]:
        """The kernel ``"auto"`` resolves to: fbgemm for int8 weights and activations, torchao otherwise."""
        if self.kernel == "torchao" or (self.weights, self.activations) != ("int8", "int8"):
            return "torchao"
        return "fbgemm"

    def fake_quantize_configs(self) -> tuple[IntxFakeQuantizeConfig | None, IntxFakeQuantizeConfig]:
        """``(activation_config, weight_config)`` for torchao's ``QATConfig``."""
        if self.weights == "int8":
            weight = IntxFakeQuantizeConfig(torch.int8, granularity="per_channel", is_symmetric=True)
        else:
            weight = IntxFakeQuantizeConfig(torch.int4, group_size=self.group_size, is_symmetric=True)
        activation = None
        if self.activations == "int8" and self.backend == "torchao":  # fbgemm: DynamicActivationFakeQuantizer
            activation = IntxFakeQuantizeConfig(torch.int8, granularity="per_token", is_symmetric=False)
        return activation, weight

    def check_layer(self, name: str, module: nn.Module) -> None:
        """Raise ``ValueError`` unless this recipe can quantize ``module`` (an ``nn.Linear`` or a Hugging Face
        ``Conv1D`` whose width fits)."""
        if not _quantizable(module):
            raise ValueError(
                f"QAT quantizes nn.Linear (and GPT-2 style Conv1D) layers; {name!r} is {type(module).__name__}. "
                f"Exclude it (exclude=['{name}']) or pick linear layers with include=[...]."
            )
        inputs = _linear_weight(module).shape[1]
        if self.weights == "int4" and inputs % self.group_size:
            raise ValueError(
                f"group_size={self.group_size} does not divide the {inputs} inputs of layer {name!r}. "
                f"Use a group_size that divides {inputs} (e.g. {_largest_power_of_two(inputs)}) or "
                f"exclude=['{name}']."
            )


def quantization_targets(
    model: nn.Module,
    recipe: QuantizationRecipe,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """The layers :func:`prepare` fake-quantizes, checked against ``recipe``.

    With the default targets (``include=None``), layers that are neither plain ``nn.Linear`` nor Hugging Face
    ``Conv1D`` are left out: e.g. the ``out_proj`` of ``nn.MultiheadAttention``, whose weights the attention reads
    directly (a swapped module would never run). Named explicitly with ``include``, they are an error.

    Raises:
        ValueError: nothing matches; the default targets hold no quantizable layer; an included layer is not
            quantizable; or the group size does not fit a layer.
    """
    targets = select_modules(model, include, exclude, argument="QuantizationAwareTraining(include=...)")
    if include is None:
        quantizable = {n: m for n, m in targets.items() if _quantizable(m)}
        if not quantizable:
            kinds = sorted({type(m).__name__ for m in targets.values()})
            raise ValueError(
                f"QAT quantizes nn.Linear and GPT-2 style Conv1D layers, and the default targets of this model are "
                f"{', '.join(kinds)} (e.g. {next(iter(targets))!r}). Name linear layers with include=[...]."
            )
        targets = quantizable
    for name, module in targets.items():
        recipe.check_layer(name, module)
    return targets


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
        ValueError: see :func:`quantization_targets`.

    Example:
        >>> prepare(agent, QuantizationRecipe(weights="int8"))  # doctest: +SKIP
        ['model.bert.encoder.layer.0.attention.self.query', ...]
    """
    recipe = recipe or QuantizationRecipe()
    targets = quantization_targets(model, recipe, include, exclude)
    todo = {id(m) for m in targets.values() if type(m) is nn.Linear}
    activation, weight = recipe.fake_quantize_configs()
    config = QATConfig(activation_config=activation, weight_config=weight, step="prepare")
    quantize_(model, config, filter_fn=lambda module, fqn: id(module) in todo)
    for name, module in targets.items():
        if isinstance(module, Conv1D):
            model.set_submodule(name, FakeQuantizedConv1D(module, activation, weight))
    for name, module in fake_quantized_modules(model).items():
        if name not in targets:
            continue
        # each layer gets its own (freezable) config object
        module.weight_fake_quantizer.config = dataclasses.replace(module.weight_fake_quantizer.config)
        if recipe.backend == "fbgemm" and module.activation_fake_quantizer is None:
            module.activation_fake_quantizer = DynamicActivationFakeQuantizer()
    return list(targets)


class FakeQuantizedConv1D(FakeQuantizedLinear):
    """A Hugging Face ``Conv1D`` (GPT-2's linear layer, weight stored ``(in_features, out_features)``) with fake
    quantized weights and activations, holding the *same* ``weight`` and ``bias`` parameters in that layout.

    It is a ``FakeQuantizedLinear`` for everything that handles fake-quantized layers (freezing ranges, converting,
    logging); the weight grid is per output channel, as for ``nn.Linear``: the quantizer sees ``weight.T``. The
    ``state_dict`` keys and shapes stay those of the ``Conv1D``, so checkpoints load into a plain GPT-2 model.

    Shapes:
        input: ``(*, in_features)``; output: ``(*, out_features)``.
    """

    def __init__(self, conv: Conv1D, activation_config, weight_config) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = conv.weight.shape
        self.weight, self.bias = conv.weight, conv.bias
        self.activation_fake_quantizer = None
        if activation_config is not None:
            self.activation_fake_quantizer = FakeQuantizerBase.from_config(activation_config)
        self.weight_fake_quantizer = FakeQuantizerBase.from_config(weight_config)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_fake_quantizer is not None:
            x = self.activation_fake_quantizer(x)
        return F.linear(x, self.weight_fake_quantizer(self.weight.t()), self.bias)

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same (a transposed copy of the weight)."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device)
        with torch.no_grad():
            linear.weight.copy_(self.weight.t())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def to_conv1d(self) -> Conv1D:
        """The float ``Conv1D`` again, with the same parameters."""
        conv = Conv1D(self.out_features, self.in_features)
        conv.weight, conv.bias = self.weight, self.bias
        return conv


def _quantizable(module: nn.Module) -> bool:
    return type(module) is nn.Linear or isinstance(module, (FakeQuantizedLinear, Conv1D))


def _linear_weight(module: nn.Module) -> Tensor:
    """The weight as ``(out_features, in_features)`` (a view for Conv1D layouts)."""
    if isinstance(module, (Conv1D, FakeQuantizedConv1D)):
        return module.weight.t()
    return module.weight


class DynamicActivationFakeQuantizer(nn.Module):
    """Fake-quantize a layer's input the way fbgemm's dynamic int8 linear quantizes it at inference.

    The whole input tensor gets one asymmetric scale and zero point over ``[0, 127]`` (the kernel's
    ``reduce_range``), chosen from the tensor's min and max by ``torch._choose_qparams_per_tensor`` — the routine
    the kernel itself calls — and ``torch.fake_quantize_per_tensor_affine`` rounds the values (straight-through
    gradient inside the range). No state: ``state_dict`` keys of the layer do not change.

    Shapes:
        input: ``(*, in_features)``, any float dtype; output: same shape and dtype.

    Example:
        >>> quantizer = DynamicActivationFakeQuantizer()
        >>> x = torch.randn(2, 5, 8)
        >>> bool((quantizer(x) - x).abs().max() <= (x.max() - x.min()) / 127)
        True
    """

    quant_min, quant_max = 0, 127

    def __init__(self) -> None:
        super().__init__()
        self.scale: float | None = None  # of the last call, for logging

    def forward(self, x: Tensor) -> Tensor:
        scale, zero_point = torch._choose_qparams_per_tensor(x.detach().float(), True)
        self.scale = scale
        quantized = torch.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, self.quant_min, self.quant_max)
        return quantized.to(x.dtype)


def fake_quantized_modules(model: nn.Module) -> dict[str, FakeQuantizedLinear]:
    """The fake-quantized linear layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)}


def converted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The int8/int4 layers of ``model`` (the result of :func:`convert`): fbgemm dynamic quantized linears and
    linears whose weight is a torchao quantized tensor."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, DynamicQuantizedLinear) or isinstance(getattr(m, "weight", None), TorchAOBaseTensor)
    }


def freeze_ranges(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """Fix every fake-quantized layer's weight scale at the value its current weight gives.

    From now on the weight grid no longer follows the weights, and :func:`convert` uses the same scales, so the
    converted model is the model that was trained. Activation ranges stay dynamic: the int8 kernel computes them
    from each input at run time, during training and after conversion alike.

    Returns:
        ``{layer name: (scale, zero_point)}``, as :func:`frozen_scales` would.
    """
    with torch.no_grad():
        for module in fake_quantized_modules(model).values():
            quantizer = module.weight_fake_quantizer
            quantizer.config = dataclasses.replace(quantizer.config, is_dynamic=True)
            quantizer(_linear_weight(module))  # recompute the scale from the current weight
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
        weight = _linear_weight(module).detach()
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
        >>> agent = Agent.load_from_checkpoint("qat.ckpt")  # doctest: +SKIP
        >>> convert(agent)  # doctest: +SKIP
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
            quantizer(_linear_weight(module).detach())  # scales of the current weight, as the last forward used
    return quantizer.scale.detach(), quantizer.zero_point.detach()


def _fbgemm_linear(name: str, module: FakeQuantizedLinear) -> DynamicQuantizedLinear:
    weight = _linear_weight(module).detach()
    if weight.device.type != "cpu":
        raise ValueError(
            f"Layer {name!r} is on {weight.device}, but the fbgemm int8 kernel runs on the CPU only. Call "
            "model.cpu() before convert(model), or quantize with kernel='torchao' for other devices."
        )
    scale, _ = _weight_scales(module)
    with warnings.catch_warnings():
        # torch 2.13 announces that its quantized tensors (which fbgemm's packed int8 weights are built from) will be
        # removed in a future release (pytorch/pytorch#184982); documented in the module docstring.
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        quantized = torch.quantize_per_channel(
            weight.float(),
            scale.reshape(-1).double(),
            torch.zeros(weight.shape[0], dtype=torch.long),
            axis=0,
            dtype=torch.qint8,
        )
    linear = DynamicQuantizedLinear(module.in_features, module.out_features, module.bias is not None)
    bias = None if module.bias is None else module.bias.detach().float()
    linear.set_weight_bias(quantized, bias)
    return linear


def _torchao_linear(module: FakeQuantizedLinear) -> nn.Linear:
    quantizer = module.weight_fake_quantizer
    config: IntxFakeQuantizeConfig = quantizer.config
    weight = _linear_weight(module).detach()
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
        >>> bool((dequantized_weight(convert(model).get_submodule("fc")) == 0).any())  # doctest: +SKIP
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


def _largest_power_of_two(width: int) -> int:
    return width & -width
