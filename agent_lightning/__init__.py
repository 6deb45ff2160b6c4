"""agent_lightning: train LLM-based agents with PyTorch Lightning and make them small and fast while they train."""

from agent_lightning.agent import Agent
from agent_lightning.datamodules import TextClassificationDataModule

__all__ = ["Agent", "TextClassificationDataModule"]
__version__ = "0.1.0"
