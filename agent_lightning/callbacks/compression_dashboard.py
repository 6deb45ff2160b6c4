"""TensorBoard views of a compression run: the "Compression" custom-scalars dashboard, HParams, weight histograms."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from agent_lightning.quantization.convert import dequantized_weight
from agent_lightning.targets import check_patterns, select_modules, short_name
from agent_lightning.tensorboard import (
    COMPRESSION_LAYOUT,
    plain_settings,
    tensorboard_logger,
    write_custom_scalars,
    write_run_hparams,
)

__all__ = ["CompressionDashboard"]


class CompressionDashboard(Callback):
    """Write the run's TensorBoard dashboard: a "Compression" layout, the HParams session and weight histograms.

    At fit start (rank zero, TensorBoard loggers only; other loggers are left alone):

    - the **Custom Scalars** tab gets a "Compression" category: loss train vs val, accuracy (validation, teacher,
      agreement, final model), sparsity actual vs target, the distillation terms, QAT fake-quant vs converted
      accuracy, model size and CPU latency before and after (from :class:`CompressionReport`);
    - the **HParams** tab gets one session with the module's ``hparams`` and the settings of every agent_lightning
      callback attached, with the final metrics (``val/acc``, ``pruning/sparsity``, ``model/size_mb``,
      ``model/latency_ratio_b1``, ...) read from the scalars of the same tags;

    and every ``histogram_every_n_steps`` optimizer steps, the **Histograms** tab gets ``model/weights/<layer>`` for
    the targeted layers (the float weights training uses; pruned zeros show as a spike at 0).

    Args:
        histogram_every_n_steps: steps between weight histograms; ``0`` turns them off. The default (every 200
            steps, 36 layers of MiniLM) costs a few milliseconds per step on average.
        include: glob patterns over module names whose weights get histograms; default: the transformer blocks'
            linear layers (the layers the compression callbacks target by default), or every ``nn.Linear`` of a
            module that has no transformer blocks.
        exclude: glob patterns removed from those.

    Raises:
        ValueError: a negative interval (at construction); patterns that match no layer (at ``setup``).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from agent_lightning.callbacks import Pruning
        >>> callbacks = [Pruning(0.5), CompressionDashboard(histogram_every_n_steps=100)]
        >>> trainer = Trainer(callbacks=callbacks, enable_progress_bar=False, default_root_dir=getfixture("tmp_path"))
    """

    def __init__(
        self,
        histogram_every_n_steps: int = 200,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> None:
        self.settings = plain_settings(locals())
        every = histogram_every_n_steps
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(
                f"CompressionDashboard(histogram_every_n_steps={every!r}) must be an integer >= 0 (0 turns weight "
                "histograms off), e.g. histogram_every_n_steps=200."
            )
        check_patterns("include", include)
        check_patterns("exclude", exclude)
        self.histogram_every_n_steps = every
        self.include, self.exclude = include, exclude
        self._layers: list[str] = []
        self._last_histogram_step = -1

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self.histogram_every_n_steps:
            return
        argument = "CompressionDashboard(include=...)"
        try:
            self._layers = list(select_modules(pl_module, self.include, self.exclude, argument=argument))
        except ValueError:
            if self.include is not None:
                raise
            # a module without transformer blocks (e.g. a small CNN or MLP): every linear layer instead
            self._layers = [name for name, m in pl_module.named_modules() if isinstance(m, nn.Linear)]

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 0:
            write_custom_scalars(tensorboard_logger(trainer), COMPRESSION_LAYOUT)
            write_run_hparams(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._histograms(trainer, pl_module)  # the starting weights, for before/after

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch, batch_idx) -> None:
        if self.histogram_every_n_steps and trainer.global_step % self.histogram_every_n_steps == 0:
            self._histograms(trainer, pl_module)

    def _histograms(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        step = trainer.global_step
        if logger is None or trainer.global_rank != 0 or step == self._last_histogram_step:
            return  # also once per optimizer step under gradient accumulation
        self._last_histogram_step = step
        for name in self._layers:
            weight = dequantized_weight(pl_module.get_submodule(name)).float().cpu()
            logger.experiment.add_histogram(f"model/weights/{short_name(name)}", weight, trainer.global_step)
