"""The peers a compressed agent is measured against: what a practitioner runs instead, without any training.

From the fp32 teacher itself: the model exported to ONNX and run by ONNX Runtime, and ONNX Runtime's post-training
dynamic int8 quantization of that file (``onnxruntime.quantization.quantize_dynamic`` with int8 weights, the path
sentence-transformers' ``export_dynamic_quantized_onnx_model`` and Optimum's ``ORTQuantizer`` take). Both run in
sessions set up like the exported student's (same threads, thread spinning off). For a generative agent the teacher
is exported as the same decoding step with a key/value cache as the student
(:mod:`~agent_lightning.deployment.decoder_program`), float.

:func:`onnx_runtime_peers` writes them as export folders that answer like the student's export;
:func:`onnx_runtime_rows` writes them as bare ``.onnx`` files beside a trained model's own ONNX export, each wrapped in
an :class:`OnnxClassifier` module, for code that runs models on batches (a
:class:`~agent_lightning.callbacks.CompressionReport`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import Tensor, nn
from transformers import PreTrainedModel

from agent_lightning.agent import Agent
from agent_lightning.deployment.decoder_program import DecoderProgram, write_decoder_onnx
from agent_lightning.deployment.export import LogitsProgram, write_classifier_onnx, write_export_files
from agent_lightning.deployment.onnx_program import ONNX_MODEL, OnnxProgram, onnx_ready, write_onnx
from agent_lightning.deployment.runtime import ExportedAgent
from agent_lightning.quiet import messages_dropped

__all__ = [
    "ONNX_ROWS",
    "PEERS",
    "OnnxClassifier",
    "decoder_peers",
    "onnx_runtime_peers",
    "onnx_runtime_rows",
    "sequence_classifier",
]

#: The peers by key, as the tables name them.
PEERS = {
    "ort_fp32": "fp32 teacher, ONNX Runtime",
    "ort_int8": "int8 teacher, ONNX Runtime `quantize_dynamic` (no training)",
}
#: The ONNX Runtime rows of :func:`onnx_runtime_rows` (a :class:`~agent_lightning.callbacks.CompressionReport`'s),
#: by key, as the report names them.
ONNX_ROWS = {
    "final_onnx": "final, ONNX export",
    "reference_ort_fp32": "reference, ORT fp32",
    "reference_ort_int8": "reference, ORT int8 (quantize_dynamic)",
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
    encoded = teacher.tokenizer(["set an alarm for seven", "hi"], padding=True, return_tensors="pt")
    example = (encoded["input_ids"], encoded["attention_mask"])
    return _write_peers(teacher, folder, threads, {}, lambda path: _write_fp32(teacher.model, example, path))


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
    _quantize_dynamic(fp32 / ONNX_MODEL, int8 / ONNX_MODEL)
    return {"ort_fp32": ExportedAgent(fp32, threads), "ort_int8": ExportedAgent(int8, threads)}


def _write_fp32(model: nn.Module, example: tuple[Tensor, Tensor], path: Path) -> None:
    """A float sequence classifier traced to ONNX as users export one (constants folded: ``quantize_dynamic`` needs
    its weights as initializers)."""
    write_onnx(LogitsProgram(onnx_ready(model)).eval(), example, path)


def _quantize_dynamic(fp32: Path, int8: Path) -> None:
    """ONNX Runtime's post-training dynamic quantization of ``fp32`` to ``int8``, as users run it (int8 weights)."""
    # its advice to run shape inference first concerns static quantization; dynamic needs none
    with messages_dropped("root", "Please consider to run pre-processing"):
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)


class OnnxClassifier(nn.Module):
    """An ONNX Runtime sequence classifier as a module: ``forward(input_ids, attention_mask, token_type_ids) ->
    logits`` ``(B, num_labels)`` from ``(B, L)`` inputs, so that code which runs the PyTorch model on a batch
    (accuracy, :func:`~agent_lightning.deployment.measure.compare_latency`) runs the file the same way.

    Args:
        path: the ``.onnx`` file (a traced ``(input_ids, attention_mask) -> logits``).
        threads: ONNX Runtime's intra-op threads (default: torch's).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.program = OnnxProgram(path, threads)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Logits of the requests; ``token_type_ids`` must be all zeros (one text per request: the graph has no
        segment input).

        Raises:
            ValueError: ``token_type_ids`` marks a second segment.
        """
        if token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError(
                "OnnxClassifier runs one text per request, but token_type_ids marks a second segment; export a "
                "model that takes token_type_ids to classify text pairs."
            )
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.program(input_ids, mask)


def sequence_classifier(module: nn.Module) -> nn.Module | None:
    """The Hugging Face sequence classifier that ``module`` is (``...ForSequenceClassification``) or wraps (a
    classification :class:`~agent_lightning.Agent`'s model); ``None`` for anything else."""
    if isinstance(module, Agent):
        return module.model if module.hparams.task == "classification" else None
    if isinstance(module, PreTrainedModel) and type(module).__name__.endswith("ForSequenceClassification"):
        return module
    return None


def onnx_runtime_rows(
    folder: str | os.PathLike,
    example: tuple[Tensor, Tensor],
    final: nn.Module | None = None,
    reference: nn.Module | None = None,
    max_length: int | None = None,
    threads: int | None = None,
) -> dict[str, OnnxClassifier]:
    """Hugging Face sequence classifiers under ONNX Runtime, by the keys of :data:`ONNX_ROWS`: ``final`` (a trained,
    converted model) written as the ONNX export writes it (``"final_onnx"``), and ``reference`` (fp32) as users
    export it (``"reference_ort_fp32"``) and quantize it with ``quantize_dynamic`` (``"reference_ort_int8"``). The
    files go to ``folder`` (an existing folder), traced on ``example = (input_ids, attention_mask)``.

    Args:
        folder: where the ``.onnx`` files go; they must stay while the sessions' sizes are read.
        example: two or more rows of inputs to trace with.
        final: the trained model, or ``None``.
        reference: the fp32 model it is compared with, or ``None``.
        max_length: the longest request of ``final`` (cuts its position table, as the export does).
        threads: ONNX Runtime's intra-op threads (default: torch's).

    Raises:
        ValueError: ``final`` has a converted layer the ONNX export cannot carry.
    """
    folder = Path(folder)
    rows: dict[str, OnnxClassifier] = {}
    if final is not None:
        write_classifier_onnx(final, folder / "final_onnx.onnx", example, max_length)
        rows["final_onnx"] = OnnxClassifier(folder / "final_onnx.onnx", threads)
    if reference is not None:
        fp32, int8 = folder / "reference_ort_fp32.onnx", folder / "reference_ort_int8.onnx"
        _write_fp32(reference, example, fp32)
        _quantize_dynamic(fp32, int8)
        rows.update(reference_ort_fp32=OnnxClassifier(fp32, threads), reference_ort_int8=OnnxClassifier(int8, threads))
    return rows
