from __future__ import annotations

import pytest
import torch

from agent_lightning.datamodules import TextClassificationDataModule
from tests.conftest import BANKING77, write_rows

needs_banking77 = pytest.mark.skipif(not BANKING77.is_dir(), reason=f"BANKING77 is not at {BANKING77}")


def test_builtin_dataset_is_the_default_and_large_enough(tiny_bert):
    dm = TextClassificationDataModule(tokenizer=tiny_bert)
    splits = dm.splits
    assert dm.num_labels == 24 and len(dm.label_names) >= 20
    assert len(splits["train"]) + len(splits["val"]) == 1330
    assert len(splits["test"]) == 314
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) >= 1500
    assert set(splits["val"].labels) == set(dm.label_names)  # stratified: every action validated
    assert not set(splits["val"].texts) & set(splits["train"].texts)


@needs_banking77
def test_banking77_folder_with_category_column(tiny_bert):
    dm = TextClassificationDataModule(dataset=str(BANKING77), label_column="category", tokenizer=tiny_bert)
    assert dm.num_labels == 77
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 10003
    assert len(dm.splits["test"]) == 3080
    assert 950 <= len(dm.splits["val"]) <= 1050
    assert set(dm.splits["val"].labels) == set(dm.label_names)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 32 and batch["labels"].dtype == torch.long


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl"])
def test_every_file_format_reads_the_same(tmp_path, tiny_rows, tiny_bert, suffix):
    train = write_rows(tmp_path / f"train{suffix}", tiny_rows, header=("utterance", "intent"))
    dm = TextClassificationDataModule(
        train_file=str(train), text_column="utterance", label_column="intent", tokenizer=tiny_bert
    )
    assert dm.label_names == sorted({label for _, label in tiny_rows})
    texts = sorted(dm.splits["train"].texts + dm.splits["val"].texts)
    assert texts == sorted(text for text, _ in tiny_rows)


def test_label_mapping_and_split_are_stable_across_runs(tmp_path, tiny_rows, tiny_bert):
    forward = write_rows(tmp_path / "a.csv", tiny_rows)
    backward = write_rows(tmp_path / "b.csv", tiny_rows[::-1])
    first = TextClassificationDataModule(train_file=str(forward), tokenizer=tiny_bert)
    torch.manual_seed(123)  # the global seed must not move the split
    second = TextClassificationDataModule(train_file=str(forward), tokenizer=tiny_bert)
    reversed_order = TextClassificationDataModule(train_file=str(backward), tokenizer=tiny_bert)
    assert first.label_names == second.label_names == reversed_order.label_names
    assert first.splits["val"].texts == second.splits["val"].texts
    assert first.state_dict() == {"label_names": first.label_names}


def test_dynamic_padding_pads_to_the_longest_in_batch(tiny_data_dir, tiny_bert):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        lengths = batch["attention_mask"].sum(-1)
        assert batch["input_ids"].shape[1] == int(lengths.max())
    fixed = TextClassificationDataModule(
        dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4, padding="max_length", max_length=24
    )
    fixed.setup("fit")
    assert {b["input_ids"].shape[1] for b in fixed.train_dataloader()} == {24}


def test_length_grouping_removes_most_padding(tiny_bert):
    def padded_tokens(group_by_length: bool) -> tuple[int, int]:
        dm = TextClassificationDataModule(tokenizer=tiny_bert, batch_size=32, group_by_length=group_by_length)
        dm.setup("fit")
        torch.manual_seed(0)
        batches = list(dm.train_dataloader())
        total = sum(b["input_ids"].numel() for b in batches)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        return total, real

    grouped, real = padded_tokens(True)
    shuffled, real_again = padded_tokens(False)
    assert real == real_again  # the same examples, one epoch each
    assert grouped - real < 0.5 * (shuffled - real)  # less than half of the padding is left


def test_state_dict_refuses_other_labels(tiny_data_dir, tiny_bert):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert)
    with pytest.raises(ValueError, match="trained on 2 labels"):
        dm.load_state_dict({"label_names": ["a", "b"]})
    dm.load_state_dict(dm.state_dict())


def test_predict_file_without_labels(tmp_path, tiny_data_dir, tiny_bert):
    (tmp_path / "requests.csv").write_text("text\nplay jazz\nwill it rain\n", encoding="utf-8")
    dm = TextClassificationDataModule(
        dataset=str(tiny_data_dir), predict_file=str(tmp_path / "requests.csv"), tokenizer=tiny_bert
    )
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and "labels" not in batch


# -- bad input: each raises before training, naming the argument, the value and the fix ------------------------------


def _make(tiny_bert, **kwargs):
    return TextClassificationDataModule(tokenizer=tiny_bert, **kwargs).label_names


def test_missing_file(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match=r"train_file='.*nope.csv' does not exist"):
        _make(tiny_bert, train_file=str(tmp_path / "nope.csv"))


def test_missing_column_lists_the_columns(tiny_bert, tmp_path, tiny_rows):
    path = write_rows(tmp_path / "t.csv", tiny_rows, header=("text", "category"))
    with pytest.raises(ValueError, match=r"no column 'label' \(label_column\). Its columns are \['text', 'category'\]"):
        _make(tiny_bert, train_file=str(path))


def test_empty_dataset(tiny_bert, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no examples"):
        _make(tiny_bert, train_file=str(path))


def test_empty_text_field(tiny_bert, tmp_path, tiny_rows):
    path = write_rows(tmp_path / "t.csv", tiny_rows + [("  ", "call")])
    with pytest.raises(ValueError, match=f"example {len(tiny_rows) + 1}: the 'text' field is empty"):
        _make(tiny_bert, train_file=str(path))


def test_bad_encoding(tiny_bert, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,order\nthe tea,order\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text.*Re-save it as UTF-8"):
        _make(tiny_bert, train_file=str(path))


def test_label_unseen_in_train(tiny_bert, tmp_path, tiny_rows):
    train = write_rows(tmp_path / "train.csv", tiny_rows)
    val = write_rows(tmp_path / "val.csv", [("book a table", "book_restaurant")])
    with pytest.raises(ValueError, match=r"label\(s\) that training never saw: \['book_restaurant'\]"):
        _make(tiny_bert, train_file=str(train), val_file=str(val))


def test_single_label(tiny_bert, tmp_path):
    path = write_rows(tmp_path / "t.csv", [("a", "x"), ("b", "x")])
    with pytest.raises(ValueError, match="needs at least two"):
        _make(tiny_bert, train_file=str(path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "no-such-thing"}, "neither a built-in data set"),
        ({"dataset": "assistant-actions", "train_file": "x.csv"}, "both name the training data"),
        ({"val_fraction": 1.5}, r"val_fraction=1.5 must be a number in \(0, 1\)"),
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"padding": "longest"}, "padding='longest' is not a choice; use 'dynamic'"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"tokenizer": "./missing-tokenizer"}, "tokenizer='./missing-tokenizer' is not a model folder"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextClassificationDataModule(**kwargs)


def test_hub_dataset_without_the_datasets_package(tiny_bert, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without the optional extra
    with pytest.raises(ValueError, match=r"pip install 'agent-lightning\[hub\]'"):
        _make(tiny_bert, dataset="hub:banking77")
