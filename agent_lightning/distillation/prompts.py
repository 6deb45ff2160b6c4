"""Distilling a decoder on the request too: which positions predict prompt tokens, and the parts of a causal LM
(its decoder stack and output head) that give logits at any position whatever the model's forward kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationMixin

from agent_lightning.evaluation import UNLABELED

__all__ = ["causal_lm_parts", "keep_first_hidden", "prompt_positions"]


def prompt_positions(labels: Tensor, attention_mask: Tensor) -> Tensor:
    """``(B, L)``: the positions of a chat batch whose next token is a real token of the prompt (unlabelled, not
    padding): what a decoder predicts while reading the request, as opposed to the response positions that
    answer-level KD covers. The last position predicts nothing.

    Args:
        labels: ``(B, L)`` Hugging Face labels, :data:`~agent_lightning.evaluation.UNLABELED` outside the response.
        attention_mask: ``(B, L)``, true (1) for real tokens, left or right padding.

    Example:
        >>> labels = torch.tensor([[-100, -100, -100, -100, 7, 8]])  # one pad, three prompt tokens, the answer
        >>> prompt_positions(labels, torch.tensor([[0, 1, 1, 1, 1, 1]])).int().tolist()
        [[0, 1, 1, 0, 0, 0]]
    """
    real = attention_mask.bool()
    positions = torch.zeros_like(real)
    positions[:, :-1] = real[:, :-1] & real[:, 1:] & (labels[:, 1:] == UNLABELED)
    return positions


def causal_lm_parts(module: nn.Module, argument: str = "prompt_weight") -> tuple[nn.Module, nn.Module]:
    """The Hugging Face causal LM inside ``module``: ``(decoder, head)``, its decoder stack (whose first output is the
    final, normalised hidden states at every position) and its output embeddings (the LM head, also when tied or
    swapped for a fake-quantized or compacted one; looked up again on each call).

    Raises:
        ValueError: ``module`` wraps no Hugging Face decoder with ``get_decoder`` and output embeddings; the message
            names ``argument``, the setting that needs one.
    """
    for candidate in module.modules():
        if isinstance(candidate, GenerationMixin) and not getattr(candidate.config, "is_encoder_decoder", False):
            decoder = candidate.get_decoder() if hasattr(candidate, "get_decoder") else None
            head = candidate.get_output_embeddings()
            if isinstance(decoder, nn.Module) and isinstance(head, nn.Module):
                return decoder, head
    raise ValueError(
        f"Distillation({argument}>0) distils the logits of a decoder at its prompt positions, but "
        f"{type(module).__name__} wraps no Hugging Face causal LM with a decoder stack and an output head (e.g. an "
        f"Agent(task='generation')). Set {argument}=0 for this model."
    )


def keep_first_hidden(store: dict[str, Tensor], key: str, active: Callable[[], bool]) -> Callable[..., None]:
    """A forward hook for a decoder stack that keeps its first output (the final hidden states ``(B, L, D)``) in
    ``store[key]``, only while ``active()`` and only the first call's (a later forward in the same step, e.g. on an
    augmented copy, does not replace it)."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if active() and key not in store:
            store[key] = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state

    return hook
