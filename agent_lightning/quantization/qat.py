"""Quantization-aware training: swap linear layers for fake-quantized ones, freeze their weight ranges."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchao.quantization import quantize_
from torchao.quantization.qat import FakeQuantizedLinear, QATConfig
from transformers.pytorch_utils import Conv1D

from agent_lightning.quantization.fake_quantizers import (
    DynamicActivationFakeQuantizer,
    FakeQuantizedConv1D,
    fake_quantized_modules,
    linear_weight,
    quantizable,
)
from agent_lightning.quantization.recipe import QuantizationRecipe
from agent_lightning.targets import select_modules

__all__ = [
    "freeze_ranges",
    "frozen_scales",
    "load_frozen_scales",
    "prepare",
    "quantization_targets",
    "weight_error",
]


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
            quantizable or is tied to an embedding table; or the group size does not fit a layer.
    """
    targets = select_modules(model, include, exclude, argument="QuantizationAwareTraining(include=...)")
    if include is None:
        usable = {n: m for n, m in targets.items() if quantizable(m)}
        if not usable:
            kinds = sorted({type(m).__name__ for m in targets.values()})
            raise ValueError(
                f"QAT quantizes nn.Linear and GPT-2 style Conv1D layers, and the default targets of this model are "
                f"{', '.join(kinds)} (e.g. {next(iter(targets))!r}). Name linear layers with include=[...]."
            )
        targets = usable
    for name, module in targets.items():
        recipe.check_layer(name, module)
    _refuse_tied(model, targets)
    return targets


def _refuse_tied(model: nn.Module, targets: dict[str, nn.Module]) -> None:
    """A targeted layer whose weight is also an embedding table (a tied output layer) would be quantized apart from
    the table it shares: two diverging copies of one tensor."""
    tables = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, module in targets.items():
        table = tables.get(id(getattr(module, "weight", None)))
        if table is not None:
            raise ValueError(
                f"QAT would quantize {name!r}, whose weight is tied to the embedding table {table!r}: the layer and "
                f"the table would become two different tensors. Leave it float (exclude=['{name}']), or quantize the "
                "shared table once with EmbeddingCompression(weights='int8'), which keeps the tie."
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
        ValueError: see :func:`quantization_targets`.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> prepare(model, QuantizationRecipe(weights="int8"))  # default targets: every linear but the last
        ['0']
        >>> type(model[0]).__name__
        'FakeQuantizedLinear'
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
        if recipe.backend != "torchao" and module.activation_fake_quantizer is None:  # fbgemm's or ONNX Runtime's
            full_range = recipe.backend == "onnxruntime"
            module.activation_fake_quantizer = DynamicActivationFakeQuantizer(full_range=full_range)
    return list(targets)


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
            quantizer(linear_weight(module))  # recompute the scale from the current weight
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
        weight = linear_weight(module).detach()
        norm = weight.float().norm()
        if norm == 0:
            return 0.0
        return float((module.weight_fake_quantizer(weight).float() - weight.float()).norm() / norm)
