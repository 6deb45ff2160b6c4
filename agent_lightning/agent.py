"""The Agent: a LightningModule that wraps a Hugging Face model and acts on a request.

Three tasks: ``"classification"`` (a sequence classifier picks an action for a request), ``"generation"`` (a
decoder LLM answers the request in its chat template with an action name, decoding constrained to the action set)
and ``"causal-lm"`` (a decoder-only language model, trained on next-token prediction, writes a continuation).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.text import Perplexity
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    get_linear_schedule_with_warmup,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from typing_extensions import override

from agent_lightning.backbone import PACKAGED_MODELS, load_tokenizer, resolve_backbone
from agent_lightning.distillation.students import keep_layers, narrow_ffn
from agent_lightning.evaluation import GENERATION, labelled_rows
from agent_lightning.generation import (
    IGNORE_INDEX,
    ActionTrie,
    ChatPrompt,
    constrained_greedy,
    continuation_prompt,
    decode_answers,
    left_padded,
    position_ids,
)
from agent_lightning.io import atomic_directory
from agent_lightning.pruning.depth import BlockChoice, auto_layers, choose_blocks
from agent_lightning.pruning.removal import STRUCTURE_KEY, build_from_config, load_pretrained_pruned
from agent_lightning.quiet import messages_dropped
from agent_lightning.targets import block_list
from agent_lightning.tensorboard import markdown_table, write_run_hparams, write_text
from agent_lightning.validation import (
    as_texts,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    check_optional_string,
    preview,
)

__all__ = ["Agent", "Task"]

Task = Literal["classification", "generation", "causal-lm"]
TASKS = ("classification", "generation", "causal-lm")

_CONFIG_KEY = "agent_lightning/hf_config"
#: requests of the first validation batch shown in TensorBoard's Text tab (``val/samples``) by a generative agent
SAMPLE_ROWS = 8


class Agent(LightningModule):
    """An agent that perceives a text request and picks an action: a Hugging Face encoder with a classification head.

    The head is sized from ``labels`` (the CLI links them from the datamodule). Training uses AdamW with decoupled
    weight decay on matrices only, and a linear warm-up then linear decay over ``trainer.estimated_stepping_batches``.
    Validation and test log accuracy and macro-F1 (``val/acc``, ``val/f1``, ``test/acc``, ``test/f1``).

    Args:
        model: a local folder (e.g. one written by :meth:`save_pretrained`) or a hub name. ``None`` (default) is the
            packaged all-MiniLM-L6-v2, which needs no network.
        labels: the action names, in label-id order. ``None`` takes them from the model folder's ``id2label`` if it
            has real names.
        num_labels: optional check: must equal ``len(labels)``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay on weight matrices (biases and norms are not decayed).
        warmup_fraction: fraction of all optimizer steps spent warming up linearly from 0.
        max_length: longest tokenized input; longer requests are truncated (``act`` and the datamodule agree on it).
        student_layers: keep only these transformer blocks of ``model`` (e.g. ``[0, 2, 4]`` of 6), initialised from
            it (DistilBERT-style): a student for :class:`~agent_lightning.callbacks.Distillation` from its teacher.
            ``"auto:N"`` keeps ``N`` blocks picked on calibration batches (:mod:`agent_lightning.pruning.depth`):
            all but the contiguous span of blocks that changes the hidden states least (``"span:N"``, the default),
            or the ``N`` that change their input most (``"influence:N"``, block influence);
            :meth:`select_student_layers` picks them before ``fit`` (``train.py`` calls it with the training data)
            and records the choice in ``hparams``.
        student_intermediate_size: also narrow every feed-forward layer to this many neurons (those with the
            largest weight norm).
        task: ``"classification"`` (``AutoModelForSequenceClassification``; ``act`` returns ``(action,
            confidence)``); ``"generation"`` (``AutoModelForCausalLM``, e.g. ``model="smollm2-135m-instruct"``,
            trained on chat examples from :class:`~agent_lightning.datamodules.TextClassificationDataModule` with
            ``task="generation"``: the loss covers the response tokens only, and logits are computed only at the
            positions that predict them; ``act`` answers with an action and its sequence probability, decoding
            constrained to ``labels``; validation logs ``val/action_acc``, ``val/invalid_rate`` (the share of
            unconstrained answers that are not an action), ``val/free_action_acc`` (the share that are the right
            one), ``val/perplexity`` of the responses and a table of sample
            answers in TensorBoard's Text tab); or ``"causal-lm"`` (``AutoModelForCausalLM`` trained on
            next-token loss over the batch's ``labels``, e.g. from
            :class:`~agent_lightning.datamodules.LanguageModelingDataModule`; logs ``val/perplexity``; ``act``
            generates a continuation and returns ``(text, mean token probability)``; ``labels`` is not used).
        max_new_tokens: tokens ``act`` generates for ``task="causal-lm"`` (and for unconstrained answers of
            ``task="generation"``).
        system_prompt: ``task="generation"``: the chat's system message; ``None`` keeps the template's default.
        list_actions: ``task="generation"``: list the allowed actions after each request (for a model that was not
            fine-tuned on them).
        constrained: ``task="generation"``: ``act`` and ``predict`` decode within the action set (every answer is an
            action); ``False`` generates freely (the answer may be any text). ``labels=[]`` (data with a
            ``response_column``) means free answers: there is no action set, answers are generated freely, and
            validation logs ``val/response_acc`` (exact match with the reference answer) instead of the action
            metrics.

    Raises:
        TypeError: an argument of the wrong type, with the argument, the value and the fix in the message.
        ValueError: a bad value, with the argument, the value and the fix in the message.

    Example:
        >>> agent = Agent(labels=["play_music", "set_alarm"])  # the packaged MiniLM backbone, a new head
        >>> [action for action, confidence in agent.act(["wake me at 7", "play jazz"])]  # untrained: any of the two
        [...]
        >>> all(action in agent.labels for action, _ in agent.act(["wake me at 7", "play jazz"]))
        True
    """

    def __init__(
        self,
        model: str | None = None,
        labels: list[str] | None = None,
        num_labels: int | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.06,
        max_length: int = 64,
        student_layers: list[int] | str | None = None,
        student_intermediate_size: int | None = None,
        task: Task = "classification",
        max_new_tokens: int = 32,
        system_prompt: str | None = None,
        list_actions: bool = False,
        constrained: bool = True,
    ) -> None:
        super().__init__()
        check_choice("task", task, TASKS)
        check_int("max_new_tokens", max_new_tokens, 1)
        check_bool("list_actions", list_actions)
        check_bool("constrained", constrained)
        check_optional_string("system_prompt", system_prompt, "for the template's default")
        check_number("learning_rate", learning_rate, minimum=0, strict_minimum=True, tail=", e.g. learning_rate=1e-4")
        check_number("weight_decay", weight_decay, minimum=0, tail=", e.g. weight_decay=0.01")
        check_fraction("warmup_fraction", warmup_fraction, allow_zero=True)
        check_int("max_length", max_length, 2)  # tokens per request
        auto = auto_layers(student_layers)
        if (
            student_layers is not None
            and auto is None
            and (isinstance(student_layers, str) or not all(isinstance(i, int) for i in student_layers))
        ):
            raise TypeError(
                f"student_layers={student_layers!r} must be a list of block indices, e.g. [0, 2, 4], or 'auto:N' (N "
                "blocks picked on calibration batches; also 'span:N', 'influence:N'), e.g. 'auto:3'."
            )
        source = resolve_backbone(model, argument="model")
        config = _load_config(source)
        if task == "causal-lm":
            if labels or num_labels is not None:  # (a checkpoint stores labels=[])
                raise ValueError(
                    "labels/num_labels are for task='classification'; a causal language model predicts the next token "
                    "over its vocabulary. Drop them, or use task='classification'."
                )
            labels = []
        elif not (task == "generation" and labels == [] and num_labels is None):  # []: free answers
            labels = _resolve_labels(labels, num_labels, config)
        self.save_hyperparameters(
            {
                "model": model,
                "labels": labels,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "warmup_fraction": warmup_fraction,
                "max_length": max_length,
                "student_layers": student_layers,
                "student_intermediate_size": student_intermediate_size,
                "task": task,
                "max_new_tokens": max_new_tokens,
                "system_prompt": system_prompt,
                "list_actions": list_actions,
                "constrained": constrained,
            }
        )
        self.labels: list[str] = labels
        if task != "causal-lm":  # the action names travel with the saved model
            config.num_labels = len(labels)
            config.id2label = dict(enumerate(labels))
            config.label2id = {name: i for i, name in enumerate(labels)}
        if getattr(config, STRUCTURE_KEY, None):  # heads/neurons were physically removed: rebuild those shapes
            self.model = load_pretrained_pruned(source, config=config, model_class=self._model_class)
        elif task != "classification":
            self.model = AutoModelForCausalLM.from_pretrained(source, config=config)
        else:
            self.model = _load_classifier(source, config)
        self._pending_layers: tuple[str, int] | None = None  # "auto:N", until select_student_layers picks them
        self.block_choice: BlockChoice | None = None
        if auto is not None:
            count = len(block_list(self.model)[1])
            if not 1 <= auto[1] < count:
                raise ValueError(
                    f"student_layers={student_layers!r}: N must be in [1, {count - 1}] (the model has {count} blocks), "
                    f"e.g. 'auto:{max(1, count // 2)}'."
                )
            self._pending_layers = auto
        elif student_layers is not None:  # a student made of some of the backbone's (teacher's) blocks
            keep_layers(self.model, student_layers)
        if student_intermediate_size is not None:
            narrow_ffn(self.model, student_intermediate_size)
        self.model.train()  # from_pretrained returns eval mode, which would silently disable dropout in training
        self.tokenizer = load_tokenizer(source, argument="model")  # pads with end-of-text when it has no pad token
        self._chat: tuple[ChatPrompt, ActionTrie] | None = None
        self._samples: list[tuple[str, str, str, str]] = []
        if task != "classification":
            self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)
            self.test_perplexity = Perplexity(ignore_index=IGNORE_INDEX)
        if task == "generation" and not labels:  # free answers: exact match with the reference answer
            self.val_response_acc = MeanMetric()
            self.test_response_acc = MeanMetric()
        elif task == "generation":
            self.val_action_acc = MulticlassAccuracy(num_classes=len(labels), average="micro")
            self.test_action_acc = MulticlassAccuracy(num_classes=len(labels), average="micro")
            self.val_invalid_rate = MeanMetric()
            self.test_invalid_rate = MeanMetric()
            self.val_free_action_acc = MeanMetric()
            self.test_free_action_acc = MeanMetric()
        elif task == "classification":
            num_classes = len(labels)
            self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
            self.val_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")
            self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
            self.test_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")

    @property
    def _model_class(self) -> type:
        return AutoModelForSequenceClassification if self.hparams.task == "classification" else AutoModelForCausalLM

    @property
    def chat_prompt(self) -> ChatPrompt:
        """``task="generation"``: how requests become prompts (the datamodule builds its batches the same way)."""
        return self._chat_parts()[0]

    def _chat_parts(self) -> tuple[ChatPrompt, ActionTrie | None]:
        """The prompt builder, and the prefix tree of the actions (``None`` for free answers)."""
        if self._chat is None:
            hp = self.hparams
            actions = self.labels if hp.list_actions else None
            prompt = ChatPrompt(self.tokenizer, hp.max_length, system_prompt=hp.system_prompt, actions=actions)
            self._chat = prompt, ActionTrie(prompt.action_ids(self.labels)) if self.labels else None
        return self._chat

    # -- the model ---------------------------------------------------------------------------------------------------
    @override
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_to_keep: int | None = None,
    ) -> SequenceClassifierOutput:
        """Run the wrapped model. Shapes: ``input_ids``/``attention_mask``/``token_type_ids``/``position_ids``
        ``(B, L)``, ``labels`` ``(B,)`` (classification) or ``(B, L)`` (causal LM, ``-100`` where ignored); returns an
        HF output whose ``logits`` are ``(B, num_labels)``, ``(B, L, vocab_size)``, or ``(B, logits_to_keep,
        vocab_size)`` (a decoder's last positions only)."""
        extra = {"token_type_ids": token_type_ids, "position_ids": position_ids, "logits_to_keep": logits_to_keep}
        extra = {key: value for key, value in extra.items() if value is not None}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.hparams.task == "generation":
            logits, targets = self.response_logits(batch)
            loss = _answer_loss(logits, targets)
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(targets))
            self._log_lr()
            return loss
        output = self(**batch)
        labelled = labelled_rows(batch.get("labels"), output.logits.shape[0])
        if self.hparams.task == "classification" and labelled is not None and not bool(labelled.any()):
            # only unlabelled rows (they train through distillation): a zero task loss, not cross-entropy's NaN
            output.loss = output.logits.sum() * 0.0
        self.log(
            "train/loss", output.loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["input_ids"])
        )
        self._log_lr()
        return output.loss

    def _log_lr(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            self.log("train/lr", scheduler.get_last_lr()[0], on_step=True, on_epoch=False)

    def response_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``task="generation"``: the logits at the positions that predict response tokens, and those tokens.

        A left-padded chat batch ends every row with its response, so only the last positions need the LM head
        (``logits_to_keep``): over a 49k-token vocabulary that is most of a small decoder's compute.

        Returns:
            ``(logits, targets)``: ``(B, K, vocab_size)`` and ``(B, K)``, ``targets`` being ``-100`` where a row's
            prompt or padding falls inside the last ``K`` positions.
        """
        labels = batch["labels"]
        length = labels.shape[1]
        answered = labels != IGNORE_INDEX
        first = int(torch.where(answered.any(-1), answered.int().argmax(-1), length - 1).min())
        keep = min(length - first + 1, length)
        output = self(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=position_ids(batch["attention_mask"]),
            logits_to_keep=keep,
        )
        return output.logits[:, :-1], labels[:, length - keep + 1 :]

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.hparams.task == "generation":
            self._evaluate_generation(batch, batch_idx, "val")
        elif self.hparams.task == "causal-lm":
            self._evaluate_lm(batch, "val", self.val_perplexity)
        else:
            self._evaluate(batch, "val", self.val_acc, self.val_f1)

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.hparams.task == "generation":
            self._evaluate_generation(batch, batch_idx, "test")
        elif self.hparams.task == "causal-lm":
            self._evaluate_lm(batch, "test", self.test_perplexity)
        else:
            self._evaluate(batch, "test", self.test_acc, self.test_f1)

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Returns ``{"labels": list[str] of length B, "probabilities": Tensor (B, num_labels)}`` (classification),
        or ``{"texts": list[str], "probabilities": Tensor (B,)}``: generated continuations and their mean token
        probabilities (causal LM); ``task="generation"``: ``{"labels": the answers, "probabilities": Tensor (B,)}``
        (their sequence probabilities), constrained to the actions unless ``constrained=False``."""
        if self.hparams.task == "generation":
            prompts = batch[GENERATION]
            answers, probabilities = self._answer(prompts["input_ids"], prompts["attention_mask"])
            return {"labels": answers, "probabilities": probabilities}
        if self.hparams.task == "causal-lm":
            texts, probabilities = self._generate(batch)
            return {"texts": texts, "probabilities": probabilities}
        probabilities = self._probabilities(batch)
        return {"labels": [self.labels[i] for i in probabilities.argmax(-1).tolist()], "probabilities": probabilities}

    def _evaluate(self, batch: dict[str, Tensor], stage: str, accuracy: MulticlassAccuracy, f1: MulticlassF1Score):
        output = self(**batch)
        predictions = output.logits.argmax(-1)
        accuracy(predictions, batch["labels"])
        f1(predictions, batch["labels"])
        size = len(batch["labels"])
        self.log(f"{stage}/loss", output.loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/f1", f1, on_step=False, on_epoch=True, batch_size=size)

    def _evaluate_lm(self, batch: dict[str, Tensor], stage: str, perplexity: Perplexity) -> None:
        output = self(**batch)
        # position t predicts token t + 1 (the HF causal-LM loss shifts the same way)
        perplexity(output.logits[:, :-1].float(), batch["labels"][:, 1:])
        size = len(batch["input_ids"])
        self.log(f"{stage}/loss", output.loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/perplexity", perplexity, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)

    def _evaluate_generation(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        logits, targets = self.response_logits(batch)
        perplexity = getattr(self, f"{stage}_perplexity")
        perplexity(logits.float(), targets)
        size = len(targets)
        loss = _answer_loss(logits, targets)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/perplexity", perplexity, on_step=False, on_epoch=True, batch_size=size)
        generation = batch[GENERATION]
        if not self.labels:  # free answers: exact match with the reference
            free, right = self._free_answers_matched(generation)
            response_accuracy = getattr(self, f"{stage}_response_acc")
            response_accuracy(torch.tensor(right, dtype=torch.float, device=self.device))
            self.log(
                f"{stage}/response_acc", response_accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=size
            )
            if stage == "val" and batch_idx == 0:
                self._samples = list(zip(generation["request"], generation["reference"], free))[:SAMPLE_ROWS]
            return
        prompts, mask, actions = generation["input_ids"], generation["attention_mask"], generation["action"]
        chosen, _ = self._constrained(prompts, mask)
        free, _ = self._free(prompts, mask, self._answer_budget())
        accuracy, invalid = getattr(self, f"{stage}_action_acc"), getattr(self, f"{stage}_invalid_rate")
        free_accuracy = getattr(self, f"{stage}_free_action_acc")
        accuracy(chosen, actions)
        invalid(torch.tensor([answer not in self.labels for answer in free], dtype=torch.float, device=self.device))
        gold = [self.labels[i] for i in actions.tolist()]
        right = [answer == g for answer, g in zip(free, gold)]
        free_accuracy(torch.tensor(right, dtype=torch.float, device=self.device))
        self.log(f"{stage}/action_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/invalid_rate", invalid, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{stage}/free_action_acc", free_accuracy, on_step=False, on_epoch=True, batch_size=size)
        if stage == "val" and batch_idx == 0:
            answers = [self.labels[i] for i in chosen.tolist()]
            self._samples = list(zip(generation["request"], gold, answers, free))[:SAMPLE_ROWS]

    def score_batch(self, batch: dict[str, Any]) -> tuple[int, int] | None:
        """``task="generation"``: ``(correct, counted)`` constrained answers of an evaluation batch, for callbacks that
        measure accuracy (:func:`~agent_lightning.evaluation.count_correct`); rows without an action are not
        counted. ``None`` for the other tasks, whose predictions are the argmax of the logits."""
        if self.hparams.task != "generation":
            return None
        generation = batch[GENERATION]
        if not self.labels:
            _, right = self._free_answers_matched(generation)
            return sum(right), len(right)
        chosen, _ = self._constrained(generation["input_ids"], generation["attention_mask"])
        known = generation["action"] != IGNORE_INDEX
        return int(((chosen == generation["action"]) & known).sum()), int(known.sum())

    def _free_answers_matched(self, generation: dict[str, Any]) -> tuple[list[str], list[bool]]:
        """Free answers to an evaluation batch's prompts, and whether each equals its reference answer."""
        free, _ = self._free(generation["input_ids"], generation["attention_mask"], self.hparams.max_new_tokens)
        return free, [answer == reference.strip() for answer, reference in zip(free, generation["reference"])]

    @override
    def on_validation_epoch_end(self) -> None:
        if self._samples and not self.trainer.sanity_checking:
            header = ("request", "expected", "answer (constrained)", "answer (free)")
            if not self.labels:  # free answers
                header = ("request", "expected", "answer")
            write_text(self.trainer, "val/samples", markdown_table(header, self._samples))
        self._samples = []

    def _answer_budget(self) -> int:
        """Tokens an unconstrained answer may use: enough for the longest action and its end token, plus one."""
        return self._chat_parts()[1].depth + 1

    def _constrained(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        trie = self._chat_parts()[1]
        return constrained_greedy(self.model, input_ids, attention_mask, trie, self.tokenizer.pad_token_id)

    def _free(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int) -> tuple[list[str], Tensor]:
        end = self.chat_prompt.end_id
        return decode_answers(self.model, input_ids, attention_mask, self.tokenizer, None, [], max_new_tokens, end)

    def _answer(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[list[str], Tensor]:
        """The generative agent's answers to left-padded prompts: actions (constrained) or free text."""
        prompt, trie = self._chat_parts()
        trie = trie if self.hparams.constrained else None
        hp = self.hparams
        return decode_answers(
            self.model, input_ids, attention_mask, self.tokenizer, trie, self.labels, hp.max_new_tokens, prompt.end_id
        )

    def _generate(self, batch: dict[str, Tensor]) -> tuple[list[str], Tensor]:
        """Greedy continuations of a left-padded batch and the mean probability of their generated tokens."""
        prompt_length = batch["input_ids"].shape[1]
        pad = self.tokenizer.pad_token_id
        generated = self.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            max_new_tokens=self.hparams.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            output_scores=True,
            return_dict_in_generate=True,
        )
        new_tokens = generated.sequences[:, prompt_length:]
        scores = torch.stack(generated.scores, dim=1).float().log_softmax(-1)  # (B, new, V)
        token_logp = scores.gather(-1, new_tokens[..., None]).squeeze(-1)
        real = new_tokens != pad if pad is not None else torch.ones_like(new_tokens, dtype=torch.bool)
        mean_logp = (token_logp * real).sum(1) / real.sum(1).clamp(min=1)
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts], mean_logp.exp()

    def _probabilities(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")).logits
        return logits.float().softmax(-1)

    # -- optimisation ------------------------------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.learning_rate,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.hparams.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if stage == "fit" and self._pending_layers is not None:
            raise ValueError(
                f"student_layers={self.hparams.student_layers!r} picks the blocks on calibration batches before "
                "training: call agent.select_student_layers(datamodule) before Trainer.fit (train.py does), so that "
                "the compression callbacks see the student's blocks, or pass the block indices."
            )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_labels = getattr(datamodule, "label_names", None)
        if data_labels is not None and list(data_labels) != self.labels:
            raise ValueError(
                f"The agent's labels ({len(self.labels)}: {preview(self.labels)}) differ from the datamodule's "
                f"({len(data_labels)}: {preview(data_labels)}). Build the agent with labels=datamodule.label_names "
                "(the CLI links them), or load a checkpoint trained on the same label set."
            )
        data_tokenizer = getattr(datamodule, "tokenizer", None)
        if data_tokenizer is not None and data_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                f"The datamodule tokenizes with {data_tokenizer.name_or_path!r} ({len(data_tokenizer)} tokens), but "
                f"this agent's model reads the ids of {self.tokenizer.name_or_path!r} ({len(self.tokenizer)} tokens). "
                "Pass the agent's model as the datamodule's tokenizer (the CLI links --model.model to it)."
            )
        data_hparams = getattr(datamodule, "hparams", {})
        if self.hparams.task == "generation" and "task" in data_hparams:
            wanted = {key: self.hparams[key] for key in ("task", "system_prompt", "list_actions", "max_length")}
            differ = {key: data_hparams.get(key) for key, value in wanted.items() if data_hparams.get(key) != value}
            if differ:
                raise ValueError(
                    f"The datamodule builds its batches with {differ}, but this generative agent prompts with "
                    f"{ {key: wanted[key] for key in differ} }: training and acting would see different prompts. Pass "
                    "the same values to both (the CLI links them from --model)."
                )

    @override
    def on_fit_start(self) -> None:
        # HParams tab: the agent's settings and those of the compression callbacks (once per run).
        write_run_hparams(self.trainer, self)
        choice = self.block_choice
        if choice is not None:  # the blocks select_student_layers kept, and why
            score = "span distance" if choice.criterion == "span" else "block influence"
            header = ("blocks" if choice.criterion == "span" else "block", score, "")
            write_text(self.trainer, "model/student_layers", markdown_table(header, choice.rows()))

    @property
    def pending_student_layers(self) -> int | None:
        """``N`` of ``student_layers="auto:N"`` until :meth:`select_student_layers` has picked the blocks."""
        return None if self._pending_layers is None else self._pending_layers[1]

    def select_student_layers(self, data: Any, max_batches: int = 8) -> list[int]:
        """``student_layers="auto:N"``: keep ``N`` blocks picked on calibration batches
        (:func:`~agent_lightning.pruning.depth.choose_blocks`: all but the contiguous span whose input and output
        hidden states are closest, or with ``"influence:N"`` the ``N`` of highest block influence), in place; records
        them as ``hparams.student_layers`` (checkpoints reload the student) and the choice with its scores as
        :attr:`block_choice` (shown in TensorBoard's Text tab at fit start).

        Args:
            data: a datamodule (its training batches are read) or an iterable of batches.
            max_batches: calibration batches read.

        Returns:
            The kept block indices of the original model.

        Raises:
            ValueError: the agent was not built with ``student_layers="auto:N"`` (or already picked them).
        """
        if self._pending_layers is None:
            raise ValueError(
                f"select_student_layers is for Agent(student_layers='auto:N'); this agent has student_layers="
                f"{self.hparams.student_layers!r}."
            )
        if isinstance(data, LightningDataModule):
            data.setup("fit")
            data = data.train_dataloader()
        criterion, keep = self._pending_layers
        self.block_choice = choose_blocks(self, data, keep, criterion, max_batches)
        chosen = self.block_choice.kept
        keep_layers(self.model, chosen)
        self.hparams["student_layers"] = chosen
        self._pending_layers = None
        return chosen

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_CONFIG_KEY] = self.model.config.to_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(_CONFIG_KEY)
        if saved is None:
            return
        config = type(self.model.config).from_dict(saved)
        if config.to_diff_dict() != self.model.config.to_diff_dict():
            # The checkpoint's architecture differs from the backbone's (e.g. a student with fewer layers):
            # rebuild from the saved config, then Lightning loads the weights into it.
            self.model = build_from_config(config, self._model_class)

    # -- acting and exporting ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, texts: str | Sequence[str], batch_size: int = 64) -> list[tuple[str, float]]:
        """Act on each raw request: pick an action (classification) or write a continuation (causal LM).

        Args:
            texts: one request or a sequence of requests.
            batch_size: requests per forward pass (or per ``generate`` call).

        Returns:
            ``(action, confidence)`` for each request, confidence being the softmax probability of the action; for
            ``task="generation"``, the action decoded within the action set and its sequence probability (with
            ``constrained=False``, the free answer and its mean token probability); for ``task="causal-lm"``,
            ``(continuation, mean probability of its tokens)`` from greedy decoding of up to ``max_new_tokens``
            tokens.

        Raises:
            TypeError: ``texts`` is not a string or a sequence of strings.
        """
        texts = as_texts(texts)
        task = self.hparams.task
        was_training = self.training
        self.eval()
        decisions: list[tuple[str, float]] = []
        try:
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                if task == "generation":
                    prompt, trie = self._chat_parts()
                    room = trie.depth if trie is not None else self.hparams.max_new_tokens
                    prompts = [prompt.prompt_ids(text, room) for text in chunk]
                    encoded = left_padded(prompts, self.tokenizer.pad_token_id)
                    answers, probability = self._answer(**{k: v.to(self.device) for k, v in encoded.items()})
                    decisions += list(zip(answers, probability.tolist()))
                    continue
                if task == "causal-lm":  # generation continues every left-padded row from its last position
                    prompts = [continuation_prompt(self.tokenizer, t, self.hparams.max_length) for t in chunk]
                    encoded = left_padded(prompts, self.tokenizer.pad_token_id)
                    written, probability = self._generate({k: v.to(self.device) for k, v in encoded.items()})
                    decisions += list(zip(written, probability.tolist()))
                    continue
                encoded = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.hparams.max_length, return_tensors="pt"
                ).to(self.device)
                confidence, index = self._probabilities(dict(encoded)).max(-1)
                decisions += [(self.labels[i], c) for i, c in zip(index.tolist(), confidence.tolist())]
        finally:
            self.train(was_training)
        return decisions

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a Hugging Face folder (model, tokenizer, ``id2label``) that
        ``AutoModelForSequenceClassification.from_pretrained`` (``AutoModelForCausalLM`` for ``task="causal-lm"``)
        loads, atomically.

        Args:
            directory: the folder to write.
            overwrite: replace an existing, non-empty folder.

        Returns:
            The folder written.

        Raises:
            FileExistsError: ``directory`` exists and is not empty, and ``overwrite`` is false.
        """
        with atomic_directory(directory, overwrite=overwrite, argument="directory") as staging:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            if self.hparams.task != "causal-lm":
                (staging / "labels.json").write_text(json.dumps(self.labels, indent=1), encoding="utf-8")
        return Path(directory)


def _answer_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` ``(B, K, V)`` over the answer tokens of ``targets`` ``(B, K)``."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def _load_classifier(source: str, config: Any) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained`` without transformers' load report for the head this
    agent is about to train (new, or resized to the labels); any other missing, unexpected or resized weight is a
    real problem and is warned about."""
    with messages_dropped("transformers.modeling_utils", "LOAD REPORT"):
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, output_loading_info=True
        )
    backbone = f"{model.base_model_prefix}."
    missing = sorted(k for k in info["missing_keys"] if k.startswith(backbone))
    resized = sorted(k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"])
    resized = [k for k in resized if k.startswith(backbone)]
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.endswith("position_ids"))
    if missing or resized or unexpected:
        warnings.warn(
            f"Agent(model={source!r}): the backbone's weights do not fit its architecture: missing "
            f"{preview(missing)}, resized {preview(resized)}, unexpected {preview(unexpected)} (these start "
            "from random values). Check that model names a checkpoint of this architecture.",
            UserWarning,
            stacklevel=3,
        )
    return model


def _load_config(source: str):
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as error:
        raise ValueError(
            f"model={source!r} could not be loaded: {error}. Pass an existing model folder, a packaged model "
            f"({', '.join(sorted(PACKAGED_MODELS))}), a hub name reachable from this machine (HF_HUB_OFFLINE=1 "
            "forbids downloads), or leave model unset for the packaged default."
        ) from error


def _resolve_labels(labels: list[str] | None, num_labels: int | None, config) -> list[str]:
    if num_labels is not None and (not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2):
        raise ValueError(f"num_labels={num_labels!r} must be an integer >= 2, or left unset to follow labels.")
    if labels is None:
        names = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
        if names and not all(name == f"LABEL_{i}" for i, name in enumerate(names)):
            labels = names
        elif num_labels is not None:
            labels = [f"LABEL_{i}" for i in range(num_labels)]
        else:
            raise ValueError(
                "Agent(labels=None): the agent needs its action names. Pass labels=datamodule.label_names "
                "(train.py links them from --data), or num_labels=N for anonymous labels."
            )
    if isinstance(labels, str) or not all(isinstance(name, str) for name in labels):
        raise TypeError(f"labels={labels!r} must be a list of strings, e.g. ['play_music', 'set_alarm'].")
    labels = list(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(
            f"labels={labels!r} must hold at least two distinct names (one per action), e.g. ['play_music', "
            "'set_alarm']."
        )
    if num_labels is not None and num_labels != len(labels):
        raise ValueError(
            f"num_labels={num_labels} contradicts the {len(labels)} labels of the data ({preview(labels)}). "
            f"Drop num_labels (it follows the data) or set it to {len(labels)}."
        )
    return labels
