"""Distillation losses: small modules with the tensor shapes in their docstrings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionDistillationLoss", "HiddenStateLoss", "LogitDistillationLoss"]


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


class AttentionDistillationLoss(nn.Module):
    """MiniLM-style self-attention distillation: ``KL(teacher attention || student attention)`` per query token.

    Attention distributions are rebuilt from the captured query and key projections,
    ``softmax(q k^T / sqrt(head_dim))`` with padded keys masked out, which is exactly the attention of BERT-like
    models (absolute positions). When the head counts differ, the distributions are averaged over heads first.

    Shapes:
        - ``student_query``/``student_key``: ``(B, L, H_s * d_s)``
        - ``teacher_query``/``teacher_key``: ``(B, L, H_t * d_t)``
        - ``mask``: optional ``(B, L)``, true for real tokens
        - output: a scalar, the mean KL over heads and real query tokens

    Example:
        >>> q = torch.randn(2, 5, 8)
        >>> AttentionDistillationLoss()(q, q, q, q, student_heads=2, teacher_heads=2).abs() < 1e-6
        tensor(True)
    """

    def forward(
        self,
        student_query: Tensor,
        student_key: Tensor,
        teacher_query: Tensor,
        teacher_key: Tensor,
        student_heads: int,
        teacher_heads: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        log_student = _log_attention(student_query, student_key, student_heads, mask)
        log_teacher = _log_attention(teacher_query, teacher_key, teacher_heads, mask)
        if student_heads != teacher_heads:  # compare head-averaged distributions
            log_student = log_student.exp().mean(1, keepdim=True).clamp_min(1e-12).log()
            log_teacher = log_teacher.exp().mean(1, keepdim=True).clamp_min(1e-12).log()
        per_query = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)  # (B, H, L)
        if mask is not None:
            per_query = per_query.transpose(1, 2)[mask.bool()]  # real query tokens only
        return per_query.mean()


def _log_attention(query: Tensor, key: Tensor, heads: int, mask: Tensor | None) -> Tensor:
    batch, length, width = query.shape
    head_dim = width // heads
    q = query.float().view(batch, length, heads, head_dim).transpose(1, 2)
    k = key.float().view(batch, length, heads, head_dim).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / head_dim**0.5  # (B, H, L, L)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)
