from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from agent_lightning import Agent
from agent_lightning.cli import AgentLightningCLI, main
from agent_lightning.evaluation import count_correct
from agent_lightning.quantization.embedding import CompactEmbedding
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _fit_args(tmp_path: Path, tiny_bert: str, *extra: str) -> list[str]:
    return [
        "fit",
        "-c",
        str(REPO / "configs" / "default.yaml"),
        f"--model.model={tiny_bert}",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        *extra,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses_and_round_trips(config, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        AgentLightningCLI.create(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    reproduced = tmp_path / "printed.yaml"
    reproduced.write_text(printed)
    shipped = yaml.safe_load(config.read_text())
    full = yaml.safe_load(printed)
    for section in ("model", "data"):
        for key, value in shipped.get(section, {}).items():
            assert full[section][key] == value, (section, key)
    generative = shipped.get("model", {}).get("task") == "generation"
    assert full["checkpoint"]["monitor"] == ("val/action_acc" if generative else "val/acc")
    with pytest.raises(SystemExit):
        AgentLightningCLI.create(["fit", "-c", str(reproduced), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == full


def test_fit_writes_tensorboard_tags_hparams_and_checkpoints(tmp_path, tiny_bert):
    cli = AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert))
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.parent == tmp_path / "runs" / "agent"
    # fit and the test after it write to the same run folder (Lightning reopens the writer for test: two files)
    assert 1 <= len(list(log_dir.glob("events.out.tfevents.*"))) <= 2
    assert [p for p in log_dir.iterdir() if p.is_dir()] == [log_dir / "checkpoints"]  # no stray sub-runs
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/acc", "val/f1"} <= tags
    assert not any(tag.endswith(("_step", "_epoch")) for tag in tags)
    assert len(events.Scalars("train/loss")) == 8 and len(events.Scalars("val/acc")) == 2
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("val/acc"))
    test_acc = events.Scalars("test/acc")  # test_after_fit: the best checkpoint on the built-in test split
    assert len(test_acc) == 1 and test_acc[0].value == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]))
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    from tensorboard.plugins.hparams import plugin_data_pb2

    experiment = plugin_data_pb2.HParamsPluginData.FromString(plugins["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/acc", "val/f1"}
    start = plugin_data_pb2.HParamsPluginData.FromString(plugins["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["learning_rate"].number_value == pytest.approx(2e-4)
    assert start.hparams["num_labels"].number_value == 24
    checkpoints = sorted(p.name for p in (log_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    assert any(re.fullmatch(r"epoch0[01]-step0000[48]-val_acc[01]\.\d{4}\.ckpt", name) for name in checkpoints)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["model"] == tiny_bert and "tokenizer" not in saved["data"]  # linked from model.model
    best = cli.trainer.checkpoint_callback.best_model_path
    agent = Agent.load_from_checkpoint(best)
    assert len(agent.act(["set an alarm for 7"])) == 1 and agent.labels == cli.datamodule.label_names

    # validate / test / predict reuse the same checkpoint through the CLI
    for subcommand in ("validate", "test", "predict"):
        args = [subcommand, "-c", str(log_dir / "config.yaml"), f"--ckpt_path={best}"]
        other = AgentLightningCLI.create(args)
        assert other.trainer.state.finished
    predictions = [json.loads(line) for line in (Path(other.trainer.logger.log_dir) / "predictions.jsonl").open()]
    assert len(predictions) == 314 and predictions[0]["text"] == cli.datamodule.splits["test"].texts[0]
    assert {p["action"] for p in predictions} <= set(agent.labels) and all(
        0 < p["confidence"] <= 1 for p in predictions
    )


def test_train_py_shim_runs_fast_dev_run(tmp_path, tiny_bert):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "train.py"), "fit", "-c", str(REPO / "configs" / "default.yaml")]
    command += [f"--model.model={tiny_bert}", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Running in `fast_dev_run` mode" in result.stderr + result.stdout


def test_unknown_config_key_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        AgentLightningCLI.create(["fit", "--model.learnin_rate=0.1"])
    assert exit_info.value.code == 2
    assert "learnin_rate" in capsys.readouterr().err


def test_num_labels_contradicting_the_data(tmp_path, tiny_bert):
    with pytest.raises(ValueError, match="num_labels=10 contradicts the 24 labels of the data"):
        AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, "--model.num_labels=10"))
    assert not (tmp_path / "runs").exists()  # nothing written


def test_missing_data_file_fails_before_training(tmp_path, tiny_bert):
    with pytest.raises(ValueError, match="train_file='missing.csv' does not exist"):
        AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, "--data.dataset=null", "--data.train_file=missing.csv"))
    assert not (tmp_path / "runs").exists()


