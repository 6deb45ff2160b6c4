"""The agent as an ONNX model for ONNX Runtime, carrying over what compression did.

Fewer blocks, physically removed heads and neurons and a compacted int8 vocabulary are part of the PyTorch model and
are traced as they are. Each int8 linear layer becomes ONNX Runtime's dynamic int8 pattern with *the model's own*
int8 weights and per-channel scales (those QAT trained, not a fresh calibration):
``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q) -> Cast -> Mul(x_scale * w_scale) -> Add(bias)``, which ONNX
Runtime fuses into its ``DynamicQuantizeMatMul`` kernel. Activations are quantized as ``DynamicQuantizeLinear`` does:
one asymmetric uint8 scale over ``[0, 255]`` per tensor, from its min and max (QAT with ``kernel="onnxruntime"``
trains with exactly this; the fbgemm scheme differs only in using ``[0, 127]``).

:class:`OnnxInt8Linear` computes the same in PyTorch, so the traced module is the reference the exported graph is
checked against.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from agent_lightning.quantization.convert import converted_modules
from agent_lightning.quiet import messages_dropped

__all__ = [
    "ONNX_MODEL",
    "ONNX_OPSET",
    "OnnxInt8Linear",
    "OnnxProgram",
    "int8_weights",
    "onnx_ready",
    "onnx_session",
    "write_onnx",
]

#: The model file of an ONNX export.
ONNX_MODEL = "model.onnx"
ONNX_OPSET = 17


def _dynamic_quantize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_q, scale, zero_point)`` as ONNX ``DynamicQuantizeLinear``: the range holds 0, uint8 values as float."""
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (high - low) / 255
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero input: any scale gives zeros
    zero_point = torch.round(-low / scale).clamp(0, 255)
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255), scale, zero_point


