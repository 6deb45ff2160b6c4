"""Pruning without a Trainer: the mask algorithms on tensors, and the Pruner on small models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from agent_lightning.pruning import Pruner, PruningConfig, StepSchedule, prune
from agent_lightning.pruning.masks import keep_largest, magnitude_masks, n_m_masks, scores_with_history


def test_keep_largest_prunes_exactly_the_lowest_scores():
    score = torch.tensor([[0.5, -2.0, 0.1], [3.0, 0.2, 0.0]]).abs()
    keep = keep_largest(score, 3)
    assert keep.tolist() == [[True, True, False], [True, False, False]]


def test_layer_scope_reaches_the_target_in_each_layer_and_global_overall():
    scores = {"a": torch.arange(1.0, 11.0), "b": torch.arange(100.0, 110.0)}
    layer = magnitude_masks(scores, 0.3, "layer")
    assert [int((~m).sum()) for m in layer.values()] == [3, 3]
    global_ = magnitude_masks(scores, 0.3, "global")
    assert int((~global_["a"]).sum()) == 6 and bool(global_["b"].all())  # one threshold: the small layer pays


def test_masks_only_grow_across_updates():
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    first = magnitude_masks({"w": scores_with_history(weight, None)}, 0.25)["w"]
    later_weight = torch.tensor([10.0, 2.0, 3.0, 4.0])  # the pruned weight "grew" in between
    second = magnitude_masks({"w": scores_with_history(later_weight, first)}, 0.5)["w"]
    assert first.tolist() == [False, True, True, True]
    assert second.tolist() == [False, False, True, True]


def test_n_m_masks_keep_n_of_every_m_in_both_layouts():
    torch.manual_seed(0)
    score = torch.rand(4, 8)
    keep = n_m_masks(score, 2, 4)
    assert keep.reshape(4, 2, 4).sum(-1).eq(2).all()
    transposed = n_m_masks(score.t().contiguous(), 2, 4, transposed=True)  # Conv1D stores (in, out)
    assert torch.equal(transposed, keep.t())


def test_pruner_one_shot_on_a_plain_model_and_its_state_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    pruner = Pruner(model, PruningConfig(sparsity=0.75, scope="global"))
    assert list(pruner.targets) == ["0", "2"]  # the last linear (the head) is left alone
    pruner.update(1.0)
    pruner.apply()
    assert pruner.sparsity() == (0.75, 128)
    assert float((model[4].weight == 0).float().mean()) == 0.0
    copy = Pruner(model, PruningConfig(sparsity=0.75, scope="global"))
    copy.load_state_dict(pruner.state_dict())
    assert all(torch.equal(copy.masks[k], pruner.masks[k]) for k in pruner.masks)
    other = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="name parameters this model does not have"):
        Pruner(other, PruningConfig()).load_state_dict({**pruner.state_dict(), "keep": {"9.weight": torch.ones(1)}})


def test_masked_weights_stay_zero_through_optimizer_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    for step in range(3):
        model(torch.randn(4, 8)).sum().backward()
        if step == 1:
            pruner.update(1.0)
            pruner.zero_optimizer_moments([optimizer])
        pruner.mask_gradients()
        optimizer.step()
        optimizer.zero_grad()
        pruner.apply()
    assert torch.all(model[0].weight[~pruner.masks["0.weight"]] == 0)
    assert pruner.sparsity()[0] == 0.5


def test_structured_prune_removes_neurons_and_heads_physically():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    pruner = Pruner(model, PruningConfig(sparsity=0.5, method="structured", head_sparsity=0.5))
    pruner.update(1.0)
    pruner.apply()
    masked = model(input_ids=ids).logits
    assert pruner.unit_sparsity() == (0.5, 0.5)
    before, after = pruner.remove_structure()
    assert after < before
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 16
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 8  # 2 of 4 heads of width 4
    assert torch.allclose(model(input_ids=ids).logits, masked, atol=1e-5)


def test_prune_verb_n_m_and_a_pattern_that_does_not_divide():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    pruner = prune(model, PruningConfig(sparsity=0.5, method="n:m", pattern="2:4"))
    assert pruner.sparsity()[0] == 0.5
    with pytest.raises(ValueError, match="has 6 inputs, not a multiple of 4"):
        prune(model, PruningConfig(sparsity=0.5, method="n:m"), include=["0", "2"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sparsity": "0.5"}, TypeError, r"sparsity='0.5' must be a number in \(0, 1\)"),
        ({"method": "n:m", "pattern": 24}, TypeError, "pattern=24 must be a string 'N:M'"),
        ({"method": "n:m", "pattern": "2-4"}, ValueError, "pattern='2-4' must look like 'N:M'"),
        ({"scope": "all"}, ValueError, "scope='all' is not a choice; use 'layer' or 'global'"),
    ],
)
def test_config_refuses_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        PruningConfig(**kwargs)


def test_schedule_is_cubic_and_exact_at_the_end():
    schedule = StepSchedule(start=10, end=20, frequency=5, kind="cubic", owner="Pruning")
    schedule.resolve(30)
    assert [schedule.fraction(s) for s in (5, 10, 15, 20, 25)] == [0.0, 0.0, 0.875, 1.0, 1.0]
    assert [s for s in range(30) if schedule.is_update_step(s)][:4] == [10, 15, 20, 21]
    with pytest.raises(TypeError, match="give an optimizer step"):
        StepSchedule(start="0.1", end=0.5, frequency=1, kind="cubic", owner="Pruning")
