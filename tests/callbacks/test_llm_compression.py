"""The compression callbacks on a generative agent (a tiny Llama with grouped-query attention, SwiGLU and a tied
embedding table, fine-tuned on the tiny actions): token-level distillation on the answers, the decoder's teacher
cache, Wanda during training, a tied table compacted once, QAT keeping the tie, and a student of auto-picked
blocks."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from torchao.quantization import IntxUnpackedToInt8Tensor

from agent_lightning import Agent
from agent_lightning.callbacks import Distillation, EmbeddingCompression, Pruning, QuantizationAwareTraining
from agent_lightning.distillation.prompts import prompt_positions
from agent_lightning.evaluation import next_token_labels
from agent_lightning.generation import position_ids
from agent_lightning.quantization import converted_modules
from agent_lightning.quantization.embedding import (
    CompactEmbedding,
    CompactLMHead,
    compact_seen_vocabulary,
    frequent_token_ids,
)
from agent_lightning.targets import select_modules
from tests.conftest import quiet_trainer


def _student(path, **overrides) -> Agent:
    return Agent.load_from_checkpoint(path, map_location="cpu", **overrides)


class _Logits(Callback):
    """Keeps the first training batch and the student's and teacher's full logits on it, before the step."""

    def __init__(self, teacher: Agent) -> None:
        self.teacher, self.seen = teacher.eval(), None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen is None:
            with torch.no_grad():
                inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
                inputs["position_ids"] = position_ids(batch["attention_mask"])  # as the agent's own forward
                student = pl_module.model(**inputs).logits
                teacher = self.teacher.model(**inputs).logits
            self.seen = batch, student, teacher


def test_token_level_kd_on_the_answers_equals_a_hand_computation(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    seed_everything(0)
    student = _student(path, student_layers=[1])  # a one-block student of the two-block teacher
    logits = _Logits(_student(path))
    kd = Distillation(str(path), divergence="reverse", temperature=1.5, alpha=0.3, cache="none")
    trainer = quiet_trainer(tmp_path, [logits, kd], max_steps=1, limit_val_batches=0)
    trainer.fit(student, datamodule=dm)
    batch, student_logits, teacher_logits = logits.seen
    targets = next_token_labels(batch["labels"], batch["labels"].shape[1])  # what each position predicts
    values = []
    for row, position in (targets != -100).nonzero().tolist():  # the answer tokens and their end token only
        p = (teacher_logits[row, position].double() / 1.5).softmax(-1)
        q = (student_logits[row, position].double() / 1.5).softmax(-1)
        values.append(float((q * (q.log() - p.log())).sum()))  # reverse KL
    expected = sum(values) / len(values) * 1.5**2
    metrics = trainer.callback_metrics
    assert len(values) == int((batch["labels"] != -100).sum()) < batch["attention_mask"].sum() / 3
    assert float(metrics["distill/kd_loss"]) == pytest.approx(expected, rel=1e-3)
    task = float(metrics["distill/task_loss"])
    assert float(metrics["distill/loss"]) == pytest.approx(0.3 * task + 0.7 * expected, rel=1e-3)


def test_kd_on_the_prompt_positions_equals_a_hand_computation(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    seed_everything(0)
    student = _student(path, student_layers=[0])
    logits = _Logits(_student(path))
    kd = Distillation(str(path), temperature=2.0, alpha=0.3, cache="none", prompt_weight=0.5)
    trainer = quiet_trainer(tmp_path, [logits, kd], max_steps=1, limit_val_batches=0)
    trainer.fit(student, datamodule=dm)
    batch, student_logits, teacher_logits = logits.seen
    positions = prompt_positions(batch["labels"], batch["attention_mask"])
    p = (teacher_logits[positions].double() / 2.0).softmax(-1)
    q = (student_logits[positions].double() / 2.0).softmax(-1)
    expected = float((p * (p.log() - q.log())).sum(-1).mean()) * 2.0**2  # forward KL over the request's positions
    predicted = next_token_labels(batch["input_ids"], batch["input_ids"].shape[1])[positions]
    answers = next_token_labels(batch["labels"], batch["labels"].shape[1]) != -100
    assert int(positions.sum()) > 2 * int(answers.sum()) and not bool((positions & answers).any())
    assert set(predicted.tolist()) <= set(batch["input_ids"][batch["labels"] == -100].tolist())  # prompt tokens only
    metrics = trainer.callback_metrics
    assert float(metrics["distill/prompt_kd_loss"]) == pytest.approx(expected, rel=1e-3)
    task, answer_kd = float(metrics["distill/task_loss"]), float(metrics["distill/kd_loss"])
    assert float(metrics["distill/loss"]) == pytest.approx(0.3 * task + 0.7 * answer_kd + 0.5 * expected, rel=1e-3)


def test_a_decoders_prompt_logits_are_cached_and_reused(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    student = _student(path, student_layers=[0])
    kd = Distillation(str(path), temperature=1.0, cache="disk", cache_dir=str(tmp_path / "cache"), prompt_weight=1.0)
    trainer = quiet_trainer(tmp_path, [kd], max_epochs=2, limit_val_batches=0)
    trainer.fit(student, datamodule=dm)
    batches = len(dm.train_dataloader())
    assert len(kd.prompt_cache) == len(dm._datasets["train"])
    assert (kd.prompt_cache.misses, kd.prompt_cache.hits) == (batches, batches)
    values, indices, tail, vocab = next(iter(kd.prompt_cache._logits.values()))
    assert values.shape[0] > 2 and values.shape[1] == 64 and int(vocab) == 49152  # several positions per request
    answers, prompts = sorted((tmp_path / "cache").iterdir(), key=lambda file: file.name.endswith("-prompt.pt"))
    assert prompts.name == f"{answers.stem}-prompt.pt" and len(torch.load(prompts)) == len(kd.prompt_cache)
    assert torch.isfinite(trainer.callback_metrics["distill/prompt_kd_loss"])


def test_prompt_kd_refuses_a_model_that_is_no_decoder(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    kd = Distillation(torch.nn.Linear(32, 2), prompt_weight=1.0)
    with pytest.raises(ValueError, match=r"prompt_weight>0.*Set prompt_weight=0"):
        quiet_trainer(tmp_path, [kd], max_steps=1).fit(BoringModel())


def test_a_decoders_teacher_logits_are_cached_as_top_k_and_reused(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    student = _student(path, student_layers=[0])
    kd = Distillation(str(path), divergence="skew", temperature=1.0, cache_top_k=8)
    trainer = quiet_trainer(tmp_path, [kd], max_epochs=2, limit_val_batches=0)
    trainer.fit(student, datamodule=dm)
    batches = len(dm.train_dataloader())
    assert len(kd.cache) == len(dm._datasets["train"])  # every training example once
    assert (kd.cache.misses, kd.cache.hits) == (batches, batches)  # the second epoch reads them all back
    values, indices, tail, vocab = next(iter(kd.cache._logits.values()))
    assert values.shape[1] == indices.shape[1] == 8 and int(vocab) == 49152 and tail.shape == values.shape[:1]
    assert torch.isfinite(trainer.callback_metrics["distill/kd_loss"])


def test_wanda_during_training_reaches_the_target_in_every_output_row(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    agent = _student(path)
    pruning = Pruning(sparsity=0.5, criterion="wanda", start=0, end=4, frequency=2, log_per_layer=False)
    trainer = quiet_trainer(tmp_path, [pruning], max_steps=6, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    for name, layer in select_modules(agent).items():
        zeros_per_row = (layer.weight == 0).sum(1)
        assert bool((zeros_per_row == layer.in_features // 2).all()), name
    assert pruning.pruner.inputs.tokens == {}  # reset at the last update; nothing observed after the end
    assert pruning.pruner.sparsity()[0] == pytest.approx(0.5)


def test_a_tied_table_compacted_as_float_keeps_every_constrained_answer(trained_tiny_llama):
    agent, dm, _, path = trained_tiny_llama
    agent = _student(path)
    dm.setup("fit")
    counts = torch.zeros(49152, dtype=torch.long)
    for batch in dm.train_dataloader():
        counts += torch.bincount(batch["input_ids"].flatten(), minlength=49152)
    seen, unseen = list(dm.splits["train"].texts), list(dm.splits["test"].texts)
    before = agent.act(seen + unseen)
    compact = compact_seen_vocabulary(agent, counts, weights="float")
    head = agent.model.lm_head
    assert isinstance(head, CompactLMHead) and head.embedding is compact is agent.model.model.embed_tokens
    assert compact.kept_tokens < 200  # of 49,152: the tokens of the training prompts and answers
    after = agent.act(seen + unseen)
    assert [a for a, _ in after] == [a for a, _ in before]
    # requests made of kept tokens read the same rows and score the actions' tokens alike: the same confidence
    assert [p for _, p in after[: len(seen)]] == pytest.approx([p for _, p in before[: len(seen)]], abs=1e-5)


def test_frequent_tokens_widen_a_tied_table_for_reading_but_not_its_softmax(trained_tiny_llama):
    agent, dm, _, path = trained_tiny_llama
    dm.setup("fit")
    counts = torch.zeros(49152, dtype=torch.long)
    for batch in dm.train_dataloader():
        counts += torch.bincount(batch["input_ids"].flatten(), minlength=49152)
    narrow, wide = _student(path), _student(path)
    table = wide.model.model.embed_tokens.weight.detach().clone()
    compact_seen_vocabulary(narrow, counts, weights="float")
    compact = compact_seen_vocabulary(wide, counts, weights="float", frequent=500)
    head = wide.model.lm_head
    special = set(wide.tokenizer.all_special_ids)
    scored = set(torch.nonzero(counts).flatten().tolist()) | special
    assert head.scored_tokens == len(scored) == narrow.model.lm_head.scored_tokens < compact.kept_tokens
    assert compact.kept_tokens >= 500
    # a frequent token training never saw reads its own row, but gets no probability as an output
    new = next(i for i in frequent_token_ids(wide.tokenizer, 500) if i not in scored)
    torch.testing.assert_close(compact(torch.tensor([new])), table[[new]], rtol=0, atol=0)
    narrow_table = narrow.model.model.embed_tokens
    assert narrow_table.kept_ids[narrow_table.token_rows[new]] != new  # without them: another token's row
    logits = head(torch.randn(2, table.shape[1]))
    assert bool((logits[:, new] == torch.finfo(logits.dtype).min).all())
    texts = list(dm.splits["test"].texts)
    assert all(action in dm.label_names for action, _ in wide.act(texts))


def test_embedding_compression_and_qat_on_a_tied_decoder(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    agent = _student(path)
    callbacks = [QuantizationAwareTraining(start=0, kernel="onnxruntime", evaluate=False), EmbeddingCompression()]
    quiet_trainer(tmp_path, callbacks, max_steps=3, limit_val_batches=0).fit(agent, datamodule=dm)
    assert len(converted_modules(agent)) == 14  # 7 linears in each of the 2 blocks; the tied head is not one
    tables = {id(m) for m in agent.modules() if isinstance(m, CompactEmbedding)}
    assert len(tables) == 1 and isinstance(agent.model.lm_head, CompactLMHead)  # one int8 table, shared
    assert all(action in dm.label_names for action, _ in agent.act(["wake me at seven", "call mom"]))


def test_a_checkpoint_after_compaction_holds_the_float_tied_table(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    agent = _student(path)
    trainer = quiet_trainer(tmp_path, [EmbeddingCompression()], max_steps=2, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    assert isinstance(agent.model.lm_head, CompactLMHead)
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    reloaded = Agent.load_from_checkpoint(tmp_path / "after.ckpt", map_location="cpu")  # a plain agent
    assert reloaded.model.lm_head.weight is reloaded.model.model.embed_tokens.weight
    assert reloaded.model.lm_head.weight.shape == (49152, 64)


def test_qat_keeps_a_tied_table_float_and_refuses_to_quantize_the_tied_head(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    agent = _student(path)
    trainer = quiet_trainer(tmp_path, [QuantizationAwareTraining(start=0, evaluate=False)], max_steps=2)
    trainer.fit(agent, datamodule=dm)
    assert agent.model.lm_head.weight is agent.model.model.embed_tokens.weight  # convert kept the tie
    refused = QuantizationAwareTraining(include=["*self_attn.q_proj", "*lm_head"])
    before = agent.model.model.embed_tokens.weight.detach().clone()
    with pytest.raises(ValueError, match=r"'model.lm_head', whose weight is tied to the embedding table"):
        quiet_trainer(tmp_path, [refused], max_steps=1).fit(_student(path), datamodule=dm)
    assert torch.equal(before, agent.model.model.embed_tokens.weight)


@pytest.mark.parametrize("layers", ["auto:1", "influence:1"])
def test_a_student_of_auto_picked_blocks_must_pick_them_before_fit(trained_tiny_llama, tmp_path, layers):
    _, dm, _, path = trained_tiny_llama
    student = _student(path, student_layers=layers)
    assert len(student.model.model.layers) == 2 and student.pending_student_layers == 1
    with pytest.raises(ValueError, match=r"call agent.select_student_layers\(datamodule\) before Trainer.fit"):
        quiet_trainer(tmp_path, max_steps=1).fit(student, datamodule=dm)
    chosen = student.select_student_layers(dm)
    scores = student.block_choice.scores
    if layers == "auto:1":  # spans of one block: keep the other block than the least distant one
        assert student.block_choice.criterion == "span" and chosen == [1 - min(range(2), key=lambda i: scores[i])]
    else:  # the block of higher influence
        assert student.block_choice.criterion == "influence" and chosen == [max(range(2), key=lambda i: scores[i])]
    assert student.hparams.student_layers == chosen
    assert len(student.model.model.layers) == 1 and student.model.config.num_hidden_layers == 1
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(student, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    reloaded = Agent.load_from_checkpoint(tmp_path / "student.ckpt", map_location="cpu")
    assert reloaded.hparams.student_layers == chosen and len(reloaded.model.model.layers) == 1


def test_int4_weight_only_qat_on_the_llama_linears(trained_tiny_llama, tmp_path):
    _, dm, _, path = trained_tiny_llama
    agent = _student(path)
    qat = QuantizationAwareTraining(weights="int4", activations="none", group_size=32, start=0, evaluate=False)
    quiet_trainer(tmp_path, [qat], max_steps=2, limit_val_batches=0).fit(agent, datamodule=dm)
    converted = converted_modules(agent)
    assert len(converted) == 14
    for layer in converted.values():
        weight = layer.weight
        assert isinstance(weight, IntxUnpackedToInt8Tensor) and weight.activation_quantization is None
        assert int(weight.qdata.min()) >= -8 and int(weight.qdata.max()) <= 7  # 4-bit values, one scale per 32
    assert agent.model.lm_head.weight is agent.model.model.embed_tokens.weight
    assert all(action in dm.label_names for action, _ in agent.act(["wake me at seven", "call mom"]))
