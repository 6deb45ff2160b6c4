"""Distillation losses: small modules with the tensor shapes in their docstrings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HiddenStateLoss", "LogitDistillationLoss"]


class LogitDistillationLoss(nn.Module):
    """Hinton et al. (2015) logit distillation: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The ``T^2`` factor keeps the gradient scale independent of the temperature. Positions whose ``mask`` is false
    (e.g. padding in a language model) are left out of the mean.

    Shapes:
        - ``student_logits``: ``(B, C)`` or ``(B, L, C)``
        - ``teacher_logits``: same shape as ``student_logits``
        - ``mask``: optional, the leading shape ``(B,)`` or ``(B, L)``
        - output: a scalar, the mean over the (unmasked) rows

    Example:
        >>> loss = LogitDistillationLoss()
        >>> loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=2.0)
        tensor(0.)
    """

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
    ) -> Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                "differ in shape: the teacher must predict the same classes (or vocabulary) as the student."
            )
        log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        per_row = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
        if mask is not None:
            per_row = per_row[mask.bool()]
        return per_row.mean() * temperature**2


class HiddenStateLoss(nn.Module):
    """Mean squared error between student and teacher hidden states of mapped layers.

    When the widths differ, a learned linear ``projection`` maps the student's width to the teacher's (TinyBERT);
    its parameters are trained with the student.

    Args:
        student_width: hidden size of the student.
        teacher_width: hidden size of the teacher.
        num_layers: how many (student, teacher) layer pairs are compared; one projection each.

    Shapes:
        - ``student``: list of ``num_layers`` tensors ``(B, L, student_width)``
        - ``teacher``: list of ``num_layers`` tensors ``(B, L, teacher_width)``
        - ``mask``: optional ``(B, L)``, true for real tokens
        - output: a scalar, the mean over layers of the per-element MSE on unmasked tokens

    Example:
        >>> loss = HiddenStateLoss(4, 4, num_layers=1)
        >>> loss([torch.ones(2, 3, 4)], [torch.zeros(2, 3, 4)])
        tensor(1.)
    """

    def __init__(self, student_width: int, teacher_width: int, num_layers: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width) if student_width != teacher_width else nn.Identity()
            for _ in range(num_layers)
        )

    def forward(self, student: list[Tensor], teacher: list[Tensor], mask: Tensor | None = None) -> Tensor:
        losses = []
        for projection, s, t in zip(self.projections, student, teacher):
            s = projection(s.float())
            t = t.float()
            if mask is not None:
                keep = mask.bool()
                s, t = s[keep], t[keep]
            losses.append(F.mse_loss(s, t))
        return torch.stack(losses).mean()
