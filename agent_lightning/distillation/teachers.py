"""Loading, freezing, fingerprinting and checking a distillation teacher."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import transformers
from lightning.pytorch import LightningModule
from torch import nn

from agent_lightning.validation import preview

__all__ = ["check_compatible", "fingerprint", "freeze", "label_names", "load_teacher", "vocab_size"]


def load_teacher(source: str | nn.Module, student: LightningModule) -> nn.Module:
    """The teacher named by ``source``, on CPU and not yet frozen.

    Args:
        source: a Lightning checkpoint (``*.ckpt``) of a module of the student's class (e.g. an agent), a Hugging
            Face model folder or hub name (loaded with the architecture its config names), or a module instance.
        student: the module being distilled; its class loads checkpoint teachers.

    Raises:
        ValueError: the path does not exist or cannot be read as a checkpoint or model folder.
    """
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, str):
        raise TypeError(
            f"Distillation(teacher={source!r}) must be a checkpoint path, a model folder, a hub name or an nn.Module."
        )
    path = Path(source).expanduser()
    if path.suffix == ".ckpt" or path.is_file():
        if not path.is_file():
            raise ValueError(f"Distillation(teacher={source!r}): no such checkpoint file. Give an existing .ckpt path.")
        try:
            return type(student).load_from_checkpoint(path, map_location="cpu")
        except Exception as error:  # noqa: BLE001 - any failure means "not a checkpoint of this class"
            raise ValueError(
                f"Distillation(teacher={source!r}) could not be loaded as a {type(student).__name__} checkpoint "
                f"({type(error).__name__}: {error}). Pass a checkpoint of the same LightningModule class, an HF model "
                "folder, or the teacher module itself."
            ) from error
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not path.is_dir():
        raise ValueError(f"Distillation(teacher={source!r}): no such folder or checkpoint.")
    return _load_hf(source)


def _load_hf(source: str) -> nn.Module:
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        architecture = (config.architectures or ["AutoModel"])[0]
        model_class = getattr(transformers, architecture, transformers.AutoModel)
        return model_class.from_pretrained(source, config=config)
    except OSError as error:
        raise ValueError(
            f"Distillation(teacher={source!r}) is neither a local model folder nor a hub model that can be loaded "
            f"here ({error}). Offline (HF_HUB_OFFLINE=1) only local folders and cached models work."
        ) from error


def freeze(teacher: nn.Module, like: nn.Module) -> nn.Module:
    """Eval mode, no gradients, on ``like``'s device and floating dtype."""
    parameter = next(like.parameters(), None)
    if parameter is not None:
        teacher.to(device=parameter.device, dtype=parameter.dtype if parameter.is_floating_point() else None)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def fingerprint(module: nn.Module) -> str:
    """A SHA-256 over the names, shapes, dtypes and values of ``module``'s state (identical teachers match)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _hf_config(module: nn.Module) -> Any | None:
    for candidate in (module, *module.modules()):
        config = getattr(candidate, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config
    return None


def label_names(module: nn.Module) -> list[str] | None:
    """The class names a module predicts, when it says (``labels`` hyperparameter or an HF ``id2label`` with real
    names); ``None`` when unknown."""
    hparams = getattr(module, "hparams", None)
    if hparams is not None and isinstance(hparams.get("labels"), (list, tuple)):
        return list(hparams["labels"])
    config = _hf_config(module)
    id2label = getattr(config, "id2label", None) if config is not None else None
    if id2label:
        names = [id2label[i] for i in sorted(id2label)]
        if not all(str(n).startswith("LABEL_") for n in names):
            return [str(n) for n in names]
    return None


def vocab_size(module: nn.Module) -> int | None:
    config = _hf_config(module)
    return getattr(config, "vocab_size", None) if config is not None else None


def check_compatible(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """Refuse a teacher whose labels or vocabulary differ from the student's (both are shown).

    Raises:
        ValueError: label names (in order) or vocabulary sizes differ.
    """
    teacher_labels, student_labels = label_names(teacher), label_names(student)
    if teacher_labels is not None and student_labels is not None and teacher_labels != student_labels:
        raise ValueError(
            f"Distillation(teacher={source!r}) predicts {len(teacher_labels)} labels {preview(teacher_labels)}, the "
            f"student {len(student_labels)} labels {preview(student_labels)}. Distil from a teacher trained on the "
            "same label set (same names, same order)."
        )
    teacher_vocab, student_vocab = vocab_size(teacher), vocab_size(student)
    if teacher_vocab is not None and student_vocab is not None and teacher_vocab != student_vocab:
        raise ValueError(
            f"Distillation(teacher={source!r}) has a vocabulary of {teacher_vocab} tokens, the student {student_vocab}."
            " Both must read the same token ids: use a teacher with the student's tokenizer."
        )
