"""Run an exported int8 agent: an ONNX model (ONNX Runtime) or a TorchScript program, its tokenizer and its labels;
no training code needed."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer

from agent_lightning.deployment.onnx_program import ONNX_MODEL, OnnxProgram
from agent_lightning.validation import as_texts

__all__ = ["MANIFEST", "PROGRAM", "ExportedAgent", "model_file"]

PROGRAM = "model.pt"
MANIFEST = "export.json"


def model_file(folder: str | os.PathLike) -> Path:
    """The model file of an int8 export folder: ``model.onnx`` (``--format onnx``) or ``model.pt`` (``--format
    int8``)."""
    folder = Path(folder)
    return folder / ONNX_MODEL if (folder / ONNX_MODEL).is_file() else folder / PROGRAM


class ExportedAgent:
    """An agent exported with ``agent-lightning export --format onnx`` or ``--format int8``, loaded for inference.

    The folder holds the int8 model, ``(input_ids, attention_mask) -> logits``: ``model.onnx`` (run by ONNX Runtime)
    or ``model.pt`` (a TorchScript program), the tokenizer files, ``labels.json`` and ``export.json`` (format,
    ``max_length``, source checkpoint and the parity measured when it was written). :attr:`program` runs either with
    torch tensors in and out.

    Args:
        folder: the export folder.
        threads: ONNX Runtime's intra-op threads (default: torch's thread count); TorchScript uses torch's.

    Raises:
        FileNotFoundError: the folder lacks its model file, ``export.json`` or ``labels.json`` (not an int8 export).

    Example:
        >>> ExportedAgent(getfixture("tmp_path"))  # an export is made by agent_lightning.deployment.export_agent
        Traceback (most recent call last):
        FileNotFoundError: '...' is not an int8 agent export (missing model.onnx or model.pt, export.json, ...). ...
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.format = "onnx" if (self.folder / ONNX_MODEL).is_file() else "int8"
        missing = [name for name in (MANIFEST, "labels.json") if not (self.folder / name).is_file()]
        if not model_file(self.folder).is_file():
            missing.insert(0, f"{ONNX_MODEL} or {PROGRAM}")
        if missing:
            raise FileNotFoundError(
                f"{str(self.folder)!r} is not an int8 agent export (missing {', '.join(missing)}). Write one with "
                "`agent-lightning export CKPT --format onnx --output FOLDER`; an HF export (--format hf) loads with "
                "AutoModelForSequenceClassification.from_pretrained instead."
            )
        self.manifest = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        self.labels: list[str] = json.loads((self.folder / "labels.json").read_text(encoding="utf-8"))
        self.max_length = int(self.manifest.get("max_length", 128))
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.program: OnnxProgram | torch.jit.ScriptModule
        if self.format == "onnx":
            self.program = OnnxProgram(self.folder / ONNX_MODEL, threads)
        else:  # see agent_lightning.deployment.export: TorchScript is the format that keeps fbgemm's int8 weights
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning)
                self.program = torch.jit.load(str(self.folder / PROGRAM), map_location="cpu")
            self.program.eval()

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask ``(B, L)`` of ``texts``, as the agent was trained to read them."""
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> Tensor:
        """Logits ``(B, num_labels)`` of ``texts``."""
        encoded = self.encode(texts)
        return self.program(encoded["input_ids"], encoded["attention_mask"])

    def act(self, texts: str | Sequence[str], batch_size: int = 64) -> list[tuple[str, float]]:
        """``(action, confidence)`` for each raw request, like :meth:`agent_lightning.Agent.act`.

        Raises:
            TypeError: ``texts`` is not a string or a sequence of strings.
        """
        texts = as_texts(texts)
        decisions: list[tuple[str, float]] = []
        for start in range(0, len(texts), batch_size):
            confidence, index = self.logits(texts[start : start + batch_size]).float().softmax(-1).max(-1)
            decisions += [(self.labels[i], c) for i, c in zip(index.tolist(), confidence.tolist())]
        return decisions
