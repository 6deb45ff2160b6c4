"""Compression callbacks: attach them to any Lightning ``Trainer`` (``Trainer(callbacks=[Pruning(0.5)])``).

Each is a thin layer of hooks and checkpointed state over a technique package that works without a Trainer:
:mod:`agent_lightning.pruning`, :mod:`agent_lightning.quantization`, :mod:`agent_lightning.distillation`; the
plumbing they share is :class:`~agent_lightning.callbacks.base.CompressionCallback`.
"""

from agent_lightning.callbacks.compression_dashboard import CompressionDashboard
from agent_lightning.callbacks.compression_report import CompressionReport, ModelMeasurement
from agent_lightning.callbacks.distillation import Distillation
from agent_lightning.callbacks.embedding_compression import EmbeddingCompression
from agent_lightning.callbacks.pruning import Pruning
from agent_lightning.callbacks.quantization_aware_training import QuantizationAwareTraining
from agent_lightning.callbacks.random_state import RandomState
from agent_lightning.quantization.checkpoint import compact_from_checkpoint, prepare_from_checkpoint

#: Callbacks that change the model itself; runs that use them are judged on the final model, not an early "best".
COMPRESSION_CALLBACKS: tuple[type, ...] = (Pruning, QuantizationAwareTraining, EmbeddingCompression)
#: Callbacks whose runs get a dashboard and a compression report by default on the command line.
REPORTED_CALLBACKS: tuple[type, ...] = (Pruning, QuantizationAwareTraining, Distillation, EmbeddingCompression)

__all__ = [
    "COMPRESSION_CALLBACKS",
    "REPORTED_CALLBACKS",
    "CompressionDashboard",
    "CompressionReport",
    "Distillation",
    "EmbeddingCompression",
    "ModelMeasurement",
    "Pruning",
    "QuantizationAwareTraining",
    "RandomState",
    "compact_from_checkpoint",
    "prepare_from_checkpoint",
]
