"""The pruning masks of one model: computed at a point of the schedule, enforced, measured, made permanent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from agent_lightning.pruning.activations import InputNorms
from agent_lightning.pruning.config import PruningConfig
from agent_lightning.pruning.masks import (
    apply_masks,
    magnitude_masks,
    mask_gradients,
    n_m_masks,
    row_masks,
    scores_with_history,
    zero_optimizer_moments,
)
from agent_lightning.pruning.removal import remove_structure
from agent_lightning.pruning.units import (
    accumulate_first_order,
    expand_units,
    first_order_head_scores,
    head_masks,
    head_scores,
    keep_heads,
    keep_units,
    neuron_scores,
    structured_blocks,
    unit_sparsity,
)
from agent_lightning.targets import linear_in_out, select_modules

__all__ = ["Pruner", "prune"]

Masks = dict[str, Tensor]
Units = dict[int, Tensor]


class Pruner:
    """Masks over ``model``'s targeted linear layers, grown towards ``config``'s target by :meth:`update`.

    ``update(fraction)`` sets masks for ``fraction`` of the way to the target (the schedule's value; 1.0 is the
    target itself), never reviving a weight pruned before; :meth:`apply` zeroes the masked weights,
    :meth:`mask_gradients` and :meth:`zero_optimizer_moments` keep training from growing them back, and
    :meth:`remove_structure` cuts pruned neurons and heads out of the layers. Parameters keep their names and module
    types, so the masks survive other code swapping modules (QAT) as long as the parameters stay.

    ``criterion="wanda"`` scores each weight by ``|W| * ||X||`` (:class:`~agent_lightning.pruning.activations.
    InputNorms` of the targeted layers' inputs): call :meth:`calibrate` with batches first (one shot), or
    :meth:`observe` while the model trains (the callback does).

    Args:
        model: any module with ``nn.Linear`` or GPT-2 ``Conv1D`` layers.
        config: what to prune.
        include: glob patterns over module names (default: the linear layers of the transformer blocks).
        exclude: glob patterns removed from the targets.

    Raises:
        ValueError: the targets match nothing, an N:M group does not divide a layer's inputs, or structured pruning
            finds no block layout it knows.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> pruner = Pruner(model, PruningConfig(sparsity=0.5))  # default targets: every linear but the last
        >>> pruner.update(1.0); pruner.apply()
        >>> pruner.sparsity()
        (0.5, 32)
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruningConfig,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        self.model, self.config, self.include, self.exclude = model, config, include, exclude
        self.targets = select_modules(model, include, exclude, argument="Pruning(include=...)")
        if config.method == "n:m":
            self._check_groups()
        self.blocks = []
        self.ffn_widths: dict[int, int] = {}
        self.head_counts: dict[int, int] = {}
        if config.method == "structured":
            self.blocks = structured_blocks(
                model, list(self.targets), config.sparsity, config.head_sparsity, config.gqa
            )
            self.ffn_widths = {
                b.index: model.get_submodule(b.ffn_in[0]).weight.shape[0] for b in self.blocks if b.ffn_out
            }
            self.head_counts = {b.index: b.num_heads for b in self.blocks if b.attention_out and b.head_dim}
        self.masks: Masks = {}  # parameter name -> bool mask, True = kept
        self.kept_neurons: Units = {}
        self.kept_heads: Units = {}
        self.scores: dict[str, Tensor] = {}  # first-order importance accumulators
        self.inputs = InputNorms(model, list(self.targets))  # criterion="wanda": the targets' input norms
        self.fraction_applied = 0.0

    def _check_groups(self) -> None:
        n, m = self.config.group
        for name, module in self.targets.items():
            fan_in = linear_in_out(module)[0]
            if fan_in % m:
                raise ValueError(
                    f"Pruning(pattern='{n}:{m}'): layer {name!r} has {fan_in} inputs, not a multiple of {m}. "
                    f"Exclude it (exclude=['{name}']) or choose a pattern whose M divides {fan_in}."
                )

    def parameters(self) -> dict[str, Tensor]:
        """The model's parameters by name (looked up anew: modules may have been swapped)."""
        return dict(self.model.named_parameters())

    def weights(self) -> dict[str, Tensor]:
        """The targeted layers' weights by parameter name."""
        parameters = self.parameters()
        return {f"{name}.weight": parameters[f"{name}.weight"] for name in self.targets}

    # -- masks -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, fraction: float) -> tuple[Masks, Units, Units]:
        """``(masks, kept neurons, kept heads)`` for ``fraction`` of the way to the target, without setting them."""
        parameters = self.parameters()
        config = self.config
        if config.method == "magnitude" and config.criterion == "wanda":  # per output row, as Wanda compares
            masks = {}
            for name, score in self._weight_scores().items():
                masks[name] = row_masks(score, fraction * config.sparsity, self._transposed(name))
            return masks, {}, {}
        if config.method == "magnitude":
            return magnitude_masks(self._weight_scores(), fraction * config.sparsity, config.scope), {}, {}
        if config.method == "n:m":
            n, m = config.group
            scores = self._weight_scores()
            return {name: n_m_masks(scores[name], n, m, fraction, self._transposed(name)) for name in scores}, {}, {}
        masks, kept_neurons, kept_heads = {}, dict(self.kept_neurons), dict(self.kept_heads)
        first_order = config.criterion == "first_order"
        for block in self.blocks:
            if config.sparsity and block.ffn_out:
                score = self.scores.get(f"ffn.{block.index}") if first_order else neuron_scores(block, parameters)
                score = torch.zeros(self.ffn_widths[block.index]) if score is None else score
                keep = keep_units(score, kept_neurons.get(block.index), fraction * config.sparsity)
                kept_neurons[block.index] = keep.nonzero().flatten().cpu()
                expand_units(masks, parameters, block.ffn_in, block.ffn_out, keep, 1)
            if config.head_sparsity and block.attention_out and block.head_dim:
                if first_order:
                    score = first_order_head_scores(block, self.scores, config.gqa)
                else:
                    score = head_scores(block, parameters, config.gqa)
                if score is None:  # no gradient seen yet: every unit ties
                    score = head_scores(block, parameters, config.gqa).zero_()
                target = fraction * config.head_sparsity
                keep = keep_heads(block, score, kept_heads.get(block.index), target, config.gqa)
                kept_heads[block.index] = keep.nonzero().flatten().cpu()
                head_masks(masks, parameters, block, keep)
        return masks, kept_neurons, kept_heads

    def _transposed(self, weight_name: str) -> bool:
        """Whether a targeted weight is stored ``(in, out)`` (GPT-2's ``Conv1D``)."""
        return not isinstance(self.targets[weight_name.removesuffix(".weight")], nn.Linear)

    def _weight_scores(self) -> dict[str, Tensor]:
        """Each targeted weight's score, weights pruned before scored below every kept one: ``|W|``, or with
        ``criterion="wanda"`` ``|W|`` times the norm of the input feature each weight reads."""
        norms = self.inputs.norms() if self.config.criterion == "wanda" else {}
        scores = {}
        for name, weight in self.weights().items():
            layer = name.removesuffix(".weight")
            score = weight.detach().abs().float()
            if self.config.criterion == "wanda":
                if layer not in norms:
                    raise ValueError(
                        f"Pruning(criterion='wanda') scores weights by their inputs' norms, and layer {layer!r} has "
                        "seen no input yet. Run the model on calibration batches first (Pruner.calibrate(batches), "
                        "prune(..., calibration=batches)), or let Pruning observe training steps before it prunes."
                    )
                norm = norms[layer].to(score.device)
                score = score * (norm[:, None] if self._transposed(name) else norm[None, :])
            scores[name] = scores_with_history(score, self.masks.get(name))
        return scores

    def set(self, masks: Masks, kept_neurons: Units, kept_heads: Units, fraction: float) -> None:
        """Make these the masks (moved to the parameters' devices); ``fraction`` is where they stand."""
        parameters = self.parameters()
        self.masks = {name: mask.to(parameters[name].device) for name, mask in masks.items()}
        self.kept_neurons, self.kept_heads = dict(kept_neurons), dict(kept_heads)
        self.fraction_applied = fraction

    def update(self, fraction: float) -> None:
        """Compute and set the masks for ``fraction`` of the way to the target."""
        self.set(*self.compute(fraction), fraction)

    def apply(self) -> None:
        """Zero the masked weights, in place."""
        if self.masks:
            apply_masks(self.parameters(), self.masks)

    def mask_gradients(self) -> None:
        """Zero the gradients of masked weights (call before the optimizer step)."""
        mask_gradients(self.parameters(), self.masks)

    def zero_optimizer_moments(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Zero the optimizers' state of masked weights (call after new masks are set)."""
        zero_optimizer_moments(optimizers, self.parameters(), self.masks)

    def accumulate_first_order(self) -> None:
        """Add this step's ``|W * grad|`` to the neuron and head scores (``criterion="first_order"``)."""
        neurons, heads = bool(self.config.sparsity), bool(self.config.head_sparsity)
        accumulate_first_order(self.blocks, self.parameters(), self.scores, neurons, heads)

    def calibrate(self, batches: Iterable[Any], max_batches: int | None = None) -> int:
        """Run the model (eval mode, no gradients) over ``batches`` and record its targeted layers' input norms, for
        ``criterion="wanda"``; returns the number of batches read (see :meth:`InputNorms.calibrate`)."""
        return self.inputs.calibrate(batches, max_batches)

    # -- measuring ---------------------------------------------------------------------------------------------------
    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in each targeted layer's weight, now."""
        return {name: float((m.weight == 0).float().mean()) for name, m in self.targets.items()}

    def sparsity(self) -> tuple[float, int]:
        """Fraction of exact zeros over all targeted weights, and the number of nonzero targeted weights."""
        zeros = sum(int((m.weight == 0).sum()) for m in self.targets.values())
        total = sum(m.weight.numel() for m in self.targets.values())
        return zeros / total, total - zeros

    def unit_sparsity(self) -> tuple[float, float]:
        """Fraction of feed-forward neurons and of attention heads pruned (structured)."""
        return unit_sparsity(self.kept_neurons, self.ffn_widths), unit_sparsity(self.kept_heads, self.head_counts)

    # -- making it permanent -----------------------------------------------------------------------------------------
    def remove_structure(self) -> tuple[int, int]:
        """Cut the pruned neurons and heads out of the layers (structured); returns parameters before and after."""
        before = sum(p.numel() for p in self.model.parameters())
        remove_structure(self.model, self.kept_neurons, self.kept_heads)
        self.targets = select_modules(self.model, self.include, self.exclude, argument="Pruning(include=...)")
        self.masks = {}
        return before, sum(p.numel() for p in self.model.parameters())

    # -- state -------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "keep": {name: mask.cpu() for name, mask in self.masks.items()},
            "kept_neurons": dict(self.kept_neurons),
            "kept_heads": dict(self.kept_heads),
            "scores": {k: v.cpu() for k, v in self.scores.items()},
            "inputs": self.inputs.state_dict(),
            "fraction_applied": self.fraction_applied,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks and scores saved by :meth:`state_dict`.

        Raises:
            ValueError: the masks name parameters this model does not have.
        """
        parameters = self.parameters()
        missing = [name for name in state["keep"] if name not in parameters]
        if missing:
            raise ValueError(
                f"The checkpoint's pruning masks name parameters this model does not have ({missing[:3]}...). "
                "Resume with the same model as the one that was pruned."
            )
        self.set(state["keep"], state["kept_neurons"], state["kept_heads"], state["fraction_applied"])
        device = next(iter(parameters.values())).device if parameters else torch.device("cpu")
        self.scores = {k: v.to(device) for k, v in state["scores"].items()}
        self.inputs.load_state_dict(state.get("inputs", {}))


def prune(
    model: nn.Module,
    config: PruningConfig,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    physically_remove: bool = False,
    calibration: Iterable[Any] | None = None,
    max_batches: int | None = None,
) -> Pruner:
    """Prune ``model`` to ``config``'s target in one shot, without training (in place).

    Args:
        model: the model.
        config: what to prune.
        include: glob patterns over module names (default: the transformer blocks' linear layers).
        exclude: glob patterns removed from the targets.
        physically_remove: structured only: cut the pruned neurons and heads out of the layers.
        calibration: batches the model is run on first to score weights by their inputs (``criterion="wanda"``,
            which needs them), e.g. a training dataloader.
        max_batches: read at most this many calibration batches.

    Returns:
        The :class:`Pruner` holding the masks (to keep enforcing them if the model trains on).

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> prune(model, PruningConfig(sparsity=0.5, method="n:m", pattern="2:4")).sparsity()[0]
        0.5
    """
    pruner = Pruner(model, config, include, exclude)
    if calibration is not None:
        pruner.calibrate(calibration, max_batches)
    pruner.update(1.0)
    pruner.apply()
    if physically_remove and config.method == "structured":
        pruner.remove_structure()
    return pruner
