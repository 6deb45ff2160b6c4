"""Pruning decoders without a Trainer, on tiny Llama configs with what SmolLM2 has (grouped-query attention, SwiGLU,
tied embeddings): structured removal by key/value group or query head, Wanda against a hand computation, and
depth pruning by span distance and block influence."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from agent_lightning.pruning import PruningConfig, prune
from agent_lightning.pruning.activations import InputNorms
from agent_lightning.pruning.depth import (
    block_influence,
    choose_blocks,
    keep_outside_span,
    most_important_blocks,
    span_distance,
)
from agent_lightning.pruning.removal import remove_structure
from tests.conftest import tiny_llama_config


def _llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=300, num_attention_heads=8, num_key_value_heads=2, **overrides)
    return LlamaForCausalLM(config).eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(
    ("gqa", "heads", "kv_heads"),
    [("queries", 4, 2), ("groups", 4, 1)],  # 8 query heads over 2 key/value heads, half of them removed
)
def test_grouped_query_heads_and_swiglu_neurons_are_removed_and_reload_with_from_pretrained(
    gqa, heads, kv_heads, tmp_path
):
    model = _llama()
    config = PruningConfig(sparsity=0.5, method="structured", head_sparsity=0.5, gqa=gqa)
    pruner = prune(model, config)
    counts = torch.bincount(pruner.kept_heads[0] // 4, minlength=2).tolist()  # kept query heads per group
    if gqa == "queries":
        assert counts == [2, 2]  # two of the four query heads of each group
    else:
        assert sorted(counts) == [0, 4]  # one whole group
    with torch.no_grad():
        masked = model(**_batch()).logits
    pruner.remove_structure()
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.out_features == heads * 8 and layer.self_attn.o_proj.in_features == heads * 8
    assert layer.self_attn.k_proj.out_features == kv_heads * 8 == layer.self_attn.v_proj.out_features
    assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 64
    assert layer.self_attn.num_key_value_groups == heads // kv_heads
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (heads, kv_heads, 8)
    assert config.intermediate_size == 64
    with torch.no_grad():
        torch.testing.assert_close(model(**_batch()).logits, masked, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers: the config says it all
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**_batch()).logits, masked, rtol=0, atol=1e-5)
    assert reloaded.model.embed_tokens.weight is reloaded.lm_head.weight  # still tied


def test_query_heads_are_removed_evenly_within_each_group():
    model = _llama()
    pruner = prune(model, PruningConfig(sparsity=0.0, method="structured", head_sparsity=0.25, gqa="queries"))
    for kept in pruner.kept_heads.values():
        assert torch.bincount(kept // 4, minlength=2).tolist() == [3, 3]  # 1 of the 4 query heads of each group


def test_uneven_groups_and_targets_that_remove_nothing_are_refused():
    model = _llama()
    with pytest.raises(ValueError, match=r"every key/value group must keep the same number"):
        remove_structure(model, {}, {0: torch.tensor([0, 1, 2, 4])})  # 3 heads of group 0, 1 of group 1
    with pytest.raises(ValueError, match=r"head_sparsity=0.1 removes none of the 4 query heads of each key/value"):
        prune(_llama(), PruningConfig(sparsity=0.0, method="structured", head_sparsity=0.1))


def test_wanda_masks_equal_a_hand_computation_on_a_small_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    inputs = [torch.randn(5, 4), torch.randn(3, 4)]
    weight = model[0].weight.detach().clone()
    pruner = prune(model, PruningConfig(sparsity=0.5, criterion="wanda"), calibration=inputs)
    tokens = torch.cat(inputs)
    norm = [sum(float(tokens[t, j]) ** 2 for t in range(len(tokens))) ** 0.5 for j in range(4)]
    for row in range(3):
        score = [abs(float(weight[row, j])) * norm[j] for j in range(4)]
        kept = sorted(range(4), key=lambda j: score[j])[2:]  # the two highest of the row
        assert pruner.masks["0.weight"][row].tolist() == [j in kept for j in range(4)]
        assert model[0].weight[row].tolist() == [float(weight[row, j]) if j in kept else 0.0 for j in range(4)]
    # N:M groups of four inputs score the same way
    model[0].weight.data.copy_(weight)
    two_four = prune(
        model, PruningConfig(sparsity=0.5, method="n:m", pattern="2:4", criterion="wanda"), calibration=inputs
    )
    assert torch.equal(two_four.masks["0.weight"], pruner.masks["0.weight"])


def test_input_norms_leave_padding_out_and_follow_swapped_layers():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def forward(self, input_ids, attention_mask):
            return self.layer(input_ids.float()[..., None].expand(-1, -1, 2))

    model = Wrapper()
    norms = InputNorms(model, ["layer"])
    ids = torch.tensor([[0, 3, 4]])
    norms.calibrate([{"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1]])}])
    assert norms.norms()["layer"].tolist() == pytest.approx([(12.5) ** 0.5] * 2)  # (9 + 16) / 2 real tokens
    norms.start()
    model.layer = nn.Linear(2, 2)  # another module under the same name (as QAT swaps layers)
    model(input_ids=torch.tensor([[5]]), attention_mask=torch.tensor([[1]]))
    norms.stop()
    assert norms.tokens["layer"] == 3.0


def test_block_influence_scores_blocks_that_change_nothing_zero_and_auto_layers_keep_the_others():
    model = _llama(num_hidden_layers=4)
    for index in (1, 3):  # these blocks add nothing to the residual stream: output == input
        layer = model.model.layers[index]
        nn.init.zeros_(layer.self_attn.o_proj.weight)
        nn.init.zeros_(layer.mlp.down_proj.weight)
    scores = block_influence(model, [_batch(), _batch()])
    assert scores[1] == pytest.approx(0.0, abs=1e-6) and scores[3] == pytest.approx(0.0, abs=1e-6)
    assert bool((scores[[0, 2]] > 1e-3).all())
    assert most_important_blocks(scores, 2) == [0, 2]
    with pytest.raises(ValueError, match=r"keep=5 blocks: give a number in \[1, 4\]"):
        most_important_blocks(scores, 5)


def test_span_distance_equals_the_angle_between_hidden_states_and_the_span_that_changes_nothing_is_dropped():
    model = _llama(num_hidden_layers=5)
    for index in (1, 2):  # these two blocks add nothing to the residual stream
        layer = model.model.layers[index]
        nn.init.zeros_(layer.self_attn.o_proj.weight)
        nn.init.zeros_(layer.mlp.down_proj.weight)
    batch = _batch()
    distances = span_distance(model, [batch, batch], drop=2)
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states  # the blocks' inputs, then the normed output
    real = batch["attention_mask"].bool()
    for first in range(3):  # spans [0, 2), [1, 3), [2, 4): both ends are block inputs
        cosine = torch.nn.functional.cosine_similarity(states[first], states[first + 2], dim=-1).clamp(-1, 1)
        expected = (torch.arccos(cosine) / torch.pi)[real].mean()
        assert float(distances[first]) == pytest.approx(float(expected), abs=1e-5)
    assert distances.shape == (4,) and float(distances[1]) == pytest.approx(0.0, abs=1e-3)
    assert keep_outside_span(distances, 5) == [0, 3, 4]
    choice = choose_blocks(model, [batch], keep=3)
    assert (choice.kept, choice.criterion, choice.num_blocks) == ([0, 3, 4], "span", 5)
    assert [row[2] for row in choice.rows()] == ["", "removed", "", ""] and choice.rows()[1][0] == "1-2"
    influence = choose_blocks(model, [batch], keep=3, criterion="influence")
    assert influence.kept == [0, 3, 4] and len(influence.scores) == 5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m: choose_blocks(m, [_batch()], keep=2, criterion="cosine"),
            r"criterion='cosine' is not a choice; use 'span' or 'influence'",
        ),
        (lambda m: choose_blocks(m, [_batch()], keep=4), r"keep=4 blocks: give a number in \[1, 3\]"),
        (lambda m: span_distance(m, [_batch()], drop=0), r"drop=0 blocks: give a number in \[1, 4\]"),
        (lambda m: keep_outside_span(torch.zeros(6), 4), r"shape \(6,\) do not fit a model of num_blocks=4"),
    ],
)
def test_block_choices_refuse_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(_llama(num_hidden_layers=4))
