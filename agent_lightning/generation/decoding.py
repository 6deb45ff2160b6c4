"""Decoding a decoder's answer: greedy search constrained to a closed set of actions, or free greedy generation.

Constrained decoding walks a prefix tree (:class:`ActionTrie`) of the actions' token ids (each followed by the end
token): at every step only the children of the row's current node may be chosen, so every answer is one of the
actions. The confidence is the answer's sequence probability under the model restricted to the set (each step's
softmax renormalised over the allowed tokens), a probability in ``[0, 1]`` like a classifier's softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ActionTrie", "constrained_greedy", "free_greedy", "position_ids"]


class ActionTrie:
    """A prefix tree over token-id sequences; sequence ``i`` ends at a leaf that records ``i``.

    Args:
        sequences: one token-id list per action (its response ids, ending with the end token).

    Raises:
        ValueError: two sequences are equal, or one is a prefix of another (the end token makes that impossible
            for response ids).

    Example:
        >>> trie = ActionTrie([[5, 7, 2], [5, 9, 2]])
        >>> trie.allowed(trie.root), trie.allowed(trie.step(trie.root, 5))
        ([5], [7, 9])
    """

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.root: dict[int, Any] = {}
        self.depth = max(len(s) for s in sequences)
        for index, sequence in enumerate(sequences):
            node = self.root
            for position, token in enumerate(sequence):
                child = node.get(token)
                if isinstance(child, int) or (position == len(sequence) - 1 and child is not None):
                    raise ValueError(f"Token sequence {index} {list(sequence)} collides with another action's.")
                if position == len(sequence) - 1:
                    node[token] = index
                else:
                    node = node.setdefault(token, {})

    def allowed(self, node: dict[int, Any]) -> list[int]:
        """The tokens that may follow ``node``."""
        return list(node)

    def step(self, node: dict[int, Any], token: int) -> dict[int, Any] | int:
        """The node after ``token``: a dict, or the action index at a leaf."""
        return node[token]


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that count real tokens only, so a left-padded row starts at 0 (as ``generate`` does)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def constrained_greedy(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, trie: ActionTrie, pad_token_id: int
) -> tuple[Tensor, Tensor]:
    """Greedy decoding restricted to the trie's sequences, with the model's key/value cache.

    Args:
        model: a Hugging Face causal LM.
        input_ids: left-padded prompts ``(B, P)``.
        attention_mask: ``(B, P)``.
        trie: the allowed answers.
        pad_token_id: fed to rows that have finished.

    Returns:
        ``(index, probability)``, each ``(B,)``: the chosen sequence of every row and its probability among the
        allowed answers.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    nodes: list[Any] = [trie.root] * batch
    log_probability = torch.zeros(batch, device=device)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    for _ in range(trie.depth):
        logits = output.logits[:, -1].float()
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        for row, node in enumerate(nodes):
            if isinstance(node, dict):
                allowed[row, trie.allowed(node)] = True
            else:
                allowed[row, pad_token_id] = True  # finished: anything, ignored
        scores = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)
        chosen = scores.argmax(-1)
        for row, node in enumerate(nodes):
            if isinstance(node, dict):
                token = int(chosen[row])
                log_probability[row] += scores[row, token]
                nodes[row] = trie.step(node, token)
            else:
                chosen[row] = pad_token_id
        if not any(isinstance(node, dict) for node in nodes):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        output = model(
            input_ids=chosen[:, None],
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask)[:, -1:],
            cache=output.cache,
            use_cache=True,
        )
    index = torch.tensor([int(node) for node in nodes], device=device)
    return index, log_probability.exp()


@torch.no_grad()
def free_greedy(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    end_token_id: int,
    pad_token_id: int,
) -> tuple[Tensor, Tensor]:
    """Unconstrained greedy generation (``model.generate``) until the end token or ``max_new_tokens``.

    Returns:
        ``(new_tokens, mean_probability)``: the generated ids ``(B, N)`` (``pad_token_id`` after the end) and the
        mean probability of each row's generated tokens ``(B,)``.
    """
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=end_token_id,
        pad_token_id=pad_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    new_tokens = generated.sequences[:, input_ids.shape[1] :]
    scores = torch.stack(generated.scores, dim=1).float().log_softmax(-1)  # (B, N, V)
    token_logp = scores.gather(-1, new_tokens[..., None]).squeeze(-1)
    finished_before = torch.cumsum(new_tokens == end_token_id, dim=1) - (new_tokens == end_token_id).long()
    real = finished_before == 0  # tokens up to and including the first end token
    mean_logp = (token_logp * real).sum(1) / real.sum(1).clamp(min=1)
    return new_tokens, mean_logp.exp()
