"""The ONNX export: a pruned (heads and neurons cut out), QAT-trained, vocabulary-compacted agent runs in ONNX Runtime
with the int8 weights and scales QAT trained, and answers like the converted PyTorch model."""

from __future__ import annotations

import onnx
import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import EmbeddingCompression, Pruning, QuantizationAwareTraining, prepare_from_checkpoint
from agent_lightning.deployment import export as export_module
from agent_lightning.deployment.export import LogitsProgram, export_agent
from agent_lightning.deployment.onnx_program import ONNX_MODEL, OnnxProgram, int8_weights, onnx_ready, write_onnx
from agent_lightning.deployment.runtime import ExportedAgent
from agent_lightning.pruning.removal import remove_structure
from agent_lightning.quantization import convert, fake_quantized_modules
from agent_lightning.quantization.checkpoint import callback_state
from agent_lightning.quantization.embedding import CompactEmbedding
from agent_lightning.quantization.fake_quantizers import linear_weight
from tests.conftest import quiet_trainer

TEXTS = ["remind me to buy milk", "play some jazz in the kitchen please", "what's the weather", "call mom now"]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_bert, shared_tiny_data_dir):
    """A tiny agent trained with structured pruning (half the heads and FFN neurons), QAT with ONNX Runtime's
    activation scheme (frozen ranges) and the compacted int8 vocabulary: its last checkpoint, as the recipe exports
    it (written before fit end removes the pruned units and converts the model)."""
    folder = tmp_path_factory.mktemp("onnx-export")
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    callbacks = [
        Pruning(method="structured", sparsity=0.5, head_sparsity=0.5, start=0, end=4, frequency=2),
        QuantizationAwareTraining(start=4, freeze=6, kernel="onnxruntime"),
        EmbeddingCompression(),
        ModelCheckpoint(dirpath=folder, filename="last", monitor=None),
    ]
    quiet_trainer(folder, callbacks, max_steps=8, limit_val_batches=1, enable_checkpointing=True).fit(agent, dm)
    return folder / "last.ckpt"


def _reference(checkpoint):
    """The agent as the checkpoint's run ends: its trained QAT ranges, the pruned heads and neurons cut out (not yet
    converted)."""
    agent = Agent.load_from_checkpoint(checkpoint).eval()
    prepare_from_checkpoint(agent, checkpoint)
    state = callback_state(torch.load(checkpoint, weights_only=False), "Pruning")
    remove_structure(agent, state["kept_neurons"], state["kept_heads"])
    return agent


def test_onnx_export_runs_in_onnx_runtime_like_the_converted_model(tmp_path, compressed):
    result = export_agent(compressed, tmp_path / "onnx", "onnx")
    assert result.format == "onnx" and result.top1_agreement == 1.0 and result.max_abs_logit_diff < 1e-4
    exported = ExportedAgent(tmp_path / "onnx")
    assert exported.format == "onnx" and exported.manifest["quantization"] == "QAT ranges from the checkpoint"
    agent = _reference(compressed)
    config = agent.model.config
    assert config.intermediate_size == 32 and config.agent_lightning_structure  # half the neurons and heads cut
    assert exported.manifest["structure"] == config.agent_lightning_structure
    convert(agent)
    encoded = exported.encode(TEXTS)
    with torch.inference_mode():
        graph_twin = LogitsProgram(onnx_ready(agent.model, agent.hparams.max_length))(**encoded)
        fbgemm = agent(**encoded).logits
    logits = exported.logits(TEXTS)
    # ONNX Runtime computes what its PyTorch twin computes (float accumulation order aside) ...
    torch.testing.assert_close(logits, graph_twin, rtol=0, atol=1e-4)
    # ... and the fbgemm layers, with the same int8 weights but activations over [0, 127], differ by their rounding
    assert (logits - fbgemm).abs().max() < 0.05 * fbgemm.abs().max()
    assert [a for a, _ in exported.act(TEXTS)] == [agent.labels[i] for i in graph_twin.argmax(-1).tolist()]
    assert exported.manifest["parity"]["torch_int8"]["top1_agreement"] == 1.0
    largest = max(float(graph_twin.abs().max()), 1.0)
    assert exported.manifest["parity"]["tolerance"] == pytest.approx(0.05 * largest, rel=0.5)


