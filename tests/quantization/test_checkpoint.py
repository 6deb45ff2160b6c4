"""Re-applying what a run recorded in its checkpoint: QAT ranges and the embedding vocabulary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent_lightning.quantization import (
    CompactEmbedding,
    QuantizationRecipe,
    compact_from_checkpoint,
    convert,
    fake_quantized_modules,
    freeze_ranges,
    prepare,
    prepare_from_checkpoint,
)
from agent_lightning.quantization.checkpoint import callback_state, counts_from_state


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_prepare_from_checkpoint_restores_the_frozen_scales():
    trained = _model()
    prepare(trained, QuantizationRecipe())
    scales = freeze_ranges(trained)
    checkpoint = {
        "callbacks": {
            "QuantizationAwareTraining{'weights': 'int8'}": {
                "prepared": True,
                "recipe": {"weights": "int8", "activations": "int8", "group_size": 32, "kernel": "auto"},
                "include": None,
                "exclude": None,
                "frozen_scales": scales,
            }
        }
    }
    loaded = _model()
    with torch.no_grad():
        loaded[0].weight.mul_(0.5)  # different weights: the checkpoint's scales must win over the weights' own
    assert prepare_from_checkpoint(loaded, checkpoint) == ["0"]
    quantizer = fake_quantized_modules(loaded)["0"].weight_fake_quantizer
    assert torch.equal(quantizer.scale.cpu(), scales["0"][0])
    assert (
        convert(loaded)[0].weight().q_per_channel_scales().float().allclose(scales["0"][0].flatten().double().float())
    )


def test_no_qat_state_is_a_clear_error_and_no_embedding_state_is_none():
    with pytest.raises(ValueError, match="no started QuantizationAwareTraining state"):
        prepare_from_checkpoint(_model(), {"callbacks": {"QuantizationAwareTraining{}": {"prepared": False}}})
    assert compact_from_checkpoint(nn.Embedding(5, 2), {"callbacks": {}}) is None
    assert callback_state({"callbacks": {"Pruning{}": {"a": 1}}}, "Pruning") == {"a": 1}


def test_compact_from_checkpoint_keeps_the_recorded_tokens():
    model = nn.Sequential(nn.Embedding(10, 4))
    state = {
        "weights": "int8",
        "vocabulary": "seen",
        "unseen": "nearest",
        "fallback_token": None,
        "vocab_size": 10,
        "seen_tokens": torch.tensor([1, 4], dtype=torch.int32),
        "seen_counts": torch.tensor([3, 1]),
    }
    assert counts_from_state(state).tolist() == [0, 3, 0, 0, 1, 0, 0, 0, 0, 0]
    compact = compact_from_checkpoint(model, {"callbacks": {"EmbeddingCompression": state}})
    assert isinstance(model[0], CompactEmbedding) and compact.kept_tokens == 2
