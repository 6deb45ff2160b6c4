"""Compress the input embeddings when training ends: the task's vocabulary only, int8 or int4 rows."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from agent_lightning.callbacks.base import CompressionCallback
from agent_lightning.callbacks.strategy_support import refuse_sharded_strategies
from agent_lightning.quantization.checkpoint import counts_from_state
from agent_lightning.quantization.embedding import (
    EMBEDDING_WEIGHTS,
    CompactEmbedding,
    EmbeddingWeights,
    Unseen,
    Vocabulary,
    check_tied_output,
    compact_seen_vocabulary,
    count_tokens,
    fallback_token,
    frequent_token_ids,
    input_embeddings,
)
from agent_lightning.tensorboard import log_after_fit, plain_settings
from agent_lightning.validation import check_int

__all__ = ["EmbeddingCompression"]


class EmbeddingCompression(CompressionCallback):
    """Shrink the model's input token embeddings at fit end: keep the rows of the tokens training used, as int8.

        Int8 on the linear layers leaves the embedding table untouched, and in small encoders it is half the model
        (11.7 M of all-MiniLM-L6-v2's 22.7 M parameters). During training this callback counts the token ids of every
        training batch (``input_ids`` of a dict batch, or an integer input tensor); at fit end it replaces the input
        embeddings (``get_input_embeddings()`` of a Hugging Face model) with a
        :class:`~agent_lightning.quantization.CompactEmbedding`: only the rows of the tokens seen
        (``vocabulary="seen"``; any other token reads the kept row nearest to its own embedding, or with
        ``unseen="fallback"`` the ``fallback_token``'s row, by default the tokenizer's ``[UNK]``), stored as int8 with a
        float scale per row (``weights="int8"``). The rest of the model, the tokenizer
        and the token ids stay as they are, so the compacted model takes the same inputs. Evaluate after fit (the CLI
        tests the final model) to see what unseen tokens cost; :class:`CompressionReport` measures the bytes saved.

        A decoder whose output layer is tied to the table (SmolLM2, GPT-2) keeps one table: the output layer becomes
        a :class:`~agent_lightning.quantization.CompactLMHead` over the same compacted rows, so the output softmax
        covers the tokens training saw only with ``vocabulary="seen"`` (the tokens of every training answer, so
        decoding constrained to the actions is unaffected; a free answer can only use them; ``frequent_tokens`` widen
        the input table only), logged as ``embeddings/scored_tokens``.

        The counts are summed over DDP ranks at every step (all ranks hold the same counts) and saved in the callback's
        checkpoint state, so a resumed run keeps them; checkpoints always hold the float table under its usual key (also
        one saved after fit end), so they load into a plain model; ``agent-lightning export --format int8`` applies the
        compaction recorded in a checkpoint (:func:`~agent_lightning.quantization.compact_from_checkpoint`). The
    compaction itself is :func:`agent_lightning.quantization.embedding.compact_seen_vocabulary`.

        Args:
            weights: ``"int8"`` (symmetric, one scale per row), ``"int4"`` (the same over [-7, 7], two values per
                byte: half the bytes, which pays for ``frequent_tokens``) or ``"float"`` rows.
            vocabulary: ``"seen"`` (the tokens of the training batches, plus the tokenizer's special tokens) or
                ``"full"`` (every row; only the int8 storage then).
            unseen: what a token that training never saw reads: ``"nearest"`` (the kept row closest to its own float
            embedding by cosine similarity; its cost against ``[UNK]`` is measured in ``benchmarks/quantization/``)
            or ``"fallback"`` (the ``fallback_token``'s row).
            fallback_token: token id for ``unseen="fallback"``; ``None``: ``pl_module.tokenizer.unk_token_id``.
            frequent_tokens: with ``vocabulary="seen"``, also keep the rows of this many of the tokenizer's most
                frequent tokens (:func:`~agent_lightning.quantization.embedding.frequent_token_ids`, from
                ``pl_module.tokenizer``): on small training sets many requests hold words training never saw, which
                then read their own rows instead of the nearest kept one (what it buys is measured in
                ``benchmarks/quantization/``).

        Raises:
            TypeError: an argument of the wrong type (at construction); at the first training batch, a batch without
                token ids.
            ValueError: a bad value (at construction); at ``setup``: no input embedding found, an input table shared
                with a module other than one linear output layer, no fallback token for ``unseen="fallback"``, or
                ``frequent_tokens`` without a Hugging Face ``pl_module.tokenizer``.

        Example:
            >>> from lightning.pytorch import Trainer
            >>> trainer = Trainer(callbacks=[EmbeddingCompression()], logger=False, enable_progress_bar=False)
            >>> EmbeddingCompression(weights="float", vocabulary="seen").weights  # trimming only
            'float'
    """

    def __init__(
        self,
        weights: EmbeddingWeights = "int8",
        vocabulary: Vocabulary = "seen",
        unseen: Unseen = "nearest",
        fallback_token: int | None = None,
        frequent_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.settings = plain_settings(locals())
        if weights not in EMBEDDING_WEIGHTS:
            raise ValueError(
                f"EmbeddingCompression(weights={weights!r}): choose 'int8' (per-row int8), 'int4' (per-row int4, two "
                "per byte) or 'float' rows."
            )
        if vocabulary not in ("seen", "full"):
            raise ValueError(
                f"EmbeddingCompression(vocabulary={vocabulary!r}): choose 'seen' (tokens of the training batches) "
                "or 'full' (every row)."
            )
        if unseen not in ("nearest", "fallback"):
            raise ValueError(
                f"EmbeddingCompression(unseen={unseen!r}): choose 'nearest' (the closest kept row) or 'fallback' "
                "(the fallback_token's row)."
            )
        if fallback_token is not None and (isinstance(fallback_token, bool) or not isinstance(fallback_token, int)):
            raise TypeError(
                f"EmbeddingCompression(fallback_token={fallback_token!r}) must be a token id (int) or None (the "
                "tokenizer's unk_token_id)."
            )
        check_int("frequent_tokens", frequent_tokens, 0, "EmbeddingCompression")
        self.weights, self.vocabulary, self.unseen, self.fallback_token = weights, vocabulary, unseen, fallback_token
        self.frequent_tokens = frequent_tokens
        # state (checkpointed)
        self._counts: Tensor | None = None
        # the float table (and a tied output layer), kept after fit end by name: checkpoints hold them, and
        # test/validate/predict load into them
        self._float_modules: dict[str, nn.Module] = {}

    # -- setup -------------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            if self._float_modules:  # loading a float checkpoint needs the float modules
                aside = {name: pl_module.get_submodule(name) for name in self._float_modules}
                if isinstance(aside[next(iter(aside))], CompactEmbedding):
                    self.set_aside(aside)
                    for name, module in self._float_modules.items():
                        pl_module.set_submodule(name, module)
            return
        refuse_sharded_strategies(trainer, "EmbeddingCompression", "it replaces the whole input embedding table")
        _, embedding, _ = check_tied_output(pl_module)
        if self.vocabulary == "seen" and self.unseen == "fallback":
            self.fallback_token = fallback_token(pl_module, self.fallback_token)
        if self.vocabulary == "seen" and self.frequent_tokens:
            frequent_token_ids(getattr(pl_module, "tokenizer", None), 1)  # no tokenizer: say so before training
        if self._counts is None:
            self._counts = torch.zeros(embedding.num_embeddings, dtype=torch.long)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.restore_pending(pl_module)

    # -- every step --------------------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.vocabulary == "seen":
            seen = count_tokens(batch, self._counts.numel())
            self._counts += trainer.strategy.reduce(seen, reduce_op="sum").cpu()  # same counts on every rank

    # -- fit end -----------------------------------------------------------------------------------------------------
    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.spawned(trainer):
            rank_zero_info(
                "[Embeddings] with a spawn launcher (e.g. strategy='ddp_spawn') the model returned to the main "
                "process must keep its float embeddings; export the checkpoint to apply the compaction."
            )
            return
        name, embedding, head = check_tied_output(pl_module)
        self._float_modules = {name: embedding}
        if head is not None:
            self._float_modules[head] = pl_module.get_submodule(head)
        compact = self._compact(pl_module, self._counts)
        before = embedding.weight.numel() * embedding.weight.element_size()
        after = sum(t.numel() * t.element_size() for t in compact.state_dict().values())  # what is stored
        metrics = {
            "embeddings/kept_tokens": float(compact.kept_tokens),
            "embeddings/vocab_size": float(compact.num_embeddings),
            "embeddings/size_mb": after / 1e6,
            "embeddings/size_ratio": after / before,
        }
        scored = ""
        if head is not None:  # the tied output layer's softmax width
            metrics["embeddings/scored_tokens"] = float(pl_module.get_submodule(head).scored_tokens)
            scored = f", the tied output layer scoring {int(metrics['embeddings/scored_tokens'])} of them"
        rank_zero_info(
            f"[Embeddings] kept {compact.kept_tokens} of {compact.num_embeddings} token rows as {self.weights}"
            f"{scored}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB"
        )
        log_after_fit(trainer, metrics)

    def _compact(self, pl_module: nn.Module, counts: Tensor | None) -> CompactEmbedding:
        return compact_seen_vocabulary(
            pl_module, counts, self.weights, self.vocabulary, self.unseen, self.fallback_token, self.frequent_tokens
        )

    # -- test / validate / predict after fit -------------------------------------------------------------------------
    @override
    def reapply(
        self, trainer: Trainer, pl_module: LightningModule, state: dict[str, Any] | None, aside: dict[str, nn.Module]
    ) -> None:
        if state is not None:
            self._compact(pl_module, counts_from_state(state))

    # -- checkpointing -----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        counts = self._counts if self._counts is not None else torch.zeros(0, dtype=torch.long)
        seen = torch.nonzero(counts).flatten()
        return {
            "weights": self.weights,
            "vocabulary": self.vocabulary,
            "unseen": self.unseen,
            "fallback_token": self.fallback_token,
            "frequent_tokens": self.frequent_tokens,
            "vocab_size": int(counts.numel()),
            "seen_tokens": seen.to(torch.int32),
            "seen_counts": counts[seen],
        }

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint saved after fit end holds the float table (and tied head), so it loads into a plain model;
        # the recorded counts re-apply the compaction (export, test with ckpt_path).
        if not self._float_modules or not isinstance(input_embeddings(pl_module)[1], CompactEmbedding):
            return
        state = checkpoint["state_dict"]
        for name, module in self._float_modules.items():
            for key in [key for key in state if key.startswith(f"{name}.")]:
                del state[key]
            state.update({f"{name}.{key}": value.detach() for key, value in module.state_dict().items()})

    @override
    def restore(self, state: dict[str, Any], pl_module: LightningModule) -> None:
        if (state["weights"], state["vocabulary"]) != (self.weights, self.vocabulary):
            raise ValueError(
                f"EmbeddingCompression: the checkpoint was written with weights={state['weights']!r}, "
                f"vocabulary={state['vocabulary']!r}; this run asks for weights={self.weights!r}, "
                f"vocabulary={self.vocabulary!r}. Resume with the same arguments, or start a new run."
            )
        self._counts = counts_from_state(state)
