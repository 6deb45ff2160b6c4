"""Exact resume of a run that distils, prunes, quantizes and compacts embeddings at once, killed mid-way; and a
crash while a checkpoint is written leaves the previous one usable."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import (
    Distillation,
    EmbeddingCompression,
    Pruning,
    QuantizationAwareTraining,
    RandomState,
)
from agent_lightning.quantization import fake_quantized_modules, frozen_scales
from agent_lightning.quantization.embedding import CompactEmbedding
from tests.conftest import StopAt

# 36 training examples in batches of 4: 9 optimizer steps per epoch, 4 epochs.
STEPS = 36


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory, tiny_bert, shared_tiny_data_dir):
    folder = tmp_path_factory.mktemp("resume-teacher")
    seed_everything(1)
    dm = TextClassificationDataModule(dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    teacher = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    trainer = _trainer(folder, [], max_steps=10)
    trainer.fit(teacher, datamodule=dm)
    trainer.save_checkpoint(folder / "teacher.ckpt")
    return str(folder / "teacher.ckpt")


def _trainer(folder, callbacks, **kwargs) -> Trainer:
    defaults = dict(
        default_root_dir=folder,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    return Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def _run(folder, tiny_bert, data_dir, teacher, ckpt_path=None, stop_at=None, save_every_epoch=False):
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    callbacks = [
        Distillation(teacher, temperature=2.0, alpha=0.5),
        Pruning(sparsity=0.5, start=2, end=14, frequency=2),
        QuantizationAwareTraining(start=20, freeze=30, convert_on_fit_end=False, evaluate=False),
        EmbeddingCompression(),
        RandomState(),
    ]
    if stop_at:
        callbacks.append(StopAt(stop_at))
    if save_every_epoch:
        callbacks.append(ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, save_top_k=-1, monitor=None))
    # with a validation pass, the epoch-end checkpoint is written after the epoch is complete (see the README)
    trainer = _trainer(folder, callbacks, max_steps=STEPS, enable_checkpointing=save_every_epoch, limit_val_batches=1)
    trainer.fit(agent, datamodule=dm, ckpt_path=ckpt_path)
    return agent, callbacks


def _final_state(agent, callbacks) -> dict[str, torch.Tensor]:
    """Everything that must match: weights (fake-quantized layers' float weights), masks, frozen QAT scales and the
    compacted embedding's rows and token table."""
    pruning = callbacks[1]
    state = {f"weight/{k}": v for k, v in agent.state_dict().items()}
    state.update({f"mask/{k}": v for k, v in pruning.pruner.masks.items()})
    for name, (scale, zero_point) in frozen_scales(agent).items():
        state[f"scale/{name}"], state[f"zero_point/{name}"] = scale, zero_point
    return state


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used to create the checkpoint")
def test_resumed_runs_end_exactly_like_the_uninterrupted_one(
    tmp_path, tiny_bert, shared_tiny_data_dir, teacher_checkpoint
):
    full_agent, full_callbacks = _run(tmp_path / "full", tiny_bert, shared_tiny_data_dir, teacher_checkpoint)
    assert float(full_callbacks[1].sparsity_now(full_agent)[0]) == pytest.approx(0.5, abs=1e-6)
    assert len(fake_quantized_modules(full_agent)) == 12 and len(frozen_scales(full_agent)) == 12
    assert isinstance(full_agent.model.get_input_embeddings(), CompactEmbedding)
    expected = _final_state(full_agent, full_callbacks)

    # the run dies after step 30; its epoch-end checkpoints are at steps 9, 18 and 27
    killed = tmp_path / "killed"
    _run(killed, tiny_bert, shared_tiny_data_dir, teacher_checkpoint, stop_at=30, save_every_epoch=True)
    cases = {
        "pruning ramping, QAT not started": killed / "ckpt" / "epoch=0-step=9.ckpt",
        "pruning done, QAT started, ranges not frozen": killed / "ckpt" / "epoch=2-step=27.ckpt",
    }
    for case, checkpoint in cases.items():
        saved = torch.load(checkpoint, weights_only=False)["callbacks"]
        qat = next(v for k, v in saved.items() if k.startswith("QuantizationAwareTraining"))
        assert qat["prepared"] == ("QAT started" in case), case
        resumed_agent, resumed_callbacks = _run(
            tmp_path / case.replace(" ", "-"), tiny_bert, shared_tiny_data_dir, teacher_checkpoint, ckpt_path=checkpoint
        )
        actual = _final_state(resumed_agent, resumed_callbacks)
        assert actual.keys() == expected.keys(), case
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6, msg=f"{case}: {key}")


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used to create the checkpoint")
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_a_crash_while_saving_leaves_the_previous_checkpoint_usable(
    tmp_path, tiny_bert, shared_tiny_data_dir, monkeypatch
):
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    last = ModelCheckpoint(
        dirpath=tmp_path,
        filename="last",
        every_n_train_steps=3,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    real_save, saves = torch.save, []

    def save_then_crash(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "state_dict" in obj:
            saves.append(obj["global_step"])
            if len(saves) == 2:
                raise OSError("No space left on device (simulated, while writing the step-6 checkpoint)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_crash)
    trainer = _trainer(
        tmp_path, [Pruning(sparsity=0.5, start=0, end=6, frequency=1), last], max_steps=9, enable_checkpointing=True
    )
    with pytest.raises(OSError, match="simulated"):
        trainer.fit(agent, datamodule=dm)
    monkeypatch.setattr(torch, "save", real_save)
    assert saves == [3, 6] and [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]
    reloaded = torch.load(tmp_path / "last.ckpt", weights_only=False)  # the step-3 checkpoint, whole
    assert reloaded["global_step"] == 3
    Agent.load_from_checkpoint(tmp_path / "last.ckpt")
    resumed = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    _trainer(tmp_path / "resumed", [Pruning(sparsity=0.5, start=0, end=6, frequency=1)], max_steps=9).fit(
        resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt"
    )
