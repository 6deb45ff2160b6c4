"""Every compression callback on LightningModules we did not write: Lightning's demo transformer, a small CNN, and
decoder-only causal language models from transformers (tiny GPT-2 with Conv1D, tiny Llama with nn.Linear)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.demos.transformer import LightningTransformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from agent_lightning import Agent, LanguageModelingDataModule
from agent_lightning.callbacks import Distillation, EmbeddingCompression, Pruning, QuantizationAwareTraining
from agent_lightning.quantization import converted_modules
from agent_lightning.quantization.embedding import CompactEmbedding, CompactLMHead
from agent_lightning.targets import select_modules


class LocalTransformer(LightningTransformer):
    """Lightning's demo transformer, fed locally generated token data instead of downloading WikiText-2."""

    def prepare_data(self) -> None:
        pass

    def train_dataloader(self) -> DataLoader:
        tokens = torch.randint(0, 100, (64, 12), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)


class SmallCNN(LightningModule):
    """A small image classifier: two convolutions and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        images, labels = torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 4, (64,), generator=generator)
        return DataLoader(TensorDataset(images, labels), batch_size=8)


def _make(kind: str, folders: dict[str, str], seed: int = 0) -> LightningModule:
    torch.manual_seed(seed)
    if kind == "transformer":
        return LocalTransformer(vocab_size=100)
    if kind == "cnn":
        return SmallCNN()
    return Agent(model=folders[kind], task="causal-lm", learning_rate=1e-3)


def _fit(module: LightningModule, callbacks, tmp_path, folders, lm_texts, kind: str, steps: int = 6) -> Trainer:
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    if kind in ("gpt2", "llama"):
        trainer.fit(module, LanguageModelingDataModule(lm_texts, tokenizer=folders[kind], max_length=16, batch_size=8))
    else:
        trainer.fit(module)
    return trainer


MODULES = ["transformer", "cnn", "gpt2", "llama"]


@pytest.mark.parametrize("kind", MODULES)
def test_pruning_reaches_its_target_on_any_module(kind, tmp_path, causal_lm_folders, lm_texts):
    module = _make(kind, causal_lm_folders)
    pruning = Pruning(sparsity=0.5, start=0, end=4, frequency=1)
    _fit(module, [pruning], tmp_path, causal_lm_folders, lm_texts, kind)
    targets = select_modules(module)
    if kind == "gpt2":  # HF Conv1D layers are pruned like linears
        assert {type(m).__name__ for m in targets.values()} == {"Conv1D"}
    weights = [m.weight for m in targets.values()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("kind", MODULES)
def test_qat_fake_quantizes_then_converts_any_module_with_linear_layers(kind, tmp_path, causal_lm_folders, lm_texts):
    module = _make(kind, causal_lm_folders)
    _fit(module, [QuantizationAwareTraining(start=2, evaluate=False)], tmp_path, causal_lm_folders, lm_texts, kind)
    converted = converted_modules(module)
    assert converted and all(type(module.get_submodule(n)) is not nn.Linear for n in converted)
    if kind == "transformer":  # attention reads out_proj's weights directly: left out of the default targets
        assert not any(name.endswith("out_proj") for name in converted)
    if kind == "gpt2":  # its Conv1D layers (c_attn, c_proj, c_fc) are the quantized ones
        assert len(converted) == 8


def test_qat_on_gpt2_conv1d_keeps_the_checkpoint_layout_and_converts_exactly(tmp_path, causal_lm_folders, lm_texts):
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    from agent_lightning.quantization import FakeQuantizedConv1D, convert, fake_quantized_modules, unprepare

    module = _make("gpt2", causal_lm_folders)
    qat = QuantizationAwareTraining(start=2, freeze=4, convert_on_fit_end=False, evaluate=False)
    _fit(module, [qat], tmp_path, causal_lm_folders, lm_texts, "gpt2")
    fake = fake_quantized_modules(module)
    assert len(fake) == 8 and all(isinstance(m, FakeQuantizedConv1D) for m in fake.values())
    plain = GPT2LMHeadModel.from_pretrained(causal_lm_folders["gpt2"])
    plain.load_state_dict(module.model.state_dict())  # same keys and Conv1D shapes: loads strictly
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(0))
    module.eval()
    with torch.inference_mode():
        fake_logits = module.model(input_ids=ids).logits
        convert(module)
        converted_logits = module.model(input_ids=ids).logits
    torch.testing.assert_close(converted_logits, fake_logits, rtol=0, atol=1e-4)
    # Back to float (what Trainer.test(ckpt_path=...) does before loading a float checkpoint): Conv1D layers again
    assert set(unprepare(module).values()) == {"converted"}
    assert all(type(module.get_submodule(name)) is Conv1D for name in fake)
    module.model.load_state_dict(plain.state_dict())  # strict: the float GPT-2 checkpoint fits again


@pytest.mark.parametrize("kind", MODULES)
def test_distillation_from_a_teacher_of_the_same_kind(kind, tmp_path, causal_lm_folders, lm_texts):
    student, teacher = _make(kind, causal_lm_folders), _make(kind, causal_lm_folders, seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _fit(student, [Distillation(teacher)], tmp_path, causal_lm_folders, lm_texts, kind)
    metrics = trainer.callback_metrics
    assert float(metrics["distill/kd_loss"]) > 0 and "distill/task_loss" in metrics
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher never trains
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["transformer", "llama"])
def test_embedding_compression_on_modules_with_their_own_input_embeddings(kind, tmp_path, causal_lm_folders, lm_texts):
    module = _make(kind, causal_lm_folders)
    _fit(module, [EmbeddingCompression()], tmp_path, causal_lm_folders, lm_texts, kind)
    compact = [m for m in module.modules() if isinstance(m, CompactEmbedding)]
    assert len(compact) == 1 and compact[0].kept_tokens < compact[0].num_embeddings


def test_embedding_compression_of_a_tied_table_compacts_it_once_for_input_and_output(
    tmp_path, causal_lm_folders, lm_texts
):
    module = _make("gpt2", causal_lm_folders)
    _fit(module, [EmbeddingCompression()], tmp_path, causal_lm_folders, lm_texts, "gpt2")
    compact = [m for m in module.modules() if isinstance(m, CompactEmbedding)]
    assert len({id(m) for m in compact}) == 1  # one table, reached from the input lookup and the output layer
    head = module.model.lm_head
    assert isinstance(head, CompactLMHead) and head.embedding is module.model.transformer.wte
    ids = torch.randint(1000, 2000, (2, 6), generator=torch.Generator().manual_seed(0))
    module.eval()
    with torch.no_grad():
        logits = module.model(input_ids=ids).logits
        hidden = module.model.transformer(input_ids=ids).last_hidden_state
    kept = torch.zeros(logits.shape[-1], dtype=torch.bool)
    kept[head.embedding.kept_ids] = True
    assert bool((logits[..., ~kept] == torch.finfo(logits.dtype).min).all())  # other tokens: probability 0
    rows = head.embedding.dequantized()  # the kept tokens' logits are the hidden states times the shared rows
    torch.testing.assert_close(logits[..., kept], (hidden @ rows.t())[..., head.embedding.kept_ids.argsort()])


def test_embedding_compression_says_what_a_module_must_provide(tmp_path, causal_lm_folders, lm_texts):
    with pytest.raises(ValueError, match=r"Cannot tell which module holds the input token embeddings"):
        _fit(_make("cnn", causal_lm_folders), [EmbeddingCompression()], tmp_path, causal_lm_folders, lm_texts, "cnn")
