"""The bad-input sweep: every user-facing argument with a wrong type, an out-of-range value and, where it names a
file, a missing one; plus corrupt inputs. One test per row of the table in ``docs/bad-input.md``, which is written
from the same rows (``python -m tests.test_bad_input`` rewrites it; a test fails when it is stale).

Each row must raise, before anything trains or is written, a ``ValueError``/``TypeError``/``FileNotFoundError``
whose message names the argument and the bad value and says what to do (``use``, ``must``, ``choose``, ``pass``...),
and leave no file behind in the working folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

DOC = REPO / "docs" / "bad-input.md"
FIX_WORDS = ("use ", "must", "choose", "pass ", "give ", "set ", "add ", "drop ", "check ", "re-save", "swap", "remove")


@dataclass(frozen=True)
class Case:
    """One row: ``build(value, env)`` must fail on ``value`` of ``argument`` with ``error``."""

    component: str
    argument: str
    kind: str  # "type", "range", "choice", "format", "missing file", "corrupt"
    value: Any
    build: Callable[[Any, dict], Any]
    error: type[Exception] = ValueError
    shown: str | None = None  # what the message shows for the value (default: repr(value))

    @property
    def id(self) -> str:
        return f"{self.component}.{self.argument}-{self.kind}-{self.value!r}"[:80]


def _callback(name: str, **fixed) -> Callable[[str], Callable[[Any, dict], Any]]:
    """Rows for callback ``name``; ``fixed`` arguments given as ``"{key}"`` are read from ``env``."""

    def for_argument(argument: str) -> Callable[[Any, dict], Any]:
        def build(value: Any, env: dict) -> Any:
            import agent_lightning.callbacks as callbacks

            resolved = {k: env[v[1:-1]] if isinstance(v, str) and v.startswith("{") else v for k, v in fixed.items()}
            return getattr(callbacks, name)(**{**resolved, argument: value})

        return build

    return for_argument


def _agent(argument: str) -> Callable[[Any, dict], Any]:
    def build(value: Any, env: dict) -> Any:
        from agent_lightning import Agent

        return Agent(**{"model": env["tiny_bert"], "labels": ["a", "b"], argument: value})

    return build


def _classification_data(argument: str) -> Callable[[Any, dict], Any]:
    def build(value: Any, env: dict) -> Any:
        from agent_lightning import TextClassificationDataModule

        fixed = {"tokenizer": env["tiny_bert"]}
        if argument not in ("dataset", "train_file"):
            fixed["train_file"] = env["train_csv"]
        dm = TextClassificationDataModule(**{**fixed, argument: value})
        dm.setup("fit")  # reading the files is where column and content errors surface
        return dm

    return build


def _chat_data(argument: str) -> Callable[[Any, dict], Any]:
    """Rows for the datamodule's chat batches (``task="generation"``), which surface at setup."""

    def build(value: Any, env: dict) -> Any:
        from agent_lightning import TextClassificationDataModule

        fixed = {"tokenizer": env["tiny_bert"], "task": "generation", "train_file": env["train_csv"]}
        dm = TextClassificationDataModule(**{**fixed, argument: value})
        dm.setup("fit")
        return dm

    return build


def _lm_task_data(argument: str) -> Callable[[Any, dict], Any]:
    def build(value: Any, env: dict) -> Any:
        from agent_lightning import TextClassificationDataModule

        fixed = {"tokenizer": env["tiny_bert"], "task": "causal-lm", "train_file": env["train_csv"]}
        return TextClassificationDataModule(**{**fixed, argument: value})

    return build


def _lm_data(argument: str) -> Callable[[Any, dict], Any]:
    def build(value: Any, env: dict) -> Any:
        from agent_lightning import LanguageModelingDataModule

        fixed = {"tokenizer": env["tiny_bert"], "train_file": env["train_csv"]}
        dm = LanguageModelingDataModule(**{**fixed, argument: value})
        dm.setup("fit")
        return dm

    return build


def _cli(*args: str) -> Callable[[Any, dict], Any]:
    """Rows for the short flags of ``train.py fit``, checked before LightningCLI parses anything."""

    def build(value: Any, env: dict) -> Any:
        from agent_lightning.cli.short_flags import expand_short_flags

        return expand_short_flags(["fit", *[a.format(value=value) for a in args]])

    return build


