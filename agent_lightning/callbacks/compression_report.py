"""Measure the model before and after compression at the end of fitting, and report it everywhere users look."""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from rich.console import Console
from rich.table import Table
from torch import nn
from typing_extensions import override

from agent_lightning.callbacks.distillation import Distillation
from agent_lightning.deployment.measure import ModelInputs, compare_latency, file_bytes, parameter_counts, saved_bytes
from agent_lightning.deployment.peers import ONNX_ROWS, OnnxClassifier, onnx_runtime_rows, sequence_classifier
from agent_lightning.evaluation import accuracy, device_of
from agent_lightning.io import atomic_write_text
from agent_lightning.quantization.convert import unprepare
from agent_lightning.tensorboard import log_after_fit, plain_settings, tensorboard_logger
from agent_lightning.validation import check_bool, is_number

__all__ = ["CompressionReport", "ModelMeasurement"]

Reference = Literal["auto", "fit_start", "teacher", "none"]
#: The names of a pair's ratios after its prefix (see :func:`_ratios`).
_RATIO = re.compile(r"size_ratio|zipped_ratio|latency_ratio_b\d+|acc_delta")
#: The model each ONNX Runtime row was written from (its parameters are counted).
_SOURCES = {"final_onnx": "final", "reference_ort_fp32": "reference", "reference_ort_int8": "reference"}
#: The pairs of rows the report compares: ``(row, baseline, metric prefix, what the markdown calls the pair)``.
_PAIRS = (
    ("final", "reference", "model/", "final / reference"),
    ("final_onnx", "reference_ort_int8", "model/onnx_vs_ort_int8_", "final ONNX export / reference ORT int8"),
    ("final_onnx", "reference_ort_fp32", "model/onnx_vs_ort_fp32_", "final ONNX export / reference ORT fp32"),
)


