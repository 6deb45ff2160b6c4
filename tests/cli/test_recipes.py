"""`agent-lightning compress`: teacher, compressed student, export, measured summary — end to end on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from transformers import AutoTokenizer, BertModel

from agent_lightning import Agent
from agent_lightning.backbone import default_backbone_path
from agent_lightning.cli import main
from agent_lightning.cli.recipes import (
    CLASSIFIER_FREQUENT_TOKENS,
    GENERATIVE_FREQUENT_TOKENS,
    GENERATIVE_STUDENT_LR_FACTOR,
    run_recipe,
)
from agent_lightning.deployment.compare import RecipeSummary, compare_with_teacher
from agent_lightning.deployment.export import load_agent_checkpoint
from agent_lightning.deployment.measure import file_bytes, saved_bytes
from agent_lightning.deployment.onnx_program import ONNX_MODEL
from agent_lightning.deployment.runtime import ExportedAgent
from tests.conftest import REPO, tiny_bert_config


def _common(tmp_path: Path, tiny_bert: str, data_dir: Path) -> list[str]:
    return [
        "-c",
        str(REPO / "configs" / "default.yaml"),
        f"--model.model={tiny_bert}",
        f"--data.dataset={data_dir}",
        "--data.batch_size=4",
        "--model.learning_rate=1e-3",
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ]


def test_compress_trains_teacher_then_student_exports_and_measures(tmp_path, tiny_bert, tiny_data_dir):
    summary = run_recipe([*_common(tmp_path, tiny_bert, tiny_data_dir), "--student-layers", "1"])
    teacher_run = tmp_path / "runs" / "teacher" / "version_0"
    student_run = tmp_path / "runs" / "student" / "version_0"
    # stage 2's saved config spells out the whole composition, initialised from the fine-tuned teacher
    config = yaml.safe_load((student_run / "config.yaml").read_text())
    assert config["model"]["model"] == str(teacher_run / "teacher-hf")
    assert config["model"]["student_layers"] == [1]
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert {"Distillation", "Pruning", "QuantizationAwareTraining", "EmbeddingCompression"} <= set(callbacks)
    teacher_ckpt = callbacks["Distillation"]["teacher"]
    assert Path(teacher_ckpt).parent == teacher_run / "checkpoints" and "val_acc" in Path(teacher_ckpt).name
    assert callbacks["Pruning"]["sparsity"] == 0.5 and callbacks["QuantizationAwareTraining"]["start"] == 0.8
    assert callbacks["Pruning"]["method"] == "structured"  # half the FFN neurons, cut out of the layers
    assert callbacks["EmbeddingCompression"]["weights"] == "int4"
    assert callbacks["EmbeddingCompression"]["frequent_tokens"] == CLASSIFIER_FREQUENT_TOKENS
    # the export is the int8, compacted one-block student, for ONNX Runtime (QAT trained with its activation scheme)
    assert callbacks["QuantizationAwareTraining"]["kernel"] == "onnxruntime"
    export = student_run / "export-onnx"
    exported = ExportedAgent(export)
    assert exported.format == "onnx"
    assert exported.manifest["parity"]["quantized_layers"] == 6 and exported.manifest["parity"]["top1_agreement"] == 1
    # the training tokens and the tokenizer's most frequent ones, as int4 rows; the FFN of the kept block halved
    kept_tokens = exported.manifest["embeddings"]["kept_tokens"]
    assert CLASSIFIER_FREQUENT_TOKENS < kept_tokens < CLASSIFIER_FREQUENT_TOKENS + 200
    assert exported.manifest["structure"] == {"0": {"intermediate_size": 32}}
    # the summary's numbers are the measured ones
    written = json.loads((student_run / "summary.json").read_text())
    assert RecipeSummary(**written) == summary
    texts = [line.split(",")[0] for line in (tiny_data_dir / "test.csv").read_text().splitlines()[1:]]
    labels = [line.split(",")[1] for line in (tiny_data_dir / "test.csv").read_text().splitlines()[1:]]
    assert summary.examples == len(texts) == 20 and summary.split == "test"
    predicted = [action for action, _ in exported.act(texts)]
    assert summary.student_acc == sum(p == y for p, y in zip(predicted, labels)) / 20
    teacher = Agent.load_from_checkpoint(teacher_ckpt)
    assert summary.teacher_acc == sum(a == y for (a, _), y in zip(teacher.act(texts), labels)) / 20
    assert (summary.student_bytes, summary.student_zipped) == file_bytes(export / ONNX_MODEL)
    assert (summary.teacher_bytes, summary.teacher_zipped) == saved_bytes(teacher.model)
    assert summary.student_zipped * 10 < summary.teacher_zipped
    models = ("teacher", "student", "ort_fp32", "ort_int8")
    assert set(summary.latency_ms) == {f"{m}_b{b}" for m in models for b in (1, 32)}
    assert all(ms > 0 for ms in summary.latency_ms.values())
    # the teacher's ONNX Runtime peers: fp32 answers as the teacher does; quantize_dynamic's int8 file is smaller
    assert summary.peers["ort_fp32"]["acc"] == summary.teacher_acc
    assert summary.peers["ort_int8"]["zipped"] * 2 < summary.peers["ort_fp32"]["zipped"]
    table = (student_run / "summary.md").read_text()
    assert "| int8 teacher, ONNX Runtime `quantize_dynamic` (no training) |" in table
    assert "x vs the ONNX Runtime int8 teacher" in table
    # abstention: the threshold chosen on validation for precision 0.95, measured on test
    a = summary.abstention
    kept = [(p, y) for (p, c), y in zip(exported.act(texts), labels) if c >= a["threshold"]]
    assert a["target_precision"] == 0.95 and a["coverage"] == len(kept) / 20
    assert a["precision"] == (sum(p == y for p, y in kept) / len(kept) if kept else None)
    assert "Abstention: the student answers when its confidence is at least" in table


def test_compress_with_a_given_teacher_skips_stage_one(tmp_path, tiny_bert, tiny_data_dir, capsys):
    common = _common(tmp_path, tiny_bert, tiny_data_dir)
    main(["fit", *common, "--trainer.max_epochs=1", "--trainer.logger.init_args.name=mine"])
    teacher_ckpt = next((tmp_path / "runs" / "mine" / "version_0" / "checkpoints").glob("epoch*.ckpt"))
    main(["compress", *common, "--teacher", str(teacher_ckpt), "--student-layers", "0", "--qat", "none"])
    assert not (tmp_path / "runs" / "teacher").exists()
    printed = capsys.readouterr().out
    assert "Stage 1" not in printed and "Stage 4" in printed and "| fp32 teacher, ONNX Runtime |" in printed
    exported = ExportedAgent(tmp_path / "runs" / "student" / "version_0" / "export-onnx")
    assert exported.manifest["quantization"].startswith("post-training")  # no QAT: quantized after training


def _three_block_teacher(tmp_path: Path, data_dir: Path) -> tuple[list[str], Path]:
    """The recipe's common arguments for a tiny BERT of three blocks, and a teacher fine-tuned from it (one epoch)."""
    backbone = tmp_path / "three-blocks"
    BertModel(tiny_bert_config(num_hidden_layers=3)).save_pretrained(backbone)
    AutoTokenizer.from_pretrained(default_backbone_path()).save_pretrained(backbone)
    common = _common(tmp_path, str(backbone), data_dir) + ["--trainer.max_epochs=1"]
    main(["fit", *common, "--trainer.logger.init_args.name=mine"])
    return common, next((tmp_path / "runs" / "mine" / "version_0" / "checkpoints").glob("epoch*.ckpt"))


