"""Texts as next-token-prediction batches, for a causal language model (``Agent(task="causal-lm")`` or any
LightningModule around an ``AutoModelForCausalLM``)."""

from __future__ import annotations

import random
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling
from typing_extensions import override

from agent_lightning.backbone import load_tokenizer, resolve_backbone
from agent_lightning.datamodules.sources import builtin_dataset_dir, read_labelled_file
from agent_lightning.validation import check_count, check_int, check_open_fraction

__all__ = ["LanguageModelingDataModule"]


class LanguageModelingDataModule(LightningDataModule):
    """Texts from a CSV/TSV/JSON/JSONL file (or the built-in requests) tokenized for next-token prediction.

    Batches are ``{"input_ids", "attention_mask", "labels"}`` ``(B, L)``, padded to the longest text of the batch;
    ``labels`` are the input ids with ``-100`` at padding (``DataCollatorForLanguageModeling(mlm=False)``), which
    a Hugging Face causal LM shifts itself. A tokenizer without a padding token pads with its end-of-text token.

    Args:
        train_file: the training texts; ``None``: the requests of the built-in *assistant-actions* data set.
        val_file: validation texts; default: ``val_fraction`` of the training texts, split with ``split_seed``.
        text_column: the column holding the text.
        tokenizer: tokenizer folder or hub name; ``None`` uses the packaged backbone's.
        max_length: longest tokenized text (longer ones are truncated).
        batch_size: batch size (validation uses the same).
        val_fraction: share of the training texts held out when there is no ``val_file``.
        split_seed: seed of that split.
        num_workers: data loader worker processes.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a bad value, a missing or unreadable file, a missing column or an empty text.

    Example:
        >>> dm = LanguageModelingDataModule(batch_size=4)  # the built-in requests, the packaged tokenizer
        >>> dm.setup("fit")
        >>> sorted(next(iter(dm.train_dataloader())))
        ['attention_mask', 'input_ids', 'labels']
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        text_column: str = "text",
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_count("max_length", max_length)
        check_count("batch_size", batch_size)
        check_open_fraction("val_fraction", val_fraction)
        check_count("num_workers", num_workers, minimum=0)
        check_int("split_seed", split_seed, 0)
        self.save_hyperparameters()
        self.tokenizer_source = resolve_backbone(tokenizer, argument="tokenizer")
        self._texts: dict[str, list[str]] | None = None
        self._encoded: dict[str, list[dict[str, list[int]]]] = {}
        self._tokenizer = None

    @property
    def texts(self) -> dict[str, list[str]]:
        """The raw texts of ``train`` and ``val``, read (and split) once."""
        if self._texts is None:
            hp = self.hparams
            train_file = hp.train_file or builtin_dataset_dir("assistant-actions") / "train.csv"
            train = read_labelled_file(train_file, hp.text_column, None, "train_file").texts
            if hp.val_file is not None:
                val = read_labelled_file(hp.val_file, hp.text_column, None, "val_file").texts
            else:
                order = list(range(len(train)))
                random.Random(hp.split_seed).shuffle(order)
                cut = max(1, round(hp.val_fraction * len(train)))
                if cut >= len(train):
                    raise ValueError(
                        f"train_file={str(train_file)!r} has {len(train)} text(s): too few to hold out "
                        f"val_fraction={hp.val_fraction}. Add texts or pass val_file=PATH."
                    )
                val, train = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
            self._texts = {"train": train, "val": val}
        return self._texts

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_source, argument="tokenizer")
        return self._tokenizer

    @override
    def setup(self, stage: str) -> None:
        for split in ("train", "val"):
            if split not in self._encoded:
                encoded = self.tokenizer(
                    self.texts[split],
                    truncation=True,
                    max_length=self.hparams.max_length,
                    return_token_type_ids=False,  # a BERT tokenizer's segment ids mean nothing to a decoder
                )
                self._encoded[split] = [
                    {key: values[i] for key, values in encoded.items()} for i in range(len(self.texts[split]))
                ]

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def _loader(self, split: str, shuffle: bool, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self._encoded[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=DataCollatorForLanguageModeling(self.tokenizer, mlm=False),
            num_workers=workers,
            persistent_workers=workers > 0,
            **kwargs,
        )
