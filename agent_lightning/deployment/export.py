"""Export a trained agent checkpoint as a deployable folder, verified by reloading it and comparing predictions.

Three formats:

- ``"onnx"`` (the default): the int8 model as an **ONNX model for ONNX Runtime** (``model.onnx``: ``(input_ids,
  attention_mask) -> logits``) with its tokenizer and labels. Everything compression did is in the graph: the
  student's blocks, physically removed heads and neurons, the compacted int8 vocabulary, and each int8 linear as ONNX
  Runtime's dynamic int8 pattern with the int8 weights and per-channel scales the model was converted with
  (:mod:`~agent_lightning.deployment.onnx_program`). The fastest CPU format measured
  (``benchmarks/pipeline/versus_onnxruntime.py``). Checked against the PyTorch model that computes what the graph
  computes, within :data:`ONNX_TOLERANCE` of the largest logit (dynamic quantization turns ulp-level float
  differences into one-level rounding flips); the difference from the converted fbgemm model (activations over
  ``[0, 127]`` there) is in the manifest too.
- ``"hf"``: a Hugging Face folder (``save_pretrained``: float weights with the pruned zeros in them, physically
  smaller layers after structured pruning, tokenizer, ``labels.json``). Loads with
  ``AutoModelForSequenceClassification.from_pretrained`` (``agent_lightning.pruning.removal.load_pretrained_pruned`` for
  per-layer pruned shapes).
- ``"int8"``: the int8 CPU model as a **TorchScript program** (``model.pt``: ``(input_ids, attention_mask) ->
  logits``) with its tokenizer and labels; :class:`~agent_lightning.deployment.runtime.ExportedAgent` runs it. A QAT
  checkpoint is converted with the ranges it trained with (``prepare_from_checkpoint`` + ``convert``); a float one is
  quantized post-training with the same recipe. The input embeddings are compacted as an
  :class:`~agent_lightning.callbacks.EmbeddingCompression` run recorded (the task's tokens, int8 rows). Why
  TorchScript: the fast CPU int8 layers are fbgemm's dynamic quantized linears, whose packed weights ``torch.export``
  cannot serialize in torch 2.13 (``LinearPackedParamsBase`` has no ``__obj_flatten__``), while a traced TorchScript
  program keeps them and runs as fast as the eager model. torch marks TorchScript deprecated; those warnings are
  silenced here and the choice is revisited when torch.export carries these weights.

A generative agent (``task="generation"``, e.g. SmolLM2) exports as ``"onnx"`` or ``"hf"``: its ONNX model is one
decoding step with a key/value cache (:mod:`~agent_lightning.deployment.decoder_program`), with the same int8 layers
and compacted tied table; it is checked against the PyTorch step it was traced from on the sample requests' prompts
and on a decoding step after them (logits of the tokens the model can write, within :data:`DECODER_TOLERANCE`), and the
manifest records how often its constrained answers equal those of the PyTorch step and of the converted Hugging Face
model.

Each export is written into a staging folder, reloaded from there and compared with the in-memory model on sample
requests (largest logit difference, top-1 agreement); only then does the staging folder replace the target, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from agent_lightning.agent import Agent
from agent_lightning.deployment.decoder_program import DecoderProgram, TorchDecoder, write_decoder_onnx
from agent_lightning.deployment.onnx_program import ONNX_MODEL, ONNX_OPSET, int8_weights, onnx_ready, write_onnx
from agent_lightning.deployment.runtime import MANIFEST, PROGRAM, ExportedAgent
from agent_lightning.generation import position_ids
from agent_lightning.io import atomic_directory, check_writable_directory
from agent_lightning.pruning.masks import apply_masks
from agent_lightning.pruning.removal import load_pretrained_pruned, remove_structure
from agent_lightning.quantization.checkpoint import callback_state, compact_from_checkpoint, prepare_from_checkpoint
from agent_lightning.quantization.convert import convert, converted_modules
from agent_lightning.quantization.embedding import CompactLMHead
from agent_lightning.quantization.recipe import DECODER_FLOAT_LAYERS, Kernel, QuantizationRecipe
from agent_lightning.quiet import messages_dropped

__all__ = [
    "ExportFormat",
    "apply_recorded_compression",
    "apply_recorded_masks",
    "ExportResult",
    "LogitsProgram",
    "describe",
    "export_agent",
    "load_agent_checkpoint",
    "trace",
    "write_classifier_onnx",
    "write_export_files",
]

ExportFormat = Literal["onnx", "int8", "hf"]
#: The ONNX export's parity tolerance: the largest logit difference from its PyTorch twin, as a fraction of the
#: twin's largest logit magnitude (at least 1: an untrained head's logits of a few hundredths would make the bound a
#: few thousandths, below the rounding flips of any dynamically quantized model).
ONNX_TOLERANCE = 0.05
#: The same for a generative agent's decoding step: every block quantizes its activations again, so the one-level
#: rounding flips that ulp-level float differences cause compound over the blocks (on SmolLM2, quantized after
#: training: 11 % of the largest logit over 30 blocks, 0 for one int8 layer alone); a wrong graph (a mask, the cache,
#: the position encoding, overflowing int8 sums) is off by the size of the logits themselves.
DECODER_TOLERANCE = 0.15
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)

#: Requests the parity check runs (plus random token ids), whatever the agent's task.
SAMPLE_TEXTS = (
    "wake me up at 6 tomorrow",
    "how much is in my savings account",
    "my card was declined at the store",
    "what's the weather like in Oslo this weekend",
    "send an email to Sam saying I'm running late",
    "I want to transfer 200 dollars to my brother",
    "turn the heating up to 21 degrees",
    "why was I charged twice for the same purchase",
)


@dataclass(frozen=True)
class ExportResult:
    """What was written and how faithfully.

    Attributes:
        folder: the export folder.
        format: ``"hf"`` or ``"int8"``.
        max_abs_logit_diff: largest absolute logit difference between the reloaded export and the in-memory model.
        top1_agreement: fraction of sample requests on which both pick the same label.
        samples: number of sample inputs compared.
        quantized_layers: int8 layers in the exported model (0 for ``"hf"``).
    """

    folder: str
    format: str
    max_abs_logit_diff: float
    top1_agreement: float
    samples: int
    quantized_layers: int


def load_agent_checkpoint(path: str | os.PathLike) -> tuple[Agent, dict]:
    """Load an :class:`Agent` and its raw checkpoint dict from ``path`` (on the CPU), its run's pruning masks applied
    (:func:`apply_recorded_masks`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a checkpoint (e.g. truncated), or is not an Agent's checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist; give the .ckpt file of an agent run.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated zip, a text file, ...: say which file and why
        raise ValueError(
            f"checkpoint={str(path)!r} cannot be read as a PyTorch checkpoint ({type(error).__name__}: {error}); "
            "it may be truncated. Use another checkpoint (e.g. last.ckpt of the run)."
        ) from error
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    state = checkpoint.get("state_dict", {}) if isinstance(checkpoint, dict) else {}
    if "model" not in hparams or not any(key.startswith("model.") for key in state):
        raise ValueError(
            f"checkpoint={str(path)!r} is not an agent_lightning Agent checkpoint (its hyper_parameters have no "
            "'model' backbone). Export the checkpoints that `train.py fit` writes under runs/.../checkpoints/."
        )
    agent = Agent.load_from_checkpoint(path, map_location="cpu")
    apply_recorded_masks(agent, checkpoint)
    return agent.eval(), checkpoint


@torch.no_grad()
def apply_recorded_masks(agent: Agent, raw: dict) -> int:
    """Zero the weights the checkpoint's ``Pruning`` masks removed, in place; returns how many were not zero.

    A pruning run's own weights are zero where its masks are, but the weights a checkpoint carries need not be the
    run's own: Lightning's ``EMAWeightAveraging`` saves its average, whose masked entries still hold the decayed
    values of the steps before the masks. ``raw`` is the checkpoint dict :func:`load_agent_checkpoint` returns.

    Raises:
        ValueError: a mask names a parameter the agent does not have, or has another shape.
    """
    keep = (callback_state(raw, "Pruning") or {}).get("keep") or {}
    parameters = dict(agent.named_parameters())
    wrong = [name for name, mask in keep.items() if name not in parameters or parameters[name].shape != mask.shape]
    if wrong:
        raise ValueError(
            f"The checkpoint's Pruning masks do not fit its model's parameters ({wrong[:3]}); export the checkpoint "
            "the pruning run wrote (runs/.../checkpoints/*.ckpt), with the model it was pruned from."
        )
    revived = sum(int(parameters[name][~mask].count_nonzero()) for name, mask in keep.items())
    apply_masks(parameters, keep)
    return revived


def export_agent(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    format: ExportFormat = "onnx",
    overwrite: bool = False,
) -> ExportResult:
    """Export an agent checkpoint to ``output`` and verify it by reloading.

    Args:
        checkpoint: the agent's ``.ckpt`` (a QAT run's checkpoint keeps its trained quantization ranges).
        output: the folder to write; refused if it exists and is not empty, unless ``overwrite``.
        format: ``"onnx"`` (int8 ONNX model for ONNX Runtime, the fastest on CPU), ``"int8"`` (int8 TorchScript
            program) or ``"hf"`` (Hugging Face folder).
        overwrite: replace an existing ``output``.

    Returns:
        The :class:`ExportResult`, parity numbers included (also written to ``export.json`` for ``"int8"``).

    Raises:
        ValueError: an unknown format, a checkpoint that is not an agent's, or a reloaded export that disagrees with
            the in-memory model (nothing is written then).
        FileExistsError: ``output`` exists and is not empty, and ``overwrite`` is false.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> folder = getfixture("tmp_path")
        >>> trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> trainer.strategy.connect(Agent(labels=["play_music", "set_alarm"]))
        >>> trainer.save_checkpoint(folder / "agent.ckpt")
        >>> result = export_agent(folder / "agent.ckpt", folder / "onnx")
        >>> result.format, result.samples, result.quantized_layers  # checked on 16 samples, 36 int8 layers
        ('onnx', 16, 36)
        >>> ExportedAgent(folder / "onnx").act("wake me at 7")[0][0] in ("play_music", "set_alarm")
        True
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"format={format!r} is not supported; use 'onnx' (int8 ONNX model for ONNX Runtime), 'int8' (int8 "
            "TorchScript program) or 'hf' (Hugging Face folder)."
        )
    target = Path(output)
    check_writable_directory(target, overwrite, argument="output")  # before the (slow) loading
    agent, raw = load_agent_checkpoint(checkpoint)
    task = agent.hparams.task
    if task != "classification" and format != "hf" and not (task == "generation" and format == "onnx"):
        raise ValueError(
            f"format={format!r} exports classifiers; a task={task!r} agent exports as 'hf'"
            + (" or 'onnx' (a decoding step with a key/value cache for ONNX Runtime)." if task == "generation" else ".")
        )
    inputs = _sample_inputs(agent)
    with atomic_directory(target, overwrite=overwrite, argument="output") as staging:
        if format == "hf":
            result = _export_hf(agent, raw, staging, inputs)
        elif task == "generation":
            result = _export_decoder(agent, raw, staging, str(checkpoint))
        else:
            writer = _export_onnx if format == "onnx" else _export_int8
            result = writer(agent, raw, staging, inputs, str(checkpoint))
        tolerance = result.pop("tolerance", None)
        if tolerance is None and result["top1_agreement"] < 1.0:
            raise ValueError(
                f"The reloaded {format} export disagrees with the model on {1 - result['top1_agreement']:.1%} of the "
                f"sample requests (largest logit difference {result['max_abs_logit_diff']:.3g}); nothing was written."
            )
        if tolerance is not None and result["max_abs_logit_diff"] > tolerance:
            raise ValueError(
                f"The reloaded {format} export's logits differ from the model's by up to "
                f"{result['max_abs_logit_diff']:.3g}, over the tolerance {tolerance:.3g} (a share of the "
                "largest logit); nothing was written."
            )
    return ExportResult(folder=str(target), format=format, **result)


def _sample_inputs(agent: Agent) -> dict[str, Tensor]:
    """The sample requests plus random token sequences, tokenized as the agent reads them."""
    encoded = agent.tokenizer(
        list(SAMPLE_TEXTS), padding="max_length", truncation=True, max_length=24, return_tensors="pt"
    )
    generator = torch.Generator().manual_seed(0)
    vocab = agent.model.config.vocab_size
    random_ids = torch.randint(min(1000, vocab - 1), vocab, (8, 24), generator=generator)
    mask = torch.ones_like(random_ids)
    mask[::2, 16:] = 0  # some padded rows
    return {
        "input_ids": torch.cat([encoded["input_ids"], random_ids]),
        "attention_mask": torch.cat([encoded["attention_mask"], mask]),
    }


def _compare(reference: Tensor, exported: Tensor) -> dict[str, float | int]:
    return {
        "max_abs_logit_diff": float((reference.float() - exported.float()).abs().max()),
        "top1_agreement": float((reference.argmax(-1) == exported.argmax(-1)).float().mean()),
        "samples": int(reference.shape[0]),
    }


@torch.inference_mode()
def _export_hf(agent: Agent, raw: dict, staging: Path, inputs: dict[str, Tensor]) -> dict:
    _remove_structure(agent, raw)  # the pruned sizes, in the weights and the config: plain from_pretrained loads it
    agent.save_pretrained(staging, overwrite=True)
    reloaded = load_pretrained_pruned(staging, model_class=type(agent.model)).eval()
    parity = _compare(agent.model(**inputs).logits, reloaded(**inputs).logits)
    return {**parity, "quantized_layers": 0}


class LogitsProgram(nn.Module):
    """``(input_ids, attention_mask) -> logits`` of a sequence classifier: the exported program's signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def write_classifier_onnx(
    model: nn.Module, path: str | os.PathLike, example: tuple[Tensor, Tensor], max_length: int | None = None
) -> LogitsProgram:
    """Write a (converted) Hugging Face sequence classifier to ``path`` as the ONNX export's model file
    (:func:`~agent_lightning.deployment.onnx_program.onnx_ready`, traced on ``example = (input_ids,
    attention_mask)``, constants left for ONNX Runtime to fold); returns the traced program, the file's PyTorch twin.

    Raises:
        ValueError: a converted layer the ONNX export cannot carry.
    """
    program = LogitsProgram(onnx_ready(model, max_length)).eval()
    write_onnx(program, example, path, fold_constants=False)
    return program