def test_compress_student_from_an_earlier_student_prunes_depth_in_steps(tmp_path, tiny_data_dir):
    """Three blocks, then two (an earlier compress run), then one of those two: the second step starts from the
    first step's trained student, not from the teacher, and is distilled from the original teacher."""
    common, teacher_ckpt = _three_block_teacher(tmp_path, tiny_data_dir)
    backbone = tmp_path / "three-blocks"
    light = ["--prune", "none", "--qat", "none", "--teacher", str(teacher_ckpt)]
    run_recipe([*common, *light, "--student-layers", "0,2"])
    first = tmp_path / "runs" / "student" / "version_0" / "checkpoints" / "last.ckpt"
    teacher_hf = teacher_ckpt.parent.parent / "teacher-hf" / "config.json"  # the first step's start
    written = teacher_hf.stat().st_mtime_ns
    with pytest.raises(FileNotFoundError, match=r"checkpoint='.*missing.ckpt' does not exist"):
        run_recipe([*common, *light, "--student-from", str(tmp_path / "missing.ckpt"), "--student-layers", "1"])
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(Agent(model=str(backbone), labels=["x", "y"]))
    trainer.save_checkpoint(tmp_path / "other.ckpt")  # an agent of other labels
    with pytest.raises(
        ValueError, match=r"--student-from .*other.ckpt' is a task='classification' agent with 2 labels"
    ):
        run_recipe([*common, *light, "--student-from", str(tmp_path / "other.ckpt"), "--student-layers", "1"])
    assert not (tmp_path / "runs" / "student" / "version_1").exists()  # refused before the second fit

    run_recipe([*common, *light, "--student-from", str(first), "--student-layers", "1"])
    second = tmp_path / "runs" / "student" / "version_1"
    config = yaml.safe_load((second / "config.yaml").read_text())
    start = first.parent.parent / "student-hf"
    assert config["model"]["model"] == str(start) and config["model"]["student_layers"] == [1]
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["Distillation"]["teacher"] == str(teacher_ckpt)  # still the three-block teacher
    assert teacher_hf.stat().st_mtime_ns == written  # not written again: this step does not start from it
    # the start is the first student as trained: its block 1 is the teacher's block 2 after the first step's fit
    state = Agent.load_from_checkpoint(first, map_location="cpu").model.state_dict()
    teacher_state = Agent.load_from_checkpoint(teacher_ckpt, map_location="cpu").model.state_dict()
    started = BertModel.from_pretrained(start).state_dict()
    key = "encoder.layer.1.attention.self.query.weight"
    assert started[key].equal(state[f"bert.{key}"])
    assert not started[key].equal(teacher_state["bert.encoder.layer.2.attention.self.query.weight"])
    student = Agent.load_from_checkpoint(second / "checkpoints" / "last.ckpt", map_location="cpu")
    assert len(student.model.bert.encoder.layer) == 1
    assert ExportedAgent(second / "export-onnx").format == "onnx"


