"""Decoding within an action set: the prefix tree, and greedy search over it with a key/value cache and left padding
equal to a plain step-by-step search without either."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from agent_lightning.generation import ActionTrie, ChatPrompt, constrained_greedy, free_greedy, left_padded
from tests.conftest import tiny_llama_config

ACTIONS = ["set_alarm", "set_reminder", "play_music", "play_podcast", "get_weather", "call"]


def test_trie_branches_where_actions_differ_and_refuses_collisions():
    trie = ActionTrie([[5, 7, 2], [5, 9, 2], [6, 2]])
    assert sorted(trie.allowed(trie.root)) == [5, 6]
    assert sorted(trie.allowed(trie.step(trie.root, 5))) == [7, 9]
    assert trie.step(trie.step(trie.root, 6), 2) == 2 and trie.depth == 3
    with pytest.raises(ValueError, match="collides"):
        ActionTrie([[5, 7, 2], [5, 7, 2]])
    with pytest.raises(ValueError, match="collides"):
        ActionTrie([[5, 7], [5, 7, 2]])


def _reference(model, prompt_ids: list[int], trie: ActionTrie) -> tuple[int, float]:
    """One request, no padding, no cache: the full sequence is run again at every step."""
    ids, node, log_probability = list(prompt_ids), trie.root, 0.0
    while isinstance(node, dict):
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        allowed = trie.allowed(node)
        scores = logits[allowed].log_softmax(-1)
        best = int(scores.argmax())
        log_probability += float(scores[best])
        ids.append(allowed[best])
        node = trie.step(node, allowed[best])
    return node, float(torch.tensor(log_probability).exp())


@pytest.mark.parametrize("seed", range(6))
def test_constrained_answers_are_always_actions_and_equal_the_uncached_search(tiny_llama, seed):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(initializer_range=0.5)).eval()  # peaked, varied random logits
    prompt = ChatPrompt(tokenizer, max_length=64)
    trie = ActionTrie(prompt.action_ids(ACTIONS))
    generator = torch.Generator().manual_seed(seed)
    words = ["wake", "me", "at", "seven", "play", "jazz", "is", "it", "raining", "call", "mom", "please"]
    requests = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (int(n),), generator=generator))
        for n in torch.randint(1, 12, (8,), generator=generator)
    ]
    prompts = [prompt.prompt_ids(text, trie.depth) for text in requests]  # different lengths: left padding
    ids, mask = left_padded(prompts, tokenizer.pad_token_id).values()
    with torch.no_grad():
        index, probability = constrained_greedy(model, ids, mask, trie, tokenizer.pad_token_id)
        expected = [_reference(model, p, trie) for p in prompts]
    assert all(0 <= i < len(ACTIONS) for i in index.tolist())
    assert index.tolist() == [i for i, _ in expected]
    torch.testing.assert_close(
        probability, torch.tensor([p for _, p in expected], dtype=torch.float), atol=1e-4, rtol=1e-3
    )
    assert len(set(index.tolist())) > 1  # the requests do lead to different actions


def test_free_greedy_stops_at_the_end_token_and_scores_its_tokens(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    prompt = ChatPrompt(tokenizer, max_length=64)
    prompts = [prompt.prompt_ids("wake me"), prompt.prompt_ids("play some jazz now please")]
    ids, mask = left_padded(prompts, tokenizer.pad_token_id).values()
    tokens, probability = free_greedy(model, ids, mask, 5, prompt.end_id, tokenizer.pad_token_id)
    reference = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert torch.equal(tokens, reference[:, ids.shape[1] :])
    assert tokens.shape == (2, 5) and ((0 < probability) & (probability <= 1)).all()
