"""Pruning, usable without a Trainer: unstructured magnitude (per layer or global), N:M, and structured neurons and
heads (by weight norm or first-order ``|W * grad|``), on a step schedule, with physical removal of pruned structure.

- :class:`PruningConfig` (:mod:`~agent_lightning.pruning.config`): what to prune, validated.
- :class:`Pruner` and :func:`prune` (:mod:`~agent_lightning.pruning.pruner`): a model's masks, grown towards the
  target, enforced (weights, gradients, optimizer moments), measured and made permanent.
- :mod:`~agent_lightning.pruning.masks` and :mod:`~agent_lightning.pruning.units`: the mask algorithms on tensors.
- :class:`StepSchedule` (:mod:`~agent_lightning.pruning.schedule`): when, in optimizer steps (cubic, linear, one-shot).
- :mod:`~agent_lightning.pruning.removal`: cutting pruned heads and neurons out of ``nn.Linear`` layers, and
  rebuilding such a model when it is loaded.

:class:`agent_lightning.callbacks.Pruning` drives these during ``fit``.
"""

from agent_lightning.pruning.config import PruningConfig
from agent_lightning.pruning.pruner import Pruner, prune
from agent_lightning.pruning.removal import (
    STRUCTURE_KEY,
    build_from_config,
    load_pretrained_pruned,
    remove_structure,
    shrink_to_structure,
)
from agent_lightning.pruning.schedule import StepSchedule

__all__ = [
    "STRUCTURE_KEY",
    "Pruner",
    "PruningConfig",
    "StepSchedule",
    "build_from_config",
    "load_pretrained_pruned",
    "prune",
    "remove_structure",
    "shrink_to_structure",
]
