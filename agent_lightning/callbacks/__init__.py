"""Compression callbacks: attach them to any Lightning ``Trainer`` (``Trainer(callbacks=[Pruning(0.5)])``)."""

from agent_lightning.callbacks.compression_dashboard import CompressionDashboard
from agent_lightning.callbacks.compression_report import CompressionReport, ModelMeasurement
from agent_lightning.callbacks.distillation import Distillation
from agent_lightning.callbacks.embedding_compression import EmbeddingCompression, compact_from_checkpoint
from agent_lightning.callbacks.pruning import Pruning
from agent_lightning.callbacks.quantization_aware_training import QuantizationAwareTraining, prepare_from_checkpoint
from agent_lightning.callbacks.random_state import RandomState

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
