"""The peers a compressed agent is measured against: what a practitioner runs instead, without any training.

From the fp32 teacher itself: the model exported to ONNX and run by ONNX Runtime, and ONNX Runtime's post-training
dynamic int8 quantization of that file (``onnxruntime.quantization.quantize_dynamic`` with int8 weights, the path
sentence-transformers' ``export_dynamic_quantized_onnx_model`` takes). Both run in sessions set up like the
exported student's (same threads, thread spinning off).
"""

from __future__ import annotations

import os
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from transformers import PreTrainedTokenizerBase

from agent_lightning.deployment.export import LogitsProgram
from agent_lightning.deployment.onnx_program import OnnxProgram, onnx_ready, write_onnx
from agent_lightning.quiet import messages_dropped

__all__ = ["PEERS", "onnx_runtime_peers"]

#: The peers by key, as the tables name them.
PEERS = {
    "ort_fp32": "fp32 teacher, ONNX Runtime",
    "ort_int8": "int8 teacher, ONNX Runtime `quantize_dynamic` (no training)",
}


def onnx_runtime_peers(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike, threads: int | None = None
) -> dict[str, OnnxProgram]:
    """Write ``teacher-fp32.onnx`` and its ``quantize_dynamic`` int8 ``teacher-int8.onnx`` into ``folder`` and open
    both: ``{"ort_fp32": program, "ort_int8": program}`` (``(input_ids, attention_mask) -> logits``).

    Args:
        model: the fp32 sequence classifier (a Hugging Face model), left unchanged.
        tokenizer: its tokenizer (for the tracing example).
        folder: where the two files go (an existing folder).
        threads: ONNX Runtime's intra-op threads (default: torch's).
    """
    folder = Path(folder)
    example = tokenizer(["set an alarm for seven", "hi"], padding=True, return_tensors="pt")
    fp32, int8 = folder / "teacher-fp32.onnx", folder / "teacher-int8.onnx"
    write_onnx(LogitsProgram(onnx_ready(model)).eval(), (example["input_ids"], example["attention_mask"]), fp32)
    # its advice to run shape inference first concerns static quantization; dynamic needs none
    with messages_dropped("root", "Please consider to run pre-processing"):
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    return {"ort_fp32": OnnxProgram(fp32, threads), "ort_int8": OnnxProgram(int8, threads)}
