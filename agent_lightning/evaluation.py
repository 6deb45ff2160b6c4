"""Reading any LightningModule's batches and outputs, for callbacks that must run a module they did not write.

What a foreign module must provide (callbacks raise :class:`TypeError` naming it otherwise):

- batches that are either a mapping of tensors (``dict``, ``BatchEncoding``), called as ``module(**inputs)`` with
  the ``"labels"`` and :data:`GENERATION` entries (if any) held back, or a ``(inputs, labels)`` pair
  (``tuple``/``list``), called as ``module(inputs)``, or a bare input tensor (no labels: nothing is scored);
- a ``forward`` that returns logits: a tensor, an object with a ``logits`` attribute (Hugging Face outputs), or a
  ``dict`` with a ``"logits"`` key. Logits are ``(..., num_classes)``; labels have the leading shape of the logits,
  and ``-100`` marks positions to ignore (the Hugging Face convention);
- or, for a module whose answers are not the argmax of its logits (a generative agent decodes them), a
  ``score_batch(batch) -> (correct, counted)`` method, which accuracy uses instead (``None``: score the logits).

A module that wraps a Hugging Face causal language model (:func:`is_causal_lm`) follows the Hugging Face causal-LM
convention instead: labels ``(B, L)`` are aligned with ``input_ids`` and position ``t`` predicts label ``t + 1``;
logits may cover only the last ``K`` positions (``logits_to_keep``). :func:`next_token_labels` lines the labels up
with such logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn
from transformers import GenerationMixin

__all__ = [
    "GENERATION",
    "UNLABELED",
    "accuracy",
    "action_accuracy",
    "batch_to_device",
    "count_correct",
    "device_of",
    "forward_batches",
    "is_causal_lm",
    "labelled_rows",
    "logits_of",
    "next_token_labels",
    "split_batch",
]

#: The batch entry a generative agent's evaluation batches keep their prompts, actions and texts under: held back
#: from ``forward`` like the labels.
GENERATION = "generation"
#: The label of a training row without one (PyTorch's cross-entropy ``ignore_index``): task losses skip it,
#: distillation learns from it.
UNLABELED = -100


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Tensor | None]:
    """``(args, kwargs, labels)`` to call a module on ``batch``, labels held back.

    Raises:
        TypeError: the batch is neither a mapping, an ``(inputs, labels)`` pair nor a tensor.
    """
    if isinstance(batch, Mapping):  # dict, or a tokenizer's BatchEncoding
        inputs = {key: value for key, value in batch.items() if key not in ("labels", GENERATION)}
        return (), inputs, batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return (batch[0],), {}, batch[1]
    if isinstance(batch, Tensor):  # inputs only (e.g. Lightning's BoringModel): nothing to score against
        return (batch,), {}, None
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__}: agent_lightning callbacks that run the model need a "
        "dict of tensors (called as module(**batch) without 'labels'), an (inputs, labels) pair or a tensor."
    )


def labelled_rows(labels: Any, rows: int) -> Tensor | None:
    """Boolean ``(rows,)`` mask of the rows whose label is not :data:`UNLABELED`, or ``None`` when ``labels`` is not a
    per-row label tensor (then every row counts as labelled).

    Example:
        >>> labelled_rows(torch.tensor([3, -100, 0]), 3).tolist()
        [True, False, True]
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != rows or labels.is_floating_point():
        return None
    return labels != UNLABELED