def trace(program: LogitsProgram, inputs: dict[str, Tensor]) -> torch.jit.ScriptModule:
    """TorchScript-trace ``program`` on two rows of ``inputs`` (any batch size and length run afterwards)."""
    with warnings.catch_warnings():
        # TorchScript is deprecated in torch 2.13, but torch.export cannot carry fbgemm's packed int8 weights (see the
        # module docstring); the tracer's notes on Python-constant branches concern shapes HF handles either way,
        # which the reload comparison of the export checks on padded and unpadded rows.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"`torch\.jit\.")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`is_gradient_checkpointing`")  # HF
        # Tracing reads every property of the HF model, so a headless base model (BertModel, loss_type None)
        # reports the "default loss" it would use, though nothing here computes a loss.
        with torch.inference_mode(), messages_dropped("transformers.modeling_utils", "`loss_type=None` was set"):
            return torch.jit.trace(program, (inputs["input_ids"][:2], inputs["attention_mask"][:2]), check_trace=False)


def _remove_structure(agent: Agent, raw: dict) -> dict[str, dict[str, int]] | None:
    """Cut out the heads and neurons a structured ``Pruning`` run recorded (it removes them at fit end, after the
    last checkpoint was written); ``None`` when there is nothing to remove."""
    state = callback_state(raw, "Pruning")
    config = (state or {}).get("config", {})
    if config.get("method") != "structured" or not config.get("physically_remove", True):
        return None
    if not (state["kept_neurons"] or state["kept_heads"]):
        return None
    return remove_structure(agent, state["kept_neurons"], state["kept_heads"])


