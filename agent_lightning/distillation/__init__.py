"""Knowledge distillation, usable without a Trainer: the losses, loading and freezing a teacher, the teacher-output
cache, token-replacement augmentation, and students made of a teacher's own blocks.

- :mod:`~agent_lightning.distillation.losses`: :class:`LogitDistillationLoss`, :class:`HiddenStateLoss`,
  :class:`AttentionDistillationLoss` (``nn.Module`` losses, shapes in their docstrings).
- :mod:`~agent_lightning.distillation.teachers`: :func:`load_teacher`, :func:`freeze`, :func:`fingerprint`,
  :func:`check_compatible`.
- :mod:`~agent_lightning.distillation.cache`: :class:`TeacherLogitCache` (per-example teacher logits, in memory or
  on disk).
- :mod:`~agent_lightning.distillation.augmentation`: :func:`replace_tokens`.
- :mod:`~agent_lightning.distillation.students`: :func:`keep_layers`, :func:`narrow_ffn`.
- :mod:`~agent_lightning.distillation.layers`: the student-to-teacher block map and output capture.
- :mod:`~agent_lightning.distillation.prompts`: :func:`prompt_positions` and a decoder's parts for KD on the request.
- :mod:`~agent_lightning.distillation.synthetic`: :func:`generate_requests` (new requests written by a causal LM from
  few-shot lists of training requests, for the teacher to answer).

:class:`agent_lightning.callbacks.Distillation` drives these during ``fit``.
"""

from agent_lightning.distillation.augmentation import replace_tokens
from agent_lightning.distillation.cache import TeacherLogitCache
from agent_lightning.distillation.layers import default_map, even_map, kept_blocks_map
from agent_lightning.distillation.losses import AttentionDistillationLoss, HiddenStateLoss, LogitDistillationLoss
from agent_lightning.distillation.prompts import prompt_positions
from agent_lightning.distillation.students import keep_layers, narrow_ffn
from agent_lightning.distillation.synthetic import RequestGenerationConfig, generate_requests
from agent_lightning.distillation.teachers import check_compatible, fingerprint, freeze, load_teacher

__all__ = [
    "AttentionDistillationLoss",
    "HiddenStateLoss",
    "LogitDistillationLoss",
    "RequestGenerationConfig",
    "TeacherLogitCache",
    "check_compatible",
    "default_map",
    "even_map",
    "fingerprint",
    "freeze",
    "generate_requests",
    "keep_layers",
    "kept_blocks_map",
    "load_teacher",
    "narrow_ffn",
    "prompt_positions",
    "replace_tokens",
]
