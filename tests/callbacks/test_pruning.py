from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import Pruning, QuantizationAwareTraining, RandomState
from agent_lightning.pruning.removal import load_pretrained_pruned
from agent_lightning.quantization import converted_modules, fake_quantized_modules
from agent_lightning.targets import select_modules
from tests.conftest import StopAt, quiet_trainer


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, callbacks, **{"num_sanity_val_steps": 0, **kwargs})


class _CheckZerosEveryStep(Callback):
    """After every optimizer step, every masked weight must be exactly zero."""

    def __init__(self, pruning: Pruning) -> None:
        self.pruning = pruning
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        parameters = dict(pl_module.named_parameters())
        for name, keep in self.pruning.pruner.masks.items():
            assert torch.all(parameters[name][~keep] == 0), name
        self.checked += bool(self.pruning.pruner.masks)


def test_default_targets_are_the_block_linears(agent_and_data):
    agent, _ = agent_and_data
    names = list(select_modules(agent))
    assert len(names) == 2 * 6  # q, k, v, attention output, intermediate, output per block
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in names)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_reaches_the_exact_target_and_keeps_zeros(tmp_path, agent_and_data, scope):
    agent, dm = agent_and_data
    pruning = Pruning(sparsity=0.6, scope=scope, start=0.1, end=0.6, frequency=2)
    check = _CheckZerosEveryStep(pruning)
    _trainer(tmp_path, [pruning, check], max_epochs=3, limit_val_batches=0).fit(agent, datamodule=dm)
    assert check.checked > 5
    layers = pruning.pruner.targets
    if scope == "layer":
        for name, module in layers.items():
            zeros = int((module.weight == 0).sum())
            assert abs(zeros - 0.6 * module.weight.numel()) <= 1, name  # within one weight per layer
    total = sum(m.weight.numel() for m in layers.values())
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    assert abs(zeros / total - 0.6) <= 0.001
    assert all(int((p == 0).sum()) == 0 for n, p in agent.named_parameters() if n.endswith("bias"))
    assert int((agent.model.classifier.weight == 0).sum()) == 0  # the head is not a target


