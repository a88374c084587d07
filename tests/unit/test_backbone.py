"""Layer-by-layer execution must equal each backbone's own full forward at every layer."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.state import LayerState
from tests.conftest import PASSAGES, tiny_bert, tiny_llama, tiny_qwen2


def layerwise(model: MatryoshkaModel, state: LayerState) -> list[torch.Tensor]:
    """Hidden states after every layer, run one layer at a time."""
    out = [state.hidden]
    for layer in range(1, model.backbone.num_layers + 1):
        state = model.backbone.forward_layer(layer, state)
        out.append(state.hidden)
    return out


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2, tiny_bert], ids=["llama", "qwen2", "bert"])
def test_layer_by_layer_equals_full_forward(build, tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    hf = build()
    model = MatryoshkaModel.from_hf("tiny", hf, tiny_tokenizer)
    pairs = model.encode("what is the capital of france", PASSAGES, Truncation())
    state = model.embed(pairs)
    assert len({len(p.input_ids) for p in pairs}) > 1, "the batch must be right-padded to test masking"
    ours = layerwise(model, state)

    ids = torch.zeros(state.mask.shape, dtype=torch.long)
    types = torch.zeros_like(ids)
    for i, p in enumerate(pairs):
        ids[i, : len(p.input_ids)] = torch.tensor(p.input_ids)
        types[i, : len(p.input_ids)] = torch.tensor(p.token_types)
    kwargs = {"token_type_ids": types} if model.backbone.family == "encoder" else {}
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=state.mask.long(), output_hidden_states=True, **kwargs)
    reference = list(theirs.hidden_states)
    if model.backbone.family == "decoder":
        # Hugging Face applies the final norm to the last entry; compare the raw layer output instead.
        reference = reference[:-1]
        ours_last = model.backbone.norm(ours[-1])
        assert (ours_last - theirs.hidden_states[-1])[state.mask].abs().max() < 1e-4
        ours = ours[:-1]
    assert len(ours) == len(reference)
    for layer, (a, b) in enumerate(zip(ours, reference, strict=True)):
        diff = (a - b)[state.mask].abs().max().item()
        assert diff < 1e-4, f"layer {layer}: max abs diff {diff}"


def test_layer_order_is_enforced(llama_model: MatryoshkaModel) -> None:
    state = llama_model.embed(llama_model.encode("the cat", ["the mat"], Truncation()))
    with pytest.raises(ValueError, match="needs a state at layer 1"):
        llama_model.backbone.forward_layer(2, state)
    with pytest.raises(ValueError, match="outside"):
        llama_model.backbone.forward_layer(99, state)


@pytest.mark.parametrize("fixture", ["llama_model", "bert_model"])
def test_anchor_attention_rows_are_distributions(fixture: str, request: pytest.FixtureRequest) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state = model.embed(model.encode("where is paris", PASSAGES, Truncation()))
    attention = model.backbone.anchor_attention(1, state)
    assert attention.shape == state.mask.shape
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(state.batch_size))
    assert (attention[~state.mask] == 0).all()


def test_anchor_attention_matches_eager_attention(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """q_anchor . K^T must equal the row the model's own eager attention computes."""
    hf = tiny_llama()
    hf.config._attn_implementation = "eager"
    model = MatryoshkaModel.from_hf("tiny", hf, tiny_tokenizer)
    pairs = model.encode("who sat on the mat", PASSAGES, Truncation())
    state = model.embed(pairs)
    ours = model.backbone.anchor_attention(1, state)
    ids = torch.where(state.mask, state.token_ids, 0)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=state.mask.long(), output_attentions=True)
    anchor = state.lengths - 1
    rows = torch.arange(state.batch_size)
    theirs = out.attentions[0].mean(dim=1)[rows, anchor]
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scoring", ["heads", "query_likelihood"])
def test_scorer_owns_only_its_heads(tiny_tokenizer: PreTrainedTokenizerFast, scoring: str) -> None:
    """Casting the scorer (as the bench does for fp32 heads) must leave the backbone's dtype alone."""
    model = MatryoshkaModel.from_hf("tiny-llama", tiny_llama(), tiny_tokenizer, scoring=scoring)  # type: ignore[arg-type]
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert not backbone_params & {id(p) for p in model.scorer.parameters()}
    model.backbone.hf_model.to(torch.bfloat16)
    model.scorer.to(torch.float32)
    assert model.backbone.dtype == torch.bfloat16
