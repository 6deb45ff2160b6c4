"""The plumbing every compression callback needs, written once: checkpoint state restored when fitting starts,
layers set aside while ``test``/``validate``/``predict`` load a float checkpoint, log throttling, and the spawn
launcher case."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from torch import nn
from typing_extensions import override

__all__ = ["CompressionCallback"]


class CompressionCallback(Callback):
    """Base of the compression callbacks (not used on its own).

    - **Resume**: Lightning calls :meth:`load_state_dict` before the model is set up, so the state is held and
      :meth:`restore_pending` hands it to :meth:`restore` at ``on_fit_start`` (each subclass calls it where its own
      order needs it).
    - **Loading a float checkpoint into a compressed model**: ``Trainer.test/validate/predict(ckpt_path=...)`` loads
      the checkpoint after ``setup``, and checkpoints hold float layers. A subclass calls :meth:`set_aside` in
      ``setup`` with the compressed modules it replaced by float ones; at stage start they go back unchanged when
      nothing was loaded, else :meth:`reapply` rebuilds them from the loaded checkpoint's state of this callback.
    - :meth:`logging_step`: Lightning writes step metrics every ``log_every_n_steps``; measuring in between is waste.
    - :meth:`spawned`: a spawn launcher (``ddp_spawn``) hands the model back to the main process as a float
      ``state_dict``, so a model changed at fit end must stay loadable there.
    """

    def __init__(self) -> None:
        self._pending_state: dict[str, Any] | None = None
        self._set_aside: dict[str, nn.Module] = {}

    # -- resume ------------------------------------------------------------------------------------------------------
    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict

    def restore_pending(self, pl_module: LightningModule) -> None:
        """Apply the state :meth:`load_state_dict` received, once."""
        state, self._pending_state = self._pending_state, None
        if state is not None:
            self.restore(state, pl_module)

    def restore(self, state: dict[str, Any], pl_module: LightningModule) -> None:
        """Apply a checkpoint's state of this callback (subclasses that keep state override this)."""

    # -- float checkpoints into compressed models --------------------------------------------------------------------
    def set_aside(self, modules: dict[str, nn.Module]) -> None:
        """Remember compressed ``modules`` (by name) that ``setup`` replaced with float ones for loading."""
        self._set_aside = dict(modules)

    def reapply(
        self, trainer: Trainer, pl_module: LightningModule, state: dict[str, Any] | None, aside: dict[str, nn.Module]
    ) -> None:
        """Re-compress ``pl_module`` after a checkpoint was loaded into it, from that checkpoint's ``state`` of this
        callback (``None`` when it has none); ``aside`` are the compressed modules :meth:`set_aside` kept."""

    def _after_loading(self, trainer: Trainer, pl_module: LightningModule) -> None:
        aside, self._set_aside = self._set_aside, {}
        if not aside:
            return
        if not trainer.ckpt_path:  # nothing was loaded: the compressed modules go back unchanged
            for name, module in aside.items():
                pl_module.set_submodule(name, module)
            return
        state = trainer.strategy.load_checkpoint(trainer.ckpt_path).get("callbacks", {}).get(self.state_key)
        self.reapply(trainer, pl_module, state, aside)

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._after_loading(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._after_loading(trainer, pl_module)  # a no-op inside fit: only non-fit setups set layers aside

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._after_loading(trainer, pl_module)

    # -- small shared checks -----------------------------------------------------------------------------------------
    @staticmethod
    def logging_step(trainer: Trainer) -> bool:
        """Whether Lightning writes step metrics after this optimizer step."""
        return bool(trainer.loggers) and trainer.global_step % trainer.log_every_n_steps == 0

    @staticmethod
    def spawned(trainer: Trainer) -> bool:
        """Whether the fit runs in processes spawned by a ``_MultiProcessingLauncher`` (``ddp_spawn``)."""
        return isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
