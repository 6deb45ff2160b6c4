"""CompactEmbedding: kept rows exact (float) or within int8/int4 rounding, unseen tokens read the fallback row or
the nearest one, frequent tokens kept on request."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertForSequenceClassification

from agent_lightning.deployment.measure import parameter_counts, saved_bytes
from agent_lightning.quantization.embedding import (
    CompactEmbedding,
    CompactLMHead,
    compact_input_embeddings,
    compact_seen_vocabulary,
    frequent_token_ids,
    input_embeddings,
)
from tests.conftest import tiny_bert_config


def test_kept_rows_are_exact_in_float_and_unseen_tokens_read_the_fallback():
    torch.manual_seed(0)
    table = nn.Embedding(50, 8)
    compact = CompactEmbedding.from_embedding(table, keep=[3, 7, 9], weights="float", unseen="fallback", fallback=1)
    assert compact.kept_tokens == 4  # the fallback row is kept too
    ids = torch.tensor([[3, 7, 9, 1], [20, 0, 49, 3]])
    expected_ids = torch.tensor([[3, 7, 9, 1], [1, 1, 1, 3]])
    torch.testing.assert_close(compact(ids), table(expected_ids), rtol=0, atol=0)


def test_unseen_tokens_read_the_kept_row_nearest_to_their_own_embedding():
    table = nn.Embedding(6, 3)
    with torch.no_grad():
        table.weight.copy_(
            torch.tensor(
                [
                    [1.0, 0, 0],
                    [0, 1.0, 0],
                    [0, 0, 1.0],
                    [2.0, 0.1, 0],
                    [0, 0.2, -3.0],
                    [0.1, 0.9, 0],
                ]  # 3->0, 4->?, 5->1
            )
        )
    compact = CompactEmbedding.from_embedding(table, keep=[0, 1, 2], weights="float")
    assert compact.kept_tokens == 3
    # 3 is closest to 0 and 5 to 1 (cosine); 4 points away from 2 and is nearest to 1 (the least dissimilar)
    torch.testing.assert_close(compact(torch.tensor([3, 5, 4])), table(torch.tensor([0, 1, 1])), rtol=0, atol=0)


def test_int8_rows_are_within_half_a_step_of_the_float_rows():
    torch.manual_seed(0)
    table = nn.Embedding(30, 16)
    compact = CompactEmbedding.from_embedding(table, keep=None, weights="int8")
    assert compact.weight.dtype == torch.int8 and compact.kept_tokens == 30
    ids = torch.arange(30)
    step = table.weight.detach().abs().amax(1, keepdim=True) / 127
    error = (compact(ids) - table(ids)).abs().detach()
    assert bool((error <= step / 2 + 1e-7).all())
    assert float(error.max()) > 0  # it really is quantized


def test_int4_rows_pack_two_per_byte_within_half_a_step_of_the_float_rows():
    torch.manual_seed(0)
    table = nn.Embedding(30, 16)
    compact = CompactEmbedding.from_embedding(table, keep=[0, 4, 9], weights="int4")
    assert compact.weight.dtype == torch.uint8 and tuple(compact.weight.shape) == (3, 8)  # 16 values in 8 bytes
    assert compact.kind == "int4" and compact.embedding_dim == 16
    ids = torch.tensor([0, 4, 9])
    step = table.weight.detach()[ids].abs().amax(1, keepdim=True) / 7
    error = (compact(ids) - table(ids)).abs().detach()
    assert bool((error <= step / 2 + 1e-6).all())
    assert float(error.max()) > step.min() / 20  # 15 levels, not 255
    torch.testing.assert_close(compact.dequantized(), compact(ids), rtol=0, atol=0)
    # each row's largest value is stored exactly: level 7 (byte nibble 15)
    assert bool((compact(ids).abs().amax(1) - table(ids).abs().amax(1)).abs().max() < 1e-6)


def test_frequent_tokens_are_the_lowest_ids_that_are_words(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = frequent_token_ids(tokenizer, 6)
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "of", "and", "in", "to", "was"]
    assert min(ids) > max(tokenizer.all_special_ids)  # specials, [unused*] and single characters skipped
    with pytest.raises(ValueError, match=r"frequent tokens are read from a Hugging Face tokenizer's vocabulary; got"):
        frequent_token_ids(None, 3)


def test_seen_vocabulary_with_frequent_tokens_keeps_their_rows(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = nn.Module()
    model.embed = nn.Embedding(len(tokenizer), 8)
    model.tokenizer = tokenizer
    counts = torch.zeros(len(tokenizer), dtype=torch.long)
    counts[[2000, 2500]] = 3
    compact = compact_seen_vocabulary(model, counts, "int4", frequent=4)
    frequent = frequent_token_ids(tokenizer, 4)
    assert sorted(compact.kept_ids.tolist()) == sorted({2000, 2500, *frequent, *tokenizer.all_special_ids})
    # a frequent token reads its own row (not its nearest seen one)
    assert int(compact.token_rows[frequent[0]]) == compact.kept_ids.tolist().index(frequent[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weights", ["int8", "float"])
def test_a_half_precision_table_gives_half_precision_vectors(dtype, weights):
    torch.manual_seed(0)
    table = nn.Embedding(30, 16).to(dtype)
    compact = CompactEmbedding.from_embedding(table, keep=list(range(0, 30, 2)), weights=weights)
    ids = torch.arange(0, 30, 2)
    vectors = compact(ids)
    assert vectors.dtype == dtype  # adds to the model's position embeddings without an upcast
    step = table.weight.detach().float().abs().amax(1, keepdim=True)[ids] / 127
    error = (vectors.float() - table(ids).float()).abs().detach()
    if weights == "float":
        assert float(error.max()) == 0.0
    else:  # int8 rounding plus the half-precision rounding of the product
        assert bool((error <= step / 2 + step * 127 * 2**-7).all())


def test_bad_arguments_are_refused():
    table = nn.Embedding(10, 4)
    with pytest.raises(ValueError, match=r"weights='int2' is not a choice; use 'int8', 'int4' or 'float'"):
        CompactEmbedding.from_embedding(table, None, "int2")
    with pytest.raises(ValueError, match=r"the embedding width 5 must be even; use weights='int8'"):
        CompactEmbedding.from_embedding(nn.Embedding(10, 5), None, "int4")
    with pytest.raises(ValueError, match=r"unseen='unk' is not a choice; use 'nearest' or 'fallback'"):
        CompactEmbedding.from_embedding(table, None, unseen="unk")
    with pytest.raises(ValueError, match=r"fallback=10 is not a token id of this vocabulary of 10; unseen='fallback'"):
        CompactEmbedding.from_embedding(table, None, unseen="fallback", fallback=10)
    with pytest.raises(ValueError, match=r"fallback=None is not a token id"):
        CompactEmbedding.from_embedding(table, [1], unseen="fallback")
    with pytest.raises(ValueError, match=r"keep holds token ids outside \[0, 9\]"):
        CompactEmbedding.from_embedding(table, [3, 12])
    with pytest.raises(ValueError, match=r"keep is empty"):
        CompactEmbedding.from_embedding(table, [])


def test_a_tied_head_scores_only_its_tokens_of_the_kept_rows():
    torch.manual_seed(0)
    table = nn.Embedding(12, 4)
    bias = torch.randn(12)
    compact = CompactEmbedding.from_embedding(table, keep=[1, 2, 5, 8], weights="int8")
    head = CompactLMHead(compact, bias, scored_ids=[8, 2, 2])
    assert head.scored_tokens == 2 and head.scored_ids.tolist() == [2, 8]
    hidden = torch.randn(3, 4)
    logits = head(hidden)
    rows = compact(torch.tensor([2, 8]))  # the int8 rows, dequantized, as the lookup reads them
    torch.testing.assert_close(logits[:, [2, 8]], hidden @ rows.T + bias[[2, 8]])
    others = [i for i in range(12) if i not in (2, 8)]  # kept rows 1 and 5 included: read, never scored
    assert bool((logits[:, others] == torch.finfo(logits.dtype).min).all())
    assert "2 of 4 tied rows -> 12 logits" in repr(head)
    with pytest.raises(ValueError, match=r"tokens \[3\] have no row of their own.*scored_ids=embedding.kept_ids"):
        CompactLMHead(compact, scored_ids=torch.tensor([2, 3]))


def test_hf_model_compacted_in_place_is_smaller_and_keeps_its_predictions_on_kept_tokens():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(labels=["a", "b", "c"])).eval()
    ids = torch.tensor([[101, 2054, 2003, 1996, 4633, 102], [101, 2655, 3566, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).logits
    bytes_before = saved_bytes(model, compressed=False)[0]
    name, _ = input_embeddings(model)
    assert name == "bert.embeddings.word_embeddings"
    compact = compact_input_embeddings(model, keep=ids.unique(), weights="float", unseen="fallback", fallback=100)
    assert model.get_input_embeddings() is compact and compact.kept_tokens == 10  # 9 distinct ids + the fallback
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before, rtol=0, atol=1e-6)
    assert saved_bytes(model, compressed=False)[0] < bytes_before - 0.9 * 30522 * 32 * 4
    total, _ = parameter_counts(model)
    assert total == sum(p.numel() for p in model.parameters()) + 10 * 32  # the stored rows count as parameters
    with pytest.raises(ValueError, match=r"already compacted"):
        compact_input_embeddings(model, None)


def test_a_model_without_a_single_input_embedding_is_refused():
    two = nn.ModuleDict({"a": nn.Embedding(5, 2), "b": nn.Embedding(5, 2)})
    with pytest.raises(ValueError, match=r"2 nn.Embedding modules \(a, b\)"):
        input_embeddings(two)
