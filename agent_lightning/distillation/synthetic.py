"""Requests written by a language model for distillation: more inputs on which a student learns the teacher's answers
than the labelled set holds.

A few-shot prompt lists a handful of training requests of one action, and a causal LM (the student's own pretrained
base will do) continues the list by sampling; each continuation's first line is a new request. The requests carry no
label: the teacher answers them (sequence-level KD, Kim & Rush 2016) and the student learns its answers and its
token distributions on them (ZeroGen / TinyBERT-style augmentation, with fluent text instead of replaced tokens).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from agent_lightning.validation import check_count, check_int, check_number

__all__ = ["RequestGenerationConfig", "generate_requests", "normalized"]


@dataclass(frozen=True)
class RequestGenerationConfig:
    """How :func:`generate_requests` samples.

    Attributes:
        per_label: new requests wanted per label (fewer when sampling keeps repeating itself).
        shots: training requests of the label listed in each prompt (drawn at random; all when a label has fewer).
        temperature: sampling temperature.
        top_p: nucleus sampling's probability mass.
        max_new_tokens: longest continuation; one that fills it without ending its line is dropped (cut off).
        batch_size: prompts sampled at once.
        rounds: at most this many batches per label (``ceil(per_label / batch_size)`` is the least), so a label
            whose samples keep repeating ends instead of looping.
        seed: seeds the choice of shots and the sampling.
        header: the line above the listed requests.
    """

    per_label: int = 50
    shots: int = 6
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 24
    batch_size: int = 32
    rounds: int = 6
    seed: int = 0
    header: str = "Requests people said to their voice assistant:"

    def __post_init__(self) -> None:
        for name in ("per_label", "shots", "max_new_tokens", "batch_size", "rounds"):
            check_count(name, getattr(self, name))
        check_int("seed", self.seed, 0, "RequestGenerationConfig")
        check_number("temperature", self.temperature, "RequestGenerationConfig", minimum=0, strict_minimum=True)
        check_number("top_p", self.top_p, "RequestGenerationConfig", minimum=0, maximum=1, strict_minimum=True)
        if not isinstance(self.header, str):
            raise TypeError(f"RequestGenerationConfig(header={self.header!r}) must be a string (a line of text).")


def normalized(text: str) -> str:
    """``text`` lower-cased with runs of white space made single spaces: the key two requests repeat each other by.

    Example:
        >>> normalized("  Add MILK  to my list ")
        'add milk to my list'
    """
    return re.sub(r"\s+", " ", text).strip().lower()


def _prompt(header: str, shots: Sequence[str]) -> str:
    return header + "\n" + "".join(f"- {shot}\n" for shot in shots) + "-"


def _first_line(continuation: str) -> str | None:
    """The request a continuation wrote: its first line, or ``None`` when the line never ended (cut off)."""
    if "\n" not in continuation:
        return None
    return continuation.split("\n", 1)[0].strip(" -\t\"'") or None


def generate_requests(
    model: nn.Module,
    tokenizer,
    examples: Mapping[str, Sequence[str]],
    config: RequestGenerationConfig | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, list[str]]:
    """New requests in the style of ``examples``' requests of each label, sampled from ``model``.

    Each prompt is ``config.header`` and ``config.shots`` random requests of one label as a list; the model continues
    the list and the first completed line is kept unless it repeats (case and spacing aside) an example, a text of
    ``exclude`` (e.g. the validation and test requests) or a request already generated. The label only says which
    examples prompted a request; what the request asks is for the teacher to say.

    Args:
        model: a Hugging Face causal LM (``generate``), e.g. the student's pretrained base.
        tokenizer: its tokenizer; it must have a pad token (or an end token to pad with).
        examples: training requests by label; every label needs at least one.
        config: how to sample (:class:`RequestGenerationConfig`).
        exclude: texts never to return.

    Returns:
        ``{label: requests}``, at most ``config.per_label`` each, in ``examples``' label order.

    Raises:
        TypeError: ``model`` cannot ``generate``, or ``config`` is no :class:`RequestGenerationConfig`.
        ValueError: ``examples`` is empty or a label has no request.

    Example:
        >>> from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        >>> from agent_lightning.backbone import default_backbone_path
        >>> tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
        >>> tiny = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> config = RequestGenerationConfig(per_label=2, shots=1, max_new_tokens=4, rounds=1)
        >>> out = generate_requests(tiny, tokenizer, {"greet": ["hello there"]}, config)
        >>> list(out), len(out["greet"]) <= 2
        (['greet'], True)
    """
    config = RequestGenerationConfig() if config is None else config
    if not isinstance(config, RequestGenerationConfig):
        raise TypeError(
            f"config={config!r} must be a RequestGenerationConfig, e.g. RequestGenerationConfig(per_label=50)."
        )
    if not callable(getattr(model, "generate", None)):
        raise TypeError(
            f"model={type(model).__name__} cannot generate; pass a Hugging Face causal LM (AutoModelForCausalLM)."
        )
    if not examples or any(not texts for texts in examples.values()):
        empty = [label for label, texts in examples.items() if not texts] if examples else []
        raise ValueError(
            f"examples must hold at least one request per label (empty: {empty or 'no labels at all'}); pass the "
            "training requests grouped by label."
        )
    seen = {normalized(text) for texts in examples.values() for text in texts} | {normalized(t) for t in exclude}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng = random.Random(config.seed)
    torch_rng = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []  # whose random state generate draws from
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # continuations start where every prompt ends
    generated: dict[str, list[str]] = {}
    try:
        for label, texts in examples.items():
            kept: list[str] = []
            for _ in range(config.rounds):
                if len(kept) >= config.per_label:
                    break
                prompts = [
                    _prompt(config.header, rng.sample(list(texts), min(config.shots, len(texts))))
                    for _ in range(config.batch_size)
                ]
                encoded = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False).to(device)
                seed = int(torch.randint(2**31 - 1, (1,), generator=torch_rng))
                with torch.random.fork_rng(devices=devices), torch.no_grad():  # the caller's random state is kept
                    torch.manual_seed(seed)  # generate samples from the global generator
                    out = model.generate(
                        **encoded,
                        do_sample=True,
                        temperature=config.temperature,
                        top_p=config.top_p,
                        max_new_tokens=config.max_new_tokens,
                        pad_token_id=pad,
                    )
                new = out[:, encoded["input_ids"].shape[1] :]
                continuations = tokenizer.batch_decode(new, skip_special_tokens=True)
                for continuation in continuations:
                    request = _first_line(continuation)
                    if request is None or normalized(request) in seen or len(kept) >= config.per_label:
                        continue
                    seen.add(normalized(request))
                    kept.append(request)
            generated[label] = kept
    finally:
        tokenizer.padding_side = side
    return generated