def test_compress_depth_steps_start_each_step_from_the_previous_steps_best_checkpoint(tmp_path, tiny_data_dir):
    """``--depth-steps 2 --student-layers auto:1`` on three blocks: a two-block student, then a one-block student
    from that one's best checkpoint, both distilled from the teacher; only the last is exported."""
    common, teacher_ckpt = _three_block_teacher(tmp_path, tiny_data_dir)
    light = [*common, "--prune", "none", "--qat", "none", "--teacher", str(teacher_ckpt), "--student-layers", "auto:1"]
    with pytest.raises(ValueError, match=r"--depth-steps '3' starts at 3 blocks, but the student starts from 3"):
        run_recipe([*light, "--depth-steps", "3"])
    assert not (tmp_path / "runs" / "student-3").exists()  # refused before any fit

    summary = run_recipe([*light, "--depth-steps", "2"])
    step, final = tmp_path / "runs" / "student-2" / "version_0", tmp_path / "runs" / "student" / "version_0"
    last = torch.load(step / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert len(last["hyper_parameters"]["student_layers"]) == 2  # auto:2 of the teacher's three blocks
    best = Path(next(s["best_model_path"] for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")))
    assert best.parent == step / "checkpoints" and "val_acc" in best.name
    configs = [yaml.safe_load((run / "config.yaml").read_text()) for run in (step, final)]
    for config in configs:  # each step distilled from the three-block teacher
        distillation = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("Distillation"))
        assert distillation["init_args"]["teacher"] == str(teacher_ckpt)
    # the last step starts from the two-block student's best checkpoint
    assert configs[0]["model"]["model"] == str(teacher_ckpt.parent.parent / "teacher-hf")
    assert configs[1]["model"]["model"] == str(step / "student-hf")
    started = BertModel.from_pretrained(step / "student-hf").state_dict()
    trained = Agent.load_from_checkpoint(best, map_location="cpu").model.state_dict()
    assert started.keys() and all(value.equal(trained[f"bert.{key}"]) for key, value in started.items())
    student = Agent.load_from_checkpoint(final / "checkpoints" / "last.ckpt", map_location="cpu")
    assert len(student.model.bert.encoder.layer) == 1
    assert not (step / "export-onnx").exists() and ExportedAgent(final / "export-onnx").format == "onnx"
    assert summary.examples == 20


def test_compress_exports_the_average_with_lightnings_ema_weight_averaging(tmp_path, tiny_bert, tiny_data_dir):
    """``--trainer.callbacks+=EMAWeightAveraging`` (docs/llm-agent.md): the student's checkpoints hold the average
    beside the raw weights, and the export (read from ``last.ckpt``) answers as the average does, not as the raw
    weights do."""
    ema = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.5"]
    plain = ["--student-layers", "1", "--prune", "none", "--qat", "none", "--embeddings", "none"]  # an fp32 export
    run_recipe([*_common(tmp_path, tiny_bert, tiny_data_dir), *ema, *plain])
    run = tmp_path / "runs" / "student" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    average, raw = last["state_dict"], last["current_model_state"]
    assert average.keys() == raw.keys() and any(not average[k].equal(raw[k]) for k in average)
    student = Agent.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    export = ExportedAgent(run / "export-onnx")
    texts = ["play some jazz", "wake me at seven", "what is the weather", "call mom"]
    encoded = export.encode(texts)
    with torch.no_grad():
        averaged = student.model(**encoded).logits
        student.load_state_dict(raw)
        unaveraged = student.model(**encoded).logits
    exported = export.logits(texts)
    assert (exported - averaged).abs().max() < 1e-5 < (exported - unaveraged).abs().max()


def test_compress_exports_the_pruning_masks_over_lightnings_ema_average(tmp_path, tiny_bert, tiny_data_dir):
    """An average of weights is not zero where ``Pruning`` masked them (it averages steps from before the masks):
    the export applies the run's recorded masks to the average, so it answers as the masked average does."""
    ema = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.999"]  # mostly the start
    prune = ["--prune", "0.5", "--prune.method=magnitude", "--prune.end=0.5", "--prune.frequency=1"]
    plain = ["--student-layers", "1", "--qat", "none", "--embeddings", "none"]  # an fp32 export
    run_recipe([*_common(tmp_path, tiny_bert, tiny_data_dir), *ema, *prune, *plain])
    last = tmp_path / "runs" / "student" / "version_0" / "checkpoints" / "last.ckpt"
    raw = torch.load(last, map_location="cpu", weights_only=False)
    keep = next(state for key, state in raw["callbacks"].items() if key.startswith("Pruning"))["keep"]
    assert keep and all(0.4 < 1 - mask.float().mean() < 0.6 for mask in keep.values())  # half of each layer
    revived = sum(int(raw["state_dict"][name][~mask].count_nonzero()) for name, mask in keep.items())
    assert revived > 0  # the average the checkpoint holds is not zero where the masks are
    student = Agent.load_from_checkpoint(last, map_location="cpu").eval()
    loaded, _ = load_agent_checkpoint(last)
    parameters, masked = dict(student.named_parameters()), dict(loaded.named_parameters())
    assert all(masked[name][~mask].count_nonzero() == 0 for name, mask in keep.items())
    assert all(masked[name][mask].equal(parameters[name][mask]) for name, mask in keep.items())
    export = ExportedAgent(tmp_path / "runs" / "student" / "version_0" / "export-onnx")
    texts = ["play some jazz", "wake me at seven", "what is the weather", "call mom"]
    encoded = export.encode(texts)
    with torch.no_grad():
        unmasked, averaged_and_masked = student.model(**encoded).logits, loaded.model(**encoded).logits
    exported = export.logits(texts)
    assert (exported - averaged_and_masked).abs().max() < 1e-5 < (exported - unmasked).abs().max()


def test_compare_with_teacher_refuses_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match=r"needs as many labels as texts, got 2 and 1"):
        compare_with_teacher(None, tmp_path, ["a", "b"], ["x"])


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (["--prune", "2"], ValueError, r"--prune '2' must be a sparsity in \[0, 1\)"),
        (["--student-layers", "first"], ValueError, r"--student-layers 'first' must be comma-separated"),
        (["--output", "{taken}"], FileExistsError, r"exists and is not empty"),
        (["--abstain-precision", "2"], ValueError, r"--abstain-precision=2.0 .*\(0, 1\]"),
        (["--student-lr", "0"], ValueError, r"--student-lr=0.0 .*e.g. --student-lr 3e-4"),
        (["--student-from", "s.ckpt"], ValueError, r"--student-from 's.ckpt' .*give that teacher as well"),
        (["--depth-steps", "2,x"], ValueError, r"--depth-steps '2,x' must be comma-separated block counts, each"),
        (["--depth-steps", "1,2"], ValueError, r"--depth-steps '1,2' must be .* smaller than the one before"),
        (["--depth-steps", "1", "--student-layers", "auto:1"], ValueError, r"ends at 1 blocks, too few for"),
    ],
)
def test_bad_options_fail_before_anything_trains(options, error, message, tmp_path, tiny_bert, tiny_data_dir):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    options = [o.format(taken=tmp_path / "taken") for o in options]
    with pytest.raises(error, match=message):
        run_recipe([*_common(tmp_path, tiny_bert, tiny_data_dir), *options])
    assert not (tmp_path / "runs").exists()


