"""A Llama-like decoder as one ONNX decoding step with a key/value cache, for ONNX Runtime.

``DecoderProgram`` is the decoder's forward pass written as plain tensor code over the model's own modules (its
int8 linears, RMS norms, compacted tied embedding table): ``(input_ids (B, T), attention_mask (B, P + T),
position_ids (B, T), past keys and values of every block (B, K, P, D)) -> (logits of the last position (B, V),
present keys and values (B, K, P + T, D))``. The same graph prefills a prompt (``P = 0``) and decodes one token at a
time (``T = 1``). It is traced once with dynamic batch, length and past length and written as ``model.onnx``; in
PyTorch it is also the reference the exported graph is checked against.

Written out rather than traced through transformers because transformers' cache objects and mask builders do not
trace to a step-wise graph. Grouped-query attention is computed without repeating keys and values (queries are
grouped as ``(B, K, G, T, D)`` against ``(B, K, 1, P + T, D)``); the query, key and value projections (and SwiGLU's
gate and up projections) run as one matrix product when they are the same kind of layer: they read the same input,
so ONNX Runtime quantizes it once.

:class:`OnnxDecoder` and :class:`TorchDecoder` run the step with the call convention of a Hugging Face causal LM
that :func:`agent_lightning.generation.constrained_greedy` uses (``model(input_ids=..., attention_mask=...,
position_ids=..., cache=...)`` returning ``.logits`` ``(B, 1, V)`` and ``.cache``), so constrained decoding runs
unchanged on ONNX Runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent_lightning.deployment.onnx_layers import OnnxInt8Linear
from agent_lightning.deployment.onnx_program import onnx_session, write_onnx

__all__ = ["DecoderProgram", "DecoderStep", "OnnxDecoder", "TorchDecoder", "check_decoder", "write_decoder_onnx"]

#: Rotary embeddings whose frequencies depend on the sequence length cannot be one static graph.
_DYNAMIC_ROPE = ("dynamic", "longrope")


def check_decoder(model: nn.Module) -> None:
    """Refuse a causal LM that :class:`DecoderProgram` cannot write out.

    Raises:
        ValueError: not a Llama-like decoder (``model.layers`` of blocks with ``self_attn.q/k/v/o_proj``,
            ``mlp.gate/up/down_proj`` and RMS norms), a sliding attention window, or rotary embeddings that change
            with the length.
    """
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    needed = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
    config = getattr(model, "config", None)
    if not isinstance(layers, nn.ModuleList) or not all(
        _has(layer, name) for layer in layers for name in (*needed, "mlp.up_proj", "mlp.down_proj")
    ):
        raise ValueError(
            f"The ONNX export of a generative agent writes Llama-like decoders (Llama, SmolLM2, Qwen2-like: "
            f"model.layers with self_attn.q/k/v/o_proj and mlp.gate/up/down_proj); {type(model).__name__} is not "
            "one. Export it with --format hf."
        )
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        raise ValueError(
            f"{type(model).__name__} uses a sliding attention window ({config.sliding_window}), which the ONNX "
            "decoding step does not implement. Export it with --format hf."
        )
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope in _DYNAMIC_ROPE:
        raise ValueError(f"rope_type={rope!r} changes with the sequence length; export it with --format hf.")


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _fused(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing ``layers`` side by side (outputs concatenated), when they are all int8 ONNX layers or all
    plain ``nn.Linear``; ``None`` otherwise."""
    if all(isinstance(layer, OnnxInt8Linear) for layer in layers):
        weight = torch.cat([layer.weight_t.t() for layer in layers])
        scale = torch.cat([layer.weight_scale for layer in layers])
        return OnnxInt8Linear(weight, scale, torch.cat([layer.bias for layer in layers]))
    if all(type(layer) is nn.Linear for layer in layers):
        with_bias = [layer.bias is not None for layer in layers]
        if any(with_bias) and not all(with_bias):
            return None
        fused = nn.Linear(layers[0].in_features, sum(layer.out_features for layer in layers), all(with_bias))
        with torch.no_grad():
            fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
            if all(with_bias):
                fused.bias.copy_(torch.cat([layer.bias for layer in layers]))
        return fused.to(layers[0].weight.device)
    return None


