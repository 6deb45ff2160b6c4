"""Smaller input embeddings: keep only the vocabulary a task uses, and store the rows as int8.

In all-MiniLM-L6-v2 the word embeddings hold 11.7 M of the 22.7 M parameters, and int8 on the ``nn.Linear`` layers
leaves them untouched: the model cannot shrink below about 0.6x of its bytes without compressing them. Two
ways, usable together:

- **Vocabulary trimming**: rows of tokens the task never uses are dropped; a token-to-row table sends any other token
  to the kept row nearest to its own embedding (cosine similarity, computed once from the float table), or to a
  fallback token's row (``[UNK]``), so unseen input still runs. What each choice costs in accuracy is measured in
  ``benchmarks/quantization/`` (vocabulary trimming).
- **int8 rows**: each kept row is stored as int8 with one float scale per row (symmetric, ``scale = max|row| / 127``);
  the lookup dequantizes only the rows a batch reads.

:class:`CompactEmbedding` replaces the model's input embedding module (``get_input_embeddings`` /
``set_input_embeddings`` of a Hugging Face model, or a named ``nn.Embedding``); it is plain tensor code, so a traced
TorchScript program carries it. :class:`~agent_lightning.callbacks.EmbeddingCompression` applies it at the end of
training from the token ids it saw in the training batches (:func:`compact_seen_vocabulary`, with the counts
:func:`count_tokens` collects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent_lightning.evaluation import split_batch

__all__ = [
    "CompactEmbedding",
    "EmbeddingWeights",
    "Unseen",
    "Vocabulary",
    "check_untied",
    "compact_input_embeddings",
    "compact_seen_vocabulary",
    "count_tokens",
    "fallback_token",
    "input_embeddings",
]

EmbeddingWeights = Literal["int8", "float"]
Unseen = Literal["nearest", "fallback"]
Vocabulary = Literal["seen", "full"]


class CompactEmbedding(nn.Module):
    """An embedding lookup over a subset of the vocabulary, with int8 or float rows.

    Shapes: ``input_ids (*)`` (any integer shape, ids of the *original* vocabulary) -> ``(*, embedding_dim)`` float.

    Args:
        weight: ``(rows, embedding_dim)`` rows of the kept tokens (float, or int8 with ``scale``).
        token_rows: ``(vocab_size,)`` the row of each original token id (int32).
        scale: ``(rows, 1)`` float scale of each int8 row; ``None`` for float rows.

    Buffers, not parameters: a compacted embedding is for inference (it is applied when training ends).

    Example:
        >>> embedding = nn.Embedding(10, 4)
        >>> compact = CompactEmbedding.from_embedding(embedding, keep=[0, 3, 5], weights="int8")
        >>> compact(torch.tensor([[3, 7]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, weight: Tensor, token_rows: Tensor, scale: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("token_rows", token_rows.to(torch.int32))
        self.register_buffer("scale", scale)
        self.num_embeddings = int(token_rows.shape[0])
        self.embedding_dim = int(weight.shape[1])

    @classmethod
    @torch.no_grad()
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        keep: Sequence[int] | Tensor | None,
        weights: EmbeddingWeights = "int8",
        unseen: Unseen = "nearest",
        fallback: int | None = None,
    ) -> CompactEmbedding:
        """Build from a float ``nn.Embedding``: keep the rows ``keep`` (all when ``None``), store them as
        ``weights``, and point every other token id at a kept row: the one whose float embedding is closest in
        cosine similarity (``unseen="nearest"``), or ``fallback``'s (``unseen="fallback"``, e.g. ``[UNK]``).

        Raises:
            ValueError: ``fallback`` missing for ``unseen="fallback"`` or outside the vocabulary, an id in ``keep``
                outside the vocabulary, nothing kept, or ``weights``/``unseen`` not a choice.
        """
        if weights not in ("int8", "float"):
            raise ValueError(f"weights={weights!r} is not a choice; use 'int8' or 'float'.")
        if unseen not in ("nearest", "fallback"):
            raise ValueError(f"unseen={unseen!r} is not a choice; use 'nearest' or 'fallback'.")
        table = embedding.weight.detach()
        vocab = table.shape[0]
        if unseen == "fallback" and (fallback is None or not 0 <= fallback < vocab):
            raise ValueError(
                f"fallback={fallback} is not a token id of this vocabulary of {vocab}; unseen='fallback' needs one "
                "(e.g. tokenizer.unk_token_id)."
            )
        keep_ids = torch.arange(vocab) if keep is None else torch.as_tensor(keep, dtype=torch.long).flatten()
        if keep_ids.numel() and (int(keep_ids.min()) < 0 or int(keep_ids.max()) >= vocab):
            raise ValueError(f"keep holds token ids outside [0, {vocab - 1}].")
        if unseen == "fallback":
            keep_ids = torch.cat([keep_ids, torch.tensor([fallback])])
        keep_ids = torch.unique(keep_ids.cpu())  # sorted
        if not keep_ids.numel():
            raise ValueError("keep is empty: at least one token row must be kept.")
        token_rows = torch.full((vocab,), -1, dtype=torch.long)
        token_rows[keep_ids] = torch.arange(keep_ids.numel())
        dropped = torch.nonzero(token_rows < 0).flatten()
        if unseen == "fallback":
            token_rows[dropped] = int(token_rows[fallback])
        elif dropped.numel():
            token_rows[dropped] = _nearest_rows(table.float().cpu(), keep_ids, dropped)
        rows = table[keep_ids.to(table.device)].cpu()  # float rows keep the table's dtype (fp32, bf16, fp16)
        scale = None
        if weights == "int8":
            rows = rows.float()
            scale = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
            rows = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
            scale = scale.to(table.dtype)  # the lookup returns the table's dtype
        device = table.device
        return cls(rows.to(device), token_rows.to(device), None if scale is None else scale.to(device))

    @property
    def kept_tokens(self) -> int:
        """Number of stored rows."""
        return int(self.weight.shape[0])

    def dequantized(self) -> Tensor:
        """The stored rows as float ``(rows, embedding_dim)``."""
        return self.weight.float() if self.scale is None else self.weight.float() * self.scale

    def forward(self, input_ids: Tensor) -> Tensor:
        rows = self.token_rows[input_ids].long()
        if self.scale is None:
            return F.embedding(rows, self.weight)
        return self.weight[rows].to(self.scale.dtype) * self.scale[rows]

    def extra_repr(self) -> str:
        kind = "float" if self.scale is None else "int8"
        return f"{self.num_embeddings} tokens -> {self.kept_tokens} {kind} rows of {self.embedding_dim}"


def input_embeddings(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the model's input token embeddings.

    Hugging Face models answer ``get_input_embeddings()``; a LightningModule wrapping one (an attribute holding a
    ``PreTrainedModel``) is searched too; otherwise a model with exactly one ``nn.Embedding`` uses that one.

    Raises:
        ValueError: no input embedding is found, or several ``nn.Embedding`` modules and no way to tell which.
    """
    names = {id(module): name for name, module in model.named_modules()}
    for module in model.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter):
            try:
                found = getter()
            except (NotImplementedError, AttributeError):
                continue
            if isinstance(found, (nn.Embedding, CompactEmbedding)) and id(found) in names:
                return names[id(found)], found
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Embedding, CompactEmbedding))]
    if len(embeddings) == 1:
        return embeddings[0]
    listed = ", ".join(n for n, _ in embeddings) or "none"
    raise ValueError(
        "Cannot tell which module holds the input token embeddings: no get_input_embeddings() (Hugging Face) and "
        f"{len(embeddings)} nn.Embedding modules ({listed}). Wrap a Hugging Face model, or keep one nn.Embedding."
    )


def compact_input_embeddings(
    model: nn.Module,
    keep: Sequence[int] | Tensor | None,
    weights: EmbeddingWeights = "int8",
    unseen: Unseen = "nearest",
    fallback: int | None = None,
) -> CompactEmbedding:
    """Replace the model's input embeddings with a :class:`CompactEmbedding`, in place.

    Args:
        model: a Hugging Face model, a module wrapping one, or a model with one ``nn.Embedding``.
        keep: token ids whose rows are kept (``None``: all).
        weights: ``"int8"`` rows with per-row scales, or ``"float"``.
        unseen: what a dropped token reads: the ``"nearest"`` kept row, or the ``"fallback"`` token's row.
        fallback: the token id for ``unseen="fallback"`` (e.g. ``tokenizer.unk_token_id``).

    Returns:
        The new module.

    Raises:
        ValueError: see :func:`input_embeddings` and :meth:`CompactEmbedding.from_embedding`; or the embeddings are
            already compacted.
    """
    name, embedding = input_embeddings(model)
    if isinstance(embedding, CompactEmbedding):
        raise ValueError(f"The input embeddings ({name}) are already compacted.")
    compact = CompactEmbedding.from_embedding(embedding, keep, weights, unseen, fallback)
    model.set_submodule(name, compact)
    return compact


def _nearest_rows(table: Tensor, keep_ids: Tensor, dropped: Tensor, chunk: int = 4096) -> Tensor:
    """For each dropped token, the position in ``keep_ids`` of the kept token with the most similar embedding."""
    kept = F.normalize(table[keep_ids], dim=1)
    rows = []
    for start in range(0, dropped.numel(), chunk):
        queries = F.normalize(table[dropped[start : start + chunk]], dim=1)
        rows.append((queries @ kept.T).argmax(dim=1))
    return torch.cat(rows)


def count_tokens(batch: Any, vocab_size: int) -> Tensor:
    """How often each token id occurs in ``batch`` (``(vocab_size,)`` int64): its ``input_ids`` (a dict batch) or its
    integer first input.

    Raises:
        TypeError: the batch holds no integer token tensor.

    Example:
        >>> count_tokens({"input_ids": torch.tensor([[1, 2, 2]])}, vocab_size=4).tolist()
        [0, 1, 2, 0]
    """
    args, kwargs, _ = split_batch(batch)
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex():
        raise TypeError(
            "EmbeddingCompression(vocabulary='seen') counts the token ids of each training batch: it needs a dict "
            "batch with 'input_ids' or an integer token tensor as the first input. Use vocabulary='full' for other "
            "batches."
        )
    return torch.bincount(ids.detach().flatten(), minlength=vocab_size)


def compact_seen_vocabulary(
    model: nn.Module,
    counts: Tensor | None,
    weights: EmbeddingWeights = "int8",
    vocabulary: Vocabulary = "seen",
    unseen: Unseen = "nearest",
    fallback: int | None = None,
) -> CompactEmbedding:
    """Compact ``model``'s input embeddings to the tokens ``counts`` saw (plus its tokenizer's special tokens), or
    to every row for ``vocabulary="full"``, in place.

    Args:
        model: the model (a module with a ``tokenizer`` attribute contributes its special tokens).
        counts: ``(vocab_size,)`` token counts (:func:`count_tokens` summed over training); unused for ``"full"``.
        weights: ``"int8"`` or ``"float"`` rows.
        vocabulary: ``"seen"`` or ``"full"``.
        unseen: ``"nearest"`` or ``"fallback"``.
        fallback: the token id for ``unseen="fallback"``.

    Returns:
        The new :class:`CompactEmbedding`.
    """
    keep = None
    if vocabulary == "seen":
        tokenizer = getattr(model, "tokenizer", None)
        special = [int(i) for i in getattr(tokenizer, "all_special_ids", []) or []]
        keep = torch.cat([torch.nonzero(counts).flatten(), torch.tensor(special, dtype=torch.long)])
    return compact_input_embeddings(model, keep, weights, unseen, fallback)


def check_untied(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the input embeddings, refusing embeddings tied to an output layer.

    Raises:
        ValueError: see :func:`input_embeddings`; or the table is shared with another module (tied input/output
            embeddings): compacting it would leave the full table in the output layer.
    """
    name, embedding = input_embeddings(model)
    weight = getattr(embedding, "weight", None)
    sharing = [
        module_name
        for module_name, module in model.named_modules()
        if module is not embedding and any(p is weight for p in module.parameters(recurse=False))
    ]
    if sharing:
        raise ValueError(
            f"EmbeddingCompression: the input embeddings ({name}) share their weight with {', '.join(sharing)} (tied "
            "input/output embeddings, as in GPT-2 and most causal LMs). Compacting them would untie the two and "
            "leave the full table in the output layer, so the model would not shrink. Use it on models whose input "
            "embeddings are their own (encoders, classifiers, LMs with tie_word_embeddings=False)."
        )
    return name, embedding


def fallback_token(model: nn.Module, given: int | None) -> int:
    """``given``, else the model's ``tokenizer.unk_token_id``.

    Raises:
        ValueError: neither is there.
    """
    if given is not None:
        return given
    unk = getattr(getattr(model, "tokenizer", None), "unk_token_id", None)
    if unk is None:
        raise ValueError(
            "EmbeddingCompression(unseen='fallback') needs a token for the unseen ones: the module has no "
            "`tokenizer.unk_token_id`. Pass fallback_token=ID (e.g. your tokenizer's unk token id), or use "
            "unseen='nearest'."
        )
    return int(unk)
