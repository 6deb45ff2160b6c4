from __future__ import annotations

import pytest

from agent_lightning.backbone import default_backbone_path, resolve_backbone
from agent_lightning.io import atomic_directory, atomic_write_text


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "model.bin").write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_only_when_asked(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or backup folders left


def test_atomic_write_text(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}" and sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_atomic_write_csv_round_trips_through_the_labelled_file_reader(tmp_path):
    from agent_lightning.datamodules.sources import read_labelled_file
    from agent_lightning.io import atomic_write_csv

    path = tmp_path / "train.csv"
    rows = [("add eggs, milk and bread", "add_to_shopping_list"), ('say "hi" to Ann', "send_message")]
    atomic_write_csv(path, rows)
    data = read_labelled_file(path, "text", "label", argument="train_file")
    assert list(zip(data.texts, data.labels)) == rows  # commas and quotes survive
    atomic_write_csv(path, [("x", "a", 0.5)], header=("text", "label", "confidence"))
    assert path.read_text().splitlines() == ["text,label,confidence", "x,a,0.5"]
    assert [p.name for p in tmp_path.iterdir()] == ["train.csv"]  # no temporary file left


def test_backbone_resolution(tmp_path):
    default = default_backbone_path()
    assert resolve_backbone(None) == default
    assert resolve_backbone(default) == default
    assert resolve_backbone("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match=r"--model.model='/nope' is not a model folder"):
        resolve_backbone("/nope", argument="--model.model")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a model folder"):
        resolve_backbone(str(tmp_path / "file.bin"))
