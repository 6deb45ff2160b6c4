"""An exported agent measured against its fp32 teacher and the teacher's ONNX Runtime peers on the same requests:
accuracy, bytes, CPU latency (and, for a generative agent, answer tokens per second)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agent_lightning.agent import Agent
from agent_lightning.deployment.abstention import calibrate_abstention
from agent_lightning.deployment.export import LogitsProgram
from agent_lightning.deployment.measure import ModelInputs, compare_latency, file_bytes, saved_bytes
from agent_lightning.deployment.peers import PEERS, decoder_peers, onnx_runtime_peers
from agent_lightning.deployment.runtime import ExportedAgent, model_file
from agent_lightning.evaluation import action_accuracy

__all__ = ["RecipeSummary", "compare_with_teacher"]


@dataclass(frozen=True)
class RecipeSummary:
    """The exported student against the fp32 teacher, measured on the same requests.

    Attributes:
        split: the data split the accuracies are measured on.
        examples: its size.
        teacher_acc: the fp32 teacher's accuracy.
        student_acc: the exported int8 program's accuracy.
        teacher_bytes: bytes of the teacher's saved ``state_dict``; ``teacher_zipped`` deflate-compressed.
        student_bytes: bytes of the exported ``model.pt``; ``student_zipped`` deflate-compressed.
        latency_ms: ``{"teacher_b1": ms, "student_b1": ms, "teacher_b32": ..., "student_b32": ...}``, and
            ``"<peer>_b1"``/``"<peer>_b32"`` for each of ``peers``.
        abstention: the student's abstention threshold chosen on the validation split and what it does on this
            split: ``{"target_precision", "threshold", "coverage", "precision"}``; ``None`` when not measured.
        student_format: the export's format (``"onnx"`` or ``"int8"``: TorchScript).
        peers: the teacher's ONNX Runtime peers (:data:`~agent_lightning.deployment.peers.PEERS`) by key:
            ``{"acc", "bytes", "zipped"}``; empty when not measured.
        tokens_per_s: a generative agent's answer tokens (end token included) per second at batch 1, by the keys
            of ``latency_ms`` without the batch (``"teacher"``, ``"student"``, peers); empty for classifiers. For a
            generative agent, batch 1 is the time to answer one request alone (prompt, prefill, decoding) and batch
            32 the time to answer 32 requests at once.
    """

    split: str
    examples: int
    teacher_acc: float
    student_acc: float
    teacher_bytes: int
    teacher_zipped: int
    student_bytes: int
    student_zipped: int
    latency_ms: dict[str, float]
    abstention: dict[str, float | None] | None = None
    student_format: str = "int8"
    peers: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    tokens_per_s: dict[str, float] = dataclasses.field(default_factory=dict)

    def speedup(self, batch: int, baseline: str = "teacher") -> float:
        """``baseline``'s latency (the eager teacher, or a peer's key) over the student's at ``batch``."""
        return self.latency_ms[f"{baseline}_b{batch}"] / self.latency_ms[f"student_b{batch}"]

    def markdown(self) -> list[str]:
        """A markdown table: the eager teacher, its ONNX Runtime peers and the exported student, each with its ratio
        to the eager teacher; the student's also to the ONNX Runtime int8 peer when measured."""
        mb = 1e6
        peer = "ort_int8" if "ort_int8" in self.peers else None
        tokens = bool(self.tokens_per_s)
        what = "per request" if tokens else "CPU latency,"
        rows = [
            f"| model | {self.split} accuracy ({self.examples} requests) | bytes on disk | bytes zipped | {what} "
            f"batch 1 | {what} batch 32 |" + (" answer tokens/s, batch 1 |" if tokens else ""),
            "|---|---|---|---|---|---|" + ("---|" if tokens else ""),
            f"| fp32 teacher, PyTorch eager | {100 * self.teacher_acc:.2f} % | {self.teacher_bytes / mb:.2f} MB | "
            f"{self.teacher_zipped / mb:.2f} MB | {self.latency_ms['teacher_b1']:.1f} ms | "
            f"{self.latency_ms['teacher_b32']:.1f} ms |" + self._tokens("teacher"),
        ]
        for key, measured in self.peers.items():
            rows.append(
                f"| {PEERS[key]} | {100 * measured['acc']:.2f} % ({100 * (measured['acc'] - self.teacher_acc):+.2f} pt)"
                f" | {measured['bytes'] / mb:.2f} MB | {measured['zipped'] / mb:.2f} MB "
                f"({self.teacher_zipped / measured['zipped']:.1f}x smaller) | "
                + " | ".join(
                    f"{self.latency_ms[f'{key}_b{b}']:.1f} ms "
                    f"({self.latency_ms[f'teacher_b{b}'] / self.latency_ms[f'{key}_b{b}']:.2f}x faster)"
                    for b in (1, 32)
                )
                + " |"
                + self._tokens(key)
            )
        versus = ""
        if peer:
            versus = f"; {self.peers[peer]['zipped'] / self.student_zipped:.1f}x vs the ONNX Runtime int8 teacher"
        speeds = [
            f"{self.latency_ms[f'student_b{b}']:.1f} ms ({self.speedup(b):.2f}x faster"
            + (f"; {self.speedup(b, peer):.2f}x vs the ONNX Runtime int8 teacher)" if peer else ")")
            for b in (1, 32)
        ]
        kind = "ONNX Runtime" if self.student_format == "onnx" else "TorchScript"
        rows.append(
            f"| **exported int8 student** ({kind}) | **{100 * self.student_acc:.2f} %** "
            f"({100 * (self.student_acc - self.teacher_acc):+.2f} pt) | {self.student_bytes / mb:.2f} MB | "
            f"**{self.student_zipped / mb:.2f} MB** ({self.teacher_zipped / self.student_zipped:.1f}x smaller{versus}) "
            f"| **{speeds[0]}** | **{speeds[1]}** |" + self._tokens("student")
        )
        return [*rows, *self._abstention_rows()]

    def _tokens(self, key: str) -> str:
        return f" {self.tokens_per_s[key]:.1f} |" if self.tokens_per_s else ""

    def _abstention_rows(self) -> list[str]:
        if self.abstention is None:
            return []
        a = self.abstention
        kept = "nothing answered" if a["precision"] is None else f"precision {100 * a['precision']:.2f} %"
        return [
            "",
            f"Abstention: the student answers when its confidence is at least {a['threshold']:.3f} (chosen on the "
            f"validation split for precision {a['target_precision']:g}): {100 * a['coverage']:.2f} % of {self.split} "
            f"requests answered, {kept}.",
        ]