def _export(argument: str) -> Callable[[Any, dict], Any]:
    def build(value: Any, env: dict) -> Any:
        from agent_lightning.deployment.export import export_agent

        kwargs = {"checkpoint": env["agent_ckpt"], "output": "export-out", argument: value}
        return export_agent(**kwargs)

    return build


def _serve(option: str) -> Callable[[Any, dict], Any]:
    """Rows for ``agent-lightning serve``: refused before a server starts."""

    def build(value: Any, env: dict) -> Any:
        from agent_lightning.cli.serve import serve_command

        model = value if option == "model" else env["agent_ckpt"]
        extra = [] if option == "model" else [option, str(value)]
        return serve_command([model, "--store", "store.db", *extra])

    return build


def _learn(option: str) -> Callable[[Any, dict], Any]:
    """Rows for ``agent-lightning learn``: refused before anything trains."""

    def build(value: Any, env: dict) -> Any:
        from agent_lightning.cli.learn import learn_command

        options = {"--feedback": env["store"], "--ckpt": env["agent_ckpt"], "--output": "learned", option: str(value)}
        return learn_command([part for pair in options.items() for part in pair])

    return build


PRUNING = _callback("Pruning")
QAT = _callback("QuantizationAwareTraining")
DISTILLATION = _callback("Distillation", teacher="{agent_ckpt}")
EMBEDDINGS = _callback("EmbeddingCompression")
REPORT = _callback("CompressionReport")
DASHBOARD = _callback("CompressionDashboard")

