"""Run an exported int8 agent: an ONNX model (ONNX Runtime) or a TorchScript program, its tokenizer and its labels;
no training code needed. A generative agent's export is a decoding step with a key/value cache
(:mod:`~agent_lightning.deployment.decoder_program`), decoded here as the agent decodes: constrained to the action
set, or free."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoTokenizer

from agent_lightning.deployment.decoder_program import OnnxDecoder
from agent_lightning.deployment.onnx_program import ONNX_MODEL, OnnxProgram
from agent_lightning.generation import ActionTrie, ChatPrompt, decode_answers, left_padded
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

    A generative agent's export (``"task": "generation"`` in ``export.json``) holds a decoding step instead
    (:class:`~agent_lightning.deployment.decoder_program.OnnxDecoder`, also :attr:`program`): :meth:`act` builds the
    agent's chat prompts (its system prompt, the listed actions if it listed them) and decodes within the action set
    (``labels.json``), or freely for an agent of free answers (``labels.json`` empty), with the key/value cache.

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
        self.task = self.manifest.get("task", "classification")
        self.program: OnnxProgram | OnnxDecoder | torch.jit.ScriptModule
        if self.task == "generation":
            self.program = OnnxDecoder(self.folder / ONNX_MODEL, threads)
            settings = self.manifest["prompt"]
            actions = self.labels if settings["list_actions"] else None
            self.chat = ChatPrompt(
                self.tokenizer, self.max_length, system_prompt=settings["system_prompt"], actions=actions
            )
            self.trie = ActionTrie(self.chat.action_ids(self.labels)) if self.labels else None
            self.max_new_tokens = int(settings["max_new_tokens"])
        elif self.format == "onnx":
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
        """``(action, confidence)`` for each raw request, like :meth:`agent_lightning.Agent.act` (a generative
        agent's answer and its sequence probability).

        Raises:
            TypeError: ``texts`` is not a string or a sequence of strings.
        """
        texts = as_texts(texts)
        decisions: list[tuple[str, float]] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            if self.task == "generation":
                answers, confidence = self.answer(chunk)
                decisions += list(zip(answers, confidence.tolist()))
                continue
            confidence, index = self.logits(chunk).float().softmax(-1).max(-1)
            decisions += [(self.labels[i], c) for i, c in zip(index.tolist(), confidence.tolist())]
        return decisions

    def prompts(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """A generative export's left-padded chat prompts ``(B, L)`` for ``texts`` (``input_ids``,
        ``attention_mask``)."""
        room = self.trie.depth if self.trie is not None else self.max_new_tokens
        return left_padded([self.chat.prompt_ids(text, room) for text in texts], self.tokenizer.pad_token_id)

    def answer(self, texts: Sequence[str], decoder: Callable[..., Any] | None = None) -> tuple[list[str], Tensor]:
        """A generative export's answers to ``texts`` and their confidences ``(B,)``, decoded by ``decoder`` (default:
        the exported ONNX step; any step with its call convention, e.g. the PyTorch program it was traced from)."""
        encoded = self.prompts(texts)
        return decode_answers(
            decoder or self.program,
            encoded["input_ids"],
            encoded["attention_mask"],
            self.tokenizer,
            self.trie,
            self.labels,
            self.max_new_tokens,
            self.chat.end_id,
        )
