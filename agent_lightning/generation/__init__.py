"""The generative agent's parts usable without a Trainer: chat prompts and responses as token ids, left-padded chat
batches, and decoding constrained to a closed action set (or free)."""

from agent_lightning.generation.batches import ChatCollator, ChatExamples, LeftPaddingCollator, left_pad, left_padded
from agent_lightning.generation.decoding import (
    ActionTrie,
    constrained_greedy,
    decode_answers,
    free_greedy,
    position_ids,
)
from agent_lightning.generation.prompts import (
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    ChatPrompt,
    continuation_prompt,
    end_token_id,
)

__all__ = [
    "IGNORE_INDEX",
    "PLAIN_TEMPLATE",
    "ActionTrie",
    "ChatCollator",
    "ChatExamples",
    "ChatPrompt",
    "LeftPaddingCollator",
    "constrained_greedy",
    "continuation_prompt",
    "decode_answers",
    "end_token_id",
    "free_greedy",
    "left_pad",
    "left_padded",
    "position_ids",
]
