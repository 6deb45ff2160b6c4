"""Compression callbacks: attach them to any Lightning ``Trainer`` (``Trainer(callbacks=[Pruning(0.5)])``)."""

from agent_lightning.callbacks.distillation import Distillation
from agent_lightning.callbacks.pruning import Pruning
from agent_lightning.callbacks.quantization_aware_training import QuantizationAwareTraining, prepare_from_checkpoint
from agent_lightning.callbacks.random_state import RandomState

#: Callbacks that change the model itself; runs that use them are judged on the final model, not an early "best".
COMPRESSION_CALLBACKS: tuple[type, ...] = (Pruning, QuantizationAwareTraining)

__all__ = [
    "COMPRESSION_CALLBACKS",
    "Distillation",
    "Pruning",
    "QuantizationAwareTraining",
    "RandomState",
    "prepare_from_checkpoint",
]
