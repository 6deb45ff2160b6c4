"""EmbeddingCompression: counts the training tokens, compacts at fit end, resumes, exports; clear refusals."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from agent_lightning import Agent
from agent_lightning.callbacks import EmbeddingCompression, compact_from_checkpoint
from agent_lightning.deployment.export import export_agent
from agent_lightning.deployment.runtime import ExportedAgent
from agent_lightning.quantization.embedding import CompactEmbedding
from tests.conftest import quiet_trainer


class _TokenRecorder(Callback):
    def __init__(self) -> None:
        self.tokens: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.tokens |= set(batch["input_ids"].unique().tolist())


def _training_tokens(dm) -> set[int]:
    return {int(i) for batch in dm.train_dataloader() for i in batch["input_ids"].unique()}


def test_fit_end_keeps_the_training_tokens_as_int8_and_predictions_hold(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    callback = EmbeddingCompression()
    trainer = quiet_trainer(tmp_path, [callback], max_epochs=2, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    float_embedding = next(iter(callback._float_modules.values()))  # the input table, kept float
    float_table = float_embedding.weight.detach()
    compact = agent.model.get_input_embeddings()
    assert isinstance(compact, CompactEmbedding) and compact.weight.dtype == torch.int8
    tokenizer = agent.tokenizer
    expected = _training_tokens(dm) | set(tokenizer.all_special_ids)
    kept = set(torch.nonzero(torch.bincount(compact.token_rows.long()) > 0).flatten().tolist())
    assert compact.kept_tokens == len(expected) == len(kept)
    # each kept token reads its own row (int8 within half a step); see below for unseen tokens
    seen = torch.tensor(sorted(expected))
    step = float_table[seen].abs().amax(1, keepdim=True) / 127
    assert bool(((compact(seen) - float_table[seen]).abs() <= step / 2 + 1e-7).all())
    # a token training never saw reads the kept row nearest to its own float embedding (cosine)
    unseen = next(i for i in range(1000, 30000) if i not in expected)
    similarity = torch.nn.functional.cosine_similarity(float_table[unseen][None], float_table[seen], dim=1)
    nearest = int(seen[similarity.argmax()])
    torch.testing.assert_close(compact(torch.tensor([unseen])), compact(torch.tensor([nearest])), rtol=0, atol=0)
    metrics = trainer.callback_metrics
    assert int(metrics["embeddings/kept_tokens"]) == len(expected)
    assert int(metrics["embeddings/vocab_size"]) == 30522
    # int8 rows + a float scale per row + the int32 token-to-row table, over the float table
    stored = len(expected) * (32 + 4) + 30522 * 4
    assert float(metrics["embeddings/size_ratio"]) == pytest.approx(stored / (30522 * 32 * 4))
    # the compacted model predicts as the float one on the training texts (all tokens seen)
    batch = next(iter(dm.train_dataloader()))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.inference_mode():
        compacted = agent.model(**inputs).logits
        agent.model.set_input_embeddings(float_embedding)
        floating = agent.model(**inputs).logits
    assert torch.equal(compacted.argmax(-1), floating.argmax(-1))
    torch.testing.assert_close(compacted, floating, rtol=0, atol=5e-2)


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_counts_resume_from_a_checkpoint_and_export_applies_them(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    first = quiet_trainer(tmp_path, [EmbeddingCompression()], max_steps=3, limit_val_batches=0)
    first.fit(agent, datamodule=dm)  # fit end compacts this in-memory model; the checkpoint holds the counts
    checkpoint = tmp_path / "mid.ckpt"
    first.save_checkpoint(checkpoint)
    raw = torch.load(checkpoint, weights_only=False)
    state = raw["callbacks"]["EmbeddingCompression"]
    seen_by_three_batches = set(state["seen_tokens"].tolist())
    assert state["vocab_size"] == 30522 and 0 < len(seen_by_three_batches) < len(_training_tokens(dm))

    resumed_agent = Agent.load_from_checkpoint(checkpoint)
    callback, recorder = EmbeddingCompression(), _TokenRecorder()
    resumed = quiet_trainer(tmp_path, [callback, recorder], max_steps=8, limit_val_batches=0)
    resumed.fit(resumed_agent, datamodule=dm, ckpt_path=checkpoint)
    kept = set(torch.nonzero(callback._counts).flatten().tolist())
    assert kept == seen_by_three_batches | recorder.tokens  # the checkpoint's counts plus the resumed batches'
    assert recorder.tokens - seen_by_three_batches  # (the resumed batches did add tokens)

    export_agent(checkpoint, tmp_path / "int8")
    exported = ExportedAgent(tmp_path / "int8")
    special = set(agent.tokenizer.all_special_ids)
    assert exported.manifest["embeddings"] == {
        "kept_tokens": len(seen_by_three_batches | special),
        "vocab_size": 30522,
    }
    reference = Agent.load_from_checkpoint(checkpoint).eval()
    assert compact_from_checkpoint(reference, raw).kept_tokens == len(seen_by_three_batches | special)
    assert len(exported.act(["play some jazz", "an entirely unseen request about zebras"])) == 2


def test_resuming_with_other_arguments_is_refused(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    first = quiet_trainer(tmp_path, [EmbeddingCompression()], max_steps=2, limit_val_batches=0)
    first.fit(agent, datamodule=dm)
    checkpoint = tmp_path / "a.ckpt"
    first.save_checkpoint(checkpoint)
    other = quiet_trainer(tmp_path, [EmbeddingCompression(weights="float")], max_steps=4, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"written with weights='int8'.*this run asks for weights='float'"):
        other.fit(Agent.load_from_checkpoint(checkpoint), datamodule=dm, ckpt_path=checkpoint)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"weights": "int2"}, ValueError, r"EmbeddingCompression\(weights='int2'\): choose 'int8'.*'int4'"),
        ({"frequent_tokens": -1}, ValueError, r"EmbeddingCompression\(frequent_tokens=-1\) must be an integer >= 0"),
        ({"frequent_tokens": "4000"}, TypeError, r"EmbeddingCompression\(frequent_tokens='4000'\) must be an integer"),
        ({"vocabulary": "test"}, ValueError, r"EmbeddingCompression\(vocabulary='test'\): choose 'seen'"),
        ({"fallback_token": "[UNK]"}, TypeError, r"fallback_token='\[UNK\]'\) must be a token id \(int\)"),
        ({"unseen": "unk"}, ValueError, r"EmbeddingCompression\(unseen='unk'\): choose 'nearest'"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        EmbeddingCompression(**kwargs)


def test_a_module_without_token_ids_gets_a_clear_error(tmp_path):
    trainer = quiet_trainer(tmp_path, [EmbeddingCompression()], max_steps=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"Cannot tell which module holds the input token embeddings"):
        trainer.fit(BoringModel())
