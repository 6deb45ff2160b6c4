"""CompressionDashboard and the tag scheme, read back with EventAccumulator and from a real TensorBoard server."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from agent_lightning.callbacks import (
    CompressionDashboard,
    CompressionReport,
    Distillation,
    Pruning,
    QuantizationAwareTraining,
)
from tests.conftest import quiet_trainer


class _ActualSparsity(Callback):
    """Records the pruning callback's measured sparsity of the model after every optimizer step."""

    def __init__(self, pruning: Pruning) -> None:
        self.pruning = pruning
        self.by_step: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.by_step[trainer.global_step] = self.pruning.sparsity_now(pl_module)[0]


def _fit_compression_run(tmp_path, agent, dm):
    """Distillation (from a copy of the starting agent) + pruning + QAT + dashboard + report, 10 steps."""
    pruning = Pruning(0.5, start=0, end=6, frequency=2)
    actual = _ActualSparsity(pruning)
    callbacks = [pruning, actual, QuantizationAwareTraining(start=7), CompressionDashboard(histogram_every_n_steps=4)]
    callbacks.insert(0, Distillation(teacher=copy.deepcopy(agent)))
    callbacks.append(CompressionReport(batch_sizes=[1, 4], latency_budget_s=2.0))
    logger = TensorBoardLogger(tmp_path, name="runs", default_hp_metric=False)
    trainer = quiet_trainer(
        tmp_path, callbacks, max_steps=10, logger=logger, log_every_n_steps=1, limit_val_batches=2, val_check_interval=5
    )
    trainer.fit(agent, datamodule=dm)
    return trainer, Path(logger.log_dir), actual


def test_dashboard_tags_layout_hparams_and_histograms(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    trainer, log_dir, actual = _fit_compression_run(tmp_path, agent, dm)
    assert [p for p in log_dir.iterdir() if p.is_dir()] == []  # one run folder: no stray sub-runs
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert not any(tag.endswith(("_step", "_epoch")) for tag in tags)
    # our prefixes, plus Lightning's own "epoch" counter
    assert {tag.split("/")[0] for tag in tags} <= {"train", "val", "pruning", "qat", "distill", "model", "epoch"}
    assert {"train/loss", "val/acc", "pruning/sparsity", "pruning/target", "qat/enabled", "qat/converted_acc"} <= tags
    assert {"distill/kd_loss", "distill/task_loss", "distill/agreement"} <= tags
    assert {"model/size_mb", "model/reference_size_mb", "model/latency_ratio_b1", "model/val_acc"} <= tags
    # the logged sparsity is the model's actual sparsity at that step
    logged = {e.step: e.value for e in events.Scalars("pruning/sparsity")}
    assert len(logged) == 10
    for step, value in logged.items():
        assert value == pytest.approx(actual.by_step[step + 1], abs=1e-9), step  # Lightning logs step - 1
    assert logged[9] == pytest.approx(0.5, abs=1e-3)

    # Custom Scalars: the "Compression" category with its charts
    layout = layout_pb2.Layout.FromString(
        events.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0]
    )
    (category,) = layout.category
    assert category.title == "Compression"
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts["sparsity: actual vs target"] == [r"^pruning/sparsity$", r"^pruning/target$"]
    assert "QAT: fake-quant vs converted accuracy" in charts and "model size (MB)" in charts

    # HParams: the agent's settings and each callback's, with the final metrics
    plugins = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(plugins["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["Pruning/sparsity"].number_value == 0.5
    assert start.hparams["QuantizationAwareTraining/kernel"].string_value == "auto"
    assert start.hparams["CompressionReport/batch_sizes"].string_value == "[1, 4]"
    assert start.hparams["Distillation/teacher"].string_value == "<Agent>"
    assert start.hparams["learning_rate"].number_value == pytest.approx(1e-3)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(plugins["_hparams_/experiment"]).experiment
    assert {"val/acc", "pruning/sparsity", "model/size_mb", "model/latency_ratio_b1"} <= {
        m.name.tag for m in experiment.metric_infos
    }

    # weight histograms of the 12 targeted layers at steps 0, 4 and 8; pruned zeros visible
    histograms = events.Tags()["histograms"]
    assert len(histograms) == 12 and all(tag.startswith("model/weights/layer.") for tag in histograms)
    query = events.Histograms("model/weights/layer.0.attention.self.query")
    assert [h.step for h in query] == [0, 4, 8]
    assert query[0].histogram_value.num == 32 * 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


@pytest.mark.slow
def test_a_real_tensorboard_server_shows_the_run(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    _, log_dir, _ = _fit_compression_run(tmp_path, agent, dm)
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir.parent), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--load_fast", "false", "--reload_interval", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/data"
    try:
        scalars, deadline = {}, time.monotonic() + 90
        while time.monotonic() < deadline:  # the server loads the event files in the background
            try:
                scalars = _get(f"{base}/plugin/scalars/tags")
            except OSError:
                scalars = {}
            if scalars.get(log_dir.name, {}).get("model/size_mb"):
                break
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        run = log_dir.name
        assert {"pruning/sparsity", "qat/converted_acc", "distill/kd_loss", "model/size_mb"} <= set(scalars[run])
        values = _get(f"{base}/plugin/scalars/scalars?" + urllib.parse.urlencode({"run": run, "tag": "pruning/target"}))
        assert values[-1][2] == pytest.approx(0.5)  # [wall_time, step, value]
        layout = _get(f"{base}/plugin/custom_scalars/layout")
        assert [c["title"] for c in layout["category"]] == ["Compression"]
        experiment = _get(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"Pruning/sparsity", "QuantizationAwareTraining/start", "learning_rate"} <= names
        assert "model/zipped_mb" in {m["name"]["tag"] for m in experiment["metricInfos"]}
        (tag,) = _get(f"{base}/plugin/text/tags")[run]  # add_text("model/report") is stored under a suffixed tag
        assert tag.startswith("model/report")
        text = _get(f"{base}/plugin/text/text?" + urllib.parse.urlencode({"run": run, "tag": tag}))
        assert "final" in text[-1]["text"] and "reference" in text[-1]["text"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"histogram_every_n_steps": -1}, r"histogram_every_n_steps=-1\) must be an integer >= 0 \(0 turns"),
        ({"histogram_every_n_steps": 2.5}, r"histogram_every_n_steps=2.5\) must be an integer"),
        ({"include": "*.query"}, "must be a list of glob patterns"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CompressionDashboard(**kwargs)


def test_patterns_that_match_nothing_fail_at_setup(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    with pytest.raises(ValueError, match="matches no"):
        quiet_trainer(tmp_path, [CompressionDashboard(include=["*.nothing"])], max_steps=1).fit(agent, datamodule=dm)


def test_a_module_without_transformer_blocks_gets_histograms_of_its_linears(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    logger = TensorBoardLogger(tmp_path, name="boring", default_hp_metric=False)
    dashboard = CompressionDashboard(histogram_every_n_steps=2)
    quiet_trainer(tmp_path, [dashboard], max_steps=4, logger=logger, limit_val_batches=1).fit(BoringModel())
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert events.Tags()["histograms"] == ["model/weights/layer"]
    assert [h.step for h in events.Histograms("model/weights/layer")] == [0, 2, 4]
