"""TensorBoard-only views written through a Lightning logger (skipped quietly for other loggers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger

__all__ = ["write_hparams_session"]


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

    Returns:
        Whether anything was written.
    """
    if not isinstance(logger, TensorBoardLogger):
        return False
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(_flatten(params), {tag: 0.0 for tag in metric_tags})
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    return True