def test_pruning_attaches_from_the_command_line_and_logs(tmp_path, tiny_bert):
    extra = [
        "--trainer.callbacks+=agent_lightning.callbacks.Pruning",
        "--trainer.callbacks.sparsity=0.5",
        "--trainer.callbacks.end=0.5",
        "--trainer.callbacks.frequency=1",
        '--trainer.callbacks.include=["*.intermediate.dense", "*.output.dense"]',  # quoted: "*" starts a YAML alias
    ]
    cli = AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, *extra))
    log_dir = Path(cli.trainer.logger.log_dir)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    pruning = next(c for c in saved["trainer"]["callbacks"] if c["class_path"].endswith("Pruning"))
    assert pruning["init_args"]["sparsity"] == 0.5
    assert pruning["init_args"]["include"] == ["*.intermediate.dense", "*.output.dense"]
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("pruning/sparsity")
    assert [e.step for e in logged] == list(range(8))  # every step (Lightning counts the first one as 0)
    assert logged[-1].value == pytest.approx(0.5, abs=1e-6)
    assert events.Scalars("pruning/target")[-1].value == pytest.approx(0.5)
    # a compression run gets the dashboard and the report by default; the report lies beside the checkpoints
    kinds = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"CompressionDashboard", "CompressionReport"} <= kinds
    report = json.loads((log_dir / "checkpoints" / "report.json").read_text())
    names = ["final", "reference", "final_onnx", "reference_ort_fp32", "reference_ort_int8"]  # with ONNX Runtime's
    assert [m["name"] for m in report["models"]] == names
    assert events.Scalars("model/nonzero_params")[-1].value == report["models"][0]["nonzero_params"]
    callback = next(c for c in cli.trainer.callbacks if type(c).__name__ == "Pruning")
    actual, nonzero = callback.sparsity_now(cli.model)
    assert actual == pytest.approx(logged[-1].value, abs=1e-9)
    assert events.Scalars("pruning/nonzero_params")[-1].value == nonzero
    assert "pruning/layer/layer.0.intermediate.dense" in events.Tags()["scalars"]


def test_qat_attaches_from_the_command_line_converts_and_tests_the_int8_model(tmp_path, tiny_bert, capsys):
    extra = [
        "--trainer.callbacks+=agent_lightning.callbacks.QuantizationAwareTraining",
        "--trainer.callbacks.start=0.25",
        "--trainer.callbacks.freeze=0.75",
    ]
    cli = AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, *extra))
    log_dir = Path(cli.trainer.logger.log_dir)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    qat = next(c for c in saved["trainer"]["callbacks"] if c["class_path"].endswith("QuantizationAwareTraining"))
    assert qat["init_args"]["start"] == 0.25 and qat["init_args"]["freeze"] == 0.75
    assert qat["init_args"]["weights"] == "int8"
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    enabled = [e.value for e in events.Scalars("qat/enabled")]
    assert enabled == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # 8 steps, start at step 2
    assert [e.value for e in events.Scalars("qat/frozen")][-2:] == [1.0, 1.0]
    gap = events.Scalars("qat/acc_gap")[-1].value
    fake, converted = events.Scalars("qat/fake_quant_acc")[-1].value, events.Scalars("qat/converted_acc")[-1].value
    assert gap == pytest.approx(fake - converted, abs=1e-6)
    # the model the CLI tested after fit is the converted int8 one
    query = cli.model.get_submodule("model.bert.encoder.layer.0.attention.self.query")
    assert isinstance(query, DynamicQuantizedLinear)
    assert "test/acc" in cli.trainer.callback_metrics


