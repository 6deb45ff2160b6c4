"""Writing files and folders atomically, so that an interrupted write never leaves half an output behind."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

__all__ = ["atomic_directory", "atomic_torch_save", "atomic_write_csv", "atomic_write_text", "check_writable_directory"]


def check_writable_directory(target: str | os.PathLike, overwrite: bool = False, argument: str = "directory") -> None:
    """Raise unless ``target`` may become a folder: it must not be a file, nor a non-empty folder without
    ``overwrite``. :func:`atomic_directory` checks this too; call it alone to fail before slow work.

    Raises:
        FileExistsError: ``target`` is a file, or exists, is not empty, and ``overwrite`` is false.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{argument}={str(target)!r} is a file; give a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{argument}={str(target)!r} exists and is not empty. Choose a new folder, or pass overwrite=True "
            "(--overwrite on the command line) to replace it."
        )


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False, argument: str = "directory") -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``target`` only once the ``with`` block has succeeded.

    The staging folder sits beside ``target`` (same file system), so the final step is a rename. If the block raises,
    the staging folder is removed and ``target`` is left as it was.

    Args:
        target: the folder to create.
        overwrite: replace a ``target`` that exists and is not empty. Without it such a target is refused.
        argument: the name of the argument that gave ``target``, for the error message.

    Raises:
        FileExistsError: ``target`` exists, is not empty, and ``overwrite`` is false.

    Example:
        >>> target = getfixture("tmp_path") / "export"
        >>> with atomic_directory(target) as staging:
        ...     _ = (staging / "config.json").write_text("{}")
        >>> sorted(p.name for p in target.iterdir())
        ['config.json']
    """
    target = Path(target)
    check_writable_directory(target, overwrite, argument)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, mode: str) -> Iterator:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with _atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_csv(
    path: str | os.PathLike, rows: Iterable[Sequence[object]], header: Sequence[str] = ("text", "label")
) -> None:
    """Write ``rows`` under ``header`` as a CSV file (quoted where a field holds a comma or a newline), atomically;
    by default the labelled-texts layout the data modules read."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file and a rename."""
    with _atomic_file(path, "wb") as handle:
        torch.save(obj, handle)