CASES = [
    # Pruning
    Case("Pruning", "sparsity", "type", "0.5", PRUNING("sparsity"), TypeError),
    Case("Pruning", "sparsity", "range", 1.0, PRUNING("sparsity")),
    Case("Pruning", "sparsity", "range", -0.1, PRUNING("sparsity")),
    Case("Pruning", "method", "choice", "l2", PRUNING("method")),
    Case("Pruning", "scope", "choice", "all", PRUNING("scope")),
    Case("Pruning", "pattern", "range", "4:4", _callback("Pruning", method="n:m")("pattern")),
    Case("Pruning", "pattern", "type", 24, _callback("Pruning", method="n:m")("pattern"), TypeError),
    Case("Pruning", "head_sparsity", "range", 1.0, _callback("Pruning", method="structured")("head_sparsity")),
    Case("Pruning", "criterion", "choice", "taylor", PRUNING("criterion")),
    Case("Pruning", "gqa", "choice", "heads", PRUNING("gqa")),
    Case("Pruning", "criterion", "format", "wanda", _callback("Pruning", method="structured")("criterion")),
    Case("Pruning", "criterion", "format", "first_order", PRUNING("criterion")),
    Case("Pruning", "include", "type", "*.dense", PRUNING("include"), TypeError),
    Case("Pruning", "exclude", "type", [3], PRUNING("exclude"), TypeError),
    Case("Pruning", "start", "range", -1, PRUNING("start")),
    Case("Pruning", "start", "type", "0.1", PRUNING("start"), TypeError),
    Case("Pruning", "end", "range", 0.2, _callback("Pruning", start=0.5)("end")),
    Case("Pruning", "frequency", "range", 0, PRUNING("frequency")),
    Case("Pruning", "frequency", "type", 2.5, PRUNING("frequency"), TypeError),
    Case("Pruning", "schedule", "choice", "exp", PRUNING("schedule")),
    Case("Pruning", "physically_remove", "type", "yes", PRUNING("physically_remove"), TypeError),
    Case("Pruning", "log_per_layer", "type", "no", PRUNING("log_per_layer"), TypeError),
    Case("Pruning", "rewind", "type", "yes", PRUNING("rewind"), TypeError),
    # QuantizationAwareTraining
    Case("QuantizationAwareTraining", "weights", "choice", "int2", QAT("weights")),
    Case("QuantizationAwareTraining", "activations", "choice", "fp8", QAT("activations")),
    Case(
        "QuantizationAwareTraining",
        "group_size",
        "range",
        0,
        _callback("QuantizationAwareTraining", weights="int4")("group_size"),
    ),
    Case(
        "QuantizationAwareTraining",
        "group_size",
        "type",
        "32",
        _callback("QuantizationAwareTraining", weights="int4")("group_size"),
        TypeError,
    ),
    Case("QuantizationAwareTraining", "kernel", "choice", "cuda", QAT("kernel")),
    Case("QuantizationAwareTraining", "include", "type", "*.query", QAT("include"), TypeError),
    Case("QuantizationAwareTraining", "start", "range", -1, QAT("start")),
    Case(
        "QuantizationAwareTraining", "freeze", "range", 0.2, _callback("QuantizationAwareTraining", start=0.5)("freeze")
    ),
    Case("QuantizationAwareTraining", "convert_on_fit_end", "type", "yes", QAT("convert_on_fit_end"), TypeError),
    Case("QuantizationAwareTraining", "evaluate", "type", "yes", QAT("evaluate"), TypeError),
    Case("QuantizationAwareTraining", "log_per_layer", "type", "no", QAT("log_per_layer"), TypeError),
    # Distillation
    Case("Distillation", "teacher", "type", 3, _callback("Distillation")("teacher"), TypeError),
    Case(
        "Distillation",
        "teacher",
        "missing file",
        "missing/teacher.ckpt",
        _callback("Distillation")("teacher"),
        FileNotFoundError,
    ),
    Case("Distillation", "temperature", "range", 0, DISTILLATION("temperature")),
    Case("Distillation", "temperature", "type", "2", DISTILLATION("temperature"), TypeError),
    Case("Distillation", "alpha", "range", 1.5, DISTILLATION("alpha")),
    Case("Distillation", "temperature_end", "range", -1.0, DISTILLATION("temperature_end")),
    Case("Distillation", "alpha_end", "range", -0.1, DISTILLATION("alpha_end")),
    Case("Distillation", "hidden_weight", "range", -1.0, DISTILLATION("hidden_weight")),
    Case("Distillation", "hidden_standardize", "type", "yes", DISTILLATION("hidden_standardize"), TypeError),
    Case("Distillation", "attention_weight", "type", "x", DISTILLATION("attention_weight"), TypeError),
    Case("Distillation", "layer_map", "type", "0,1", DISTILLATION("layer_map"), TypeError),
    Case("Distillation", "cache", "choice", "gpu", DISTILLATION("cache")),
    Case(
        "Distillation",
        "cache_dir",
        "range",
        None,
        _callback("Distillation", teacher="{agent_ckpt}", cache="disk")("cache_dir"),
    ),
    Case("Distillation", "projection_lr", "range", 0, DISTILLATION("projection_lr")),
    Case("Distillation", "augment", "range", 1.0, DISTILLATION("augment")),
    Case("Distillation", "prompt_weight", "range", -1.0, DISTILLATION("prompt_weight")),
    Case("Distillation", "divergence", "choice", "js", DISTILLATION("divergence")),
    Case("Distillation", "skew", "range", 1.0, DISTILLATION("skew")),
    Case("Distillation", "cache_top_k", "range", 0, DISTILLATION("cache_top_k")),
    Case("Distillation", "cache_top_k", "type", 6.5, DISTILLATION("cache_top_k"), TypeError),
    # EmbeddingCompression
    Case("EmbeddingCompression", "weights", "choice", "int2", EMBEDDINGS("weights")),
    Case("EmbeddingCompression", "vocabulary", "choice", "test", EMBEDDINGS("vocabulary")),
    Case("EmbeddingCompression", "unseen", "choice", "unk", EMBEDDINGS("unseen")),
    Case("EmbeddingCompression", "fallback_token", "type", "[UNK]", EMBEDDINGS("fallback_token"), TypeError),
    Case("EmbeddingCompression", "frequent_tokens", "range", -1, EMBEDDINGS("frequent_tokens")),
    # CompressionReport / CompressionDashboard
    Case("CompressionReport", "reference", "choice", "best", REPORT("reference")),
    Case("CompressionReport", "evaluate", "type", "yes", REPORT("evaluate"), TypeError),
    Case("CompressionReport", "max_eval_batches", "range", 0, REPORT("max_eval_batches")),
    Case("CompressionReport", "latency", "type", "yes", REPORT("latency"), TypeError),
    Case("CompressionReport", "batch_sizes", "range", [0], REPORT("batch_sizes")),
    Case("CompressionReport", "batch_sizes", "type", "32", REPORT("batch_sizes"), TypeError),
    Case("CompressionReport", "latency_budget_s", "range", 0, REPORT("latency_budget_s")),
    Case("CompressionReport", "zipped_size", "type", "no", REPORT("zipped_size"), TypeError),
    Case("CompressionReport", "onnx_runtime", "type", "yes", REPORT("onnx_runtime"), TypeError),
    Case("CompressionDashboard", "histogram_every_n_steps", "range", -1, DASHBOARD("histogram_every_n_steps")),
    Case("CompressionDashboard", "include", "type", "*.dense", DASHBOARD("include"), TypeError),
    # Agent
    Case("Agent", "model", "missing file", "missing/model-folder", _agent("model")),
    Case("Agent", "labels", "type", "play,stop", _agent("labels"), TypeError),
    Case("Agent", "labels", "range", ["only"], _agent("labels")),
    Case("Agent", "num_labels", "range", 3, _agent("num_labels")),
    Case("Agent", "learning_rate", "range", 0, _agent("learning_rate")),
    Case("Agent", "learning_rate", "type", "1e-4", _agent("learning_rate"), TypeError),
    Case("Agent", "weight_decay", "range", -0.1, _agent("weight_decay")),
    Case("Agent", "warmup_fraction", "range", 1.0, _agent("warmup_fraction")),
    Case("Agent", "max_length", "range", 1, _agent("max_length")),
    Case("Agent", "max_length", "type", "64", _agent("max_length"), TypeError),
    Case("Agent", "student_layers", "range", [0, 9], _agent("student_layers")),
    Case("Agent", "student_layers", "type", "0,1", _agent("student_layers"), TypeError),
    Case("Agent", "student_layers", "range", "auto:6", _agent("student_layers")),
    Case("Agent", "student_layers", "type", "cosine:1", _agent("student_layers"), TypeError),
    Case("Agent", "student_intermediate_size", "range", 0, _agent("student_intermediate_size")),
    Case("Agent", "task", "choice", "seq2seq", _agent("task")),
    Case("Agent", "max_new_tokens", "range", 0, _agent("max_new_tokens")),
    Case("Agent", "system_prompt", "type", 7, _agent("system_prompt"), TypeError),
    Case("Agent", "list_actions", "type", "yes", _agent("list_actions"), TypeError),
    Case("Agent", "constrained", "type", "no", _agent("constrained"), TypeError),
    Case("Agent", "model", "range", "smollm3-135m", _agent("model")),
    # TextClassificationDataModule
    Case("TextClassificationDataModule", "dataset", "missing file", "missing-folder", _classification_data("dataset")),
    Case(
        "TextClassificationDataModule", "train_file", "missing file", "missing.csv", _classification_data("train_file")
    ),
    Case("TextClassificationDataModule", "val_file", "missing file", "missing.csv", _classification_data("val_file")),
    Case("TextClassificationDataModule", "test_file", "missing file", "missing.csv", _classification_data("test_file")),
    Case(
        "TextClassificationDataModule",
        "predict_file",
        "missing file",
        "missing.csv",
        _classification_data("predict_file"),
    ),
    Case("TextClassificationDataModule", "train_file", "corrupt", "latin1.csv", _classification_data("train_file")),
    Case("TextClassificationDataModule", "train_file", "corrupt", "empty-text.csv", _classification_data("train_file")),
    Case("TextClassificationDataModule", "text_column", "range", "utterance", _classification_data("text_column")),
    Case("TextClassificationDataModule", "label_column", "range", "intent", _classification_data("label_column")),
    Case("TextClassificationDataModule", "val_fraction", "range", 1.5, _classification_data("val_fraction")),
    Case(
        "TextClassificationDataModule",
        "tokenizer",
        "missing file",
        "missing/tokenizer",
        _classification_data("tokenizer"),
    ),
    Case("TextClassificationDataModule", "max_length", "range", 0, _classification_data("max_length")),
    Case("TextClassificationDataModule", "batch_size", "type", "32", _classification_data("batch_size"), TypeError),
    Case("TextClassificationDataModule", "eval_batch_size", "range", 0, _classification_data("eval_batch_size")),
    Case("TextClassificationDataModule", "padding", "choice", "left", _classification_data("padding")),
    Case(
        "TextClassificationDataModule",
        "group_by_length",
        "type",
        "yes",
        _classification_data("group_by_length"),
        TypeError,
    ),
    Case("TextClassificationDataModule", "shuffle_seed", "type", "7", _classification_data("shuffle_seed"), TypeError),
    Case("TextClassificationDataModule", "split_seed", "type", "0", _classification_data("split_seed"), TypeError),
    Case("TextClassificationDataModule", "num_workers", "range", -1, _classification_data("num_workers")),
    Case("TextClassificationDataModule", "labels_per_class", "range", 0, _classification_data("labels_per_class")),
    Case(
        "TextClassificationDataModule",
        "labels_per_class",
        "type",
        "10",
        _classification_data("labels_per_class"),
        TypeError,
    ),
    Case(
        "TextClassificationDataModule",
        "unlabeled_file",
        "missing file",
        "missing.csv",
        _classification_data("unlabeled_file"),
    ),
    Case("TextClassificationDataModule", "unlabeled_file", "range", "rest", _classification_data("unlabeled_file")),
    Case("TextClassificationDataModule", "task", "choice", "seq2seq", _classification_data("task")),
    Case("TextClassificationDataModule", "system_prompt", "type", 7, _classification_data("system_prompt"), TypeError),
    Case(
        "TextClassificationDataModule", "list_actions", "type", "yes", _classification_data("list_actions"), TypeError
    ),
    Case("TextClassificationDataModule (generation)", "max_length", "range", 8, _chat_data("max_length")),
    Case(
        "TextClassificationDataModule (generation)", "response_column", "range", "reply", _chat_data("response_column")
    ),
    Case(
        "TextClassificationDataModule", "response_column", "range", "response", _classification_data("response_column")
    ),
    Case(
        "TextClassificationDataModule (causal-lm)", "labels_per_class", "range", 10, _lm_task_data("labels_per_class")
    ),
    Case(
        "TextClassificationDataModule (generation)",
        "train_file",
        "corrupt",
        "indistinct-actions.csv",
        _chat_data("train_file"),
    ),
    Case(
        "TextClassificationDataModule (generation)",
        "unlabeled_file",
        "range",
        "texts.csv",
        _chat_data("unlabeled_file"),
    ),
    # LanguageModelingDataModule
    Case("LanguageModelingDataModule", "train_file", "missing file", "missing.jsonl", _lm_data("train_file")),
    Case("LanguageModelingDataModule", "val_file", "missing file", "missing.jsonl", _lm_data("val_file")),
    Case("LanguageModelingDataModule", "text_column", "range", "body", _lm_data("text_column")),
    Case("LanguageModelingDataModule", "max_length", "range", 0, _lm_data("max_length")),
    Case("LanguageModelingDataModule", "batch_size", "type", "8", _lm_data("batch_size"), TypeError),
    Case("LanguageModelingDataModule", "val_fraction", "range", 0.0, _lm_data("val_fraction")),
    Case("LanguageModelingDataModule", "num_workers", "range", -1, _lm_data("num_workers")),
    # command line
    Case("train.py fit", "--prune", "range", "1.5", _cli("--prune", "{value}"), shown="1.5"),
    Case("train.py fit", "--qat", "choice", "int3", _cli("--qat", "{value}")),
    Case("train.py fit", "--embeddings", "choice", "int2", _cli("--embeddings", "{value}")),
    Case("train.py fit", "--student-layers", "format", "a,b", _cli("--student-layers", "{value}")),
    Case("train.py fit", "--labels-per-class", "format", "ten", _cli("--labels-per-class", "{value}")),
    Case("agent-lightning export", "format", "choice", "tflite", _export("format")),
    Case(
        "agent-lightning export", "checkpoint", "missing file", "missing.ckpt", _export("checkpoint"), FileNotFoundError
    ),
    Case("agent-lightning export", "checkpoint", "corrupt", "truncated.ckpt", _export("checkpoint")),
    Case("agent-lightning export", "output", "range", "taken", _export("output"), FileExistsError),
    Case("agent-lightning learn", "--feedback", "missing file", "missing.db", _learn("--feedback")),
    Case("agent-lightning learn", "--epochs", "range", 0, _learn("--epochs")),
    Case("agent-lightning learn", "--feedback-repeats", "range", 0, _learn("--feedback-repeats")),
    Case("agent-lightning learn", "--config", "missing file", "missing.yaml", _learn("--config")),
    Case("agent-lightning learn", "--output", "range", "taken", _learn("--output"), FileExistsError),
    Case("agent-lightning serve", "model", "missing file", "missing.ckpt", _serve("model")),
    Case("agent-lightning serve", "--port", "range", 0, _serve("--port")),
    Case("agent-lightning serve", "--max-batch-size", "range", 0, _serve("--max-batch-size")),
    Case("agent-lightning serve", "--workers", "range", 0, _serve("--workers")),
    Case("agent-lightning serve", "--batch-timeout", "range", -1.0, _serve("--batch-timeout")),
    Case("agent-lightning serve", "--abstain-precision", "range", 1.5, _serve("--abstain-precision")),
]


