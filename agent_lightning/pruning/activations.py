"""Input-activation norms of linear layers, collected with forward hooks: what Wanda scores weights by.

Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models") scores weight ``W[i, j]``
by ``|W[i, j]| * ||X[:, j]||``: the weight times the L2 norm of the input feature it reads, over the tokens of some
calibration text. :class:`InputNorms` collects those norms while the model runs, on calibration batches
(:meth:`InputNorms.calibrate`) or during training steps (:meth:`InputNorms.start` / :meth:`InputNorms.stop`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from agent_lightning.evaluation import forward_batches

__all__ = ["InputNorms"]


class InputNorms:
    """The root-mean-square of each input feature of the named linear layers, over the tokens they read.

    A forward pre-hook on ``model`` records the keyword ``attention_mask`` of each call (a ``(B, L)`` tensor), so that
    padding positions of ``(B, L, in)`` layer inputs are left out; a forward pre-hook on each layer adds its squared
    inputs. A layer swapped for another module under the same name (QAT's fake-quantized linears) is followed: the
    hooks are re-attached at every call of ``model``. The root mean square ranks the weights of a row exactly as
    Wanda's L2 norm does (they differ by the same factor, the square root of the token count).

    Args:
        model: the module that is called with the batches.
        names: qualified names of its linear layers (``nn.Linear`` inputs ``(*, in)``; GPT-2 ``Conv1D`` alike).

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> norms = InputNorms(model, ["0"])
        >>> norms.calibrate([torch.tensor([[3.0, 0.0], [4.0, 0.0]])])
        1
        >>> norms.norms()["0"]  # sqrt((9 + 16) / 2) and 0
        tensor([3.5355, 0.0000])
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model = model
        self.names = list(names)
        self.squares: dict[str, Tensor] = {}
        self.tokens: dict[str, float] = {}
        self._mask: Tensor | None = None
        self._root: Any = None
        self._hooked: dict[str, tuple[nn.Module, Any]] = {}

    @property
    def observing(self) -> bool:
        """Whether the hooks are attached."""
        return self._root is not None

    def start(self) -> None:
        """Attach the hooks: from now on every call of the model adds to the norms."""
        if self._root is None:
            self._root = self.model.register_forward_pre_hook(self._root_hook, with_kwargs=True)
            self._attach()

    def stop(self) -> None:
        """Detach every hook (the norms collected so far stay)."""
        if self._root is not None:
            self._root.remove()
            self._root = None
        for _, handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()
        self._mask = None

    def reset(self) -> None:
        """Forget the norms collected so far."""
        self.squares.clear()
        self.tokens.clear()

    def norms(self) -> dict[str, Tensor]:
        """``{layer: (in,) root mean square of each input feature}`` of the layers that have read any token."""
        return {name: (self.squares[name] / self.tokens[name]).sqrt() for name in self.squares if self.tokens[name]}

    def calibrate(self, batches: Iterable[Any], max_batches: int | None = None) -> int:
        """Run ``model`` (eval mode, no gradients) over ``batches`` while observing; returns the number of batches
        read (:func:`~agent_lightning.evaluation.forward_batches`).

        Raises:
            ValueError: no batch was read.
        """
        was_observing = self.observing
        self.start()
        try:
            return forward_batches(self.model, batches, max_batches)
        finally:
            if not was_observing:
                self.stop()

    # -- hooks -------------------------------------------------------------------------------------------------------
    def _root_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
        self._attach()

    def _attach(self) -> None:
        for name in self.names:
            module = self.model.get_submodule(name)
            hooked = self._hooked.get(name)
            if hooked is not None and hooked[0] is module:
                continue
            if hooked is not None:
                hooked[1].remove()
            self._hooked[name] = (module, module.register_forward_pre_hook(self._layer_hook(name)))

    def _layer_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            inputs = args[0].detach().float()
            mask = self._mask
            if mask is not None and inputs.dim() == 3 and inputs.shape[:2] == mask.shape:
                weights = mask.to(device=inputs.device, dtype=inputs.dtype)[..., None]
                squares, tokens = (inputs * inputs * weights).sum((0, 1)), float(mask.sum())
            else:
                flat = inputs.reshape(-1, inputs.shape[-1])
                squares, tokens = (flat * flat).sum(0), float(flat.shape[0])
            previous = self.squares.get(name)
            self.squares[name] = squares if previous is None else previous.to(squares.device) + squares
            self.tokens[name] = self.tokens.get(name, 0.0) + tokens

        return hook

    # -- state -------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"squares": {k: v.cpu() for k, v in self.squares.items()}, "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.squares = {k: v.clone() for k, v in state.get("squares", {}).items()}
        self.tokens = dict(state.get("tokens", {}))