def apply_recorded_compression(agent: Agent, raw: dict, kernel: Kernel = "auto") -> dict:
    """Compact the embeddings, remove pruned heads and neurons and convert the linears as the checkpoint's run
    recorded (``raw``: the checkpoint dict :func:`load_agent_checkpoint` returns), in place: the int8 model every
    export is written from. A checkpoint without QAT state is quantized after training for ``kernel`` (a generative
    agent's SwiGLU down projections, :data:`~agent_lightning.quantization.DECODER_FLOAT_LAYERS`, stay float).
    Returns the manifest entries that say how."""
    compact = compact_from_checkpoint(agent, raw)
    structure = None
    if not converted_modules(agent):
        recipe, exclude = None, None
        try:
            prepare_from_checkpoint(agent, raw)  # the QAT run's trained ranges
            how = "QAT ranges from the checkpoint"
        except ValueError:
            how = "post-training quantization (no QAT state in the checkpoint)"
            recipe = QuantizationRecipe(kernel=kernel)
            exclude = list(DECODER_FLOAT_LAYERS) if agent.hparams.task == "generation" else None
        structure = _remove_structure(agent, raw)  # fake-quantized layers keep their ranges, the kept rows' scales
        convert(agent, recipe, exclude=exclude)
    else:
        how = "already converted"
    entries: dict = {"quantization": how, "max_length": agent.hparams.max_length}
    if structure:
        entries["structure"] = structure
    if compact is not None:
        entries["embeddings"] = {"kept_tokens": compact.kept_tokens, "vocab_size": compact.num_embeddings}
        heads = [m for m in agent.modules() if isinstance(m, CompactLMHead) and m.embedding is compact]
        if heads:  # a tied output layer: the width of its softmax
            entries["embeddings"]["scored_tokens"] = heads[0].scored_tokens
    return entries


