"""Distillation losses: small modules with the tensor shapes in their docstrings."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DIVERGENCES", "AttentionDistillationLoss", "Divergence", "HiddenStateLoss", "LogitDistillationLoss"]

Divergence = Literal["forward", "reverse", "skew", "skew_reverse"]
DIVERGENCES: tuple[str, ...] = ("forward", "reverse", "skew", "skew_reverse")


class LogitDistillationLoss(nn.Module):
    """Logit distillation: ``T^2 * D(teacher_T, student_T)`` for a divergence ``D`` between the temperature-``T``
    softmaxes of teacher (``p``) and student (``q``), averaged over the (unmasked) rows.

    Divergences (``divergence``):

    - ``"forward"``: ``KL(p || q)`` (Hinton et al. 2015): mean-seeking, the student covers every mode of the teacher;
    - ``"reverse"``: ``KL(q || p)`` (MiniLLM, Gu et al. 2024): mode-seeking, the student puts no mass where the
      teacher puts none, which suits generation by a small decoder;
    - ``"skew"``: skew forward KL ``KL(p || a p + (1 - a) q)`` with ``a = skew`` (DistiLLM, Ko et al. 2024): bounded
      and smoother gradients than forward KL while the student is far from the teacher;
    - ``"skew_reverse"``: skew reverse KL ``KL(q || a q + (1 - a) p)`` (DistiLLM's other variant).

    The ``T^2`` factor keeps the gradient scale independent of the temperature. Positions whose ``mask`` is false
    (e.g. padding, or the prompt of a chat example) are left out of the mean.

    Args:
        divergence: ``"forward"``, ``"reverse"``, ``"skew"`` or ``"skew_reverse"``.
        skew: the mixing weight ``a`` of the skewed divergences, in ``(0, 1)``.

    Shapes:
        - ``student_logits``: ``(B, C)`` or ``(B, L, C)``
        - ``teacher_logits``: same shape as ``student_logits``
        - ``mask``: optional, the leading shape ``(B,)`` or ``(B, L)``
        - output: a scalar, the mean over the (unmasked) rows

    Raises:
        ValueError: an unknown divergence or a skew outside ``(0, 1)``.

    Example:
        >>> loss = LogitDistillationLoss()
        >>> loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=2.0)
        tensor(0.)
        >>> student, teacher = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
        >>> reverse = LogitDistillationLoss("reverse")(student, teacher, 1.0)
        >>> bool(reverse == LogitDistillationLoss()(teacher, student, 1.0))  # KL(q || p): the arguments swapped
        True
    """

    def __init__(self, divergence: Divergence = "forward", skew: float = 0.1) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence={divergence!r} is not a choice; use one of {', '.join(DIVERGENCES)}.")
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 < skew < 1:
            raise ValueError(f"skew={skew!r} must be a number in (0, 1), the weight of the mixture, e.g. skew=0.1.")
        self.divergence, self.skew = divergence, float(skew)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
    ) -> Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                "differ in shape: the teacher must predict the same classes (or vocabulary) as the student."
            )
        log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
        log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        if self.divergence == "forward":
            per_row = _kl(log_p, log_q)
        elif self.divergence == "reverse":
            per_row = _kl(log_q, log_p)
        elif self.divergence == "skew":
            per_row = _kl(log_p, _mixture(log_p, log_q, self.skew))
        else:
            per_row = _kl(log_q, _mixture(log_q, log_p, self.skew))
        if mask is not None:
            per_row = per_row[mask.bool()]
        return per_row.mean() * temperature**2


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``KL(a || b)`` over the last dimension from log-probabilities (``0 * log 0 = 0``, also for ``-inf`` logits)."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def _mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """``log(weight * a + (1 - weight) * b)`` from log-probabilities."""
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log(1 - weight))


class HiddenStateLoss(nn.Module):
    """Mean squared error between student and teacher hidden states of mapped layers.

    When the widths differ, a learned linear ``projection`` maps the student's width to the teacher's (TinyBERT);
    its parameters are trained with the student.

    With ``standardize``, each hidden dimension's error is divided by the teacher's standard deviation of that
    dimension over the compared tokens (detached): every dimension weighs alike. Decoders such as SmolLM2 carry a few
    massive activations in their residual stream (thousands of times the others on some tokens), so a plain MSE is
    almost only theirs.

    Args:
        student_width: hidden size of the student.
        teacher_width: hidden size of the teacher.
        num_layers: how many (student, teacher) layer pairs are compared; one projection each.
        standardize: divide each dimension by the teacher's standard deviation of it (see above).

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

    def __init__(self, student_width: int, teacher_width: int, num_layers: int, standardize: bool = False) -> None:
        super().__init__()
        self.standardize = standardize
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
            if self.standardize:  # (tokens, width): each dimension over the teacher's spread of it
                s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
                scale = t.detach().std(dim=0, correction=0).clamp_min(1e-6)
                s, t = s / scale, t / scale
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
