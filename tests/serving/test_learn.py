"""Learning from feedback: the examples feedback gives, and a tiny agent that answers its corrected requests
correctly afterwards without losing test accuracy."""

from __future__ import annotations

import json

import pytest
import yaml

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.cli import main
from agent_lightning.serving import Feedback, RequestStore
from agent_lightning.serving.learn import feedback_examples
from tests.conftest import trained_tiny_agent

ACTIONS = ["call", "get_weather", "play_music", "set_alarm"]


def test_feedback_examples_take_corrections_and_thumbs_up_only():
    rows = [
        Feedback("a", "wake me", "call", "set_alarm", None),  # corrected
        Feedback("b", "play jazz", "play_music", None, True),  # confirmed
        Feedback("c", "ring mom", "play_music", None, False),  # down without a correction: left out
        Feedback("d", "forecast", "call", "fly", None),  # not an action of the agent: left out
        Feedback("e", "rain?", None, None, True),  # an abstained answer confirmed: nothing to learn
        Feedback("a", "wake me", "call", "set_alarm", None),  # the same request again: counted once
    ]
    examples = feedback_examples(rows, ACTIONS)
    assert list(zip(examples.texts, examples.labels)) == [("wake me", "set_alarm"), ("play jazz", "play_music")]


@pytest.mark.slow
def test_learn_answers_corrected_requests_and_keeps_test_accuracy(tiny_bert, shared_tiny_data_dir, tmp_path):
    data = {"dataset": str(shared_tiny_data_dir), "batch_size": 8}
    agent = trained_tiny_agent(tiny_bert, shared_tiny_data_dir, tmp_path / "served.ckpt", epochs=15)
    # users of the served agent: new phrasings, each answered, the wrong ones corrected
    store = RequestStore(tmp_path / "requests.db")
    wanted = {
        "buzz me when it is six": "set_alarm",
        "any sunshine expected later": "get_weather",
        "get grandma on the line": "call",
        "some beethoven please": "play_music",
        "i need to talk to my dentist": "call",
        "umbrella needed in london": "get_weather",
    }
    answers = agent.act(list(wanted))
    ids = store.record_answers([(text, action, c) for text, (action, c) in zip(wanted, answers)])
    for request_id, (text, correct), (answered, _) in zip(ids, wanted.items(), answers):
        if answered == correct:
            store.record_feedback(request_id, thumbs_up=True)
        else:
            store.record_feedback(request_id, correct_action=correct)
    store.record_answers([("what time is it in tokyo", "call", 0.31)])  # answered, no feedback: unlabelled text
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": data}))  # YAML is a superset of JSON
    output = tmp_path / "learned"
    learn = ["learn", "--feedback", str(tmp_path / "requests.db"), "--ckpt", str(tmp_path / "served.ckpt")]
    main([*learn, "--output", str(output), "-c", str(config), "--epochs", "8"])
    summary = json.loads((output / "summary.json").read_text())
    assert summary["feedback_acc_before"] < 1.0  # there was something to learn
    assert summary["feedback_acc_after"] == 1.0, summary
    assert summary["test_acc_after"] >= summary["test_acc_before"] - 0.005
    learned = Agent.load_from_checkpoint(output / "learned.ckpt")
    assert [a for a, _ in learned.act(list(wanted))] == list(wanted.values())
    assert (output / "summary.md").read_text().startswith("# Learning from feedback")
    assert sorted(p.name for p in (output / "data").iterdir()) == ["test.csv", "train.csv", "unlabeled.csv", "val.csv"]
    unlabeled = TextClassificationDataModule(
        dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, unlabeled_file=str(output / "data" / "unlabeled.csv")
    )
    assert unlabeled.unlabeled_texts == ["what time is it in tokyo"]  # ready for --unlabeled
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        main([*learn, "--output", str(output)])


@pytest.mark.slow
def test_learn_then_compress_distils_the_learned_teacher_on_the_served_texts(tiny_bert, shared_tiny_data_dir, tmp_path):
    trained_tiny_agent(tiny_bert, shared_tiny_data_dir, tmp_path / "served.ckpt", epochs=2)
    store = RequestStore(tmp_path / "requests.db")
    first, second = store.record_answers([("buzz me at six", "call", 0.4), ("any sunshine later", "call", 0.5)])
    store.record_feedback(first, correct_action="set_alarm")  # the second is served text without feedback
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": {"dataset": str(shared_tiny_data_dir), "batch_size": 8}}))
    output = tmp_path / "learned"
    learn = ["learn", "--feedback", str(store.path), "--ckpt", str(tmp_path / "served.ckpt"), "--output", str(output)]
    main([*learn, "-c", str(config), "--compress", "--student-layers", "1", "--trainer.max_epochs=1"])
    student = yaml.safe_load((output / "compress" / "student" / "version_0" / "config.yaml").read_text())
    distillation = next(c for c in student["trainer"]["callbacks"] if c["class_path"].endswith("Distillation"))
    assert distillation["init_args"]["teacher"] == str(output / "learned.ckpt")
    assert student["data"]["train_file"] == str(output / "data" / "train.csv")
    assert student["data"]["unlabeled_file"] == str(output / "data" / "unlabeled.csv")
    assert (output / "compress" / "student" / "version_0" / "summary.md").is_file()
    assert (output / "compress" / "student" / "version_0" / "export-onnx" / "model.onnx").is_file()