def write_export_files(agent: Agent, staging: Path, manifest: dict) -> None:
    """What every int8 export folder holds beside its model file: the tokenizer, ``labels.json`` and the manifest."""
    agent.tokenizer.save_pretrained(staging)
    (staging / "labels.json").write_text(json.dumps(agent.labels, indent=1), encoding="utf-8")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


@torch.inference_mode()
def _export_int8(agent: Agent, raw: dict, staging: Path, inputs: dict[str, Tensor], source: str) -> dict:
    manifest = {"format": "int8", "source": source, **apply_recorded_compression(agent, raw)}
    program = LogitsProgram(agent.model).eval()
    expected = program(inputs["input_ids"], inputs["attention_mask"])
    traced = trace(program, inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"`torch\.jit\.")
        torch.jit.save(traced, str(staging / PROGRAM))
    write_export_files(agent, staging, manifest)
    reloaded = ExportedAgent(staging)
    parity = _compare(expected, reloaded.program(inputs["input_ids"], inputs["attention_mask"]))
    parity["quantized_layers"] = len(converted_modules(agent))
    (staging / MANIFEST).write_text(json.dumps({**manifest, "parity": parity}, indent=1), encoding="utf-8")
    return parity


@torch.inference_mode()
def _export_onnx(agent: Agent, raw: dict, staging: Path, inputs: dict[str, Tensor], source: str) -> dict:
    manifest = {
        "format": "onnx",
        "source": source,
        **apply_recorded_compression(agent, raw, "onnxruntime"),
        "opset": ONNX_OPSET,
    }
    converted = LogitsProgram(agent.model).eval()
    example = (inputs["input_ids"][:2], inputs["attention_mask"][:2])
    program = write_classifier_onnx(agent.model, staging / ONNX_MODEL, example, agent.hparams.max_length)
    expected = program(inputs["input_ids"], inputs["attention_mask"])
    write_export_files(agent, staging, manifest)
    reloaded = ExportedAgent(staging)
    parity = _compare(expected, reloaded.program(inputs["input_ids"], inputs["attention_mask"]))
    parity["quantized_layers"] = len(int8_weights(staging / ONNX_MODEL))
    # the same int8 weights and scales in PyTorch's fbgemm layers, whose activations use [0, 127] instead of [0, 255]
    against_torch = _compare(converted(inputs["input_ids"], inputs["attention_mask"]), expected)
    parity["torch_int8"] = {k: against_torch[k] for k in ("max_abs_logit_diff", "top1_agreement")}
    # Dynamic quantization rounds each activation to one of 256 levels, so a float difference of one ulp between ONNX
    # Runtime and PyTorch (a division done as a multiplication, a fused GELU) can move a value to the next level
    # and the logits by about a level's worth: the check is a tolerance on the logits, not exact top-1 agreement
    # (random-token samples can have near-tied logits, which any such difference flips).
    parity["tolerance"] = ONNX_TOLERANCE * max(float(expected.abs().max()), 1.0)
    (staging / MANIFEST).write_text(json.dumps({**manifest, "parity": parity}, indent=1), encoding="utf-8")
    keys = ("max_abs_logit_diff", "top1_agreement", "samples", "quantized_layers", "tolerance")
    return {k: parity[k] for k in keys}


