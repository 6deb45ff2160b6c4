"""The agent as an ONNX model for ONNX Runtime, carrying over what compression did.

Fewer blocks, physically removed heads and neurons and a compacted int8 vocabulary are part of the PyTorch model and
are traced as they are. Each int8 linear layer becomes ONNX Runtime's dynamic int8 pattern with *the model's own*
int8 weights and per-channel scales (those QAT trained, not a fresh calibration), and a BERT-family self-attention
with int8 query, key and value layers becomes one ``QAttention`` node
(:mod:`~agent_lightning.deployment.onnx_layers`: PyTorch layers that compute what the graph computes, so the
traced module is the reference the exported graph is checked against).
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

from agent_lightning.deployment.onnx_layers import OnnxInt8Linear, fuse_encoder_layers
from agent_lightning.quantization.convert import converted_modules
from agent_lightning.quiet import messages_dropped

__all__ = [
    "ONNX_MODEL",
    "ONNX_OPSET",
    "OnnxProgram",
    "int8_weights",
    "onnx_ready",
    "onnx_session",
    "write_onnx",
]

#: The model file of an ONNX export.
ONNX_MODEL = "model.onnx"
ONNX_OPSET = 17


def onnx_ready(model: nn.Module, max_length: int | None = None) -> nn.Module:
    """A copy of a (converted) Hugging Face model ready for tracing to ONNX: int8 layers as
    :class:`~agent_lightning.deployment.onnx_layers.OnnxInt8Linear`; in a BERT-family encoder, self-attention with
    int8 query, key and value as ONNX Runtime's ``QAttention`` and the embeddings computed at load where they can be
    (:func:`~agent_lightning.deployment.onnx_layers.fuse_encoder_layers`); eager attention elsewhere (the SDPA path
    traces shape-dependent branches); and the position table cut to ``max_length`` rows when the model has one
    longer (no request is longer).

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
    fuse_encoder_layers(model)
    return model


def write_onnx(
    program: nn.Module,
    example: tuple[Tensor, ...],
    path: str | os.PathLike,
    input_names: tuple[str, ...] = ("input_ids", "attention_mask"),
    output_names: tuple[str, ...] = ("logits",),
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    fold_constants: bool = True,
) -> None:
    """Trace ``program`` to an ONNX file; by default a classifier's ``(input_ids, attention_mask) -> logits`` with
    dynamic batch and length (``dynamic_axes`` names the dynamic dimensions of other inputs and outputs).

    ``fold_constants=False`` leaves computations on constants in the graph for ONNX Runtime to do when it loads the
    model: the file keeps what was packed packed (int4 rows, not the float table computed from them) and each int8
    layer's weights under its own name (a ``QAttention``'s query, key and value weights are concatenated at load).
    ``quantize_dynamic`` needs them folded (it quantizes a ``MatMul`` whose weight is an initializer)."""
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
                do_constant_folding=fold_constants,
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
    initializers each :class:`~agent_lightning.deployment.onnx_layers.OnnxInt8Linear` exported (``<layer>.weight_t``
    and ``<layer>.weight_scale``; a ``QAttention``'s query, key and value keep theirs), e.g. to check that they are the
    ones QAT trained.

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