@pytest.fixture
def env(tmp_path, tiny_bert, monkeypatch) -> dict:
    """A working folder holding the inputs the rows need (and nothing else), made the current directory."""
    from tests.conftest import tiny_rows_list, write_rows

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    train_csv = write_rows(inputs / "train.csv", tiny_rows_list())
    (inputs / "latin1.csv").write_bytes("text,label\ncafé au lait,order\nthé,order\n".encode("latin-1"))
    write_rows(inputs / "empty-text.csv", [("play jazz", "play"), ("", "play"), ("call mom", "call")])
    # an uncased tokenizer writes both answers alike
    write_rows(inputs / "indistinct-actions.csv", [("wake me", "set_alarm"), ("alarm at 6", "Set_Alarm")] * 3)
    write_rows(inputs / "texts.csv", [("play jazz", "")])
    agent_ckpt = _agent_checkpoint(inputs, tiny_bert)
    (inputs / "truncated.ckpt").write_bytes(agent_ckpt.read_bytes()[:4000])
    work = tmp_path / "work"
    (work / "taken").mkdir(parents=True)
    (work / "taken" / "keep.txt").write_text("x")
    for name in ("latin1.csv", "empty-text.csv", "indistinct-actions.csv", "texts.csv", "truncated.ckpt"):
        os.symlink(inputs / name, work / name)
    monkeypatch.chdir(work)
    from agent_lightning.serving import RequestStore

    store = RequestStore(inputs / "requests.db")  # one answered request with a correction
    store.record_feedback(store.record_answers([("play jazz", "call", 0.6)])[0], correct_action="play")
    env = {"tiny_bert": tiny_bert, "train_csv": str(train_csv), "agent_ckpt": str(agent_ckpt), "work": work}
    return {**env, "store": str(store.path)}