def logits_of(output: Any) -> Tensor:
    """The logits in a module's output.

    Raises:
        TypeError: the output is not a tensor, an object with ``logits`` or a dict with ``"logits"``.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"The module's forward returned {type(output).__name__}; agent_lightning needs logits: a tensor, an object "
        "with a `logits` attribute (Hugging Face outputs) or a dict with a 'logits' key."
    )


@torch.no_grad()
def count_correct(module: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> tuple[int, int]:
    """``(correct, counted)`` top-1 predictions of ``module`` over ``batches`` (moved to its device), in eval mode.

    ``module`` is a LightningModule (batches move with its ``transfer_batch_to_device``) or any ``nn.Module`` (e.g.
    a Hugging Face teacher; tensors move to the device of its first parameter). Batches without labels are skipped;
    labels equal to ``-100`` are not counted; at most ``max_batches`` batches are read when given. A module with a
    ``score_batch`` method scores each batch itself.
    """
    was_training = module.training
    module.eval()
    correct = counted = 0
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            batch = batch_to_device(module, batch)
            scored = module.score_batch(batch) if callable(getattr(module, "score_batch", None)) else None
            if scored is not None:  # the module decodes its own answers
                correct, counted = correct + scored[0], counted + scored[1]
                continue
            args, kwargs, labels = split_batch(batch)
            if labels is None:
                continue
            predictions = logits_of(module(*args, **kwargs)).argmax(-1)
            valid = labels != -100
            correct += int(((predictions == labels) & valid).sum())
            counted += int(valid.sum())
    finally:
        module.train(was_training)
    return correct, counted


def is_causal_lm(module: nn.Module) -> bool:
    """Whether ``module`` is or wraps a Hugging Face causal language model (a ``GenerationMixin`` decoder)."""
    return any(
        isinstance(m, GenerationMixin) and not getattr(getattr(m, "config", None), "is_encoder_decoder", False)
        for m in module.modules()
    )


def next_token_labels(labels: Tensor, positions: int) -> Tensor:
    """``(B, positions)``: the label each of the last ``positions`` positions of a causal LM predicts (the next
    token's), :data:`UNLABELED` where there is none.

    Example:
        >>> next_token_labels(torch.tensor([[-100, -100, 7, 8]]), 3).tolist()  # logits of the last 3 positions
        [[7, 8, -100]]
    """
    shifted = torch.full_like(labels, UNLABELED)
    shifted[:, :-1] = labels[:, 1:]
    return shifted[:, labels.shape[1] - positions :]


def batch_to_device(module: nn.Module, batch: Any) -> Any:
    """``batch`` on ``module``'s device: through a LightningModule's ``transfer_batch_to_device``, else every tensor
    moved to the device of the module's first parameter."""
    device = device_of(module)
    if isinstance(module, LightningModule):
        return module.transfer_batch_to_device(batch, device, 0)
    return move_data_to_device(batch, device)


@torch.no_grad()
def forward_batches(module: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Call ``module`` on each batch (eval mode, no gradients, moved to its device, labels held back as
    :func:`split_batch` does), for whatever forward hooks observe; returns the number of batches read.

    Raises:
        ValueError: no batch was read.
    """
    was_training = module.training
    module.eval()
    count = 0
    try:
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            args, kwargs, _ = split_batch(batch_to_device(module, batch))
            module(*args, **kwargs)
            count += 1
    finally:
        module.train(was_training)
    if not count:
        raise ValueError("No calibration batch was read: give at least one batch (e.g. a training dataloader).")
    return count


def accuracy(strategy: Strategy, module: nn.Module, loaders: Any, max_batches: int | None = None) -> float | None:
    """Top-1 accuracy of ``module`` over ``loaders`` (``None``, one dataloader or a list of them), summed over all
    processes of ``strategy``; ``None`` when nothing was labelled. ``max_batches`` bounds each loader."""
    if loaders is None:
        return None
    correct = counted = 0
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        c, n = count_correct(module, loader, max_batches)
        correct, counted = correct + c, counted + n
    totals = strategy.reduce(torch.tensor([correct, counted], dtype=torch.float64), reduce_op="sum")
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


def action_accuracy(actor: Any, texts: Sequence[str], labels: Sequence[str]) -> float:
    """Share of ``texts`` for which ``actor.act`` (an :class:`~agent_lightning.Agent` or an
    :class:`~agent_lightning.deployment.runtime.ExportedAgent`) picks the action in ``labels``.

    Raises:
        ValueError: ``texts`` and ``labels`` differ in length or are empty.
    """
    if not texts or len(texts) != len(labels):
        raise ValueError(f"action_accuracy needs as many labels as texts, got {len(texts)} and {len(labels)}.")
    actions = [action for action, _ in actor.act(list(texts))]
    return sum(action == label for action, label in zip(actions, labels)) / len(labels)


def device_of(module: nn.Module) -> torch.device:
    """A LightningModule's ``device``, else the device of the module's first parameter (CPU without any)."""
    if isinstance(module, LightningModule):
        return module.device
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
