"""The plumbing the compression callbacks share (CompressionCallback), on a minimal subclass."""

from __future__ import annotations

import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from agent_lightning.callbacks.base import CompressionCallback
from tests.conftest import quiet_trainer


class Recording(CompressionCallback):
    """Restores at fit start, swaps its layer for a float one outside fit, and records what it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.restored: list[dict] = []
        self.reapplied: list[tuple] = []
        self.logged_steps: list[int] = []

    def state_dict(self):
        return {"steps": 3}

    def restore(self, state, pl_module):
        self.restored.append(state)

    def on_fit_start(self, trainer, pl_module):
        self.restore_pending(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.logging_step(trainer):
            self.logged_steps.append(trainer.global_step)

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            self.set_aside({"layer": pl_module.layer})
            pl_module.layer = nn.Linear(32, 2)

    def reapply(self, trainer, pl_module, state, aside):
        self.reapplied.append((state, list(aside)))


def test_pending_state_is_restored_once_at_fit_start(tmp_path):
    callback = Recording()
    callback.load_state_dict({"steps": 3})
    trainer = quiet_trainer(tmp_path, [callback], max_steps=4, log_every_n_steps=2, logger=True)
    trainer.fit(BoringModel())
    assert callback.restored == [{"steps": 3}]
    assert callback.logged_steps == [2, 4]
    trainer.fit(BoringModel())  # a second fit has nothing pending
    assert callback.restored == [{"steps": 3}]


def test_set_aside_layers_go_back_unless_a_checkpoint_was_loaded(tmp_path):
    model = BoringModel()
    compressed = model.layer
    callback = Recording()
    trainer = quiet_trainer(tmp_path, [callback], max_steps=1)
    trainer.validate(model, dataloaders=model.val_dataloader())
    assert model.layer is compressed and not callback.reapplied  # nothing loaded: the same module is back
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    trainer.validate(model, dataloaders=model.val_dataloader(), ckpt_path=tmp_path / "model.ckpt")
    assert callback.reapplied == [({"steps": 3}, ["layer"])]
    assert isinstance(model.layer, nn.Linear) and model.layer is not compressed
    assert torch.is_tensor(model.layer.weight)