def _agent_checkpoint(folder: Path, tiny_bert: str) -> Path:
    import torch
    from lightning.pytorch import Trainer

    from agent_lightning import Agent

    torch.manual_seed(0)
    agent = Agent(model=tiny_bert, labels=["call", "play"])
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(agent)
    trainer.save_checkpoint(folder / "agent.ckpt")
    return folder / "agent.ckpt"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_clear_error_and_writes_nothing(case: Case, env: dict):
    before = sorted(p.relative_to(env["work"]) for p in env["work"].rglob("*"))
    with pytest.raises(case.error) as raised:
        case.build(case.value, env)
    message = str(raised.value)
    name = case.argument.lstrip("-")
    shown = case.shown or (repr(case.value) if not case.component.startswith("train.py") else str(case.value))
    assert name.lower() in message.lower(), f"the message does not name {case.argument}: {message}"
    assert shown in message, f"the message does not show the value {shown}: {message}"
    assert any(word in message.lower() for word in FIX_WORDS), f"the message gives no fix: {message}"
    assert sorted(p.relative_to(env["work"]) for p in env["work"].rglob("*")) == before  # nothing written


def table() -> str:
    """The markdown table of ``docs/bad-input.md``."""
    lines = [
        "# Bad input: what each argument refuses, and how",
        "",
        "Every row is a test in `tests/test_bad_input.py` (regenerate this file with",
        "`python -m tests.test_bad_input`). Each one raises before anything trains or is written, with a message",
        "that names the argument and the bad value and says what to pass instead; none leaves a file behind.",
        "Files named in the *value* column are missing, or written by the test as described (`latin1.csv`: not",
        "UTF-8; `empty-text.csv`: a row without text; `truncated.ckpt`: the first 4,000 bytes of a checkpoint;",
        "`taken`: an existing, non-empty folder).",
        "",
        "| component | argument | kind | value | error |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        lines.append(
            f"| `{case.component}` | `{case.argument}` | {case.kind} | `{case.value!r}` | `{case.error.__name__}` |"
        )
    return "\n".join(lines) + "\n"


def test_the_docs_table_lists_exactly_these_rows():
    assert DOC.read_text(encoding="utf-8") == table(), "docs/bad-input.md is stale: run python -m tests.test_bad_input"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(table(), encoding="utf-8")
    print(f"wrote {DOC} ({len(CASES)} rows)")
