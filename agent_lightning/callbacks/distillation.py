"""Knowledge distillation as a callback: any LightningModule, its own ``training_step``, a frozen teacher."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from agent_lightning.callbacks.base import CompressionCallback
from agent_lightning.callbacks.strategy_support import refuse_sharded_strategies
from agent_lightning.distillation.augmentation import replace_tokens
from agent_lightning.distillation.cache import TeacherLogitCache
from agent_lightning.distillation.layers import default_map, hidden_width, keep_output
from agent_lightning.distillation.losses import (
    DIVERGENCES,
    AttentionDistillationLoss,
    Divergence,
    HiddenStateLoss,
    LogitDistillationLoss,
)
from agent_lightning.distillation.prompts import causal_lm_parts, keep_first_hidden, prompt_positions
from agent_lightning.distillation.teachers import check_compatible, fingerprint, freeze, load_teacher
from agent_lightning.evaluation import (
    UNLABELED,
    is_causal_lm,
    labelled_rows,
    logits_of,
    next_token_labels,
    split_batch,
)
from agent_lightning.targets import block_list, find_blocks
from agent_lightning.tensorboard import plain_settings
from agent_lightning.validation import check_bool, check_choice, check_int, check_number

__all__ = ["Distillation"]


class Distillation(CompressionCallback):
    """Distil a frozen teacher into the module being fitted, without changing the module's code.

    The callback wraps the module's own ``training_step`` for the duration of ``fit``: it records the inputs and
    output of the module's ``forward`` call in that step (a forward hook), runs the teacher on the same inputs, and
    returns ``alpha * task + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` (+ ``hidden_weight`` times a
    hidden-state MSE, + ``attention_weight`` times an attention KL) instead of the step's own loss. The teacher is in
    eval mode, has no gradients, lives on the student's device and dtype, is never in the student's optimizer and
    never in its checkpoint: the checkpoint stores the teacher's source and a fingerprint, and resuming reloads the
    teacher and refuses a different one.

    What a module needs (:mod:`agent_lightning.evaluation`): ``training_step`` calls ``self(...)`` (its
    ``forward``) on the batch (the first call in the step is the one distilled) and returns the loss (a tensor, or a
    dict with ``"loss"``); ``forward`` returns logits (a tensor, an HF output with ``logits``, or a dict with
    ``"logits"``); the teacher accepts the same ``forward`` inputs (``labels`` are not passed to it).

    Unlabelled rows: a training row whose label is :data:`~agent_lightning.evaluation.UNLABELED` (-100, PyTorch's
    cross-entropy ``ignore_index``; ``TextClassificationDataModule(unlabeled_file=...)`` marks them so) gets the KD
    terms only: the module's task loss must skip it (``nn.CrossEntropyLoss`` and Hugging Face heads do), the KD term
    covers every row, and a batch of only unlabelled rows trains on ``(1 - alpha)`` times KD alone.
    ``distill/kd_loss_unlabeled`` is KD on those rows. Labels are read from the ``labels`` the forward was called
    with, else from the batch (a dict's ``labels``, or the second item of an ``(inputs, labels)`` pair).

    Decoders (a module wrapping a Hugging Face causal LM, e.g. ``Agent(task="generation")``): KD is token-level, on
    the positions that predict a labelled token only (the response of a chat example; the Hugging Face labels
    ``(B, L)``, shifted by one, also when the forward kept only the last logits with ``logits_to_keep``), with the
    ``divergence`` of choice: forward KL, reverse KL (MiniLLM) or DistiLLM's skewed KLs. The teacher is usually the
    fine-tuned full model and the student a pruned copy (``Agent(student_layers="auto:N")``). With
    ``prompt_weight`` > 0, KD also covers the positions that read the request (those predicting the prompt's own
    tokens, :func:`~agent_lightning.distillation.prompts.prompt_positions`), as Minitron distils every token: far
    more teacher signal per example than the answer's few tokens, which is what a student trained on a few thousand
    short answers lacks. Their logits come from each model's final hidden states through its own LM head (hooks on
    the decoder stack), so a forward that kept only the answer's logits (``logits_to_keep``) still serves.

    Teacher-output cache: with logit-only KD, the teacher's logits for each example are computed once and reused in
    later epochs (keyed by the example's content, so reshuffling and re-padding still hit; changed inputs miss). In
    memory (``cache="memory"``) or also on disk (``cache="disk"``, under ``cache_dir``, reused by later runs with the
    same teacher). A decoder's logits are cached at the KD positions only, as their ``cache_top_k`` largest logits
    and the tail's total (:class:`~agent_lightning.distillation.TeacherLogitCache`; the prompt positions in a second
    one, ``prompt_cache``, in a ``-prompt`` file beside the first). Hidden-state and attention KD
    need the teacher's forward every step and do not use the cache.

    Args:
        teacher: a Lightning checkpoint of the same module class (an agent ``.ckpt``), a Hugging Face model folder or
            hub name, or (Python API) a module instance.
        temperature: softmax temperature ``T`` (> 0); with ``temperature_end`` the value at the first step.
        alpha: weight of the module's own (task) loss, in [0, 1]; ``1 - alpha`` weighs the KD term.
        temperature_end: if set, ``T`` moves linearly to this value over training.
        alpha_end: if set, ``alpha`` moves linearly to this value over training.
        hidden_weight: weight of the hidden-state MSE (0 turns it off).
        hidden_standardize: divide each hidden dimension's error by the teacher's standard deviation of it over the
            batch's tokens (:class:`~agent_lightning.distillation.losses.HiddenStateLoss`), so that a decoder's few
            massive activations do not weigh alone.
        attention_weight: weight of the MiniLM-style self-attention KL between mapped blocks (0 turns it off);
            rebuilt from the query/key projections, exact for BERT-like models.
        layer_map: for hidden-state and attention KD, the teacher block each student block is compared with, one
            entry per student block (``[1, 3, 5]``: student block 0 with teacher block 1, ...); default: for a
            student made of teacher blocks (``hparams.student_layers`` lists them, as an ``Agent``'s does), the
            teacher block whose output each student block's stands in for
            (:func:`~agent_lightning.distillation.layers.kept_blocks_map`), else evenly spaced, ending with the
            teacher's last block. A learned projection is added when the widths differ.
        cache: ``"memory"``, ``"disk"`` or ``"none"``.
        cache_dir: folder for ``cache="disk"`` (one file per teacher fingerprint and rank).
        cache_top_k: sequence logits (decoders) are cached as this many largest logits per position plus the
            tail's total; ``None`` caches every logit.
        divergence: ``"forward"`` (``KL(teacher || student)``), ``"reverse"`` (``KL(student || teacher)``),
            ``"skew"`` or ``"skew_reverse"`` (:class:`~agent_lightning.distillation.LogitDistillationLoss`).
        skew: the mixing weight of the skewed divergences, in ``(0, 1)``.
        projection_lr: learning rate (AdamW) of the width projections, trained alongside the student.
        augment: with a value ``p`` > 0, each step also builds a copy of the batch in which about ``p`` of the inner
            tokens are replaced by other tokens of the batch (:func:`~agent_lightning.distillation.augmentation.
            replace_tokens`), runs teacher and student on it, and adds ``(1 - alpha) * T^2 * KL`` on that copy
            (logged as ``distill/augmented_kd_loss``): the student learns the teacher's outputs on text the teacher
            never fitted, TinyBERT-style. Costs one more student and teacher forward per step; needs ``input_ids``
            in the batch. 0 turns it off.
        prompt_weight: decoders: weight of a token-level KD term (same divergence and temperature) on the
            positions that read the request, added to the loss as ``prompt_weight * T^2 * D`` and logged as
            ``distill/prompt_kd_loss``; costs the LM head on every prompt position of student and teacher. 0 turns
            it off.

    The losses, teacher loading, cache and augmentation are :mod:`agent_lightning.distillation`; this callback
    wraps the step, runs the teacher, logs and checkpoints.

    Raises:
        TypeError: an argument of the wrong type (at construction).
        FileNotFoundError: ``teacher`` names a ``.ckpt`` file that does not exist (at construction).
        ValueError: a bad value (at construction); an unreadable teacher, a teacher whose labels or vocabulary
            differ from the student's, or a layer map naming blocks that do not exist (at ``setup``).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from torch import nn
        >>> teacher = nn.Linear(4, 3)  # any module taking the student's inputs; usually a checkpoint path
        >>> callbacks = [Distillation(teacher, temperature=2.0)]
        >>> trainer = Trainer(callbacks=callbacks, logger=False, enable_progress_bar=False)
        >>> Distillation(teacher, hidden_weight=1.0, layer_map=[1, 3, 5]).layer_map
        [1, 3, 5]
    """

    def __init__(
        self,
        teacher: str | nn.Module,
        temperature: float = 2.0,
        alpha: float = 0.5,
        temperature_end: float | None = None,
        alpha_end: float | None = None,
        hidden_weight: float = 0.0,
        hidden_standardize: bool = False,
        attention_weight: float = 0.0,
        layer_map: list[int] | None = None,
        cache: Literal["memory", "disk", "none"] = "memory",
        cache_dir: str | None = None,
        cache_top_k: int | None = 64,
        divergence: Divergence = "forward",
        skew: float = 0.1,
        projection_lr: float = 1e-3,
        augment: float = 0.0,
        prompt_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.settings = plain_settings(locals())  # the constructor arguments, for the HParams tab
        if not isinstance(teacher, (str, nn.Module)) or (isinstance(teacher, str) and not teacher.strip()):
            raise TypeError(
                f"Distillation(teacher={teacher!r}) must be a checkpoint path, a model folder, a hub name or a module."
            )
        if isinstance(teacher, str) and Path(teacher).suffix == ".ckpt" and not Path(teacher).expanduser().is_file():
            raise FileNotFoundError(
                f"Distillation(teacher={teacher!r}): no such checkpoint file. Give the .ckpt of a trained run (e.g. "
                "runs/teacher/version_0/checkpoints/last.ckpt), an HF model folder or a hub name."
            )
        owner = "Distillation"
        for name, value in (("temperature", temperature), ("temperature_end", temperature_end)):
            tail = f", e.g. {name}=2.0"
            check_number(name, value, owner, minimum=0, strict_minimum=True, optional=name.endswith("_end"), tail=tail)
        for name, value in (("alpha", alpha), ("alpha_end", alpha_end)):
            tail = f": the weight of the task loss (1 - {name} weighs the KD term), e.g. {name}=0.5"
            check_number(name, value, owner, minimum=0, maximum=1, optional=name.endswith("_end"), tail=tail)
        for name, value in (
            ("hidden_weight", hidden_weight),
            ("attention_weight", attention_weight),
            ("prompt_weight", prompt_weight),
        ):
            check_number(name, value, owner, minimum=0, tail=" (0 turns it off)")
        check_bool("hidden_standardize", hidden_standardize, owner)
        if layer_map is not None and (
            isinstance(layer_map, str) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layer_map)
        ):
            raise TypeError(f"Distillation(layer_map={layer_map!r}) must be a list of teacher block indices.")
        check_choice("cache", cache, ("memory", "disk", "none"), owner)
        if cache == "disk" and not cache_dir:
            raise ValueError(
                f"Distillation(cache='disk', cache_dir={cache_dir!r}): the disk cache needs a folder: pass one, e.g. "
                "cache_dir='runs/teacher_cache'."
            )
        check_int("cache_top_k", cache_top_k, 1, owner, optional=True)
        check_choice("divergence", divergence, DIVERGENCES, owner)
        tail = ": the mixture weight of the skewed divergences, e.g. skew=0.1"
        check_number("skew", skew, owner, minimum=0, maximum=1, strict_minimum=True, strict_maximum=True, tail=tail)
        check_number("projection_lr", projection_lr, owner, minimum=0, strict_minimum=True, tail=", e.g. 1e-3")
        tail = (
            ": the fraction of tokens replaced in the augmented copy of each batch (0 turns it off), e.g. augment=0.2"
        )
        check_number("augment", augment, owner, minimum=0, maximum=1, strict_maximum=True, tail=tail)
        self.teacher_source = teacher
        self.temperature, self.temperature_end = float(temperature), temperature_end
        self.alpha, self.alpha_end = float(alpha), alpha_end
        self.hidden_weight = float(hidden_weight)
        self.hidden_standardize = hidden_standardize
        self.attention_weight = float(attention_weight)
        self.attention_loss = AttentionDistillationLoss()
        self.layer_map = list(layer_map) if layer_map is not None else None
        self.cache_kind, self.cache_dir, self.cache_top_k = cache, cache_dir, cache_top_k
        self.divergence, self.skew = divergence, float(skew)
        self.projection_lr = float(projection_lr)
        self.augment = float(augment)
        self.prompt_weight = float(prompt_weight)
        self.kd_loss = LogitDistillationLoss(divergence, float(skew))
        self._causal = False
        self.hidden_loss: HiddenStateLoss | None = None
        self.teacher: nn.Module | None = None
        self.teacher_fingerprint: str | None = None
        self.cache: TeacherLogitCache | None = None
        self.prompt_cache: TeacherLogitCache | None = None
        self._final_hidden: dict[str, Tensor] = {}
        self._capturing = False
        self._projection_optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        self._projection_hooks: list[list[Any]] = []  # [root, name, hook, hooked module, handle]
        self._student_call: tuple[tuple, dict, Any] | None = None
        self._step_labels: Tensor | None = None
        self._student_hidden: dict[Any, Tensor] = {}
        self._teacher_hidden: dict[Any, Tensor] = {}
        self._layer_pairs: list[tuple[int, int]] = []
        self._heads: tuple[int, int] = (0, 0)
        self._total_steps = 1
        self._agree = self._seen = self._teacher_correct = self._labelled = 0
        self._teacher_acc_logged = False

    @property
    def state_key(self) -> str:
        # Not keyed by the teacher: resuming with another teacher must find this state and refuse.
        return self._generate_state_key()

    def _source_name(self) -> str:
        source = self.teacher_source
        return source if isinstance(source, str) else f"<{type(source).__name__} instance>"

    # -- setup and teardown ------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategies(trainer, "Distillation", "it runs a whole teacher beside the student")
        self._causal = is_causal_lm(pl_module)
        if self.teacher is None:
            teacher = load_teacher(self.teacher_source, pl_module)
            check_compatible(teacher, pl_module, self._source_name())
            self.teacher = freeze(teacher, pl_module)
            self.teacher_fingerprint = fingerprint(self.teacher)
        if self.hidden_weight or self.attention_weight:
            self._setup_layers(pl_module)
        if self.prompt_weight:
            self._hook_final_hidden_states(pl_module)
        if self.cache_kind != "none" and self.cache is None:
            path = None
            if self.cache_kind == "disk":
                path = Path(self.cache_dir) / f"teacher-{self.teacher_fingerprint[:16]}-rank{trainer.global_rank}.pt"
            self.cache = TeacherLogitCache(path, top_k=self.cache_top_k)
            if self.prompt_weight:
                prompt_path = None if path is None else path.with_name(f"{path.stem}-prompt.pt")
                self.prompt_cache = TeacherLogitCache(prompt_path, top_k=self.cache_top_k)
        self._install(pl_module)

    def _hook_final_hidden_states(self, pl_module: LightningModule) -> None:
        for role, root in (("student", pl_module), ("teacher", self.teacher)):
            decoder, _ = causal_lm_parts(root)
            hook = keep_first_hidden(self._final_hidden, role, lambda: self._capturing)
            self._handles.append(decoder.register_forward_hook(hook))

    def _setup_layers(self, pl_module: LightningModule) -> None:
        _, student_blocks = block_list(pl_module)
        _, teacher_blocks = block_list(self.teacher)
        kept = getattr(pl_module, "hparams", {}).get("student_layers")  # an Agent made of some teacher blocks
        default = default_map(kept, len(student_blocks), len(teacher_blocks))
        mapping = self.layer_map or default
        if len(mapping) != len(student_blocks) or not all(0 <= j < len(teacher_blocks) for j in mapping):
            raise ValueError(
                f"Distillation(layer_map={self.layer_map!r}): give one teacher block per student block "
                f"({len(student_blocks)} entries), each in [0, {len(teacher_blocks) - 1}] (the teacher has "
                f"{len(teacher_blocks)} blocks), e.g. layer_map={default}."
            )
        self._layer_pairs = list(enumerate(mapping))
        if self.hidden_weight:
            self._hook_hidden_states(pl_module, student_blocks, teacher_blocks)
        if self.attention_weight:
            self._hook_attention(pl_module)

    def _hook_hidden_states(self, pl_module: LightningModule, student_blocks, teacher_blocks) -> None:
        if self.hidden_loss is None:
            widths = [hidden_width(m) for m in (pl_module, self.teacher)]
            if None in widths:
                raise ValueError(
                    "Distillation(hidden_weight>0) needs the hidden size of both models (an HF config with "
                    "hidden_size); set hidden_weight=0 for this model."
                )
            self.hidden_loss = HiddenStateLoss(widths[0], widths[1], len(self._layer_pairs), self.hidden_standardize)
        for i, j in self._layer_pairs:
            self._handles.append(student_blocks[i].register_forward_hook(keep_output(self._student_hidden, i)))
            self._handles.append(teacher_blocks[j].register_forward_hook(keep_output(self._teacher_hidden, i)))

    def _hook_attention(self, pl_module: LightningModule) -> None:
        student_blocks = {b.index: b for b in find_blocks(pl_module) if b.attention_in and b.num_heads}
        teacher_blocks = {b.index: b for b in find_blocks(self.teacher) if b.attention_in and b.num_heads}
        if not student_blocks or not teacher_blocks:
            raise ValueError(
                "Distillation(attention_weight>0) needs BERT-like or Llama-like attention (separate query/key "
                "projections and a known head size) in both models; set attention_weight=0 for this model."
            )
        grouped = [b.index for b in [*student_blocks.values(), *teacher_blocks.values()] if b.group_size > 1]
        if grouped:
            raise ValueError(
                "Distillation(attention_weight>0) rebuilds attention from query and key projections of one head each, "
                "but these models use grouped-query attention (several query heads per key/value head, e.g. "
                "Llama, SmolLM2). Set attention_weight=0 and distil logits (divergence=...) or hidden states."
            )
        for i, j in self._layer_pairs:
            student, teacher = student_blocks[i], teacher_blocks[j]
            self._heads = (student.num_heads, teacher.num_heads)
            pairs = ((self._student_hidden, pl_module, student), (self._teacher_hidden, self.teacher, teacher))
            for store, root, block in pairs:
                for role, name in zip(("q", "k"), block.attention_in[:2]):
                    self._projection_hooks.append([root, name, keep_output(store, (i, role)), None, None])
        self._refresh_projection_hooks()

    def _refresh_projection_hooks(self) -> None:
        # Query/key projections can be swapped for other modules mid-fit (QAT's fake-quantized linears): follow them.
        for entry in self._projection_hooks:
            root, name, hook, hooked, handle = entry
            module = root.get_submodule(name)
            if module is not hooked:
                if handle is not None:
                    handle.remove()
                entry[3], entry[4] = module, module.register_forward_hook(hook)

    def _install(self, pl_module: LightningModule) -> None:
        def capture(module, args, kwargs, output):
            # The first call of the step is the model's own forward; under DDP, Lightning also routes the step
            # itself through ``module.__call__`` (its forward redirection), which finishes last and is ignored.
            if self._student_call is None:
                self._student_call = (args, kwargs, output)

        self._handles.append(pl_module.register_forward_hook(capture, with_kwargs=True))
        original = pl_module.training_step

        def training_step(*args: Any, **kwargs: Any):
            self._step_labels = _labels_of(args[0] if args else kwargs.get("batch"))
            self._student_call = None
            self._student_hidden.clear()
            self._teacher_hidden.clear()
            self._final_hidden.clear()
            self._refresh_projection_hooks()
            self._capturing = True
            try:
                output = original(*args, **kwargs)
                return self._distil(pl_module, output)
            finally:
                self._capturing = False
                self._final_hidden.clear()

        pl_module.training_step = training_step  # instance attribute; removed at teardown

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for handle in self._handles + [entry[4] for entry in self._projection_hooks if entry[4] is not None]:
            handle.remove()
        self._handles.clear()
        self._projection_hooks.clear()
        pl_module.__dict__.pop("training_step", None)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for cache in (self.cache, self.prompt_cache):
            if cache is not None:
                cache.save()  # disk cache only; atomic, so a killed run keeps the previous epoch's file

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        freeze(self.teacher, pl_module)  # the strategy has moved the student to its device by now
        self._total_steps = max(1, int(trainer.estimated_stepping_batches))
        if self.hidden_loss is not None:
            self.hidden_loss.to(pl_module.device)
            if any(p.requires_grad for p in self.hidden_loss.parameters()) and self._projection_optimizer is None:
                self._projection_optimizer = torch.optim.AdamW(self.hidden_loss.parameters(), lr=self.projection_lr)
        self.restore_pending(pl_module)
        rank_zero_info(
            f"[Distillation] teacher {self._source_name()} (fingerprint {self.teacher_fingerprint[:12]}), "
            f"T={self.temperature}, alpha={self.alpha}, hidden_weight={self.hidden_weight}, "
            f"attention_weight={self.attention_weight}, cache={self.cache_kind}, augment={self.augment}, "
            f"divergence={self.divergence}, prompt_weight={self.prompt_weight}"
            + (" (token-level, response positions)" if self._causal and not self.prompt_weight else "")
            + (" (token-level, response and prompt positions)" if self.prompt_weight else "")
        )

    # -- the loss ----------------------------------------------------------------------------------------------------
    def _distil(self, pl_module: LightningModule, output: Any) -> Any:
        if self._student_call is None:
            raise TypeError(
                f"Distillation: {type(pl_module).__name__}.training_step did not call the module's forward "
                "(self(...)), so the callback cannot see the student's logits. Call self(...) on the batch in "
                "training_step."
            )
        if isinstance(output, Tensor):
            task = output
        elif isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
            task = output["loss"]
        else:
            raise TypeError(
                f"Distillation: training_step returned {type(output).__name__}; it must return the loss tensor or a "
                "dict with a 'loss' tensor."
            )
        args, kwargs, student_output = self._student_call
        student_logits = logits_of(student_output)
        mask = self._positions(kwargs.get("labels", self._step_labels), kwargs, student_logits)
        teacher_logits = self._teacher_logits(args, kwargs, student_logits.device, mask)
        temperature, alpha = self.current_temperature(pl_module), self.current_alpha(pl_module)
        teacher_logits = teacher_logits.to(student_logits.dtype)
        kd = self.kd_loss(student_logits, teacher_logits, temperature, mask)  # every row, labelled or not
        metrics = {"distill/kd_loss": kd, "distill/temperature": temperature}
        labelled = labelled_rows(kwargs.get("labels", self._step_labels), student_logits.shape[0])
        if labelled is not None and not bool(labelled.all()):  # rows marked UNLABELED (-100) learn from KD only
            unlabeled = ~labelled
            rows = None if mask is None else mask[unlabeled]
            kd_unlabeled = self.kd_loss(student_logits[unlabeled], teacher_logits[unlabeled], temperature, rows)
            metrics["distill/kd_loss_unlabeled"] = kd_unlabeled
        if labelled is not None and not bool(labelled.any()):
            loss = (1.0 - alpha) * kd  # no labelled row: the task loss is undefined (or NaN), KD alone trains
        else:
            loss = alpha * task + (1.0 - alpha) * kd
            metrics["distill/task_loss"] = task
        if self.hidden_loss is not None:
            hidden_mask = kwargs.get("attention_mask")
            hidden = self.hidden_loss(
                [self._student_hidden[i] for i, _ in self._layer_pairs],
                [self._teacher_hidden[i] for i, _ in self._layer_pairs],
                hidden_mask if isinstance(hidden_mask, Tensor) and hidden_mask.ndim == 2 else None,
            )
            loss = loss + self.hidden_weight * hidden
            metrics["distill/hidden_loss"] = hidden
        if self.attention_weight:
            token_mask = kwargs.get("attention_mask")
            token_mask = token_mask if isinstance(token_mask, Tensor) and token_mask.ndim == 2 else None
            attention = torch.stack(
                [
                    self.attention_loss(
                        self._student_hidden[(i, "q")],
                        self._student_hidden[(i, "k")],
                        self._teacher_hidden[(i, "q")],
                        self._teacher_hidden[(i, "k")],
                        *self._heads,
                        token_mask,
                    )
                    for i, _ in self._layer_pairs
                ]
            ).mean()
            loss = loss + self.attention_weight * attention
            metrics["distill/attention_loss"] = attention
        if self.prompt_weight:
            prompt = self._prompt_kd(pl_module, args, kwargs, temperature)
            loss = loss + self.prompt_weight * prompt
            metrics["distill/prompt_kd_loss"] = prompt
        if self.augment:
            augmented = self._augmented_kd(pl_module, args, kwargs, temperature, mask)
            loss = loss + (1.0 - alpha) * augmented
            metrics["distill/augmented_kd_loss"] = augmented
        metrics["distill/alpha"] = alpha
        metrics["distill/loss"] = loss
        batch_size = student_logits.shape[0]
        pl_module.log_dict(
            {k: v.detach() if isinstance(v, Tensor) else v for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            batch_size=batch_size,
        )
        if isinstance(output, Tensor):
            return loss
        return {**output, "loss": loss}

    def _augmented_kd(
        self, pl_module: LightningModule, args: tuple, kwargs: dict, temperature: float, positions: Tensor | None
    ) -> Tensor:
        """KD on a token-replaced copy of the step's inputs (runs after the hidden/attention terms read their hooks),
        over the step's KD ``positions``."""
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                "Distillation(augment=...) replaces tokens of the batch's 'input_ids', which this module's forward "
                "was not called with; use augment=0 for it."
            )
        generator = torch.Generator().manual_seed(pl_module.trainer.global_step)  # the same copy after a resume
        inputs = {k: v for k, v in kwargs.items() if k != "labels"}
        inputs["input_ids"] = replace_tokens(ids, mask if isinstance(mask, Tensor) else None, self.augment, generator)
        student_logits = logits_of(pl_module(*args, **inputs))
        with torch.no_grad():
            teacher_logits = logits_of(self.teacher(*args, **inputs))
        return self.kd_loss(student_logits, teacher_logits.to(student_logits.dtype), temperature, positions)

    def _prompt_kd(self, pl_module: LightningModule, args: tuple, kwargs: dict, temperature: float) -> Tensor:
        """KD at the positions that read the request: both models' final hidden states there through their own LM
        heads; the teacher's logits from ``prompt_cache`` when it holds the step's examples."""
        labels, mask = kwargs.get("labels", self._step_labels), kwargs.get("attention_mask")
        hidden = self._final_hidden.get("student")
        if not isinstance(labels, Tensor) or not isinstance(mask, Tensor) or hidden is None:
            raise TypeError(
                "Distillation(prompt_weight>0) needs the step's labels (B, L), the forward's attention_mask and the "
                "decoder's hidden states, which this module's training_step does not give. Set prompt_weight=0."
            )
        positions = prompt_positions(labels[:, -hidden.shape[1] :], mask).to(hidden.device)
        student = causal_lm_parts(pl_module)[1](hidden[positions])  # (N, V)
        inputs = {k: v for k, v in kwargs.items() if k != "labels"}
        keys = TeacherLogitCache.keys(args, inputs) if self._cached(self.prompt_cache) else None
        counts = positions.sum(-1).tolist()
        teacher = None if keys is None else self.prompt_cache.get_rows(keys, student.device, counts)
        if teacher is None:
            with torch.no_grad():
                if "teacher" not in self._final_hidden:  # the answers' logits came from the cache
                    self.teacher(*args, **inputs)
                teacher_hidden = self._final_hidden["teacher"]
                teacher = causal_lm_parts(self.teacher)[1](teacher_hidden[positions.to(teacher_hidden.device)])
            if keys is not None:
                self.prompt_cache.put_rows(keys, list(teacher.split(counts)))
        return self.kd_loss(student, teacher.to(student.device, student.dtype), temperature)

    def _positions(self, labels: Any, kwargs: dict, logits: Tensor) -> Tensor | None:
        """Which rows of ``logits`` KD covers: for a causal LM the positions that predict a labelled token (the
        response), else the real tokens of sequence logits (the attention mask), else every row (``None``)."""
        if (
            self._causal
            and logits.ndim == 3
            and isinstance(labels, Tensor)
            and labels.ndim == 2
            and labels.shape[0] == logits.shape[0]
            and labels.shape[1] >= logits.shape[1]
        ):
            positions = next_token_labels(labels, logits.shape[1]) != UNLABELED
            if bool(positions.any()):
                return positions
        return _token_mask(kwargs, logits)

    @torch.no_grad()
    def _teacher_logits(self, args: tuple, kwargs: dict, device: torch.device, mask: Tensor | None = None) -> Tensor:
        """The teacher's logits on the student's inputs; sequence logits are cached at the ``mask``-ed positions."""
        inputs = {k: v for k, v in kwargs.items() if k != "labels"}
        keys = TeacherLogitCache.keys(args, inputs) if self._cached(self.cache) else None
        sequence_mask = mask if mask is not None and mask.ndim == 2 else None
        if keys is not None:
            cached = self.cache.get(keys, device, sequence_mask)
            if cached is not None:
                return cached
        logits = logits_of(self.teacher(*args, **inputs))
        if keys is not None and (logits.ndim == 2 or (logits.ndim == 3 and sequence_mask is not None)):
            self.cache.put(keys, logits, sequence_mask if logits.ndim == 3 else None)
        return logits

    def _cached(self, cache: TeacherLogitCache | None) -> bool:
        """Whether the teacher's logits may come from ``cache``: not when hidden-state or attention KD read the
        teacher's internals, which needs its forward every step."""
        return cache is not None and not (self.hidden_weight or self.attention_weight)

    def current_temperature(self, pl_module: LightningModule) -> float:
        """The temperature at the module's current optimizer step."""
        return _ramp(self.temperature, self.temperature_end, pl_module.trainer.global_step / self._total_steps)

    def current_alpha(self, pl_module: LightningModule) -> float:
        """The task-loss weight at the module's current optimizer step."""
        return _ramp(self.alpha, self.alpha_end, pl_module.trainer.global_step / self._total_steps)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        optimizer = self._projection_optimizer
        if optimizer is None:
            return
        for parameter in self.hidden_loss.parameters():
            if parameter.grad is not None:  # keep the projections equal on every DDP rank
                parameter.grad = trainer.strategy.reduce(parameter.grad, reduce_op="mean")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- validation: agreement with the teacher, and the teacher's own accuracy once ---------------------------------
    @override
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._student_call = None

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._student_call is None or trainer.sanity_checking or self.teacher is None:
            return
        args, kwargs, output = self._student_call
        logits = logits_of(output)
        labels = kwargs.get("labels")
        if labels is None:
            labels = split_batch(batch)[2]
        mask = self._positions(labels, kwargs, logits)
        student = logits.argmax(-1)
        teacher = self._teacher_logits(args, kwargs, student.device, mask).argmax(-1)
        counted = torch.ones_like(student, dtype=torch.bool) if mask is None else mask.bool()
        self._agree += int(((student == teacher) & counted).sum())
        self._seen += int(counted.sum())
        if self._causal and isinstance(labels, Tensor) and labels.ndim == 2 and teacher.ndim == 2:
            labels = next_token_labels(labels, teacher.shape[1])
        if isinstance(labels, Tensor) and labels.shape == teacher.shape:
            valid = (labels != UNLABELED) & counted
            self._teacher_correct += int(((teacher == labels) & valid).sum())
            self._labelled += int(valid.sum())

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._seen:
            return
        counts = torch.tensor([self._agree, self._seen, self._teacher_correct, self._labelled], dtype=torch.float64)
        agree, seen, correct, labelled = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        pl_module.log("distill/agreement", agree / seen, on_epoch=True)
        if labelled and not self._teacher_acc_logged:
            pl_module.log("distill/teacher_acc", correct / labelled, on_epoch=True)
            self._teacher_acc_logged = True
        self._agree = self._seen = self._teacher_correct = self._labelled = 0

    # -- checkpointing -----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"teacher": self._source_name(), "fingerprint": self.teacher_fingerprint}
        if self.hidden_loss is not None:
            state["hidden_loss"] = {k: v.cpu() for k, v in self.hidden_loss.state_dict().items()}
        if self._projection_optimizer is not None:
            state["projection_optimizer"] = self._projection_optimizer.state_dict()
        return state

    @override
    def restore(self, state: dict[str, Any], pl_module: LightningModule) -> None:
        if state.get("fingerprint") != self.teacher_fingerprint:
            raise ValueError(
                f"Distillation: the checkpoint was distilled from teacher {state.get('teacher')!r} (fingerprint "
                f"{str(state.get('fingerprint'))[:12]}), but this run's teacher {self._source_name()!r} has "
                f"fingerprint {self.teacher_fingerprint[:12]}. Resume with teacher={state.get('teacher')!r}."
            )
        if self.hidden_loss is not None and "hidden_loss" in state:
            self.hidden_loss.load_state_dict(state["hidden_loss"])
        if self._projection_optimizer is not None and "projection_optimizer" in state:
            self._projection_optimizer.load_state_dict(state["projection_optimizer"])


def _ramp(start: float, end: float | None, progress: float) -> float:
    return start if end is None else start + (end - start) * min(1.0, max(0.0, progress))


def _labels_of(batch: Any) -> Tensor | None:
    """The labels of a training batch (``labels`` of a dict batch, the second item of a pair), else ``None``."""
    try:
        return split_batch(batch)[2]
    except TypeError:
        return None


def _token_mask(kwargs: dict, logits: Tensor) -> Tensor | None:
    mask = kwargs.get("attention_mask")
    if logits.ndim == 3 and isinstance(mask, Tensor) and mask.shape == logits.shape[:2]:
        return mask
    return None