@dataclass
class ModelMeasurement:
    """One model's row of the report.

    Attributes:
        name: ``"final"`` (the trained, compressed model), ``"reference"`` (what it is compared with), or an ONNX
            Runtime row: ``"final_onnx"`` (the final model as the ONNX export runs it), ``"reference_ort_fp32"`` and
            ``"reference_ort_int8"`` (the reference under ONNX Runtime, float and ``quantize_dynamic`` int8).
        params: parameters, converted int8 layers counted like the float layers they replaced (an ONNX Runtime row:
            those of the model it was written from).
        nonzero_params: parameters that are not zero (likewise).
        size_bytes: bytes of ``torch.save(state_dict)`` (an ONNX Runtime row: of its ``.onnx`` file).
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
    forward passes on a real validation batch, round-robin between the models, bounded by ``latency_budget_s``). The
    report runs in the callback's ``teardown``, after every other callback's ``on_fit_end``, so it sees the final
    model: pruning made permanent, structure removed, QAT converted to int8.

    With ``onnx_runtime`` and a Hugging Face sequence classifier (a classification
    :class:`~agent_lightning.Agent`), the same is measured under ONNX Runtime, where a user would run either model:
    the final model as ``agent-lightning export --format onnx`` writes it (``final_onnx``), and the reference as the
    baselines a user would pick without any training, exported to ONNX in float (``reference_ort_fp32``) and
    quantized by ONNX Runtime's ``quantize_dynamic`` (``reference_ort_int8``); bytes are those of the ``.onnx``
    files, and all models are timed in the same round-robin on the same inputs (ONNX Runtime with torch's thread
    count, thread spinning off). The files are written to a temporary folder (on every process, which each scores
    its share of the validation data) and removed after measuring.

    Where it goes (rank zero):

    - scalars ``model/<metric>``, ``model/reference_<metric>`` and ``model/<onnx row>_<metric>`` (``params``,
      ``nonzero_params``, ``size_mb``, ``zipped_mb``, ``val_acc``, ``latency_b<N>_ms``) and ratios
      ``model/size_ratio``, ``model/zipped_ratio``, ``model/latency_ratio_b<N>`` (final / reference),
      ``model/acc_delta``, and the same for the final ONNX export against each ONNX Runtime peer
      (``model/onnx_vs_ort_int8_latency_ratio_b<N>``, ``model/onnx_vs_ort_fp32_...``), to every logger and to
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
        onnx_runtime: also measure the final model's ONNX export and the reference's ONNX Runtime peers (fp32,
            ``quantize_dynamic`` int8); only for Hugging Face sequence classifiers, skipped for other models.

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
        onnx_runtime: bool = True,
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
        flags = {"evaluate": evaluate, "latency": latency, "zipped_size": zipped_size, "onnx_runtime": onnx_runtime}
        for name, flag in flags.items():
            check_bool(name, flag, "CompressionReport")
        self.zipped_size, self.onnx_runtime = zipped_size, onnx_runtime
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
        with tempfile.TemporaryDirectory(prefix="compression-report-") as folder:
            models.update(self._onnx_runtime_rows(pl_module, reference, loaders, Path(folder)))
            accuracies = {
                name: accuracy(trainer.strategy, model, loaders, self.max_eval_batches)
                if self.evaluate and loaders
                else None
                for name, model in models.items()
            }
            if trainer.global_rank != 0:
                return
            latency = self._latency(models, loaders)
            self.rows = [self._measure(name, models, accuracies[name], latency.get(name, {})) for name in models]
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

    def _onnx_runtime_rows(
        self, pl_module: LightningModule, reference: nn.Module | None, loaders: list, folder: Path
    ) -> dict[str, OnnxClassifier]:
        """The final model's ONNX export and the reference's ONNX Runtime peers, written to ``folder``; empty when
        turned off or not a sequence classifier."""
        final = sequence_classifier(pl_module) if self.onnx_runtime and loaders else None
        batch = next(iter(loaders[0]), None) if final is not None else None
        if final is None or not isinstance(batch, Mapping) or "input_ids" not in batch:
            return {}
        inputs = ModelInputs.from_batch(batch, 2).to("cpu").kwargs or {}
        example = (inputs["input_ids"], inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])))
        rows: dict[str, OnnxClassifier] = {}
        try:
            rows.update(onnx_runtime_rows(folder, example, final=final, max_length=pl_module.hparams.get("max_length")))
        except ValueError as error:  # a converted layer ONNX Runtime's kernels cannot run
            rank_zero_warn(f"CompressionReport: the final model has no ONNX Runtime row: {error}")
        peer = sequence_classifier(reference) if reference is not None else None
        if peer is not None:
            rows.update(onnx_runtime_rows(folder, example, reference=peer))
        return rows

    def _measure(
        self, name: str, models: dict[str, nn.Module], val_acc: float | None, latency_ms: dict[int, float]
    ) -> ModelMeasurement:
        model = models[name]
        source = models[_SOURCES.get(name, name)]  # an ONNX Runtime row counts the model it was written from
        total, nonzero = parameter_counts(source)
        if isinstance(model, OnnxClassifier):
            size, zipped = file_bytes(model.path, compressed=self.zipped_size)
        else:
            size, zipped = saved_bytes(model, compressed=self.zipped_size)
        return ModelMeasurement(name, total, nonzero, size, zipped, val_acc, latency_ms)

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
        ratios = []
        for _, _, prefix, title in _PAIRS:
            pair = [
                f"{key.removeprefix(prefix)} {value:.3f}"
                for key, value in self.metrics.items()
                if key.startswith(prefix) and _RATIO.fullmatch(key.removeprefix(prefix))
            ]
            ratios += [f"{title}: " + ", ".join(pair)] if pair else []
        return "\n".join(lines + ([""] + ratios if ratios else []))


def _table(rows: list[ModelMeasurement]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the report table."""
    sizes = sorted({size for row in rows for size in row.latency_ms})
    header = ["model", "parameters", "nonzero", "size", "zipped", "val acc"] + [f"latency b{s}" for s in sizes]
    cells = [
        [
            ONNX_ROWS.get(row.name, row.name),
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
        prefix = {"final": "model/", "reference": "model/reference_"}.get(row.name, f"model/{row.name}_")
        values = {
            "params": row.params,
            "nonzero_params": row.nonzero_params,
            "size_mb": row.size_bytes / 1e6,
            "zipped_mb": None if row.zipped_bytes is None else row.zipped_bytes / 1e6,
            "val_acc": row.val_acc,
            **{f"latency_b{size}_ms": ms for size, ms in row.latency_ms.items()},
        }
        metrics.update({prefix + key: float(value) for key, value in values.items() if value is not None})
    by_name = {row.name: row for row in rows}
    for name, baseline, prefix, _ in _PAIRS:
        if name in by_name and baseline in by_name:
            metrics.update(_ratios(by_name[name], by_name[baseline], prefix))
    return metrics


def _ratios(row: ModelMeasurement, baseline: ModelMeasurement, prefix: str) -> dict[str, float]:
    """``row`` over ``baseline``: size, zipped size and latency ratios, accuracy difference."""
    ratios = {f"{prefix}size_ratio": row.size_bytes / baseline.size_bytes}
    if row.zipped_bytes and baseline.zipped_bytes:
        ratios[f"{prefix}zipped_ratio"] = row.zipped_bytes / baseline.zipped_bytes
    for size in sorted(row.latency_ms.keys() & baseline.latency_ms.keys()):
        ratios[f"{prefix}latency_ratio_b{size}"] = row.latency_ms[size] / baseline.latency_ms[size]
    if row.val_acc is not None and baseline.val_acc is not None:
        ratios[f"{prefix}acc_delta"] = row.val_acc - baseline.val_acc
    return ratios


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
