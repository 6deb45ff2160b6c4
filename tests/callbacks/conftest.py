"""Fixtures for the callback tests: a tiny BERT agent with its data."""

from __future__ import annotations

import pytest
from lightning.pytorch import seed_everything

from agent_lightning import Agent, TextClassificationDataModule


@pytest.fixture
def agent_and_data(tiny_bert, tiny_data_dir):
    """A tiny BERT agent (learning rate 1e-3) and its datamodule (batches of 4), seeded."""
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    return Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3), dm
