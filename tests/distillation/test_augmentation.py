"""replace_tokens: only inner attended tokens change, about the asked fraction, with tokens of the batch."""

from __future__ import annotations

import torch

from agent_lightning.distillation.augmentation import replace_tokens


def test_replaces_about_the_fraction_of_inner_tokens_only():
    generator, data = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (64, 40), generator=data)  # seeded: the test does not depend on test order
    ids[:, 0], mask = 101, torch.ones_like(ids)
    lengths = torch.randint(5, 41, (64,), generator=data)
    for row, length in enumerate(lengths.tolist()):
        ids[row, length - 1] = 102
        ids[row, length:] = 0
        mask[row, length:] = 0
    out = replace_tokens(ids, mask, 0.3, generator)
    assert out.shape == ids.shape and out.dtype == ids.dtype
    assert torch.equal(out[:, 0], ids[:, 0]) and torch.equal(out[mask == 0], ids[mask == 0])  # CLS and padding kept
    assert all(out[r, lengths[r] - 1] == 102 for r in range(64))  # the last real token (SEP) kept
    inner = mask.bool().clone()
    inner[:, 0] = False
    inner[torch.arange(64), lengths - 1] = False
    changed = (out != ids) & inner
    assert not ((out != ids) & ~inner).any()
    # 0.3 asked (binomial over ~1,400 tokens: sd 0.012); a replacement may equal the original token
    assert 0.25 < changed.sum() / inner.sum() < 0.35
    assert set(out[changed].tolist()) <= set(ids[inner].tolist())  # drawn from the batch's own tokens
    again = replace_tokens(ids, mask, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: reproducible
    assert torch.equal(replace_tokens(ids, mask, 0.0, generator), ids)