@torch.inference_mode()
def _export_decoder(agent: Agent, raw: dict, staging: Path, source: str) -> dict:
    hp = agent.hparams
    settings = {key: hp[key] for key in ("system_prompt", "list_actions", "max_new_tokens")}
    compression = apply_recorded_compression(agent, raw, "onnxruntime")
    manifest = {"format": "onnx", "task": "generation", "source": source, **compression}
    manifest.update(opset=ONNX_OPSET, prompt=settings)
    model = onnx_ready(agent.model)
    program = DecoderProgram(model).eval()
    write_decoder_onnx(program, staging / ONNX_MODEL)
    write_export_files(agent, staging, manifest)
    reloaded = ExportedAgent(staging)
    parity = _decoder_parity(reloaded, program, list(SAMPLE_TEXTS))
    answers, _ = reloaded.answer(list(SAMPLE_TEXTS))
    twin, _ = reloaded.answer(list(SAMPLE_TEXTS), TorchDecoder(program))
    converted, _ = reloaded.answer(list(SAMPLE_TEXTS), model)  # the Hugging Face model with the same int8 layers
    parity["answers_equal_torch"] = sum(a == b for a, b in zip(answers, twin)) / len(answers)
    parity["answers_equal_converted"] = sum(a == b for a, b in zip(answers, converted)) / len(answers)
    parity["quantized_layers"] = len(int8_weights(staging / ONNX_MODEL))
    (staging / MANIFEST).write_text(json.dumps({**manifest, "parity": parity}, indent=1), encoding="utf-8")
    keys = ("max_abs_logit_diff", "top1_agreement", "samples", "quantized_layers", "tolerance")
    return {k: parity[k] for k in keys}


