"""The LightningCLI of ``train.py`` / ``agent-lightning``: ``fit``, ``validate``, ``test`` and ``predict``.

Built on :class:`lightning.pytorch.cli.LightningCLI`, so every argument of the Agent, the datamodule and the Trainer
is a typed flag (``--model.learning_rate``, ``--data.batch_size``, ``--trainer.max_epochs``), ``-c config.yaml``
reads a config, ``--print_config`` prints the full config of a run, and the config is saved beside its logs.
Compression callbacks attach with ``--trainer.callbacks+=CLASS`` (``--trainer.callbacks+=Pruning
--trainer.callbacks.sparsity=0.5``) or the short flags ``--prune 0.5``, ``--qat int8``, ``--distill TEACHER``,
``--student-layers 0,2,4`` (:mod:`agent_lightning.cli.short_flags`); they are written into the saved config, so the run
can be reproduced.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

# Lightning's own calls into jsonargparse raise deprecation warnings that users can do nothing about.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console

from agent_lightning.agent import Agent
from agent_lightning.callbacks import (
    COMPRESSION_CALLBACKS,
    REPORTED_CALLBACKS,
    CompressionDashboard,
    CompressionReport,
    RandomState,
)
from agent_lightning.cli.short_flags import expand_short_flags
from agent_lightning.datamodules import TextClassificationDataModule
from agent_lightning.io import atomic_write_text
from agent_lightning.pruning.depth import BlockChoice

__all__ = ["AgentLightningCLI"]

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
DEFAULT_SAVE_DIR = "runs"
TRAINER_DEFAULTS = {
    "max_epochs": 5,
    "log_every_n_steps": 10,
    "logger": {
        "class_path": TENSORBOARD,
        "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": "agent", "default_hp_metric": False},
    },
}
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    # "/" in a metric name would make sub-folders, hence the explicit names and auto_insert_metric_name=False.
    "checkpoint.filename": "epoch{epoch:02d}-step{step:05d}-val_acc{val/acc:.4f}",
    "checkpoint.auto_insert_metric_name": False,
    # Lightning >= 2.6 refreshes save_last's last.ckpt only when a new best is saved; _latest_checkpoint() keeps it
    # the latest state, every validation, which is what resuming and exporting need.
    "checkpoint.save_last": False,
}


#: the checkpoint monitor of the other tasks: a generative agent's generated actions (or its free answers' exact
#: matches), a language model's perplexity
TASK_CHECKPOINTS = {
    "generation": {
        "checkpoint.monitor": "val/action_acc",
        "checkpoint.filename": "epoch{epoch:02d}-step{step:05d}-val_action_acc{val/action_acc:.4f}",
    },
    "free answers": {
        "checkpoint.monitor": "val/response_acc",
        "checkpoint.filename": "epoch{epoch:02d}-step{step:05d}-val_response_acc{val/response_acc:.4f}",
    },
    "causal-lm": {
        "checkpoint.monitor": "val/perplexity",
        "checkpoint.mode": "min",
        "checkpoint.filename": "epoch{epoch:02d}-step{step:05d}-val_perplexity{val/perplexity:.3f}",
    },
}


def _latest_checkpoint() -> ModelCheckpoint:
    """``last.ckpt``: the run's latest state, rewritten at every validation (no monitor, one file kept)."""
    return ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)


def _label_names(datamodule: TextClassificationDataModule) -> list[str]:
    return datamodule.label_names


