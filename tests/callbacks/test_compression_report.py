"""CompressionReport: final vs reference measured after every other callback, numbers equal to the model's."""

from __future__ import annotations

import json
import time

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from agent_lightning.callbacks import CompressionReport, Distillation, Pruning, QuantizationAwareTraining
from agent_lightning.deployment.measure import parameter_counts
from agent_lightning.deployment.peers import ONNX_ROWS
from agent_lightning.evaluation import count_correct
from tests.conftest import quiet_trainer

QUERY = "model.bert.encoder.layer.0.attention.self.query"


def test_report_after_pruning_and_qat_matches_the_model(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    reference_params = sum(p.numel() for p in agent.parameters())
    report = CompressionReport(batch_sizes=[1, 4], output_dir=str(tmp_path / "report"))
    callbacks = [report, Pruning(0.5, end=4, frequency=2), QuantizationAwareTraining(start=5)]  # report listed first
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer = quiet_trainer(tmp_path, callbacks, max_steps=8, logger=logger, limit_val_batches=3)
    trainer.fit(agent, datamodule=dm)

    # it saw the final model: QAT had converted, pruning was permanent
    assert isinstance(agent.get_submodule(QUERY), DynamicQuantizedLinear)
    final, reference, *onnx_rows = report.rows
    assert [row.name for row in report.rows] == ["final", "reference", *ONNX_ROWS]
    assert reference.params == reference_params == final.params  # int8 layers count like the float ones
    assert (final.params, final.nonzero_params) == parameter_counts(agent)
    assert final.nonzero_params < reference.nonzero_params - 0.4 * 12 * 32 * 32  # half of the targeted weights
    assert final.size_bytes < reference.size_bytes and final.zipped_bytes < final.size_bytes
    torch.save(agent.state_dict(), tmp_path / "archive.pt")  # torch names the zip root after the file stem
    assert final.size_bytes == (tmp_path / "archive.pt").stat().st_size
    correct, counted = count_correct(agent, list(dm.val_dataloader())[:3])
    assert final.val_acc == pytest.approx(correct / counted)
    assert set(final.latency_ms) == set(reference.latency_ms) == {1, 4}
    assert all(ms > 0 for ms in final.latency_ms.values())
    metrics = report.metrics
    assert metrics["model/size_ratio"] == pytest.approx(final.size_bytes / reference.size_bytes)
    assert metrics["model/latency_ratio_b4"] == pytest.approx(final.latency_ms[4] / reference.latency_ms[4])
    assert float(trainer.callback_metrics["model/nonzero_params"]) == final.nonzero_params

    # the same models under ONNX Runtime, timed in the same loop: the final model as exported, the reference as
    # users run it without training (fp32, quantize_dynamic int8); parameters of the model each was written from
    exported, ort_fp32, ort_int8 = onnx_rows
    assert (exported.params, exported.nonzero_params) == (final.params, final.nonzero_params)
    assert ort_fp32.params == ort_int8.params == reference.params
    assert ort_int8.size_bytes < 0.6 * ort_fp32.size_bytes and exported.size_bytes < ort_fp32.size_bytes
    assert ort_fp32.val_acc == reference.val_acc  # the same float model
    assert all(set(row.latency_ms) == {1, 4} for row in onnx_rows)
    assert metrics["model/onnx_vs_ort_int8_latency_ratio_b1"] == pytest.approx(
        exported.latency_ms[1] / ort_int8.latency_ms[1]
    )
    zipped_ratio = exported.zipped_bytes / ort_fp32.zipped_bytes
    assert metrics["model/onnx_vs_ort_fp32_zipped_ratio"] == pytest.approx(zipped_ratio)
    assert metrics["model/reference_ort_int8_size_mb"] == pytest.approx(ort_int8.size_bytes / 1e6)

    # files, TensorBoard scalars and text all say the same
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["models"][0]["nonzero_params"] == final.nonzero_params and saved["metrics"] == metrics
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.strip() == report.markdown() and "| final |" in markdown and "latency b4" in markdown
    assert "| reference, ORT int8 (quantize_dynamic) |" in markdown
    assert "final ONNX export / reference ORT int8: size_ratio" in markdown
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert events.Scalars("model/size_mb")[-1].value == pytest.approx(final.size_bytes / 1e6)
    assert events.Scalars("model/reference_params")[-1].value == reference.params
    assert events.Scalars("model/final_onnx_latency_b1_ms")[-1].value == pytest.approx(exported.latency_ms[1])
    text = events.Tensors("model/report/text_summary")[-1]
    assert "| final |" in text.tensor_proto.string_val[0].decode()


def test_a_final_model_onnx_cannot_run_keeps_the_peers(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    report = CompressionReport(batch_sizes=[2], latency_budget_s=1.0, output_dir=str(tmp_path))
    callbacks = [report, QuantizationAwareTraining(weights="int4", group_size=16, start=2)]
    with pytest.warns(UserWarning, match=r"the final model has no ONNX Runtime row: Layer '.*' is .*--format int8"):
        quiet_trainer(tmp_path, callbacks, max_steps=3, limit_val_batches=1).fit(agent, datamodule=dm)
    assert [row.name for row in report.rows] == ["final", "reference", "reference_ort_fp32", "reference_ort_int8"]
    assert not any(key.startswith("model/onnx_vs_") for key in report.metrics)

    off = CompressionReport(onnx_runtime=False, latency=False, output_dir=str(tmp_path / "off"))
    agent.train()
    quiet_trainer(tmp_path, [off], max_steps=1, limit_val_batches=1).fit(agent, datamodule=dm)
    assert [row.name for row in off.rows] == ["final", "reference"]


class _SlowModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        if not self.training:
            self.calls += 1
            time.sleep(0.05)
        return super().forward(x)


def test_timing_is_bounded_and_can_be_turned_off(tmp_path):
    model = _SlowModel()
    report = CompressionReport(batch_sizes=[1], latency_budget_s=0.2, evaluate=False, zipped_size=False)
    quiet_trainer(tmp_path, [report], max_steps=2, limit_val_batches=1, num_sanity_val_steps=0).fit(model)
    # 0.05 s per pass, 2 models, 0.2 s budget: stopped after a few rounds, far from the 2 + 20 passes per model
    assert model.calls <= 6
    final, reference = report.rows
    assert final.latency_ms and final.val_acc is None and final.zipped_bytes is None

    model = _SlowModel()
    off = CompressionReport(latency=False, reference="none", output_dir=str(tmp_path / "off"))
    quiet_trainer(tmp_path, [off], max_steps=2, limit_val_batches=1, num_sanity_val_steps=0).fit(model)
    assert model.calls == 0 and [row.name for row in off.rows] == ["final"]
    assert not any("latency" in key for key in off.metrics)
    assert (tmp_path / "off" / "report.json").exists()


def test_reference_is_the_teacher_when_distilling(tmp_path):
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    report = CompressionReport(reference="teacher", batch_sizes=[2], latency_budget_s=1.0)
    callbacks = [Distillation(teacher=teacher), report]
    quiet_trainer(tmp_path, callbacks, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0).fit(BoringModel())
    final, reference = report.rows
    assert reference.params == sum(p.numel() for p in teacher.parameters()) == 32 * 64 + 64 + 64 * 2 + 2
    assert final.params == 32 * 2 + 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"reference": "best"}, ValueError, r"reference='best'\) is not a choice; use 'auto', 'fit_start', 'teacher'"),
        ({"batch_sizes": [1, 0]}, ValueError, r"batch_sizes=\[1, 0\]\) must be a list of positive integers"),
        ({"batch_sizes": 32}, TypeError, r"batch_sizes=32\) must be a list"),
        ({"latency_budget_s": 0}, ValueError, r"latency_budget_s=0\) must be a number of seconds > 0; turn timing off"),
        ({"max_eval_batches": 0}, ValueError, r"max_eval_batches=0\) must be None or an int >= 1"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        CompressionReport(**kwargs)


def test_teacher_reference_needs_distillation(tmp_path):
    with pytest.raises(ValueError, match=r"reference='teacher'\) needs a Distillation callback.*'fit_start'"):
        quiet_trainer(tmp_path, [CompressionReport(reference="teacher")], max_steps=1).fit(BoringModel())
