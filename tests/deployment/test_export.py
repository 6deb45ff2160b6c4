"""Export: int8 TorchScript program and HF folder, each verified by reloading; refusals leave nothing behind (the ONNX
export: test_onnx_export.py)."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from transformers import AutoModelForSequenceClassification

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import QuantizationAwareTraining, prepare_from_checkpoint
from agent_lightning.cli import main
from agent_lightning.deployment.export import apply_recorded_masks, export_agent
from agent_lightning.deployment.runtime import ExportedAgent
from agent_lightning.quantization import convert, converted_modules
from tests.conftest import quiet_trainer


def _save(module, path):
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def agent_checkpoint(tmp_path, tiny_bert):
    labels = TextClassificationDataModule(tokenizer=tiny_bert).label_names
    torch.manual_seed(0)
    return _save(Agent(model=tiny_bert, labels=labels), tmp_path / "agent.ckpt")


def test_int8_export_reloads_acts_and_matches_the_converted_model(tmp_path, agent_checkpoint):
    result = export_agent(agent_checkpoint, tmp_path / "int8", "int8")
    assert result.format == "int8" and result.top1_agreement == 1.0 and result.max_abs_logit_diff < 1e-5
    assert result.quantized_layers == 12 and result.samples == 16
    exported = ExportedAgent(tmp_path / "int8")
    assert exported.manifest["quantization"].startswith("post-training")
    assert exported.manifest["parity"]["top1_agreement"] == 1.0
    # the same predictions as the agent converted in memory, on new texts of another length
    agent = convert(Agent.load_from_checkpoint(agent_checkpoint).eval())
    texts = ["set an alarm for seven", "what is the weather in Paris tomorrow morning please", "call mom"]
    encoded = exported.encode(texts)
    with torch.inference_mode():
        expected = agent(**encoded).logits
    torch.testing.assert_close(exported.logits(texts), expected, rtol=0, atol=1e-5)
    decisions = exported.act(texts)
    assert [label for label, _ in decisions] == [agent.labels[i] for i in expected.argmax(-1).tolist()]
    assert all(0 < confidence <= 1 for _, confidence in decisions)


def test_int8_export_of_a_qat_checkpoint_uses_its_trained_ranges(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    qat = QuantizationAwareTraining(start=2, freeze=4, convert_on_fit_end=False)
    trainer = quiet_trainer(tmp_path, [qat], max_steps=6, limit_val_batches=1)
    trainer.fit(agent, datamodule=dm)
    checkpoint = tmp_path / "qat.ckpt"
    trainer.save_checkpoint(checkpoint)  # with the callback's state: started, frozen ranges
    export_agent(checkpoint, tmp_path / "int8", "int8")
    exported = ExportedAgent(tmp_path / "int8")
    assert exported.manifest["quantization"] == "QAT ranges from the checkpoint"
    reference = Agent.load_from_checkpoint(checkpoint).eval()
    prepare_from_checkpoint(reference, checkpoint)
    convert(reference)
    texts = ["remind me to buy milk", "play some jazz"]
    with torch.inference_mode():
        expected = reference(**exported.encode(texts)).logits
    torch.testing.assert_close(exported.logits(texts), expected, rtol=0, atol=1e-5)


def test_hf_export_loads_with_plain_transformers(tmp_path, agent_checkpoint):
    result = export_agent(agent_checkpoint, tmp_path / "hf", format="hf")
    assert result.top1_agreement == 1.0 and result.max_abs_logit_diff < 1e-5 and result.quantized_layers == 0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    labels = json.loads((tmp_path / "hf" / "labels.json").read_text())
    assert labels == Agent.load_from_checkpoint(agent_checkpoint).labels
    assert model.config.num_labels == len(labels)


def test_refusals_leave_nothing_behind(tmp_path, agent_checkpoint, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"output='.*taken' exists and is not empty.*--overwrite"):
        export_agent(agent_checkpoint, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match=r"format='tflite' is not supported; use 'onnx' .*, 'int8' .* or 'hf'"):
        export_agent(agent_checkpoint, tmp_path / "x", format="tflite")
    boring = _save(BoringModel(), tmp_path / "boring.ckpt")
    with pytest.raises(ValueError, match=r"is not an agent_lightning Agent checkpoint"):
        export_agent(boring, tmp_path / "x")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(agent_checkpoint.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cannot be read as a PyTorch checkpoint.*truncated"):
        export_agent(truncated, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=r"checkpoint='.*missing.ckpt' does not exist"):
        export_agent(tmp_path / "missing.ckpt", tmp_path / "x")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_agent(agent_checkpoint, tmp_path / "half", "int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.ckpt", "boring.ckpt", "taken", "truncated.ckpt"]


def test_recorded_masks_zero_the_loaded_weights_and_refuse_another_model(agent_checkpoint):
    agent = Agent.load_from_checkpoint(agent_checkpoint)
    name = "model.bert.encoder.layer.0.attention.self.query.weight"
    weight = dict(agent.named_parameters())[name]
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    before = weight.detach().clone()
    assert apply_recorded_masks(agent, {"callbacks": {"Pruning{}": {"keep": {name: keep}}}}) == int((~keep).sum())
    assert weight[~keep].count_nonzero() == 0 and weight[keep].equal(before[keep])
    assert apply_recorded_masks(agent, {"callbacks": {}}) == 0  # a run without pruning: nothing to do
    for wrong in ({"model.missing.weight": keep}, {name: keep[:, :3]}):
        with pytest.raises(ValueError, match=r"Pruning masks do not fit its model.s parameters .*export the"):
            apply_recorded_masks(agent, {"callbacks": {"Pruning{}": {"keep": wrong}}})


def test_export_from_the_command_line(tmp_path, agent_checkpoint, capsys):
    main(["export", str(agent_checkpoint), "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "exported onnx" in printed and "top-1 agreement 1.000" in printed  # the default format
    assert ExportedAgent(tmp_path / "out").format == "onnx" and len(ExportedAgent(tmp_path / "out").act(["hi"])) == 1
    with pytest.raises(FileExistsError):
        main(["export", str(agent_checkpoint), "--output", str(tmp_path / "out")])
    main(["export", str(agent_checkpoint), "--output", str(tmp_path / "out"), "--overwrite", "--format", "hf"])
    assert (tmp_path / "out" / "config.json").exists() and not (tmp_path / "out" / "model.onnx").exists()
    assert not converted_modules(AutoModelForSequenceClassification.from_pretrained(tmp_path / "out"))
