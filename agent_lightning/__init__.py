"""agent_lightning: train LLM-based agents with PyTorch Lightning and make them small and fast while they train."""

from agent_lightning.quiet import silence_known_noise

silence_known_noise()

from agent_lightning.agent import Agent  # noqa: E402
from agent_lightning.datamodules import LanguageModelingDataModule, TextClassificationDataModule  # noqa: E402

__all__ = ["Agent", "LanguageModelingDataModule", "TextClassificationDataModule"]
__version__ = "0.1.0"
