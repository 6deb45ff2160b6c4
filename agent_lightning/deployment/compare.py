"""An exported agent measured against its fp32 teacher on the same requests: accuracy, bytes, CPU latency."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agent_lightning.deployment.abstention import calibrate_abstention
from agent_lightning.deployment.export import LogitsProgram
from agent_lightning.deployment.measure import ModelInputs, compare_latency, file_bytes, saved_bytes
from agent_lightning.deployment.runtime import PROGRAM, ExportedAgent
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
        latency_ms: ``{"teacher_b1": ms, "student_b1": ms, "teacher_b32": ..., "student_b32": ...}``.
        abstention: the student's abstention threshold chosen on the validation split and what it does on this
            split: ``{"target_precision", "threshold", "coverage", "precision"}``; ``None`` when not measured.
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

    def speedup(self, batch: int) -> float:
        """Teacher latency over student latency at ``batch``."""
        return self.latency_ms[f"teacher_b{batch}"] / self.latency_ms[f"student_b{batch}"]

    def markdown(self) -> list[str]:
        """A markdown table: teacher, student and their ratio."""
        mb = 1e6
        return [
            "| | fp32 teacher | exported int8 student | ratio |",
            "|---|---|---|---|",
            f"| {self.split} accuracy ({self.examples} requests) | {100 * self.teacher_acc:.2f} % | "
            f"{100 * self.student_acc:.2f} % | {100 * (self.student_acc - self.teacher_acc):+.2f} pt |",
            f"| bytes on disk | {self.teacher_bytes / mb:.2f} MB | {self.student_bytes / mb:.2f} MB | "
            f"{self.teacher_bytes / self.student_bytes:.1f}x smaller |",
            f"| bytes zipped | {self.teacher_zipped / mb:.2f} MB | {self.student_zipped / mb:.2f} MB | "
            f"{self.teacher_zipped / self.student_zipped:.1f}x smaller |",
            *(
                f"| CPU latency, batch {b} | {self.latency_ms[f'teacher_b{b}']:.1f} ms | "
                f"{self.latency_ms[f'student_b{b}']:.1f} ms | {self.speedup(b):.2f}x faster |"
                for b in (1, 32)
            ),
            *self._abstention_rows(),
        ]

    def _abstention_rows(self) -> list[str]:
        if self.abstention is None:
            return []
        a = self.abstention
        kept = "nothing answered" if a["precision"] is None else f"precision {100 * a['precision']:.2f} %"
        return [
            f"| abstention: answers kept at confidence >= {a['threshold']:.3f} (chosen on validation for precision "
            f"{a['target_precision']:g}) | | {100 * a['coverage']:.2f} % of {self.split} requests, {kept} | |"
        ]


def compare_with_teacher(
    teacher: torch.nn.Module,
    export_folder: str | os.PathLike,
    texts: Sequence[str],
    labels: Sequence[str],
    split: str = "test",
    latency_budget_s: float = 60.0,
    abstain: tuple[Sequence[str], Sequence[str], float] | None = None,
) -> RecipeSummary:
    """Measure an exported int8 agent against its fp32 teacher (an :class:`~agent_lightning.Agent`) on ``texts``.

    Accuracy of both on all ``texts``; bytes of the teacher's ``state_dict`` and of the export's ``model.pt``, plain
    and deflate-compressed; CPU latency of ``(input_ids, attention_mask) -> logits`` at batch 1 and 32 on the first
    requests of ``texts`` (padded to the longest, as served), teacher and program timed round-robin. With
    ``abstain=(texts, labels, precision)`` of other data (the validation split), also the student's abstention
    threshold chosen there for ``precision`` and its coverage and precision on ``texts``.

    Raises:
        ValueError: ``texts`` and ``labels`` differ in length or are empty.
    """
    if not texts or len(texts) != len(labels):
        raise ValueError(f"compare_with_teacher needs as many labels as texts, got {len(texts)} and {len(labels)}.")
    exported = ExportedAgent(export_folder)
    teacher = teacher.cpu().eval()
    teacher_bytes, teacher_zipped = saved_bytes(teacher.model)
    student_bytes, student_zipped = file_bytes(Path(export_folder) / PROGRAM)
    latency: dict[str, float] = {}
    program = LogitsProgram(teacher.model).eval()
    for batch in (1, 32):
        encoded = exported.encode([texts[i % len(texts)] for i in range(batch)])
        inputs = ModelInputs((encoded["input_ids"], encoded["attention_mask"]))
        seconds = compare_latency({"teacher": program, "student": exported.program}, inputs, 30, 3, latency_budget_s)
        latency.update({f"{name}_b{batch}": 1000 * s for name, s in seconds.items()})
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
    )
