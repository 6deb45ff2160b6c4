from __future__ import annotations

import math

import pytest
import torch

from agent_lightning.distillation.losses import HiddenStateLoss, LogitDistillationLoss


def test_kd_loss_equals_a_hand_computation():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s = [math.exp(v / temperature) for v in s_row]
        t = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(s) for v in s]
        p_t = [v / sum(t) for v in t]
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    expected = expected / 2 * temperature**2
    assert LogitDistillationLoss()(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)  # float32


def test_kd_loss_masks_positions_and_checks_shapes():
    loss = LogitDistillationLoss()
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    expected = loss(student[mask.bool()], teacher[mask.bool()], 3.0)
    assert loss(student, teacher, 3.0, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\) differ in shape"):
        loss(torch.randn(2, 3), torch.randn(2, 4), 1.0)


def test_hidden_loss_projects_when_widths_differ():
    same = HiddenStateLoss(4, 4, num_layers=2)
    assert not list(same.parameters())
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert same([a, a], [b, b]).item() == pytest.approx(torch.nn.functional.mse_loss(a, b).item(), rel=1e-6)
    projected = HiddenStateLoss(4, 6, num_layers=1)
    assert projected.projections[0].weight.shape == (6, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    value = projected([a], [torch.randn(2, 3, 6)], mask)
    value.backward()
    assert projected.projections[0].weight.grad is not None


def test_standardized_hidden_loss_weighs_every_dimension_alike():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    teacher[..., 0] *= 1000.0  # a massive dimension
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    s, t = student[mask.bool()].tolist(), teacher[mask.bool()].tolist()  # 5 tokens
    expected = 0.0
    for d in range(4):
        column = [row[d] for row in t]
        mean = sum(column) / len(column)
        std = (sum((v - mean) ** 2 for v in column) / len(column)) ** 0.5  # population std
        expected += sum(((a[d] - b[d]) / std) ** 2 for a, b in zip(s, t)) / (5 * 4)
    loss = HiddenStateLoss(4, 4, num_layers=1, standardize=True)([student], [teacher], mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    plain = HiddenStateLoss(4, 4, num_layers=1)([student], [teacher], mask)
    assert plain.item() > 1e4 * loss.item()  # the plain MSE is the massive dimension's alone


def test_attention_loss_matches_explicit_attention_maps():
    from agent_lightning.distillation.losses import AttentionDistillationLoss

    torch.manual_seed(0)
    batch, length, heads, dim = 2, 5, 2, 4
    sq, sk, tq, tk = (torch.randn(batch, length, heads * dim) for _ in range(4))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    def maps(q, k):
        q = q.view(batch, length, heads, dim).transpose(1, 2)
        k = k.view(batch, length, heads, dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / dim**0.5
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        return scores.softmax(-1)

    student, teacher = maps(sq, sk), maps(tq, tk)
    total, count = 0.0, 0
    for b in range(batch):
        for h in range(heads):
            for i in range(int(mask[b].sum())):
                t, s = teacher[b, h, i], student[b, h, i]
                keep = t > 0
                total += float((t[keep] * (t[keep].log() - s[keep].log())).sum())
                count += 1
    value = AttentionDistillationLoss()(sq, sk, tq, tk, heads, heads, mask)
    assert value.item() == pytest.approx(total / count, rel=1e-4)
    assert AttentionDistillationLoss()(tq, tk, tq, tk, heads, heads, mask).item() == pytest.approx(0.0, abs=1e-6)


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [v / sum(exps) for v in exps]


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "skew", "skew_reverse"])
def test_decoder_divergences_equal_hand_computations_on_fixed_logits(divergence):
    student = torch.tensor(
        [[[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, 0.0]], [[0.0, 3.0, 0.0, 1.0], [2.0, 1.0, 0.0, 0.5]]]
    )
    teacher = torch.tensor([[[2.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 4.0, 1.0], [1.0, 1.0, 1.0, 0.0]]])
    mask = torch.tensor([[True, False], [True, True]])  # e.g. the positions that predict a response token
    temperature, skew = 1.5, 0.2
    values = []
    for b in range(2):
        for t in range(2):
            if not mask[b, t]:
                continue
            p = _softmax(teacher[b, t].tolist(), temperature)
            q = _softmax(student[b, t].tolist(), temperature)
            value = {
                "forward": lambda: _kl(p, q),
                "reverse": lambda: _kl(q, p),
                "skew": lambda: _kl(p, [skew * x + (1 - skew) * y for x, y in zip(p, q)]),
                "skew_reverse": lambda: _kl(q, [skew * y + (1 - skew) * x for x, y in zip(p, q)]),
            }[divergence]()
            values.append(value)
    expected = sum(values) / len(values) * temperature**2
    loss = LogitDistillationLoss(divergence, skew=skew)(student, teacher, temperature, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_divergences_are_zero_for_equal_distributions_and_choices_are_checked():
    logits = torch.randn(3, 7)
    for divergence in ("forward", "reverse", "skew", "skew_reverse"):
        assert LogitDistillationLoss(divergence)(logits, logits, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"divergence='js' is not a choice"):
        LogitDistillationLoss("js")
    with pytest.raises(ValueError, match=r"skew=1.0 must be a number in \(0, 1\)"):
        LogitDistillationLoss("skew", skew=1.0)
