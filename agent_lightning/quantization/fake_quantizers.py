"""Fake quantizers that match the int8 kernels: fbgemm's dynamic activation scheme, and GPT-2 ``Conv1D`` layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchao.quantization.qat import FakeQuantizedLinear
from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase
from transformers.pytorch_utils import Conv1D

__all__ = [
    "DynamicActivationFakeQuantizer",
    "FakeQuantizedConv1D",
    "fake_quantized_modules",
    "linear_weight",
    "quantizable",
]


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


def quantizable(module: nn.Module) -> bool:
    return type(module) is nn.Linear or isinstance(module, (FakeQuantizedLinear, Conv1D))


def linear_weight(module: nn.Module) -> Tensor:
    """The weight as ``(out_features, in_features)`` (a view for Conv1D layouts)."""
    if isinstance(module, (Conv1D, FakeQuantizedConv1D)):
        return module.weight.t()
    return module.weight


class DynamicActivationFakeQuantizer(nn.Module):
    """Fake-quantize a layer's input the way a dynamic int8 linear kernel quantizes it at inference.

    The whole input tensor gets one asymmetric scale and zero point, chosen from the tensor's min and max (the range
    always holds 0) by ``torch._choose_qparams_per_tensor`` — the routine fbgemm itself calls — over ``[0, 127]``
    (fbgemm's ``reduce_range``), or over ``[0, 255]`` with ``full_range=True`` (ONNX Runtime's
    ``DynamicQuantizeLinear``); ``torch.fake_quantize_per_tensor_affine`` rounds the values (straight-through
    gradient inside the range). No state: ``state_dict`` keys of the layer do not change.

    Args:
        full_range: quantize over ``[0, 255]`` instead of ``[0, 127]``.

    Shapes:
        input: ``(*, in_features)``, any float dtype; output: same shape and dtype.

    Example:
        >>> quantizer = DynamicActivationFakeQuantizer()
        >>> x = torch.randn(2, 5, 8)
        >>> bool((quantizer(x) - x).abs().max() <= (x.max() - x.min()) / 127)
        True
    """

    quant_min = 0

    def __init__(self, full_range: bool = False) -> None:
        super().__init__()
        self.full_range = full_range
        self.quant_max = 255 if full_range else 127
        self.scale: float | None = None  # of the last call, for logging

    def forward(self, x: Tensor) -> Tensor:
        scale, zero_point = torch._choose_qparams_per_tensor(x.detach().float(), not self.full_range)
        self.scale = scale
        quantized = torch.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, self.quant_min, self.quant_max)
        return quantized.to(x.dtype)

    def extra_repr(self) -> str:
        return f"uint8 [0, {self.quant_max}] per tensor"


def fake_quantized_modules(model: nn.Module) -> dict[str, FakeQuantizedLinear]:
    """The fake-quantized linear layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)}