def compare_with_teacher(
    teacher: torch.nn.Module,
    export_folder: str | os.PathLike,
    texts: Sequence[str],
    labels: Sequence[str],
    split: str = "test",
    latency_budget_s: float = 60.0,
    abstain: tuple[Sequence[str], Sequence[str], float] | None = None,
    peers: bool = True,
) -> RecipeSummary:
    """Measure an exported int8 agent against its fp32 teacher (an :class:`~agent_lightning.Agent`) on ``texts``.

    Accuracy on all ``texts``; bytes of the teacher's ``state_dict`` and of the export's model file, plain and
    deflate-compressed; CPU latency of ``(input_ids, attention_mask) -> logits`` at batch 1 and 32 on the first
    requests of ``texts`` (padded to the longest, as served; tokenization excluded for every model), every model
    timed round-robin in one loop. With ``peers``, the same for the teacher under ONNX Runtime, fp32 and
    ``quantize_dynamic`` int8 (:func:`~agent_lightning.deployment.peers.onnx_runtime_peers`, written to a temporary
    folder). With ``abstain=(texts, labels, precision)`` of other data (the validation split), also the student's
    abstention threshold chosen there for ``precision`` and its coverage and precision on ``texts``.

    Raises:
        ValueError: ``texts`` and ``labels`` differ in length or are empty.
    """
    if not texts or len(texts) != len(labels):
        raise ValueError(f"compare_with_teacher needs as many labels as texts, got {len(texts)} and {len(labels)}.")
    exported = ExportedAgent(export_folder)
    teacher = teacher.cpu().eval()
    teacher_bytes, teacher_zipped = saved_bytes(teacher.model)
    student_bytes, student_zipped = file_bytes(model_file(export_folder))
    generative = exported.task == "generation"
    tokens: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="peers-") as folder:
        others = {}
        if peers:
            others = decoder_peers(teacher, folder) if generative else onnx_runtime_peers(teacher, folder)
        if generative:
            latency, tokens = _answer_latency(
                {"teacher": teacher, "student": exported, **others}, texts, latency_budget_s
            )
        else:
            latency = _logit_latency(teacher, exported, others, texts, latency_budget_s)
        measured = {}
        for key, peer in others.items():
            size, zipped = file_bytes(model_file(peer.folder))
            measured[key] = {"acc": action_accuracy(peer, texts, labels), "bytes": size, "zipped": zipped}
    decisions = exported.act(list(texts))  # the student's answers, for its accuracy and its abstention
    abstention = None
    if abstain is not None:
        *held_out, precision = abstain
        threshold = calibrate_abstention(exported, *held_out, precision)
        coverage, kept_precision = threshold.measure(decisions, labels)
        abstention = {"target_precision": precision, "threshold": threshold.threshold}
        abstention.update(coverage=coverage, precision=kept_precision)
    return RecipeSummary(
        split=split,
        examples=len(texts),
        teacher_acc=action_accuracy(teacher, texts, labels),
        student_acc=sum(action == label for (action, _), label in zip(decisions, labels)) / len(labels),
        teacher_bytes=teacher_bytes,
        teacher_zipped=teacher_zipped,
        student_bytes=student_bytes,
        student_zipped=student_zipped,
        latency_ms=latency,
        abstention=abstention,
        student_format=exported.format,
        peers=measured,
        tokens_per_s=tokens,
    )


