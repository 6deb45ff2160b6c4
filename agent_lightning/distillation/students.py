"""Students built from their teacher: a subset of its layers (DistilBERT-style), optionally a narrower FFN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from agent_lightning.pruning.removal import remove_structure
from agent_lightning.targets import block_list, find_blocks

__all__ = ["keep_layers", "narrow_ffn"]


def keep_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep only the transformer blocks ``layers`` of ``model`` (in that order), in place.

    The kept blocks carry the teacher's weights (DistilBERT initialisation); embeddings, pooler and head are kept
    as they are. The Hugging Face config's ``num_hidden_layers`` (and per-layer lists such as ``layer_types``) are
    updated so that ``save_pretrained`` writes a folder that loads with plain ``from_pretrained``.

    Args:
        model: a Hugging Face model (BERT-like ``encoder.layer``, GPT-2 ``h``, Llama-like ``layers``).
        layers: indices of the blocks to keep, e.g. ``[0, 2, 4]`` of 6.

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: no block list is found, or an index is out of range or repeated.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32)
        >>> student = keep_layers(BertForSequenceClassification(config), [0, 2, 4])
        >>> len(student.bert.encoder.layer), student.config.num_hidden_layers
        (3, 3)
    """
    name, blocks = block_list(model)
    count = len(blocks)
    layers = list(layers)
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ValueError(
            f"student_layers={layers!r}: give distinct block indices in [0, {count - 1}] (the teacher has {count} "
            f"blocks in {name!r}), e.g. student_layers={list(range(0, count, 2))}."
        )
    model.set_submodule(name, nn.ModuleList(blocks[i] for i in layers))
    for index, block in enumerate(model.get_submodule(name)):
        for module in block.modules():  # attention modules know their position (KV cache, layer types)
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    config = getattr(model, "config", None)
    if config is not None:
        for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(config, attribute) and getattr(config, attribute) == count:
                setattr(config, attribute, len(layers))
        if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == count:
            config.layer_types = [config.layer_types[i] for i in layers]
    return model


def narrow_ffn(model: nn.Module, intermediate_size: int) -> nn.Module:
    """Keep the ``intermediate_size`` feed-forward neurons with the largest weight norm in every block, in place.

    Raises:
        ValueError: the size is not smaller than the current width, or the model has no known FFN layout.
    """
    kept: dict[int, torch.Tensor] = {}
    for block in find_blocks(model):
        if block.ffn_out is None:
            continue
        producers = [model.get_submodule(n).weight.detach() for n in block.ffn_in]
        consumer = model.get_submodule(block.ffn_out).weight.detach()
        width = producers[0].shape[0]
        if isinstance(intermediate_size, bool) or not isinstance(intermediate_size, int):
            raise ValueError(f"student_intermediate_size={intermediate_size!r} must be an integer.")
        if not 0 < intermediate_size < width:
            raise ValueError(
                f"student_intermediate_size={intermediate_size} must be in [1, {width - 1}] (the FFN has {width} "
                "neurons); leave it unset to keep the full width."
            )
        score = sum(w.float().pow(2).sum(1) for w in producers) + consumer.float().pow(2).sum(0)
        kept[block.index] = score.topk(intermediate_size).indices.sort().values
    if not kept:
        raise ValueError("student_intermediate_size: no feed-forward layers of a known layout were found.")
    remove_structure(model, kept, {})
    return model
