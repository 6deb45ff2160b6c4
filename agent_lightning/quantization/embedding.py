"""Smaller input embeddings: keep only the vocabulary a task uses, and store the rows as int8.

In all-MiniLM-L6-v2 the word embeddings hold 11.7 M of the 22.7 M parameters, and int8 on the ``nn.Linear`` layers
leaves them untouched: the model cannot shrink below about 0.6x of its bytes without compressing them. Two
ways, usable together:

- **Vocabulary trimming**: rows of tokens the task never uses are dropped; a token-to-row table sends any other token
  to the kept row nearest to its own embedding (cosine similarity, computed once from the float table), or to a
  fallback token's row (``[UNK]``), so unseen input still runs. What each choice costs in accuracy is measured in
  ``benchmarks/quantization/`` (vocabulary trimming).
- **int8 or int4 rows**: each kept row is stored as int8 (or int4, two values per byte) with one float scale per row
  (symmetric, ``scale = max|row| / 127``, or ``/ 7``); the lookup dequantizes only the rows a batch reads.
- **Frequent tokens**: the rows of training's tokens can be joined by the tokenizer's most frequent ones
  (:func:`frequent_token_ids`), so a request with words training never saw still reads their own rows; int4 rows pay
  for them.

:class:`CompactEmbedding` replaces the model's input embedding module (``get_input_embeddings`` /
``set_input_embeddings`` of a Hugging Face model, or a named ``nn.Embedding``); it is plain tensor code, so a traced
TorchScript program carries it.

**Tied tables** (most decoders, e.g. SmolLM2: the output layer's weight *is* the input embedding table): the table is
compacted once, and the output layer becomes a :class:`CompactLMHead` over the *same* :class:`CompactEmbedding`, so
the model keeps one table (quantized once, never two diverging copies). The output softmax then covers the kept
tokens only, or a subset of them (:func:`compact_seen_vocabulary` scores training's tokens only, so frequent tokens
kept for reading requests do not widen it): every other token gets the lowest logit of the dtype (probability 0).
That is safe when answers are made of tokens training saw, which decoding constrained to the action set guarantees
(each action's tokens are in its training answers); free generation can only write scored tokens.

:class:`~agent_lightning.callbacks.EmbeddingCompression` applies it at the end of training from the token ids it saw
in the training batches (:func:`compact_seen_vocabulary`, with the counts :func:`count_tokens` collects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent_lightning.evaluation import split_batch

__all__ = [
    "CompactEmbedding",
    "CompactLMHead",
    "EmbeddingWeights",
    "Unseen",
    "Vocabulary",
    "check_tied_output",
    "compact_input_embeddings",
    "compact_seen_vocabulary",
    "count_tokens",
    "fallback_token",
    "frequent_token_ids",
    "input_embeddings",
]

EmbeddingWeights = Literal["int8", "int4", "float"]
EMBEDDING_WEIGHTS: tuple[str, ...] = get_args(EmbeddingWeights)
Unseen = Literal["nearest", "fallback"]
Vocabulary = Literal["seen", "full"]


class CompactEmbedding(nn.Module):
    """An embedding lookup over a subset of the vocabulary, with int8, int4 or float rows.

    Shapes: ``input_ids (*)`` (any integer shape, ids of the *original* vocabulary) -> ``(*, embedding_dim)`` float.

    Args:
        weight: ``(rows, embedding_dim)`` rows of the kept tokens (float, or int8 with ``scale``), or int4 rows
            packed two per byte: ``(rows, embedding_dim / 2)`` uint8, each byte ``(q_low + 8) + 16 * (q_high + 8)``.
        token_rows: ``(vocab_size,)`` the row of each original token id (int32).
        scale: ``(rows, 1)`` float scale of each int8 or int4 row; ``None`` for float rows.
        kept_ids: ``(rows,)`` the token id each row belongs to (what a tied :class:`CompactLMHead` scores);
            default: the lowest token id mapped to the row.

    Buffers, not parameters: a compacted embedding is for inference (it is applied when training ends).

    Example:
        >>> embedding = nn.Embedding(10, 4)
        >>> compact = CompactEmbedding.from_embedding(embedding, keep=[0, 3, 5], weights="int8")
        >>> compact(torch.tensor([[3, 7]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(
        self, weight: Tensor, token_rows: Tensor, scale: Tensor | None = None, kept_ids: Tensor | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("token_rows", token_rows.to(torch.int32))
        self.register_buffer("scale", scale)
        if kept_ids is None:  # not given: the lowest token id that maps to each row
            kept_ids = torch.full((weight.shape[0],), token_rows.shape[0], dtype=torch.long)
            kept_ids = kept_ids.scatter_reduce(0, token_rows.long().cpu(), torch.arange(token_rows.shape[0]), "amin")
        # the token id each row stores (what a tied output layer scores); derived, so not in the state_dict
        self.register_buffer("kept_ids", kept_ids.to(torch.long), persistent=False)
        self.num_embeddings = int(token_rows.shape[0])
        self.embedding_dim = int(weight.shape[1]) * (2 if weight.dtype == torch.uint8 else 1)

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
        if weights not in EMBEDDING_WEIGHTS:
            raise ValueError(f"weights={weights!r} is not a choice; use 'int8', 'int4' or 'float'.")
        if unseen not in ("nearest", "fallback"):
            raise ValueError(f"unseen={unseen!r} is not a choice; use 'nearest' or 'fallback'.")
        table = embedding.weight.detach()
        vocab = table.shape[0]
        if weights == "int4" and table.shape[1] % 2:
            raise ValueError(
                f"weights='int4' packs two values per byte: the embedding width {table.shape[1]} must be even; use "
                "weights='int8'."
            )
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
        if weights != "float":
            rows = rows.float()
            levels = 127 if weights == "int8" else 7
            scale = (rows.abs().amax(dim=1, keepdim=True) / levels).clamp(min=torch.finfo(torch.float32).tiny)
            rows = torch.round(rows / scale).clamp(-levels, levels).to(torch.int8)
            rows = _pack_int4(rows) if weights == "int4" else rows
            scale = scale.to(table.dtype)  # the lookup returns the table's dtype
        device = table.device
        scale = None if scale is None else scale.to(device)
        return cls(rows.to(device), token_rows.to(device), scale, keep_ids.to(device))

    @property
    def kept_tokens(self) -> int:
        """Number of stored rows."""
        return int(self.weight.shape[0])

    @property
    def kind(self) -> str:
        """How the rows are stored: ``"float"``, ``"int8"`` or ``"int4"``."""
        return "float" if self.scale is None else "int4" if self.weight.dtype == torch.uint8 else "int8"

    def _values(self, weight: Tensor) -> Tensor:
        """Stored rows (or a gather of them) as integer levels, int4 rows unpacked."""
        return _unpack_int4(weight) if weight.dtype == torch.uint8 else weight

    def dequantized(self, rows: Tensor | None = None) -> Tensor:
        """The stored rows as float ``(rows, embedding_dim)``; with ``rows`` (row indices), only those."""
        weight = self.weight if rows is None else self.weight[rows]
        scale = self.scale if rows is None or self.scale is None else self.scale[rows]
        values = self._values(weight).float()
        return values if scale is None else values * scale

    def forward(self, input_ids: Tensor) -> Tensor:
        rows = self.token_rows[input_ids].long()
        if self.scale is None:
            return F.embedding(rows, self.weight)
        return self._values(self.weight[rows]).to(self.scale.dtype) * self.scale[rows]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} tokens -> {self.kept_tokens} {self.kind} rows of {self.embedding_dim}"


def _pack_int4(values: Tensor) -> Tensor:
    """``(*, 2k)`` int8 values in [-8, 7] -> ``(*, k)`` uint8, two per byte (the even position in the low half)."""
    shifted = (values.to(torch.int16) + 8).reshape(*values.shape[:-1], -1, 2)
    return (shifted[..., 0] + 16 * shifted[..., 1]).to(torch.uint8)


def _unpack_int4(packed: Tensor) -> Tensor:
    """``(*, k)`` uint8 -> ``(*, 2k)`` int32 values in [-8, 7]; integer division and products only, so an ONNX
    export traces it with opset-17 operators."""
    packed = packed.to(torch.int32)
    high = torch.div(packed, 16, rounding_mode="trunc")
    low = packed - 16 * high
    return torch.stack([low, high], dim=-1).flatten(-2) - 8


class CompactLMHead(nn.Module):
    """The output layer of a model whose output weight was tied to a compacted input table: logits over the
    :class:`CompactEmbedding`'s rows (the same tensors, not a copy), or over the rows of ``scored_ids`` only,
    scattered back to the full vocabulary, every token without a scored row at the dtype's lowest value
    (probability 0 after a softmax).

    Shapes: ``hidden (*, embedding_dim)`` -> ``(*, vocab_size)``.

    Args:
        embedding: the compacted input table it shares.
        bias: the output layer's bias over the full vocabulary, or ``None``.
        scored_ids: the token ids the head scores (a tensor or a list), each with its own row in ``embedding``
            (``None``: every kept row). A table can keep more rows for reading requests than answers need: the
            softmax stays as narrow as the answers' vocabulary.

    Raises:
        ValueError: a token of ``scored_ids`` has no row of its own in ``embedding``.

    Example:
        >>> table = nn.Embedding(6, 4)
        >>> compact = CompactEmbedding.from_embedding(table, keep=[1, 2, 4], weights="float")
        >>> head = CompactLMHead(compact, scored_ids=torch.tensor([1, 4]))
        >>> logits = head(torch.randn(2, 4))
        >>> logits.shape, logits.argmax(-1).tolist() in ([1, 1], [1, 4], [4, 1], [4, 4])
        (torch.Size([2, 6]), True)
    """

    def __init__(
        self, embedding: CompactEmbedding, bias: Tensor | None = None, scored_ids: Sequence[int] | Tensor | None = None
    ) -> None:
        super().__init__()
        self.embedding = embedding
        kept = embedding.kept_ids
        if scored_ids is None:
            scored = kept
        else:
            scored = torch.unique(torch.as_tensor(scored_ids, dtype=torch.long, device=kept.device).flatten())
        rows = embedding.token_rows[scored].long()
        if bool((kept[rows] != scored).any()):
            missing = scored[kept[rows] != scored][:5].tolist()
            raise ValueError(
                f"CompactLMHead(scored_ids=...): tokens {missing} have no row of their own in the compacted table "
                "(they read another token's row); score only kept tokens, e.g. scored_ids=embedding.kept_ids."
            )
        # derived from the table and the scored ids, so not in the state_dict
        self.register_buffer("scored_ids", scored, persistent=False)
        self.register_buffer("scored_rows", rows, persistent=False)
        kept_bias = None if bias is None else bias.detach()[scored.to(bias.device)].clone()
        self.register_buffer("bias", kept_bias)
        self.out_features = embedding.num_embeddings

    def forward(self, hidden: Tensor) -> Tensor:
        rows = self.embedding.dequantized(self.scored_rows).to(hidden.dtype)
        logits = hidden @ rows.t()
        if self.bias is not None:
            logits = logits + self.bias
        full = logits.new_full((*logits.shape[:-1], self.out_features), torch.finfo(logits.dtype).min)
        return full.scatter(-1, self.scored_ids.expand(*logits.shape[:-1], -1), logits)

    @property
    def scored_tokens(self) -> int:
        """Number of tokens the head scores (the width of its softmax)."""
        return int(self.scored_ids.shape[0])

    def extra_repr(self) -> str:
        return f"{self.scored_tokens} of {self.embedding.kept_tokens} tied rows -> {self.out_features} logits"


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
    scored: Sequence[int] | Tensor | None = None,
) -> CompactEmbedding:
    """Replace the model's input embeddings with a :class:`CompactEmbedding`, in place.

    Args:
        model: a Hugging Face model, a module wrapping one, or a model with one ``nn.Embedding``.
        keep: token ids whose rows are kept (``None``: all).
        weights: ``"int8"`` or ``"int4"`` rows with per-row scales, or ``"float"``.
        unseen: what a dropped token reads: the ``"nearest"`` kept row, or the ``"fallback"`` token's row.
        fallback: the token id for ``unseen="fallback"`` (e.g. ``tokenizer.unk_token_id``).
        scored: the token ids an output layer tied to the table scores, a subset of ``keep`` (``None``: every
            kept row); unused without a tied output layer.

    Returns:
        The new module. An output layer tied to the table becomes a :class:`CompactLMHead` over it.

    Raises:
        ValueError: see :func:`input_embeddings`, :func:`check_tied_output`,
            :meth:`CompactEmbedding.from_embedding` and :class:`CompactLMHead`; or the embeddings are already
            compacted.
    """
    name, embedding, head = check_tied_output(model)
    if isinstance(embedding, CompactEmbedding):
        raise ValueError(f"The input embeddings ({name}) are already compacted.")
    compact = CompactEmbedding.from_embedding(embedding, keep, weights, unseen, fallback)
    if head is not None:  # a tied output layer shares the compacted table (checked before anything is replaced)
        model.set_submodule(head, CompactLMHead(compact, model.get_submodule(head).bias, scored))
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


def frequent_token_ids(tokenizer: Any, count: int) -> list[int]:
    """The ``count`` most frequent tokens of ``tokenizer``'s vocabulary by its own ranking: WordPiece and BPE
    vocabularies list their tokens in the order training added them, the most frequent first, so these are the
    lowest ids that are neither special, nor placeholders (``[unused12]``), nor single characters (those come first
    in the vocabulary, frequent or not).

    Raises:
        ValueError: ``tokenizer`` has no ``convert_ids_to_tokens`` (a Hugging Face tokenizer is needed).

    Example:
        >>> from agent_lightning.backbone import load_tokenizer, resolve_backbone
        >>> tokenizer = load_tokenizer(resolve_backbone(None))  # the packaged all-MiniLM-L6-v2 tokenizer
        >>> tokenizer.convert_ids_to_tokens(frequent_token_ids(tokenizer, 5))
        ['the', 'of', 'and', 'in', 'to']
    """
    if not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
        raise ValueError(
            f"frequent tokens are read from a Hugging Face tokenizer's vocabulary; got {type(tokenizer).__name__}. "
            "Give the module a `tokenizer` attribute, or keep frequent_tokens=0."
        )
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids: list[int] = []
    for start in range(0, len(tokenizer), 4096):
        chunk = range(start, min(start + 4096, len(tokenizer)))
        for index, token in zip(chunk, tokenizer.convert_ids_to_tokens(list(chunk))):
            word = (token or "").removeprefix("##").removeprefix("\u0120").removeprefix("\u2581")
            if index in special or len(word) <= 1 or (word.startswith("[unused") and word.endswith("]")):
                continue
            ids.append(index)
            if len(ids) == count:
                return ids
    return ids


def compact_seen_vocabulary(
    model: nn.Module,
    counts: Tensor | None,
    weights: EmbeddingWeights = "int8",
    vocabulary: Vocabulary = "seen",
    unseen: Unseen = "nearest",
    fallback: int | None = None,
    frequent: int = 0,
) -> CompactEmbedding:
    """Compact ``model``'s input embeddings to the tokens ``counts`` saw (plus its tokenizer's special tokens and
    ``frequent`` most frequent tokens), or to every row for ``vocabulary="full"``, in place. A tied output layer
    scores the seen and special tokens only: the frequent ones are for reading requests, and leave the softmax as
    narrow as training's vocabulary.

    Args:
        model: the model (a module with a ``tokenizer`` attribute contributes its special tokens).
        counts: ``(vocab_size,)`` token counts (:func:`count_tokens` summed over training); unused for ``"full"``.
        weights: ``"int8"``, ``"int4"`` or ``"float"`` rows.
        vocabulary: ``"seen"`` or ``"full"``.
        unseen: ``"nearest"`` or ``"fallback"``.
        fallback: the token id for ``unseen="fallback"``.
        frequent: also keep this many of the tokenizer's most frequent tokens (:func:`frequent_token_ids`).

    Returns:
        The new :class:`CompactEmbedding`.

    Raises:
        ValueError: ``frequent`` > 0 and the model has no Hugging Face ``tokenizer``; see
            :func:`compact_input_embeddings`.
    """
    keep = scored = None
    if vocabulary == "seen":
        tokenizer = getattr(model, "tokenizer", None)
        special = [int(i) for i in getattr(tokenizer, "all_special_ids", []) or []]
        common = frequent_token_ids(tokenizer, frequent) if frequent else []
        scored = torch.cat([torch.nonzero(counts).flatten(), torch.tensor(special, dtype=torch.long)])
        keep = torch.cat([scored, torch.tensor(common, dtype=torch.long)])
        if unseen == "fallback" and fallback is not None:  # its row is kept: a tied head may score it too
            scored = torch.cat([scored, torch.tensor([fallback])])
    return compact_input_embeddings(model, keep, weights, unseen, fallback, scored)


def check_tied_output(model: nn.Module) -> tuple[str, nn.Module, str | None]:
    """``(name, module)`` of the input embeddings, and the name of the linear output layer tied to them (``None``
    when untied).

    Raises:
        ValueError: see :func:`input_embeddings`; or the table is shared with a module that is not a linear output
            layer (compacting it would leave that module with the full table).
    """
    name, embedding = input_embeddings(model)
    weight = getattr(embedding, "weight", None)
    sharing = [
        (module_name, module)
        for module_name, module in model.named_modules()
        if module is not embedding
        and not isinstance(module, CompactLMHead)
        and any(p is weight for p in module.parameters(recurse=False))
    ]
    heads = [module_name for module_name, module in sharing if isinstance(module, nn.Linear)]
    others = [module_name for module_name, module in sharing if not isinstance(module, nn.Linear)]
    if others or len(heads) > 1:
        raise ValueError(
            f"EmbeddingCompression: the input embeddings ({name}) share their weight with "
            f"{', '.join(n for n, _ in sharing)}; only one linear output layer tied to them (a causal LM's head) can "
            "share the compacted table. Use it on models whose table is their own or tied to one output layer."
        )
    return name, embedding, heads[0] if heads else None


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
