"""The generative agent (``task="generation"``): chat SFT on response tokens only, constrained answers, learning a
small action set, checkpoints, and the real SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything

from agent_lightning import Agent, TextClassificationDataModule
from tests.conftest import TINY_EXAMPLES, quiet_trainer


def _pair(model: str, data_dir, **agent_args):
    dm = TextClassificationDataModule(dataset=str(data_dir), tokenizer=model, task="generation", batch_size=8)
    agent = Agent(model=model, task="generation", labels=dm.label_names, **agent_args)
    return agent, dm


def test_the_loss_is_cross_entropy_over_response_tokens_only(tiny_llama, tiny_data_dir):
    agent, dm = _pair(tiny_llama, tiny_data_dir)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    logits, targets = agent.response_logits(batch)
    length = batch["input_ids"].shape[1]
    assert logits.shape[1] < length - 10  # the LM head ran on the last positions only
    with torch.no_grad():
        full = agent.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = 0.0, 0
    for row in range(len(full)):
        for t in range(length - 1):
            target = int(batch["labels"][row, t + 1])
            if target != -100:  # position t predicts token t + 1: the answer and its end token only
                total -= float(full[row, t].double().log_softmax(-1)[target])
                count += 1
    answer_tokens = int((batch["labels"] != -100).sum())
    assert count == answer_tokens and count < batch["attention_mask"].sum() / 3
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-4)


def test_untrained_answers_are_actions_with_probabilities(tiny_llama):
    actions = list(TINY_EXAMPLES)
    agent = Agent(model=tiny_llama, task="generation", labels=actions)
    answers = agent.act(["wake me at seven", "play jazz", "x" * 500, ""])
    assert all(action in actions and 0 < p <= 1 for action, p in answers)
    agent.hparams.constrained = False
    free = agent.act(["wake me at seven"])  # free text, not necessarily an action
    assert isinstance(free[0][0], str) and 0 < free[0][1] <= 1


@pytest.fixture(scope="module")
def trained(trained_tiny_llama):
    return trained_tiny_llama


@pytest.mark.slow
def test_a_tiny_llama_learns_the_action_set(trained):
    agent, _, metrics, _ = trained
    assert float(metrics["test/action_acc"]) >= 0.9  # 20 unseen phrasings of the four actions
    assert float(metrics["test/invalid_rate"]) <= 0.1  # free decoding learned to write the actions too
    assert float(metrics["test/perplexity"]) < 1.5
    answers = agent.act(["wake me at seven thanks", "is it cold outside thanks"])
    assert [a for a, _ in answers] == ["set_alarm", "get_weather"]


@pytest.mark.slow
def test_checkpoint_reloads_and_acts_the_same(trained):
    agent, _, _, path = trained
    texts = [text for examples in TINY_EXAMPLES.values() for text in examples]
    reloaded = Agent.load_from_checkpoint(path)
    assert reloaded.hparams.task == "generation" and reloaded.labels == agent.labels
    before, after = agent.act(texts), reloaded.act(texts)
    assert [a for a, _ in after] == [a for a, _ in before]
    assert [p for _, p in after] == pytest.approx([p for _, p in before], abs=1e-5)


def test_agent_and_datamodule_must_prompt_alike(tiny_llama, tiny_data_dir):
    dm = TextClassificationDataModule(
        dataset=str(tiny_data_dir), tokenizer=tiny_llama, task="generation", list_actions=True
    )
    agent = Agent(model=tiny_llama, task="generation", labels=dm.label_names)
    with pytest.raises(ValueError, match=r"list_actions.*different prompts"):
        quiet_trainer(None, max_steps=1).fit(agent, datamodule=dm)


def test_the_real_smollm2_trains_and_answers_within_the_actions(smollm2, tiny_data_dir):
    """SmolLM2-135M-Instruct from the installed package: two training steps, then constrained answers."""
    seed_everything(0)
    agent, dm = _pair("smollm2-135m-instruct", tiny_data_dir, learning_rate=1e-4, list_actions=True)
    dm.hparams.list_actions = True
    dm.hparams.batch_size = 4
    assert agent.model.config.num_key_value_heads == 3 and agent.model.config.tie_word_embeddings
    before = agent.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    trainer = quiet_trainer(None, max_steps=2, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, agent.model.model.layers[0].mlp.down_proj.weight)
    answers = agent.act(["wake me up at 6 tomorrow", "will it rain in paris"])
    assert all(action in dm.label_names and 0 < p <= 1 for action, p in answers)


def _tool_call_files(folder):
    """The tiny requests with JSON tool calls as free answers (text + response, no label column)."""
    from tests.conftest import write_rows

    rows = [(text, json.dumps({"tool": action})) for action, texts in TINY_EXAMPLES.items() for text in texts]
    write_rows(folder / "train.jsonl", rows + [(f"please {t}", r) for t, r in rows], header=("text", "response"))
    write_rows(folder / "test.jsonl", [(f"{t} thanks", r) for t, r in rows], header=("text", "response"))
    return folder


@pytest.mark.slow
def test_free_answers_from_a_response_column(tiny_llama, tmp_path):
    folder = _tool_call_files(tmp_path)
    dm = TextClassificationDataModule(
        dataset=str(folder), tokenizer=tiny_llama, task="generation", response_column="response", batch_size=8
    )
    assert dm.label_names == []  # no closed action set
    dm.setup("fit")
    example = dm._datasets["train"][0]
    answer = [t for t in example["labels"] if t != -100]
    tokenizer = dm.tokenizer
    assert tokenizer.decode(answer) == dm.splits["train"].labels[0] + "<|im_end|>"  # the JSON, then the end token
    assert len(dm.splits["val"]) == 4  # a random 10 % (responses are not labels to stratify by)
    seed_everything(0)
    agent = Agent(
        model=tiny_llama, task="generation", labels=[], learning_rate=3e-3, warmup_fraction=0.1, max_new_tokens=24
    )
    trainer = quiet_trainer(None, max_epochs=60)
    trainer.fit(agent, datamodule=dm)
    metrics = trainer.test(agent, datamodule=dm, verbose=False)[0]
    assert metrics["test/response_acc"] >= 0.9 and "test/action_acc" not in metrics
    ((answer, probability),) = agent.act(["wake me at seven"])
    assert json.loads(answer) == {"tool": "set_alarm"} and 0 < probability <= 1


def test_the_command_line_chooses_checkpoints_by_free_answer_accuracy(tiny_llama, tmp_path):
    from agent_lightning.cli import AgentLightningCLI
    from tests.conftest import REPO

    folder = _tool_call_files(tmp_path)
    args = ["-c", str(REPO / "configs" / "llm.yaml"), f"--model.model={tiny_llama}", f"--data.dataset={folder}"]
    cli = AgentLightningCLI.create([*args, "--data.response_column=response"], run=False)
    assert cli.model.labels == [] and cli.datamodule.hparams.response_column == "response"
    assert cli.trainer.checkpoint_callback.monitor == "val/response_acc"


def test_a_datamodule_with_another_tokenizer_is_refused(tiny_llama, tiny_data_dir):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), task="generation")  # the packaged MiniLM's
    agent = Agent(model=tiny_llama, task="generation", labels=dm.label_names)
    with pytest.raises(ValueError, match=r"tokenizes with .*30522 tokens.*49152 tokens.*Pass the agent's model"):
        quiet_trainer(None, max_steps=1).fit(agent, datamodule=dm)
