"""The ONNX Runtime rows of a CompressionReport: the final model written as the ONNX export writes it, and the
reference as users run it without training (fp32 under ONNX Runtime, and ``quantize_dynamic`` int8)."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from transformers import BertForSequenceClassification, BertModel

from agent_lightning import Agent
from agent_lightning.deployment.export import ONNX_TOLERANCE, LogitsProgram
from agent_lightning.deployment.onnx_program import onnx_ready
from agent_lightning.deployment.peers import ONNX_ROWS, OnnxClassifier, onnx_runtime_rows, sequence_classifier
from agent_lightning.quantization import QuantizationRecipe, convert
from tests.conftest import tiny_bert_config

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
MASK = (IDS != 0).long()


@pytest.fixture(scope="module")
def classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(labels=["a", "b", "c"])).eval()


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_rows_run_the_files_like_the_models(tmp_path, classifier):
    final = convert(copy.deepcopy(classifier))  # int8 per-channel, as QAT leaves it
    rows = onnx_runtime_rows(tmp_path, (IDS, MASK), final=final, reference=classifier, max_length=16)
    assert list(rows) == list(ONNX_ROWS)

    # other batch sizes and lengths than traced, padded rows, token type ids of one segment
    ids = torch.randint(1000, 1100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    types = torch.zeros_like(ids)
    with torch.inference_mode():
        twin = LogitsProgram(onnx_ready(final, 16)).eval()(ids, mask)  # what the ONNX export traces
        converted = final(input_ids=ids, attention_mask=mask).logits
        fp32 = classifier(input_ids=ids, attention_mask=mask).logits
    exported = rows["final_onnx"](ids, mask, types)
    torch.testing.assert_close(exported, twin, atol=1e-4, rtol=0)
    assert float((exported - converted).abs().max()) <= ONNX_TOLERANCE * max(float(converted.abs().max()), 1.0)
    torch.testing.assert_close(rows["reference_ort_fp32"](ids, mask, types), fp32, atol=1e-4, rtol=1e-4)
    assert float((rows["reference_ort_int8"](ids, mask) - fp32).abs().max()) < 0.05 * float(fp32.abs().max()) + 0.01

    # the files are what their names say: ONNX Runtime's own int8 kernels and ours, a float graph, fewer bytes
    assert "QAttention" in _ops(rows["final_onnx"].path)  # ours: fused attention with the model's int8 weights
    assert "DynamicQuantizeMatMul" in _ops(rows["reference_ort_int8"].path) or "MatMulInteger" in _ops(
        rows["reference_ort_int8"].path
    )
    assert not {"MatMulInteger", "DynamicQuantizeLinear"} & _ops(rows["reference_ort_fp32"].path)
    assert rows["reference_ort_int8"].path.stat().st_size < 0.6 * rows["reference_ort_fp32"].path.stat().st_size


def test_each_side_alone(tmp_path, classifier):
    peers = onnx_runtime_rows(tmp_path, (IDS, MASK), reference=classifier)
    assert list(peers) == ["reference_ort_fp32", "reference_ort_int8"]
    final = onnx_runtime_rows(tmp_path, (IDS, MASK), final=classifier)  # a float final model: its fp32 graph
    assert list(final) == ["final_onnx"] and "QAttention" not in _ops(final["final_onnx"].path)
    assert isinstance(final["final_onnx"], OnnxClassifier)  # a module: evaluation and timing call it like the model
    unmasked = final["final_onnx"](IDS[:1])  # no mask: every token is real
    torch.testing.assert_close(unmasked, final["final_onnx"](IDS[:1], torch.ones_like(IDS[:1])), atol=0, rtol=0)
    torch.testing.assert_close(
        final["final_onnx"](IDS, MASK), peers["reference_ort_fp32"](IDS, MASK), atol=1e-5, rtol=0
    )


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_refusals(tmp_path, classifier):
    int4 = convert(copy.deepcopy(classifier), QuantizationRecipe(weights="int4", group_size=16))
    with pytest.raises(ValueError, match=r"Layer 'bert\.encoder\.layer\.0\.attention\.self\.query' is .*int4"):
        onnx_runtime_rows(tmp_path, (IDS, MASK), final=int4)
    per_tensor = torch.ao.quantization.quantize_dynamic(copy.deepcopy(classifier), {torch.nn.Linear}, torch.qint8)
    with pytest.raises(ValueError, match=r"one weight scale .*per-channel"):
        onnx_runtime_rows(tmp_path, (IDS, MASK), final=per_tensor)
    rows = onnx_runtime_rows(tmp_path, (IDS, MASK), reference=classifier)
    with pytest.raises(ValueError, match="token_type_ids marks a second segment"):
        rows["reference_ort_fp32"](IDS, MASK, (IDS > 2000).long())


def test_sequence_classifier_finds_the_hugging_face_head(tiny_bert, classifier):
    agent = Agent(model=tiny_bert, labels=["a", "b"])
    assert sequence_classifier(agent) is agent.model
    assert sequence_classifier(classifier) is classifier
    assert sequence_classifier(BertModel(tiny_bert_config())) is None  # no classification head
    assert sequence_classifier(BoringModel()) is None
