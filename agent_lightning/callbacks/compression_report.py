"""Measure the model before and after compression at the end of fitting, and report it everywhere users look."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from rich.console import Console
from rich.table import Table
from torch import nn
from typing_extensions import override

from agent_lightning.callbacks.distillation import Distillation
from agent_lightning.deployment.measure import ModelInputs, compare_latency, parameter_counts, saved_bytes
from agent_lightning.evaluation import accuracy, device_of
from agent_lightning.io import atomic_write_text
from agent_lightning.quantization.convert import unprepare
from agent_lightning.tensorboard import log_after_fit, plain_settings, tensorboard_logger
from agent_lightning.validation import check_bool, is_number

__all__ = ["CompressionReport", "ModelMeasurement"]

Reference = Literal["auto", "fit_start", "teacher", "none"]


@dataclass
class ModelMeasurement:
    """One model's row of the report.

    Attributes:
        name: ``"final"`` (the trained, compressed model) or ``"reference"`` (what it is compared with).
        params: parameters, converted int8 layers counted like the float layers they replaced.
        nonzero_params: parameters that are not zero.
        size_bytes: bytes of ``torch.save(state_dict)``.
        zipped_bytes: the same compressed with zlib (deflate, as a ``.zip``), or ``None`` when not measured.
        val_acc: top-1 accuracy on the validation data, or ``None`` without labelled validation data.
        latency_ms: CPU milliseconds per forward pass by batch size (median), empty when not measured.
    """

    name: str
    params: int
    nonzero_params: int
    size_bytes: int
    zipped_bytes: int | None
    val_acc: float | None
    latency_ms: dict[int, float]


class CompressionReport(Callback):
    """At the end of fitting, measure the final model against a reference and report both, side by side.

    Measured for each model: parameters, nonzero parameters, bytes of the saved ``state_dict`` (and zipped: sparse
    zeros compress), validation accuracy, and CPU inference latency at each batch size (median of repeated
    forward passes on a real validation batch, round-robin between the two models, bounded by
    ``latency_budget_s``). The report runs in the callback's ``teardown``, after every other callback's
    ``on_fit_end``, so it sees the final model: pruning made permanent, structure removed, QAT converted to int8.

    Where it goes (rank zero):

    - scalars ``model/<metric>`` and ``model/reference_<metric>`` (``params``, ``nonzero_params``, ``size_mb``,
      ``zipped_mb``, ``val_acc``, ``latency_b<N>_ms``) and ratios ``model/size_ratio``, ``model/zipped_ratio``,
      ``model/latency_ratio_b<N>`` (final / reference), ``model/acc_delta``, to every logger and to
      ``trainer.callback_metrics``;
    - a markdown table in TensorBoard's Text tab (``model/report``) and on the console (rich);
    - ``report.md`` and ``report.json``, written atomically beside the checkpoints (the checkpoint callback's
      folder, else the logger's folder, else ``output_dir``).

    The reference is the distillation teacher when a :class:`~agent_lightning.callbacks.Distillation` callback is
    attached (``"auto"``/``"teacher"``), otherwise a CPU copy of the model taken at ``setup``, before any
    compression callback changed it and before a resumed run restored its checkpoint (``"auto"``/``"fit_start"``);
    ``"none"`` measures the final model alone. The copy costs one model's memory.

    Args:
        reference: what to compare with (see above).
        evaluate: measure validation accuracy (needs labelled validation batches).
        max_eval_batches: at most this many validation batches per model; ``None``: all.
        latency: measure CPU latency; ``False`` turns all timing off.
        batch_sizes: batch sizes to time (rows of the first validation batch repeated or cut to size).
        latency_budget_s: seconds of timing per batch size, both models together; measuring stops at the first
            round past it, so a slow model cannot stall the run.
        zipped_size: also measure the zlib-compressed size.
        output_dir: folder for ``report.md``/``report.json`` (default: beside the checkpoints).

    Raises:
        ValueError: a bad argument (at construction); ``reference="teacher"`` without a Distillation callback (at
            ``setup``).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from agent_lightning.callbacks import Pruning, QuantizationAwareTraining
        >>> callbacks = [Pruning(0.5), QuantizationAwareTraining(start=0.7), CompressionReport()]
        >>> trainer = Trainer(callbacks=callbacks, enable_progress_bar=False, default_root_dir=getfixture("tmp_path"))
    """

    def __init__(
        self,
        reference: Reference = "auto",
        evaluate: bool = True,
        max_eval_batches: int | None = None,
        latency: bool = True,
        batch_sizes: list[int] | None = None,
        latency_budget_s: float = 20.0,
        zipped_size: bool = True,
        output_dir: str | None = None,
    ) -> None:
        self.settings = plain_settings(locals())
        if reference not in ("auto", "fit_start", "teacher", "none"):
            raise ValueError(
                f"CompressionReport(reference={reference!r}) is not a choice; use 'auto', 'fit_start', 'teacher' or "
                "'none', e.g. CompressionReport(reference='auto')."
            )
        if max_eval_batches is not None and not _positive_int(max_eval_batches):
            error = (
                ValueError
                if isinstance(max_eval_batches, int) and not isinstance(max_eval_batches, bool)
                else TypeError
            )
            raise error(f"CompressionReport(max_eval_batches={max_eval_batches!r}) must be None or an int >= 1.")
        sizes = [1, 32] if batch_sizes is None else batch_sizes
        if isinstance(sizes, (str, int)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in sizes):
            raise TypeError(
                f"CompressionReport(batch_sizes={batch_sizes!r}) must be a list of positive integers, e.g. [1, 32]."
            )
        if not all(_positive_int(b) for b in sizes):
            raise ValueError(
                f"CompressionReport(batch_sizes={batch_sizes!r}) must be a list of positive integers, e.g. [1, 32]."
            )
        if not _positive_number(latency_budget_s):
            raise (ValueError if is_number(latency_budget_s) else TypeError)(
                f"CompressionReport(latency_budget_s={latency_budget_s!r}) must be a number of seconds > 0; turn "
                "timing off with latency=False."
            )
        self.reference = reference
        self.evaluate, self.max_eval_batches = evaluate, max_eval_batches
        self.latency, self.batch_sizes, self.latency_budget_s = latency, list(sizes), float(latency_budget_s)
        for name, flag in (("evaluate", evaluate), ("latency", latency), ("zipped_size", zipped_size)):
            check_bool(name, flag, "CompressionReport")
        self.zipped_size = zipped_size
        self.output_dir = output_dir
        self.rows: list[ModelMeasurement] = []
        self.metrics: dict[str, float] = {}
        self._reference_model: nn.Module | None = None
        self._distillation: Callback | None = None

    # -- hooks -------------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._distillation = next((c for c in trainer.callbacks if isinstance(c, Distillation)), None)
        if self.reference == "teacher" and self._distillation is None:
            raise ValueError(
                "CompressionReport(reference='teacher') needs a Distillation callback on the trainer; use "
                "reference='fit_start' to compare with the model as it was before this fit."
            )
        wants_copy = self.reference == "fit_start" or (self.reference == "auto" and self._distillation is None)
        if wants_copy and self._reference_model is None:
            self._reference_model = _plain_copy(pl_module)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # ``teardown`` runs after every callback's ``on_fit_end``: QAT has converted, pruning is permanent.
        if stage != "fit" or trainer.interrupted or trainer.sanity_checking:
            return
        self._report(trainer, pl_module)
        self._reference_model = None

    # -- measuring ---------------------------------------------------------------------------------------------------
    def _report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        reference = self._reference_model
        if reference is None and self._distillation is not None and self.reference != "none":
            reference = self._distillation.teacher
        models = {"final": pl_module} if reference is None else {"final": pl_module, "reference": reference}
        loaders = _as_list(trainer.val_dataloaders)
        accuracies = {
            name: accuracy(trainer.strategy, model, loaders, self.max_eval_batches)
            if self.evaluate and loaders
            else None
            for name, model in models.items()
        }
        if trainer.global_rank != 0:
            return
        latency = self._latency(models, loaders)
        self.rows = []
        for name, model in models.items():
            total, nonzero = parameter_counts(model)
            size, zipped = saved_bytes(model, compressed=self.zipped_size)
            self.rows.append(
                ModelMeasurement(name, total, nonzero, size, zipped, accuracies[name], latency.get(name, {}))
            )
        self.metrics = _metrics(self.rows)
        log_after_fit(trainer, self.metrics)
        markdown = self.markdown()
        board = tensorboard_logger(trainer)
        if board is not None:
            board.experiment.add_text("model/report", markdown, trainer.global_step)
            board.experiment.flush()
        folder = self._folder(trainer)
        atomic_write_text(folder / "report.md", markdown + "\n")
        atomic_write_text(folder / "report.json", json.dumps(self.as_dict(), indent=2) + "\n")
        _print(self.rows, folder)

    def _latency(self, models: dict[str, nn.Module], loaders: list) -> dict[str, dict[int, float]]:
        if not self.latency or not loaders:
            return {}
        batch = next(iter(loaders[0]), None)
        if batch is None:
            return {}
        devices = {name: device_of(model) for name, model in models.items()}
        cpu = {name: model.cpu() for name, model in models.items()}
        result: dict[str, dict[int, float]] = {name: {} for name in models}
        try:
            for size in self.batch_sizes:
                seconds = compare_latency(cpu, ModelInputs.from_batch(batch, size), budget_s=self.latency_budget_s)
                for name, value in seconds.items():
                    result[name][size] = 1000 * value
        finally:
            for name, model in models.items():
                model.to(devices[name])
        return result

    def _folder(self, trainer: Trainer) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            return Path(checkpoint.dirpath)
        if trainer.logger is not None and trainer.logger.log_dir:
            return Path(trainer.logger.log_dir)
        return Path(trainer.default_root_dir)

    # -- output ------------------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The last report: ``{"models": [...], "metrics": {...}}`` (what ``report.json`` holds)."""
        return {"models": [asdict(row) for row in self.rows], "metrics": self.metrics}

    def markdown(self) -> str:
        """The last report as a markdown table (what ``report.md`` and the TensorBoard text hold)."""
        header, rows = _table(self.rows)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        ratios = [
            f"{k.removeprefix('model/')} {v:.3f}" for k, v in self.metrics.items() if "ratio" in k or "delta" in k
        ]
        if ratios:
            lines += ["", "final / reference: " + ", ".join(ratios)]
        return "\n".join(lines)


def _table(rows: list[ModelMeasurement]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the report table."""
    sizes = sorted({size for row in rows for size in row.latency_ms})
    header = ["model", "parameters", "nonzero", "size", "zipped", "val acc"] + [f"latency b{s}" for s in sizes]
    cells = [
        [
            row.name,
            f"{row.params / 1e6:.2f} M",
            f"{row.nonzero_params / 1e6:.2f} M",
            f"{row.size_bytes / 1e6:.1f} MB",
            "" if row.zipped_bytes is None else f"{row.zipped_bytes / 1e6:.1f} MB",
            "" if row.val_acc is None else f"{100 * row.val_acc:.2f} %",
        ]
        + [f"{row.latency_ms[s]:.1f} ms" if s in row.latency_ms else "" for s in sizes]
        for row in rows
    ]
    return header, cells


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _plain_copy(module: nn.Module) -> nn.Module:
    """A CPU copy of ``module`` without hooks, wrapped methods or fake quantization: the model as plain float."""
    duplicate = copy.deepcopy(module).cpu()
    for sub in duplicate.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs"):
            getattr(sub, hooks, {}).clear()
    duplicate.__dict__.pop("training_step", None)  # a callback's per-instance wrapper (Distillation)
    unprepare(duplicate)
    return duplicate.eval()


def _as_list(loaders: Any) -> list:
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def _metrics(rows: list[ModelMeasurement]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for row in rows:
        prefix = "model/" if row.name == "final" else "model/reference_"
        values = {
            "params": row.params,
            "nonzero_params": row.nonzero_params,
            "size_mb": row.size_bytes / 1e6,
            "zipped_mb": None if row.zipped_bytes is None else row.zipped_bytes / 1e6,
            "val_acc": row.val_acc,
            **{f"latency_b{size}_ms": ms for size, ms in row.latency_ms.items()},
        }
        metrics.update({prefix + key: float(value) for key, value in values.items() if value is not None})
    if len(rows) == 2:
        final, reference = rows
        metrics["model/size_ratio"] = final.size_bytes / reference.size_bytes
        if final.zipped_bytes and reference.zipped_bytes:
            metrics["model/zipped_ratio"] = final.zipped_bytes / reference.zipped_bytes
        for size in final.latency_ms.keys() & reference.latency_ms.keys():
            metrics[f"model/latency_ratio_b{size}"] = final.latency_ms[size] / reference.latency_ms[size]
        if final.val_acc is not None and reference.val_acc is not None:
            metrics["model/acc_delta"] = final.val_acc - reference.val_acc
    return metrics


def _print(rows: list[ModelMeasurement], folder: Path) -> None:
    header, cells = _table(rows)
    table = Table(title="Compression report (final vs reference)")
    for column in header:
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console = Console()
    console.width = max(console.width, 120)  # a log file's 80 columns would cut the numbers
    console.print(table)
    rank_zero_info(f"[CompressionReport] written to {os.path.relpath(folder)}/report.md and report.json")
