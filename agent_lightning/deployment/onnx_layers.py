"""PyTorch layers that trace to ONNX Runtime's int8 kernels and compute in PyTorch what those kernels compute, so the
traced module is the reference its exported graph is checked against.

- :class:`OnnxInt8Linear`: ``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q) -> Cast -> Mul(x_scale * w_scale)
  -> Add(bias)``, which ONNX Runtime fuses into its ``DynamicQuantizeMatMul`` kernel.
- :class:`OnnxInt8SelfAttention`: a BERT-style self-attention whose query, key and value layers are int8, as one
  ``DynamicQuantizeLinear -> QAttention`` (ONNX Runtime's ``com.microsoft`` quantized attention: the three projections
  as one int8 matmul, then scores, mask, softmax and context in one kernel) instead of about thirty graph nodes.
- :class:`OnnxEmbeddings`: a BERT-style input layer whose request-independent part (the dequantized table, the
  position rows) ONNX Runtime computes once at load.

The int8 layers use *the model's own* int8 weights and per-channel scales (those QAT trained, not a fresh calibration).
Activations are quantized as ``DynamicQuantizeLinear`` does: one asymmetric uint8 scale over ``[0, 255]`` per tensor,
from its min and max (QAT with ``kernel="onnxruntime"`` trains with exactly this; the fbgemm scheme differs only in
using ``[0, 127]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from agent_lightning.quantization.embedding import CompactEmbedding

__all__ = [
    "MASK_FILTER",
    "KeyMask",
    "OnnxInt8Linear",
    "OnnxInt8SelfAttention",
    "OnnxEmbeddings",
    "fuse_encoder_layers",
]

#: What ``QAttention`` adds to the scores of padded keys (its default ``mask_filter_value``): like Hugging Face's
#: ``finfo.min``, it gives those keys probability 0 in float32.
MASK_FILTER = -10000.0


def _dynamic_quantize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_q, scale, zero_point)`` as ONNX ``DynamicQuantizeLinear``: the range holds 0, uint8 values as float."""
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (high - low) / 255
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero input: any scale gives zeros
    zero_point = torch.round(-low / scale).clamp(0, 255)
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255), scale, zero_point


class _DynamicQuantizedMatMul(torch.autograd.Function):
    """``x @ W`` with ``x`` quantized dynamically to uint8 and ``W`` int8 per output channel; traced to ONNX as
    ONNX Runtime's dynamic int8 pattern (the ``symbolic`` below)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor) -> Tensor:
        quantized, scale, zero_point = _dynamic_quantize(x.float())
        accumulated = (quantized - zero_point) @ weight_t.float()  # exact: integers below 2**24
        return (accumulated * (scale * weight_scale) + bias).to(x.dtype)

    @staticmethod
    def symbolic(g, x, weight_t, weight_scale, bias):  # the TorchScript-based ONNX exporter calls this
        quantized, scale, zero_point = g.op("DynamicQuantizeLinear", x, outputs=3)
        accumulated = g.op("Cast", g.op("MatMulInteger", quantized, weight_t, zero_point), to_i=1)  # to float
        return g.op("Add", g.op("Mul", accumulated, g.op("Mul", scale, weight_scale)), bias)


class OnnxInt8Linear(nn.Module):
    """An int8 linear layer as ONNX Runtime runs it: uint8 dynamic activations times int8 per-channel weights.

    Shapes:
        input: ``(*, in_features)`` float; output: ``(*, out_features)``.

    Args:
        weight: ``(out_features, in_features)`` int8 values.
        scale: ``(out_features,)`` float scale of each output channel.
        bias: ``(out_features,)`` float, or ``None``.

    Example:
        >>> layer = OnnxInt8Linear(torch.tensor([[1, -2], [3, 4]], dtype=torch.int8), torch.tensor([0.5, 0.25]))
        >>> y = layer(torch.tensor([[2.0, 1.0]]))  # about [2 * 0.5 - 1 * 1.0, 2 * 0.75 + 1 * 1.0]
        >>> torch.allclose(y, torch.tensor([[0.0, 2.5]]), atol=0.01)  # up to the uint8 rounding of the input
        True
    """

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D int8 tensor, got {weight.dtype} of shape {tuple(weight.shape)}.")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_t", weight.t().contiguous())  # (in, out): MatMulInteger's B
        self.register_buffer("weight_scale", scale.float().reshape(-1).contiguous())
        self.register_buffer("bias", torch.zeros(self.out_features) if bias is None else bias.detach().float())

    @classmethod
    def from_converted(cls, name: str, module: nn.Module) -> OnnxInt8Linear:
        """The same layer from a converted one (``agent_lightning.quantization.convert``): the int8 values and
        per-channel scales it holds.

        Raises:
            ValueError: ``module`` is not an int8 per-channel layer with zero points 0 (an int4, torchao or
                per-tensor layer).
        """
        if not isinstance(module, DynamicQuantizedLinear):
            raise ValueError(
                f"Layer {name!r} is {type(module).__name__}: the ONNX export carries int8 per-channel layers (QAT "
                "with weights='int8', activations='int8' and kernel 'auto', 'fbgemm' or 'onnxruntime'). Export "
                "int4 or weight-only models with --format int8."
            )
        weight = module.weight()
        if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
            raise ValueError(
                f"Layer {name!r} has one weight scale ({weight.qscheme()}); the ONNX export carries per-channel int8 "
                "layers, as QAT and agent_lightning.quantization.convert write them (not torch's quantize_dynamic)."
            )
        if bool(weight.q_per_channel_zero_points().ne(0).any()):
            raise ValueError(f"Layer {name!r} has non-zero weight zero points; the ONNX export needs symmetric ones.")
        return cls(weight.int_repr(), weight.q_per_channel_scales(), module.bias())

    def forward(self, x: Tensor) -> Tensor:
        return _DynamicQuantizedMatMul.apply(x, self.weight_t, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x uint8 dynamic"


class KeyMask:
    """The ``(batch, length)`` padding mask of the request a model is running, for its fused attention layers (Hugging
    Face hands attention layers a 4-D additive mask; ``QAttention`` takes the raw one). :func:`fuse_encoder_layers`
    sets it from the model's ``attention_mask`` argument for the length of each call."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None

    def capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is None and ids is not None:
            mask = torch.ones_like(ids)
        self.mask = None if mask is None else mask.to(torch.int32)

    def release(self, module: nn.Module, args: tuple, output: object) -> None:
        self.mask = None

    def get(self, batch: int, length: int) -> Tensor:
        if self.mask is None or tuple(self.mask.shape) != (batch, length):
            raise RuntimeError(
                "A fused int8 attention layer runs only inside the model it was fused into (which passes it the "
                f"padding mask); got no mask for ({batch}, {length}). Call the model, not the layer."
            )
        return self.mask


