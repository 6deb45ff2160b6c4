"""generate_requests: first completed lines of few-shot continuations, none repeating an example, an excluded text or
one another; reproducible by seed; SmolLM2 writes requests from the built-in data's examples."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent_lightning.distillation.synthetic import RequestGenerationConfig, generate_requests

EXAMPLES = {
    "add_to_shopping_list": ["add milk to my list", "put eggs on the grocery list"],
    "get_weather": ["will it rain today", "what's the weather in Paris"],
}


class _Scripted(nn.Module):
    """A 'model' whose ``generate`` appends scripted continuations in turn and records the prompts it was given."""

    def __init__(self, tokenizer, continuations: list[str]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.tokenizer, self.continuations, self.turn, self.prompts = tokenizer, continuations, 0, []

    def generate(self, input_ids, attention_mask, **settings):
        assert settings["do_sample"] and attention_mask.shape == input_ids.shape
        self.prompts += self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        rows = []
        for _ in range(len(input_ids)):
            rows.append(self.tokenizer(self.continuations[self.turn % len(self.continuations)])["input_ids"])
            self.turn += 1
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        new = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return AutoTokenizer.from_pretrained(smollm2)


def test_keeps_completed_lines_that_repeat_nothing(tokenizer):
    continuations = [
        " buy oat milk\n- add",  # kept: the first line only
        " Add  MILK to my list\n",  # an example, case and spacing aside: dropped
        " what is on tv tonight\n",  # excluded (a test request): dropped
        " add bread to the shopping list and",  # never ended its line (cut off): dropped
        " buy oat milk\n",  # already generated: dropped
        " order more coffee beans\n- x",  # kept
    ]
    model = _Scripted(tokenizer, continuations)
    config = RequestGenerationConfig(per_label=5, shots=2, batch_size=6, rounds=1)
    side = tokenizer.padding_side
    out = generate_requests(
        model,
        tokenizer,
        {"add_to_shopping_list": EXAMPLES["add_to_shopping_list"]},
        config,
        exclude=["What is on TV tonight"],
    )
    assert out == {"add_to_shopping_list": ["buy oat milk", "order more coffee beans"]}
    assert tokenizer.padding_side == side  # restored
    assert len(model.prompts) == 6  # one batch: rounds=1 ends the label short of per_label
    for prompt in model.prompts:
        lines = prompt.split("\n")
        assert lines[0] == config.header and lines[-1] == "-"
        assert sorted(line[2:] for line in lines[1:-1]) == sorted(EXAMPLES["add_to_shopping_list"])


def test_stops_at_per_label_and_prompts_each_label_with_its_own_examples(tokenizer):
    model = _Scripted(tokenizer, [f" request number {i}\n" for i in range(100)])
    config = RequestGenerationConfig(per_label=3, shots=1, batch_size=2, rounds=5)
    out = generate_requests(model, tokenizer, EXAMPLES, config)
    assert list(out) == list(EXAMPLES) and all(len(requests) == 3 for requests in out.values())
    assert out["add_to_shopping_list"] == ["request number 0", "request number 1", "request number 2"]
    assert out["get_weather"] == ["request number 4", "request number 5", "request number 6"]  # 3 was the 2nd batch's
    assert len(model.prompts) == 8  # two batches of two per label, none more once three were kept
    assert all(p.split("\n")[1][2:] in EXAMPLES["get_weather"] for p in model.prompts[4:])


def test_smollm2_writes_new_single_line_requests_reproducibly(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    config = RequestGenerationConfig(per_label=3, shots=2, batch_size=4, max_new_tokens=16, rounds=2, seed=1)
    state = torch.get_rng_state()
    first = generate_requests(model, tokenizer, EXAMPLES, config)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    assert generate_requests(model, tokenizer, EXAMPLES, config) == first  # the seed decides
    requests = [text for texts in first.values() for text in texts]
    assert len(requests) >= 3, first  # the real model ends most lines within 16 tokens
    known = {text.lower() for texts in EXAMPLES.values() for text in texts}
    assert all(text and "\n" not in text and text.lower() not in known for text in requests)
    assert len({text.lower() for text in requests}) == len(requests)


@pytest.mark.parametrize(
    ("settings", "error", "named"),
    [
        ({"per_label": 0}, ValueError, "per_label=0"),
        ({"batch_size": "8"}, TypeError, "batch_size='8'"),
        ({"temperature": 0}, ValueError, "temperature=0"),
        ({"top_p": 1.5}, ValueError, "top_p=1.5"),
        ({"header": None}, TypeError, "header=None"),
        ({"seed": 1.5}, TypeError, "seed=1.5"),
    ],
)
def test_bad_config_is_refused(settings, error, named):
    with pytest.raises(error, match=named.replace("(", r"\(")):
        RequestGenerationConfig(**settings)


def test_bad_arguments_are_refused(tokenizer):
    model = _Scripted(tokenizer, [" x\n"])
    with pytest.raises(TypeError, match="model=Linear cannot generate"):
        generate_requests(nn.Linear(2, 2), tokenizer, EXAMPLES)
    with pytest.raises(TypeError, match="must be a RequestGenerationConfig"):
        generate_requests(model, tokenizer, EXAMPLES, {"per_label": 2})
    with pytest.raises(ValueError, match="no labels at all"):
        generate_requests(model, tokenizer, {})
    with pytest.raises(ValueError, match=r"empty: \['get_weather'\]"):
        generate_requests(model, tokenizer, {**EXAMPLES, "get_weather": []})
    assert model.prompts == []  # refused before anything was generated