class AgentLightningCLI(LightningCLI):
    """LightningCLI for an :class:`Agent` and a :class:`TextClassificationDataModule`.

    Adds a ``checkpoint`` section (ModelCheckpoint on ``val/acc``, readable file names) plus ``last.ckpt``, the
    latest state rewritten at every validation (for resuming and exporting),
    TensorBoard logging under ``runs/``, a rich progress bar, and links: the agent's backbone and ``max_length``
    configure the datamodule's tokenizer; the datamodule's label vocabulary sizes the agent's head.
    """

    @classmethod
    def create(cls, args: Sequence[str] | None = None, run: bool = True) -> AgentLightningCLI:
        """Build the CLI with this project's defaults; ``args`` default to ``sys.argv[1:]``.

        The short compression flags of ``fit`` (``--prune``, ``--qat``, ``--distill``, ``--student-layers``) are
        rewritten into LightningCLI arguments first (:mod:`agent_lightning.cli.short_flags`).
        """
        args = expand_short_flags(sys.argv[1:] if args is None else args)
        return cls(
            Agent,
            TextClassificationDataModule,
            seed_everything_default=42,
            # RandomState is always on: it makes a resumed run repeat the uninterrupted one exactly.
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [RandomState()]},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_env": False},
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # The command table hands LightningCLI the command line it read itself (after the short flags are expanded),
        # so Lightning's advice against passing both ``args`` and a command line does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        # ``--trainer.default_root_dir DIR`` moves the run (logs, checkpoints, config) when the logger's save_dir is
        # still this CLI's default; an explicit ``--trainer.logger.init_args.save_dir`` wins, as in Lightning.
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.get("trainer.default_root_dir")
        key = "trainer.logger.init_args.save_dir"
        if root and config.get("trainer.logger.class_path") == TENSORBOARD and config.get(key) == DEFAULT_SAVE_DIR:
            config[key] = str(root)
        # --model.task generation / causal-lm: the checkpoint monitor follows, unless the user chose one
        task = config.get("model.task")
        if task == "generation" and config.get("data.response_column"):
            task = "free answers"
        if task in TASK_CHECKPOINTS and config.get("checkpoint.monitor") in ("val/acc", "val/action_acc"):
            for name, value in TASK_CHECKPOINTS[task].items():
                config[name] = value

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.max_length", "data.max_length")
        # a generative agent's batches are chat examples built with its prompt settings
        for name in ("task", "system_prompt", "list_actions"):
            parser.link_arguments(f"model.{name}", f"data.{name}")
        parser.link_arguments("data", "model.labels", compute_fn=_label_names, apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate on the test split (when the data has one): the best checkpoint, or the final "
            "model when a compression callback is attached.",
        )
        parser.add_argument(
            "--report",
            type=bool,
            default=True,
            help="When Pruning, QuantizationAwareTraining or Distillation is attached, also attach "
            "CompressionDashboard (TensorBoard layout, HParams, weight histograms) and CompressionReport (final vs "
            "reference: size, accuracy, CPU latency), unless they are attached explicitly.",
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # A rich progress bar unless the user turned bars off or chose another one.
        chosen = list(config.get("callbacks") or []) + callbacks
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in chosen):
            callbacks = [*callbacks, RichProgressBar(leave=True)]
        if config.get("enable_checkpointing") is not False:
            callbacks = [*callbacks, _latest_checkpoint()]
        wants_report = self.subcommand is None or self.config[self.subcommand].get("report", True)
        if wants_report and any(isinstance(c, REPORTED_CALLBACKS) for c in chosen):
            for kind in (CompressionDashboard, CompressionReport):
                if not any(isinstance(c, kind) for c in chosen):
                    callbacks = [*callbacks, kind()]
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        # --student-layers auto:N: pick the blocks now, so that the compression callbacks set up on the student
        if isinstance(self.model, Agent) and self.model.pending_student_layers is not None:
            self.model.select_student_layers(self.datamodule)
            _print_student_layers(self.model.block_choice)

    def after_fit(self) -> None:
        trainer = self.trainer
        wants_test = self.config[self.subcommand].get("test_after_fit", True) and not trainer.fast_dev_run
        if wants_test and "test" in getattr(self.datamodule, "splits", {}) and not trainer.interrupted:
            # The best checkpoint by val/acc of a compression run is often one from before the target was reached:
            # test the final (compressed) model then.
            compressing = any(isinstance(c, COMPRESSION_CALLBACKS) for c in trainer.callbacks)
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            ckpt_path = None if compressing else best or None
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=True)
        self._print_outputs()

    def after_predict(self) -> None:
        self._write_predictions()

    @rank_zero_only
    def _write_predictions(self) -> None:
        batches = self.trainer.predict_loop.predictions or []
        texts = self.datamodule.predict_texts
        rows = []
        for batch in batches:
            if "texts" in batch:  # a language model's continuations
                for written, probability in zip(batch["texts"], batch["probabilities"]):
                    rows.append({"text": texts[len(rows)], "continuation": written, "confidence": float(probability)})
                continue
            for label, probabilities in zip(batch["labels"], batch["probabilities"]):
                rows.append({"text": texts[len(rows)], "action": label, "confidence": float(probabilities.max())})
        log_dir = self.trainer.logger.log_dir if self.trainer.logger is not None else self.trainer.default_root_dir
        path = os.path.join(log_dir, "predictions.jsonl")
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        Console(soft_wrap=True).print(f"[bold]Predictions:[/bold] {os.path.relpath(path)} ({len(rows)} requests)")

    @rank_zero_only
    def _print_outputs(self) -> None:
        trainer = self.trainer
        console = Console(soft_wrap=True)
        if trainer.logger is not None and trainer.logger.log_dir:
            log_dir = os.path.relpath(trainer.logger.log_dir)
            console.print(
                f"[bold]TensorBoard logs:[/bold] {log_dir}   (view: tensorboard --logdir {os.path.dirname(log_dir)})"
            )
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            score = callback.best_model_score
            shown = "" if score is None else f"  ({callback.monitor} = {float(score):.4f})"
            console.print(f"[bold]Best checkpoint:[/bold] {os.path.relpath(callback.best_model_path)}{shown}")
        for key, title in (("test/acc", "Test accuracy"), ("test/action_acc", "Test action accuracy")):
            value = trainer.callback_metrics.get(key)
            if value is not None:
                console.print(f"[bold]{title}:[/bold] {float(value):.4f}")


@rank_zero_only
def _print_student_layers(choice: BlockChoice) -> None:
    rows = choice.rows()
    shown = ", ".join(f"{blocks}: {score}" for blocks, score, _ in rows)
    why = "highest block influence"
    if choice.criterion == "span":
        why = f"all but blocks {next(blocks for blocks, _, mark in rows if mark)}, the span of least angular distance"
    Console(soft_wrap=True).print(f"[bold]Student blocks[/bold] ({why}): {choice.kept}   ({shown})")
