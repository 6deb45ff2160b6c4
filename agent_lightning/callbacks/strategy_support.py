"""Which Lightning strategies the compression callbacks support, and the error for those they do not.

They work with one device and with data parallelism (``ddp``, ``ddp_spawn``, ``ddp_find_unused_parameters_true``,
on one machine or several with ``num_nodes``): every rank holds the whole model, so masks, quantization ranges and
teacher outputs are computed on whole tensors (and broadcast from rank zero where it matters). Sharded strategies
(FSDP, DeepSpeed ZeRO, model parallelism) hand each rank a slice of the weights wrapped in their own modules; a
callback that masks whole weight matrices, swaps modules or reads a layer's outputs would silently do the wrong
thing there, so it refuses at ``setup``.
"""

from __future__ import annotations

from lightning.pytorch import Trainer

__all__ = ["SHARDED_STRATEGY_NAMES", "refuse_sharded_strategies"]

#: substrings of the class names of Lightning's sharded strategies
SHARDED_STRATEGY_NAMES = ("FSDP", "DeepSpeed", "ModelParallel")


def refuse_sharded_strategies(trainer: Trainer, owner: str, reason: str) -> None:
    """Raise at ``setup`` when the trainer's strategy shards the model.

    Args:
        trainer: the trainer being set up.
        owner: the callback's name, e.g. ``"Pruning"``.
        reason: what the callback does that sharding breaks.

    Raises:
        ValueError: the strategy is FSDP, DeepSpeed or model-parallel; the message names it and the fix.
    """
    name = type(trainer.strategy).__name__
    if any(key in name for key in SHARDED_STRATEGY_NAMES):
        raise ValueError(
            f"{owner} does not support the {name} strategy: {reason}, and sharded strategies split the weights "
            "across ranks. Use strategy='ddp' (several devices or, with num_nodes, several machines) or one device."
        )
