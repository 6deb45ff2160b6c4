"""Chat SFT batches: examples from :class:`~agent_lightning.generation.prompts.ChatPrompt`, left-padded so that
every row's response ends at the last position (logits are then needed only for the last few positions, and
generation continues every row from the same place)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from agent_lightning.evaluation import GENERATION
from agent_lightning.generation.prompts import IGNORE_INDEX

__all__ = ["ChatCollator", "ChatExamples", "LeftPaddingCollator", "left_pad", "left_padded"]


def left_pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    """``(B, L)`` of the rows, padded on the left with ``value`` to the longest."""
    width = max(len(row) for row in rows)
    return torch.tensor([[value] * (width - len(row)) + list(row) for row in rows], dtype=torch.long)


def left_padded(rows: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, Tensor]:
    """``{"input_ids", "attention_mask"}`` ``(B, L)`` of token-id rows padded on the left: generation continues
    every row from the last position."""
    return {"input_ids": left_pad(rows, pad_token_id), "attention_mask": left_pad([[1] * len(r) for r in rows], 0)}


class ChatExamples(Dataset):
    """Requests with their answers as chat examples.

    Args:
        examples: ``{"input_ids", "labels"}`` per request (:meth:`ChatPrompt.example`).
        prompts: the prompt ids of each request (what generation starts from).
        actions: each request's action index in the action set (for action accuracy; ``-100`` without one).
        texts: the raw requests (for the sample table).
        references: free answers: each request's reference answer text (for exact-match accuracy).
    """

    def __init__(
        self,
        examples: list[dict[str, list[int]]],
        prompts: list[list[int]],
        actions: list[int],
        texts: list[str],
        references: list[str] | None = None,
    ) -> None:
        self.examples, self.prompts, self.actions, self.texts = examples, prompts, actions, texts
        self.references = references
        self.lengths = [len(example["input_ids"]) for example in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            **self.examples[index],
            "prompt_ids": self.prompts[index],
            "action": self.actions[index],
            "request": self.texts[index],
        }
        if self.references is not None:
            item["reference"] = self.references[index]
        return item


class ChatCollator:
    """Left-pads chat examples into a batch.

    Training batches hold ``input_ids``, ``attention_mask`` and ``labels`` ``(B, L)`` (``-100`` over prompts and
    padding); with ``with_prompts`` (validation, test, predict) also ``generation``, what answering is scored with:
    ``{"input_ids", "attention_mask"}`` of the prompts alone ``(B, P)``, ``action`` ``(B,)`` (``-100`` when
    unknown), ``request`` (the texts) and, for free answers, ``reference`` (the reference answer texts). Like
    ``labels``, callbacks that run the model hold it back (:func:`~agent_lightning.evaluation.split_batch`).

    Args:
        pad_token_id: the padding id (masked out, never trained on).
        with_prompts: add the generation inputs.
    """

    def __init__(self, pad_token_id: int, with_prompts: bool) -> None:
        self.pad_token_id = pad_token_id
        self.with_prompts = with_prompts

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = left_padded([item["input_ids"] for item in items], self.pad_token_id)
        batch["labels"] = left_pad([item["labels"] for item in items], IGNORE_INDEX)
        if self.with_prompts:
            batch[GENERATION] = {
                **left_padded([item["prompt_ids"] for item in items], self.pad_token_id),
                "action": torch.tensor([item["action"] for item in items], dtype=torch.long),
                "request": [item["request"] for item in items],
            }
            if "reference" in items[0]:
                batch[GENERATION]["reference"] = [item["reference"] for item in items]
        return batch


class LeftPaddingCollator:
    """Left-pads prompts (items with ``input_ids``) into ``input_ids`` and ``attention_mask`` ``(B, P)``, so that
    generation continues every row from the last position.

    Args:
        pad_token_id: the padding id.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        return left_padded([item["input_ids"] for item in items], self.pad_token_id)
