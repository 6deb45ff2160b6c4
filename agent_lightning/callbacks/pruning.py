"""Gradual, target-exact, resumable pruning during fitting, logged through the Lightning logger."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from agent_lightning.callbacks.base import CompressionCallback
from agent_lightning.callbacks.strategy_support import refuse_sharded_strategies
from agent_lightning.pruning.config import Criterion, Method, PruningConfig, Scope
from agent_lightning.pruning.pruner import Pruner
from agent_lightning.pruning.schedule import StepSchedule
from agent_lightning.pruning.units import HeadUnit
from agent_lightning.targets import check_patterns, short_name
from agent_lightning.tensorboard import plain_settings
from agent_lightning.validation import check_bool

__all__ = ["Pruning"]


class Pruning(CompressionCallback):
    """Prune weights while a model trains, reaching an exact target sparsity on a schedule of optimizer steps.

    Unlike Lightning's ``ModelPruning`` (which prunes at epoch ends, compounds ``amount`` and loses its masks on
    resume), masks here are recomputed on a schedule (cubic by default, Zhu & Gupta 2017), reach exactly the
    target at ``end``, are enforced after every optimizer step (gradients and optimizer moments of pruned weights
    are zeroed too), and are saved in the callback's checkpoint state. Parameters keep their standard names and
    module types: a pruned checkpoint loads into a plain model, and a QAT callback can swap modules later.

    Methods:

    - ``"magnitude"``: unstructured L1 magnitude, per layer (``scope="layer"``) or across all targets
      (``scope="global"``). Saves bytes once compressed, not CPU time (dense kernels).
    - ``"n:m"``: semi-structured; in every group of ``M`` consecutive input weights at most ``N`` stay
      (``pattern="2:4"``: 50 %).
    - ``"structured"``: whole feed-forward neurons (``sparsity`` of them; SwiGLU's gate and up rows with the down
      column) and attention heads (``head_sparsity``), the same number in every block, scored by weight norm or by
      accumulated ``|W * grad|`` (``criterion="first_order"``); grouped-query attention keeps its groups equal
      (``gqa``). At fit end they are physically removed (``physically_remove``): smaller ``nn.Linear`` layers,
      faster on CPU; a Llama-like model's config then says the new sizes, so its folder loads with plain
      ``from_pretrained``.

    Criteria: ``"magnitude"`` (``|W|``), ``"wanda"`` (``|W| * ||X||``, the input-feature norms observed over the
    training steps since the previous mask update, compared within each output row; unstructured and N:M) and
    ``"first_order"`` (structured).

    Args:
        sparsity: target fraction of zero weights in the targeted layers (``"magnitude"``), or of FFN neurons
            removed (``"structured"``). For ``"n:m"`` it must equal ``(M - N) / M``.
        method: ``"magnitude"``, ``"n:m"`` or ``"structured"``.
        scope: ``"layer"`` (each layer reaches the target) or ``"global"`` (one threshold for all), magnitude only.
        pattern: ``"N:M"`` for ``method="n:m"``.
        head_sparsity: fraction of attention (query) heads removed per block (``"structured"`` only).
        criterion: ``"magnitude"``, ``"wanda"`` (magnitude and N:M) or ``"first_order"`` (``|W * grad|``
            accumulated over steps, structured only).
        gqa: grouped-query attention: remove ``"queries"`` (query heads evenly within each key/value group) or whole
            key/value ``"groups"`` with their query heads (structured only).
        include: glob patterns over module names to prune; default: the linear layers of the transformer blocks
            (never embeddings, norms, biases or the classification head).
        exclude: glob patterns removed from the targets.
        start: first pruning step: an int is an optimizer step, a float in [0, 1] a fraction of
            ``trainer.estimated_stepping_batches``.
        end: step (or fraction) at which the target is reached; masks stay fixed after it.
        frequency: recompute masks every this many optimizer steps between ``start`` and ``end``.
        schedule: ``"cubic"`` (prunes fast early, gently late), ``"linear"`` or ``"one_shot"`` (all at ``start``).
        physically_remove: structured only: cut pruned heads and neurons out of the layers at fit end.
        log_per_layer: also log ``pruning/layer/<name>`` sparsity for every targeted layer.
        rewind: when the final masks are set (at ``end``), return the surviving weights of the targeted layers to
            their values at fit start and train them under those masks for the rest of the run (weight rewinding:
            Frankle & Carbin 2019, Renda et al. 2020; Lightning ``ModelPruning`` rewinds after every prune with its
            default ``use_lottery_ticket_hypothesis=True``). Pays when fitting starts from a well-trained model
            and the sparsity is moderate; keeps a CPU copy of the targeted weights until ``end`` (in checkpoints
            too).

    The algorithms are :mod:`agent_lightning.pruning` (:class:`~agent_lightning.pruning.Pruner`); this callback
    schedules them over optimizer steps, broadcasts rank zero's masks, logs and checkpoints.

    Raises:
        TypeError: an argument of the wrong type (at construction).
        ValueError: a bad value (at construction), or targets that match nothing / a schedule that does not fit
            the run (at ``setup``), before any weight changes.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[Pruning(sparsity=0.5)], logger=False, enable_progress_bar=False)
        >>> Pruning(method="structured", sparsity=0.3, head_sparsity=0.25).state_key
        "Pruning{'method': 'structured', 'sparsity': 0.3, 'head_sparsity': 0.25}"
    """

    def __init__(
        self,
        sparsity: float = 0.5,
        method: Method = "magnitude",
        scope: Scope = "layer",
        pattern: str = "2:4",
        head_sparsity: float = 0.0,
        criterion: Criterion = "magnitude",
        gqa: HeadUnit = "queries",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        start: int | float = 0.0,
        end: int | float = 0.7,
        frequency: int = 10,
        schedule: Literal["cubic", "linear", "one_shot"] = "cubic",
        physically_remove: bool = True,
        log_per_layer: bool = True,
        rewind: bool = False,
    ) -> None:
        super().__init__()
        self.settings = plain_settings(locals())  # the constructor arguments, for the HParams tab
        self.config = PruningConfig(sparsity, method, scope, pattern, head_sparsity, criterion, gqa)
        check_patterns("include", include)
        check_patterns("exclude", exclude)
        self.schedule = StepSchedule(start=start, end=end, frequency=frequency, kind=schedule, owner="Pruning")
        for name, flag in (
            ("physically_remove", physically_remove),
            ("log_per_layer", log_per_layer),
            ("rewind", rewind),
        ):
            check_bool(name, flag, "Pruning")
        self.sparsity, self.method, self.head_sparsity = float(sparsity), method, float(head_sparsity)
        self.include, self.exclude = include, exclude
        self.rewind, self.physically_remove, self.log_per_layer = rewind, physically_remove, log_per_layer
        self.pruner: Pruner | None = None  # built at setup, on the module being fitted
        # state (checkpointed with the pruner's masks and scores)
        self._initial: dict[str, Tensor] = {}  # rewind=True: targeted weights at fit start, until the rewind
        self._rewound = False
        self._last_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, sparsity=self.sparsity, head_sparsity=self.head_sparsity)

    # -- setup -------------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategies(trainer, "Pruning", "it masks whole weight matrices")
        self.pruner = Pruner(pl_module, self.config, self.include, self.exclude)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.schedule.resolve(int(trainer.estimated_stepping_batches))
        self.restore_pending(pl_module)
        if self.rewind and not self._rewound and not self._initial:
            if self._last_step >= 0:
                raise ValueError(
                    "Pruning(rewind=True) resumes a checkpoint written without rewind, so the fit-start weights to "
                    "rewind to are unknown. Resume with Pruning(rewind=False), or start a new run."
                )
            self._initial = {name: weight.detach().cpu().clone() for name, weight in self.pruner.weights().items()}
        self.pruner.apply()

    # -- every step --------------------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        if self.config.criterion == "wanda" and self._before_end(trainer):
            self.pruner.inputs.start()  # the step's forward adds its inputs' norms

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self.config.criterion == "first_order" and self._before_end(trainer):
            self.pruner.accumulate_first_order()
        self.pruner.mask_gradients()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.pruner.inputs.stop()
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        fraction = self.schedule.fraction(step)
        if self.schedule.is_update_step(step) and fraction > self.pruner.fraction_applied:
            self._update_masks(trainer, fraction)
        if self.rewind and not self._rewound and self.pruner.fraction_applied >= 1.0:
            self._rewind_weights(trainer)
        self.pruner.apply()
        if self.logging_step(trainer):
            self._log(pl_module)

    def _before_end(self, trainer: Trainer) -> bool:
        return self.schedule.end_step is not None and trainer.global_step < self.schedule.end_step

    def _update_masks(self, trainer: Trainer, fraction: float) -> None:
        masks, kept_neurons, kept_heads = self.pruner.compute(fraction)
        # Every rank uses rank zero's masks (DDP keeps weights equal, but ties could break differently).
        masks, kept_neurons, kept_heads = trainer.strategy.broadcast(
            ({k: v.cpu() for k, v in masks.items()}, kept_neurons, kept_heads), src=0
        )
        self.pruner.set(masks, kept_neurons, kept_heads, fraction)
        self.pruner.inputs.reset()  # the next update scores with the inputs seen from now on
        self.pruner.zero_optimizer_moments(trainer.optimizers)
        zeros = sum(int((~m).sum()) for m in self.pruner.masks.values())
        rank_zero_info(
            f"[Pruning] step {trainer.global_step}: {self.method} target {fraction * self.sparsity:.4f} "
            f"({zeros:,} weights masked)"
        )

    def _rewind_weights(self, trainer: Trainer) -> None:
        parameters = self.pruner.parameters()
        with torch.no_grad():
            for name, value in self._initial.items():
                parameters[name].copy_(value.to(parameters[name].device))
        self._initial, self._rewound = {}, True
        rank_zero_info(f"[Pruning] step {trainer.global_step}: surviving weights rewound to their fit-start values")

    # -- measuring and logging ---------------------------------------------------------------------------------------
    def layer_sparsity(self, pl_module: nn.Module) -> dict[str, float]:
        """Fraction of exact zeros in each targeted layer's weight, now."""
        return self.pruner.layer_sparsity()

    def sparsity_now(self, pl_module: nn.Module) -> tuple[float, int]:
        """Fraction of exact zeros over all targeted weights, and the number of nonzero targeted weights."""
        return self.pruner.sparsity()

    def _log(self, pl_module: LightningModule) -> None:
        actual, nonzero = self.pruner.sparsity()
        metrics = {
            "pruning/sparsity": actual,
            "pruning/target": self.pruner.fraction_applied * self.sparsity,
            "pruning/nonzero_params": float(nonzero),
        }
        if self.method == "structured":
            metrics["pruning/neuron_sparsity"], metrics["pruning/head_sparsity"] = self.pruner.unit_sparsity()
        if self.log_per_layer:
            for name, value in self.pruner.layer_sparsity().items():
                metrics[f"pruning/layer/{short_name(name)}"] = value
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    # -- end of training ---------------------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # ``on_train_end`` runs before every callback's ``on_fit_end``: masks are final before QAT converts.
        self.pruner.apply()
        actual, nonzero = self.pruner.sparsity()
        pruner = self.pruner
        if self.method == "structured" and self.physically_remove and (pruner.kept_neurons or pruner.kept_heads):
            before, after = pruner.remove_structure()
            rank_zero_info(f"[Pruning] removed heads/neurons physically: {before:,} -> {after:,} parameters")
        else:
            rank_zero_info(f"[Pruning] final sparsity {actual:.4f} ({nonzero:,} nonzero targeted weights)")

    # -- checkpointing -----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        masks = self.pruner.state_dict() if self.pruner is not None else _EMPTY_MASKS
        return {
            **masks,
            "last_step": self._last_step,
            "initial": dict(self._initial),
            "rewound": self._rewound,
            "schedule": self.schedule.state_dict(),
            "config": {
                "method": self.method,
                "sparsity": self.sparsity,
                "head_sparsity": self.head_sparsity,
                "physically_remove": self.physically_remove,
            },
        }

    @override
    def restore(self, state: dict[str, Any], pl_module: LightningModule) -> None:
        self.pruner.load_state_dict(state)
        self._last_step = state["last_step"]
        self._initial = dict(state.get("initial", {}))
        self._rewound = bool(state.get("rewound", False))
        self.schedule.check_matches(state["schedule"])


_EMPTY_MASKS: dict[str, Any] = {"keep": {}, "kept_neurons": {}, "kept_heads": {}, "scores": {}, "fraction_applied": 0.0}