def test_schedule_is_cubic_by_optimizer_step(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    pruning = Pruning(sparsity=0.5, start=2, end=12, frequency=2)
    seen: dict[int, float] = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[trainer.global_step] = pruning.sparsity_now(pl_module)[0]

    _trainer(tmp_path, [pruning, Record()], max_steps=16, limit_val_batches=0).fit(agent, datamodule=dm)
    for step in (4, 8, 12):
        expected = 0.5 * (1 - (1 - (step - 2) / 10) ** 3)
        assert seen[step] == pytest.approx(expected, abs=2e-3), step
    assert seen[1] == 0.0 and seen[3] == seen[2]  # nothing before start; updates only every 2 steps
    assert seen[15] == pytest.approx(0.5, abs=1e-3)


def test_n_m_pattern_holds_in_every_group(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    pruning = Pruning(sparsity=0.5, method="n:m", pattern="2:4", start=0, end=6, frequency=3)
    _trainer(tmp_path, [pruning], max_steps=8, limit_val_batches=0).fit(agent, datamodule=dm)
    for name, module in pruning.pruner.targets.items():
        groups = (module.weight != 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
        assert torch.all(groups <= 2), name
        assert float((module.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)


def test_structured_masking_then_physical_removal_gives_equal_logits(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    pruning = Pruning(method="structured", sparsity=0.5, head_sparsity=0.5, start=0, end=4, frequency=2)
    pruning.physically_remove = False
    _trainer(tmp_path, [pruning], max_steps=6, limit_val_batches=0).fit(agent, datamodule=dm)
    agent.eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        masked = agent(**batch).logits
    before = sum(p.numel() for p in agent.parameters())
    from agent_lightning.pruning.removal import remove_structure

    record = remove_structure(agent, pruning.pruner.kept_neurons, pruning.pruner.kept_heads)
    after = sum(p.numel() for p in agent.parameters())
    with torch.no_grad():
        torch.testing.assert_close(agent(**batch).logits, masked, rtol=0, atol=1e-5)
    assert after < before
    layer = agent.model.bert.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    assert layer.attention.self.query.out_features == 16  # 2 of 4 heads of width 8
    assert record["0"] == {"intermediate_size": 32, "heads": 2, "kv_heads": 2}
    assert agent.model.config.intermediate_size == 32

    # the smaller model saves and loads (plain transformers for uniform FFNs; our loader when heads were removed)
    folder = agent.save_pretrained(tmp_path / "pruned")
    reloaded = load_pretrained_pruned(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, masked, rtol=0, atol=1e-5)
    again = Agent(model=str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, masked, rtol=0, atol=1e-5)


def test_structured_removal_at_fit_end(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    pruning = Pruning(method="structured", sparsity=0.25, start=0, end=2, frequency=1, criterion="first_order")
    before = sum(p.numel() for p in agent.parameters())
    _trainer(tmp_path, [pruning], max_steps=4, limit_val_batches=0).fit(agent, datamodule=dm)
    assert agent.model.bert.encoder.layer[1].intermediate.dense.out_features == 48
    assert sum(p.numel() for p in agent.parameters()) == before - 2 * 16 * (32 + 32 + 1)


def test_pruned_checkpoint_loads_into_a_plain_model(tmp_path, agent_and_data, tiny_bert):
    agent, dm = agent_and_data
    pruning = Pruning(sparsity=0.5, start=0, end=4, frequency=2)
    trainer = _trainer(tmp_path, [pruning], max_steps=6, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert not any(k.endswith(("_orig", "_mask")) for k in checkpoint["state_dict"])
    loaded = Agent.load_from_checkpoint(path)
    fresh = Agent(model=tiny_bert, labels=dm.label_names)
    fresh.load_state_dict(checkpoint["state_dict"])
    for module in (loaded, fresh):
        weight = module.model.bert.encoder.layer[0].intermediate.dense.weight
        assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    assert type(loaded.model.bert.encoder.layer[0].intermediate.dense) is nn.Linear


def test_rewind_returns_surviving_weights_to_their_fit_start_values(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    pruning = Pruning(sparsity=0.5, start=0, end=6, frequency=2, rewind=True)
    initial = {f"{n}.weight": m.weight.detach().clone() for n, m in select_modules(agent).items()}
    seen: dict[int, dict[str, torch.Tensor]] = {}

    class Record(Callback):  # runs after Pruning's hook of the same step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            parameters = dict(pl_module.named_parameters())
            seen[trainer.global_step] = {name: parameters[name].detach().clone() for name in initial}

    _trainer(tmp_path, [pruning, Record()], max_steps=10, limit_val_batches=0).fit(agent, datamodule=dm)
    assert pruning._rewound and not pruning._initial  # the copy is dropped once used
    for name, start in initial.items():
        keep = pruning.pruner.masks[name]
        assert float((~keep).float().mean()) == pytest.approx(0.5, abs=0.01)
        assert not torch.equal(seen[5][name][keep], start[keep]), name  # trained before the rewind
        torch.testing.assert_close(seen[6][name], start * keep, rtol=0, atol=0)  # rewound at end, under the mask
        assert not torch.equal(seen[9][name][keep], start[keep]), name  # and trained again afterwards
        assert torch.all(seen[9][name][~keep] == 0), name


def _run(tmp_path, tiny_bert, tiny_data_dir, max_steps, ckpt_path=None, save_every=False, stop_at=None, rewind=False):
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    pruning = Pruning(sparsity=0.5, start=2, end=20, frequency=3, rewind=rewind)
    callbacks = [pruning, RandomState()] + ([StopAt(stop_at)] if stop_at else [])
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1))
    trainer = _trainer(tmp_path, callbacks, max_steps=max_steps, limit_val_batches=1, enable_checkpointing=True)
    trainer.fit(agent, datamodule=dm, ckpt_path=ckpt_path)
    return agent, pruning


@pytest.mark.parametrize("rewind", [False, True])
def test_resume_mid_schedule_reproduces_the_masks(tmp_path, tiny_bert, tiny_data_dir, rewind):
    full_agent, full = _run(tmp_path / "a", tiny_bert, tiny_data_dir, max_steps=24, rewind=rewind)
    # 36 training examples in batches of 4: 9 steps per epoch; the run "dies" after step 12
    _run(tmp_path / "b", tiny_bert, tiny_data_dir, max_steps=24, save_every=True, stop_at=12, rewind=rewind)
    checkpoint = tmp_path / "b" / "ckpt" / "epoch=0-step=9.ckpt"  # mid-schedule: pruning runs from step 2 to 20
    state = torch.load(checkpoint, weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("Pruning"))
    assert 0 < saved["fraction_applied"] < 1 and saved["keep"]
    assert bool(saved["initial"]) is rewind and not saved["rewound"]  # the fit-start weights travel until the rewind
    if not rewind:
        with pytest.raises(ValueError, match=r"Pruning\(rewind=True\) resumes a checkpoint written without rewind"):
            _run(tmp_path / "d", tiny_bert, tiny_data_dir, max_steps=24, ckpt_path=checkpoint, rewind=True)
    resumed_agent, resumed = _run(
        tmp_path / "c", tiny_bert, tiny_data_dir, max_steps=24, ckpt_path=checkpoint, rewind=rewind
    )
    assert resumed._rewound is full._rewound is rewind
    assert resumed.pruner.masks.keys() == full.pruner.masks.keys()
    for name in full.pruner.masks:
        assert torch.equal(resumed.pruner.masks[name], full.pruner.masks[name]), name
    for (name, a), b in zip(full_agent.state_dict().items(), resumed_agent.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_boring_model_is_pruned_too(tmp_path):
    model = BoringModel()  # one Linear(32, 2): the fallback "all but the last linear" would leave nothing
    pruning = Pruning(sparsity=0.5, include=["layer"], start=0, end=4, frequency=1)
    _trainer(tmp_path, [pruning], max_steps=6, limit_val_batches=0).fit(model)
    assert float((model.layer.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match=r"matches no linear layer. The linear layers of this model are: \[layer\]"):
        _trainer(tmp_path, [Pruning(sparsity=0.5)], max_steps=1).fit(BoringModel())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, r"sparsity=1.0 is out of range: it must be in \(0, 1\)"),
        ({"sparsity": -0.1}, "sparsity=-0.1 is out of range"),
        ({"method": "n:m", "pattern": "4:4"}, r"pattern='4:4': N must be in \[1, M\)"),
        ({"method": "n:m", "pattern": "2:4", "sparsity": 0.6}, r"Use Pruning\(sparsity=0.5, method='n:m'"),
        ({"start": 0.8, "end": 0.5}, "start is after end"),
        ({"start": 2.5}, "a float is a fraction of training and must be <= 1.0"),
        ({"method": "lottery"}, "method='lottery' is not a choice"),
        ({"head_sparsity": 0.25}, "head_sparsity=0.25 applies to method='structured' only"),
        ({"frequency": 0}, "frequency=0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pruning(**kwargs)


def test_bad_arguments_at_setup(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    with pytest.raises(ValueError, match="is step 10000, but this run has only 4 optimizer steps"):
        _trainer(tmp_path, [Pruning(end=10000)], max_steps=4).fit(agent, datamodule=dm)
    before = agent.model.bert.encoder.layer[0].intermediate.dense.weight.clone()
    with pytest.raises(ValueError, match=r"matches no linear layer.*model.bert.encoder.layer.0.attention.self.query"):
        _trainer(tmp_path, [Pruning(include=["*.nothing"])], max_steps=4).fit(agent, datamodule=dm)
    with pytest.raises(ValueError, match="would remove all 4 heads"):
        _trainer(tmp_path, [Pruning(method="structured", head_sparsity=0.95)], max_steps=4).fit(agent, datamodule=dm)
    assert torch.equal(agent.model.bert.encoder.layer[0].intermediate.dense.weight, before)  # nothing changed


def test_patterns_must_be_lists_of_strings():
    with pytest.raises(TypeError, match=r"include='\*.dense' must be a list of glob patterns"):
        Pruning(include="*.dense")
    with pytest.raises(TypeError, match=r"exclude=\[3\] must be a list of glob patterns"):
        Pruning(exclude=[3])


class _FrozenScales(Callback):
    """The QAT weight scales of every fake-quantized layer, as training ends (before removal and conversion)."""

    def __init__(self) -> None:
        self.scales: dict[str, torch.Tensor] = {}

    def on_train_end(self, trainer, pl_module):
        for name, module in fake_quantized_modules(pl_module).items():
            self.scales[name] = module.weight_fake_quantizer.scale.detach().reshape(-1).clone()


def test_removing_heads_and_neurons_keeps_the_qat_ranges_for_conversion(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    frozen = _FrozenScales()  # runs first: Pruning's on_train_end removes the units, QAT converts at fit end
    pruning = Pruning(method="structured", sparsity=0.5, head_sparsity=0.5, start=0, end=4, frequency=2)
    qat = QuantizationAwareTraining(start=4, freeze=6)
    quiet_trainer(tmp_path, [frozen, pruning, qat], max_steps=8, limit_val_batches=1).fit(agent, datamodule=dm)
    converted = converted_modules(agent)
    assert len(converted) == 12 and agent.model.config.intermediate_size == 32
    for name, module in converted.items():
        kept = frozen.scales[name][frozen.scales[name] > 1e-30]  # the rows of removed units had all-zero weights
        torch.testing.assert_close(module.weight().q_per_channel_scales().float(), kept.float(), rtol=1e-6, atol=0)
