"""Learning from feedback: the next training set from the original data plus what users said, and a fine-tune of
the served agent's checkpoint on it, measured before and after.

Nothing learned before is forgotten: the original training rows are always replayed. A correction becomes an
example of the correct action, a thumb up an example of the answer given; a thumb down without a correction is
left out (it says what the answer is not, not what it is). Feedback rows are repeated ``feedback_repeats`` times so
that a few corrections weigh against thousands of original rows in a short fine-tune.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything

from agent_lightning.agent import Agent
from agent_lightning.datamodules import TextClassificationDataModule
from agent_lightning.datamodules.sources import LabelledTexts
from agent_lightning.evaluation import action_accuracy
from agent_lightning.io import atomic_directory, atomic_write_csv, check_writable_directory
from agent_lightning.serving.store import Feedback, RequestStore
from agent_lightning.validation import check_count, check_number

__all__ = ["LearnSummary", "feedback_examples", "learn_from_feedback"]


def feedback_examples(rows: list[Feedback], actions: list[str]) -> LabelledTexts:
    """The examples feedback gives: ``(text, correct action)`` for corrections, ``(text, answer)`` for a thumb up;
    a thumb down alone, an abstained answer and an action outside ``actions`` give none. The latest feedback on a
    request wins."""
    latest: dict[str, Feedback] = {}
    for row in rows:
        latest[row.request_id] = row
    texts, labels = [], []
    for row in latest.values():
        action = row.correct_action if row.correct_action is not None else row.answered if row.thumbs_up else None
        if action is not None and action in actions:
            texts.append(row.text)
            labels.append(action)
    return LabelledTexts(texts, labels, "feedback")


@dataclass(frozen=True)
class LearnSummary:
    """Before and after one round of learning from feedback."""

    checkpoint: str
    examples: int
    original_rows: int
    feedback_rows: int
    test_acc_before: float | None
    test_acc_after: float | None
    feedback_acc_before: float
    feedback_acc_after: float

    def markdown(self) -> str:
        def pct(value: float | None) -> str:
            return "" if value is None else f"{100 * value:.2f} %"

        return "\n".join(
            [
                "# Learning from feedback",
                "",
                f"{self.feedback_rows} feedback examples (repeated) replayed with {self.original_rows} original "
                f"training rows: {self.examples} examples. New checkpoint: `{self.checkpoint}`.",
                "",
                "| | before | after |",
                "|---|---|---|",
                f"| test accuracy | {pct(self.test_acc_before)} | {pct(self.test_acc_after)} |",
                f"| accuracy on the feedback requests | {pct(self.feedback_acc_before)} "
                f"| {pct(self.feedback_acc_after)} |",
            ]
        )


def _write_csv(path: Path, data: LabelledTexts) -> None:
    atomic_write_csv(path, zip(data.texts, data.labels))


def learn_from_feedback(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    output: str | os.PathLike,
    data: dict[str, Any] | None = None,
    epochs: int = 2,
    learning_rate: float | None = None,
    feedback_repeats: int = 4,
    batch_size: int = 32,
    seed: int = 42,
    overwrite: bool = False,
) -> LearnSummary:
    """Fine-tune ``checkpoint`` on its original training data plus the feedback in ``store``; write the new
    checkpoint, the training set and a before/after summary to ``output`` (atomically).

    Args:
        checkpoint: the served agent's checkpoint (``.ckpt``).
        store: the server's SQLite store (:class:`~agent_lightning.serving.store.RequestStore`).
        output: the folder to write: ``learned.ckpt``, ``data/{train,val,test}.csv``, ``data/unlabeled.csv`` (the
            served requests nobody gave feedback on: ``--unlabeled`` for a distilled student), ``summary.{md,json}``.
        data: the original data, as ``TextClassificationDataModule`` arguments (the ``data:`` section of the
            training config); ``None``: the built-in data set.
        epochs: fine-tuning epochs.
        learning_rate: peak learning rate; ``None`` keeps the checkpoint's.
        feedback_repeats: how many times each feedback example appears in the training set.
        batch_size: training batch size.
        seed: the fine-tune's seed.
        overwrite: replace an existing ``output``.

    Raises:
        ValueError: bad arguments, or a store without usable feedback.
        FileExistsError: ``output`` exists and is not empty, without ``overwrite``.
    """
    check_count("epochs", epochs)
    check_count("feedback_repeats", feedback_repeats)
    check_count("batch_size", batch_size)
    check_number("learning_rate", learning_rate, minimum=0, strict_minimum=True, optional=True)
    if not Path(store).is_file():
        raise ValueError(f"store={str(store)!r} does not exist. Pass the --store file of agent-lightning serve.")
    check_writable_directory(output, overwrite, argument="output")
    agent = Agent.load_from_checkpoint(checkpoint, map_location="cpu")
    # the batches the agent was trained on: its tokenizer, length and task (a generative agent's prompt settings)
    fixed = {"tokenizer": agent.hparams.model, "max_length": agent.hparams.max_length, "task": agent.hparams.task}
    if agent.hparams.task == "generation":
        fixed.update(system_prompt=agent.hparams.system_prompt, list_actions=agent.hparams.list_actions)
    original = TextClassificationDataModule(**{**(data or {}), **fixed})
    corrections = feedback_examples(RequestStore(store).feedback(), agent.labels)
    if not corrections.texts:
        raise ValueError(
            f"store={str(store)!r} holds no usable feedback (a correction to one of the agent's actions, or a thumb "
            "up). Collect some with POST /feedback first."
        )
    splits = original.splits
    train = LabelledTexts(
        splits["train"].texts + corrections.texts * feedback_repeats,
        splits["train"].labels + corrections.labels * feedback_repeats,
        "original + feedback",
    )

    def accuracies(model: Agent, trainer_dm: TextClassificationDataModule) -> tuple[float | None, float]:
        test = None
        if "test" in trainer_dm.splits:
            test = action_accuracy(model, trainer_dm.splits["test"].texts, trainer_dm.splits["test"].labels)
        return test, action_accuracy(model, corrections.texts, corrections.labels)

    before = accuracies(agent.eval(), original)
    with atomic_directory(output, overwrite=overwrite, argument="output") as staging:
        folder = staging / "data"
        folder.mkdir()
        _write_csv(folder / "train.csv", train)
        _write_csv(folder / "val.csv", splits["val"])
        files = {"train_file": str(folder / "train.csv"), "val_file": str(folder / "val.csv")}
        if "test" in splits:
            _write_csv(folder / "test.csv", splits["test"])
            files["test_file"] = str(folder / "test.csv")
        served = RequestStore(store).unlabelled_texts()  # answered, never commented on: text to distil on
        _write_csv(folder / "unlabeled.csv", LabelledTexts(served, [""] * len(served), "served requests"))
        dm = TextClassificationDataModule(**files, **fixed, batch_size=batch_size)
        if list(dm.label_names) != list(agent.labels):
            raise ValueError(
                f"The original data's labels ({len(dm.label_names)}) differ from the agent's ({len(agent.labels)}): "
                "pass the data section the agent was trained with."
            )
        if learning_rate is not None:
            agent.hparams.learning_rate = learning_rate
        seed_everything(seed)
        trainer = Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        agent.train()
        trainer.fit(agent, datamodule=dm)
        trainer.save_checkpoint(staging / "learned.ckpt")
        after = accuracies(agent.eval(), dm)
        final = Path(output) / "learned.ckpt"
        summary = LearnSummary(
            checkpoint=str(final),
            examples=len(train.texts),
            original_rows=len(splits["train"].texts),
            feedback_rows=len(corrections.texts),
            test_acc_before=before[0],
            test_acc_after=after[0],
            feedback_acc_before=before[1],
            feedback_acc_after=after[1],
        )
        (staging / "summary.md").write_text(summary.markdown() + "\n", encoding="utf-8")
        (staging / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary
