"""Drop log lines and warnings that third-party packages print but that users can do nothing about."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import transformers

__all__ = ["messages_dropped", "silence_command_line_noise", "silence_known_noise"]

# (logger name, text the message contains)
_KNOWN_NOISE = (
    ("torchao", "Failed to load"),  # CUDA-only extensions (_C_mxfp8, _C_cutlass_90a) on a CPU-only machine
    ("torch.utils._pytree", "is now natively supported by torch.compile as an opaque value type"),
    # Lightning >= 2.6 advertises a cloud logging service at every fit when the ``litlogger`` package is missing
    ("lightning.pytorch.utilities.rank_zero", "try installing [litlogger]"),
)

# (warning message regex, category) of Python ``warnings``
_KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch.compile of torchao's int8 tensors: a note to torchao's developers about AOT-autograd cache keys
    (r".*does not implement _stable_hash_for_caching.*", UserWarning),
    # Lightning 2.6 on torch 2.13 (lightning/pytorch/utilities/_pytree.py), at every fit and test
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", DeprecationWarning),
)

# What the command line drops on top: notes that say how Lightning works rather than what this run does.
_COMMAND_LINE_NOISE = (("lightning.pytorch.utilities.rank_zero", "to estimate number of stepping batches"),)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def silence_known_noise() -> None:
    """Install filters (once) on the loggers in ``_KNOWN_NOISE`` and for the warnings in ``_KNOWN_WARNINGS``; every
    other message still gets through."""
    for pattern, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    _drop(_KNOWN_NOISE)


def silence_command_line_noise() -> None:
    """For the command line (an application, not a library): also drop Lightning's notes on how it works and
    transformers' per-file progress bars (loading and writing weights), which only repeat what the stages say."""
    silence_known_noise()
    _drop(_COMMAND_LINE_NOISE)
    transformers.utils.logging.disable_progress_bar()


def _drop(noise: tuple[tuple[str, str], ...]) -> None:
    for name, fragment in noise:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessages(fragment))


@contextmanager
def messages_dropped(logger_name: str, fragment: str) -> Iterator[None]:
    """Drop the messages of one logger that contain ``fragment`` inside the ``with`` block only.

    For noise that one of our calls provokes but that means something elsewhere, e.g. TorchScript tracing, which
    reads every property of an HF model, ``loss_function`` included.

    Example:
        >>> with messages_dropped("transformers.modeling_utils", "`loss_type=None`"):
        ...     pass
    """
    logger = logging.getLogger(logger_name)
    drop = _DropMessages(fragment)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
