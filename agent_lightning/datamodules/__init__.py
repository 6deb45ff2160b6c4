"""Data modules that turn text into batches for an :class:`~agent_lightning.Agent`: labelled requests for
classification, plain texts for a causal language model."""

from agent_lightning.datamodules.language_modeling import LanguageModelingDataModule
from agent_lightning.datamodules.text_classification import TextClassificationDataModule

__all__ = ["LanguageModelingDataModule", "TextClassificationDataModule"]
