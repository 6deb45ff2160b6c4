"""Quantization-aware training and int8 conversion of linear layers (torchao, torch.ao's fbgemm kernel), and
compact int8 input embeddings; all usable without a Trainer.

A :class:`QuantizationRecipe` (:mod:`~agent_lightning.quantization.recipe`) names the scheme (int8 or int4
weights, int8 dynamic or float activations) and the kernel the converted model will run; :func:`prepare`
(:mod:`~agent_lightning.quantization.qat`) swaps the targeted ``nn.Linear`` layers for torchao
``FakeQuantizedLinear`` (same ``weight`` and ``bias`` parameters, same ``state_dict`` keys) whose fake quantization
matches that kernel, :func:`freeze_ranges` fixes the weight scales, and :func:`convert`
(:mod:`~agent_lightning.quantization.convert`) replaces each fake-quantized layer by a real quantized layer built
**with the scales the fake quantizer used**, so the converted layer computes what training simulated (up to
rounding ties and float accumulation order). :func:`prepare_from_checkpoint` and :func:`compact_from_checkpoint`
(:mod:`~agent_lightning.quantization.checkpoint`) re-apply what a training run recorded to a model loaded from its
checkpoint; :class:`CompactEmbedding` (:mod:`~agent_lightning.quantization.embedding`) keeps the task's vocabulary
as int8 rows.

Schemes (accuracy and speed are measured in ``benchmarks/quantization/``):

- **int8 weights + int8 activations, kernel "auto"/"fbgemm" (default)**: per-channel symmetric int8 weights and
  per-tensor asymmetric 7-bit dynamic activations in training; converted to ``torch.ao.nn.quantized.dynamic.Linear``
  (fbgemm/x86 int8 GEMM, CPU only): 4x smaller linear weights, the fast CPU path. torch 2.13 marks its quantized
  tensors, which this path is built from, as deprecated (pytorch/pytorch#184982); when they go, this path moves to
  their replacement and the torchao kernel stays available.
- **int8 + int8, kernel "torchao"**: per-token asymmetric int8 activations; converted to a torchao ``Int8Tensor``
  weight (any device). On x86 CPUs without a torchao int8 kernel its matmul falls back to int32 arithmetic and is
  slower than fp32.
- **int4 weights** (per-group symmetric) with int8 per-token activations, or **weight-only** (``activations="none"``):
  converted to torchao ``IntxUnpackedToInt8Tensor`` weights (smaller; no fast CPU kernel).

The fbgemm path reproduces the kernel bit for bit where it matters: the kernel quantizes each call's input as one
tensor to ``[0, 127]`` (``reduce_range``) with scale and zero point from ``torch._choose_qparams_per_tensor``, so the
training-time activation fake quantizer (:class:`DynamicActivationFakeQuantizer`) calls that same routine and
``torch.fake_quantize_per_tensor_affine``; weights use torchao's per-channel fake quantizer and are converted with
its scales.

Zero stays zero: weights use a symmetric scale (zero point 0), so pruned weights remain exactly zero after
fake-quantization and conversion.
"""

from agent_lightning.quantization.checkpoint import compact_from_checkpoint, prepare_from_checkpoint
from agent_lightning.quantization.convert import (
    convert,
    converted_modules,
    dequantized_weight,
    quantized_linear_bytes,
    unprepare,
)
from agent_lightning.quantization.embedding import CompactEmbedding, compact_input_embeddings, input_embeddings
from agent_lightning.quantization.fake_quantizers import (
    DynamicActivationFakeQuantizer,
    FakeQuantizedConv1D,
    fake_quantized_modules,
)
from agent_lightning.quantization.qat import (
    freeze_ranges,
    frozen_scales,
    load_frozen_scales,
    prepare,
    quantization_targets,
    weight_error,
)
from agent_lightning.quantization.recipe import DECODER_FLOAT_LAYERS, Activations, Kernel, QuantizationRecipe, Weights

__all__ = [
    "DECODER_FLOAT_LAYERS",
    "Activations",
    "CompactEmbedding",
    "DynamicActivationFakeQuantizer",
    "FakeQuantizedConv1D",
    "Kernel",
    "QuantizationRecipe",
    "Weights",
    "compact_from_checkpoint",
    "compact_input_embeddings",
    "convert",
    "converted_modules",
    "dequantized_weight",
    "fake_quantized_modules",
    "freeze_ranges",
    "frozen_scales",
    "input_embeddings",
    "load_frozen_scales",
    "prepare",
    "prepare_from_checkpoint",
    "quantization_targets",
    "quantized_linear_bytes",
    "unprepare",
    "weight_error",
]
