"""One way to pick the modules that compression acts on, shared by every callback.

The default is "the linear layers inside the transformer blocks", which knows Hugging Face BERT-like
(``encoder.layer.N``), GPT-2 (``transformer.h.N`` with ``Conv1D``) and Llama-like (``model.layers.N``) layouts, and
falls back to "every linear layer except the last one" (the head) for modules it does not recognise. Users refine it
with glob patterns over module names (``fnmatch``: ``*`` matches dots too), e.g. ``include=["*.attention.*"]`` or
``exclude=["*.output.dense"]``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = [
    "LINEAR_TYPES",
    "TransformerBlock",
    "block_list",
    "check_patterns",
    "find_blocks",
    "is_linear",
    "linear_in_out",
    "select_modules",
    "short_name",
]

_BLOCK_LIST = re.compile(r"(^|\.)(layer|layers|h|blocks|block)$")


LINEAR_TYPES: tuple[type, ...] = (nn.Linear, Conv1D)


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or HF ``Conv1D`` (GPT-2's linear with a transposed weight), including subclasses such as
    fake-quantized linears."""
    return isinstance(module, LINEAR_TYPES)


def linear_in_out(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear module; ``Conv1D`` stores its weight as ``(in, out)``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and _BLOCK_LIST.search(name)
    ]


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ``nn.ModuleList`` of ``model``'s transformer blocks (the longest such list).

    Raises:
        ValueError: the model has no ``layer``/``layers``/``h``/``blocks`` module list.
    """
    lists = _block_lists(model)
    if not lists:
        raise ValueError(
            f"{type(model).__name__} has no list of transformer blocks (a ModuleList named layer, layers, h or "
            "blocks); layer-wise features need a BERT-like, GPT-2 or Llama-like layout."
        )
    return max(lists, key=lambda item: len(item[1]))


def check_patterns(argument: str, patterns: Sequence[str] | None) -> None:
    """Raise ``TypeError`` unless ``patterns`` is ``None`` or a list of glob strings (a bare string is refused:
    it would be read as a list of characters)."""
    if patterns is not None and (isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns)):
        raise TypeError(f"{argument}={patterns!r} must be a list of glob patterns, e.g. ['*.intermediate.dense'].")


def select_modules(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    argument: str = "include",
) -> dict[str, nn.Module]:
    """The linear modules that compression should act on, by qualified name, in model order.

    Args:
        model: any module (a LightningModule, an HF model, a plain ``nn.Module``).
        include: glob patterns over module names; ``None`` means the default described in the module docstring.
        exclude: glob patterns removed from the selection (e.g. ``["*classifier*"]``).
        argument: the argument's name for the error message (e.g. ``"Pruning(include=...)"``).

    Raises:
        ValueError: nothing matches; the message lists the linear modules that exist.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
        >>> list(select_modules(BertForSequenceClassification(config), include=["*.intermediate.dense"]))
        ['bert.encoder.layer.0.intermediate.dense', 'bert.encoder.layer.1.intermediate.dense']
    """
    linears = {name: module for name, module in model.named_modules() if name and is_linear(module)}
    if include is None:
        prefixes = [f"{name}." for name, _ in _block_lists(model)]
        if prefixes:
            chosen = {n: m for n, m in linears.items() if n.startswith(tuple(prefixes))}
        else:  # unknown layout: every linear except the last one, which is usually the output head
            chosen = dict(list(linears.items())[:-1])
    else:
        chosen = {n: m for n, m in linears.items() if any(fnmatch.fnmatchcase(n, p) for p in include)}
    if exclude:
        chosen = {n: m for n, m in chosen.items() if not any(fnmatch.fnmatchcase(n, p) for p in exclude)}
    if not chosen:
        listed = ", ".join(list(linears)[:40]) + (" ..." if len(linears) > 40 else "")
        raise ValueError(
            f"{argument}={list(include) if include is not None else None!r} with exclude={exclude!r} matches no linear "
            f"layer. The linear layers of this model are: [{listed}]. Give glob patterns over these names, "
            "e.g. ['*.layer.*.intermediate.dense']."
        )
    return chosen


@dataclass
class TransformerBlock:
    """The structured parts of one transformer block, found by introspection.

    ``ffn_in`` produce the hidden neurons (one output row each: BERT ``intermediate.dense``, Llama ``gate_proj`` and
    ``up_proj``); ``ffn_out`` consume them (one input column each). ``attention_in`` are the query/key/value
    projections (output rows grouped by head) and ``attention_out`` the output projection (input columns grouped by
    head). Under grouped-query attention (Llama, SmolLM2) the key/value projections have ``num_kv_heads`` heads, each
    shared by ``group_size`` consecutive query heads. Names are relative to the model given to :func:`find_blocks`.
    """

    index: int
    prefix: str
    ffn_in: list[str]
    ffn_out: str | None
    attention_in: list[str]
    attention_out: str | None
    attention_module: str | None
    num_heads: int | None
    head_dim: int | None
    num_kv_heads: int | None = None

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        if not self.num_heads or not self.num_kv_heads:
            return 1
        return self.num_heads // self.num_kv_heads


_FFN_LAYOUTS = (  # (producers, consumer)
    (("intermediate.dense",), "output.dense"),  # BERT, RoBERTa, MiniLM
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),  # Llama, Mistral, Qwen
    (("mlp.fc1",), "mlp.fc2"),  # OPT-like, ViT-like
)
_ATTENTION_LAYOUTS = (  # (attention module, q/k/v, output)
    (
        "attention.self",
        ("attention.self.query", "attention.self.key", "attention.self.value"),
        "attention.output.dense",
    ),
    ("self_attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj"),
)


def find_blocks(model: nn.Module) -> list[TransformerBlock]:
    """The transformer blocks of ``model`` with their FFN and attention projections (empty if none are found)."""
    modules = dict(model.named_modules())
    blocks: list[TransformerBlock] = []
    for list_name, block_list in _block_lists(model):
        for index in range(len(block_list)):
            prefix = f"{list_name}.{index}."
            ffn_in, ffn_out = [], None
            for producers, consumer in _FFN_LAYOUTS:
                if all(prefix + p in modules for p in producers) and prefix + consumer in modules:
                    ffn_in, ffn_out = [prefix + p for p in producers], prefix + consumer
                    break
            attention_in, attention_out, attention_module, heads, head_dim, kv_heads = [], None, None, None, None, None
            for owner, projections, output in _ATTENTION_LAYOUTS:
                if all(prefix + p in modules for p in projections) and prefix + output in modules:
                    attention_module = prefix + owner
                    attention_in, attention_out = [prefix + p for p in projections], prefix + output
                    heads, head_dim = _head_geometry(modules[attention_module], modules[attention_in[0]])
                    if head_dim:
                        kv_heads = linear_in_out(modules[attention_in[1]])[1] // head_dim
                    break
            if ffn_out or attention_out:
                blocks.append(
                    TransformerBlock(
                        index,
                        prefix,
                        ffn_in,
                        ffn_out,
                        attention_in,
                        attention_out,
                        attention_module,
                        heads,
                        head_dim,
                        kv_heads,
                    )
                )
    return blocks


def _head_geometry(attention: nn.Module, query: nn.Module) -> tuple[int | None, int | None]:
    head_dim = getattr(attention, "attention_head_size", None) or getattr(attention, "head_dim", None)
    if head_dim is None:
        return None, None
    return linear_in_out(query)[1] // head_dim, head_dim


def short_name(name: str) -> str:
    """A module name without the wrapper prefixes (``model.bert.encoder.``), for log tags."""
    return re.sub(r"^(model\.)?(bert|roberta|transformer|model)\.(encoder\.)?", "", name)
