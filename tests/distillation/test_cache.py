from __future__ import annotations

import pytest
import torch

from agent_lightning.distillation.cache import TeacherLogitCache


def test_keys_ignore_padding_and_change_with_the_inputs():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    keys = TeacherLogitCache.keys((), {"input_ids": ids, "attention_mask": mask})
    repadded = TeacherLogitCache.keys((), {"input_ids": ids[:, :3], "attention_mask": mask[:, :3]})
    assert keys == repadded and keys[0] != keys[1]
    changed = TeacherLogitCache.keys((), {"input_ids": ids + (ids != 0).long(), "attention_mask": mask})
    assert not set(changed) & set(keys)


def test_get_put_and_disk_round_trip(tmp_path):
    cache = TeacherLogitCache(tmp_path / "c.pt")
    keys = [b"a", b"b"]
    assert cache.get(keys, torch.device("cpu")) is None
    logits = torch.randn(2, 5)
    cache.put(keys, logits)
    assert torch.equal(cache.get(keys, torch.device("cpu")), logits)
    assert cache.get([b"a", b"c"], torch.device("cpu")) is None  # a single miss recomputes the batch
    cache.save()
    again = TeacherLogitCache(tmp_path / "c.pt")
    assert len(again) == 2 and torch.equal(again.get([b"b"], torch.device("cpu"))[0], logits[1])


def test_sequence_logits_are_cached_at_the_masked_positions_as_top_k_and_the_tail():
    import math

    cache = TeacherLogitCache(top_k=3)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 50, generator=generator)  # (B, L, V)
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    cache.put([b"a", b"b"], logits, mask)
    # the same examples padded differently (another batch, other lengths): only the masked rows count
    again_mask = torch.tensor([[False, False, False, True, True, False]] + [[True] + [False] * 5] + [[False] * 6])
    assert cache.get([b"a", b"b", b"c"], torch.device("cpu"), again_mask) is None  # "c" was never stored
    restored = cache.get([b"a", b"b"], torch.device("cpu"), again_mask[:2])
    for (row, position), (new_row, new_position) in zip([(0, 1), (0, 2), (1, 0)], [(0, 3), (0, 4), (1, 0)]):
        original, rebuilt = logits[row, position], restored[new_row, new_position]
        top = original.topk(3).indices
        assert torch.equal(rebuilt[top], original[top])  # the top-k exactly
        tail = torch.ones(50, dtype=torch.bool)
        tail[top] = False
        # the tail keeps its total probability at temperature 1, spread evenly
        assert float(rebuilt[tail].logsumexp(0)) == pytest.approx(float(original[tail].logsumexp(0)), rel=1e-5)
        assert float(rebuilt[tail].std()) == pytest.approx(0.0, abs=1e-6)
        assert float(rebuilt.logsumexp(0)) == pytest.approx(float(original.logsumexp(0)), rel=1e-5)
    assert restored[0, 0].abs().sum() == 0  # outside the mask
    assert math.isclose(len(cache), 2)
    assert cache.get([b"a"], torch.device("cpu"), torch.tensor([[True, True, True, False]])) is None  # other positions