def test_onnx_int8_weights_are_the_qat_trained_ones(tmp_path, compressed):
    export_agent(compressed, tmp_path / "onnx", "onnx")
    agent = _reference(compressed)
    trained = fake_quantized_modules(agent.model)
    graph = int8_weights(tmp_path / "onnx" / ONNX_MODEL)
    assert set(graph) == {f"model.{name}" for name in trained} and len(graph) == 12
    for name, module in trained.items():
        weight, scale = graph[f"model.{name}"]
        frozen = module.weight_fake_quantizer.scale.reshape(-1)
        torch.testing.assert_close(scale, frozen.float(), rtol=0, atol=0)  # the frozen QAT scales, read back
        # 7-bit weights: ONNX Runtime's uint8 x int8 kernels without VNNI sum pairs of products in 16 bits
        expected = torch.clamp(torch.round(linear_weight(module).detach() / frozen[:, None]), -64, 63)
        assert torch.equal(weight.to(torch.int64), expected.to(torch.int64))
        assert int(weight.min()) >= -64 and int(weight.max()) <= 63
        assert weight.shape == (module.out_features, module.in_features)  # the smaller matrices
    neurons = graph["model.bert.encoder.layer.0.intermediate.dense"][0]
    assert neurons.shape == (32, 32)  # 64 neurons -> 32, width 32
    model = onnx.load(str(tmp_path / "onnx" / ONNX_MODEL))
    ops = [node.op_type for node in model.graph.node]
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(ops)
    assert ops.count("QAttention") == 2  # each block's query, key and value layers: one fused attention node
    # the compacted vocabulary is in the graph: int8 rows of the kept tokens only
    rows = next(t for t in model.graph.initializer if t.name.endswith("word_embeddings.weight"))
    kept = ExportedAgent(tmp_path / "onnx").manifest["embeddings"]["kept_tokens"]
    assert rows.data_type == onnx.TensorProto.INT8 and tuple(rows.dims)[0] == kept < 200


def test_int4_embedding_rows_run_in_onnx_runtime_as_in_pytorch(tmp_path):
    torch.manual_seed(0)

    class Lookup(torch.nn.Module):  # (input_ids, attention_mask) -> vectors, as write_onnx traces a classifier
        def __init__(self) -> None:
            super().__init__()
            self.embed = CompactEmbedding.from_embedding(torch.nn.Embedding(40, 6), keep=[1, 5, 7, 30], weights="int4")

        def forward(self, input_ids, attention_mask):
            return self.embed(input_ids) * attention_mask.unsqueeze(-1)

    program = Lookup().eval()
    ids = torch.tensor([[1, 5, 7, 30, 2], [39, 0, 5, 5, 1]])
    mask = torch.ones_like(ids)
    write_onnx(program, (ids, mask), tmp_path / "lookup.onnx")
    got = OnnxProgram(tmp_path / "lookup.onnx")(ids, mask)
    torch.testing.assert_close(got, program(ids, mask), rtol=0, atol=1e-6)
    rows = next(t for t in onnx.load(tmp_path / "lookup.onnx").graph.initializer if t.name == "embed.weight")
    assert rows.data_type == onnx.TensorProto.UINT8 and tuple(rows.dims) == (4, 3)  # 6 values in 3 bytes per row


def test_onnx_export_refuses_a_taken_folder_and_a_failure_leaves_nothing(tmp_path, compressed, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"output='.*taken' exists and is not empty.*--overwrite"):
        export_agent(compressed, tmp_path / "taken", "onnx")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]

    monkeypatch.setattr(export_module, "ONNX_TOLERANCE", 0.0)  # any difference from the PyTorch twin is too much
    with pytest.raises(ValueError, match=r"differ from the model.s by up to .*over the tolerance 0 .*; nothing was"):
        export_agent(compressed, tmp_path / "off", "onnx")
    monkeypatch.undo()

    def broken_export(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(OSError, match="disk full"):
        export_agent(compressed, tmp_path / "half", "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_int4_model_is_refused_with_the_format_that_carries_it(tmp_path, agent_and_data):
    agent, dm = agent_and_data
    qat = QuantizationAwareTraining(weights="int4", activations="none", group_size=16, start=0)
    quiet_trainer(tmp_path, [qat], max_steps=2, limit_val_batches=0).fit(agent, datamodule=dm)
    with pytest.raises(ValueError, match=r"the ONNX export carries int8 per-channel layers.*--format int8"):
        onnx_ready(agent.model)
