"""The quantization scheme: which bits for weights and activations, and the kernel the converted model runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchao.quantization.qat import IntxFakeQuantizeConfig

from agent_lightning.quantization.fake_quantizers import linear_weight, quantizable

__all__ = ["DECODER_FLOAT_LAYERS", "Activations", "Kernel", "QuantizationRecipe", "Weights"]

Weights = Literal["int8", "int4"]
Activations = Literal["int8", "none"]
Kernel = Literal["auto", "fbgemm", "onnxruntime", "torchao"]
#: The layers of a Llama-like decoder that int8 activation quantization should leave float: the inputs of SwiGLU's
#: down projection (the products ``silu(gate) * up``) hold outliers of a few thousand beside values near 1 (measured
#: on SmolLM2-135M-Instruct: in some blocks every other value rounds to zero under one int8 range per tensor).
DECODER_FLOAT_LAYERS: tuple[str, ...] = ("*.mlp.down_proj",)


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
            (``torch.ao`` dynamic quantized linear, fast on x86 CPUs, CPU only; int8 weights and activations only;
            activations over ``[0, 127]``), ``"onnxruntime"`` (the same int8 layers, activations over ``[0, 255]`` as
            ONNX Runtime's ``DynamicQuantizeLinear`` quantizes them, and weights over ``[-64, 63]``: ONNX Runtime's
            uint8 x int8 kernels on CPUs without VNNI (AVX2) add pairs of products in 16 bits, which full-range
            weights overflow; 7-bit weights are what its own ``quantize_dynamic(reduce_range=True)`` uses for it:
            the scheme of ``export --format onnx``),
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
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"group_size={size!r} must be an integer, a power of two >= 2, e.g. group_size=32.")
        if size < 2 or size & (size - 1):
            raise ValueError(
                f"group_size={size!r} must be a power of two >= 2 (inputs per int4 scale), e.g. group_size=32."
            )
        if self.kernel not in ("auto", "fbgemm", "onnxruntime", "torchao"):
            raise ValueError(
                f"kernel={self.kernel!r} is not supported; use 'auto', 'fbgemm' (fast int8 on x86 CPUs), "
                "'onnxruntime' (ONNX Runtime's int8 scheme) or 'torchao', e.g. QuantizationRecipe(kernel='auto')."
            )
        if self.kernel in ("fbgemm", "onnxruntime") and (self.weights, self.activations) != ("int8", "int8"):
            raise ValueError(
                f"kernel={self.kernel!r} runs int8 weights with int8 activations only, not weights={self.weights!r}, "
                f"activations={self.activations!r}. Use QuantizationRecipe(weights={self.weights!r}, "
                f"activations={self.activations!r}, kernel='torchao') or QuantizationRecipe(kernel={self.kernel!r})."
            )

    @property
    def backend(self) -> Literal["fbgemm", "onnxruntime", "torchao"]:
        """The kernel ``"auto"`` resolves to: fbgemm for int8 weights and activations, torchao otherwise."""
        if self.kernel == "torchao" or (self.weights, self.activations) != ("int8", "int8"):
            return "torchao"
        return "onnxruntime" if self.kernel == "onnxruntime" else "fbgemm"

    def fake_quantize_configs(self) -> tuple[IntxFakeQuantizeConfig | None, IntxFakeQuantizeConfig]:
        """``(activation_config, weight_config)`` for torchao's ``QATConfig``."""
        if self.weights == "int8":
            dtype = torch.int7 if self.backend == "onnxruntime" else torch.int8  # see ``kernel``
            weight = IntxFakeQuantizeConfig(dtype, granularity="per_channel", is_symmetric=True)
        else:
            weight = IntxFakeQuantizeConfig(torch.int4, group_size=self.group_size, is_symmetric=True)
        activation = None
        if self.activations == "int8" and self.backend == "torchao":  # else DynamicActivationFakeQuantizer
            activation = IntxFakeQuantizeConfig(torch.int8, granularity="per_token", is_symmetric=False)
        return activation, weight

    def check_layer(self, name: str, module: nn.Module) -> None:
        """Raise ``ValueError`` unless this recipe can quantize ``module`` (an ``nn.Linear`` or a Hugging Face
        ``Conv1D`` whose width fits)."""
        if not quantizable(module):
            raise ValueError(
                f"QAT quantizes nn.Linear (and GPT-2 style Conv1D) layers; {name!r} is {type(module).__name__}. "
                f"Exclude it (exclude=['{name}']) or pick linear layers with include=[...]."
            )
        inputs = linear_weight(module).shape[1]
        if self.weights == "int4" and inputs % self.group_size:
            raise ValueError(
                f"group_size={self.group_size} does not divide the {inputs} inputs of layer {name!r}. "
                f"Use a group_size that divides {inputs} (e.g. {_largest_power_of_two(inputs)}) or "
                f"exclude=['{name}']."
            )


def _largest_power_of_two(width: int) -> int:
    return width & -width