def test_compress_with_few_labels_gives_the_unlabelled_rest_to_the_student_only(tmp_path, tiny_bert, tiny_data_dir):
    args = [*_common(tmp_path, tiny_bert, tiny_data_dir), "--student-layers", "1", "--labels-per-class", "2"]
    run_recipe([*args, "--unlabeled", "rest", "--trainer.max_epochs=1"])
    teacher = yaml.safe_load((tmp_path / "runs" / "teacher" / "version_0" / "config.yaml").read_text())
    student = yaml.safe_load((tmp_path / "runs" / "student" / "version_0" / "config.yaml").read_text())
    assert teacher["data"]["labels_per_class"] == student["data"]["labels_per_class"] == 2
    assert teacher["data"]["unlabeled_file"] is None  # the teacher learns from the labels only
    assert student["data"]["unlabeled_file"] == "rest"
    distillation = next(c for c in student["trainer"]["callbacks"] if c["class_path"].endswith("Distillation"))
    # mostly soft labels on the unlabelled rows unless given (--distill.alpha below): the setting that paid
    assert distillation["init_args"]["temperature"] == 1.0 and distillation["init_args"]["alpha"] == 0.1
    assert not any(c["class_path"].endswith("Distillation") for c in teacher["trainer"].get("callbacks") or [])


