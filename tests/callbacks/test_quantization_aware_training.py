"""QuantizationAwareTraining on the Agent and on a LightningModule we did not write."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torchao.quantization.qat import FakeQuantizedLinear

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import Pruning, QuantizationAwareTraining, RandomState, prepare_from_checkpoint
from agent_lightning.quantization import convert, converted_modules, dequantized_weight, fake_quantized_modules
from tests.conftest import quiet_trainer

QUERY = "model.bert.encoder.layer.0.attention.self.query"


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, callbacks, **{"num_sanity_val_steps": 0, **kwargs})


class _Watch(Callback):
    """Records, after every step, whether fake-quantization is on and the weight scale of one layer."""

    def __init__(self) -> None:
        self.enabled: dict[int, bool] = {}
        self.scales: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        module = pl_module.get_submodule(QUERY)
        self.enabled[trainer.global_step] = isinstance(module, FakeQuantizedLinear)
        if isinstance(module, FakeQuantizedLinear):
            self.scales[trainer.global_step] = module.weight_fake_quantizer.scale.clone()


def test_starts_late_freezes_converts_and_logs_the_gap(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    qat = QuantizationAwareTraining(start=4, freeze=8)
    watch = _Watch()
    logger = CSVLogger(tmp_path, name="qat")
    trainer = _trainer(tmp_path, [qat, watch], max_steps=12, logger=logger, log_every_n_steps=1)
    trainer.fit(agent, datamodule=dm)
    assert [watch.enabled[s] for s in (4, 5, 12)] == [False, True, True]  # on from the forward after step 4
    assert not torch.equal(watch.scales[5], watch.scales[7])  # ranges follow the weights until the freeze
    assert torch.equal(watch.scales[8], watch.scales[12])  # then stay fixed
    # converted in place at fit end: fbgemm dynamic int8 linears, the head still float
    assert not fake_quantized_modules(agent)
    assert len(converted_modules(agent)) == 12
    assert isinstance(agent.get_submodule(QUERY), DynamicQuantizedLinear)
    assert type(agent.model.classifier.weight) is nn.Parameter
    metrics = trainer.callback_metrics
    gap = float(metrics["qat/fake_quant_acc"] - metrics["qat/converted_acc"])
    assert float(metrics["qat/acc_gap"]) == pytest.approx(gap) and abs(gap) <= 0.05
    logged = (tmp_path / "qat" / "version_0" / "metrics.csv").read_text()
    for tag in ("qat/enabled", "qat/frozen", "qat/weight_error", "qat/activation_scale", "qat/converted_acc"):
        assert tag in logged, tag
    assert "qat/layer/layer.0.attention.self.query/weight_error" in logged
    # keyword inputs still work on the converted agent, and predictions equal those of an eval pass
    batch = next(iter(dm.val_dataloader()))
    logits = agent(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (len(batch["labels"]), 4)


def test_logged_enabled_flag_follows_the_start(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    logger = CSVLogger(tmp_path, name="flag")
    qat = QuantizationAwareTraining(start=0.5, convert_on_fit_end=False)
    _trainer(tmp_path, [qat], max_steps=8, logger=logger, log_every_n_steps=1, limit_val_batches=0).fit(
        agent, datamodule=dm
    )
    import csv

    rows = list(csv.DictReader(open(tmp_path / "flag" / "version_0" / "metrics.csv")))
    enabled = {int(r["step"]): float(r["qat/enabled"]) for r in rows if r.get("qat/enabled")}
    assert [enabled[s] for s in sorted(enabled)] == [0.0] * 4 + [1.0] * 4  # step 4 of 8: the last 4 steps
    assert fake_quantized_modules(agent)  # not converted when asked not to


def test_pruning_and_qat_compose_and_sparsity_survives_convert(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    pruning = Pruning(sparsity=0.5, start=0, end=6, frequency=2)
    qat = QuantizationAwareTraining(start=3)
    zero_every_step = []

    class CheckZeros(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            parameters = dict(pl_module.named_parameters())
            zero_every_step.append(all(torch.all(parameters[n][~k] == 0) for n, k in pruning.pruner.masks.items()))

    # QAT listed first on purpose: pruning still finishes (on_train_end) before QAT converts (on_fit_end)
    _trainer(tmp_path, [qat, pruning, CheckZeros()], max_steps=10, limit_val_batches=2).fit(agent, datamodule=dm)
    assert all(zero_every_step) and len(zero_every_step) == 10
    for name, keep in pruning.pruner.masks.items():
        module = agent.get_submodule(name.removesuffix(".weight"))
        weight = dequantized_weight(module)
        assert torch.all(weight[~keep] == 0), name
        assert float((weight == 0).float().mean()) >= 0.5


def test_checkpoint_round_trip_and_test_with_ckpt_path(tmp_path, agent_and_data, tiny_bert):
    agent, dm = agent_and_data
    qat = QuantizationAwareTraining(start=2, freeze=5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, [qat, checkpoint], max_steps=9, enable_checkpointing=True, limit_val_batches=2)
    trainer.fit(agent, datamodule=dm)
    converted_acc = float(trainer.callback_metrics["qat/converted_acc"])
    path = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(path, weights_only=False)
    assert set(state["state_dict"]) == set(Agent(model=tiny_bert, labels=dm.label_names).state_dict())
    # a plain float model loads the QAT checkpoint; the callback state rebuilds the trained int8 model exactly
    loaded = Agent.load_from_checkpoint(path)
    assert not fake_quantized_modules(loaded)
    assert len(prepare_from_checkpoint(loaded, path)) == 12
    frozen = loaded.get_submodule(QUERY).weight_fake_quantizer
    assert not frozen.config.is_dynamic
    convert(loaded)
    for name, module in converted_modules(agent).items():
        assert torch.equal(dequantized_weight(module), dequantized_weight(loaded.get_submodule(name))), name
    # Trainer.test(ckpt_path=...) on the converted model: loads the float checkpoint, tests the int8 model again
    result = trainer.test(agent, datamodule=dm, ckpt_path=str(path), verbose=False)[0]
    assert isinstance(agent.get_submodule(QUERY), DynamicQuantizedLinear)
    assert 0 <= result["test/acc"] <= 1
    assert converted_acc >= 0


def _run(tmp_path, tiny_bert, tiny_data_dir, ckpt_path=None, stop_at=None, save_every=False):
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    qat = QuantizationAwareTraining(start=4, freeze=14, convert_on_fit_end=False)
    callbacks = [qat, RandomState()]
    if stop_at:

        class Stop(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                trainer.should_stop = trainer.global_step >= stop_at

        callbacks.append(Stop())
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1))
    trainer = _trainer(tmp_path, callbacks, max_steps=20, limit_val_batches=1, enable_checkpointing=True)
    trainer.fit(agent, datamodule=dm, ckpt_path=ckpt_path)
    return agent


def test_resume_mid_qat_continues_exactly(tmp_path, tiny_bert, tiny_data_dir):
    full = _run(tmp_path / "a", tiny_bert, tiny_data_dir)
    _run(tmp_path / "b", tiny_bert, tiny_data_dir, stop_at=12, save_every=True)
    checkpoint = tmp_path / "b" / "ckpt" / "epoch=0-step=9.ckpt"  # QAT on since step 4, not frozen yet (14)
    saved = next(v for k, v in torch.load(checkpoint, weights_only=False)["callbacks"].items() if k.startswith("Quant"))
    assert saved["prepared"] and not saved["frozen"]
    resumed = _run(tmp_path / "c", tiny_bert, tiny_data_dir, ckpt_path=checkpoint)
    assert fake_quantized_modules(resumed).keys() == fake_quantized_modules(full).keys()
    for name, module in fake_quantized_modules(full).items():
        other = fake_quantized_modules(resumed)[name].weight_fake_quantizer
        assert torch.equal(module.weight_fake_quantizer.scale, other.scale), name  # frozen at step 14 in both
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_boring_model(tmp_path):
    model = BoringModel()  # forward(x) on one Linear(32, 2); batches are plain tensors without labels
    qat = QuantizationAwareTraining(include=["layer"], start=2)
    _trainer(tmp_path, [qat], max_steps=6, limit_val_batches=2).fit(model)
    assert isinstance(model.layer, DynamicQuantizedLinear)
    assert model(torch.randn(3, 32)).shape == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": "int2"}, "weights='int2' is not supported"),
        ({"activations": "fp8"}, "activations='fp8' is not supported"),
        ({"group_size": 30, "weights": "int4"}, "group_size=30 must be a power of two"),
        ({"start": 0.9, "freeze": 0.5}, "start is after freeze"),
        ({"start": 3.0}, "a float is a fraction of training"),
        ({"include": "*.dense"}, "must be a list of glob patterns"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        QuantizationAwareTraining(**kwargs)


def test_bad_arguments_at_setup(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    before = agent.get_submodule(QUERY).weight.clone()
    cases = [
        (QuantizationAwareTraining(start=50), "is step 50, but this run has only 4 optimizer steps"),
        (QuantizationAwareTraining(freeze=50), "freeze=50\\) is step 50, but this run has only 4"),
        (QuantizationAwareTraining(include=["*.nothing"]), "matches no linear layer"),
        (QuantizationAwareTraining(weights="int4", group_size=64), "group_size=64 does not divide the 32 inputs"),
    ]
    for callback, message in cases:
        with pytest.raises(ValueError, match=message):
            _trainer(tmp_path, [callback], max_steps=4).fit(agent, datamodule=dm)
    assert not fake_quantized_modules(agent)
    assert torch.equal(agent.get_submodule(QUERY).weight, before)
