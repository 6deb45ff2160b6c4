from __future__ import annotations

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