def _decoder_parity(exported: ExportedAgent, program: DecoderProgram, texts: list[str]) -> dict:
    """The exported step against the PyTorch one on the prompts of ``texts`` and on one more step (each row's most
    likely token appended): logits of the tokens the model can write (a trimmed tied table gives every other token
    the lowest value)."""
    encoded = exported.prompts(texts)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = position_ids(mask)
    torch_step, onnx_step = TorchDecoder(program), exported.program
    expected = [torch_step(ids, mask, positions)]
    got = [onnx_step(ids, mask, positions)]
    token = expected[0].logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
    positions = position_ids(mask)[:, -1:]
    expected.append(torch_step(token, mask, positions, cache=expected[0].cache))
    got.append(onnx_step(token, mask, positions, cache=got[0].cache))
    reference = torch.cat([step.logits[:, -1] for step in expected])
    exported_logits = torch.cat([step.logits[:, -1] for step in got])
    writable = reference > torch.finfo(reference.dtype).min / 2
    parity = _compare(reference.masked_fill(~writable, 0), exported_logits.masked_fill(~writable, 0))
    parity["tolerance"] = DECODER_TOLERANCE * max(float(reference[writable].abs().max()), 1.0)
    return parity


def describe(result: ExportResult) -> str:
    """One line for the console."""
    fields = asdict(result)
    return (
        f"exported {fields['format']} to {fields['folder']}: reloaded and compared on {fields['samples']} samples, "
        f"top-1 agreement {fields['top1_agreement']:.3f}, largest logit difference {fields['max_abs_logit_diff']:.2e}"
        + (f", {fields['quantized_layers']} int8 layers" if fields["quantized_layers"] else "")
    )
