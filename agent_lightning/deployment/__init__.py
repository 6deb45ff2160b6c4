"""Deployment: exporting a trained agent (verified by reloading), running the export, and measuring models the same
way everywhere (bytes, parameters, round-robin CPU latency, the export against its teacher).

- :mod:`~agent_lightning.deployment.export`: :func:`export_agent` (``"onnx"`` int8 ONNX model, ``"int8"`` TorchScript
  program, ``"hf"`` folder).
- :mod:`~agent_lightning.deployment.onnx_layers`: PyTorch layers that trace to ONNX Runtime's int8 kernels (dynamic
  int8 linears, ``QAttention``) and compute what they compute.
- :mod:`~agent_lightning.deployment.onnx_program`: a model ready for tracing, tracing, the ONNX Runtime session.
- :mod:`~agent_lightning.deployment.runtime`: :class:`ExportedAgent`, which runs an int8 export (either format).
- :mod:`~agent_lightning.deployment.peers`: the teacher under ONNX Runtime, fp32 and ``quantize_dynamic`` int8, as
  export folders (:func:`onnx_runtime_peers`) or as modules beside a trained model's ONNX export (the rows of a
  :class:`~agent_lightning.callbacks.CompressionReport`).
- :mod:`~agent_lightning.deployment.measure`: :func:`parameter_counts`, :func:`saved_bytes`, :func:`compare_latency`.
- :mod:`~agent_lightning.deployment.compare`: :func:`compare_with_teacher` (with the peers) and its
  :class:`RecipeSummary`.
"""

from agent_lightning.deployment.compare import RecipeSummary, compare_with_teacher
from agent_lightning.deployment.export import ExportResult, describe, export_agent, load_agent_checkpoint
from agent_lightning.deployment.measure import (
    ModelInputs,
    compare_latency,
    file_bytes,
    parameter_counts,
    saved_bytes,
    token_inputs,
)
from agent_lightning.deployment.runtime import ExportedAgent

__all__ = [
    "ExportResult",
    "ExportedAgent",
    "ModelInputs",
    "RecipeSummary",
    "compare_latency",
    "compare_with_teacher",
    "describe",
    "export_agent",
    "file_bytes",
    "load_agent_checkpoint",
    "parameter_counts",
    "saved_bytes",
    "token_inputs",
]
