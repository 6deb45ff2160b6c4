"""The deployable int8 LLM: a Llama-like decoder as one ONNX decoding step with a key/value cache, checked against
Hugging Face's own forward, exported from a compressed tiny generative agent (grouped-query heads removed, int8 QAT
in ONNX Runtime's scheme, a trimmed int8 tied table) and answering as the converted model does."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from agent_lightning import Agent
from agent_lightning.callbacks import EmbeddingCompression, Pruning, QuantizationAwareTraining
from agent_lightning.deployment import ExportedAgent, export_agent
from agent_lightning.deployment.decoder_program import (
    DecoderProgram,
    OnnxDecoder,
    TorchDecoder,
    write_decoder_onnx,
)
from agent_lightning.deployment.export import apply_recorded_compression, load_agent_checkpoint
from agent_lightning.deployment.onnx_program import int8_weights, onnx_ready
from agent_lightning.generation import position_ids
from tests.conftest import quiet_trainer, tiny_llama_config


def _left_padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3], mask[2, :1] = 0, 0
    return ids, mask


@pytest.fixture(scope="module")
def program_files(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=400, num_attention_heads=4, num_key_value_heads=2)).eval()
    program = DecoderProgram(model).eval()
    path = tmp_path_factory.mktemp("decoder") / "model.onnx"
    write_decoder_onnx(program, path)
    return model, program, path


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_the_decoding_step_equals_the_hugging_face_forward_with_its_cache(runtime, program_files):
    model, program, path = program_files
    step = TorchDecoder(program) if runtime == "torch" else OnnxDecoder(path)
    ids, mask = _left_padded_batch(400)
    prefill = step(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    token = torch.tensor([[5], [9], [11]])
    longer = torch.cat([mask, torch.ones_like(token)], dim=1)
    decoded = step(
        input_ids=token, attention_mask=longer, position_ids=position_ids(longer)[:, -1:], cache=prefill.cache
    )
    with torch.no_grad():
        full = model(
            input_ids=torch.cat([ids, token], dim=1), attention_mask=longer, position_ids=position_ids(longer)
        ).logits
    torch.testing.assert_close(prefill.logits[:, 0], full[:, -2], rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded.logits[:, 0], full[:, -1], rtol=0, atol=1e-5)
    assert len(decoded.cache) == 4 and tuple(decoded.cache[0].shape) == (3, 2, 8, 16)  # (B, K, P + T, D)


def test_a_model_the_step_cannot_write_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match=r"writes Llama-like decoders .*GPT2LMHeadModel is not one"):
        DecoderProgram(GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)))


@pytest.fixture(scope="module")
def compressed(trained_tiny_llama, tmp_path_factory):
    """The trained tiny generative agent, compressed for a few steps (query heads halved evenly per key/value group
    and SwiGLU neurons halved, int8 QAT in ONNX Runtime's scheme with frozen ranges, the tied table trimmed to int8
    rows), its last checkpoint exported as ONNX."""
    _, dm, _, path = trained_tiny_llama
    seed_everything(0)
    agent = Agent.load_from_checkpoint(path, map_location="cpu", learning_rate=1e-3)
    callbacks = [
        Pruning(method="structured", sparsity=0.5, head_sparsity=0.5, start=0, end=4, frequency=2),
        QuantizationAwareTraining(kernel="onnxruntime", start=4, freeze=8, evaluate=False),
        EmbeddingCompression(),
    ]
    folder = tmp_path_factory.mktemp("llm-export")
    checkpoint = ModelCheckpoint(folder, filename="last")
    trainer = quiet_trainer(
        folder, [*callbacks, checkpoint], max_epochs=2, limit_val_batches=0, enable_checkpointing=True
    )
    trainer.fit(agent, datamodule=dm)
    result = export_agent(folder / "last.ckpt", folder / "onnx")
    return dm, folder, result


def test_the_exported_llm_answers_as_the_converted_model_does(compressed):
    dm, folder, result = compressed
    exported = ExportedAgent(folder / "onnx")
    manifest = json.loads((folder / "onnx" / "export.json").read_text())
    assert manifest["task"] == "generation" and manifest["quantization"] == "QAT ranges from the checkpoint"
    assert manifest["structure"]["0"] == {"heads": 2, "kv_heads": 2, "intermediate_size": 64}
    assert manifest["embeddings"]["kept_tokens"] < 200
    assert result.max_abs_logit_diff <= manifest["parity"]["tolerance"] and result.quantized_layers == 8
    texts = list(dm.splits["test"].texts) + ["wake me at seven", "", "x" * 300]
    answers = exported.act(texts)
    assert all(action in dm.label_names and 0 < p <= 1 for action, p in answers)
    # the Hugging Face model with the same int8 layers (its own forward and cache), and the traced PyTorch step
    agent, raw = _converted(folder / "last.ckpt")
    converted, _ = exported.answer(texts, onnx_ready(agent.model))
    twin, _ = exported.answer(texts, TorchDecoder(DecoderProgram(onnx_ready(agent.model))))
    assert [a for a, _ in answers] == converted == twin
    # the manifest records the same comparison on the export's own sample requests (out-of-domain here, where a
    # barely trained model's near-tied actions can flip with one-level rounding differences)
    assert min(manifest["parity"]["answers_equal_converted"], manifest["parity"]["answers_equal_torch"]) >= 0.75


def _converted(checkpoint):
    """The checkpoint's agent with the compression its run recorded applied, as the export converts it."""
    agent, raw = load_agent_checkpoint(checkpoint)
    apply_recorded_compression(agent, raw)
    return agent, raw


def test_the_exported_graph_holds_the_qat_int8_weights_fused_per_block(compressed):
    _, folder, _ = compressed
    layers = int8_weights(folder / "onnx" / "model.onnx")
    assert sorted(layers) == sorted(
        f"blocks.{i}.{name}" for i in range(2) for name in ("qkv", "o_proj", "gate_up", "down_proj")
    )
    agent, _ = _converted(folder / "last.ckpt")
    attention = agent.model.model.layers[0].self_attn
    weight, scale = layers["blocks.0.qkv"]
    q = attention.q_proj.weight()  # fbgemm's int8 weight of the query projection: the first rows of the fused one
    assert torch.equal(weight[: q.shape[0]], q.int_repr())
    torch.testing.assert_close(scale[: q.shape[0]], q.q_per_channel_scales().float())


def test_a_pruned_generative_agent_exports_a_folder_that_plain_transformers_loads(compressed, tmp_path):
    _, folder, _ = compressed
    result = export_agent(folder / "last.ckpt", tmp_path / "hf", format="hf")
    assert result.top1_agreement == 1.0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.num_attention_heads == 2 and model.config.intermediate_size == 64


def test_formats_a_generative_agent_cannot_take_are_refused_before_writing(compressed, tmp_path):
    _, folder, _ = compressed
    with pytest.raises(ValueError, match=r"format='int8' exports classifiers; a task='generation' agent exports"):
        export_agent(folder / "last.ckpt", tmp_path / "int8", format="int8")
    assert not (tmp_path / "int8").exists()


def test_the_real_smollm2_decoding_step_equals_its_hugging_face_forward(smollm2):
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    program = DecoderProgram(model).eval()
    assert program.kv_heads == 3 and program.num_layers == 30
    ids, mask = _left_padded_batch(49152)
    step = TorchDecoder(program)(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1]
    torch.testing.assert_close(step.logits[:, 0], expected, rtol=0, atol=2e-4)