def test_short_flags_compose_distillation_pruning_qat_and_embeddings_in_one_fit(tmp_path, tiny_bert):
    from lightning.pytorch import Trainer

    from agent_lightning import TextClassificationDataModule
    from agent_lightning.quantization import converted_modules

    labels = TextClassificationDataModule(tokenizer=tiny_bert).label_names
    teacher = Agent(model=tiny_bert, labels=labels)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(teacher)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    extra = ["--qat", "int8", "--student-layers", "1", "--distill", str(tmp_path / "teacher.ckpt")]
    extra += ["--distill.temperature=3.0", "--prune", "0.5", "--prune.end", "0.5", "--prune.frequency", "1"]
    extra += ["--embeddings", "int8"]
    cli = AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, *extra))
    assert len(cli.model.model.bert.encoder.layer) == 1
    log_dir = Path(cli.trainer.logger.log_dir)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["student_layers"] == [1]
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in saved["trainer"]["callbacks"]}
    assert callbacks["Distillation"]["teacher"] == str(tmp_path / "teacher.ckpt")
    assert callbacks["Distillation"]["temperature"] == 3.0
    assert callbacks["Pruning"]["sparsity"] == 0.5 and callbacks["Pruning"]["end"] == 0.5
    assert callbacks["QuantizationAwareTraining"]["weights"] == "int8"
    assert callbacks["QuantizationAwareTraining"]["start"] == 0.8  # QAT last, after pruning (the documented order)
    assert callbacks["EmbeddingCompression"] == {
        "weights": "int8",
        "vocabulary": "seen",
        "unseen": "nearest",
        "fallback_token": None,
        "frequent_tokens": 0,
    }
    # the saved config alone reproduces the run: it parses back to the same callbacks, no short flags needed
    with pytest.raises(SystemExit):
        AgentLightningCLI.create(["fit", "-c", str(log_dir / "config.yaml"), "--print_config"])
    assert len(converted_modules(cli.model)) == 6  # one block of six linears, converted to int8 at fit end
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("distill/kd_loss")) == 8
    assert events.Scalars("distill/temperature")[-1].value == 3.0
    assert "distill/agreement" in events.Tags()["scalars"]
    assert events.Scalars("pruning/sparsity")[-1].value == pytest.approx(0.5, abs=1e-6)
    assert [e.value for e in events.Scalars("qat/enabled")][-2:] == [1.0, 1.0]
    assert "qat/converted_acc" in events.Tags()["scalars"]
    kept = events.Scalars("embeddings/kept_tokens")[-1].value
    assert isinstance(cli.model.model.get_input_embeddings(), CompactEmbedding)  # the tested model is compacted
    assert cli.model.model.get_input_embeddings().kept_tokens == kept < 3000  # of 30,522
    assert (log_dir / "checkpoints" / "report.md").exists()
    # then export the run's last checkpoint as the int8 CPU program and act on raw text with it
    from agent_lightning.deployment.runtime import ExportedAgent

    last = log_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 8  # the latest state, not the best epoch's
    main(["export", str(last), "--output", str(tmp_path / "int8")])
    exported = ExportedAgent(tmp_path / "int8")
    assert exported.manifest["quantization"] == "QAT ranges from the checkpoint"
    assert exported.manifest["parity"]["quantized_layers"] == 6
    assert exported.manifest["embeddings"] == {"kept_tokens": kept, "vocab_size": 30522}
    (action, confidence), *_ = exported.act(["set an alarm for 7", "what's the weather"])
    assert action in cli.model.labels and 0 < confidence <= 1


def test_report_false_attaches_no_dashboard_or_report(tmp_path, tiny_bert):
    extra = [
        "--trainer.callbacks+=agent_lightning.callbacks.Pruning",
        "--trainer.callbacks.sparsity=0.3",
        "--report=false",
    ]
    cli = AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, "--trainer.max_epochs=1", *extra))
    kinds = {type(c).__name__ for c in cli.trainer.callbacks}
    assert "Pruning" in kinds and not {"CompressionDashboard", "CompressionReport"} & kinds
    assert not (Path(cli.trainer.logger.log_dir) / "checkpoints" / "report.json").exists()


def test_embeddings_flag_alone_compacts_without_quantizing(tmp_path, tiny_bert):
    from agent_lightning.quantization import converted_modules

    cli = AgentLightningCLI.create(_fit_args(tmp_path, tiny_bert, "--trainer.max_epochs=1", "--embeddings", "float"))
    assert isinstance(cli.model.model.get_input_embeddings(), CompactEmbedding)
    assert not converted_modules(cli.model)  # --embeddings alone does not quantize the linears


