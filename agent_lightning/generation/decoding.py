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

__all__ = ["ActionTrie", "constrained_greedy", "decode_answers", "free_greedy", "position_ids"]


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


def _step(model: nn.Module, chosen: Tensor, attention_mask: Tensor, cache: Any) -> tuple[Tensor, Any]:
    """Feed each row's ``chosen`` token ``(B,)`` after the cached positions; the mask one longer, and the output."""
    attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
    output = model(
        input_ids=chosen[:, None],
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask)[:, -1:],
        cache=cache,
        use_cache=True,
    )
    return attention_mask, output


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
        attention_mask, output = _step(model, chosen, attention_mask, output.cache)
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
    """Unconstrained greedy generation, with the model's key/value cache, until every row has written the end token
    or ``max_new_tokens`` tokens.

    Args:
        model: a Hugging Face causal LM, or a decoding step with its call convention (e.g.
            :class:`~agent_lightning.deployment.decoder_program.OnnxDecoder`).
        input_ids: left-padded prompts ``(B, P)``.
        attention_mask: ``(B, P)``.
        max_new_tokens: the most tokens written per row.
        end_token_id: the token that ends an answer (written, then the row stops).
        pad_token_id: written after a row's end.

    Returns:
        ``(new_tokens, mean_probability)``: the generated ids ``(B, N)`` (``pad_token_id`` after the end) and the
        mean probability of each row's generated tokens up to and including its end token ``(B,)``.
    """
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    total = torch.zeros(batch, device=input_ids.device)
    counted = torch.zeros(batch, device=input_ids.device)
    written: list[Tensor] = []
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    for _ in range(max_new_tokens):
        log_probability = output.logits[:, -1].float().log_softmax(-1)
        chosen = log_probability.argmax(-1)
        live = ~finished
        total += torch.where(live, log_probability.gather(-1, chosen[:, None])[:, 0], 0.0)
        counted += live.float()
        chosen = torch.where(live, chosen, torch.full_like(chosen, pad_token_id))
        written.append(chosen)
        finished |= chosen == end_token_id
        if bool(finished.all()):
            break
        attention_mask, output = _step(model, chosen, attention_mask, output.cache)
    tokens = torch.stack(written, dim=1) if written else input_ids.new_zeros(batch, 0)
    return tokens, (total / counted.clamp(min=1)).exp()


def decode_answers(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    tokenizer: Any,
    trie: ActionTrie | None,
    actions: Sequence[str],
    max_new_tokens: int,
    end_token_id: int,
) -> tuple[list[str], Tensor]:
    """Answers to left-padded prompts: within the action set (``trie`` of ``actions``' token ids) or, with ``trie``
    ``None``, free text of up to ``max_new_tokens`` tokens; and each answer's confidence ``(B,)`` (the sequence
    probability among the actions, or the mean token probability of the free answer)."""
    pad = tokenizer.pad_token_id
    if trie is not None:
        index, probability = constrained_greedy(model, input_ids, attention_mask, trie, pad)
        return [actions[i] for i in index.tolist()], probability
    tokens, probability = free_greedy(model, input_ids, attention_mask, max_new_tokens, end_token_id, pad)
    return [text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)], probability