class _DynamicQuantizedMatMul(torch.autograd.Function):
    """``x @ W`` with ``x`` quantized dynamically to uint8 and ``W`` int8 per output channel; traced to ONNX as
    ONNX Runtime's dynamic int8 pattern (the ``symbolic`` below)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor) -> Tensor:
        quantized, scale, zero_point = _dynamic_quantize(x.float())
        accumulated = (quantized - zero_point) @ weight_t.float()  # exact: integers below 2**24
        return (accumulated * (scale * weight_scale) + bias).to(x.dtype)

    @staticmethod
    def symbolic(g, x, weight_t, weight_scale, bias):  # the TorchScript-based ONNX exporter calls this
        quantized, scale, zero_point = g.op("DynamicQuantizeLinear", x, outputs=3)
        accumulated = g.op("Cast", g.op("MatMulInteger", quantized, weight_t, zero_point), to_i=1)  # to float
        return g.op("Add", g.op("Mul", accumulated, g.op("Mul", scale, weight_scale)), bias)


class OnnxInt8Linear(nn.Module):
    """An int8 linear layer as ONNX Runtime runs it: uint8 dynamic activations times int8 per-channel weights.

    Shapes:
        input: ``(*, in_features)`` float; output: ``(*, out_features)``.

    Args:
        weight: ``(out_features, in_features)`` int8 values.
        scale: ``(out_features,)`` float scale of each output channel.
        bias: ``(out_features,)`` float, or ``None``.

    Example:
        >>> layer = OnnxInt8Linear(torch.tensor([[1, -2], [3, 4]], dtype=torch.int8), torch.tensor([0.5, 0.25]))
        >>> y = layer(torch.tensor([[2.0, 1.0]]))  # about [2 * 0.5 - 1 * 1.0, 2 * 0.75 + 1 * 1.0]
        >>> torch.allclose(y, torch.tensor([[0.0, 2.5]]), atol=0.01)  # up to the uint8 rounding of the input
        True
    """

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D int8 tensor, got {weight.dtype} of shape {tuple(weight.shape)}.")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_t", weight.t().contiguous())  # (in, out): MatMulInteger's B
        self.register_buffer("weight_scale", scale.float().reshape(-1).contiguous())
        self.register_buffer("bias", torch.zeros(self.out_features) if bias is None else bias.detach().float())

    @classmethod
    def from_converted(cls, name: str, module: nn.Module) -> OnnxInt8Linear:
        """The same layer from a converted one (``agent_lightning.quantization.convert``): the int8 values and
        per-channel scales it holds.

        Raises:
            ValueError: ``module`` is not an int8 per-channel layer with zero points 0 (an int4 or torchao layer).
        """
        if not isinstance(module, DynamicQuantizedLinear):
            raise ValueError(
                f"Layer {name!r} is {type(module).__name__}: the ONNX export carries int8 per-channel layers (QAT "
                "with weights='int8', activations='int8' and kernel 'auto', 'fbgemm' or 'onnxruntime'). Export "
                "int4 or weight-only models with --format int8."
            )
        weight = module.weight()
        if bool(weight.q_per_channel_zero_points().ne(0).any()):
            raise ValueError(f"Layer {name!r} has non-zero weight zero points; the ONNX export needs symmetric ones.")
        return cls(weight.int_repr(), weight.q_per_channel_scales(), module.bias())

    def forward(self, x: Tensor) -> Tensor:
        return _DynamicQuantizedMatMul.apply(x, self.weight_t, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x uint8 dynamic"


def onnx_ready(model: nn.Module, max_length: int | None = None) -> nn.Module:
    """A copy of a (converted) Hugging Face model ready for tracing to ONNX: int8 layers as
    :class:`OnnxInt8Linear`, eager attention (the SDPA path traces shape-dependent branches), and the position
    table cut to ``max_length`` rows when the model has one longer (no request is longer).

    Raises:
        ValueError: a converted layer the ONNX export cannot carry (see :meth:`OnnxInt8Linear.from_converted`).
    """
    model = copy.deepcopy(model).cpu().eval()
    for name, module in converted_modules(model).items():
        model.set_submodule(name, OnnxInt8Linear.from_converted(name, module))
    config = getattr(model, "config", None)
    if config is not None:
        config._attn_implementation = "eager"
    positions = getattr(getattr(getattr(model, "base_model", None), "embeddings", None), "position_embeddings", None)
    if max_length is not None and isinstance(positions, nn.Embedding) and positions.num_embeddings > max_length:
        positions.weight = nn.Parameter(positions.weight.detach()[:max_length].clone(), requires_grad=False)
        positions.num_embeddings = max_length
    return model


def write_onnx(
    program: nn.Module,
    example: tuple[Tensor, ...],
    path: str | os.PathLike,
    input_names: tuple[str, ...] = ("input_ids", "attention_mask"),
    output_names: tuple[str, ...] = ("logits",),
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Trace ``program`` to an ONNX file; by default a classifier's ``(input_ids, attention_mask) -> logits`` with
    dynamic batch and length (``dynamic_axes`` names the dynamic dimensions of other inputs and outputs)."""
    if dynamic_axes is None:
        dynamic_axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
        dynamic_axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript-based exporter (dynamo=False) is the one that honours autograd.Function.symbolic; its notes
        # on Python-constant branches concern shapes HF handles either way (the export's parity check runs padded
        # and unpadded rows of other lengths), and its deprecation notice is for a future torch.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=FutureWarning)
        with messages_dropped("transformers.modeling_utils", "`loss_type=None` was set"):
            torch.onnx.export(
                program,
                example,
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
            )


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for ``path``, all graph optimizations on, intra-op threads ``threads`` (default:
    torch's thread count) and thread spinning off (spinning threads take the CPU from whatever runs next)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its optimizer's notes are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxProgram:
    """``(input_ids, attention_mask) -> logits`` through an ONNX Runtime session, with the signature of the
    TorchScript program (torch tensors in and out), so that anything that runs one runs the other.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: torch's).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        arrays = {name: feeds[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        return torch.from_numpy(self.session.run(None, arrays)[0])

    def eval(self) -> OnnxProgram:
        """No-op (an ONNX session has no training mode); for code that calls ``program.eval()``."""
        return self


def int8_weights(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Read the int8 layers back from an ONNX file: ``{layer: (int8 weight (out, in), scale (out,))}``, from the
    initializers :class:`OnnxInt8Linear` exported (``<layer>.weight_t`` and ``<layer>.weight_scale``), e.g. to
    check that they are the ones QAT trained.

    Args:
        path: the ``.onnx`` file.
        names: only these layers (module names as in the traced program).
    """
    tensors = {t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    layers = {}
    for key, tensor in tensors.items():
        if not key.endswith(".weight_t") or key.removesuffix(".weight_t") + ".weight_scale" not in tensors:
            continue
        layer = key.removesuffix(".weight_t")
        if names is not None and layer not in names:
            continue
        weight = torch.from_numpy(numpy_helper.to_array(tensor).copy()).t()
        scale = torch.from_numpy(numpy_helper.to_array(tensors[f"{layer}.weight_scale"]).copy())
        layers[layer] = (weight, scale)
    return layers