def _logit_latency(
    teacher: Agent, exported: ExportedAgent, others: dict[str, ExportedAgent], texts: Sequence[str], budget_s: float
) -> dict[str, float]:
    """ms of ``(input_ids, attention_mask) -> logits`` at batch 1 and 32 (tokenization excluded), round-robin."""
    programs = {"teacher": LogitsProgram(teacher.model).eval(), "student": exported.program}
    programs.update({key: peer.program for key, peer in others.items()})
    latency: dict[str, float] = {}
    for batch in (1, 32):
        encoded = exported.encode([texts[i % len(texts)] for i in range(batch)])
        inputs = ModelInputs((encoded["input_ids"], encoded["attention_mask"]))
        seconds = compare_latency(programs, inputs, 30, 3, budget_s)
        latency.update({f"{name}_b{batch}": 1000 * s for name, s in seconds.items()})
    return latency


class _Answering:
    """Answers ``texts`` one request at a time (``batch=1``) or in one call: a timed pass of a generative agent."""

    def __init__(self, actor: Any, texts: Sequence[str], batch: int) -> None:
        self.actor, self.texts, self.batch = actor, list(texts), batch

    def __call__(self) -> list[tuple[str, float]]:
        if self.batch > 1:
            return self.actor.act(self.texts)
        return [decision for text in self.texts for decision in self.actor.act([text])]


def _answer_latency(
    actors: dict[str, Any], texts: Sequence[str], budget_s: float, alone: int = 8
) -> tuple[dict[str, float], dict[str, float]]:
    """Generative agents, round-robin: ms per request answered alone (prompt, prefill and decoding; the median pass
    over ``alone`` requests, divided by them), ms for 32 requests answered at once, and answer tokens per second at
    batch 1 (each agent's own answers' tokens, end token included)."""
    single = [texts[i % len(texts)] for i in range(alone)]
    batch = [texts[i % len(texts)] for i in range(32)]
    latency: dict[str, float] = {}
    seconds = compare_latency({k: _Answering(a, single, 1) for k, a in actors.items()}, ModelInputs(), 10, 1, budget_s)
    latency.update({f"{name}_b1": 1000 * s / alone for name, s in seconds.items()})
    seconds = compare_latency({k: _Answering(a, batch, 32) for k, a in actors.items()}, ModelInputs(), 5, 1, budget_s)
    latency.update({f"{name}_b32": 1000 * s for name, s in seconds.items()})
    tokens = {}
    for name, actor in actors.items():
        chat = actor.chat if isinstance(actor, ExportedAgent) else actor.chat_prompt
        count = sum(len(chat.response_ids(answer)) for answer, _ in _Answering(actor, single, 1)())
        tokens[name] = count / (latency[f"{name}_b1"] * alone / 1000)
    return latency, tokens
