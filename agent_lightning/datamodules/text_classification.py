"""A LightningDataModule for labelled requests: files, hub data sets or the built-in assistant-actions data."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding
from transformers.trainer_pt_utils import get_length_grouped_indices
from typing_extensions import override

from agent_lightning.backbone import load_tokenizer, resolve_backbone
from agent_lightning.datamodules.sources import (
    BUILTIN_DATASETS,
    LabelledTexts,
    builtin_dataset_dir,
    find_split_files,
    load_hub_dataset,
    read_labelled_file,
)
from agent_lightning.evaluation import UNLABELED
from agent_lightning.generation import (
    ChatCollator,
    ChatExamples,
    ChatPrompt,
    LeftPaddingCollator,
    continuation_prompt,
)
from agent_lightning.validation import (
    check_bool,
    check_choice,
    check_count,
    check_int,
    check_open_fraction,
    check_optional_string,
)

__all__ = ["REST", "UNLABELED", "EpochSeededSampler", "TextClassificationDataModule", "TokenizedTexts"]

DEFAULT_DATASET = "assistant-actions"
#: ``unlabeled_file=REST``: the training texts that ``labels_per_class`` left out
REST = "rest"


class TokenizedTexts(Dataset):
    """Pre-tokenized examples; items are dicts of token-id lists (padding happens per batch in the collator)."""

    def __init__(self, encodings: dict[str, list[list[int]]], label_ids: list[int] | None, texts: list[str]) -> None:
        self.encodings = encodings
        self.label_ids = label_ids
        self.texts = texts
        self.lengths = [len(ids) for ids in encodings["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: values[index] for key, values in self.encodings.items()}
        if self.label_ids is not None:
            item["labels"] = self.label_ids[index]
        return item


class EpochSeededSampler(Sampler[int]):
    """Shuffled training order that depends only on ``seed`` and the epoch, so a resumed run sees the same batches.

    The epoch comes from ``epoch`` (a callable; the datamodule passes the trainer's ``current_epoch``, which
    Lightning restores exactly on resume) or else from :meth:`set_epoch`. With ``group_by_length`` the order comes from
    transformers' ``get_length_grouped_indices`` (random pools of 50 batches, each sorted by length, longest batch
    first); otherwise it is a plain permutation.

    Args:
        lengths: token count of every example.
        batch_size: the loader's batch size (the grouping works in whole batches).
        group_by_length: group examples of similar length into the same batches.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        epoch: returns the current epoch; ``None`` uses the value given to :meth:`set_epoch`.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        group_by_length: bool,
        seed: int,
        epoch: Callable[[], int] | None = None,
    ) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.seed = seed
        self.epoch = 0
        self._epoch_fn = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        epoch = self._epoch_fn() if self._epoch_fn is not None else self.epoch
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.group_by_length:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        return iter(torch.randperm(len(self.lengths), generator=generator).tolist())