def test_fit_of_the_llm_config_logs_action_accuracy_and_sample_answers(tmp_path, tiny_llama, tiny_data_dir):
    cli = AgentLightningCLI.create(
        [
            "fit",
            "-c",
            str(REPO / "configs" / "llm.yaml"),
            f"--model.model={tiny_llama}",
            "--model.learning_rate=3e-3",
            f"--data.dataset={tiny_data_dir}",
            "--data.batch_size=8",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ]
    )
    assert cli.datamodule.hparams.task == "generation" and cli.model.hparams.task == "generation"
    assert cli.trainer.checkpoint_callback.monitor == "val/action_acc"
    events = EventAccumulator(str(cli.trainer.logger.log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/action_acc", "val/invalid_rate", "val/perplexity", "test/action_acc", "train/loss"} <= tags
    samples = events.Tensors("val/samples/text_summary")
    assert len(samples) == 2  # one table per validation (not the sanity check)
    table = samples[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| request | expected | answer (constrained) | answer (free) |")
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert len(rows) == 4 and all(row[2] in cli.model.labels for row in rows)  # the 4 validation requests
    best = cli.trainer.checkpoint_callback.best_model_path
    assert re.search(r"val_action_acc\d\.\d{4}\.ckpt$", best)
    log_dir = Path(cli.trainer.logger.log_dir)
    for subcommand in ("validate", "test", "predict"):
        other = AgentLightningCLI.create([subcommand, "-c", str(log_dir / "config.yaml"), f"--ckpt_path={best}"])
        assert other.trainer.state.finished and other.model.hparams.task == "generation"
    predictions = [json.loads(line) for line in (Path(other.trainer.logger.log_dir) / "predictions.jsonl").open()]
    assert [p["text"] for p in predictions] == cli.datamodule.splits["test"].texts
    assert all(p["action"] in cli.model.labels and 0 < p["confidence"] <= 1 for p in predictions)


def test_the_short_compression_flags_apply_to_the_llm_agent(tmp_path, tiny_llama, tiny_data_dir):
    """--prune and --qat on a decoder with grouped-query attention and tied embeddings: the target sparsity, int8
    linears after the fit, and accuracy in the report scored on decoded answers."""
    cli = AgentLightningCLI.create(
        [
            "fit",
            "-c",
            str(REPO / "configs" / "llm.yaml"),
            f"--model.model={tiny_llama}",
            f"--data.dataset={tiny_data_dir}",
            "--data.batch_size=8",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--prune=0.5",
            "--qat=int8",
        ]
    )
    layers = cli.model.model.model.layers
    assert sum(isinstance(m, DynamicQuantizedLinear) for m in layers.modules()) == 14  # 7 linears per block
    pruned = layers[0].mlp.gate_proj
    assert float((pruned.weight() == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    report = json.loads((Path(cli.trainer.logger.log_dir) / "checkpoints" / "report.json").read_text())
    final = next(row for row in report["models"] if row["name"] == "final")
    correct, counted = count_correct(cli.model, cli.datamodule.val_dataloader())  # constrained answers
    assert counted == 4 and final["val_acc"] == pytest.approx(correct / counted)


def test_a_causal_lm_trains_and_predicts_from_the_command_line(tmp_path, causal_lm_folders, lm_texts):
    """--model.task causal-lm: texts only (no label column), next-token batches, checkpoints on val/perplexity."""
    common = [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false"]
    model = causal_lm_folders["llama"]
    cli = AgentLightningCLI.create(
        ["fit", f"--model.model={model}", "--model.task=causal-lm", "--model.max_new_tokens=4"]
        + [f"--data.train_file={lm_texts}", f"--data.test_file={lm_texts}", "--trainer.max_epochs=2", *common]
    )
    assert cli.datamodule.hparams.task == "causal-lm" and cli.datamodule.label_names == []
    assert cli.trainer.checkpoint_callback.monitor == "val/perplexity"
    assert cli.trainer.checkpoint_callback.mode == "min"
    assert cli.trainer.checkpoint_callback.best_model_score > 1 and "test/perplexity" in cli.trainer.callback_metrics
    log_dir = Path(cli.trainer.logger.log_dir)
    best = cli.trainer.checkpoint_callback.best_model_path
    other = AgentLightningCLI.create(["predict", "-c", str(log_dir / "config.yaml"), f"--ckpt_path={best}"])
    predictions = [json.loads(line) for line in (Path(other.trainer.logger.log_dir) / "predictions.jsonl").open()]
    texts = [json.loads(line)["text"] for line in Path(lm_texts).open()]
    assert [p["text"] for p in predictions] == texts
    assert all(isinstance(p["continuation"], str) and 0 < p["confidence"] <= 1 for p in predictions)
    agent = Agent.load_from_checkpoint(best)
    assert [p["continuation"] for p in predictions[:3]] == [text for text, _ in agent.act(texts[:3])]
