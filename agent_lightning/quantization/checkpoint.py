"""Re-apply what a training run recorded in its checkpoint (QAT ranges, the embedding vocabulary) to a model
loaded from that checkpoint, so that export converts exactly the model that training simulated.

``load_from_checkpoint`` gives a float model: QAT keeps ``state_dict`` keys unchanged and ``EmbeddingCompression``
saves the float table. The callbacks' checkpoint state (``checkpoint["callbacks"]``) holds the rest.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from agent_lightning.quantization.embedding import CompactEmbedding, compact_seen_vocabulary
from agent_lightning.quantization.fake_quantizers import fake_quantized_modules
from agent_lightning.quantization.qat import load_frozen_scales, prepare
from agent_lightning.quantization.recipe import QuantizationRecipe

__all__ = ["callback_state", "compact_from_checkpoint", "counts_from_state", "prepare_from_checkpoint"]


def callback_state(checkpoint: dict[str, Any], callback: str) -> dict[str, Any] | None:
    """The checkpoint state of the first callback whose state key starts with ``callback`` (its class name), or
    ``None``."""
    states = [v for k, v in checkpoint.get("callbacks", {}).items() if k.startswith(callback)]
    return states[0] if states else None


def counts_from_state(state: dict[str, Any]) -> Tensor:
    """The ``(vocab_size,)`` token counts an ``EmbeddingCompression`` state stores sparsely."""
    counts = torch.zeros(int(state["vocab_size"]), dtype=torch.long)
    counts[state["seen_tokens"].long()] = state["seen_counts"].long()
    return counts


def prepare_from_checkpoint(module: nn.Module, checkpoint: str | os.PathLike | dict[str, Any]) -> list[str]:
    """Put a model loaded from a QAT checkpoint back in its trained fake-quantized state (frozen ranges included).

    This re-applies the ``QuantizationAwareTraining`` recipe, targets and frozen weight ranges stored in the
    checkpoint, so :func:`~agent_lightning.quantization.convert` then produces exactly the int8 model that training
    simulated.

    Args:
        module: the model loaded from the checkpoint (e.g. ``Agent.load_from_checkpoint(path)``).
        checkpoint: the checkpoint path or the loaded checkpoint dict.

    Returns:
        The names of the fake-quantized layers.

    Raises:
        ValueError: the checkpoint holds no QAT state, or QAT had not started when it was written.

    Example:
        >>> prepare_from_checkpoint(nn.Linear(4, 4), {"callbacks": {}})
        Traceback (most recent call last):
        ValueError: This checkpoint has no started QuantizationAwareTraining state (QAT was not attached, or had not \
reached its start step). Quantize it post-training instead: convert(module, QuantizationRecipe()).
    """
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = callback_state(checkpoint, "QuantizationAwareTraining")
    if state is None or not state["prepared"]:
        raise ValueError(
            "This checkpoint has no started QuantizationAwareTraining state (QAT was not attached, or had not reached "
            "its start step). Quantize it post-training instead: convert(module, QuantizationRecipe())."
        )
    prepare(module, QuantizationRecipe(**state["recipe"]), state["include"], state["exclude"])
    load_frozen_scales(module, state["frozen_scales"])
    return list(fake_quantized_modules(module))


def compact_from_checkpoint(module: nn.Module, checkpoint: dict[str, Any]) -> CompactEmbedding | None:
    """Apply the embedding compaction an ``EmbeddingCompression`` run recorded in ``checkpoint`` to ``module`` (a
    model loaded from that checkpoint); ``None`` when the run had no such callback.

    Example:
        >>> compact_from_checkpoint(nn.Embedding(4, 2), {"callbacks": {}}) is None
        True
    """
    state = callback_state(checkpoint, "EmbeddingCompression")
    if state is None:
        return None
    return compact_seen_vocabulary(
        module,
        counts_from_state(state),
        state["weights"],
        state["vocabulary"],
        state["unseen"],
        state["fallback_token"],
        state.get("frequent_tokens", 0),  # checkpoints of earlier versions have no such setting
    )
