"""Gradual, target-exact, resumable pruning during fitting, logged through the Lightning logger."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from agent_lightning.callbacks.schedule import StepSchedule
from agent_lightning.callbacks.strategy_support import refuse_sharded_strategies
from agent_lightning.structure import remove_structure
from agent_lightning.targets import (
    TransformerBlock,
    check_patterns,
    find_blocks,
    linear_in_out,
    select_modules,
    short_name,
)
from agent_lightning.tensorboard import plain_settings
from agent_lightning.validation import check_bool

__all__ = ["Pruning"]

Method = Literal["magnitude", "n:m", "structured"]


class Pruning(Callback):
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
    - ``"structured"``: whole feed-forward neurons (``sparsity`` of them) and attention heads (``head_sparsity``),
      the same number in every block, scored by weight norm or by accumulated ``|W * grad|``
      (``importance="first_order"``). At fit end they are physically removed (``physically_remove``): smaller
      ``nn.Linear`` layers, faster on CPU.

    Args:
        sparsity: target fraction of zero weights in the targeted layers (``"magnitude"``), or of FFN neurons
            removed (``"structured"``). For ``"n:m"`` it must equal ``(M - N) / M``.
        method: ``"magnitude"``, ``"n:m"`` or ``"structured"``.
        scope: ``"layer"`` (each layer reaches the target) or ``"global"`` (one threshold for all), magnitude only.
        pattern: ``"N:M"`` for ``method="n:m"``.
        head_sparsity: fraction of attention heads removed per block (``"structured"`` only).
        importance: ``"magnitude"`` or ``"first_order"`` (``|W * grad|`` accumulated over steps), structured only.
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

    Raises:
        ValueError: a bad argument (at construction), or targets that match nothing / a schedule that does not fit
            the run (at ``setup``), before any weight changes.

    Example:
        >>> trainer = Trainer(callbacks=[Pruning(sparsity=0.5)])  # doctest: +SKIP
        >>> Pruning(method="structured", sparsity=0.3, head_sparsity=0.25)  # doctest: +SKIP
    """

    def __init__(
        self,
        sparsity: float = 0.5,
        method: Method = "magnitude",
        scope: Literal["layer", "global"] = "layer",
        pattern: str = "2:4",
        head_sparsity: float = 0.0,
        importance: Literal["magnitude", "first_order"] = "magnitude",
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
        self.settings = plain_settings(locals())  # the constructor arguments, for the HParams tab
        _choice("method", method, ("magnitude", "n:m", "structured"))
        _choice("scope", scope, ("layer", "global"))
        _choice("importance", importance, ("magnitude", "first_order"))
        _fraction("sparsity", sparsity, allow_zero=method == "structured")
        _fraction("head_sparsity", head_sparsity, allow_zero=True)
        self.n, self.m = _parse_pattern(pattern)
        if method == "n:m" and abs(sparsity - (self.m - self.n) / self.m) > 1e-9:
            wanted = (self.m - self.n) / self.m
            raise ValueError(
                f"Pruning(sparsity={sparsity}, method='n:m', pattern={pattern!r}): an {pattern} pattern keeps "
                f"{self.n} of every {self.m} weights, i.e. sparsity={wanted:g}. Use Pruning(sparsity={wanted:g}, "
                f"method='n:m', pattern={pattern!r}) or another pattern."
            )
        if method != "structured" and head_sparsity:
            raise ValueError(
                f"head_sparsity={head_sparsity} applies to method='structured' only (got method={method!r}). "
                f"Use Pruning(method='structured', sparsity=..., head_sparsity={head_sparsity})."
            )
        if method == "structured" and not sparsity and not head_sparsity:
            raise ValueError("method='structured' needs sparsity (FFN neurons) or head_sparsity (heads) above 0.")
        if method == "n:m" and scope == "global":
            raise ValueError("scope='global' applies to method='magnitude'; N:M groups are always per layer.")
        check_patterns("include", include)
        check_patterns("exclude", exclude)
        self.schedule = StepSchedule(start=start, end=end, frequency=frequency, kind=schedule, owner="Pruning")
        self.sparsity = float(sparsity)
        self.method = method
        self.scope = scope
        self.pattern = pattern
        self.head_sparsity = float(head_sparsity)
        self.importance = importance
        self.include = include
        self.exclude = exclude
        check_bool("physically_remove", physically_remove, "Pruning")
        check_bool("log_per_layer", log_per_layer, "Pruning")
        check_bool("rewind", rewind, "Pruning")
        self.rewind = rewind
        self.physically_remove = physically_remove
        self.log_per_layer = log_per_layer
        # resolved at setup
        self._targets: dict[str, nn.Module] = {}
        self._blocks: list[TransformerBlock] = []
        self._ffn_widths: dict[int, int] = {}
        self._head_counts: dict[int, int] = {}
        # state (checkpointed)
        self._keep: dict[str, Tensor] = {}  # parameter name -> bool mask, True = kept
        self._kept_neurons: dict[int, Tensor] = {}
        self._kept_heads: dict[int, Tensor] = {}
        self._scores: dict[str, Tensor] = {}  # first-order importance accumulators
        self._initial: dict[str, Tensor] = {}  # rewind=True: targeted weights at fit start, until the rewind
        self._rewound = False
        self._fraction_applied = 0.0
        self._last_step = -1
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, sparsity=self.sparsity, head_sparsity=self.head_sparsity)

    # -- setup -------------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategies(trainer, "Pruning", "it masks whole weight matrices")
        self._targets = select_modules(pl_module, self.include, self.exclude, argument="Pruning(include=...)")
        if self.method == "n:m":
            self._check_groups()
        if self.method == "structured":
            self._blocks = self._structured_blocks(pl_module)
            self._ffn_widths = {
                b.index: pl_module.get_submodule(b.ffn_in[0]).weight.shape[0] for b in self._blocks if b.ffn_out
            }
            self._head_counts = {b.index: b.num_heads for b in self._blocks if b.attention_out and b.head_dim}

    def _check_groups(self) -> None:
        for name, module in self._targets.items():
            fan_in = linear_in_out(module)[0]
            if fan_in % self.m:
                raise ValueError(
                    f"Pruning(pattern='{self.n}:{self.m}'): layer {name!r} has {fan_in} inputs, not a multiple of "
                    f"{self.m}. Exclude it (exclude=['{name}']) or choose a pattern whose M divides {fan_in}."
                )

    def _structured_blocks(self, pl_module: LightningModule) -> list[TransformerBlock]:
        selected = set(self._targets)
        blocks = [b for b in find_blocks(pl_module) if set(b.ffn_in + b.attention_in) & selected]
        if self.sparsity and not any(b.ffn_out for b in blocks):
            raise ValueError(
                f"Pruning(method='structured', sparsity={self.sparsity}) found no feed-forward layers of a known "
                "layout (BERT intermediate/output, Llama gate/up/down, fc1/fc2) among the targets. Use "
                "method='magnitude' for this model, or sparsity=0 with head_sparsity only."
            )
        if self.head_sparsity:
            usable = [b for b in blocks if b.attention_out and b.head_dim]
            if not usable:
                raise ValueError(
                    f"Pruning(head_sparsity={self.head_sparsity}) found no attention module with separate "
                    "query/key/value projections and a known head size (BERT-like or Llama-like). Set "
                    "head_sparsity=0."
                )
            for block in usable:
                if round(self.head_sparsity * block.num_heads) >= block.num_heads:
                    raise ValueError(
                        f"head_sparsity={self.head_sparsity} would remove all {block.num_heads} heads of block "
                        f"{block.index}; use a value below {(block.num_heads - 0.5) / block.num_heads:.3f}."
                    )
        return blocks

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.schedule.resolve(int(trainer.estimated_stepping_batches))
        if self._pending_state is not None:
            self._restore(self._pending_state, pl_module)
            self._pending_state = None
        if self.rewind and not self._rewound and not self._initial:
            if self._last_step >= 0:
                raise ValueError(
                    "Pruning(rewind=True) resumes a checkpoint written without rewind, so the fit-start weights to "
                    "rewind to are unknown. Resume with Pruning(rewind=False), or start a new run."
                )
            weights = self._weights(dict(pl_module.named_parameters()))
            self._initial = {name: weight.detach().cpu().clone() for name, weight in weights.items()}
        self._apply_masks(pl_module)

    # -- every step --------------------------------------------------------------------------------------------------
    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        parameters = dict(pl_module.named_parameters())
        if self.method == "structured" and self.importance == "first_order" and self._before_end(trainer):
            self._accumulate_first_order(parameters)
        for name, keep in self._keep.items():
            grad = parameters[name].grad
            if grad is not None:
                grad.masked_fill_(~keep.to(grad.device), 0.0)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        fraction = self.schedule.fraction(step)
        if self.schedule.is_update_step(step) and fraction > self._fraction_applied:
            self._update_masks(trainer, pl_module, fraction)
        if self.rewind and not self._rewound and self._fraction_applied >= 1.0:
            self._rewind_weights(trainer, pl_module)
        self._apply_masks(pl_module)
        self._log(pl_module)

    def _before_end(self, trainer: Trainer) -> bool:
        return self.schedule.end_step is not None and trainer.global_step < self.schedule.end_step

    # -- mask computation --------------------------------------------------------------------------------------------
    def _update_masks(self, trainer: Trainer, pl_module: LightningModule, fraction: float) -> None:
        parameters = dict(pl_module.named_parameters())
        with torch.no_grad():
            if self.method == "magnitude":
                keep = self._magnitude_masks(parameters, fraction * self.sparsity)
            elif self.method == "n:m":
                keep = self._n_m_masks(parameters, fraction)
            else:
                keep = self._structured_masks(parameters, fraction)
        # Every rank uses rank zero's masks (DDP keeps weights equal, but ties could break differently).
        keep, self._kept_neurons, self._kept_heads = trainer.strategy.broadcast(
            ({k: v.cpu() for k, v in keep.items()}, self._kept_neurons, self._kept_heads), src=0
        )
        self._keep = {name: mask.to(parameters[name].device) for name, mask in keep.items()}
        self._fraction_applied = fraction
        self._zero_optimizer_moments(trainer, parameters)
        zeros = sum(int((~m).sum()) for m in self._keep.values())
        rank_zero_info(
            f"[Pruning] step {trainer.global_step}: {self.method} target {fraction * self.sparsity:.4f} "
            f"({zeros:,} weights masked)"
        )

    def _rewind_weights(self, trainer: Trainer, pl_module: LightningModule) -> None:
        parameters = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name, value in self._initial.items():
                parameters[name].copy_(value.to(parameters[name].device))
        self._initial, self._rewound = {}, True
        rank_zero_info(f"[Pruning] step {trainer.global_step}: surviving weights rewound to their fit-start values")

    def _weights(self, parameters: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"{name}.weight": parameters[f"{name}.weight"] for name in self._targets}

    def _scores_with_history(self, name: str, weight: Tensor) -> Tensor:
        score = weight.detach().abs().float()
        previous = self._keep.get(name)
        if previous is not None:  # once pruned, always pruned: masks only grow
            score = score.masked_fill(~previous, -1.0)
        return score

    def _magnitude_masks(self, parameters: dict[str, Tensor], target: float) -> dict[str, Tensor]:
        weights = self._weights(parameters)
        scores = {name: self._scores_with_history(name, w) for name, w in weights.items()}
        if self.scope == "layer":
            return {name: _keep_largest(score, round(target * score.numel())) for name, score in scores.items()}
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        keep_flat = _keep_largest(flat, round(target * flat.numel()))
        masks, offset = {}, 0
        for name, score in scores.items():
            masks[name] = keep_flat[offset : offset + score.numel()].view_as(score)
            offset += score.numel()
        return masks

    def _n_m_masks(self, parameters: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
        zeros_per_group = min(self.m - self.n, round(fraction * (self.m - self.n)))
        masks = {}
        for name, weight in self._weights(parameters).items():
            score = self._scores_with_history(name, weight)
            transposed = not isinstance(self._targets[name[: -len(".weight")]], nn.Linear)  # Conv1D: (in, out)
            rows = score.t() if transposed else score
            groups = rows.reshape(rows.shape[0], -1, self.m)
            keep = torch.ones_like(groups, dtype=torch.bool)
            if zeros_per_group:
                lowest = groups.topk(zeros_per_group, dim=-1, largest=False).indices
                keep.scatter_(-1, lowest, False)
            keep = keep.reshape(rows.shape)
            masks[name] = keep.t().contiguous() if transposed else keep
        return masks

    def _structured_masks(self, parameters: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
        masks: dict[str, Tensor] = {}
        for block in self._blocks:
            if self.sparsity and block.ffn_out:
                score = self._neuron_scores(block, parameters)
                keep = self._keep_units(score, self._kept_neurons.get(block.index), fraction * self.sparsity)
                self._kept_neurons[block.index] = keep.nonzero().flatten().cpu()
                self._expand(masks, parameters, block.ffn_in, block.ffn_out, keep, 1)
            if self.head_sparsity and block.attention_out and block.head_dim:
                score = self._head_scores(block, parameters)
                keep = self._keep_units(score, self._kept_heads.get(block.index), fraction * self.head_sparsity)
                self._kept_heads[block.index] = keep.nonzero().flatten().cpu()
                self._expand(masks, parameters, block.attention_in, block.attention_out, keep, block.head_dim)
        return masks

    @staticmethod
    def _keep_units(score: Tensor, kept_before: Tensor | None, target: float) -> Tensor:
        score = score.clone()
        if kept_before is not None:
            pruned = torch.ones_like(score, dtype=torch.bool)
            pruned[kept_before.to(score.device)] = False
            score[pruned] = -1.0
        return _keep_largest(score, round(target * score.numel()))

    def _neuron_scores(self, block: TransformerBlock, parameters: dict[str, Tensor]) -> Tensor:
        if self.importance == "first_order":
            return self._scores.get(f"ffn.{block.index}", torch.zeros(1)).clone()
        rows = sum(parameters[f"{n}.weight"].detach().float().pow(2).sum(1) for n in block.ffn_in)
        columns = parameters[f"{block.ffn_out}.weight"].detach().float().pow(2).sum(0)
        return (rows + columns).sqrt()

    def _head_scores(self, block: TransformerBlock, parameters: dict[str, Tensor]) -> Tensor:
        if self.importance == "first_order":
            return self._scores.get(f"heads.{block.index}", torch.zeros(1)).clone()
        rows = sum(parameters[f"{n}.weight"].detach().float().pow(2).sum(1) for n in block.attention_in)
        columns = parameters[f"{block.attention_out}.weight"].detach().float().pow(2).sum(0)
        return (rows + columns).view(block.num_heads, block.head_dim).sum(1).sqrt()

    def _accumulate_first_order(self, parameters: dict[str, Tensor]) -> None:
        def saliency(name: str, dim: int) -> Tensor:
            weight = parameters[f"{name}.weight"]
            if weight.grad is None:
                return torch.zeros(weight.shape[1 - dim], device=weight.device)
            return (weight.detach() * weight.grad).abs().float().sum(dim)

        for block in self._blocks:
            if self.sparsity and block.ffn_out:
                value = sum(saliency(n, 1) for n in block.ffn_in) + saliency(block.ffn_out, 0)
                key = f"ffn.{block.index}"
                self._scores[key] = self._scores.get(key, 0) + value
            if self.head_sparsity and block.attention_out and block.head_dim:
                value = sum(saliency(n, 1) for n in block.attention_in) + saliency(block.attention_out, 0)
                key = f"heads.{block.index}"
                self._scores[key] = self._scores.get(key, 0) + value.view(block.num_heads, -1).sum(1)

    @staticmethod
    def _expand(masks, parameters, producers: list[str], consumer: str, keep_units: Tensor, width: int) -> None:
        rows = keep_units.repeat_interleave(width)
        for name in producers:
            weight = parameters[f"{name}.weight"]
            masks[f"{name}.weight"] = rows[:, None].expand_as(weight).to(weight.device).clone()
            if f"{name}.bias" in parameters:
                masks[f"{name}.bias"] = rows.to(weight.device).clone()
        weight = parameters[f"{consumer}.weight"]
        masks[f"{consumer}.weight"] = rows[None, :].expand_as(weight).to(weight.device).clone()

    # -- enforcing ---------------------------------------------------------------------------------------------------
    def _apply_masks(self, pl_module: LightningModule) -> None:
        if not self._keep:
            return
        parameters = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name, keep in self._keep.items():
                parameters[name].masked_fill_(~keep, 0.0)

    def _zero_optimizer_moments(self, trainer: Trainer, parameters: dict[str, Tensor]) -> None:
        for optimizer in trainer.optimizers:
            for name, keep in self._keep.items():
                state = optimizer.state.get(parameters[name], {})
                for value in state.values():
                    if isinstance(value, Tensor) and value.shape == keep.shape:
                        value.masked_fill_(~keep, 0.0)

    # -- measuring and logging ---------------------------------------------------------------------------------------
    def layer_sparsity(self, pl_module: nn.Module) -> dict[str, float]:
        """Fraction of exact zeros in each targeted layer's weight, now."""
        return {name: float((m.weight == 0).float().mean()) for name, m in self._targets.items()}

    def sparsity_now(self, pl_module: nn.Module) -> tuple[float, int]:
        """Fraction of exact zeros over all targeted weights, and the number of nonzero targeted weights."""
        zeros = sum(int((m.weight == 0).sum()) for m in self._targets.values())
        total = sum(m.weight.numel() for m in self._targets.values())
        return zeros / total, total - zeros

    def _log(self, pl_module: LightningModule) -> None:
        trainer = pl_module.trainer
        # Lightning writes step metrics every log_every_n_steps; measuring in between would be wasted work.
        if not trainer.loggers or trainer.global_step % trainer.log_every_n_steps:
            return
        actual, nonzero = self.sparsity_now(pl_module)
        metrics = {
            "pruning/sparsity": actual,
            "pruning/target": self._fraction_applied * self.sparsity,
            "pruning/nonzero_params": float(nonzero),
        }
        if self.method == "structured":
            metrics["pruning/neuron_sparsity"] = _unit_sparsity(self._kept_neurons, self._ffn_widths)
            metrics["pruning/head_sparsity"] = _unit_sparsity(self._kept_heads, self._head_counts)
        if self.log_per_layer:
            for name, value in self.layer_sparsity(pl_module).items():
                metrics[f"pruning/layer/{short_name(name)}"] = value
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    # -- end of training ---------------------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # ``on_train_end`` runs before every callback's ``on_fit_end``: masks are final before QAT converts.
        self._apply_masks(pl_module)
        actual, nonzero = self.sparsity_now(pl_module)
        if self.method == "structured" and self.physically_remove and (self._kept_neurons or self._kept_heads):
            before = sum(p.numel() for p in pl_module.parameters())
            remove_structure(pl_module, self._kept_neurons, self._kept_heads)
            after = sum(p.numel() for p in pl_module.parameters())
            self._targets = select_modules(pl_module, self.include, self.exclude, argument="Pruning(include=...)")
            self._keep = {}
            rank_zero_info(f"[Pruning] removed heads/neurons physically: {before:,} -> {after:,} parameters")
        else:
            rank_zero_info(f"[Pruning] final sparsity {actual:.4f} ({nonzero:,} nonzero targeted weights)")

    # -- checkpointing -----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "keep": {name: mask.cpu() for name, mask in self._keep.items()},
            "kept_neurons": dict(self._kept_neurons),
            "kept_heads": dict(self._kept_heads),
            "scores": {k: v.cpu() for k, v in self._scores.items()},
            "fraction_applied": self._fraction_applied,
            "last_step": self._last_step,
            "initial": dict(self._initial),
            "rewound": self._rewound,
            "schedule": self.schedule.state_dict(),
            "config": {"method": self.method, "sparsity": self.sparsity, "head_sparsity": self.head_sparsity},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict

    def _restore(self, state: dict[str, Any], pl_module: LightningModule) -> None:
        parameters = dict(pl_module.named_parameters())
        missing = [name for name in state["keep"] if name not in parameters]
        if missing:
            raise ValueError(
                f"The checkpoint's pruning masks name parameters this model does not have ({missing[:3]}...). "
                "Resume with the same model as the one that was pruned."
            )
        self._keep = {name: mask.to(parameters[name].device) for name, mask in state["keep"].items()}
        self._kept_neurons = dict(state["kept_neurons"])
        self._kept_heads = dict(state["kept_heads"])
        self._scores = {k: v.to(pl_module.device) for k, v in state["scores"].items()}
        self._fraction_applied = state["fraction_applied"]
        self._last_step = state["last_step"]
        self._initial = dict(state.get("initial", {}))
        self._rewound = bool(state.get("rewound", False))
        self.schedule.check_matches(state["schedule"])


def _keep_largest(score: Tensor, prune: int) -> Tensor:
    """Boolean mask keeping all but the ``prune`` lowest scores (exactly ``prune`` zeros)."""
    keep = torch.ones_like(score, dtype=torch.bool)
    if prune > 0:
        flat = keep.view(-1)
        flat[score.reshape(-1).topk(prune, largest=False).indices] = False
    return keep


def _unit_sparsity(kept: dict[int, Tensor], totals: dict[int, int]) -> float:
    """Fraction of units (neurons or heads) removed over the blocks that have them."""
    total = sum(totals.values())
    removed = sum(totals[i] - len(kept[i]) for i in totals if i in kept)
    return removed / total if total else 0.0


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not a choice; use one of {list(choices)}.")


def _fraction(name: str, value: Any, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a number in [0, 1).")
    if not (0.0 <= value < 1.0) or (value == 0 and not allow_zero):
        low = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name}={value!r} is out of range: it must be in {low}, e.g. {name}=0.5.")


def _parse_pattern(pattern: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise ValueError(f"pattern={pattern!r} must look like 'N:M', e.g. '2:4' (keep 2 of every 4 weights).")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"pattern={pattern!r}: N must be in [1, M) (N >= M prunes nothing). Use e.g. '2:4'.")
    return n, m
