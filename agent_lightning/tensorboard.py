"""TensorBoard-only views written through a Lightning logger (skipped quietly for other loggers).

Tag scheme of the project (one prefix per source, no ``_step``/``_epoch`` suffixes, one run folder per fit):

==============  ==========================================================================================
prefix          written by
==============  ==========================================================================================
``train/``      the Agent: ``train/loss``, ``train/lr`` per step
``val/``        the Agent: ``val/loss``, ``val/acc``, ``val/f1`` per validation epoch (``test/`` alike)
``pruning/``    :class:`~agent_lightning.callbacks.Pruning`: ``sparsity``, ``target``, ``nonzero_params``, ``layer/*``
``qat/``        :class:`~agent_lightning.callbacks.QuantizationAwareTraining`: ``enabled``, ``weight_error``,
                ``fake_quant_acc``, ``converted_acc``, ``acc_gap``, ``layer/*``
``distill/``    :class:`~agent_lightning.callbacks.Distillation`: ``kd_loss``, ``task_loss``, ``hidden_loss``,
                ``attention_loss``, ``temperature``, ``alpha``, ``agreement``, ``teacher_acc``
``embeddings/`` :class:`~agent_lightning.callbacks.EmbeddingCompression`: ``kept_tokens``, ``vocab_size``,
                ``size_mb``, ``size_ratio`` (at fit end)
``model/``      :class:`~agent_lightning.callbacks.CompressionReport` (sizes, accuracy, latency before/after, and
                under ONNX Runtime: the export and the reference's peers) and
                :class:`~agent_lightning.callbacks.CompressionDashboard` (``model/weights/*`` histograms)
``epoch``       Lightning's own epoch counter, beside every logged step
==============  ==========================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.tensorboard.summary import custom_scalars, hparams

__all__ = [
    "COMPRESSION_LAYOUT",
    "RUN_METRIC_TAGS",
    "log_after_fit",
    "markdown_table",
    "plain_settings",
    "run_hparams",
    "tensorboard_logger",
    "write_custom_scalars",
    "write_hparams_session",
    "write_run_hparams",
    "write_text",
]

#: Metrics shown in the HParams tab (each reads the latest value of the scalar with the same tag).
RUN_METRIC_TAGS = (
    "val/acc",
    "val/f1",
    "val/loss",
    "test/acc",
    "pruning/sparsity",
    "qat/converted_acc",
    "distill/agreement",
    "model/val_acc",
    "model/size_mb",
    "model/zipped_mb",
    "model/size_ratio",
    "model/latency_ratio_b1",
    "model/latency_ratio_b32",
    "model/onnx_vs_ort_int8_zipped_ratio",
    "model/onnx_vs_ort_int8_latency_ratio_b1",
    "model/onnx_vs_ort_int8_latency_ratio_b32",
)
#: The rows of a :class:`~agent_lightning.callbacks.CompressionReport` as tag prefixes after ``model/`` (the final
#: model has none).
_REPORT_ROWS = r"(reference_|final_onnx_|reference_ort_fp32_|reference_ort_int8_)?"

#: The "Compression" dashboard of TensorBoard's Custom Scalars tab: chart title -> tag regexes drawn together.
COMPRESSION_LAYOUT: dict[str, dict[str, list[str]]] = {
    "Compression": {
        "loss: train vs val": [r"^train/loss$", r"^val/loss$"],
        "accuracy": [r"^val/acc$", r"^distill/teacher_acc$", r"^distill/agreement$", rf"^model/{_REPORT_ROWS}val_acc$"],
        "sparsity: actual vs target": [r"^pruning/sparsity$", r"^pruning/target$"],
        "distillation terms": [r"^distill/(loss|kd_loss|task_loss|hidden_loss|attention_loss)$"],
        "QAT: fake-quant vs converted accuracy": [r"^qat/(fake_quant_acc|converted_acc)$", r"^qat/enabled$"],
        "model size (MB)": [rf"^model/{_REPORT_ROWS}(size_mb|zipped_mb)$"],
        "CPU latency (ms)": [rf"^model/{_REPORT_ROWS}latency_b\d+_ms$"],
    }
}


def tensorboard_logger(trainer: Trainer) -> TensorBoardLogger | None:
    """The trainer's first :class:`TensorBoardLogger`, if any."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def write_custom_scalars(logger: Logger | None, layout: Mapping[str, Mapping[str, Sequence[str]]]) -> bool:
    """Write a Custom Scalars layout (category -> chart title -> tag regexes, drawn as multiline charts) once.

    Returns:
        Whether it was written (``False`` for other loggers, or when this run already has a layout).
    """
    if not isinstance(logger, TensorBoardLogger) or getattr(logger.experiment, "_agent_lightning_layout", False):
        return False
    charts = {
        category: {title: ["Multiline", list(tags)] for title, tags in charts.items()}
        for category, charts in layout.items()
    }
    logger.experiment._get_file_writer().add_summary(custom_scalars(charts))
    logger.experiment._agent_lightning_layout = True
    return True


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = (
                str(value) if not isinstance(value, (list, tuple)) or len(value) <= 8 else f"[{len(value)} items]"
            )
    return flat


