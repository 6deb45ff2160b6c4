"""LanguageModelingDataModule: next-token batches with -100 at padding, a fixed validation split, clear errors."""

from __future__ import annotations

import pytest

from agent_lightning import LanguageModelingDataModule
from tests.conftest import write_rows


def test_batches_mask_padding_and_the_split_is_fixed(tmp_path, tiny_bert, tiny_rows):
    path = write_rows(tmp_path / "texts.csv", tiny_rows)
    dm = LanguageModelingDataModule(str(path), tokenizer=tiny_bert, max_length=8, batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.texts["val"]) == 5 and len(dm.texts["train"]) == 15
    again = LanguageModelingDataModule(str(path), tokenizer=tiny_bert, val_fraction=0.25)
    assert again.texts == dm.texts  # split_seed fixes it
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    padded = batch["attention_mask"] == 0
    assert padded.any() and bool((batch["labels"][padded] == -100).all())
    assert bool((batch["labels"][~padded] == batch["input_ids"][~padded]).all())
    assert batch["input_ids"].shape[1] <= 8


def test_default_corpus_is_the_builtin_requests(tiny_bert):
    dm = LanguageModelingDataModule(tokenizer=tiny_bert)
    assert len(dm.texts["train"]) + len(dm.texts["val"]) > 1000


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size=0 must be a positive integer"),
        ({"max_length": "64"}, TypeError, r"max_length='64' must be a positive integer"),
        ({"val_fraction": 1.5}, ValueError, r"val_fraction=1.5 must be a number in \(0, 1\)"),
        ({"num_workers": -1}, ValueError, r"num_workers=-1 must be an integer >= 0"),
    ],
)
def test_bad_arguments(kwargs, error, message, tiny_bert):
    with pytest.raises(error, match=message):
        LanguageModelingDataModule(tokenizer=tiny_bert, **kwargs)


def test_bad_files(tmp_path, tiny_bert):
    with pytest.raises(ValueError, match=r"train_file='.*missing.jsonl' does not exist"):
        LanguageModelingDataModule(str(tmp_path / "missing.jsonl"), tokenizer=tiny_bert).texts  # noqa: B018
    one = write_rows(tmp_path / "one.csv", [("only text", "x")])
    with pytest.raises(ValueError, match=r"has 1 text\(s\): too few to hold out val_fraction=0.1"):
        LanguageModelingDataModule(str(one), tokenizer=tiny_bert).texts  # noqa: B018
    with pytest.raises(ValueError, match=r"has no column 'body' \(text_column\)"):
        LanguageModelingDataModule(str(one), text_column="body", tokenizer=tiny_bert).texts  # noqa: B018
