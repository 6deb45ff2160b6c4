"""How a request becomes a chat prompt and an action becomes the response a decoder is trained to write.

The prompt is the tokenizer's chat template (a system message when given, the request as the user's message,
optionally followed by the allowed actions, then the assistant's turn opened); a tokenizer without a chat template
gets a plain ``Request: ...`` / ``Answer:`` layout. The pieces around the request are tokenized once and the request
alone is truncated, so a long request never pushes the template or the answer out of ``max_length``. Training
(:class:`~agent_lightning.datamodules.TextClassificationDataModule` with ``task="generation"``) and acting
(:meth:`~agent_lightning.Agent.act`) build token ids with the same :class:`ChatPrompt`, so they always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_lightning.evaluation import UNLABELED

__all__ = ["IGNORE_INDEX", "PLAIN_TEMPLATE", "ChatPrompt", "continuation_prompt", "end_token_id"]

#: the label of prompt and padding positions, which the loss skips: cross-entropy's ignore_index, as for an
#: unlabelled row (:data:`agent_lightning.evaluation.UNLABELED`)
IGNORE_INDEX = UNLABELED
_REQUEST = "\x00request\x00"
#: the layout used when the tokenizer has no chat template
PLAIN_TEMPLATE = "{system}Request: {request}\nAnswer: "


def end_token_id(tokenizer: Any) -> int:
    """The token that ends a response: the end-of-text token (``<|im_end|>`` for ChatML models), else ``[SEP]``.

    Raises:
        ValueError: the tokenizer has neither.
    """
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError(
        f"The tokenizer {type(tokenizer).__name__} has no end-of-text (eos) or [SEP] token to end a response; give "
        "it an eos_token, or use a model whose tokenizer has one."
    )


def continuation_prompt(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """A plain language model's prompt: ``text``'s token ids as training saw texts begin (``[BOS]``/``[CLS]`` kept),
    without the end-of-text marker the tokenizer appends (``[SEP]``/``</s>``), so that generation continues it."""
    ids = list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
    ends = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None}
    while len(ids) > 1 and ids[-1] in ends:
        ids.pop()
    return ids


@dataclass
class ChatPrompt:
    """Token ids of prompts and responses for one tokenizer and prompt setting.

    Args:
        tokenizer: a Hugging Face tokenizer (its ``chat_template`` is used when it has one).
        max_length: longest prompt plus response, in tokens.
        system_prompt: the system message; ``None`` keeps the template's default (SmolLM2's names itself).
        actions: listed after the request (``Answer with one of: ...``) when given: what a zero-shot model needs.

    Example:
        >>> from agent_lightning.backbone import load_tokenizer, resolve_backbone
        >>> prompt = ChatPrompt(load_tokenizer(resolve_backbone(None)), max_length=32)
        >>> prompt.tokenizer.decode(prompt.prompt_ids("wake me at seven"))
        'request : wake me at seven answer :'
        >>> prompt.tokenizer.decode(prompt.response_ids("set_alarm"))
        'set _ alarm [SEP]'
    """

    tokenizer: Any
    max_length: int
    system_prompt: str | None = None
    actions: Sequence[str] | None = None
    _head: list[int] = field(init=False, repr=False)
    _tail: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        content = _REQUEST
        if self.actions:
            content += "\n\nAnswer with one of: " + ", ".join(self.actions) + "."
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages.append({"role": "user", "content": content})
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            system = f"{self.system_prompt}\n" if self.system_prompt else ""
            rendered = PLAIN_TEMPLATE.format(system=system, request=content)
        head, tail = rendered.split(_REQUEST)
        self._head, self._tail = self._ids(head), self._ids(tail)
        self.end_id = end_token_id(self.tokenizer)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    @property
    def template_length(self) -> int:
        """Tokens of the prompt around the request."""
        return len(self._head) + len(self._tail)

    def prompt_ids(self, request: str, response_length: int = 0) -> list[int]:
        """The prompt's token ids, the request truncated so that ``response_length`` more tokens fit in
        ``max_length``.

        Raises:
            ValueError: the template and the response alone leave no room for the request.
        """
        room = self.max_length - self.template_length - response_length
        if room < 1:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for the request: the prompt template takes "
                f"{self.template_length} tokens and the answer {response_length}. Raise max_length to at least "
                f"{self.template_length + response_length + 16}, or shorten system_prompt / drop the listed actions."
            )
        return self._head + self._ids(request)[:room] + self._tail

    def response_ids(self, response: str) -> list[int]:
        """The response's token ids followed by the end token."""
        return self._ids(response) + [self.end_id]

    def action_ids(self, actions: Sequence[str]) -> list[list[int]]:
        """Each action's response ids, checked to be distinct (constrained decoding tells actions apart by them).

        Raises:
            ValueError: two actions encode to the same tokens (e.g. characters the tokenizer maps to unknown).
        """
        ids = [self.response_ids(action) for action in actions]
        seen: dict[tuple[int, ...], str] = {}
        for action, sequence in zip(actions, ids):
            other = seen.setdefault(tuple(sequence), action)
            if other != action:
                raise ValueError(
                    f"The actions {other!r} and {action!r} encode to the same tokens {sequence} with this tokenizer, "
                    "so a generated answer cannot tell them apart. Rename one of them, or use a tokenizer that "
                    "encodes both."
                )
        return ids

    def example(self, request: str, response: str) -> dict[str, list[int]]:
        """A training example: ``input_ids`` (prompt + response) and ``labels`` (``-100`` over the prompt)."""
        response_ids = self.response_ids(response)
        return self.example_ids(request, response_ids, len(response_ids))

    def example_ids(self, request: str, answer_ids: list[int], room: int) -> dict[str, list[int]]:
        """:meth:`example` from the answer's ids (``[]``: the prompt alone), the request truncated to leave ``room``
        answer tokens (the longest action's, so that every prompt of an action set is cut alike)."""
        prompt = self.prompt_ids(request, room)
        return {"input_ids": prompt + answer_ids, "labels": [IGNORE_INDEX] * len(prompt) + answer_ids}
