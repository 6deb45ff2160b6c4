"""``agent-lightning learn --feedback DB --ckpt CKPT --output DIR [-c CONFIG] [--epochs N] ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from agent_lightning.cli.recipes import run_recipe
from agent_lightning.serving.learn import LearnSummary, learn_from_feedback
from agent_lightning.validation import check_count, check_number

__all__ = ["learn_command", "learn_parser", "read_data_section"]


def read_data_section(config: str | None, argument: str) -> dict[str, Any]:
    """The ``data:`` section of a training config (``TextClassificationDataModule`` arguments); ``{}`` (the
    built-in data) without a config.

    Raises:
        ValueError: the file does not exist.
    """
    if config is None:
        return {}
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"{argument}={config!r} does not exist; pass the training config (e.g. configs/default.yaml).")
    return dict((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {})


def learn_parser() -> argparse.ArgumentParser:
    """The options of ``agent-lightning learn``."""
    parser = argparse.ArgumentParser(
        prog="agent-lightning learn",
        description="Fine-tune a served agent on its original training data plus the feedback its server stored "
        "(corrections, thumbs up; replayed so nothing learned is forgotten), and write the new checkpoint with a "
        "before/after summary. Serve the new checkpoint, or compress and export it.",
    )
    parser.add_argument("--feedback", required=True, help="the SQLite store of agent-lightning serve (--store)")
    parser.add_argument("--ckpt", required=True, help="the checkpoint the server answered with")
    parser.add_argument("--output", required=True, help="folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("-c", "--config", help="the training config whose data: section names the original data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--feedback-repeats", type=int, default=4, help="copies of each feedback example")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--compress",
        action="store_true",
        help="then run the compress recipe with the learned checkpoint as its teacher, on the training set learn "
        "wrote and the served requests without feedback as unlabelled text (logs under OUTPUT/compress); "
        "arguments learn does not know (--student-layers, --trainer.max_epochs, ...) go to it",
    )
    return parser


def learn_command(args: Sequence[str]) -> LearnSummary:
    """Parse ``args`` (without the command name), learn, print the summary, and with ``--compress`` run the
    compress recipe on the result."""
    parser = learn_parser()
    options, recipe_args = parser.parse_known_args(list(args))
    if recipe_args and not options.compress:
        parser.error(f"unrecognized arguments: {' '.join(recipe_args)} (arguments for the recipe need --compress)")
    check_count("--epochs", options.epochs)
    check_count("--feedback-repeats", options.feedback_repeats)
    check_count("--batch-size", options.batch_size)
    check_number("--learning-rate", options.learning_rate, minimum=0, strict_minimum=True, optional=True)
    if not Path(options.feedback).is_file():
        raise ValueError(
            f"--feedback={options.feedback!r} does not exist. Pass the --store file of agent-lightning serve."
        )
    data = read_data_section(options.config, "--config") if options.config else None
    summary = learn_from_feedback(
        options.ckpt,
        options.feedback,
        options.output,
        data=data,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        feedback_repeats=options.feedback_repeats,
        batch_size=options.batch_size,
        overwrite=options.overwrite,
    )
    Console(soft_wrap=True).print(summary.markdown())
    if options.compress:
        run_recipe(_recipe_arguments(options, recipe_args, summary))
    return summary


def _recipe_arguments(options: argparse.Namespace, extra: list[str], summary: LearnSummary) -> list[str]:
    """``compress`` on what learn wrote: its checkpoint as the teacher, its CSV files as the data, the served
    requests nobody commented on as unlabelled text."""
    data = Path(options.output) / "data"
    args = ["-c", options.config] if options.config else []
    args += ["--teacher", summary.checkpoint, "--data.dataset=null", "--data.text_column=text"]
    args += [
        "--data.label_column=label",
        f"--data.train_file={data / 'train.csv'}",
        f"--data.val_file={data / 'val.csv'}",
    ]
    if (data / "test.csv").is_file():
        args.append(f"--data.test_file={data / 'test.csv'}")
    unlabeled = data / "unlabeled.csv"
    if len(unlabeled.read_text(encoding="utf-8").splitlines()) > 1:  # a header and at least one text
        args += ["--unlabeled", str(unlabeled)]
    return [*args, f"--trainer.default_root_dir={Path(options.output) / 'compress'}", *extra]
