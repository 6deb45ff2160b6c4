"""Compression callbacks: attach them to any Lightning ``Trainer`` (``Trainer(callbacks=[Pruning(0.5)])``)."""

from agent_lightning.callbacks.pruning import Pruning
from agent_lightning.callbacks.random_state import RandomState

__all__ = ["Pruning", "RandomState"]
