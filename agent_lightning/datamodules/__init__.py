"""Data modules that turn labelled text into batches for an :class:`~agent_lightning.Agent`."""

from agent_lightning.datamodules.text_classification import TextClassificationDataModule

__all__ = ["TextClassificationDataModule"]
