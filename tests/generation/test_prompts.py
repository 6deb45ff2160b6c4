"""Chat prompts and responses as token ids: the template, the response-only labels, truncation and the checks."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from agent_lightning.backbone import default_backbone_path
from agent_lightning.generation import IGNORE_INDEX, ChatPrompt


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_prompt_is_the_chat_template_with_the_assistant_turn_open(tokenizer):
    prompt = ChatPrompt(tokenizer, max_length=64)
    messages = [{"role": "user", "content": "wake me at seven"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(prompt.prompt_ids("wake me at seven")) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_system_prompt_and_listed_actions_are_in_the_prompt(tokenizer):
    prompt = ChatPrompt(tokenizer, 96, system_prompt="Pick a tool.", actions=["set_alarm", "play_music"])
    text = tokenizer.decode(prompt.prompt_ids("wake me at seven"))
    assert text.startswith("<|im_start|>system\nPick a tool.<|im_end|>")
    assert "wake me at seven\n\nAnswer with one of: set_alarm, play_music.<|im_end|>" in text


def test_example_labels_cover_the_response_and_end_token_only(tokenizer):
    prompt = ChatPrompt(tokenizer, max_length=64)
    example = prompt.example("wake me at seven", "set_alarm")
    prompt_ids = prompt.prompt_ids("wake me at seven", len(prompt.response_ids("set_alarm")))
    response = tokenizer("set_alarm", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt_ids + response
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response
    assert tokenizer.decode(response) == "set_alarm<|im_end|>"


def test_a_long_request_is_cut_and_the_template_and_answer_still_fit(tokenizer):
    prompt = ChatPrompt(tokenizer, max_length=48)
    example = prompt.example("please " * 200 + "wake me", "set_alarm")
    assert len(example["input_ids"]) == 48
    assert tokenizer.decode(example["input_ids"]).endswith("<|im_start|>assistant\nset_alarm<|im_end|>")


def test_no_room_for_the_request_is_a_clear_error(tokenizer):
    prompt = ChatPrompt(tokenizer, max_length=20)
    with pytest.raises(ValueError, match=r"max_length=20 leaves no room for the request.*Raise max_length"):
        prompt.example("wake me", "set_alarm")


def test_actions_the_tokenizer_cannot_tell_apart_are_refused():
    uncased = AutoTokenizer.from_pretrained(default_backbone_path())  # lower-cases: Set_Alarm == set_alarm
    prompt = ChatPrompt(uncased, max_length=32)
    with pytest.raises(ValueError, match=r"'set_alarm' and 'Set_Alarm' encode to the same tokens"):
        prompt.action_ids(["set_alarm", "Set_Alarm"])


def test_a_tokenizer_without_chat_template_gets_the_plain_layout():
    uncased = AutoTokenizer.from_pretrained(default_backbone_path())
    prompt = ChatPrompt(uncased, max_length=32, system_prompt="Pick a tool.")
    assert uncased.decode(prompt.prompt_ids("Wake me")) == "pick a tool. request : wake me answer :"