def test_compression_detail_flags_go_to_the_student_only(tmp_path, tiny_bert, tiny_data_dir):
    args = [*_common(tmp_path, tiny_bert, tiny_data_dir), "--student-layers", "1", "--trainer.max_epochs=1"]
    run_recipe([*args, "--distill.alpha", "0.3", "--prune.end=0.5", "--unlabeled", "rest", "--labels-per-class", "2"])
    student = yaml.safe_load((tmp_path / "runs" / "student" / "version_0" / "config.yaml").read_text())
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in student["trainer"]["callbacks"]}
    assert callbacks["Distillation"]["alpha"] == 0.3 and callbacks["Distillation"]["temperature"] == 1.0
    assert callbacks["Pruning"]["end"] == 0.5


def test_compress_of_a_generative_agent_builds_an_auto_picked_distilled_int8_decoder(
    tmp_path, tiny_llama, shared_tiny_data_dir, trained_tiny_llama
):
    """configs/llm.yaml's recipe on the tiny Llama: half the blocks picked by span distance, token-level KD,
    int8 QAT, the tied table trimmed once, an ONNX decoding step, measured against the teacher and its peers."""
    _, _, _, teacher_ckpt = trained_tiny_llama
    common = [
        "-c",
        str(REPO / "configs" / "llm.yaml"),
        f"--model.model={tiny_llama}",
        f"--data.dataset={shared_tiny_data_dir}",
        "--data.batch_size=8",
        "--model.learning_rate=1e-3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ]
    summary = run_recipe(
        [*common, "--teacher", str(teacher_ckpt), "--student-epochs", "2", "--distill.divergence=skew"]
    )
    student_run = tmp_path / "runs" / "student" / "version_0"
    config = yaml.safe_load((student_run / "config.yaml").read_text())
    assert config["model"]["student_layers"] == "auto:1"  # half of the teacher's two blocks, picked before fit
    teacher_lr = Agent.load_from_checkpoint(teacher_ckpt, map_location="cpu").hparams.learning_rate
    assert config["model"]["learning_rate"] == pytest.approx(GENERATIVE_STUDENT_LR_FACTOR * teacher_lr)
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert "Pruning" not in callbacks  # no zeros inside the blocks of a decoder by default
    assert callbacks["Distillation"]["divergence"] == "skew" and callbacks["Distillation"]["temperature"] == 1.0
    assert callbacks["QuantizationAwareTraining"]["start"] == 0.5
    assert callbacks["QuantizationAwareTraining"]["kernel"] == "onnxruntime"
    assert callbacks["QuantizationAwareTraining"]["exclude"] == ["*.mlp.down_proj"]  # SwiGLU's outliers: float
    assert callbacks["EmbeddingCompression"]["weights"] == "int8"
    assert callbacks["EmbeddingCompression"]["frequent_tokens"] == GENERATIVE_FREQUENT_TOKENS  # unseen words: own rows
    checkpoint = Agent.load_from_checkpoint(student_run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert len(checkpoint.hparams.student_layers) == 1 and len(checkpoint.model.model.layers) == 1
    exported = ExportedAgent(student_run / "export-onnx")
    assert exported.task == "generation" and exported.manifest["parity"]["quantized_layers"] == 3  # qkv, o, gate+up
    embeddings = exported.manifest["embeddings"]
    assert GENERATIVE_FREQUENT_TOKENS <= embeddings["kept_tokens"] < GENERATIVE_FREQUENT_TOKENS + 200
    assert embeddings["scored_tokens"] < 200  # the softmax: the training prompts' and answers' tokens only
    texts = [line.split(",")[0] for line in (shared_tiny_data_dir / "test.csv").read_text().splitlines()[1:]]
    labels = [line.split(",")[1] for line in (shared_tiny_data_dir / "test.csv").read_text().splitlines()[1:]]
    predicted = [action for action, _ in exported.act(texts)]
    assert summary.student_acc == sum(p == y for p, y in zip(predicted, labels)) / len(labels)
    models = ("teacher", "student", "ort_fp32", "ort_int8")
    assert set(summary.latency_ms) == {f"{m}_b{b}" for m in models for b in (1, 32)}
    assert set(summary.tokens_per_s) == set(models) and all(v > 0 for v in summary.tokens_per_s.values())
    assert summary.peers["ort_fp32"]["acc"] == summary.teacher_acc  # the same decoder, fp32, on ONNX Runtime
    assert summary.student_zipped * 4 < summary.teacher_zipped
    table = (student_run / "summary.md").read_text()
    assert "answer tokens/s, batch 1 |" in table and "| **exported int8 student** (ONNX Runtime) |" in table