def write_hparams_session(logger: Logger | None, params: Mapping[str, Any], metric_tags: Sequence[str]) -> bool:
    """Record ``params`` in TensorBoard's HParams tab, with ``metric_tags`` as the run's metrics.

    Unlike ``SummaryWriter.add_hparams`` this writes into the run's own event file (no timestamped sub-run), and
    unlike ``TensorBoardLogger.log_hyperparams(params, metrics)`` it logs no placeholder metric value: the HParams
    tab reads each metric's latest value from the scalar of the same tag, so the final ``val/acc`` shows there.

    Args:
        logger: the trainer's logger; anything but a :class:`TensorBoardLogger` is ignored.
        params: hyperparameters; nested mappings are flattened with ``/``, long lists summarised.
        metric_tags: scalar tags to show as metrics, e.g. ``["val/acc", "val/loss"]``.

    A run gets one session: later calls for the same logger write nothing.

    Returns:
        Whether anything was written.
    """
    if not isinstance(logger, TensorBoardLogger) or getattr(logger.experiment, "_agent_lightning_hparams", False):
        return False
    experiment, start, end = hparams(_flatten(params), {tag: 0.0 for tag in metric_tags})
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    logger.experiment._agent_lightning_hparams = True
    return True


def plain_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A constructor's arguments (``plain_settings(locals())`` as its first line) as plain values: ``self`` dropped,
    objects (e.g. a teacher module) replaced by ``"<TypeName>"``."""
    settings: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in ("self", "__class__"):
            continue
        plain = value is None or isinstance(value, (bool, int, float, str))
        if isinstance(value, (list, tuple)):
            plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
        settings[name] = value if plain else f"<{type(value).__name__}>"
    return settings


def run_hparams(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """What defines a run: the module's ``hparams`` (``labels`` summarised) and the settings of every
    agent_lightning callback attached to ``trainer``, under the callback's class name."""
    params = {k: v for k, v in dict(getattr(pl_module, "hparams", {})).items() if k != "labels"}
    labels = getattr(pl_module, "labels", None)
    if isinstance(labels, Sequence):
        params["num_labels"] = len(labels)
    for callback in trainer.callbacks:
        settings = getattr(callback, "settings", None)  # agent_lightning's callbacks keep their arguments there
        if type(callback).__module__.startswith("agent_lightning.") and isinstance(settings, Mapping):
            params[type(callback).__name__] = dict(settings)
    return params


def write_run_hparams(trainer: Trainer, pl_module: LightningModule) -> bool:
    """Write :func:`run_hparams` with :data:`RUN_METRIC_TAGS` as the run's HParams session (once per run)."""
    if trainer.global_rank != 0:
        return False
    return write_hparams_session(tensorboard_logger(trainer), run_hparams(trainer, pl_module), RUN_METRIC_TAGS)


def log_after_fit(trainer: Trainer, metrics: Mapping[str, float]) -> None:
    """Record fit-end metrics where ``pl_module.log`` cannot (``on_fit_end``, ``teardown``): in
    ``trainer.callback_metrics`` on every rank, and in every logger (rank zero) at the final step."""
    trainer.callback_metrics.update({key: torch.tensor(value) for key, value in metrics.items()})
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=trainer.global_step)
            logger.save()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (TensorBoard's Text tab renders it); ``|`` inside cells is escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_text(trainer: Trainer, tag: str, text: str) -> bool:
    """Write ``text`` (markdown) under ``tag`` in the Text tab at the current step (rank zero, TensorBoard only)."""
    logger = tensorboard_logger(trainer)
    if logger is None or trainer.global_rank != 0:
        return False
    logger.experiment.add_text(tag, text, global_step=trainer.global_step)
    return True
