"""Physically removing attention heads and feed-forward neurons, and rebuilding such a model when it is loaded.

Structured pruning first *masks* heads and neurons (zeros, same shapes) while training; at the end the zeroed rows
and columns are cut out of the ``nn.Linear`` layers so the model is really smaller and faster. What was kept is
recorded in the Hugging Face config, so that a saved folder or checkpoint can be rebuilt:

- ``config.intermediate_size`` is updated when every block keeps the same number of neurons, and for Llama-like
  configs (``num_key_value_heads``, ``head_dim``) ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim`` when
  every block keeps the same heads: then the folder loads with plain ``from_pretrained``;
- ``config.agent_lightning_structure`` records, per block, the number of heads, key/value heads and neurons kept
  (needed when blocks differ, or when heads were removed from a BERT-like model, whose config cannot express fewer
  heads of the same width). :func:`load_pretrained_pruned` and :class:`~agent_lightning.Agent` read it.

Under grouped-query attention the kept heads are query heads; a key/value head stays while its group keeps a query
head, and every group must keep the same number (:mod:`agent_lightning.pruning.units`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torchao.quantization.qat import FakeQuantizedLinear
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig
from transformers.pytorch_utils import prune_linear_layer

from agent_lightning.targets import TransformerBlock, find_blocks

__all__ = ["STRUCTURE_KEY", "build_from_config", "load_pretrained_pruned", "remove_structure", "shrink_to_structure"]

STRUCTURE_KEY = "agent_lightning_structure"


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _pruned_layer(module: nn.Module, index: torch.Tensor, dim: int) -> nn.Module:
    """``prune_linear_layer``, keeping a fake-quantized layer (QAT) fake-quantized with its own quantizers: the kept
    output channels (``dim=0``) keep their weight scales, so the ranges QAT froze stay the ones it converts with."""
    pruned = prune_linear_layer(module, index, dim=dim)
    if not isinstance(module, FakeQuantizedLinear):
        return pruned
    module.weight, module.bias = pruned.weight, pruned.bias
    module.in_features, module.out_features = pruned.in_features, pruned.out_features
    quantizer = module.weight_fake_quantizer
    if dim == 0:
        for name in ("scale", "zero_point"):
            value = getattr(quantizer, name, None)
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] > index.numel():  # per channel
                setattr(quantizer, name, value[index.to(value.device)])
    return module


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def remove_structure(
    model: nn.Module,
    kept_neurons: Mapping[int, torch.Tensor],
    kept_heads: Mapping[int, torch.Tensor],
) -> dict[str, dict[str, int]]:
    """Cut pruned neurons and heads out of ``model``'s transformer blocks, in place.

    Args:
        model: the module whose blocks :func:`find_blocks` finds (the same root used while masking).
        kept_neurons: block index -> sorted indices of the FFN neurons to keep.
        kept_heads: block index -> sorted indices of the attention (query) heads to keep.

    Returns:
        The structure record ``{block index: {"heads": n, "kv_heads": k, "intermediate_size": m}}`` (keys as
        strings for JSON).

    Raises:
        ValueError: under grouped-query attention, the kept heads leave the key/value groups unequal.
    """
    blocks = {block.index: block for block in find_blocks(model)}
    record: dict[str, dict[str, int]] = {}
    for index, block in blocks.items():
        entry: dict[str, int] = {}
        if index in kept_neurons and block.ffn_out is not None:
            keep = kept_neurons[index].to(torch.long)
            for name in block.ffn_in:
                _set(model, name, _pruned_layer(model.get_submodule(name), keep.to(_device(model, name)), dim=0))
            _set(model, block.ffn_out, _pruned_layer(model.get_submodule(block.ffn_out), keep, dim=1))
            entry["intermediate_size"] = int(keep.numel())
        if index in kept_heads and block.attention_out is not None:
            keep = kept_heads[index].to(torch.long).cpu()
            groups = keep // block.group_size
            kv_keep = torch.unique(groups)
            counts = torch.bincount(groups)[kv_keep]
            if bool((counts != counts[0]).any()):
                raise ValueError(
                    f"Block {index} keeps query heads {keep.tolist()}: under grouped-query attention every key/value "
                    f"group must keep the same number of its {block.group_size} query heads (Pruning(gqa='queries') "
                    "prunes them evenly)."
                )
            rows = _head_rows(keep, block.head_dim)
            query, key, value = block.attention_in
            _set(model, query, _pruned_layer(model.get_submodule(query), rows, dim=0))
            kv_rows = _head_rows(kv_keep, block.head_dim)
            for name in (key, value):
                _set(model, name, _pruned_layer(model.get_submodule(name), kv_rows, dim=0))
            _set(model, block.attention_out, _pruned_layer(model.get_submodule(block.attention_out), rows, dim=1))
            attention = model.get_submodule(block.attention_module)
            _set_head_count(attention, int(keep.numel()), int(kv_keep.numel()), block.head_dim)
            entry["heads"] = int(keep.numel())
            entry["kv_heads"] = int(kv_keep.numel())
        if entry:
            record[str(index)] = entry
    _record_in_config(model, record)
    return record


def _device(model: nn.Module, name: str) -> torch.device:
    return model.get_submodule(name).weight.device


def _set_head_count(attention: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    # BERT-like modules keep these as attributes; Llama-like ones reshape with -1 and repeat each key/value head
    # num_key_value_groups times.
    if hasattr(attention, "num_attention_heads"):
        attention.num_attention_heads = heads
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = heads * head_dim
    for name, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
        if isinstance(getattr(attention, name, None), int):
            setattr(attention, name, value)
    if hasattr(attention, "num_key_value_groups"):
        attention.num_key_value_groups = heads // kv_heads


def _configs(model: nn.Module):
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig) and id(config) not in seen:
            seen.add(id(config))
            yield config


def _record_in_config(model: nn.Module, record: dict[str, dict[str, int]]) -> None:
    for config in _configs(model):
        merged = {**getattr(config, STRUCTURE_KEY, {}), **record}
        setattr(config, STRUCTURE_KEY, merged)
        blocks = getattr(config, "num_hidden_layers", None)
        every_block = len(merged) == blocks
        sizes = {entry.get("intermediate_size") for entry in merged.values()}
        if len(sizes) == 1 and None not in sizes and every_block and hasattr(config, "intermediate_size"):
            config.intermediate_size = sizes.pop()
        heads = {(entry.get("heads"), entry.get("kv_heads")) for entry in merged.values()}
        llama_like = all(hasattr(config, name) for name in ("num_key_value_heads", "head_dim", "num_attention_heads"))
        if len(heads) == 1 and None not in next(iter(heads)) and every_block and llama_like:
            head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
            config.num_attention_heads, config.num_key_value_heads = heads.pop()
            config.head_dim = head_dim  # explicit: no longer hidden_size // num_attention_heads


def shrink_to_structure(model: nn.Module, record: Mapping[str, Mapping[str, int]]) -> None:
    """Give a freshly built (full-size) model the shapes of a pruned one, so that its weights load.

    The kept rows are the first ones; the weights are overwritten by the load that follows.
    """
    kept_neurons, kept_heads = {}, {}
    # Only shrink what differs from the built size (the config may already say the pruned sizes).
    for index, block, entry, neurons, heads in _size_mismatches(model, record):
        if neurons:
            kept_neurons[index] = torch.arange(entry["intermediate_size"])
        if heads:
            kv_heads = entry.get("kv_heads", entry["heads"] if block.group_size == 1 else block.num_kv_heads)
            per_group = entry["heads"] // kv_heads  # the first kv_heads groups, each keeping its first queries
            kept_heads[index] = torch.tensor(
                [group * block.group_size + j for group in range(kv_heads) for j in range(per_group)]
            )
    remove_structure(model, kept_neurons, kept_heads)


def _ffn_width(model: nn.Module, block: TransformerBlock) -> int | None:
    if block.ffn_out is None:
        return None
    return model.get_submodule(block.ffn_in[0]).weight.shape[0]


def load_pretrained_pruned(folder: str | os.PathLike, model_class=None, config=None) -> nn.Module:
    """Load an HF folder written after structured pruning (heads and/or neurons removed).

    Args:
        folder: the folder (``config.json`` + weights).
        model_class: the ``AutoModel...`` class to build (default ``AutoModelForSequenceClassification``).
        config: an already-loaded config of that folder, to skip reading it again.

    Example:
        >>> from transformers import BertConfig
        >>> config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
        >>> model = AutoModelForSequenceClassification.from_config(config)
        >>> remove_structure(model.bert, {0: torch.arange(4)}, {0: torch.tensor([1])})
        {'0': {'intermediate_size': 4, 'heads': 1, 'kv_heads': 1}}
        >>> folder = getfixture("tmp_path")
        >>> model.save_pretrained(folder)
        >>> load_pretrained_pruned(folder).bert.encoder.layer[0].intermediate.dense.out_features
        4
    """
    model_class = model_class or AutoModelForSequenceClassification
    config = config or AutoConfig.from_pretrained(folder)
    if not getattr(config, STRUCTURE_KEY, None):
        return model_class.from_pretrained(folder, config=config)
    model = _from_config(config, model_class)
    record = getattr(config, STRUCTURE_KEY)
    if not _size_mismatches(model, record):
        # the config states the pruned sizes itself (every block alike): transformers' own load, ties included
        return model_class.from_pretrained(folder, config=config)
    shrink_to_structure(model, record)
    model.load_state_dict(_read_weights(folder), strict=True)
    return model


def build_from_config(config, model_class=None) -> nn.Module:
    """A randomly initialised model of ``config``'s architecture, pruned shapes included."""
    model = _from_config(config, model_class or AutoModelForSequenceClassification)
    record = getattr(config, STRUCTURE_KEY, None)
    if record:
        shrink_to_structure(model, record)
    return model


def _from_config(config, model_class) -> nn.Module:
    # Auto classes build with from_config; a concrete model class (LlamaForCausalLM) with _from_config
    return model_class.from_config(config) if hasattr(model_class, "from_config") else model_class._from_config(config)


def _size_mismatches(
    model: nn.Module, record: Mapping[str, Mapping[str, int]]
) -> list[tuple[int, TransformerBlock, Mapping[str, int], bool, bool]]:
    """The recorded blocks whose sizes as built differ from their pruned ones: ``(index, block, entry, neurons
    differ, heads differ)``."""
    blocks = {b.index: b for b in find_blocks(model)}
    found = []
    for key, entry in record.items():
        block = blocks[int(key)]
        neurons = "intermediate_size" in entry and _ffn_width(model, block) != entry["intermediate_size"]
        heads = "heads" in entry and block.num_heads != entry["heads"]
        if neurons or heads:
            found.append((int(key), block, entry, neurons, heads))
    return found


def _read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{str(folder)!r} holds no .safetensors weights; write it with save_pretrained.")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(path))
    return weights