class _Block(nn.Module):
    def __init__(self, layer: nn.Module, head_dim: int) -> None:
        super().__init__()
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.head_dim = head_dim
        self.widths = [attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features]
        self.qkv = _fused([attention.q_proj, attention.k_proj, attention.v_proj])
        if self.qkv is None:
            self.q_proj, self.k_proj, self.v_proj = attention.q_proj, attention.k_proj, attention.v_proj
        self.o_proj = attention.o_proj
        self.ffn = mlp.gate_proj.out_features
        self.gate_up = _fused([mlp.gate_proj, mlp.up_proj])
        if self.gate_up is None:
            self.gate_proj, self.up_proj = mlp.gate_proj, mlp.up_proj
        self.down_proj, self.act = mlp.down_proj, mlp.act_fn
        self.scaling = float(attention.scaling)

    def projections(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.qkv is None:
            return self.q_proj(h), self.k_proj(h), self.v_proj(h)
        return self.qkv(h).split(self.widths, dim=-1)

    def mlp(self, h: Tensor) -> Tensor:
        if self.gate_up is None:
            gate, up = self.gate_proj(h), self.up_proj(h)
        else:
            gate, up = self.gate_up(h).split([self.ffn, self.ffn], dim=-1)
        return self.down_proj(self.act(gate) * up)


class DecoderProgram(nn.Module):
    """One decoding step of a Llama-like causal LM with a key/value cache (see the module docstring).

    Shapes:
        - ``input_ids``: ``(B, T)`` int64, the new tokens (a left-padded prompt, or one token per row)
        - ``attention_mask``: ``(B, P + T)``, 1 for real tokens, over the cached and the new positions
        - ``position_ids``: ``(B, T)`` int64 (real tokens counted from 0, as :func:`~agent_lightning.generation.
          position_ids` gives)
        - ``past``: ``2 * num_layers`` tensors ``(B, K, P, D)``: keys and values of each block, in order
        - output: ``(logits (B, V), *present)``, ``present`` like ``past`` with ``P + T`` positions

    Args:
        model: a Llama-like ``...ForCausalLM`` (:func:`check_decoder`), whose modules are used as they are (int8
            :class:`~agent_lightning.deployment.onnx_layers.OnnxInt8Linear` layers included).

    Raises:
        ValueError: see :func:`check_decoder`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_decoder(model)
        base = model.model
        first = base.layers[0].self_attn
        head_dim = int(first.head_dim)
        self.embed, self.norm, self.head = base.embed_tokens, base.norm, model.lm_head
        self.blocks = nn.ModuleList(_Block(layer, head_dim) for layer in base.layers)
        self.head_dim = head_dim
        self.kv_heads = first.k_proj.out_features // head_dim
        rotary = base.rotary_emb
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone(), persistent=False)
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def _rotary(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, D / 2)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, D)
        return angles.cos() * self.rope_scaling, angles.sin() * self.rope_scaling

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor):
        batch, length = input_ids.shape
        total = attention_mask.shape[1]
        x = self.embed(input_ids)
        cos, sin = self._rotary(position_ids)
        key_positions = torch.arange(total, device=input_ids.device)
        query_positions = key_positions[total - length :]
        allowed = (key_positions[None, :] <= query_positions[:, None])[None] & attention_mask[:, None, :].bool()
        bias = torch.zeros(allowed.shape, device=x.device).masked_fill(~allowed, torch.finfo(torch.float32).min)
        bias = bias[:, None, None]  # (B, 1, 1, T, P + T): every group and query head
        presents: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            h = block.input_norm(x)
            q, k, v = block.projections(h)
            q = q.view(batch, length, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = k.view(batch, length, -1, self.head_dim).transpose(1, 2)  # (B, K, T, D)
            v = v.view(batch, length, -1, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            k = torch.cat([past[2 * index], k], dim=2)
            v = torch.cat([past[2 * index + 1], v], dim=2)
            presents += [k, v]
            grouped = q.reshape(batch, self.kv_heads, -1, length, self.head_dim)  # (B, K, G, T, D)
            scores = grouped @ k[:, :, None].transpose(-1, -2) * block.scaling + bias  # (B, K, G, T, P + T)
            attended = scores.softmax(-1) @ v[:, :, None]  # (B, K, G, T, D)
            attended = attended.reshape(batch, -1, length, self.head_dim).transpose(1, 2).reshape(batch, length, -1)
            x = x + block.o_proj(attended)
            x = x + block.mlp(block.post_norm(x))
        logits = self.head(self.norm(x[:, -1:]))[:, 0]
        return (logits, *presents)

    def empty_cache(self, batch: int) -> list[Tensor]:
        """Keys and values of no position: the ``past`` of a prefill."""
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [torch.zeros(shape) for _ in range(2 * self.num_layers)]


def write_decoder_onnx(program: DecoderProgram, path: str | os.PathLike) -> None:
    """Trace ``program`` on a small example (two rows, three new tokens after two cached ones) to an ONNX file with
    dynamic batch, new-token, past and total lengths."""
    past_length, length = 2, 3
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, length), generator=generator)
    mask = torch.ones(2, past_length + length, dtype=torch.long)
    mask[1, 0] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past_length:]
    shape = (2, program.kv_heads, past_length, program.head_dim)
    past = [torch.randn(shape, generator=generator) for _ in range(2 * program.num_layers)]
    names = [f"{kind}.{i}" for i in range(program.num_layers) for kind in ("past_key", "past_value")]
    presents = [name.replace("past", "present") for name in names]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "length"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "length"},
        "logits": {0: "batch"},
    }
    axes.update({name: {0: "batch", 2: "past"} for name in names})
    axes.update({name: {0: "batch", 2: "total"} for name in presents})
    inputs = ("input_ids", "attention_mask", "position_ids", *names)
    write_onnx(program, (ids, mask, positions, *past), path, inputs, ("logits", *presents), axes)


@dataclass
class DecoderStep:
    """What a decoding step returns, as a Hugging Face causal LM's output does: ``logits`` ``(B, 1, V)`` of the last
    position and the ``cache`` to pass to the next step."""

    logits: Tensor
    cache: Any


class TorchDecoder:
    """A :class:`DecoderProgram` run in PyTorch with the causal-LM call convention of
    :func:`~agent_lightning.generation.constrained_greedy`.

    Args:
        program: the decoding step.
    """

    def __init__(self, program: DecoderProgram) -> None:
        self.program = program.eval()

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: list[Tensor] | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 1,
    ) -> DecoderStep:
        past = cache if cache is not None else self.program.empty_cache(input_ids.shape[0])
        logits, *present = self.program(input_ids, attention_mask.long(), position_ids, *past)
        return DecoderStep(logits[:, None], present)


class OnnxDecoder:
    """The exported decoding step (``model.onnx`` of a generative agent's export) through an ONNX Runtime session,
    with the causal-LM call convention of :func:`~agent_lightning.generation.constrained_greedy`; the cache stays in
    ONNX Runtime's arrays between steps.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: torch's).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(path, threads)
        inputs = self.session.get_inputs()
        self.past_names = [i.name for i in inputs if i.name.startswith("past_")]
        kv_heads, head_dim = inputs[3].shape[1], inputs[3].shape[3]
        self.kv_shape = (int(kv_heads), int(head_dim))

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: list[np.ndarray] | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 1,
    ) -> DecoderStep:
        batch = input_ids.shape[0]
        if cache is None:
            empty = np.zeros((batch, self.kv_shape[0], 0, self.kv_shape[1]), dtype=np.float32)
            cache = [empty] * len(self.past_names)
        feeds = {
            "input_ids": input_ids.cpu().numpy().astype(np.int64),
            "attention_mask": attention_mask.cpu().numpy().astype(np.int64),
            "position_ids": position_ids.cpu().numpy().astype(np.int64),
            **dict(zip(self.past_names, cache)),
        }
        logits, *present = self.session.run(None, feeds)
        return DecoderStep(torch.from_numpy(logits)[:, None], present)
