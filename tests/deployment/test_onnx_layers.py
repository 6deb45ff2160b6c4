"""The layers the ONNX export traces: each computes in PyTorch what its ONNX Runtime kernel computes, and the fused
ones (``QAttention``, embeddings computed at load) compute what the Hugging Face modules they replace compute."""

from __future__ import annotations

import copy

import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import BertModel, RobertaConfig, RobertaModel

from agent_lightning.deployment.onnx_layers import (
    OnnxEmbeddings,
    OnnxInt8Linear,
    OnnxInt8SelfAttention,
    fuse_encoder_layers,
)
from agent_lightning.deployment.onnx_program import OnnxProgram, write_onnx
from agent_lightning.quantization.embedding import CompactEmbedding
from tests.conftest import tiny_bert_config

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
MASK = (IDS != 0).long()


class _Hidden(torch.nn.Module):
    """``(input_ids, attention_mask) -> last hidden state``, the signature ``write_onnx`` traces."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _int8(model_class: type, config: object) -> torch.nn.Module:
    """A random ``model_class(config)`` (seeded, eval, eager attention) with every encoder linear as an
    :class:`OnnxInt8Linear` of its weights rounded to int8 per output channel, as ``onnx_ready`` leaves a converted
    model."""
    torch.manual_seed(0)
    model = model_class(config, add_pooling_layer=False).eval()
    model.config._attn_implementation = "eager"
    for name, module in list(model.encoder.named_modules()):
        if isinstance(module, torch.nn.Linear):
            scale = module.weight.detach().abs().amax(1) / 127
            weight = torch.round(module.weight.detach() / scale[:, None]).to(torch.int8)
            model.encoder.set_submodule(name, OnnxInt8Linear(weight, scale, module.bias))
    return model


def _tiny_encoder() -> torch.nn.Module:
    """The tiny int8 BERT with an int4 input table of the tokens in ``IDS``."""
    model = _int8(BertModel, tiny_bert_config())
    model.embeddings.word_embeddings = CompactEmbedding.from_embedding(
        model.embeddings.word_embeddings, keep=sorted(set(IDS.flatten().tolist())), weights="int4"
    )
    return model


def test_onnx_int8_linear_computes_dynamic_quantize_linear_arithmetic():
    weight = torch.tensor([[1, -2, 3], [127, 0, -127]], dtype=torch.int8)
    layer = OnnxInt8Linear(weight, torch.tensor([0.5, 0.01]), torch.tensor([1.0, 0.0]))
    x = torch.tensor([[0.3, -1.2, 2.0]])
    scale = (2.0 - -1.2) / 255  # the range holds 0; uint8 over [0, 255]
    zero_point = round(1.2 / scale)
    quantized = torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point
    expected = (quantized * scale) @ (weight.float() * torch.tensor([[0.5], [0.01]])).t() + torch.tensor([1.0, 0.0])
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"weight must be a 2-D int8 tensor, got torch.float32"):
        OnnxInt8Linear(weight.float(), torch.ones(2))


def test_fused_attention_and_embeddings_compute_what_the_hf_modules_compute():
    plain = _tiny_encoder()
    fused = copy.deepcopy(plain)
    assert fuse_encoder_layers(fused) == {"attention": 2, "embeddings": 1}
    assert isinstance(fused.encoder.layer[1].attention.self, OnnxInt8SelfAttention)
    assert isinstance(fused.embeddings, OnnxEmbeddings)
    with torch.inference_mode():
        expected = plain(input_ids=IDS, attention_mask=MASK).last_hidden_state
        got = fused(input_ids=IDS, attention_mask=MASK).last_hidden_state
        # the mask is the one the model is called with
        unmasked = fused(input_ids=IDS, attention_mask=torch.ones_like(MASK)).last_hidden_state
        plain_unmasked = plain(input_ids=IDS, attention_mask=torch.ones_like(MASK)).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(unmasked, plain_unmasked, rtol=0, atol=1e-5)
    assert (unmasked[1, :3] - expected[1, :3]).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match=r"runs only inside the model it was fused into.*Call the model"):
        fused.encoder.layer[0].attention.self(torch.zeros(2, 6, 32))
    with pytest.raises(ValueError, match=r"from input_ids alone; got \['token_type_ids'\]"):
        fused.embeddings(IDS, token_type_ids=torch.zeros_like(IDS))


def test_fused_encoder_runs_in_onnx_runtime_with_the_table_unpacked_at_load(tmp_path):
    model = _tiny_encoder()
    fuse_encoder_layers(model)
    program = _Hidden(model).eval()
    path = tmp_path / "encoder.onnx"
    write_onnx(program, (IDS, MASK), path, output_names=("hidden",), fold_constants=False)
    with torch.inference_mode():
        expected = program(IDS, MASK)
    # up to activations rounded to the next uint8 level (a float difference of one ulp before a dynamic quantization;
    # the same model without the fused layers differs as much): the export's own check on a trained agent is tighter
    torch.testing.assert_close(OnnxProgram(path)(IDS, MASK), expected, rtol=0, atol=0.02)
    graph = onnx.load(str(path))
    assert [node.op_type for node in graph.graph.node].count("QAttention") == 2
    initializers = {t.name: t for t in graph.graph.initializer}
    rows = initializers["model.embeddings.word_embeddings.weight"]
    assert rows.data_type == onnx.TensorProto.UINT8 and tuple(rows.dims) == (8, 16)  # int4: 8 tokens, 2 per byte
    assert {f"model.encoder.layer.0.attention.self.{part}.weight_t" for part in ("query", "key", "value")} <= set(
        initializers
    )  # each layer's int8 weights under its own name
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    # ONNX Runtime unpacked the table and concatenated the query, key and value weights once, when it loaded the file
    assert "QAttention" in ops and not ops & {"Div", "Sub", "Concat", "MatMul", "Softmax", "Transpose"}


def test_an_encoder_that_places_positions_otherwise_keeps_its_embeddings():
    config = RobertaConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    plain = _int8(RobertaModel, config)
    fused = copy.deepcopy(plain)
    assert fuse_encoder_layers(fused) == {"attention": 2, "embeddings": 0}  # RoBERTa counts positions from padding
    ids = IDS % 200
    with torch.inference_mode():
        expected = plain(input_ids=ids, attention_mask=MASK).last_hidden_state
        got = fused(input_ids=ids, attention_mask=MASK).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
