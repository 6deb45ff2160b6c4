"""Quantization-aware training (torchao fake quantization), with a measured conversion to a real int8 model."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchao.quantization.qat import FakeQuantizedLinear
from typing_extensions import override

from agent_lightning.callbacks.base import CompressionCallback
from agent_lightning.callbacks.strategy_support import refuse_sharded_strategies
from agent_lightning.evaluation import accuracy
from agent_lightning.pruning.schedule import StepSchedule
from agent_lightning.quantization.convert import convert, converted_modules, unprepare
from agent_lightning.quantization.fake_quantizers import fake_quantized_modules
from agent_lightning.quantization.qat import (
    freeze_ranges,
    load_frozen_scales,
    prepare,
    quantization_targets,
    weight_error,
)
from agent_lightning.quantization.recipe import Activations, Kernel, QuantizationRecipe, Weights
from agent_lightning.targets import check_patterns, short_name
from agent_lightning.tensorboard import log_after_fit, plain_settings
from agent_lightning.validation import check_bool

__all__ = ["QuantizationAwareTraining"]


class QuantizationAwareTraining(CompressionCallback):
    """Train with fake-quantized linear layers, then convert them to a real int8 model and measure the gap.

    Built on torchao's QAT (``QATConfig`` prepare, ``IntxFakeQuantizeConfig``): the targeted ``nn.Linear`` layers
    become ``FakeQuantizedLinear`` modules (GPT-2 style ``Conv1D`` layers become
    :class:`~agent_lightning.quantization.FakeQuantizedConv1D`, in their own weight layout) that keep the same
    parameters, so the model's ``forward`` (keyword inputs
    such as ``input_ids=``/``attention_mask=`` included), the optimizer, pruning masks and ``state_dict`` keys are
    unchanged; checkpoints load into a plain model (``load_from_checkpoint``) and resume into a QAT run.

    Timeline: float training until ``start``; fake-quantization from ``start`` on (train and validation forwards);
    weight ranges frozen at ``freeze`` (optional), so that what trains is exactly what converts; at fit end, after
    pruning has made its masks permanent, the model is converted in place (``convert_on_fit_end``) with the scales
    training used. By default (int8 weights and activations) each layer becomes a ``torch.ao`` dynamic quantized
    linear running fbgemm's int8 GEMM on the CPU, and training fake-quantizes activations exactly as that kernel
    quantizes them, so the converted model is the trained one and faster than fp32 on CPU; the model is moved to the
    CPU for conversion if it trained elsewhere. When the trainer has validation data, the fake-quantized and the
    converted model are both evaluated on it and ``qat/fake_quant_acc``, ``qat/converted_acc`` and ``qat/acc_gap``
    (fake-quant minus converted) are logged. Kernels and schemes: :mod:`agent_lightning.quantization`.

    Args:
        weights: ``"int8"`` (per-channel symmetric) or ``"int4"`` (per-group symmetric, ``group_size`` inputs).
        activations: ``"int8"`` (dynamic asymmetric, computed from each input as the int8 kernel does) or
            ``"none"`` (weight-only).
        group_size: inputs per scale for ``weights="int4"``.
        kernel: the kernel of the converted model, which training's fake quantization matches: ``"auto"`` (fbgemm
            for int8 weights and activations, torchao otherwise), ``"fbgemm"`` (fast int8 on x86 CPUs, CPU only),
            ``"onnxruntime"`` (the same int8 layers, activations fake-quantized over ``[0, 255]`` as ONNX Runtime's
            ``DynamicQuantizeLinear`` does: train for ``export --format onnx``) or ``"torchao"`` (any device and
            scheme; not fast on CPU).
        include: glob patterns over module names to quantize; default: the transformer blocks' linear layers
            (embeddings, norms and the classification head stay float).
        exclude: glob patterns removed from the targets.
        start: optimizer step (int) or fraction of ``trainer.estimated_stepping_batches`` (float) at which
            fake-quantization starts (e.g. ``0.7``: the last 30 % of training, after float fine-tuning and pruning).
        freeze: step or fraction after which weight ranges stop moving; ``None`` keeps them following the weights
            (conversion then uses the final weights' ranges, which is also exact).
        convert_on_fit_end: convert the model to int8 in place when fitting ends.
        evaluate: at fit end, evaluate the fake-quantized and the converted model on the validation data and log
            the gap (needs labelled validation batches).
        log_per_layer: also log ``qat/layer/<name>/weight_error`` for every quantized layer.

    Raises:
        TypeError: an argument of the wrong type (at construction).
        ValueError: a bad value (at construction); targets that are not linear layers or match nothing, a group
            size that does not divide a layer, or a start past the end of training (at ``setup``/fit start, before
            any weight changes).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from agent_lightning.callbacks import Pruning
        >>> callbacks = [Pruning(0.5, end=0.6), QuantizationAwareTraining(start=0.7)]
        >>> trainer = Trainer(callbacks=callbacks, logger=False, enable_progress_bar=False)
        >>> QuantizationAwareTraining(weights="int4", group_size=32, activations="none").recipe.backend
        'torchao'
    """

    def __init__(
        self,
        weights: Weights = "int8",
        activations: Activations = "int8",
        group_size: int = 32,
        kernel: Kernel = "auto",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        start: int | float = 0.0,
        freeze: int | float | None = None,
        convert_on_fit_end: bool = True,
        evaluate: bool = True,
        log_per_layer: bool = True,
    ) -> None:
        super().__init__()
        self.settings = plain_settings(locals())  # the constructor arguments, for the HParams tab
        self.recipe = QuantizationRecipe(weights=weights, activations=activations, group_size=group_size, kernel=kernel)
        check_patterns("include", include)
        check_patterns("exclude", exclude)
        self.schedule = StepSchedule(
            start=start,
            end=1.0 if freeze is None else freeze,
            frequency=1,
            kind="one_shot",
            owner="QuantizationAwareTraining",
            names=("start", "freeze"),
        )
        self.weights, self.activations, self.group_size, self.kernel = weights, activations, group_size, kernel
        self.include, self.exclude = include, exclude
        self.start, self.freeze = start, freeze
        for name, flag in (("convert_on_fit_end", convert_on_fit_end), ("evaluate", evaluate)):
            check_bool(name, flag, "QuantizationAwareTraining")
        check_bool("log_per_layer", log_per_layer, "QuantizationAwareTraining")
        self.convert_on_fit_end = convert_on_fit_end
        self.evaluate = evaluate
        self.log_per_layer = log_per_layer
        # state (checkpointed)
        self._prepared = False
        self._frozen = False
        self._frozen_scales = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(weights=self.weights, activations=self.activations, kernel=self.kernel)

    # -- setup -------------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            refuse_sharded_strategies(trainer, "QuantizationAwareTraining", "it swaps whole linear modules")
            quantization_targets(pl_module, self.recipe, self.include, self.exclude)
        else:
            self._float_for_loading(pl_module)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        start_step = round(self.start * total) if isinstance(self.start, float) else self.start
        if start_step >= total:
            raise ValueError(
                f"QuantizationAwareTraining(start={self.start!r}) is step {start_step}, but this run has only {total} "
                f"optimizer steps, so QAT would never start. Use start<{total} or a fraction such as start=0.7."
            )
        self.schedule.resolve(total)
        self.restore_pending(pl_module)
        if not self._prepared and trainer.global_step >= self.schedule.start_step:
            self._prepare(trainer, pl_module)

    # -- every step --------------------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._prepared and trainer.global_step >= self.schedule.start_step:
            self._prepare(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._prepared and not self._frozen and self.freeze is not None and step >= self.schedule.end_step:
            self._freeze(trainer, pl_module)
        if self.logging_step(trainer):
            self._log(pl_module)

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = prepare(pl_module, self.recipe, self.include, self.exclude)
        self._prepared = True
        rank_zero_info(
            f"[QAT] step {trainer.global_step}: fake-quantizing {len(names)} linear layers "
            f"({self.weights} weights, {self.activations} activations, {self.recipe.backend} kernel)"
        )

    def _freeze(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scales = freeze_ranges(pl_module)
        # Weights are equal on every DDP rank; broadcasting rank zero's scales makes the ranges equal bit for bit.
        self._frozen_scales = trainer.strategy.broadcast(scales, src=0)
        load_frozen_scales(pl_module, self._frozen_scales)
        self._frozen = True
        rank_zero_info(f"[QAT] step {trainer.global_step}: weight ranges frozen for {len(scales)} layers")

    # -- logging -----------------------------------------------------------------------------------------------------
    def _log(self, pl_module: LightningModule) -> None:
        metrics = {"qat/enabled": float(self._prepared), "qat/frozen": float(self._frozen)}
        modules = fake_quantized_modules(pl_module)
        if modules:
            errors = {name: weight_error(module) for name, module in modules.items()}
            metrics["qat/weight_error"] = sum(errors.values()) / len(errors)
            metrics["qat/weight_absmax"] = max(float(m.weight.detach().abs().max()) for m in modules.values())
            scales = [_mean_scale(m.activation_fake_quantizer) for m in modules.values()]
            scales = [s for s in scales if s is not None]
            if scales:
                metrics["qat/activation_scale"] = sum(scales) / len(scales)
            if self.log_per_layer:
                metrics.update({f"qat/layer/{short_name(name)}/weight_error": e for name, e in errors.items()})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    # -- fit end -----------------------------------------------------------------------------------------------------
    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._prepared or not self.convert_on_fit_end:
            return
        batches = trainer.val_dataloaders if self.evaluate else None
        fake_quant = accuracy(trainer.strategy, pl_module, batches)
        fake_quantized = fake_quantized_modules(pl_module)
        self._convert(pl_module)
        converted = accuracy(trainer.strategy, pl_module, batches)
        metrics = {"qat/converted": 1.0}
        if self.spawned(trainer):
            # Spawned workers hand their weights back as a state dict that the main process's float model must
            # accept: return the trained fake-quantized layers (float parameters) instead of the int8 ones.
            for name, module in fake_quantized.items():
                pl_module.set_submodule(name, module)
            metrics["qat/converted"] = 0.0
            rank_zero_info(
                "[QAT] with a spawn launcher (e.g. strategy='ddp_spawn') the model returned to the main process keeps "
                "its fake-quantized float weights; call agent_lightning.quantization.convert(model) there (or use "
                "strategy='ddp')."
            )
        if fake_quant is not None and converted is not None:
            metrics["qat/fake_quant_acc"], metrics["qat/converted_acc"] = fake_quant, converted
            metrics["qat/acc_gap"] = fake_quant - converted
            rank_zero_info(
                f"[QAT] converted to {self.weights}: validation accuracy fake-quant {fake_quant:.4f}, "
                f"converted {converted:.4f} (gap {fake_quant - converted:+.4f})"
            )
        else:
            rank_zero_info(f"[QAT] converted to {self.weights} (no labelled validation data to measure the gap)")
        log_after_fit(trainer, metrics)

    def _recipe_state(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "activations": self.activations,
            "group_size": self.group_size,
            "kernel": self.kernel,
        }

    def _convert(self, pl_module: LightningModule) -> None:
        if self.recipe.backend != "torchao" and pl_module.device.type != "cpu":
            rank_zero_info(f"[QAT] moving the model from {pl_module.device} to the CPU for the fbgemm int8 kernel")
            pl_module.cpu()
        convert(pl_module)

    # -- test / validate / predict with ckpt_path --------------------------------------------------------------------
    def _float_for_loading(self, pl_module: LightningModule) -> None:
        # ``Trainer.test/validate/predict(ckpt_path=...)`` loads a float checkpoint after ``setup``; a quantized
        # model cannot receive it. Hand Lightning float layers now and put the quantization back at stage start.
        quantized = {**fake_quantized_modules(pl_module), **converted_modules(pl_module)}
        if quantized:
            self.set_aside(quantized)
            unprepare(pl_module)

    @override
    def reapply(
        self, trainer: Trainer, pl_module: LightningModule, state: dict[str, Any] | None, aside: dict[str, nn.Module]
    ) -> None:
        if state is None or not state["prepared"]:
            rank_zero_info(f"[QAT] {trainer.ckpt_path} was written before QAT started: evaluating it in float.")
            return
        converted = not all(isinstance(m, FakeQuantizedLinear) for m in aside.values())
        prepare(pl_module, self.recipe, self.include, self.exclude)
        load_frozen_scales(pl_module, state["frozen_scales"])
        if converted:
            self._convert(pl_module)

    # -- checkpointing -----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "prepared": self._prepared,
            "frozen": self._frozen,
            "frozen_scales": dict(self._frozen_scales),
            "recipe": self._recipe_state(),
            "include": self.include,
            "exclude": self.exclude,
            "schedule": self.schedule.state_dict(),
        }

    @override
    def restore(self, state: dict[str, Any], pl_module: LightningModule) -> None:
        if state["recipe"] != self._recipe_state():
            asked = ", ".join(f"{k}={v!r}" for k, v in self._recipe_state().items())
            raise ValueError(
                f"QuantizationAwareTraining: the checkpoint was trained with {state['recipe']}, this run asks for "
                f"{asked}. Resume with the same arguments, or start a new run."
            )
        self.schedule.check_matches(state["schedule"])
        self._prepared = bool(state["prepared"])
        self._frozen = bool(state["frozen"])
        self._frozen_scales = dict(state["frozen_scales"])
        if self._prepared:
            prepare(pl_module, self.recipe, self.include, self.exclude)
            load_frozen_scales(pl_module, self._frozen_scales)


def _mean_scale(quantizer: nn.Module | None) -> float | None:
    scale = getattr(quantizer, "scale", None)
    if isinstance(scale, float):  # DynamicActivationFakeQuantizer: the last call's per-tensor scale
        return scale
    return float(scale.detach().float().mean()) if isinstance(scale, Tensor) else None