class _QuantizedSelfAttention(torch.autograd.Function):
    """Self-attention whose query, key and value projections are one int8 matmul of the dynamically quantized input;
    traced as ONNX Runtime's ``QAttention`` (the ``symbolic`` below)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight_t: Tensor, weight_scale: Tensor, bias: Tensor, key_mask: Tensor, heads: int):
        quantized, scale, zero_point = _dynamic_quantize(x.float())
        qkv = ((quantized - zero_point) @ weight_t.float()) * (scale * weight_scale) + bias  # exact integer sums
        batch, length = qkv.shape[:2]
        query, key, value = qkv.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (batch, heads, len, size)
        scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
        scores = scores + (1 - key_mask[:, None, None, :].float()) * MASK_FILTER
        context = scores.softmax(-1) @ value
        return context.transpose(1, 2).reshape(batch, length, -1).to(x.dtype)

    @staticmethod
    def symbolic(g, x, weight_t, weight_scale, bias, key_mask, heads):  # the TorchScript-based ONNX exporter calls this
        quantized, scale, zero_point = g.op("DynamicQuantizeLinear", x, outputs=3)
        inputs = (quantized, weight_t, bias, scale, weight_scale, key_mask, zero_point)
        context = g.op("com.microsoft::QAttention", *inputs, num_heads_i=heads)
        width = weight_t.type().sizes()[1] // 3
        context.setType(x.type().with_sizes([None, None, width]))  # (batch, length, heads * head_size)
        return context


class OnnxInt8SelfAttention(nn.Module):
    """A bidirectional self-attention with int8 query, key and value layers, as ONNX Runtime's ``QAttention`` runs it:
    the three :class:`OnnxInt8Linear` side by side (one dynamically quantized input, so one matmul computes all three
    exactly as the separate layers would), scaled dot products, padded keys masked, softmax, context.

    Shapes:
        hidden_states: ``(batch, length, in_features)``; output: ``(batch, length, heads * head_size)``.

    Args:
        query: the query layer; ``key`` and ``value`` alike, each ``heads * head_size`` outputs.
        heads: attention heads.
        key_mask: where the running model leaves its padding mask (see :func:`fuse_encoder_layers`).

    Raises:
        ValueError: the layers' sizes do not split into ``heads`` heads.
    """

    def __init__(
        self, query: OnnxInt8Linear, key: OnnxInt8Linear, value: OnnxInt8Linear, heads: int, key_mask: KeyMask
    ) -> None:
        super().__init__()
        sizes = {(layer.in_features, layer.out_features) for layer in (query, key, value)}
        if len(sizes) != 1 or heads < 1 or query.out_features % heads:
            raise ValueError(
                f"query, key and value must have the same shape with heads={heads} dividing their outputs; got "
                f"{sorted(sizes)}."
            )
        self.query, self.key, self.value, self.heads = query, key, value, heads
        self.key_mask = key_mask

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, **unused: object
    ) -> tuple[Tensor, None]:
        """Hugging Face's self-attention call; its 4-D ``attention_mask`` is replaced by the model's raw one."""
        # concatenated in the graph, not once here: the file keeps each layer's weights under its own name and ONNX
        # Runtime folds the Concat when it loads the model
        layers = (self.query, self.key, self.value)
        weight_t = torch.cat([layer.weight_t for layer in layers], 1)
        scale = torch.cat([layer.weight_scale for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        key_mask = self.key_mask.get(*hidden_states.shape[:2])
        return _QuantizedSelfAttention.apply(hidden_states, weight_t, scale, bias, key_mask, self.heads), None

    def extra_repr(self) -> str:
        return f"heads={self.heads}, QAttention"


class OnnxEmbeddings(nn.Module):
    """A BERT-family input layer, ``LayerNorm(word(input_ids) + token_type[0] + position[:length])``, for a program
    whose only inputs are token ids and the padding mask, written so that what does not depend on the request is
    computed by ONNX Runtime once, when it loads the model (the export keeps ONNX constants unfolded): the dequantized
    word table (its int8 or int4 rows stay so in the file), the type-0 row, the position table. What is left per
    request is two lookups, a slice and the layer norm.

    Shapes:
        input_ids: ``(batch, length)``; output: ``(batch, length, width)``.

    Args:
        embeddings: the model's embedding module (its ``word_embeddings`` an ``nn.Embedding`` or a
            :class:`~agent_lightning.quantization.embedding.CompactEmbedding`).
    """

    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.word_embeddings = embeddings.word_embeddings
        self.position_embeddings = embeddings.position_embeddings
        self.token_type_embeddings = embeddings.token_type_embeddings
        self.LayerNorm = embeddings.LayerNorm

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        cache_length: int = 0,
    ) -> Tensor:
        """Hugging Face's embeddings call, with ``input_ids`` only.

        Raises:
            ValueError: token types, position ids, input vectors or a cache were given.
        """
        others = {"token_type_ids": token_type_ids, "position_ids": position_ids, "inputs_embeds": inputs_embeds}
        given = [key for key, value in others.items() if value is not None] + (["cache_length"] if cache_length else [])
        if given:
            raise ValueError(f"OnnxEmbeddings computes from input_ids alone; got {given} too. Export without them.")
        words = self.word_embeddings
        if isinstance(words, CompactEmbedding):
            vectors = F.embedding(words.token_rows[input_ids].long(), words.dequantized().to(words.scale.dtype))
        else:
            vectors = words(input_ids)
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        return self.LayerNorm(vectors + self.token_type_embeddings.weight[0] + positions)


def _fused_embeddings(embeddings: nn.Module) -> OnnxEmbeddings | None:
    """An :class:`OnnxEmbeddings` of ``embeddings`` when it has BERT's parts and computes the same on a probe batch
    (a model that derives positions otherwise, e.g. RoBERTa's offset by the padding id, does not); else ``None``."""
    parts = ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")
    if not all(isinstance(getattr(embeddings, part, None), nn.Module) for part in parts):
        return None
    fused = OnnxEmbeddings(embeddings)
    length = min(8, fused.position_embeddings.num_embeddings)
    probe = torch.arange(length).reshape(1, -1) % fused.word_embeddings.num_embeddings
    with torch.no_grad():
        try:
            same = torch.allclose(fused(probe), embeddings(input_ids=probe), atol=1e-5)
        except (TypeError, ValueError, RuntimeError, IndexError):
            return None
    return fused if same else None


def fuse_encoder_layers(model: nn.Module) -> dict[str, int]:
    """Replace, in place, the parts of a BERT-family encoder that ONNX Runtime runs faster written otherwise: each
    bidirectional self-attention whose query, key and value layers are all :class:`OnnxInt8Linear` (after
    :func:`~agent_lightning.deployment.onnx_program.onnx_ready`'s conversion) by an :class:`OnnxInt8SelfAttention`,
    with ``model`` handing them its padding mask, and the base model's embeddings by :class:`OnnxEmbeddings` (where it
    computes the same). Decoders (causal attention, a key/value cache) are left as they are. Returns how many of each
    were replaced.

    The blocks' residual ``Add -> LayerNormalization`` pairs are left unfused on purpose: ONNX Runtime's
    ``SkipLayerNormalization`` kernel measured slower than the pair on CPU (``docs/exporting.md``).
    """
    key_mask = KeyMask()
    fused = {"attention": 0, "embeddings": 0}
    for name, module in list(model.named_modules()):
        layers = [getattr(module, part, None) for part in ("query", "key", "value")]
        bidirectional = not getattr(module, "is_decoder", True) and not getattr(module, "is_causal", True)
        if bidirectional and all(isinstance(layer, OnnxInt8Linear) for layer in layers):
            heads = layers[0].out_features // module.attention_head_size
            model.set_submodule(name, OnnxInt8SelfAttention(*layers, heads, key_mask))
            fused["attention"] += 1
    if fused["attention"]:
        model.register_forward_pre_hook(key_mask.capture, with_kwargs=True)
        model.register_forward_hook(key_mask.release)
        base = getattr(model, "base_model", model)
        embeddings = _fused_embeddings(base.embeddings) if hasattr(base, "embeddings") else None
        if embeddings is not None:
            base.embeddings = embeddings
            fused["embeddings"] = 1
    return fused