class TextClassificationDataModule(LightningDataModule):
    """Labelled texts for an :class:`~agent_lightning.Agent`, tokenized with the agent's tokenizer.

    Where the data comes from (one of):

    - ``dataset=None`` and no files: the built-in ``assistant-actions`` data set (24 actions, 1,644 requests).
    - ``dataset="assistant-actions"``: a built-in data set by name.
    - ``dataset="path/to/folder"``: a folder holding ``train.{csv,tsv,json,jsonl}`` and optionally
      ``validation``/``val``/``dev`` and ``test`` files.
    - ``dataset="hub:NAME"``: a Hugging Face hub data set (needs ``pip install 'agent-lightning[hub]'`` and a network).
    - ``train_file=`` (and optionally ``val_file=``, ``test_file=``): explicit files.

    The label vocabulary is the sorted set of training labels, so it is the same on every run and machine; it is
    saved in checkpoints (``state_dict``). A label in val/test that training never saw is an error. Without a
    validation source, a stratified ``val_fraction`` of train is carved off with ``split_seed`` (independent of the
    global seed, so the split never changes between runs).

    Batches are padded dynamically to their longest member (``padding="dynamic"``) and, with ``group_by_length``,
    training batches are drawn from length-sorted pools so that little padding is left (see
    :class:`EpochSeededSampler`: the order depends only on the seed and the epoch, so resumed runs repeat it).

    Args:
        dataset: a built-in name, a folder, or ``"hub:NAME"``; see above.
        train_file: a training file (CSV, TSV, JSON list or JSONL).
        val_file: a validation file; default: carved from train.
        test_file: a test file; default: the dataset's test split, else none.
        predict_file: texts to predict (labels optional); default: the test split.
        text_column: the column holding the text.
        label_column: the column holding the label.
        hub_config: the hub data set's configuration name, if it has several.
        val_fraction: share of each training label held out for validation when no validation source exists.
        split_seed: seed of that split.
        tokenizer: tokenizer folder or hub name; ``None`` uses the packaged backbone's. The CLI links it to
            ``--model.model``.
        max_length: longest tokenized input; the CLI links it to ``--model.max_length``.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: twice ``batch_size``).
        padding: ``"dynamic"`` pads each batch to its longest example; ``"max_length"`` pads to ``max_length``.
        group_by_length: draw training batches of similar lengths.
        shuffle_seed: seed of the training order (epoch ``e`` uses ``shuffle_seed + e``); ``None`` follows
            ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
        num_workers: data loader worker processes.
        labels_per_class: keep only this many labelled training examples of each label (a stratified subsample
            drawn with ``split_seed``, after the validation split is carved off): the few-label setting.
        unlabeled_file: texts without labels added to the training batches, marked with the label
            :data:`UNLABELED` (-100) so that the task loss skips them while distillation learns from them: a file
            (CSV, TSV, JSON or JSONL with ``text_column``; a label column is ignored), or ``"rest"``: the training
            texts that ``labels_per_class`` left out.
        task: the batches' form, set to the agent's task (the CLI links it to ``--model.task``):
            ``"classification"``: token ids and a label id per request; ``"generation"``: chat SFT examples for a
            decoder (:mod:`agent_lightning.generation`): the request in the tokenizer's chat template, the action's
            name as the response, loss labels over the response only, left padding; evaluation batches also carry
            the prompts, the action ids and the request texts; ``"causal-lm"``: the texts alone (no label column
            is read) as next-token batches, ``labels`` being the input ids with ``-100`` at padding, and for predict
            left-padded prompts that generation continues.
        system_prompt: ``task="generation"``: the chat's system message (``None``: the template's default); linked to
            ``--model.system_prompt``.
        list_actions: ``task="generation"``: list the allowed actions after each request; linked to
            ``--model.list_actions``.
        response_column: ``task="generation"``: the column holding each request's answer text (e.g. a JSON tool
            call with its arguments), written freely by the agent; the label column is then not read, there is no
            closed action set (``label_names`` is empty) and the validation split is random. ``None``: the answer is
            the request's action name from ``label_column``.

    Raises:
        TypeError: an argument of the wrong type, naming the argument, the value and the fix.
        ValueError: a bad value or bad data, naming the argument, the value and the fix.

    Example:
        >>> dm = TextClassificationDataModule()  # the built-in assistant-actions data, the packaged tokenizer
        >>> len(dm.label_names), dm.label_names[:2]
        (24, ['add_to_shopping_list', 'book_restaurant'])
    """

    def __init__(
        self,
        dataset: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        hub_config: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        tokenizer: str | None = None,
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        padding: Literal["dynamic", "max_length"] = "dynamic",
        group_by_length: bool = True,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
        labels_per_class: int | None = None,
        unlabeled_file: str | None = None,
        task: Literal["classification", "generation", "causal-lm"] = "classification",
        system_prompt: str | None = None,
        list_actions: bool = False,
        response_column: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("task", task, ("classification", "generation", "causal-lm"))
        check_bool("list_actions", list_actions)
        check_optional_string("system_prompt", system_prompt, "for the template's default")
        if task != "classification" and unlabeled_file is not None:
            raise ValueError(
                f"unlabeled_file={unlabeled_file!r} is for task='classification' (unlabelled rows train through "
                f"distillation of a classifier); drop it for task={task!r}."
            )
        if response_column is not None and (task != "generation" or not isinstance(response_column, str)):
            raise ValueError(
                f"response_column={response_column!r} names the column of answer texts for task='generation' (got "
                f"task={task!r}); pass a column name with task='generation', or drop it."
            )
        if response_column is not None and (labels_per_class is not None or list_actions):
            raise ValueError(
                f"response_column={response_column!r} gives free answers, without an action set to subsample by "
                "(labels_per_class) or to list (list_actions); drop those."
            )
        if task == "causal-lm" and labels_per_class is not None:
            raise ValueError(
                f"labels_per_class={labels_per_class} subsamples labelled data; task='causal-lm' reads texts only. "
                "Drop labels_per_class."
            )
        if dataset is not None and train_file is not None:
            raise ValueError(
                f"dataset={dataset!r} and train_file={train_file!r} both name the training data; pass only one."
            )
        check_open_fraction("val_fraction", val_fraction)
        check_count("batch_size", batch_size)
        check_count("max_length", max_length)
        check_count("eval_batch_size", eval_batch_size, optional=True)
        if padding not in ("dynamic", "max_length"):
            raise ValueError(f"padding={padding!r} is not a choice; use 'dynamic' (default) or 'max_length'.")
        check_count("num_workers", num_workers, minimum=0)
        check_bool("group_by_length", group_by_length)
        check_int("split_seed", split_seed, 0)
        check_int("shuffle_seed", shuffle_seed, 0, optional=True)
        check_count("labels_per_class", labels_per_class, optional=True)
        if unlabeled_file is not None and not isinstance(unlabeled_file, str):
            raise TypeError(f"unlabeled_file={unlabeled_file!r} must be a file path or 'rest'.")
        if unlabeled_file == REST and labels_per_class is None:
            raise ValueError(
                "unlabeled_file='rest' means the training texts that labels_per_class leaves out, but "
                "labels_per_class is not set; pass labels_per_class=N too, or give a file of unlabelled texts."
            )
        self.save_hyperparameters()
        self.tokenizer_source = resolve_backbone(tokenizer, argument="tokenizer")
        self._check_sources_exist()
        self._splits: dict[str, LabelledTexts] | None = None
        self._rest_texts: list[str] = []
        self._unlabeled: list[str] | None = None
        self._label_names: list[str] | None = None
        self._tokenizer = None
        self._datasets: dict[str, TokenizedTexts] = {}

    # -- sources and labels ------------------------------------------------------------------------------------------
    def _check_sources_exist(self) -> None:
        hp = self.hparams
        dataset = hp.dataset
        if dataset is not None and not dataset.startswith("hub:") and dataset not in BUILTIN_DATASETS:
            if not Path(dataset).is_dir():
                raise ValueError(
                    f"dataset={dataset!r} is neither a built-in data set ({sorted(BUILTIN_DATASETS)}), a folder, "
                    "nor 'hub:NAME'. Pass one of those, or train_file=PATH for a single file."
                )
        for name in ("train_file", "val_file", "test_file", "predict_file", "unlabeled_file"):
            value = hp[name]
            if value is not None and not (name == "unlabeled_file" and value == REST) and not Path(value).is_file():
                raise ValueError(f"{name}={value!r} does not exist. Check the path (relative to {Path.cwd()}).")
        if hp.train_file is None and any(hp[name] for name in ("val_file", "test_file")) and dataset is None:
            raise ValueError("val_file/test_file were given without train_file; pass train_file=PATH as well.")

    def _read_splits(self) -> dict[str, LabelledTexts]:
        hp = self.hparams
        # a response column's answers stand where the labels would (LabelledTexts.labels holds them)
        answers = {"causal-lm": None, "generation": hp.response_column or hp.label_column}
        columns = (hp.text_column, answers.get(hp.task, hp.label_column))
        role = "response_column" if hp.task == "generation" and hp.response_column else "label_column"
        if hp.dataset is not None and hp.dataset.startswith("hub:"):
            splits = load_hub_dataset(hp.dataset[4:], hp.hub_config, *columns)
        else:
            if hp.train_file is not None:
                files = {"train": Path(hp.train_file)}
            else:
                name = hp.dataset or DEFAULT_DATASET
                folder = builtin_dataset_dir(name) if name in BUILTIN_DATASETS else Path(name)
                files = find_split_files(folder)
            arguments = {"train": "train_file", "val": "val_file", "test": "test_file"}
            splits = {
                split: read_labelled_file(
                    path, *columns, argument=arguments[split] if hp.train_file else "dataset", label_role=role
                )
                for split, path in files.items()
            }
        for split, argument in (("val", "val_file"), ("test", "test_file")):
            if hp[argument] is not None:
                splits[split] = read_labelled_file(hp[argument], *columns, argument=argument, label_role=role)
        if "val" not in splits:
            by_label = hp.task != "causal-lm" and hp.response_column is None
            split = _stratified_split(splits["train"], hp.val_fraction, hp.split_seed, by_label=by_label)
            splits["train"], splits["val"] = split
            if not splits["val"].texts:
                raise ValueError(
                    f"The training data ({splits['train'].origin}) has {len(splits['train'])} text(s): too few to "
                    f"hold out val_fraction={hp.val_fraction}. Add texts or pass val_file=PATH."
                )
        if hp.labels_per_class is not None:
            splits["train"], rest = _per_class_subsample(splits["train"], hp.labels_per_class, hp.split_seed)
            self._rest_texts = rest.texts
        return splits

    @property
    def unlabeled_texts(self) -> list[str]:
        """The unlabelled training texts (``unlabeled_file``), read once; empty without one."""
        source = self.hparams.unlabeled_file
        if source is None:
            return []
        if source == REST:
            self.splits  # noqa: B018 - the subsample decides the rest
            return list(self._rest_texts)
        if self._unlabeled is None:
            column = self.hparams.text_column
            self._unlabeled = read_labelled_file(source, column, None, argument="unlabeled_file").texts
        return list(self._unlabeled)

    @property
    def splits(self) -> dict[str, LabelledTexts]:
        """The raw labelled texts per split (``train``, ``val``, optionally ``test``), read once."""
        if self._splits is None:
            splits = self._read_splits()
            if self.hparams.task == "causal-lm" or self.hparams.response_column:  # no label vocabulary
                self._splits, self._label_names = splits, []
                return self._splits
            names = sorted(set(splits["train"].labels))
            if len(names) < 2:
                raise ValueError(
                    f"The training data ({splits['train'].origin}) has {len(names)} label(s) {names}; a classifier "
                    f"needs at least two. Check label_column={self.hparams.label_column!r}."
                )
            known = set(names)
            for split in ("val", "test"):
                if split in splits:
                    unseen = sorted(set(splits[split].labels) - known)
                    if unseen:
                        raise ValueError(
                            f"The {split} data ({splits[split].origin}) has label(s) that training never saw: "
                            f"{unseen[:5]}{' ...' if len(unseen) > 5 else ''}. Add examples of them to the training "
                            f"data or remove them from the {split} data."
                        )
            self._splits, self._label_names = splits, names
        return self._splits

    @property
    def label_names(self) -> list[str]:
        """The label vocabulary (sorted training labels); label id ``i`` is ``label_names[i]``."""
        if self._label_names is None:
            self.splits  # noqa: B018 - reads and validates the data
        return list(self._label_names)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    # -- tokenization and loaders ------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_source, argument="tokenizer")
        return self._tokenizer

    @override
    def setup(self, stage: str) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[stage]
        for split in wanted:
            if split not in self._datasets:
                self._datasets[split] = self._tokenize(split)

    @property
    def chat_prompt(self) -> ChatPrompt:
        """``task="generation"``: how requests become prompts and actions responses (what the agent acts with)."""
        hp = self.hparams
        actions = self.label_names if hp.list_actions else None
        return ChatPrompt(self.tokenizer, hp.max_length, system_prompt=hp.system_prompt, actions=actions)

    def _tokenize(self, split: str) -> TokenizedTexts | ChatExamples:
        task = self.hparams.task
        if split == "predict" and self.hparams.predict_file is not None:
            texts = read_labelled_file(self.hparams.predict_file, self.hparams.text_column, None, "predict_file").texts
            if task == "generation":
                return self._chat_examples(texts, [UNLABELED] * len(texts), [""] * len(texts))
            return TokenizedTexts(self._encode(texts, prompts=task == "causal-lm"), None, texts)
        source = "test" if split == "predict" else split
        if source not in self.splits:
            raise ValueError(
                f"There is no {source} split: pass test_file=PATH (or predict_file=PATH to predict), "
                "or use a dataset folder that holds a test file."
            )
        data = self.splits[source]
        if task == "causal-lm":
            return TokenizedTexts(self._encode(data.texts, prompts=split == "predict"), None, list(data.texts))
        if self.hparams.response_column:  # free answers
            return self._chat_examples(list(data.texts), [UNLABELED] * len(data), list(data.labels))
        index = {name: i for i, name in enumerate(self.label_names)}
        texts, label_ids = list(data.texts), [index[label] for label in data.labels]
        if task == "generation":
            return self._chat_examples(texts, label_ids, list(data.labels))
        if split == "train":  # unlabelled rows train only through distillation
            unlabeled = self.unlabeled_texts
            texts, label_ids = texts + unlabeled, label_ids + [UNLABELED] * len(unlabeled)
        return TokenizedTexts(self._encode(texts), label_ids, texts)

    def _chat_examples(self, texts: list[str], label_ids: list[int], answers: list[str]) -> ChatExamples:
        """Chat examples: the action of each label id as its answer, or (free answers, ``label_ids`` all
        :data:`UNLABELED`) the answer texts; an empty answer (predict) leaves the prompt alone."""
        prompt = self.chat_prompt
        if self.label_names:
            try:
                responses = prompt.action_ids(self.label_names)  # distinct, or a clear error before training
            except ValueError as error:
                source = "train_file" if self.hparams.train_file else "dataset"
                raise ValueError(f"{source}={self.splits['train'].origin!r}, its labels: {error}") from error
            longest = max(len(ids) for ids in responses)
        examples, prompts = [], []
        for text, label, answer_text in zip(texts, label_ids, answers):
            if self.label_names:  # the prompt leaves room for the longest action, as the agent's do
                answer = responses[label] if label != UNLABELED else []
                example = prompt.example_ids(text, answer, longest)
            else:
                answer = prompt.response_ids(answer_text) if answer_text else []
                example = prompt.example_ids(text, answer, len(answer))
            examples.append(example)
            prompts.append(example["input_ids"][: len(example["input_ids"]) - len(answer)])
        references = None if self.label_names else list(answers)
        return ChatExamples(examples, prompts, label_ids, texts, references)

    def _encode(self, texts: Sequence[str], prompts: bool = False) -> dict[str, list[list[int]]]:
        if prompts:  # a decoder's prompts: generation continues where the text ends
            ids = [continuation_prompt(self.tokenizer, text, self.hparams.max_length) for text in texts]
            return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
        decoder = self.hparams.task == "causal-lm"  # a BERT tokenizer's segment ids mean nothing to a decoder
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.hparams.max_length, return_token_type_ids=not decoder
        )
        return {key: list(values) for key, values in encoded.items()}

    def _collator(self, training: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        if self.hparams.task == "generation":
            return ChatCollator(self.tokenizer.pad_token_id, with_prompts=not training)
        if self.hparams.task == "causal-lm":
            return DataCollatorForLanguageModeling(self.tokenizer, mlm=False)
        if self.hparams.padding == "max_length":
            return DataCollatorWithPadding(self.tokenizer, padding="max_length", max_length=self.hparams.max_length)
        return DataCollatorWithPadding(self.tokenizer, padding="longest")

    @override
    def train_dataloader(self) -> DataLoader:
        data = self._datasets["train"]
        batch_size = self.hparams.batch_size
        seed = self.hparams.shuffle_seed
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        # Lightning's sampler epoch is off by one after some resumes; its restored current_epoch is not.
        sampler = EpochSeededSampler(data.lengths, batch_size, self.hparams.group_by_length, seed, self._current_epoch)
        return self._loader(data, batch_size, sampler=sampler, collate_fn=self._collator(training=True))

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"], self._eval_batch_size)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["test"], self._eval_batch_size)

    @property
    def predict_texts(self) -> list[str]:
        """The texts of the predict split, in the order :meth:`predict_dataloader` yields them."""
        return self._datasets["predict"].texts

    @override
    def predict_dataloader(self) -> DataLoader:
        data = self._datasets["predict"]
        if self.hparams.task == "causal-lm":  # left-padded prompts: generation continues every row at the end
            return self._loader(
                data, self._eval_batch_size, collate_fn=LeftPaddingCollator(self.tokenizer.pad_token_id)
            )
        return self._loader(data, self._eval_batch_size)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    @property
    def _eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or 2 * self.hparams.batch_size

    def _loader(self, data: TokenizedTexts | ChatExamples, batch_size: int, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        kwargs.setdefault("collate_fn", self._collator(training=False))
        return DataLoader(
            data,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            **kwargs,
        )

    # -- checkpointed state ------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"label_names": self.label_names}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("label_names")
        if saved is not None and list(saved) != self.label_names:
            raise ValueError(
                f"The checkpoint was trained on {len(saved)} labels {saved[:4]}..., but this data has "
                f"{self.num_labels} {self.label_names[:4]}.... Resume with the same data, or start a new run."
            )


def _draw_per_label(
    data: LabelledTexts, seed: int, count: Callable[[int], int], by_label: bool = True
) -> tuple[list[int], list[int]]:
    """``(drawn, rest)`` row indices in file order: ``count(n)`` rows drawn at random (``seed``) from each label
    that has ``n`` rows (from all rows as one group without ``by_label`` or without labels)."""
    by_label_rows: dict[str, list[int]] = defaultdict(list)
    groups = data.labels if by_label and data.labels else [""] * len(data)
    for i, label in enumerate(groups):
        by_label_rows[label].append(i)
    rng = random.Random(seed)
    drawn: set[int] = set()
    for label in sorted(by_label_rows):
        indices = by_label_rows[label]
        rng.shuffle(indices)
        drawn.update(indices[: count(len(indices))])
    return sorted(drawn), [i for i in range(len(data)) if i not in drawn]


def _subset(data: LabelledTexts, indices: list[int], origin: str) -> LabelledTexts:
    labels = [data.labels[i] for i in indices] if data.labels else []
    return LabelledTexts([data.texts[i] for i in indices], labels, origin=origin)


def _per_class_subsample(data: LabelledTexts, per_class: int, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """``(kept, rest)``: ``per_class`` examples of every label (all of a label that has fewer), drawn with ``seed``."""
    kept, rest = _draw_per_label(data, seed, lambda n: per_class)
    origin = f"{data.origin} (labels_per_class={per_class}, seed={seed})"
    return _subset(data, kept, origin), _subset(data, rest, data.origin)


def _stratified_split(
    data: LabelledTexts, fraction: float, seed: int, by_label: bool = True
) -> tuple[LabelledTexts, LabelledTexts]:
    """Hold out ``fraction`` of each label's examples (at least one where the label has two or more); of all
    examples at random without ``by_label``."""
    hold_out = lambda n: max(1, round(fraction * n)) if n >= 2 else 0  # noqa: E731
    val, keep = _draw_per_label(data, seed, hold_out, by_label)
    origin = f"{data.origin} (validation split, val_fraction={fraction}, seed={seed})"
    return _subset(data, keep, data.origin), _subset(data, val, origin)
