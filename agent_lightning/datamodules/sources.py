"""Reading labelled text from local files, a hub data set or a built-in data set, with errors that say the fix."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "BUILTIN_DATASETS",
    "SPLIT_ALIASES",
    "SUPPORTED_SUFFIXES",
    "LabelledTexts",
    "builtin_dataset_dir",
    "find_split_files",
    "load_hub_dataset",
    "read_labelled_file",
]

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
BUILTIN_DATASETS = {"assistant-actions": "assistant_actions"}
SPLIT_ALIASES = {"train": ("train",), "val": ("validation", "val", "dev", "valid"), "test": ("test",)}


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with their label names, and where they came from (for error messages)."""

    texts: list[str]
    labels: list[str]
    origin: str

    def __len__(self) -> int:
        return len(self.texts)


def builtin_dataset_dir(name: str) -> Path:
    """The packaged folder of a built-in data set (``train.csv``, ``test.csv``)."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"dataset={name!r} is not a built-in data set; choose one of {sorted(BUILTIN_DATASETS)}.")
    return Path(str(resources.files("agent_lightning.datamodules") / "builtin" / BUILTIN_DATASETS[name]))


def find_split_files(folder: Path) -> dict[str, Path]:
    """Map ``train``/``val``/``test`` to the files of a folder named after them (``validation.jsonl``...)."""
    found: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            for suffix in SUPPORTED_SUFFIXES:
                candidate = folder / f"{alias}{suffix}"
                if split not in found and candidate.is_file():
                    found[split] = candidate
    if "train" not in found:
        names = sorted(p.name for p in folder.iterdir())
        raise ValueError(
            f"dataset={str(folder)!r} holds no train file (train.csv, train.tsv, train.json or train.jsonl); it holds "
            f"{names}. Rename the training file, or pass it as train_file=PATH."
        )
    return found


def read_labelled_file(
    path: str | Path, text_column: str, label_column: str | None, argument: str, label_role: str = "label_column"
) -> LabelledTexts:
    """Read a CSV, TSV, JSON (a list of objects) or JSONL file of labelled texts.

    Args:
        path: the file.
        text_column: the column/key holding the text.
        label_column: the column/key holding the label (strings or integers; integers become their decimal string);
            ``None`` for unlabelled texts (``labels`` is then empty).
        argument: the argument that named the file, for error messages (e.g. ``"train_file"``).
        label_role: the argument that named ``label_column`` (``"response_column"`` when the "labels" are a
            generative agent's answer texts), for error messages.

    Raises:
        ValueError: missing file, unknown suffix, undecodable bytes, missing column, empty text, empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{argument}={str(path)!r} does not exist. Check the path (relative paths start at {Path.cwd()})."
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"{argument}={str(path)!r}: unsupported file type {suffix!r}; use one of {SUPPORTED_SUFFIXES}."
        )
    try:
        rows = _read_rows(path, suffix)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{argument}={str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}). Re-save it as UTF-8."
        ) from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument}={str(path)!r} is not valid JSON: {error}.") from error
    if not rows:
        raise ValueError(f"{argument}={str(path)!r} holds no examples. Give a file with at least one labelled text.")
    columns = list(rows[0].keys())
    for column, role in ((text_column, "text_column"), (label_column, label_role)):
        if column is not None and column not in columns:
            raise ValueError(
                f"{argument}={str(path)!r} has no column {column!r} ({role}). Its columns are {columns}; "
                f"set {role} to one of them."
            )
    texts, labels = [], []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(text_column), row.get(label_column)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"{argument}={str(path)!r}, example {number}: the {text_column!r} field is empty or not text "
                f"({text!r}). Remove or fill that example."
            )
        texts.append(text)
        if label_column is None:
            continue
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"{argument}={str(path)!r}, example {number}: the {label_column!r} field is empty.")
        labels.append(str(label).strip())
    return LabelledTexts(texts, labels, str(path))


def _read_rows(path: Path, suffix: str) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(handle, delimiter="," if suffix == ".csv" else "\t"))
        if suffix == ".jsonl":
            return [json.loads(line) for line in handle if line.strip()]
        data = json.load(handle)
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{str(path)!r} must hold a JSON list of objects, e.g. [{{'text': ..., 'label': ...}}].")
    return data


def load_hub_dataset(
    name: str, config: str | None, text_column: str, label_column: str | None
) -> dict[str, LabelledTexts]:
    """Load a data set from the Hugging Face hub by name (needs the optional ``datasets`` package and a network).

    Integer class labels are turned into their names when the data set declares them (``ClassLabel``);
    ``label_column=None`` reads texts only.
    """
    try:
        import datasets
    except ImportError as error:
        raise ValueError(
            f"dataset='hub:{name}' needs the optional 'datasets' package: pip install 'agent-lightning[hub]'. "
            "Offline, download the data once and pass train_file=/val_file=/test_file= instead."
        ) from error
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as error:  # the hub client raises many types (connection, missing repo, offline mode)
        raise ValueError(f"dataset='hub:{name}' could not be loaded: {error}") from error
    splits: dict[str, LabelledTexts] = {}
    for split, aliases in SPLIT_ALIASES.items():
        hub_split = next((a for a in aliases if a in loaded), None)
        if hub_split is None:
            continue
        part = loaded[hub_split]
        for column, role in ((text_column, "text_column"), (label_column, "label_column")):
            if column is not None and column not in part.column_names:
                raise ValueError(
                    f"hub:{name}/{hub_split} has no column {column!r}; set {role} to one of {part.column_names}."
                )
        labels = []
        if label_column is not None:
            names = getattr(part.features[label_column], "names", None)
            labels = [names[v] if names is not None else str(v) for v in part[label_column]]
        splits[split] = LabelledTexts(list(part[text_column]), labels, f"hub:{name}/{hub_split}")
    if "train" not in splits:
        raise ValueError(f"dataset='hub:{name}' has no train split (it has {list(loaded)}).")
    return splits
