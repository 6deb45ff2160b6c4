"""The peers a compressed agent is measured against: what a practitioner runs instead, without any training.

From the fp32 teacher itself: the model exported to ONNX and run by ONNX Runtime, and ONNX Runtime's post-training
dynamic int8 quantization of that file (``onnxruntime.quantization.quantize_dynamic`` with int8 weights, the path
sentence-transformers' ``export_dynamic_quantized_onnx_model`` and Optimum's ``ORTQuantizer`` take). Both run in
sessions set up like the exported student's (same threads, thread spinning off). For a generative agent the teacher
is exported as the same decoding step with a key/value cache as the student
(:mod:`~agent_lightning.deployment.decoder_program`), float.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from agent_lightning.agent import Agent
from agent_lightning.deployment.decoder_program import DecoderProgram, write_decoder_onnx
from agent_lightning.deployment.export import LogitsProgram, write_export_files
from agent_lightning.deployment.onnx_program import ONNX_MODEL, onnx_ready, write_onnx
from agent_lightning.deployment.runtime import ExportedAgent
from agent_lightning.quiet import messages_dropped

__all__ = ["PEERS", "decoder_peers", "onnx_runtime_peers"]

#: The peers by key, as the tables name them.
PEERS = {
    "ort_fp32": "fp32 teacher, ONNX Runtime",
    "ort_int8": "int8 teacher, ONNX Runtime `quantize_dynamic` (no training)",
}


def onnx_runtime_peers(
    teacher: Agent, folder: str | os.PathLike, threads: int | None = None
) -> dict[str, ExportedAgent]:
    """Write the fp32 teacher as an ONNX export folder (``folder/ort_fp32``) and its ``quantize_dynamic`` int8
    (``folder/ort_int8``), each with the teacher's tokenizer and labels, and open both:
    ``{"ort_fp32": ExportedAgent, "ort_int8": ExportedAgent}``, answering as the student's export does.

    Args:
        teacher: the fp32 agent (a Hugging Face sequence classifier inside), left unchanged.
        folder: where the two export folders go (an existing folder).
        threads: ONNX Runtime's intra-op threads (default: torch's).
    """
    example = teacher.tokenizer(["set an alarm for seven", "hi"], padding=True, return_tensors="pt")
    program = LogitsProgram(onnx_ready(teacher.model)).eval()
    return _write_peers(
        teacher,
        folder,
        threads,
        {},
        lambda path: write_onnx(program, (example["input_ids"], example["attention_mask"]), path),
    )


def decoder_peers(teacher: Agent, folder: str | os.PathLike, threads: int | None = None) -> dict[str, ExportedAgent]:
    """:func:`onnx_runtime_peers` of a generative agent: the fp32 teacher as an ONNX decoding step with a key/value
    cache (``folder/ort_fp32``) and its ``quantize_dynamic`` int8 (``folder/ort_int8``), each answering as the
    student's export does (same prompts, constrained decoding).

    Args:
        teacher: the fp32 generative agent, left unchanged.
        folder: where the two export folders go (an existing folder).
        threads: ONNX Runtime's intra-op threads (default: torch's).
    """
    hp = teacher.hparams
    settings = {"prompt": {key: hp[key] for key in ("system_prompt", "list_actions", "max_new_tokens")}}
    program = DecoderProgram(onnx_ready(teacher.model)).eval()
    return _write_peers(
        teacher, folder, threads, {"task": "generation", **settings}, lambda path: write_decoder_onnx(program, path)
    )


def _write_peers(
    teacher: Agent, folder: str | os.PathLike, threads: int | None, manifest: dict, write: Callable[[Path], None]
) -> dict[str, ExportedAgent]:
    folder = Path(folder)
    fp32, int8 = folder / "ort_fp32", folder / "ort_int8"
    for export, how in ((fp32, "none (fp32)"), (int8, "onnxruntime.quantization.quantize_dynamic, int8 weights")):
        export.mkdir()
        entries = {"format": "onnx", "quantization": how, "max_length": teacher.hparams.max_length, **manifest}
        write_export_files(teacher, export, entries)
    write(fp32 / ONNX_MODEL)
    # its advice to run shape inference first concerns static quantization; dynamic needs none
    with messages_dropped("root", "Please consider to run pre-processing"):
        quantize_dynamic(fp32 / ONNX_MODEL, int8 / ONNX_MODEL, weight_type=QuantType.QInt8)
    return {"ort_fp32": ExportedAgent(fp32, threads), "ort_int8": ExportedAgent(int8, threads)}
