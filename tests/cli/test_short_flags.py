"""The short compression flags of `train.py fit` rewrite into LightningCLI arguments, or fail with the fix."""

from __future__ import annotations

import pytest

from agent_lightning.cli.short_flags import expand_short_flags

PRUNING = "--trainer.callbacks+=agent_lightning.callbacks.Pruning"
QAT = "--trainer.callbacks+=agent_lightning.callbacks.QuantizationAwareTraining"
DISTILLATION = "--trainer.callbacks+=agent_lightning.callbacks.Distillation"
EMBEDDINGS = "--trainer.callbacks+=agent_lightning.callbacks.EmbeddingCompression"


def test_other_arguments_pass_through_unchanged():
    args = ["fit", "-c", "configs/default.yaml", "--trainer.max_epochs=2", "--model.learning_rate", "1e-4"]
    assert expand_short_flags(args) == args
    assert expand_short_flags(["test", "--ckpt_path=x.ckpt"]) == ["test", "--ckpt_path=x.ckpt"]


def test_fixed_order_whatever_the_flag_order():
    args = ["fit", "--embeddings", "int8", "--qat=int4", "--qat.group_size", "16", "--prune", "0.5"]
    args += ["--distill", "t.ckpt", "--prune.end=0.6", "--embeddings.vocabulary=full"]
    assert expand_short_flags(args) == [
        "fit",
        DISTILLATION,
        "--trainer.callbacks.teacher=t.ckpt",
        PRUNING,
        "--trainer.callbacks.sparsity=0.5",
        "--trainer.callbacks.end=0.6",
        QAT,
        "--trainer.callbacks.weights=int4",
        "--trainer.callbacks.group_size=16",
        "--trainer.callbacks.start=0.8",
        EMBEDDINGS,
        "--trainer.callbacks.weights=int8",
        "--trainer.callbacks.vocabulary=full",
    ]


def test_qat_alone_keeps_its_own_start_and_an_explicit_start_wins():
    assert expand_short_flags(["fit", "--qat", "int8"]) == ["fit", QAT, "--trainer.callbacks.weights=int8"]
    expanded = expand_short_flags(["fit", "--prune", "0.3", "--qat", "int8", "--qat.start", "0.5"])
    assert expanded[-1] == "--trainer.callbacks.start=0.5" and expanded.count("--trainer.callbacks.start=0.5") == 1


def test_qat_none_and_student_layers():
    assert expand_short_flags(["fit", "--qat", "none", "--embeddings=none", "--student-layers", "0, 2,4"]) == [
        "fit",
        "--model.student_layers=[0,2,4]",
    ]
    for picked in ("auto:3", "span:3", "influence:3"):  # picked on training batches by the Agent, passed as they are
        assert expand_short_flags(["fit", "--qat", "none", "--embeddings=none", "--student-layers", picked]) == [
            "fit",
            f"--model.student_layers={picked}",
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--qat", "int3"], r"--qat 'int3' is not a choice; use one of int8, int4, none \(e.g. --qat int8\)"),
        (["fit", "--prune.end", "0.6"], r"--prune.end was given without --prune; add it, e.g. --prune 0.5"),
        (["fit", "--prune"], r"--prune needs a value, e.g. --prune 0.5"),
        (["fit", "--distill", "--prune", "0.5"], r"--distill needs a value, e.g. --distill runs/"),
        (["fit", "--student-layers", "a,b"], r"--student-layers 'a,b' must be comma-separated block indices"),
        (["fit", "--qat", "none", "--qat.start", "0.5"], r"--qat none turns it off; drop the --qat.\* options"),
        (["fit", "--embeddings", "int2"], r"--embeddings 'int2' is not a choice; use one of int8, int4, float, none"),
        (["test", "--prune", "0.5"], r"options of `train.py fit`; put them after `fit`"),
    ],
)
def test_bad_short_flags(args, message):
    with pytest.raises(ValueError, match=message):
        expand_short_flags(args)
